# Copyright (c) 2026 SelfMedHPM bundles contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""Domain randomisation (selfmedhpm.augment): per-label intensity offsets and HU augmentations in front of the
window."""

from __future__ import annotations

import pytest
import torch
from monai.transforms import Compose, Identityd, RandShiftIntensityd, ScaleIntensityRanged
from selfmedhpm.augment import RandLabelIntensityd, before_window


def _blocks() -> dict[str, torch.Tensor]:
    """A 24^3 image of 100 HU with three labelled cubes (1, 2, 3) of 8^3 voxels on background (0)."""
    label = torch.zeros(1, 24, 24, 24)
    for value, start in ((1, 0), (2, 8), (3, 16)):
        label[:, start : start + 8, 8:16, 8:16] = value
    return {"image": torch.full((1, 24, 24, 24), 100.0), "label": label}


def test_each_label_gets_its_own_offset_in_range_and_background_keeps_its_intensity() -> None:
    shift = RandLabelIntensityd("image", offsets=(-40.0, 40.0), sigma=0.0, prob=1.0).set_random_state(3)
    out = shift(_blocks())["image"][0]
    offsets = [out[s : s + 8, 8:16, 8:16] - 100.0 for s in (0, 8, 16)]
    for block in offsets:
        assert torch.all(block == block[0, 0, 0]) and -40.0 <= float(block[0, 0, 0]) <= 40.0  # one value per label
    assert len({round(float(b[0, 0, 0]), 4) for b in offsets}) == 3  # drawn independently
    assert torch.all(out[:, :8] == 100.0) and torch.all(out[:, 16:] == 100.0)  # background untouched


def test_smoothed_offsets_leave_no_step_at_the_label_border() -> None:
    sharp = RandLabelIntensityd("image", offsets=(30.0, 30.0), sigma=0.0, prob=1.0)(_blocks())["image"][0]
    smooth = RandLabelIntensityd("image", offsets=(30.0, 30.0), sigma=1.5, prob=1.0)(_blocks())["image"][0]
    line_sharp, line_smooth = sharp[12, :, 12], smooth[12, :, 12]  # across the middle cube's faces (y = 8 and 15)
    assert float(line_sharp[8] - line_sharp[7]) == pytest.approx(30.0)
    assert float((line_smooth[1:] - line_smooth[:-1]).abs().max()) < 15.0  # the step spread over voxels
    assert float(smooth[12, 12, 12]) == pytest.approx(130.0, abs=1.0)
    assert float(smooth[12, 1, 12]) == pytest.approx(100.0, abs=0.01)  # 7 voxels from the cube: untouched


def test_same_seed_same_offsets_and_prob_zero_is_identity() -> None:
    runs = [RandLabelIntensityd("image", prob=1.0).set_random_state(seed)(_blocks())["image"] for seed in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    untouched = RandLabelIntensityd("image", prob=0.0)(_blocks())["image"]
    assert torch.equal(untouched, _blocks()["image"])


@pytest.mark.parametrize("kwargs, match", [({"offsets": (5.0, -5.0)}, r"\(5.0, -5.0\)"), ({"sigma": -1.0}, "-1.0")])
def test_invalid_offsets_or_sigma_are_refused_by_value(kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        RandLabelIntensityd("image", **kwargs)


def test_hu_shift_in_front_of_the_window_moves_tissue_and_leaves_air_and_bone_clipped() -> None:
    """+25 HU in front of the window -175..250 moves soft tissue by 25/425, while air and bone stay at 0 and 1 (after
    the window, the same shift would lift air to 0.06)."""
    window = ScaleIntensityRanged("image", -175.0, 250.0, 0.0, 1.0, clip=True)
    steps = before_window([Identityd("image"), window], [RandShiftIntensityd("image", offsets=(25.0, 25.0), prob=1)])
    assert [type(t).__name__ for t in steps] == ["Identityd", "RandShiftIntensityd", "ScaleIntensityRanged"]
    out = Compose(steps)({"image": torch.tensor([[[[-1000.0, 100.0, 1000.0]]]])})["image"].flatten()
    assert out.tolist() == pytest.approx([0.0, (100.0 + 25.0 + 175.0) / 425.0, 1.0])


def test_before_window_refuses_a_list_without_a_window() -> None:
    with pytest.raises(ValueError, match=r"no CT window .*Identityd"):
        before_window([Identityd("image")], [])

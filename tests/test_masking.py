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

from __future__ import annotations

import pytest
import torch
from selfmedhpm.masking import hard_patch_mask, hard_ratio_at, num_masked


@pytest.mark.parametrize("length,ratio,expected", [(216, 0.75, 162), (64, 0.75, 48), (8, 0.5, 4), (10, 0.33, 4)])
def test_masked_count_follows_mae_rounding(length, ratio, expected):
    assert num_masked(length, ratio) == expected
    mask = hard_patch_mask(torch.rand(3, length), ratio, 0.5)
    assert mask.dtype == torch.bool and mask.shape == (3, length)
    assert mask.sum(1).tolist() == [expected] * 3


@pytest.mark.parametrize("hard_ratio", [0.1, 0.25, 0.5, 1.0])
def test_hard_mask_takes_top_predicted_losses(hard_ratio):
    scores = torch.randn(4, 216)
    mask = hard_patch_mask(scores, 0.75, hard_ratio, torch.Generator().manual_seed(0))
    n_hard = int(162 * hard_ratio)
    top = torch.topk(scores, n_hard, dim=1).indices
    assert torch.gather(mask, 1, top).all()


def test_rest_of_mask_is_uniform_over_other_patches():
    scores = torch.arange(64.0).expand(1, 64)  # the last patches are the hardest
    generator = torch.Generator().manual_seed(1)
    counts = torch.zeros(64)
    trials = 2000
    for _ in range(trials):
        counts += hard_patch_mask(scores, 0.5, 0.5, generator)[0].float()
    # 16 hard patches always masked; the other 16 masked ones drawn from the 48 others: p = 1/3 each
    assert torch.all(counts[48:] == trials)
    freq = counts[:48] / trials
    assert abs(freq.mean().item() - 1 / 3) < 0.01
    assert freq.min() > 0.27 and freq.max() < 0.40


def test_zero_hard_ratio_gives_random_mask_independent_of_scores():
    scores = torch.arange(64.0).expand(1, 64)
    a = hard_patch_mask(scores, 0.75, 0.0, torch.Generator().manual_seed(3))
    b = hard_patch_mask(-scores, 0.75, 0.0, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert not a[0, -12:].all() or not a[0, :12].all()


def test_rows_are_independent():
    scores = torch.zeros(1, 64).expand(8, 64).clone()
    mask = hard_patch_mask(scores, 0.75, 0.0, torch.Generator().manual_seed(0))
    assert len({tuple(row.tolist()) for row in mask}) == 8


def test_same_generator_seed_gives_same_mask():
    scores = torch.rand(2, 64)
    a = hard_patch_mask(scores, 0.75, 0.3, torch.Generator().manual_seed(5))
    b = hard_patch_mask(scores, 0.75, 0.3, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_hard_ratio_schedule_first_and_last_epoch():
    assert hard_ratio_at(0, 800, 0.5) == pytest.approx(0.5 / 800)
    assert hard_ratio_at(399, 800, 0.5) == pytest.approx(0.25)
    assert hard_ratio_at(799, 800, 0.5) == pytest.approx(0.5)
    assert hard_ratio_at(900, 800, 0.5) == pytest.approx(0.5)


def test_invalid_arguments_raise_with_value():
    with pytest.raises(ValueError, match="1.5"):
        hard_patch_mask(torch.rand(1, 8), 0.5, 1.5)
    with pytest.raises(ValueError, match="shape"):
        hard_patch_mask(torch.rand(8), 0.5, 0.5)
    with pytest.raises(ValueError, match="mask_ratio"):
        num_masked(8, 1.0)

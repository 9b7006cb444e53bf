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

"""Domain randomisation that MONAI lacks: each labelled structure's intensity drawn anew (SynthSeg's idea), and
placing Hounsfield-unit augmentations in front of the CT window of an existing transform list.

Convention, stated once: offsets are in the image's units at the point where the transform runs; in front of the
window that is HU (the window then maps ``a_min..a_max`` HU to 0..1 and clips, as a real scan's would be).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import torch
from monai.config import KeysCollection
from monai.transforms import (
    GaussianSmooth,
    MapTransform,
    RandomizableTransform,
    ScaleIntensityRange,
    ScaleIntensityRanged,
)

__all__ = ["RandLabelIntensityd", "before_window"]


class RandLabelIntensityd(RandomizableTransform, MapTransform):
    """Adds a random intensity offset per label value: every voxel of structure ``l`` (``1..max``; background, 0,
    keeps its intensity) is shifted by its own offset drawn uniformly from ``offsets``, so that a network cannot
    recognise an organ by its brightness alone and must use shape and context, as SynthSeg trains on synthetic
    images whose every label gets a new intensity per sample (Billot et al., SynthSeg: segmentation of brain MRI
    scans of any contrast and resolution without retraining, Medical Image Analysis 86, 2023). The offset map is
    smoothed by a Gaussian of ``sigma`` voxels first, so that the label's own border does not appear as a sharp
    intensity step that would give the label away.

    Args:
        keys: image keys to shift.
        label_key: the integer label map (same grid as the images). Default ``"label"``.
        offsets: ``(low, high)`` of the uniform offsets, or ``a`` for ``(-a, a)``. Default 40.0 (HU, when run in
            front of the CT window: about the spread of an organ's enhancement between scans).
        sigma: standard deviation in voxels of the smoothing of the offset map; 0 for none. Default 1.0.
        prob: probability of shifting a sample at all. Default 0.5.
        allow_missing_keys: don't raise for missing keys. Default False.

    Examples::

        >>> image, label = torch.zeros(1, 8, 8, 8), torch.zeros(1, 8, 8, 8)
        >>> label[:, 2:6, 2:6, 2:6] = 3
        >>> shift = RandLabelIntensityd("image", offsets=(10.0, 20.0), sigma=0.0, prob=1.0)
        >>> out = shift.set_random_state(0)({"image": image, "label": label})["image"]
        >>> bool(10.0 <= out[0, 3, 3, 3] <= 20.0), float(out[0, 0, 0, 0])
        (True, 0.0)
    """

    backend = [*GaussianSmooth.backend]

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str = "label",
        offsets: float | tuple[float, float] = 40.0,
        sigma: float = 1.0,
        prob: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        low, high = (-float(offsets), float(offsets)) if isinstance(offsets, (int, float)) else map(float, offsets)
        if low > high:
            raise ValueError(f"offsets must be (low, high) with low <= high, got {offsets}.")
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}.")
        self.label_key, self.low, self.high, self.sigma = label_key, low, high, float(sigma)
        self._offsets = torch.zeros(0)

    def randomize(self, num_labels: int) -> None:  # type: ignore[override]
        super().randomize(None)
        if self._do_transform:  # one offset per label value 1..num_labels-1; background (0) keeps 0
            drawn = self.R.uniform(self.low, self.high, max(num_labels - 1, 0))
            self._offsets = torch.cat([torch.zeros(1), torch.as_tensor(drawn, dtype=torch.float32)])

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        label = torch.as_tensor(d[self.label_key]).long()  # [1, X, Y, Z]
        self.randomize(int(label.max()) + 1 if label.numel() else 1)
        if not self._do_transform:
            return d
        shift = self._offsets.to(label.device)[label.clamp(min=0)]  # [1, X, Y, Z]
        if self.sigma > 0:
            shift = GaussianSmooth(self.sigma)(shift)
        for key in self.key_iterator(d):
            d[key] = d[key] + torch.as_tensor(shift, dtype=d[key].dtype, device=d[key].device)
        return d


def before_window(transforms: Sequence, extra: Sequence) -> list:
    """``transforms`` with ``extra`` inserted just in front of its first CT window (MONAI's ``ScaleIntensityRange``
    or ``ScaleIntensityRanged``), so that intensity augmentations act in Hounsfield units and the window then clips
    their result as it clips a real scan: a random shift and scale in front of a fixed window is a random window.

    Examples::

        >>> from monai.transforms import Identityd, RandShiftIntensityd
        >>> steps = [Identityd("image"), ScaleIntensityRanged("image", -175, 250, 0, 1, clip=True)]
        >>> [type(t).__name__ for t in before_window(steps, [RandShiftIntensityd("image", 25.0)])]
        ['Identityd', 'RandShiftIntensityd', 'ScaleIntensityRanged']
    """
    transforms = list(transforms)
    for i, transform in enumerate(transforms):
        if isinstance(transform, (ScaleIntensityRange, ScaleIntensityRanged)):
            return transforms[:i] + list(extra) + transforms[i:]
    names = [type(t).__name__ for t in transforms]
    raise ValueError(f"no CT window (ScaleIntensityRange or ScaleIntensityRanged) among the transforms {names}.")

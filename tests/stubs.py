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

"""Stand-ins that tests put into the bundles' configs in place of the real networks."""

from __future__ import annotations

import torch


class ThresholdNet(torch.nn.Module):
    """A fixed "segmentation network": class ``label`` where the (pre-processed) input exceeds ``threshold``, else
    background, as logits of ``num_classes`` channels. No parameters: its state dict is empty.

    Examples::

        >>> net = ThresholdNet(threshold=0.5, label=6, num_classes=14)
        >>> net(torch.tensor([0.2, 0.8]).reshape(1, 1, 2, 1, 1)).argmax(1).flatten().tolist()
        [0, 6]
    """

    def __init__(self, threshold: float = 0.5, label: int = 6, num_classes: int = 14) -> None:
        super().__init__()
        self.threshold, self.label, self.num_classes = threshold, label, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 1, H, W, D] -> [B, num_classes, H, W, D]
        logits = torch.zeros((x.shape[0], self.num_classes, *x.shape[2:]), dtype=x.dtype, device=x.device)
        logits[:, 0] = 0.5
        logits[:, self.label] = (x[:, 0] > self.threshold).to(x.dtype)
        return logits

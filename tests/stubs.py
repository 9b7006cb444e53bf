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

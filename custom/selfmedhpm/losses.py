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

"""Losses of HPM pretraining: per-patch reconstruction error and the relative loss-prediction (ranking) loss."""

from __future__ import annotations

import torch
import torch.nn as nn
from selfmedhpm.masking import mask_indices
from selfmedhpm.patches import patch_targets, patchify, per_patch_loss, unpatchify
from selfmedhpm.utils import as_bool

__all__ = ["patchify", "unpatchify", "patch_targets", "per_patch_loss", "relative_loss_prediction", "HPMLoss"]


def relative_loss_prediction(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """HPM's relative (pairwise ranking) loss-prediction objective.

    For every ordered pair (j, k) of patches of the same image whose true losses differ, with
    ``s = sigmoid(p_k - p_j)``: ``-log(s + 1e-6)`` if ``l_k > l_j`` and ``-log(1 - s + 1e-6)`` if ``l_k < l_j``.
    The sum over the batch is divided by the number of non-tied ordered pairs; tied pairs are excluded and the
    result is 0 when no pair is untied. ``target`` is detached.

    Args:
        predicted: ``[N, M]`` predicted losses p of the M masked patches of each image.
        target: ``[N, M]`` true reconstruction losses l of the same patches.

    Examples::

        >>> p = torch.tensor([[0.0, 1.0, 2.0]])
        >>> relative_loss_prediction(p, torch.tensor([[1.0, 2.0, 3.0]])) < relative_loss_prediction(-p, p + 1)
        tensor(True)
    """
    if predicted.shape != target.shape or predicted.ndim != 2:
        raise ValueError(f"predicted and target must both be [N, M], got {predicted.shape} and {target.shape}.")
    target = target.detach().float()
    predicted = predicted.float()
    # [N, M, M]: entry (j, k) compares patch k with patch j
    s = torch.sigmoid(predicted[:, None, :] - predicted[:, :, None])
    harder = (target[:, None, :] > target[:, :, None]).float()
    easier = (target[:, None, :] < target[:, :, None]).float()
    terms = -harder * torch.log(s + 1e-6) - easier * torch.log(1 - s + 1e-6)
    pairs = harder.sum() + easier.sum()
    return terms.sum() / pairs.clamp_min(1.0)  # all terms are 0 when no pair is untied; no branch on a device value


class HPMLoss(nn.Module):
    """Total HPM loss ``L = L_rec + lambda * L_pred`` from the student's outputs and the mask.

    Args:
        patch_size: p, to cut the targets.
        norm_pix_loss: per-patch normalised targets (True, SelfMedMAE) or raw voxels (False, HPM's default).
        pred_weight: lambda, the weight of the loss-prediction term. Defaults to 1 (HPM).

    Returns from ``forward``: a dict with ``loss`` (to back-propagate), ``rec_loss``, ``pred_loss`` (detached) and
    ``patch_loss`` ``[N, L]`` (detached true per-patch losses).

    Examples::

        >>> loss = HPMLoss(patch_size=16)
        >>> images, mask = torch.rand(2, 1, 32, 32, 32), torch.zeros(2, 8, dtype=torch.bool)
        >>> mask[:, :6] = True
        >>> out = loss(torch.rand(2, 8, 4096), torch.rand(2, 8), images, mask)
        >>> sorted(out)
        ['loss', 'patch_loss', 'pred_loss', 'rec_loss']
    """

    def __init__(self, patch_size: int = 16, norm_pix_loss: bool = True, pred_weight: float = 1.0) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.norm_pix_loss = as_bool(norm_pix_loss, "norm_pix_loss")
        self.pred_weight = pred_weight

    def forward(
        self,
        reconstruction: torch.Tensor,
        predicted_loss: torch.Tensor,
        images: torch.Tensor,
        mask: torch.Tensor,
        num_masked: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """``reconstruction`` ``[N, L, P]``, ``predicted_loss`` ``[N, L]``, ``images`` ``[N, C, H, W, D]``, ``mask``
        ``[N, L]`` with ``num_masked`` True per row (None counts the first row, a host synchronisation)."""
        _, masked, _ = mask_indices(mask, num_masked)  # [N, K], in patch order: what patch_loss[mask] selects
        target = patch_targets(images, self.patch_size, self.norm_pix_loss)  # [N, L, P]
        patch_loss = per_patch_loss(reconstruction, target)  # [N, L]
        masked_true = patch_loss.gather(1, masked)  # [N, K]
        masked_pred = predicted_loss.gather(1, masked)  # [N, K]
        rec_loss = masked_true.mean()
        pred_loss = relative_loss_prediction(masked_pred, masked_true)
        loss = rec_loss + self.pred_weight * pred_loss
        return {
            "loss": loss,
            "rec_loss": rec_loss.detach(),
            "pred_loss": pred_loss.detach(),
            "patch_loss": patch_loss.detach(),
        }

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

"""Easy-to-hard hard-patch masking (HPM, Wang et al., CVPR 2023).

Convention, stated once: a mask is a boolean tensor ``[N, L]`` over the L patches of each image, ``True`` = masked
(hidden from the encoder, reconstructed by the decoder), ``False`` = visible.
"""

from __future__ import annotations

import torch

__all__ = ["num_masked", "hard_patch_mask", "hard_ratio_at", "mask_indices"]


def num_masked(num_patches: int, mask_ratio: float) -> int:
    """Number of masked patches K per image, ``L - int(L * (1 - mask_ratio))`` as in MAE and HPM.

    Args:
        num_patches: L, the number of patches of one image.
        mask_ratio: gamma, the share of masked patches, in [0, 1).

    Examples::

        >>> num_masked(216, 0.75)
        162
    """
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}.")
    return num_patches - int(num_patches * (1 - mask_ratio))


def hard_ratio_at(epoch: int, max_epochs: int, final_hard_ratio: float = 0.5) -> float:
    """Hard share of the mask at a 0-based ``epoch``: ``alpha_e = alpha_T * (epoch + 1) / max_epochs``.

    Args:
        epoch: 0-based epoch index e.
        max_epochs: E, the planned number of epochs.
        final_hard_ratio: alpha_T, the share reached at the last epoch. Defaults to 0.5.

    Examples::

        >>> hard_ratio_at(0, 4, 0.5), hard_ratio_at(3, 4, 0.5)
        (0.125, 0.5)
    """
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}.")
    if not 0.0 <= final_hard_ratio <= 1.0:
        raise ValueError(f"final_hard_ratio must be in [0, 1], got {final_hard_ratio}.")
    return final_hard_ratio * min(epoch + 1, max_epochs) / max_epochs


def hard_patch_mask(
    predicted_loss: torch.Tensor,
    mask_ratio: float,
    hard_ratio: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Masks the patches predicted hardest, plus random others, in each image.

    Each row gets exactly ``K = L - int(L * (1 - mask_ratio))`` masked patches: the ``int(K * hard_ratio)`` patches
    with the highest predicted loss always, and the rest of the K drawn uniformly from the other patches.
    ``hard_ratio = 0`` gives MAE's uniform random mask.

    Args:
        predicted_loss: ``[N, L]`` predicted reconstruction loss per patch (only its order within a row matters).
        mask_ratio: gamma, share of masked patches, in [0, 1).
        hard_ratio: alpha, share of the K masked patches chosen by predicted loss, in [0, 1].
        generator: random generator for the random part; it must live on ``predicted_loss.device``.

    Returns:
        ``[N, L]`` bool tensor, True = masked.

    Examples::

        >>> scores = torch.arange(8.0).expand(2, 8)
        >>> mask = hard_patch_mask(scores, mask_ratio=0.5, hard_ratio=0.5)
        >>> mask.sum(1).tolist(), mask[:, 6:].all().item()
        ([4, 4], True)
    """
    if predicted_loss.ndim != 2:
        raise ValueError(f"predicted_loss must be [N, L], got shape {tuple(predicted_loss.shape)}.")
    if not 0.0 <= hard_ratio <= 1.0:
        raise ValueError(f"hard_ratio must be in [0, 1], got {hard_ratio}.")
    n, length = predicted_loss.shape
    k = num_masked(length, mask_ratio)
    n_hard = int(k * hard_ratio)
    device = predicted_loss.device

    # random priority in [0, 1) for every patch; the hard ones get priority 2 so they sort first
    priority = torch.rand(n, length, device=device, generator=generator)  # [N, L]
    if n_hard > 0:
        hard_ids = torch.topk(predicted_loss.detach().float(), n_hard, dim=1).indices  # [N, n_hard]
        priority.scatter_(1, hard_ids, 2.0)
    chosen = torch.topk(priority, k, dim=1).indices  # [N, K]
    mask = torch.zeros(n, length, dtype=torch.bool, device=device)
    return mask.scatter_(1, chosen, True)


def mask_indices(mask: torch.Tensor, num_masked: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Index form of a mask with ``num_masked`` masked patches in every row, for gathers of static shape (no boolean
    indexing, so a compiled step has no data-dependent shapes and no host synchronisation).

    Args:
        mask: ``[N, L]`` bool, True = masked, exactly ``num_masked`` True per row (as :func:`hard_patch_mask` gives).
        num_masked: K; None counts the first row (a host synchronisation: the trainer passes K).

    Returns:
        ``visible`` ``[N, L - K]`` and ``masked`` ``[N, K]`` patch indices, each in patch order (what
        ``x[~mask]`` and ``x[mask]`` select), and ``restore`` ``[N, L]``, which puts ``cat([visible, masked])``
        back in patch order.

    Examples::

        >>> mask = torch.tensor([[True, False, True, False]])
        >>> visible, masked, restore = mask_indices(mask, 2)
        >>> visible.tolist(), masked.tolist(), restore.tolist()
        ([[1, 3]], [[0, 2]], [[2, 0, 3, 1]])
    """
    if num_masked is None:
        num_masked = int(mask[0].sum())
    order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)  # [N, L]: visible first, each in patch order
    visible_count = mask.shape[1] - num_masked
    return order[:, :visible_count], order[:, visible_count:], torch.argsort(order, dim=1)

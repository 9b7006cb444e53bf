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

"""How well the loss predictor ranks patches: Kendall's tau between predicted and true per-patch losses."""

from __future__ import annotations

import torch
from selfmedhpm.ema import unwrap
from selfmedhpm.losses import per_patch_loss
from selfmedhpm.masking import hard_patch_mask
from selfmedhpm.patches import patch_targets

__all__ = ["kendall_tau", "teacher_ranking"]


def kendall_tau(a: torch.Tensor, b: torch.Tensor) -> float:
    """Kendall's tau-a of two 1-D tensors (concordant minus discordant pairs over all pairs).

    Examples::

        >>> kendall_tau(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 30.0]))
        1.0
        >>> kendall_tau(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0]))
        -1.0
    """
    if a.ndim != 1 or a.shape != b.shape or a.numel() < 2:
        raise ValueError(f"need two 1-D tensors of the same length >= 2, got {tuple(a.shape)} and {tuple(b.shape)}.")
    da = torch.sign(a[:, None] - a[None, :])
    db = torch.sign(b[:, None] - b[None, :])
    n = a.numel()
    return float((da * db).sum() / (n * (n - 1)))


@torch.no_grad()
def teacher_ranking(
    net: torch.nn.Module,
    images: torch.Tensor,
    mask_ratio: float = 0.75,
    trials: int = 4,
    seed: int = 0,
    norm_pix_loss: bool = True,
) -> dict[str, object]:
    """How well a network's loss predictor, seeing the full crop as the HPM teacher does when it chooses the mask,
    ranks the patches by their true reconstruction loss, against what patch position alone gives.

    The true loss of a patch is its reconstruction loss when masked, averaged over ``trials`` random masks. Per crop:
    Kendall tau between the full-view predictions and the true losses; the position-only baseline predicts each
    patch's loss as the mean true loss at that position over the *other* crops. ``position_share`` is the share of
    the variance of the predictions that patch position alone explains (R^2 of the per-position mean): near 1, the
    predictor only learnt where patches usually are hard; low, it follows the content.

    Args:
        net: an :class:`~selfmedhpm.networks.HPMMaskedAutoEncoder` (load the teacher's weights to assess the teacher).
        images: held-out crops ``[N, C, H, W, D]`` of the network's input size, N >= 2.
        mask_ratio: gamma of the random masks.
        trials: random masks per crop.
        seed: seed of the masks.
        norm_pix_loss: targets as in training.

    Returns:
        ``{"tau": per-crop taus, "position_tau": per-crop taus of the baseline, "position_share": float}``.
    """
    net = unwrap(net)
    was_training = net.training
    net.eval()
    generator = torch.Generator(device=images.device).manual_seed(seed)
    predicted = net.predict_patch_loss(images).float()  # [N, L], full view
    total = torch.zeros_like(predicted)
    count = torch.zeros_like(predicted)
    target = patch_targets(images, net.patch_size, norm_pix_loss)
    for _ in range(trials):
        mask = hard_patch_mask(torch.zeros_like(predicted), mask_ratio, 0.0, generator)
        reconstruction, _ = net(images, mask)
        total += torch.where(mask, per_patch_loss(reconstruction, target), 0.0)
        count += mask.float()
    net.train(was_training)
    seen = count > 0
    true = total / count.clamp(min=1)  # [N, L]
    taus, position_taus = [], []
    for i in range(images.shape[0]):
        others = torch.cat([torch.arange(i), torch.arange(i + 1, images.shape[0])])
        baseline = total[others].sum(0) / count[others].sum(0).clamp(min=1)  # mean true loss per position
        taus.append(kendall_tau(predicted[i][seen[i]], true[i][seen[i]]))
        position_taus.append(kendall_tau(baseline[seen[i]], true[i][seen[i]]))
    by_position = predicted.mean(0, keepdim=True).expand_as(predicted)
    spread = (predicted - predicted.mean()).pow(2).sum().clamp(min=1e-12)
    share = 1.0 - float((predicted - by_position).pow(2).sum() / spread)
    return {"tau": taus, "position_tau": position_taus, "position_share": share}

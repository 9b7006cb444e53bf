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

from pathlib import Path
from typing import Sequence

import torch
from monai.bundle import ConfigParser
from selfmedhpm.ema import unwrap
from selfmedhpm.losses import per_patch_loss
from selfmedhpm.masking import hard_patch_mask
from selfmedhpm.patches import patch_targets
from selfmedhpm.visualize import loss_when_masked, masked_mean

__all__ = ["kendall_tau", "held_out_crops", "teacher_ranking"]

HARD_RATIO = 0.5  # alpha_T: the hard share of the last epoch's masks, that of the masks teacher_ranking assesses


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


def held_out_crops(
    parser: ConfigParser, images: Sequence[str | Path], crops_per_case: int, seed: int = 0
) -> torch.Tensor:
    """Random crops of held-out volumes, cut as the pretraining bundle cuts its training crops: each image through
    ``train#deterministic_transforms``, padded by ``crop_margin`` voxels a side, then ``crops_per_case`` crops of
    ``roi_size`` (seeded, so every call draws the same crops).

    Args:
        parser: the pretraining bundle's parsed configs (with the overrides of the run being assessed).
        images: image files that the run never trained on.
        crops_per_case: crops per image.
        seed: seed of the crop positions.

    Returns:
        ``[len(images) * crops_per_case, C, *roi_size]`` float32.
    """
    from monai.transforms import Compose, RandSpatialCropSamples, SpatialPad

    preprocessing = Compose(parser.get_parsed_content("train#deterministic_transforms"))
    roi = parser.get_parsed_content("roi_size")
    pad = SpatialPad([s + 2 * parser.get_parsed_content("crop_margin") for s in roi])
    sampler = RandSpatialCropSamples(roi, num_samples=crops_per_case, random_size=False)
    sampler.set_random_state(seed)
    crops = []
    for image in images:
        volume = pad(preprocessing({"image": str(image)})["image"])
        crops += [torch.as_tensor(c) for c in sampler(volume)]
    return torch.stack(crops).float()


@torch.no_grad()
def teacher_ranking(
    net: torch.nn.Module,
    images: torch.Tensor,
    mask_ratio: float = 0.75,
    trials: int = 4,
    seed: int = 0,
    norm_pix_loss: bool = True,
) -> dict[str, object]:
    """How well a network's loss predictor ranks the patches of held-out crops by their true reconstruction loss,
    against what patch position alone gives, in its two uses.

    - Masked pass (what the ranking loss trains): under a random mask, the predictions for the masked patches, made
      from the visible ones, against those patches' reconstruction losses under the same mask.
    - Full view (what the HPM teacher does when it chooses the mask): the predictions from the whole crop against
      each patch's true loss, its reconstruction loss when masked averaged over ``trials`` random masks.

    The position-only baseline predicts each patch's loss as the mean true loss at that position over the *other*
    crops. Per crop (and per mask in the masked pass), Kendall tau over the patches concerned. ``position_share`` is
    the share of the variance of the full-view predictions that patch position alone explains (R^2 of the
    per-position mean): near 1, the predictor only learnt where patches usually are hard; low, it follows the content.

    What the mask choice buys: ``hard_mask_loss_ratio`` is the mean reconstruction loss of the masked patches under
    the HPM mask that the full-view predictions choose (:data:`HARD_RATIO` of them the top-scored, the rest random) over
    that under random masks, per crop, averaged; ``position_mask_loss_ratio`` the same with the position-only
    baseline's scores. Above 1: the mask makes the task harder than a random one, as HPM intends.

    Args:
        net: an :class:`~selfmedhpm.networks.HPMMaskedAutoEncoder` (load the teacher's weights to assess the teacher).
        images: held-out crops ``[N, C, H, W, D]`` of the network's input size, N >= 2.
        mask_ratio: gamma of the random masks.
        trials: random masks per crop.
        seed: seed of the masks.
        norm_pix_loss: targets as in training.

    Returns:
        ``{"tau", "position_tau"}`` (full view, per crop), ``{"masked_tau", "masked_position_tau"}`` (masked pass, per
        crop and mask), ``"position_share"``, ``"hard_mask_loss_ratio"`` and ``"position_mask_loss_ratio"``
        (floats).

    Examples::

        >>> from selfmedhpm.networks import HPMMaskedAutoEncoder
        >>> net = HPMMaskedAutoEncoder(img_size=32, hidden_size=48, mlp_dim=96, num_heads=4, decoder_hidden_size=24,
        ...                            decoder_mlp_dim=48, decoder_num_layers=1, decoder_num_heads=4)
        >>> ranking = teacher_ranking(net, torch.rand(3, 1, 32, 32, 32), trials=2)
        >>> len(ranking["tau"]), len(ranking["masked_tau"]), -1.0 <= ranking["masked_position_tau"][0] <= 1.0
        (3, 6, True)
    """
    net = unwrap(net)
    was_training = net.training
    net.eval()
    generator = torch.Generator(device=images.device).manual_seed(seed)
    predicted = net.predict_patch_loss(images).float()  # [N, L], full view
    true, passes = loss_when_masked(net, images, generator, mask_ratio, trials, norm_pix_loss)  # [N, L]
    seen = ~true.isnan()
    count = sum(mask.float() for mask, _, _ in passes)  # [N, L]: masks that hid each patch
    total = torch.where(seen, true, 0.0) * count  # [N, L], summed over those masks
    taus, position_taus, masked_taus, masked_position_taus, baselines = [], [], [], [], []
    for i in range(images.shape[0]):
        others = torch.cat([torch.arange(i), torch.arange(i + 1, images.shape[0])])
        baseline = total[others].sum(0) / count[others].sum(0).clamp(min=1)  # mean true loss per position
        baselines.append(baseline)
        taus.append(kendall_tau(predicted[i][seen[i]], true[i][seen[i]]))
        position_taus.append(kendall_tau(baseline[seen[i]], true[i][seen[i]]))
        for mask, loss, masked_prediction in passes:
            masked_taus.append(kendall_tau(masked_prediction[i][mask[i]], loss[i][mask[i]]))
            masked_position_taus.append(kendall_tau(baseline[mask[i]], loss[i][mask[i]]))
    random_loss = torch.stack([masked_mean(loss, mask) for mask, loss, _ in passes]).mean(0)  # [N]
    target, ratios = patch_targets(images, net.patch_size, norm_pix_loss), {}
    for name, scores in (("hard", predicted), ("position", torch.stack(baselines))):
        mask = hard_patch_mask(scores, mask_ratio, HARD_RATIO, generator)  # [N, L]
        loss = per_patch_loss(net(images, mask)[0], target)
        ratios[name] = float((masked_mean(loss, mask) / random_loss).mean())
    net.train(was_training)
    by_position = predicted.mean(0, keepdim=True).expand_as(predicted)
    spread = (predicted - predicted.mean()).pow(2).sum().clamp(min=1e-12)
    share = 1.0 - float((predicted - by_position).pow(2).sum() / spread)
    return {
        "tau": taus,
        "position_tau": position_taus,
        "masked_tau": masked_taus,
        "masked_position_tau": masked_position_taus,
        "position_share": share,
        "hard_mask_loss_ratio": ratios["hard"],
        "position_mask_loss_ratio": ratios["position"],
    }

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

"""Does hard patches mining mine: how well each teacher view's scores rank patches by their true reconstruction loss
(Kendall's tau), and how much harder than a random mask the mask they choose is, against patch position alone and an
oracle that knows each patch's true loss."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from monai.bundle import ConfigParser
from scipy.stats import kendalltau
from selfmedhpm.ema import unwrap
from selfmedhpm.masking import hard_patch_mask
from selfmedhpm.patches import patch_targets, per_patch_loss
from selfmedhpm.views import TEACHER_VIEWS, VISIBLE_SCORE, TeacherView, masked_mean
from selfmedhpm.visualize import loss_when_masked

__all__ = ["kendall_tau", "held_out_crops", "mining_figures", "oracle_share", "mining_table", "HARD_RATIO", "SCORERS"]

HARD_RATIO = 0.5  # alpha_T: the hard share of the last epoch's masks, that of the masks mining_figures assesses
SCORERS = {  # what mining_figures judges, as the reports name them
    "full": "full view (HPM's paper and code)",
    "masked": "masked: complementary masked passes, predicted loss",
    "reconstruction": "reconstruction: one masked pass, real loss (AnatoMask)",
    "position": "patch position alone",
    "oracle": "oracle: each patch's true loss when masked",
}


def kendall_tau(a: torch.Tensor, b: torch.Tensor) -> float:
    """Kendall's tau (tau-b, SciPy's) of two 1-D tensors; 0 when either is constant.

    Examples::

        >>> kendall_tau(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 30.0]))
        1.0
        >>> kendall_tau(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0]))
        -1.0
    """
    if a.ndim != 1 or a.shape != b.shape or a.numel() < 2:
        raise ValueError(f"need two 1-D tensors of the same length >= 2, got {tuple(a.shape)} and {tuple(b.shape)}.")
    tau = kendalltau(a.double().cpu().numpy(), b.double().cpu().numpy()).statistic
    return 0.0 if np.isnan(tau) else float(tau)


def oracle_share(ratio: float, oracle: float) -> float:
    """A view's share of the oracle's gain, ``(ratio - 1) / (oracle - 1)``: the figure that stays comparable across
    scales (the oracle's own gain shrinks with fewer tokens per crop). NaN when the oracle gains nothing.

    Examples::

        >>> round(oracle_share(1.046, 1.057), 2)
        0.81
    """
    return (ratio - 1.0) / (oracle - 1.0) if oracle > 1.0 else float("nan")


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
def mining_figures(
    net: torch.nn.Module,
    images: torch.Tensor,
    views: Sequence[str] = TEACHER_VIEWS,
    mask_ratio: float = 0.75,
    hard_ratio: float = HARD_RATIO,
    trials: int = 8,
    draws: int = 8,
    passes: int = 4,
    seed: int = 0,
    norm_pix_loss: bool = True,
) -> dict[str, object]:
    """What hard patches mining gets from a network on held-out crops, per teacher view and beside two baselines.

    Each patch's true difficulty is its reconstruction loss when masked, averaged over ``trials`` random masks
    (:func:`~selfmedhpm.visualize.loss_when_masked`). Each scorer (the ``views`` of
    :class:`~selfmedhpm.views.TeacherView`; ``"position"``, the mean true loss at each patch position over the *other*
    crops; ``"oracle"``, each patch's true loss itself) is judged twice, over ``draws`` draws per crop (the masked and
    reconstruction views draw new masks each time):

    - ``tau``: Kendall tau between its scores and the true losses, per crop, over the patches it scores (the
      reconstruction view scores the masked patches of its one pass), averaged;
    - ``mask_loss_ratio``: the masked patches' reconstruction loss under the HPM mask its scores choose (``mask_ratio``
      masked, ``hard_ratio`` of them the top-scored, the rest random) over that under random masks, same network,
      per crop, averaged. Above 1: harder than random, as HPM intends;
    - ``oracle_share``: :func:`oracle_share` of that ratio.

    Also the masked pass (what the ranking loss trains): per crop and random mask, tau of the loss predictor's outputs
    for the masked patches against their losses under that mask (``masked_tau``), and of position alone
    (``masked_position_tau``); and ``position_share``, the share of the variance of the full-view predictions that
    patch position explains (near 1: it learnt where patches are usually hard rather than what makes them hard).

    Args:
        net: an :class:`~selfmedhpm.networks.HPMMaskedAutoEncoder` (load the teacher's weights to assess the teacher).
        images: held-out crops ``[N, C, H, W, D]`` of the network's input size, N >= 2.
        views: teacher views to assess.
        mask_ratio: gamma of every mask.
        hard_ratio: alpha of the assessed HPM masks.
        trials: random masks behind the true losses (and the random-mask reference).
        draws: HPM masks per crop and scorer.
        passes: R of the masked view.
        seed: seed of every mask.
        norm_pix_loss: targets as in training.

    Returns:
        ``{"scorers": {name: {"tau", "mask_loss_ratio", "oracle_share"}}`` for each view and baseline, the same
        ``tau`` and ``mask_loss_ratio`` per crop in ``"per_crop"`` (for paired tests), ``"masked_tau"``,
        ``"masked_position_tau"`` (lists) and ``"position_share"``.

    Examples::

        >>> from selfmedhpm.networks import HPMMaskedAutoEncoder
        >>> net = HPMMaskedAutoEncoder(img_size=32, hidden_size=48, mlp_dim=96, num_heads=4, decoder_hidden_size=24,
        ...                            decoder_mlp_dim=48, decoder_num_layers=1, decoder_num_heads=4)
        >>> figures = mining_figures(net, torch.rand(3, 1, 32, 32, 32), trials=4, draws=2)
        >>> sorted(figures["scorers"]), round(figures["scorers"]["oracle"]["tau"], 6), len(figures["masked_tau"])
        (['full', 'masked', 'oracle', 'position', 'reconstruction'], 1.0, 12)
    """
    net = unwrap(net)
    was_training = net.training
    net.eval()
    generator = torch.Generator(device=images.device).manual_seed(seed)
    true, passes_ = loss_when_masked(net, images, generator, mask_ratio, trials, norm_pix_loss)  # [N, L]
    seen = ~true.isnan()
    count = sum(mask.float() for mask, _, _ in passes_)  # [N, L]: masks that hid each patch
    total = torch.where(seen, true, 0.0) * count  # [N, L], summed over those masks
    n = images.shape[0]
    position = torch.stack([
        (total.sum(0) - total[i]) / (count.sum(0) - count[i]).clamp(min=1) for i in range(n)
    ])  # [N, L]: the mean true loss at each position over the other crops  # fmt: skip
    masked_taus, masked_position_taus = [], []
    for i in range(n):
        for mask, loss, predicted in passes_:
            masked_taus.append(kendall_tau(predicted[i][mask[i]], loss[i][mask[i]]))
            masked_position_taus.append(kendall_tau(position[i][mask[i]], loss[i][mask[i]]))
    random_loss = torch.stack([masked_mean(loss, mask) for mask, loss, _ in passes_]).mean(0)  # [N]
    oracle = torch.where(seen, true, true.nanmean(1, keepdim=True))  # [N, L]
    scorers: dict[str, Callable[[], torch.Tensor]] = {
        view: (lambda v=TeacherView(view, mask_ratio, passes, norm_pix_loss): v(net, images, generator))
        for view in views
    }
    scorers.update(position=lambda: position, oracle=lambda: oracle)
    target = patch_targets(images, net.patch_size, norm_pix_loss)
    figures: dict[str, dict[str, float]] = {}
    per_crop: dict[str, dict[str, list[float]]] = {}
    for name, scorer in scorers.items():
        taus, hard_losses = [], []
        for draw in range(draws):
            scores = scorer()  # [N, L]
            scored = seen & (scores > VISIBLE_SCORE) if name == "reconstruction" else seen
            if draw == 0 or name in ("masked", "reconstruction"):  # the others score alike in every draw
                taus.append([kendall_tau(scores[i][scored[i]], true[i][scored[i]]) for i in range(n)])
            mask = hard_patch_mask(scores, mask_ratio, hard_ratio, generator)  # [N, L]
            hard_losses.append(masked_mean(per_patch_loss(net(images, mask)[0], target), mask))  # [N]
        ratios = torch.stack(hard_losses).mean(0) / random_loss  # [N]
        per_crop[name] = {"tau": np.mean(taus, axis=0).tolist(), "mask_loss_ratio": ratios.tolist()}
        figures[name] = {"tau": float(np.mean(taus)), "mask_loss_ratio": float(ratios.mean())}
    for name, row in figures.items():
        row["oracle_share"] = oracle_share(row["mask_loss_ratio"], figures["oracle"]["mask_loss_ratio"])
    share = float("nan")
    if "full" in views:
        predicted = net.predict_patch_loss(images).float()  # [N, L]
        by_position = predicted.mean(0, keepdim=True).expand_as(predicted)
        spread = (predicted - predicted.mean()).pow(2).sum().clamp(min=1e-12)
        share = 1.0 - float((predicted - by_position).pow(2).sum() / spread)
    net.train(was_training)
    return {
        "scorers": figures,
        "per_crop": per_crop,
        "masked_tau": masked_taus,
        "masked_position_tau": masked_position_taus,
        "position_share": share,
    }


def mining_table(scorers: dict[str, dict[str, float]], spread: dict[str, dict[str, float]] | None = None) -> str:
    """The Markdown table of :func:`mining_figures`' ``scorers`` (tau, mask loss ratio, share of the oracle's gain), in
    the order of :data:`SCORERS`; with ``spread`` (the same keys, standard deviations over seeds) cells read
    ``mean +- std``.

    Examples::

        >>> print(mining_table({"full": {"tau": 0.05, "mask_loss_ratio": 1.019, "oracle_share": 0.33}}))
        | scores that choose the mask | Kendall tau | mask loss ratio | share of the oracle's gain |
        | --- | --- | --- | --- |
        | full view (HPM's paper and code) | 0.050 | 1.019 | 33% |
        <BLANKLINE>
    """
    rows = []
    for name, title in SCORERS.items():
        if name not in scorers:
            continue
        row, std = scorers[name], (spread or {}).get(name, {})
        cells = [title]
        for key, fmt in (("tau", "{:.3f}"), ("mask_loss_ratio", "{:.3f}"), ("oracle_share", "{:.0%}")):
            text = "n/a" if np.isnan(row[key]) else fmt.format(row[key])
            if key in std and not np.isnan(std[key]):
                text += " +- " + fmt.format(std[key])
            cells.append(text)
        rows.append("| " + " | ".join(cells) + " |")
    header = "| scores that choose the mask | Kendall tau | mask loss ratio | share of the oracle's gain |\n"
    return header + "| --- | --- | --- | --- |\n" + "\n".join(rows) + "\n"

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

"""What HPM does, as a picture: CT slices, the mask the teacher chooses, the reconstruction, the predicted loss maps
(from the full view, which chooses the mask, and from masked passes, which the ranking loss trains) and the true
one."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from ignite.engine import Engine, Events  # noqa: E402
from selfmedhpm.ema import unwrap  # noqa: E402
from selfmedhpm.masking import hard_patch_mask  # noqa: E402
from selfmedhpm.networks import HPMMaskedAutoEncoder  # noqa: E402
from selfmedhpm.patches import patch_targets, per_patch_loss  # noqa: E402
from selfmedhpm.utils import as_bool  # noqa: E402
from selfmedhpm.views import TeacherView, masked_mean, standardise_masked  # noqa: E402

__all__ = [
    "center_crop",
    "masked_mean",
    "loss_when_masked",
    "masked_prediction_map",
    "hpm_views",
    "batch_images",
    "plot_hpm_figure",
    "HPMFigureSaver",
]

logger = logging.getLogger(__name__)
TRUE_LOSS_MASKS = 8  # random masks behind the figure's true-loss map


def center_crop(volume: torch.Tensor, roi_size: Sequence[int]) -> torch.Tensor:
    """Central ``roi_size`` crop of ``[N, C, H, W, D]``, zero-padded where the volume is smaller."""
    pads = []
    for size, roi in zip(reversed(volume.shape[2:]), reversed(list(roi_size))):
        missing = max(roi - size, 0)
        pads += [missing // 2, missing - missing // 2]
    volume = F.pad(volume, pads)
    starts = [(s - r) // 2 for s, r in zip(volume.shape[2:], roi_size)]
    return volume[
        :,
        :,
        starts[0] : starts[0] + roi_size[0],
        starts[1] : starts[1] + roi_size[1],
        starts[2] : starts[2] + roi_size[2],
    ]


@torch.no_grad()
def loss_when_masked(
    net: HPMMaskedAutoEncoder,
    images: torch.Tensor,
    generator: torch.Generator | None,
    mask_ratio: float = 0.75,
    trials: int = 4,
    norm_pix_loss: bool = True,
) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """Each patch's true difficulty, what the loss predictor should rank: its reconstruction loss when masked,
    averaged over ``trials`` random masks of ratio ``mask_ratio``.

    Args:
        net: an :class:`~selfmedhpm.networks.HPMMaskedAutoEncoder` (in eval mode for a deterministic answer).
        images: crops ``[N, C, H, W, D]`` of the network's input size.
        generator: random source of the masks (None: torch's global one).
        mask_ratio: gamma of the random masks.
        trials: random masks per crop.
        norm_pix_loss: targets as in training.

    Returns:
        The mean loss ``[N, L]`` (NaN for a patch that no mask hid) and, per mask, ``(mask, per-patch loss, the loss
        predictor's output of that masked pass)``, each ``[N, L]``.

    Examples::

        >>> net = HPMMaskedAutoEncoder(img_size=32, hidden_size=48, mlp_dim=96, num_heads=4, decoder_hidden_size=24,
        ...                            decoder_mlp_dim=48, decoder_num_layers=1, decoder_num_heads=4).eval()
        >>> mean, passes = loss_when_masked(net, torch.rand(2, 1, 32, 32, 32), None, trials=3)
        >>> mean.shape, len(passes), int(passes[0][0].sum())  # 6 of 8 patches masked per crop
        (torch.Size([2, 8]), 3, 12)
    """
    total = torch.zeros(images.shape[0], net.num_patches, device=images.device)
    count = torch.zeros_like(total)
    target = patch_targets(images, net.patch_size, norm_pix_loss)  # [N, L, voxels per patch]
    passes = []
    for _ in range(trials):
        mask = hard_patch_mask(torch.zeros_like(total), mask_ratio, 0.0, generator)  # [N, L], True = masked
        reconstruction, predicted = net(images, mask)
        loss = per_patch_loss(reconstruction, target)  # [N, L]
        passes.append((mask, loss, predicted.float()))
        total += torch.where(mask, loss, 0.0)
        count += mask.float()
    return torch.where(count > 0, total / count.clamp(min=1), torch.nan), passes


def masked_prediction_map(passes: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """What the loss predictor expects of each patch when it is hidden: per masked pass of :func:`loss_when_masked`,
    its outputs for the masked patches standardised over those patches (the ranking loss fixes their order, not their
    offset or scale; all equal: 0), then averaged per patch over the passes that masked it (NaN where none did).

    Args:
        passes: ``(mask, loss, predicted)`` per masked pass, each ``[N, L]``.

    Returns:
        ``[N, L]``; high: ranked among the hardest of the masked patches.

    Examples::

        >>> mask = torch.tensor([[True, True, True, False]])
        >>> masked_prediction_map([(mask, None, torch.tensor([[0.0, 0.0, 3.0, 9.0]]))])
        tensor([[-0.5774, -0.5774,  1.1547,     nan]])
    """
    masks = torch.stack([mask for mask, _, _ in passes])  # [R, N, L]
    total = standardise_masked(torch.stack([predicted for _, _, predicted in passes]), masks).sum(0)
    count = masks.sum(0)
    return torch.where(count > 0, total / count.clamp(min=1), torch.nan)


@torch.no_grad()
def hpm_views(
    net: HPMMaskedAutoEncoder,
    crop: torch.Tensor,
    mask_ratio: float = 0.75,
    hard_ratio: float = 0.5,
    seed: int = 0,
    norm_pix_loss: bool = True,
    teacher_view: str = "full",
    teacher_passes: int = 4,
) -> dict[str, np.ndarray]:
    """Volumes ``[H, W, D]`` of one crop ``[1, C, H, W, D]``: the image, the HPM mask (1 = masked), the
    reconstruction (visible patches pasted), the scores of the teacher's view that choose the mask (``heatmap``; see
    :class:`~selfmedhpm.views.TeacherView`), the loss predicted when masked (``masked_prediction``:
    :func:`masked_prediction_map`, what the ranking loss trains) and, to judge them by, each patch's true loss when
    masked (``true_loss``); the last two over the same :data:`TRUE_LOSS_MASKS` random masks
    (:func:`loss_when_masked`)."""
    net = unwrap(net).eval()
    generator = torch.Generator(device=crop.device).manual_seed(seed)
    view = TeacherView(teacher_view, mask_ratio, teacher_passes, norm_pix_loss)
    scores = view(net, crop, generator)  # [1, L]
    mask = hard_patch_mask(scores, mask_ratio, hard_ratio, generator)  # [1, L]
    recon = net.reconstruct_volume(crop, mask, norm_pix_loss=norm_pix_loss)
    true_loss, passes = loss_when_masked(net, crop, generator, mask_ratio, TRUE_LOSS_MASKS, norm_pix_loss)
    p = net.patch_size

    def to_voxels(per_patch: torch.Tensor) -> np.ndarray:
        grid = per_patch.reshape(1, 1, *net.grid).float()
        return F.interpolate(grid, scale_factor=p, mode="nearest")[0, 0].cpu().numpy()

    return {
        "image": crop[0, 0].float().cpu().numpy(),
        "mask": to_voxels(mask.float()),
        "reconstruction": recon[0, 0].float().cpu().numpy(),
        "heatmap": to_voxels(scores),
        "masked_prediction": to_voxels(masked_prediction_map(passes)),
        "true_loss": to_voxels(true_loss),
    }


def plot_hpm_figure(
    views: dict[str, np.ndarray], path: str | os.PathLike, title: str = "", teacher_view: str = "full"
) -> Path:
    """PNG with rows of axial and coronal slices (two of each) and columns CT | mask | reconstruction | the scores of
    the ``teacher_view`` that chose the mask | predicted loss when masked | true loss when masked (the last two where
    ``views`` has them). Each map column has its own colour bar (scores and squared errors are on different scales)."""
    image = views["image"]
    h, w, d = image.shape
    cuts = [("axial", 2, d // 3), ("axial", 2, 2 * d // 3), ("coronal", 1, w // 2), ("coronal", 1, w // 3)]
    columns = [
        ("CT (pre-processed)", "image", "gray"),
        ("HPM mask (hidden)", "mask", None),
        ("reconstruction", "reconstruction", "gray"),
        (f"teacher's scores, {teacher_view} view", "heatmap", "inferno"),
        ("predicted loss when masked", "masked_prediction", "inferno"),
        ("true loss when masked", "true_loss", "inferno"),
    ]
    units = {
        "heatmap": "score (higher: harder)",
        "masked_prediction": "score, standardised per mask",
        "true_loss": "reconstruction error (MSE)",
    }
    columns = [c for c in columns if c[1] in views]
    fig, axes = plt.subplots(
        len(cuts),
        len(columns),
        figsize=(2.9 * len(columns), 2.7 * len(cuts) + 0.9),
        layout="constrained",
        squeeze=False,
    )
    # each map on its own scale (predicted scores are logits of a ranking, true losses are squared errors)
    ranges = {k: (float(np.nanmin(v)), float(np.nanmax(v))) for k, v in views.items() if k in units}
    for col, (name, key, cmap) in enumerate(columns):
        shown = None
        for row, (plane, axis, index) in enumerate(cuts):
            ax = axes[row, col]
            take = lambda v: np.rot90(np.take(v, index, axis=axis))  # noqa: E731
            if key == "mask":
                ax.imshow(take(image), cmap="gray", vmin=0, vmax=1)
                ax.imshow(np.ma.masked_where(take(views["mask"]) < 0.5, take(views["mask"])), cmap="autumn", alpha=0.55)
            elif key in ranges:
                shown = ax.imshow(take(views[key]), cmap=cmap, vmin=ranges[key][0], vmax=ranges[key][1])
            else:
                ax.imshow(take(views[key]), cmap=cmap, vmin=0, vmax=1)
            ax.set_axis_off()
            if row == 0:
                ax.set_title(name, fontsize=10)
            if col == 0:
                ax.text(-0.05, 0.5, f"{plane} {index}", transform=ax.transAxes, rotation=90, va="center", ha="right")
        if shown is not None:
            bar = fig.colorbar(shown, ax=axes[:, col], location="bottom", shrink=0.9, aspect=18, pad=0.01)
            bar.set_label(units[key], fontsize=9)
            bar.ax.tick_params(labelsize=8)
    fig.suptitle(title, fontsize=11)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def batch_images(engine: Engine, key: str = "image") -> list[tuple[str, torch.Tensor]]:
    """``(file name, image [C, H, W, D])`` of each item of the engine's current batch, whether the batch is still
    collated (a dict) or already decollated by MONAI's workflow (a list of dicts).

    Examples::

        >>> engine = Engine(lambda e, b: None)
        >>> engine.state.batch, engine.state.iteration = {"image": torch.zeros(2, 1, 4, 4, 4)}, 3
        >>> [(name, tuple(image.shape)) for name, image in batch_images(engine)]
        [('case3_0', (1, 4, 4, 4)), ('case3_1', (1, 4, 4, 4))]
    """
    batch = engine.state.batch
    items = batch if isinstance(batch, list) else [{key: image} for image in batch[key]]
    found = []
    for i, item in enumerate(items):
        image = item[key]
        name = getattr(image, "meta", {}).get("filename_or_obj", f"case{engine.state.iteration}_{i}")
        found.append((str(name), image))
    return found


class HPMFigureSaver:
    """Inference handler: for each volume of the batch, a PNG ``<stem>_hpm.png`` from the central crop of the
    pre-processed image (:func:`hpm_views` and :func:`plot_hpm_figure`).

    Args:
        output_dir: folder of the PNGs.
        net: the HPM network (teacher weights).
        roi_size: crop size of the network.
        mask_ratio: gamma. Defaults to 0.75.
        hard_ratio: hard share of the shown mask (alpha_T, the last epoch's). Defaults to 0.5.
        norm_pix_loss: whether the network was pretrained on per-patch normalised targets. Defaults to True.
        teacher_view: the view whose scores choose the shown mask (:class:`~selfmedhpm.views.TeacherView`).
            Defaults to "full".
        teacher_passes: masked passes of the ``"masked"`` view. Defaults to 4.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        net: HPMMaskedAutoEncoder,
        roi_size: Sequence[int],
        mask_ratio: float = 0.75,
        hard_ratio: float = 0.5,
        norm_pix_loss: bool = True,
        teacher_view: str = "full",
        teacher_passes: int = 4,
    ) -> None:
        self.output_dir, self.net, self.roi_size = Path(output_dir), net, list(roi_size)
        self.mask_ratio, self.hard_ratio = mask_ratio, hard_ratio
        self.teacher_view, self.teacher_passes = teacher_view, teacher_passes
        self.norm_pix_loss = as_bool(norm_pix_loss, "norm_pix_loss")

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        for name, image in batch_images(engine):
            volume = torch.as_tensor(image)[None].to(engine.state.device).float()  # [1, C, H, W, D]
            crop = center_crop(volume, self.roi_size)
            views = hpm_views(self.net, crop, self.mask_ratio, self.hard_ratio, norm_pix_loss=self.norm_pix_loss,
                              teacher_view=self.teacher_view, teacher_passes=self.teacher_passes)  # fmt: skip
            stem = Path(name).name.split(".")[0]
            path = plot_hpm_figure(views, self.output_dir / f"{stem}_hpm.png", f"{stem}: hard-patch mining",
                                   self.teacher_view)  # fmt: skip
            logger.info("wrote %s", path)

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

"""The demo's report: per-organ Dice table (CSV and Markdown), Dice bar chart, training curves, overlays."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from selfmedhpm.labels import BTCV_CLASSES  # noqa: E402

__all__ = [
    "dice_rows",
    "write_dice_table",
    "carry_over_gaps",
    "write_carry_over_table",
    "markdown_table",
    "plot_dice_bars",
    "plot_curves",
    "plot_overlay",
]


def _value(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def dice_rows(summaries: Mapping[str, Mapping]) -> list[list]:
    """Rows ``[organ, dice of run 1, dice of run 2, ...]`` then the 13-organ and 8-organ means, from evaluation
    ``summary.json`` contents keyed by run name (e.g. ``{"HPM": ..., "scratch": ...}``)."""
    runs = list(summaries)
    organs = list(next(iter(summaries.values()))["organs"])
    rows = [[organ] + [_value(summaries[r]["organs"][organ]["dice"]["mean"]) for r in runs] for organ in organs]
    for group, title in (("all_organs", f"mean ({len(organs)} organs)"), ("transunet_8_organs", "mean (8 organs)")):
        if all(group in summaries[r]["mean_dice"] for r in runs):
            rows.append([title] + [_value(summaries[r]["mean_dice"][group]) for r in runs])
    return rows


def write_dice_table(summaries: Mapping[str, Mapping], out_dir: str | os.PathLike) -> tuple[Path, Path, str]:
    """Writes ``dice_table.csv`` and ``dice_table.md`` into ``out_dir``; returns both paths and the Markdown."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs, rows = list(summaries), dice_rows(summaries)
    with open(out / "dice_table.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["organ"] + [f"dice_{r}" for r in runs])
        writer.writerows([[row[0]] + [f"{v:.4f}" for v in row[1:]] for row in rows])
    text = markdown_table(["organ"] + [f"Dice, {r}" for r in runs], rows)
    (out / "dice_table.md").write_text(text)
    return out / "dice_table.csv", out / "dice_table.md", text


def carry_over_gaps(seen: Mapping[str, Mapping], new: Mapping[str, Mapping]) -> dict[str, float]:
    """Per run, the 13-organ mean Dice on the new look minus that on the seen look (NaN where either is undefined).

    Examples::

        >>> carry_over_gaps({"a": {"mean_dice": {"all_organs": 0.6}}}, {"a": {"mean_dice": {"all_organs": 0.45}}})
        {'a': -0.15}
    """
    return {run: round(_value(new[run]["mean_dice"]["all_organs"]) - _value(seen[run]["mean_dice"]["all_organs"]), 6)
            for run in seen}  # fmt: skip


def write_carry_over_table(
    seen: Mapping[str, Mapping], new: Mapping[str, Mapping], out_dir: str | os.PathLike
) -> tuple[Path, str]:
    """``carry_over.csv`` in ``out_dir`` and its Markdown: per organ and mean, each run's Dice on the seen look (the
    validation cases) beside its Dice on the new look (held-out cases of settings the training never saw), then the
    new-minus-seen gap of the 13-organ mean. ``seen``, ``new``: evaluation ``summary.json`` contents keyed by run."""
    runs, seen_rows, new_rows = list(seen), dice_rows(seen), dice_rows({r: new[r] for r in seen})
    header = ["organ"] + [f"{r}, {look}" for r in runs for look in ("seen look", "new look")]
    rows = [[a[0]] + [v for i in range(len(runs)) for v in (a[1 + i], b[1 + i])] for a, b in zip(seen_rows, new_rows)]
    gaps = carry_over_gaps(seen, new)
    rows.append(["new minus seen, 13-organ mean"] + [v for r in runs for v in ("", gaps[r])])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "carry_over.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["organ"] + [f"dice_{r}_{look}" for r in runs for look in ("seen", "new")])
        writer.writerows([[row[0]] + [v if v == "" else f"{v:.4f}" for v in row[1:]] for row in rows])
    return out / "carry_over.csv", markdown_table(header, rows)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A GitHub Markdown table; floats with 3 decimals, NaN as "n/a".

    Examples::

        >>> print(markdown_table(["organ", "Dice"], [["liver", 0.91234]]))
        | organ | Dice |
        | --- | --- |
        | liver | 0.912 |
        <BLANKLINE>
    """

    def cell(v: object) -> str:
        if isinstance(v, float):
            return "n/a" if math.isnan(v) else f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot_dice_bars(summaries: Mapping[str, Mapping], path: str | os.PathLike) -> Path:
    """Grouped bar chart of per-organ mean Dice, one bar per run."""
    rows = [r for r in dice_rows(summaries) if not r[0].startswith("mean")]
    runs = list(summaries)
    x = np.arange(len(rows))
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(8, 0.7 * len(rows)), 4.2))
    for i, run in enumerate(runs):
        values = [0.0 if math.isnan(r[1 + i]) else r[1 + i] for r in rows]
        ax.bar(x + (i - (len(runs) - 1) / 2) * width, values, width, label=run)
    ax.set_xticks(x, [r[0] for r in rows], rotation=40, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean Dice (validation)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_curves(
    pretrain_history: Sequence[Mapping] | None, finetune_histories: Mapping[str, Sequence[Mapping]], path
) -> Path:
    """Training curves: HPM pretraining losses (reconstruction, loss prediction) and, per fine-tuning run, the
    training loss and the validation mean Dice per epoch."""
    panels = 3 if pretrain_history else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.8))
    if pretrain_history:
        ax = axes[0]
        epochs = [r["epoch"] for r in pretrain_history]
        ax.plot(epochs, [r["rec_loss"] for r in pretrain_history], label="reconstruction")
        ax.plot(epochs, [r["pred_loss"] for r in pretrain_history], label="loss prediction (ranking)")
        ax.set_title("HPM pretraining")
        ax.set_xlabel("epoch")
        ax.legend()
    loss_ax, dice_ax = axes[-2], axes[-1]
    for name, history in finetune_histories.items():
        loss_ax.plot([r["epoch"] for r in history], [r["loss"] for r in history], label=name)
        minutes = np.cumsum([r.get("seconds", 0.0) for r in history]) / 60.0  # training time at each epoch's end
        dice = [(t, r["val_mean_dice"]) for t, r in zip(minutes, history) if r.get("val_mean_dice") is not None]
        if dice:
            dice_ax.plot(*zip(*dice), marker="o", label=name)
    loss_ax.set_title("fine-tuning: DiceCE loss")
    loss_ax.set_xlabel("epoch")
    dice_ax.set_title("fine-tuning: validation mean Dice (13 organs)")
    dice_ax.set_xlabel("training time (minutes)")
    for ax in (loss_ax, dice_ax):
        ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def plot_overlay(
    image: np.ndarray,
    label: np.ndarray,
    pred: np.ndarray,
    path: str | os.PathLike,
    num_classes: int = 14,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Axial slices (rows) of the CT with the reference label and the prediction as colour overlays, in the
    radiological convention (the patient's right on the left of the image, anterior at the top), cropped to the body,
    with a legend of the organs shown.

    Args:
        image, label, pred: ``[X, Y, Z]`` arrays in RAS+ voxel order (``nibabel.as_closest_canonical``), the image
            scaled to 0..1.
        path: the PNG to write.
        num_classes: label values 0..num_classes-1 (colours).
        class_names: a name per label value, background first; default BTCV's when ``num_classes`` is 14.
    """
    if class_names is None:
        class_names = BTCV_CLASSES if num_classes == len(BTCV_CLASSES) else [str(k) for k in range(num_classes)]
    z_sizes = [int((label == k).sum(axis=(0, 1)).argmax()) for k in (6, 2, 1) if (label == k).any()]
    slices = sorted(set(z_sizes or [image.shape[2] // 2]))[:3]
    body = np.argwhere((image > 0.05).any(axis=2))  # [N, 2] in-plane voxels inside the body on some slice
    (x0, y0), (x1, y1) = (body.min(axis=0), body.max(axis=0) + 1) if body.size else ((0, 0), image.shape[:2])
    x0, y0 = max(x0 - 2, 0), max(y0 - 2, 0)
    x1, y1 = min(x1 + 2, image.shape[0]), min(y1 + 2, image.shape[1])
    crop = lambda v: v[x0:x1, y0:y1]  # noqa: E731
    aspect = (x1 - x0) / max(y1 - y0, 1)  # displayed width over height
    fig, axes = plt.subplots(
        len(slices), 2, figsize=(6.4, 3.2 * len(slices) / aspect + 1.2), squeeze=False, layout="constrained"
    )
    cmap = plt.get_cmap("tab20", num_classes)
    for row, z in enumerate(slices):
        for col, (title, seg) in enumerate((("reference label", label), ("prediction", pred))):
            ax = axes[row, col]
            ax.imshow(_axial(crop(image[:, :, z])), cmap="gray", vmin=0, vmax=1)
            shown = np.ma.masked_where(seg[:, :, z] == 0, seg[:, :, z])
            ax.imshow(_axial(crop(shown)), cmap=cmap, vmin=0, vmax=num_classes - 1, alpha=0.5, interpolation="nearest")
            ax.set_title(f"{title}, slice {z}", fontsize=9)
            ax.set_axis_off()
    present = sorted({int(v) for v in np.unique(label[:, :, slices])} | {int(v) for v in np.unique(pred[:, :, slices])})
    handles = [Patch(color=cmap(k), alpha=0.7, label=class_names[k]) for k in present if 0 < k < len(class_names)]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    return _save(fig, path)


def _axial(plane: np.ndarray) -> np.ndarray:
    """An RAS+ ``[X, Y]`` plane as displayed by radiologists: rows from anterior to posterior, columns from the
    patient's right to the left."""
    return np.rot90(plane)[:, ::-1]


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path

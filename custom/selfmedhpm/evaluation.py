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

"""Segmentation reports: per-case, per-organ Dice and HD95 tables and their summary (13-organ and TransUNet
8-organ means), written by an evaluator handler from MONAI's metric details.

Conventions. Dice is MONAI's ``DiceMetric`` (``ignore_empty=True``): NaN when the organ is absent from the label,
whatever the prediction. HD95 is MONAI's 95th-percentile Hausdorff distance in mm: NaN when the organ is absent
from the label or from the prediction. NaN values are left out of every mean and counted (``*_undefined``).
Organ means are means over cases; the "mean over organs" rows average the organs' means.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.handlers import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric, HausdorffDistanceMetric
from selfmedhpm.labels import TRANSUNET_8_ORGANS, organ_names, subset_indices
from selfmedhpm.utils import atomic_write, is_rank0, write_json_atomic

__all__ = [
    "DEFAULT_SUBSETS",
    "SpacingHausdorffDistanceMetric",
    "PerClassMetric",
    "summarize",
    "summary_table",
    "write_reports",
    "SegmentationReport",
    "log_validation",
]

logger = logging.getLogger(__name__)

DEFAULT_SUBSETS: dict[str, list[str]] = {"transunet_8_organs": list(TRANSUNET_8_ORGANS.values())}
"""Organ subsets whose mean Dice the report adds to the all-organ mean (skipped when an organ is not in the set)."""


class SpacingHausdorffDistanceMetric(HausdorffDistanceMetric):
    """MONAI's ``HausdorffDistanceMetric`` in millimetres: the voxel spacing of each case is read from the
    prediction's ``MetaTensor`` affine (``pixdim``) unless ``spacing`` is given, so distances are right on the
    pre-processed grid and on the original grid (after ``Invertd``) alike. Use it in an ``IgniteMetricHandler``.

    Args:
        spacing: fixed voxel spacing, or None to read it from each prediction. Defaults to None.
        kwargs: ``HausdorffDistanceMetric`` arguments (``include_background``, ``percentile``, ``reduction``, ...).

    Examples::

        >>> pred, label = torch.zeros(1, 2, 8, 8, 8), torch.zeros(1, 2, 8, 8, 8)
        >>> pred[0, 1, 2:4, 2:4, 2:4], label[0, 1, 2:4, 2:4, 4:6] = 1, 1
        >>> metric = SpacingHausdorffDistanceMetric(percentile=95)
        >>> affine = torch.diag(torch.tensor([1.0, 1.0, 3.0, 1.0]))
        >>> metric(MetaTensor(pred[0], affine=affine)[None], label).tolist()
        [[6.0]]
    """

    def __init__(self, spacing: Sequence[float] | float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spacing = spacing

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        spacing = kwargs.pop("spacing", None) or self.spacing
        if spacing is None and isinstance(y_pred, MetaTensor):
            pixdim = y_pred.pixdim
            spacing = [p.tolist() for p in pixdim] if isinstance(pixdim, list) else pixdim.tolist()
        return super()._compute_tensor(y_pred, y, spacing=spacing, **kwargs)


class PerClassMetric(IgniteMetricHandler):
    """A MONAI metric per class as one named scalar per class: ``engine.state.metrics[name]`` is
    ``{prefix + class name: value}``. Loggers that take only scalars (MLflow, TensorBoard) log each class
    separately, and history records keep the class names.

    Args:
        metric_fn: a MONAI metric reducing to one value per class, e.g.
            ``DiceMetric(include_background=False, reduction="mean_batch")``.
        class_names: one name per channel the metric returns (``class_names[1:]`` without background).
        prefix: prepended to each class name. Defaults to "".
        output_transform: as for MONAI's metric handlers, e.g. ``from_engine(["pred", "label"])``.
        save_details: keep per-case values in ``engine.state.metric_details``. Defaults to True.

    Examples::

        >>> from ignite.engine import Engine
        >>> from monai.metrics import DiceMetric
        >>> metric = PerClassMetric(DiceMetric(reduction="mean_batch"), ["liver", "spleen"], prefix="dice/")
        >>> engine = Engine(lambda e, b: b)
        >>> metric.attach(engine, "val_dice_per_organ")
        >>> y = torch.zeros(1, 2, 4, 4, 4)
        >>> y[:, 0, :2], y[:, 1, 2:] = 1, 1
        >>> engine.run([(y, y)]).metrics["val_dice_per_organ"]
        {'dice/liver': 1.0, 'dice/spleen': 1.0}
    """

    def __init__(
        self,
        metric_fn: CumulativeIterationMetric,
        class_names: Sequence[str],
        prefix: str = "",
        output_transform: Any = lambda x: x,
        save_details: bool = True,
    ) -> None:
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)
        self.keys = [f"{prefix}{name}" for name in class_names]

    def compute(self) -> dict[str, float]:
        values = torch.as_tensor(super().compute()).reshape(-1).tolist()
        if len(values) != len(self.keys):
            raise ValueError(f"the metric gave {len(values)} values for {len(self.keys)} classes {self.keys}.")
        return dict(zip(self.keys, values))

    def completed(self, engine: Engine, name: str) -> None:
        """Puts the per-class dict under ``name`` only (ignite would also spread its keys over the metrics)."""
        engine.state.metrics[name] = self.compute()


def _stats(values: np.ndarray) -> dict[str, float | int | None]:
    finite = values[np.isfinite(values)]
    return {
        "mean": float(finite.mean()) if finite.size else None,
        "std": float(finite.std()) if finite.size else None,
        "cases": int(finite.size),
        "undefined": int(values.size - finite.size),
    }


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(kept)) if kept else None


def summarize(
    dice: np.ndarray | torch.Tensor,
    class_names: Sequence[str],
    hd95: np.ndarray | torch.Tensor | None = None,
    subsets: Mapping[str, Sequence[str]] | None = None,
) -> dict:
    """Summary of per-case, per-organ scores: each organ's mean, std, number of cases with a defined value and of
    undefined (NaN) ones; the mean over all organs and over each subset of organs (of the organs' means).

    Args:
        dice: ``[cases, organs]`` Dice, background excluded, NaN where undefined.
        class_names: the label set, background first (organs are ``class_names[1:]``).
        hd95: ``[cases, organs]`` HD95 in mm, or None.
        subsets: named organ subsets, e.g. :data:`DEFAULT_SUBSETS`; a subset with an organ outside the label set is
            skipped. Defaults to :data:`DEFAULT_SUBSETS`.

    Examples::

        >>> from selfmedhpm.labels import BTCV_CLASSES
        >>> dice = np.full((2, 13), 0.5)
        >>> dice[0, 4] = np.nan  # esophagus missing from case 0's label
        >>> s = summarize(dice, BTCV_CLASSES)
        >>> s["mean_dice"], s["organs"]["esophagus"]["dice"]["undefined"]
        ({'all_organs': 0.5, 'transunet_8_organs': 0.5}, 1)
    """
    organs = organ_names(class_names)
    subsets = DEFAULT_SUBSETS if subsets is None else subsets
    tables = {"dice": np.asarray(dice, dtype=np.float64)}
    if hd95 is not None:
        tables["hd95_mm"] = np.asarray(hd95, dtype=np.float64)
    for name, table in tables.items():
        if table.ndim != 2 or table.shape[1] != len(organs):
            raise ValueError(f"{name} must be [cases, {len(organs)} organs] for {organs}, got {table.shape}.")
    per_organ = {organ: {name: _stats(table[:, i]) for name, table in tables.items()} for i, organ in enumerate(organs)}
    groups = {"all_organs": list(range(len(organs)))}
    for subset, names in subsets.items():
        indices = subset_indices(class_names, names)
        if indices is None:
            logger.info("summary: subset %s skipped, not all of its organs are in the label set", subset)
        else:
            groups[subset] = indices
    summary: dict[str, Any] = {"num_cases": int(tables["dice"].shape[0]), "organs": per_organ}
    for name in tables:
        summary[f"mean_{name}"] = {
            group: _mean([per_organ[organs[i]][name]["mean"] for i in indices]) for group, indices in groups.items()
        }
    summary["groups"] = {group: [organs[i] for i in indices] for group, indices in groups.items()}
    return summary


def _fmt(value: float | None) -> str:
    return "nan" if value is None or not math.isfinite(value) else f"{value:.6g}"


def _fixed(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def summary_table(summary: Mapping[str, Any]) -> str:
    """The summary of :func:`summarize` as a Markdown table a person reads: one row per organ in label order (Dice
    mean and std over cases, 3 decimals; HD95 in mm, 1 decimal; cases with a defined Dice), then the group means.

    Examples::

        >>> from selfmedhpm.labels import BTCV_CLASSES
        >>> table = summary_table(summarize(np.full((2, 13), 0.5), BTCV_CLASSES))
        >>> print("\\n".join(table.splitlines()[:3] + table.splitlines()[-2:]))
        | organ | Dice | std | cases |
        | --- | --- | --- | --- |
        | spleen | 0.500 | 0.000 | 2 |
        | mean over all organs (13) | 0.500 | | |
        | mean over transunet 8 organs (8) | 0.500 | | |
    """
    hd95 = "mean_hd95_mm" in summary
    header = "| organ | Dice | std |" + (" HD95 mm |" if hd95 else "") + " cases |"
    lines = [header, "| --- " * (header.count("|") - 1) + "|"]
    for organ, stats in summary["organs"].items():
        dice = stats["dice"]
        cells = [organ, _fixed(dice["mean"]), _fixed(dice["std"])]
        cells += [_fixed(stats["hd95_mm"]["mean"], 1)] if hd95 else []
        lines.append("| " + " | ".join(cells + [str(dice["cases"])]) + " |")
    for group, members in summary["groups"].items():
        cells = [f"mean over {group.replace('_', ' ')} ({len(members)})", _fixed(summary["mean_dice"][group]), ""]
        cells += [_fixed(summary["mean_hd95_mm"][group], 1)] if hd95 else []
        lines.append("| " + " | ".join(cells + [""]) + " |")
    return "\n".join(re.sub(r"\|  (?=\|)", "| ", line) for line in lines)


def log_validation(engine: Engine) -> None:
    """Epoch printer of a training run's validation (MONAI ``StatsHandler(epoch_print_logger=...)``): the mean Dice,
    the best so far and its epoch, and the per-organ Dice as a table in label order (3 decimals), instead of one line
    of every metric sorted by name."""
    metrics = engine.state.metrics
    key = engine.state.key_metric_name
    lines = [f"validation after epoch {engine.state.epoch}: {key} {_fixed(metrics.get(key))}"]
    best, best_epoch = getattr(engine.state, "best_metric", None), getattr(engine.state, "best_metric_epoch", None)
    if best is not None and best_epoch is not None and best_epoch >= 0:
        lines[0] += f" (best {_fixed(best)} at epoch {best_epoch})"
    for name, value in metrics.items():
        if isinstance(value, Mapping) and value:
            width = max(len(str(k).split("/")[-1]) for k in value)
            lines += [f"  {str(k).split('/')[-1]:<{width}}  {_fixed(v)}" for k, v in value.items()]
    logger.info("\n".join(lines))


_STATS = ("mean", "std", "cases", "undefined")


def _cell(stats: Mapping[str, Any], key: str) -> str:
    value = stats.get(key)
    if key in ("mean", "std"):
        return _fmt(value) if key in stats else ""
    return "" if value is None else str(value)


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    def write(f):
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)

    atomic_write(path, write)


def write_reports(
    output_dir: str | os.PathLike,
    case_names: Sequence[str],
    class_names: Sequence[str],
    dice: np.ndarray | torch.Tensor,
    hd95: np.ndarray | torch.Tensor | None = None,
    subsets: Mapping[str, Sequence[str]] | None = None,
    grid: str = "",
) -> dict:
    """Writes the evaluation reports into ``output_dir`` and returns the summary (:func:`summarize`):

    - ``dice_per_case.csv`` (and ``hd95_per_case.csv``): one row per case (``case`` = the image file name), one
      column per organ;
    - ``summary.csv``: per organ, then per organ group, the mean, std and counts of Dice (and HD95 in mm);
    - ``summary.json``: the same, with the all-organ and subset means under ``mean_dice`` / ``mean_hd95_mm``;
    - ``summary.md``: :func:`summary_table`, for a person.

    Args:
        output_dir: the report folder (created).
        case_names: one name per row of ``dice``.
        class_names: the label set, background first.
        dice: ``[cases, organs]`` Dice.
        hd95: ``[cases, organs]`` HD95 in mm, or None.
        subsets: organ subsets to average, see :func:`summarize`.
        grid: where the metrics were computed (recorded in the summary), e.g. "pre-processed 1.5x1.5x2.0 mm".
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    organs = organ_names(class_names)
    summary = summarize(dice, class_names, hd95, subsets)
    if len(case_names) != summary["num_cases"]:
        raise ValueError(f"{len(case_names)} case names for {summary['num_cases']} rows of scores.")
    summary["cases"] = [str(c) for c in case_names]
    summary["grid"] = grid
    tables = {"dice": dice} if hd95 is None else {"dice": dice, "hd95": hd95}
    for name, table in tables.items():
        rows = [[case] + [_fmt(float(v)) for v in row] for case, row in zip(case_names, np.asarray(table))]
        _write_csv(out / f"{name}_per_case.csv", ["case"] + organs, rows)
    metrics = [m for m in ("dice", "hd95_mm") if f"mean_{m}" in summary]
    header = ["organ"] + [f"{m}_{s}" for m in metrics for s in _STATS]
    rows = [[organ] + [_cell(summary["organs"][organ][m], s) for m in metrics for s in _STATS] for organ in organs]
    for group, members in summary["groups"].items():
        means = {m: {"mean": summary[f"mean_{m}"][group]} for m in metrics}
        rows.append([f"mean over {group} ({len(members)})"] + [_cell(means[m], s) for m in metrics for s in _STATS])
    _write_csv(out / "summary.csv", header, rows)
    write_json_atomic(summary, out / "summary.json")
    title = f"# Evaluation: {summary['num_cases']} cases" + (f" ({grid})" if grid else "")
    atomic_write(out / "summary.md", lambda f: f.write(f"{title}\n\n{summary_table(summary)}\n"))
    return summary


def _case_name(item: Any, image_key: str) -> str:
    image = item.get(image_key) if isinstance(item, Mapping) else None
    meta = getattr(image, "meta", None) or (item.get(f"{image_key}_meta_dict") if isinstance(item, Mapping) else None)
    name = (meta or {}).get("filename_or_obj", "")
    return os.path.basename(str(name).rstrip("/")) or "?"


def _gather_strings(values: list[str]) -> list[str]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        from monai.utils import string_list_all_gather

        return string_list_all_gather(values)
    return values


class SegmentationReport:
    """Evaluator handler writing :func:`write_reports` after each evaluation run (and :meth:`log_summary`, the table a
    run ends with), from the per-case details that
    MONAI's metric handlers keep (``save_details=True``): the Dice of ``dice_metric`` (a ``MeanDice`` with
    ``include_background=False``) and, optionally, the HD95 of ``hd95_metric`` (an ``IgniteMetricHandler`` of
    :class:`SpacingHausdorffDistanceMetric`). Case names come from the image meta (``filename_or_obj``).
    Under torch.distributed every rank must attach it (names are gathered); rank 0 writes.

    Args:
        output_dir: the report folder.
        class_names: the label set, background first.
        dice_metric: name of the Dice metric in the evaluator. Defaults to "val_mean_dice".
        hd95_metric: name of the HD95 metric, or None. Defaults to "val_hd95".
        subsets: organ subsets to average. Defaults to :data:`DEFAULT_SUBSETS`.
        image_key: key of the image in the evaluator's batch. Defaults to "image".
        grid: where the metrics are computed, recorded in the summary.
    """

    every_rank = True

    def __init__(
        self,
        output_dir: str | os.PathLike,
        class_names: Sequence[str],
        dice_metric: str = "val_mean_dice",
        hd95_metric: str | None = "val_hd95",
        subsets: Mapping[str, Sequence[str]] | None = None,
        image_key: str = "image",
        grid: str = "",
    ) -> None:
        self.output_dir, self.class_names = Path(output_dir), list(class_names)
        self.dice_metric, self.hd95_metric, self.subsets = dice_metric, hd95_metric, subsets
        self.image_key, self.grid = image_key, grid
        self.case_names: list[str] = []
        self.summary: dict | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self.case_names = []

    def _collect(self, engine: Engine) -> None:
        batch = engine.state.batch
        items = batch if isinstance(batch, (list, tuple)) else engine.state.output
        self.case_names += [_case_name(item, self.image_key) for item in items]

    def _details(self, engine: Engine, name: str | None) -> np.ndarray | None:
        if name is None:
            return None
        details = getattr(engine.state, "metric_details", {})
        if name not in details:
            raise KeyError(f"metric {name!r} has no per-case details; add it with save_details=True.")
        table = torch.as_tensor(details[name]).float().cpu().numpy()
        return table[:, 1:] if table.shape[1] == len(self.class_names) else table  # drop a background column

    def __call__(self, engine: Engine) -> None:
        names = _gather_strings(self.case_names)
        dice, hd95 = self._details(engine, self.dice_metric), self._details(engine, self.hd95_metric)
        if not is_rank0():
            return
        self.summary = write_reports(self.output_dir, names, self.class_names, dice, hd95, self.subsets, self.grid)

    def log_summary(self) -> str | None:
        """Logs (rank 0) and returns the per-organ table of the last evaluation and where its reports are: what an
        evaluation run ends with (``evaluate.json`` calls it after the evaluator's run)."""
        if self.summary is None:
            return None
        text = (
            f"evaluation of {self.summary['num_cases']} cases:\n{summary_table(self.summary)}\n"
            f"reports in {self.output_dir} (summary.md, summary.csv, summary.json, dice_per_case.csv)"
        )
        if is_rank0():
            logger.info(text)
        return text

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

"""Builds ``OUT/dataset_0.json`` (and the label-set override ``OUT/labels.json``) from what a layout found.

The data list keeps MONAI's BTCV layout, with paths **relative to** ``--src``, so both bundles take it as it is with
``--dataset_dir SRC --datalist OUT/dataset_0.json`` (series converted from DICOM live under ``OUT/images/`` and are
listed relative to ``SRC`` too, e.g. ``../out/images/x.nii.gz``). Splits:

- ``training`` / ``validation``: the labelled cases, split by name (BTCV: ``monai`` 24/6, ``transunet`` 18/12) or at
  random (``--val_fraction``, ``--seed``);
- ``unlabeled``: images without labels (BTCV's Testing images, Decathlon ``test``, nnU-Net ``imagesTs``, images
  without a label, DICOM series), written only when there are some. The pretraining bundle uses
  ``training`` + ``unlabeled`` by default, never ``validation``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from selfmedhpm.check_data import Problem
from selfmedhpm.errors import UserInputError
from selfmedhpm.labels import BTCV_CLASSES, check_label_set
from selfmedhpm_tools.datalists.core import Case, Scan, inspect_cases, label_value_problems, shown, spacing_range
from selfmedhpm_tools.datalists.dicom import write_nifti
from selfmedhpm_tools.datalists.layouts import LAYOUTS, SCANNERS, UNLABELED, detect_layout
from selfmedhpm_tools.datalists.splits import split_cases
from selfmedhpm_tools.label_metadata import channel_def

PRETRAIN = "bundles/selfmedhpm_ct_pretraining/configs"
SEGMENT = "bundles/selfmedhpm_ct_segmentation/configs"


class DatalistError(UserInputError, ValueError):
    """The builder cannot run as asked (no such ``--src``, an existing output, a split that does not apply)."""


@dataclass
class Result:
    """What :func:`build_datalist` found and wrote.

    Attributes:
        src: the data folder (absolute).
        layout: the layout used, or None when none was recognised.
        splits: split name -> cases (``training``, ``validation``, ``unlabeled``).
        problems: every problem found, each naming its file.
        written: the files written (none when nothing usable was found).
        summary: the lines :func:`summary` printed after the problems.
        kept_with_errors: errors of cases that stay in the list (labels with values the label set does not name):
            the fine-tuning's data check refuses them until they are fixed.
    """

    src: str
    layout: str | None
    splits: dict[str, list[Case]] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    summary: str = ""
    kept_with_errors: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


def build_datalist(
    src: str,
    out: str,
    layout: str | None = None,
    labels: str | None = None,
    split: str | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    convert: str = "auto",
    read_label_values: bool = True,
    overwrite: bool = False,
) -> Result:
    """Finds the cases of ``src``, checks them and writes ``out/dataset_0.json`` (plus ``out/labels.json`` and
    ``out/labels_metadata.json`` when the data names its labels). Never raises for a data problem: every one is in
    ``Result.problems``; nothing is written when no usable image is found.

    Args:
        src: the data folder, in one of :data:`~selfmedhpm_tools.datalists.layouts.LAYOUTS`.
        out: the folder to write to (created).
        layout: the layout, or None to detect it.
        labels: a folder of labels matched by name (``folder`` and ``dicom`` layouts).
        split: ``monai``, ``transunet`` (BTCV) or ``random``; None: ``monai`` for BTCV, else ``random``.
        val_fraction: share of labelled cases in validation (random split).
        seed: seed of the random split.
        convert: DICOM series to write as NIfTI: ``auto`` (those MONAI cannot read from their folder), ``all``,
            ``none``.
        read_label_values: read label voxels (label values against the label set, and the summary).
        overwrite: replace ``out/dataset_0.json`` (and the other outputs) when they exist.

    Raises:
        DatalistError: ``src`` missing, outputs that exist without ``overwrite``, an unknown layout or split, or a
            BTCV split asked for cases that are not BTCV's.

    Examples::

        >>> import tempfile
        >>> from selfmedhpm_tools.phantom import generate_dataset
        >>> src, out = tempfile.mkdtemp(), tempfile.mkdtemp()
        >>> _ = generate_dataset(src, cases=3, seed=0, shape=(32, 32, 16), verbose=False)
        >>> result = build_datalist(src, out)
        >>> result.layout, {k: len(v) for k, v in result.splits.items()}, [os.path.basename(p) for p in result.written]
        ('folder', {'training': 2, 'validation': 1}, ['dataset_0.json'])
    """
    src, out = os.path.abspath(src), os.path.abspath(out)
    if not os.path.isdir(src):
        raise DatalistError(f"{src}: folder not found (--src)")
    if layout is not None and layout not in LAYOUTS:
        raise DatalistError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if convert not in ("auto", "all", "none"):
        raise DatalistError(f"--convert must be auto, all or none, got {convert!r}")
    existing = [p for p in (os.path.join(out, n) for n in ("dataset_0.json", "labels.json")) if os.path.exists(p)]
    if existing and not overwrite:
        raise DatalistError(f"{existing[0]}: already exists; pass --overwrite to replace it")
    layout = layout or detect_layout(src)
    if labels and layout not in ("folder", "dicom"):
        raise DatalistError(f"--labels applies to plain folders and DICOM series; {src} is a {layout} layout")
    result = Result(src, layout)
    if layout is None:
        result.problems.append(Problem(src, "no known layout: " + _LAYOUT_HELP))
        result.summary = f"nothing usable found in {src}"
        return result
    scan = SCANNERS[layout](src, labels)
    _convert_dicom(scan, src, out, convert)
    cases, found = inspect_cases(scan.cases, src, read_label_values)
    result.problems = scan.problems + found
    class_names, label_set = _label_set(scan, result)
    if read_label_values:
        result.kept_with_errors = label_value_problems(cases, class_names, label_set.split(" (")[0], src)
        result.problems += result.kept_with_errors
    labelled = [c for c in cases if c.label and c.split is None]
    method = split or ("monai" if layout == "btcv" else "random")
    try:
        training, validation, notes = split_cases(labelled, method, val_fraction, seed)
    except ValueError as e:
        raise DatalistError(str(e)) from None
    result.problems += [Problem(n.split(": ", 1)[0], n.split(": ", 1)[1], "warning") for n in notes]
    unlabeled = [c for c in cases if not (c.label and c.split is None)]
    result.splits = {"training": training, "validation": validation}
    if unlabeled:
        result.splits[UNLABELED] = unlabeled
    if labelled and not validation:
        result.problems.append(Problem(src, f"the {method} split puts no case in validation; the segmentation "
                                            "bundle needs one (try --split random)"))  # fmt: skip
    if not cases:
        result.summary = f"nothing usable found in {src} (layout {layout})"
        return result
    result.written = _write(result, out, scan, class_names, method, val_fraction, seed)
    result.summary = summary(result, scan, label_set, method, out)
    return result


_LAYOUT_HELP = (
    "expected BTCV's RawData/Training/img, a dataset.json (Decathlon or nnU-Net), image files (.nii.gz, .nii, "
    ".nrrd, .mha) in the folder or in images/ or imagesTr/, or DICOM series"
)


def _convert_dicom(scan: Scan, src: str, out: str, convert: str) -> None:
    kept, converted = [], 0
    for case in scan.cases:
        series = case.series
        if series is None or (series.own_folder and convert != "all"):
            kept.append(case)
            continue
        if convert == "none":
            scan.error(shown(series.folder, src), f"{series.description} shares its folder with "
                       "another series (or its InstanceNumbers do not follow the slice order), so it cannot be "
                       "listed as a folder; left out (use --convert auto)")  # fmt: skip
            continue
        case.image = write_nifti(series, os.path.join(out, "images", case.name + ".nii.gz"))
        kept.append(case)
        converted += 1
    if converted:
        scan.notes.append(f"converted {converted} DICOM series to NIfTI under {os.path.join(out, 'images')}")
    scan.cases = kept


def _label_set(scan: Scan, result: Result) -> tuple[list[str], str]:
    if scan.class_names:
        try:
            return check_label_set(scan.class_names), f"{scan.label_source} ({len(scan.class_names)} classes)"
        except ValueError as e:
            result.problems.append(Problem(scan.label_source or "labels", f"{e}; no label set written"))
            scan.class_names = None
    return list(BTCV_CLASSES), f"BTCV (the bundles' default, {len(BTCV_CLASSES)} classes)"


def _entry(case: Case, src: str, with_label: bool) -> dict:
    entry = {"image": os.path.relpath(case.image, src)}
    if with_label:
        entry["label"] = os.path.relpath(case.label, src)
    return entry


def _write(result: Result, out: str, scan: Scan, class_names: list[str], method: str, val_fraction: float,
           seed: int) -> list[str]:  # fmt: skip
    os.makedirs(out, exist_ok=True)
    src = result.src
    data = {
        "name": os.path.basename(src),
        "description": f"built by python -m selfmedhpm_tools.datalist from {src} ({scan.layout}: {scan.description})",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(i): n for i, n in enumerate(class_names)},
        "layout": scan.layout,
        "dataset_dir": src,
        "paths": "relative to dataset_dir: run the bundles with --dataset_dir DATASET_DIR --datalist THIS_FILE",
        "split": {"method": method, **({"val_fraction": val_fraction, "seed": seed} if method == "random" else {})},
        **{f"num{k.capitalize()}": len(v) for k, v in result.splits.items()},
    }
    for name, cases in result.splits.items():
        data[name] = [_entry(c, src, name != UNLABELED) for c in cases]
    written = [os.path.join(out, "dataset_0.json")]
    with open(written[0], "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2) + "\n")
    if scan.class_names:
        override = {"num_classes": len(class_names), "class_names": class_names}
        legend = ", ".join(f"{i} {n}" for i, n in enumerate(class_names))
        meta = {
            "network_data_format#outputs#pred#num_channels": len(class_names),
            "network_data_format#outputs#pred#channel_def": channel_def(class_names),
            "label_classes": legend,
            "pred_classes": f"{len(class_names)} channels (softmax logits), one per label value of label_classes",
        }
        for name, content in (("labels.json", override), ("labels_metadata.json", meta)):
            written.append(os.path.join(out, name))
            with open(written[-1], "w", encoding="utf-8") as f:
                f.write(json.dumps(content, indent=4) + "\n")
    return written


def _values(cases: list[Case]) -> str:
    values = sorted({v for c in cases for v in c.label_values})
    if not values:
        return "not read"
    if values == list(range(values[0], values[-1] + 1)) and len(values) > 2:
        return f"{values[0]}..{values[-1]}"
    return ", ".join(map(str, values))


def summary(result: Result, scan: Scan, label_set: str, method: str, out: str) -> str:
    """The summary printed after the problems: cases per split, label set, spacings, outputs, next commands."""
    splits = result.splits
    everything = [c for cases in splits.values() for c in cases]
    labelled = splits["training"] + splits["validation"]
    n_err, n_unlabeled = len(result.errors), len(splits.get(UNLABELED, []))
    datalist, src = result.written[0], result.src
    configs = f"{SEGMENT}/train.json" + (f"','{os.path.join(out, 'labels.json')}" if scan.class_names else "")
    cases = f"cases: {len(everything)} images: {len(labelled)} labelled"
    if labelled:
        cases += f" (training {len(splits['training'])}, validation {len(splits['validation'])}; split {method})"
    problems = f"{_count(n_err, 'error')}, {_count(len(result.problems) - n_err, 'warning')} (listed above)"
    lines = [
        f"source: {src}",
        f"layout: {scan.layout}, {scan.description}",
        f"{cases}, {n_unlabeled} unlabelled",
        f"label set: {label_set}; label values found: {_values(labelled) if labelled else 'no labels'}",
        f"spacing: {spacing_range(everything)}",
        *scan.notes,
        f"problems: {problems if result.problems else 'none'}",
        f"wrote: {', '.join(result.written)} (image paths relative to {src})",
    ]
    data = f"--dataset_dir {src} --datalist {datalist}"
    steps = [("pretrain", PRETRAIN, f"{PRETRAIN}/train.json")]
    if labelled:
        steps.append(("fine-tune", SEGMENT, configs))
    if result.kept_with_errors:
        kept = len(result.kept_with_errors)
        lines.append(
            f"NOTE: {_count(kept, 'labelled case')} in the list {'has' if kept == 1 else 'have'} the label errors "
            "above: the fine-tune commands below stop at their data check until the labels are fixed (or the label "
            "set names their values); pretraining reads the images only and runs."
        )
    lines.append("next (from the repository root; the paper-scale preset needs a GPU, the CPU preset runs in minutes "
                 "on a CPU):")  # fmt: skip
    for step, folder, files in steps:
        lines.append(f"  {step}, GPU (paper scale):  python -m monai.bundle run --config_file \"['{files}']\" {data}")
        lines.append(f"  {step}, CPU preset:          python -m monai.bundle run --config_file "
                     f"\"['{files}','{folder}/train_cpu.json']\" {data}")  # fmt: skip
    return "\n".join(lines)


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"

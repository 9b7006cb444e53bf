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

"""The layouts users arrive with, how each is recognised, and what its scanner finds.

=========  ==========================================================================================================
layout     recognised by
=========  ==========================================================================================================
btcv       BTCV as Synapse distributes it: ``RawData/Training/img/img0001.nii.gz``, ``.../label/label0001.nii.gz``,
           ``RawData/Testing/img/`` (``--src`` may be ``RawData`` or the folder above it)
nnunet     nnU-Net v2 raw: ``dataset.json`` with ``channel_names``/``file_ending``, ``imagesTr/<case>_0000<ending>``,
           ``labelsTr/<case><ending>``, ``imagesTs/``
msd        a Medical Segmentation Decathlon task: ``dataset.json`` with ``training``, ``test``, ``labels``, ``modality``
dicom      DICOM files anywhere under ``--src`` (see :mod:`selfmedhpm_tools.datalists.dicom`)
folder     image files in ``--src`` (or in ``--src/images`` / ``imagesTr``), labels with the same names in
           ``--labels DIR`` (or ``--src/labels`` / ``labelsTr``); ``imagesTs`` images are unlabelled
=========  ==========================================================================================================
"""

from __future__ import annotations

import json
import os

from selfmedhpm_tools.datalists.core import IMAGE_ENDINGS, Case, Scan, image_files, pair_by_name, shown, strip_ending
from selfmedhpm_tools.datalists.dicom import find_dicom_files, scan_dicom, series_cases

LAYOUTS = ("btcv", "msd", "nnunet", "folder", "dicom")
UNLABELED = "unlabeled"


def _btcv_root(src: str) -> str | None:
    for root in (os.path.join(src, "RawData"), src):
        if os.path.isdir(os.path.join(root, "Training", "img")):
            return root
    return None


def _dataset_json(src: str) -> dict | None:
    path = os.path.join(src, "dataset.json")
    if not os.path.isfile(path):
        return None
    try:
        data = json.loads(open(path, encoding="utf-8").read())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _first_dir(src: str, names: tuple[str, ...]) -> str | None:
    return next((os.path.join(src, n) for n in names if os.path.isdir(os.path.join(src, n))), None)


def detect_layout(src: str) -> str | None:
    """The layout of the folder ``src``, or None when it is none of :data:`LAYOUTS`.

    Examples::

        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> os.makedirs(os.path.join(folder, "RawData", "Training", "img"))
        >>> detect_layout(folder)
        'btcv'
    """
    if _btcv_root(src):
        return "btcv"
    data = _dataset_json(src)
    if data is not None:
        return "nnunet" if "channel_names" in data or "file_ending" in data else "msd"
    if image_files(src)[0] or _first_dir(src, ("images", "imagesTr")):
        return "folder"
    if find_dicom_files(src, limit=1):
        return "dicom"
    return None


def _skipped(scan: Scan, skipped: list[str], src: str) -> None:
    if skipped:
        scan.warning(shown(skipped[0], src), f"skipped {len(skipped)} macOS '._' files like this one (not images)")


def scan_btcv(src: str, labels: str | None = None) -> Scan:
    """BTCV as distributed: labelled Training cases, Testing images as unlabelled data."""
    root = _btcv_root(src) or src
    scan = Scan("btcv", f"BTCV as distributed ({shown(root, src) if root != src else '.'}: Training/img + label, "
                        "Testing/img)")  # fmt: skip
    images, skipped = image_files(os.path.join(root, "Training", "img"))
    label_files, skipped_labels = image_files(os.path.join(root, "Training", "label"))
    _skipped(scan, skipped + skipped_labels, src)
    if not os.path.isdir(os.path.join(root, "Training", "label")):
        scan.warning(shown(os.path.join(root, "Training", "label"), src), "folder not found; no labels")
    scan.cases = pair_by_name(images, label_files, scan, src)
    testing, _ = image_files(os.path.join(root, "Testing", "img"))
    scan.cases += [Case(strip_ending(os.path.basename(p)), p, split=UNLABELED) for p in testing]
    return scan


def _modality_problem(channels: dict, what: str) -> str | None:
    names = [str(v) for v in channels.values()]
    if len(names) > 1:
        listed = ", ".join(f"{k}: {v}" for k, v in channels.items())
        return f"{what} has {len(names)} input channels ({listed}); this project takes one CT channel; refused"
    if names and "ct" not in names[0].lower():
        return (
            f"{what} says the images are {names[0]!r}, not CT; refused (this project segments CT; if they are CT, "
            f"name the channel 'CT' in dataset.json)"
        )
    return None


def _class_names(labels: dict, by_name: bool, scan: Scan, where: str) -> list[str] | None:
    """Class names by label value from a Decathlon (``{"0": "background"}``) or nnU-Net (``{"background": 0}``)
    ``labels`` dict; gaps become ``unused_<value>``; None (with a problem recorded) when unusable."""
    try:
        pairs = {int(v): str(k) for k, v in labels.items()} if by_name else {int(k): str(v) for k, v in labels.items()}
    except (TypeError, ValueError):
        scan.error(where, f"'labels' {labels} has values that are not single label values (region-based labels "
                          "are not supported); no label set written")  # fmt: skip
        return None
    if not pairs or min(pairs) != 0 or len(pairs) < 2:
        scan.error(where, f"'labels' must name background (0) and at least one class, got {labels}")
        return None
    names = [pairs.get(v, f"unused_{v}") for v in range(max(pairs) + 1)]
    if len(pairs) < len(names):
        scan.warning(where, f"'labels' skips values {[v for v in range(len(names)) if v not in pairs]}; "
                            "named unused_<value> in the label set")  # fmt: skip
    if names[0].lower() != "background":
        scan.warning(where, f"label 0 is named {names[0]!r}; renamed 'background' (the bundle's class 0)")
        names[0] = "background"
    if "ignore" in [n.lower() for n in names]:
        scan.warning(where, "has an 'ignore' label; the segmentation bundle trains it as a class of its own")
    return names


def scan_msd(src: str, labels: str | None = None) -> Scan:
    """A Decathlon task: ``training`` entries (image, label), ``test`` images as unlabelled data."""
    scan = Scan("msd", "Medical Segmentation Decathlon task (dataset.json: training, test, labels)")
    where = "dataset.json"
    data = _dataset_json(src)
    if not data:
        scan.error(where, "is not a readable JSON object; expected the Decathlon's dataset.json")
        return scan
    reason = _modality_problem(data.get("modality", {}) or {}, where)
    if reason:
        scan.error(where, reason)
        return scan
    if isinstance(data.get("labels"), dict):
        scan.class_names, scan.label_source = _class_names(data["labels"], False, scan, where), where
    for kind, entries in (("training", data.get("training", [])), ("test", data.get("test", []))):
        for i, entry in enumerate(entries if isinstance(entries, list) else []):
            image = entry.get("image") if isinstance(entry, dict) else entry
            label = entry.get("label") if isinstance(entry, dict) else None
            if not isinstance(image, str):
                scan.error(where, f"'{kind}'[{i}] has no image path; left out")
                continue
            image_path = _msd_file(src, image)
            if image_path is None:
                scan.error(image, f"listed in dataset.json '{kind}' but not found; left out")
                continue
            label_path = _msd_file(src, label) if isinstance(label, str) else None
            if isinstance(label, str) and label_path is None:
                scan.error(label, "listed in dataset.json but not found; the image is used as unlabelled data")
            name = strip_ending(os.path.basename(image_path))
            scan.cases.append(Case(name, image_path, label_path, split=UNLABELED if kind == "test" else None))
    _skipped(scan, image_files(os.path.join(src, "imagesTr"))[1] + image_files(os.path.join(src, "labelsTr"))[1], src)
    return scan


def _msd_file(src: str, rel: str) -> str | None:
    path = os.path.normpath(os.path.join(src, rel))
    if os.path.isfile(path):
        return path
    channel0 = strip_ending(path) + "_0000" + path[len(strip_ending(path)) :]  # nnU-Net v1 task: x_0000.nii.gz
    return channel0 if os.path.isfile(channel0) else None


def scan_nnunet(src: str, labels: str | None = None) -> Scan:
    """nnU-Net v2 raw: ``imagesTr/<case>_0000<ending>`` with ``labelsTr/<case><ending>``; ``imagesTs`` unlabelled."""
    scan = Scan("nnunet", "nnU-Net v2 raw data set (dataset.json, imagesTr, labelsTr, imagesTs)")
    where = "dataset.json"
    data = _dataset_json(src) or {}
    channels = data.get("channel_names", data.get("modality", {})) or {}
    reason = _modality_problem(channels, where)
    if reason:
        scan.error(where, reason)
        return scan
    if isinstance(data.get("labels"), dict):
        scan.class_names, scan.label_source = _class_names(data["labels"], True, scan, where), where
    ending = _file_ending(src, data, scan)
    for sub, split in (("imagesTr", None), ("imagesTs", UNLABELED)):
        files, skipped = image_files(os.path.join(src, sub), (ending,))
        _skipped(scan, skipped, src)
        for path in files:
            stem = strip_ending(os.path.basename(path), (ending,))
            if not stem.endswith("_0000"):
                reason = "a second input channel" if stem[-5:-4] == "_" and stem[-4:].isdigit() else "no _0000 suffix"
                scan.error(shown(path, src), f"{reason}: this project takes one CT channel (<case>_0000{ending}); "
                                             "left out")  # fmt: skip
                continue
            name = stem[: -len("_0000")]
            label = os.path.join(src, "labelsTr", name + ending) if split is None else None
            scan.cases.append(Case(name, path, label if label and os.path.isfile(label) else None, split=split))
    names = {c.name for c in scan.cases if c.split is None}
    for case in scan.cases:
        if case.split is None and case.label is None:
            scan.warning(shown(case.image, src), "has no label in labelsTr; used as unlabelled data")
    for path in image_files(os.path.join(src, "labelsTr"), (ending,))[0]:
        if strip_ending(os.path.basename(path), (ending,)) not in names:
            scan.error(shown(path, src), f"label has no image imagesTr/<same name>_0000{ending}; left out")
    return scan


def _file_ending(src: str, data: dict, scan: Scan) -> str:
    declared = data.get("file_ending")
    present = {e for e in IMAGE_ENDINGS for f in image_files(os.path.join(src, "imagesTr"))[0] if f.endswith(e)}
    present -= {".nii"} if ".nii.gz" in present else set()
    if declared in present or (declared and not present):
        return declared
    found = sorted(present)[0] if present else ".nii.gz"
    what = f"file_ending is {declared!r}" if declared else "has no file_ending"
    scan.warning("dataset.json", f"{what} but imagesTr holds {', '.join(sorted(present)) or 'no'} images; used "
                                 f"{found!r} (fix dataset.json for nnU-Net itself)")  # fmt: skip
    return found


def scan_folder(src: str, labels: str | None = None) -> Scan:
    """Image files in ``src`` (or ``src/images``, ``src/imagesTr``); labels by name in ``labels`` (or
    ``src/labels``, ``src/labelsTr``); ``src/imagesTs`` unlabelled."""
    image_dir = src if image_files(src)[0] else _first_dir(src, ("images", "imagesTr")) or src
    label_dir = labels or _first_dir(src, ("labels", "labelsTr"))
    what = f"images in {shown(image_dir, src) if image_dir != src else '.'}"
    scan = Scan("folder", what + (f", labels by name in {shown(label_dir, src)}" if label_dir else ", no labels"))
    images, skipped = image_files(image_dir)
    label_files, skipped_labels = image_files(label_dir) if label_dir else ([], [])
    if labels and not os.path.isdir(labels):
        scan.error(labels, "label folder not found (--labels)")
    _skipped(scan, skipped + skipped_labels, src)
    scan.cases = pair_by_name(images, label_files, scan, src)
    test_dir = _first_dir(src, ("imagesTs",))
    if test_dir:
        tests = image_files(test_dir)[0]
        scan.cases += [Case(strip_ending(os.path.basename(p)), p, split=UNLABELED) for p in tests]
    return scan


def scan_dicom_folders(src: str, labels: str | None = None) -> Scan:
    """DICOM series under ``src``; labels (NIfTI, ``<case name>.nii.gz``) from ``labels`` when given."""
    scan = Scan("dicom", "DICOM series" + (f", labels by case name in {labels}" if labels else ", no labels"))
    series = scan_dicom(src, scan)
    scan.cases = series_cases(series, src)
    if labels:
        by_name = {strip_ending(os.path.basename(p)): p for p in image_files(labels)[0]}
        for case in scan.cases:
            case.label = by_name.pop(case.name, None)
            if case.label is None:
                scan.warning(case.name, f"no label {case.name}.nii.gz in {labels}; used as unlabelled data")
        for path in by_name.values():
            scan.error(path, "label matches no DICOM series (expected <case name>.nii.gz); left out")
    return scan


SCANNERS = {"btcv": scan_btcv, "msd": scan_msd, "nnunet": scan_nnunet, "folder": scan_folder,
            "dicom": scan_dicom_folders}  # fmt: skip

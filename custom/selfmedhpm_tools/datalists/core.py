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

"""What every layout produces (:class:`Case`, :class:`Scan`), matching images to labels by name, and reading the
headers and label values of the cases found.

A layout scanner (:mod:`selfmedhpm_tools.datalists.layouts`, :mod:`selfmedhpm_tools.datalists.dicom`) only finds
files and pairs them; :func:`inspect_cases` then opens every image header (shape, spacing), checks each label against
its image (grid) and, optionally, reads the label values, reusing the readers of :mod:`selfmedhpm.check_data`.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from selfmedhpm.check_data import (
    Problem,
    _dims_problem,
    _grid_problem,
    _load,
    _open_volume,
    _ReadError,
    _spatial_shape,
    _Volume,
)

IMAGE_ENDINGS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
"""File endings taken as images in folder layouts (what MONAI's ``LoadImage`` reads)."""

PROGRESS_MIN_CASES = 20


@dataclass
class Case:
    """One image found, with its label when it has one.

    Attributes:
        name: the case name used for matching and splits (e.g. ``img0001``, ``la_003``, ``series_3``).
        image: absolute path of the image file or DICOM series folder (or, once converted, the NIfTI written).
        label: absolute path of the label file, or None for an unlabelled image.
        split: a split the layout fixes (e.g. ``"unlabeled"`` for BTCV's Testing images), else None.
        series: the :class:`~selfmedhpm_tools.datalists.dicom.Series` of a DICOM case, else None.
        shape: spatial shape of the image, filled by :func:`inspect_cases`.
        spacing: voxel size in mm, filled by :func:`inspect_cases`.
        label_values: the values found in the label, filled by :func:`inspect_cases`.
    """

    name: str
    image: str
    label: str | None = None
    split: str | None = None
    series: Any = None
    shape: tuple[int, ...] = ()
    spacing: tuple[float, ...] = ()
    label_values: tuple[int, ...] = ()


@dataclass
class Scan:
    """What a layout scanner found under ``--src``.

    Attributes:
        layout: the layout name (``btcv``, ``msd``, ``nnunet``, ``folder``, ``dicom``).
        description: one line for the summary (where images and labels were found).
        cases: the images found, labelled or not.
        problems: every problem found, each naming its file.
        class_names: the label set the data names (Decathlon / nnU-Net ``dataset.json``), else None.
        label_source: the file that names the label set.
        notes: extra lines for the summary.
    """

    layout: str
    description: str
    cases: list[Case] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    class_names: list[str] | None = None
    label_source: str | None = None
    notes: list[str] = field(default_factory=list)

    def error(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def warning(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message, "warning"))


def shown(path: str, root: str) -> str:
    """``path`` as the problems name it: relative to ``root`` when inside it, else as it is.

    Examples::

        >>> shown("/data/btcv/RawData/Training/img/img0001.nii.gz", "/data/btcv")
        'RawData/Training/img/img0001.nii.gz'
    """
    rel = os.path.relpath(path, root)
    return path if rel.startswith("..") else rel


def strip_ending(name: str, endings: Sequence[str] = IMAGE_ENDINGS) -> str:
    """The file name without its image ending (``.nii.gz`` counts as one).

    Examples::

        >>> strip_ending("img0001.nii.gz"), strip_ending("ct.nrrd"), strip_ending("notes.txt")
        ('img0001', 'ct', 'notes.txt')
    """
    for ending in sorted(endings, key=len, reverse=True):
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return name


def image_files(folder: str, endings: Sequence[str] = IMAGE_ENDINGS) -> tuple[list[str], list[str]]:
    """The image files of ``folder`` (sorted absolute paths) and the macOS ``._`` companions that were skipped."""
    if not os.path.isdir(folder):
        return [], []
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(tuple(endings)))
    files = [os.path.join(folder, n) for n in names if not n.startswith("._")]
    return [f for f in files if os.path.isfile(f)], [os.path.join(folder, n) for n in names if n.startswith("._")]


_PREFIX = re.compile(r"^(img|image|images|ct|label|labels|seg|segmentation|mask|gt)[_\-]?(?=.)", re.IGNORECASE)
_SUFFIX = re.compile(r"(?<=.)[_\-](img|image|ct|label|labels|seg|segmentation|mask|gt)$", re.IGNORECASE)


def case_key(name: str) -> str:
    """The part of a file name that pairs an image with its label: ending, a leading ``img``/``label``/``seg``... and
    a trailing ``_ct``/``_label``/``_seg``... removed, lower case.

    Examples::

        >>> case_key("img0001.nii.gz"), case_key("label0001.nii.gz"), case_key("Liver_07_seg.nii.gz")
        ('0001', '0001', 'liver_07')
    """
    stem = strip_ending(name)
    return _SUFFIX.sub("", _PREFIX.sub("", stem)).lower()


def pair_by_name(images: Sequence[str], labels: Sequence[str], scan: Scan, root: str) -> list[Case]:
    """Pairs image and label files by name (same name first, then the same :func:`case_key`) and reports the
    mismatches: an image without a label becomes an unlabelled case (a warning), a label without an image is left
    out (an error, naming the closest image name when there is one).

    Args:
        images: image files (absolute paths).
        labels: label files (absolute paths).
        scan: where problems are recorded.
        root: the ``--src`` folder, for naming files.
    """
    by_name = {os.path.basename(p): p for p in labels}
    by_key: dict[str, list[str]] = {}
    for path in labels:
        by_key.setdefault(case_key(os.path.basename(path)), []).append(path)
    used: set[str] = set()
    cases = []
    for image in images:
        name = os.path.basename(image)
        label = by_name.get(name)
        if label is None:
            candidates = [p for p in by_key.get(case_key(name), []) if p not in used]
            label = candidates[0] if len(candidates) == 1 else None
        if label is not None:
            used.add(label)
        cases.append(Case(strip_ending(name), image, label))
    unmatched = [p for p in labels if p not in used]
    lonely = [c for c in cases if c.label is None]
    lonely_keys = {case_key(os.path.basename(c.image)): os.path.basename(c.image) for c in lonely}
    for path in unmatched:
        key = case_key(os.path.basename(path))
        close = [k for k in difflib.get_close_matches(key, list(lonely_keys), n=1, cutoff=0.8) if not k.isdigit()]
        hint = f"; an image without a label has a similar name: {lonely_keys[close[0]]}" if close else ""
        scan.error(shown(path, root), f"label has no image of the same name; left out{hint}")
    if labels:
        for case in lonely:
            scan.warning(shown(case.image, root), "image has no label of the same name; used as unlabelled data")
    return cases


def _voxel_spacing(affine: np.ndarray) -> tuple[float, ...]:
    return tuple(float(s) for s in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


def inspect_cases(cases: list[Case], root: str, read_label_values: bool = True) -> tuple[list[Case], list[Problem]]:
    """Opens every image header (3D, readable: shape and spacing), checks each label against its image (readable,
    3D, same grid) and reads its values. A broken image leaves the case out; a broken label leaves the label out
    (the image stays, unlabelled). DICOM cases use the geometry their series already holds.

    Args:
        cases: the cases found by a layout.
        root: the ``--src`` folder, for naming files.
        read_label_values: read the label voxels for their values (the slowest part: one label at a time).

    Returns:
        (the usable cases, the problems found).
    """
    kept, problems = [], []
    for i, case in enumerate(cases, start=1):
        if len(cases) > PROGRESS_MIN_CASES and i % 10 == 0:
            print(f"read {i}/{len(cases)} cases", file=sys.stderr, flush=True)
        image_vol = None
        if case.series is not None:  # geometry from the DICOM headers
            case.shape, case.spacing = case.series.shape, case.series.spacing
            image_vol = _Volume(case.shape, case.series.affine, lambda: None)
        else:
            try:
                image_vol = _open_volume(case.image, shown(case.image, root))
            except _ReadError as e:
                problems.append(Problem(shown(case.image, root), f"{e}; left out"))
                continue
            reason = _dims_problem(image_vol.shape)
            if reason:
                problems.append(Problem(shown(case.image, root), f"{_explain_dims(image_vol.shape, reason)}; left out"))
                continue
            case.shape, case.spacing = _spatial_shape(image_vol.shape), _voxel_spacing(image_vol.affine)
        if case.label is not None:
            problem = _inspect_label(case, image_vol, root, read_label_values)
            if problem:
                problems.append(problem)
                case.label = None
        kept.append(case)
    return kept, problems


def _explain_dims(shape: tuple[int, ...], reason: str) -> str:
    if len(_spatial_shape(shape)) == 4:
        volumes = f"a 4D image: {shape[3]} volumes, e.g. several modalities or time points"
        return f"{reason} ({volumes}); this project takes one CT volume per image"
    return reason


def _inspect_label(case: Case, image_vol: Any, root: str, read_values: bool) -> Problem | None:
    where = shown(case.label, root)
    try:
        vol = _open_volume(case.label, where)
        reason = _dims_problem(vol.shape)
        if reason is None and image_vol is not None:
            reason = _grid_problem(shown(case.image, root), image_vol, vol)
        if reason:
            return Problem(where, f"{reason}; label left out, the image is used as unlabelled data")
        if read_values:
            data = np.asarray(_load(vol))
            values = np.unique(data)
            if data.dtype.kind == "f" and np.any(values != np.round(values)):
                return Problem(where, "has non-integer values; expected class indices; label left out")
            case.label_values = tuple(int(v) for v in values)
    except _ReadError as e:
        return Problem(where, f"{e}; label left out, the image is used as unlabelled data")
    return None


def label_value_problems(cases: Sequence[Case], class_names: Sequence[str], what: str, root: str) -> list[Problem]:
    """Errors for labels holding values the label set does not name (one per file), so they are known before
    training; the cases stay in the list (the segmentation bundle's data check refuses them until the label set
    fits).

    Args:
        cases: inspected cases.
        class_names: the label set, by value.
        what: how the label set is named in messages (e.g. ``dataset.json``).
        root: the ``--src`` folder, for naming files.
    """
    top = len(class_names) - 1
    problems = []
    for case in cases:
        outside = [v for v in case.label_values if v < 0 or v > top]
        if case.label and outside:
            values = ", ".join(map(str, outside[:10])) + (" ..." if len(outside) > 10 else "")
            problems.append(
                Problem(shown(case.label, root), f"has label values {values} that {what} does not name (0..{top})")
            )
    return problems


def spacing_range(cases: Sequence[Case]) -> str:
    """``x 0.68..0.98, y 0.68..0.98, z 2.5..5 mm`` over the cases' spacings.

    Examples::

        >>> spacing_range([Case("a", "a", spacing=(0.7, 0.7, 2.5)), Case("b", "b", spacing=(0.9, 0.9, 5.0))])
        'x 0.7..0.9, y 0.7..0.9, z 2.5..5 mm'
    """
    spacings = np.array([c.spacing for c in cases if len(c.spacing) == 3])
    if not spacings.size:
        return "unknown"
    lo, hi = spacings.min(axis=0), spacings.max(axis=0)
    parts = [f"{axis} {a:.3g}" + ("" if np.isclose(a, b) else f"..{b:.3g}") for axis, a, b in zip("xyz", lo, hi)]
    return ", ".join(parts) + " mm"

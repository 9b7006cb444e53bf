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

"""Check a BTCV-layout CT data set (or inference inputs) before any long work starts.

Every problem found is reported, not only the first, each naming the file as the user (or the datalist) wrote it,
what is wrong and what is expected. Headers are read first; voxel data is loaded only for labels (values) and,
with ``check_intensity``, for images (NaN/Inf and Hounsfield-unit checks), one volume at a time. Without it an image
is not decompressed: a cut-off ``.nii.gz`` is found from its gzip trailer, a NRRD from its header.

Usage::

    python -m selfmedhpm.check_data --dataset_dir /data/btcv [--splits training,validation] [--num_classes 14]
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import nibabel as nib
import numpy as np
from selfmedhpm.errors import UserInputError, install_excepthook

logger = logging.getLogger("selfmedhpm.check_data")

MONAI_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
EXPECTED_FORMATS = "expected NIfTI (.nii, .nii.gz), NRRD (.nrrd) or a DICOM folder"
MAX_LISTED = 10
PROGRESS_MIN_CASES = 20


@dataclass(frozen=True)
class Problem:
    """One problem found in a data set: the file as written by the user, what is wrong, and its severity.

    Examples:
        >>> print(Problem("imagesTr/x.nii.gz", "file not found"))
        ERROR  imagesTr/x.nii.gz: file not found
    """

    path: str
    message: str
    severity: str = "error"  # or "warning"

    def __str__(self) -> str:
        return f"{self.severity.upper()}  {self.path}: {self.message}"


class DataCheckError(UserInputError, ValueError):
    """Raised when a data check finds errors; ``.problems`` holds every problem found (warnings included).

    Examples:
        >>> err = DataCheckError([Problem("a.nii.gz", "file not found")], "/data/dataset_0.json")
        >>> print(err)
        data check failed: 1 problem in /data/dataset_0.json
          ERROR  a.nii.gz: file not found
    """

    def __init__(self, problems: Sequence[Problem], source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__(format_report(self.problems, source))

    def __reduce__(self) -> tuple[Any, ...]:
        return self.__class__, (self.problems, self.source)

    def summary(self) -> str:
        """The one problem as ``<file>: <problem>`` when there is one (one line), else the whole report."""
        errors = [p for p in self.problems if p.severity == "error"]
        return f"{errors[0].path}: {errors[0].message}" if len(self.problems) == 1 == len(errors) else str(self)


def _plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else many or word + 's'}"


def format_report(problems: Sequence[Problem], source: str = "") -> str:
    """Format problems as a header line (counting errors) followed by one indented line per problem."""
    n_err = sum(p.severity == "error" for p in problems)
    header = f"data check failed: {_plural(n_err, 'problem')}" + (f" in {source}" if source else "")
    if len(problems) > n_err:
        header += f" (and {_plural(len(problems) - n_err, 'warning')})"
    return "\n".join([header] + [f"  {p}" for p in problems])


# ----------------------------------------------------------------------------------------------- datalist


def load_datalist_checked(path: str, splits: Sequence[str], image_key: str = "image") -> dict:
    """Load a datalist JSON, raising DataCheckError (listing every structural problem) if it is unusable.

    Args:
        path: the datalist JSON file.
        splits: split names that must be present as non-empty lists (e.g. ``("training", "validation")``).
        image_key: the key every dict entry must have.

    Examples:
        >>> load_datalist_checked("/no/such/dataset_0.json", ["training"])
        Traceback (most recent call last):
        ...
        selfmedhpm.check_data.DataCheckError: data check failed: 1 problem in /no/such/dataset_0.json
          ERROR  /no/such/dataset_0.json: datalist not found; expected a JSON file with the 'training' split(s)
    """
    data, reason = _parse_json(path, ", ".join(repr(s) for s in splits))
    problems = [Problem(path, reason)] if reason else []
    problems += [Problem(path, m) for split in splits if not reason for m in _split_problems(data, split, image_key)]
    if problems:
        raise DataCheckError(problems, path)
    return data


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return names.get(type(value), "null" if value is None else type(value).__name__)


def _parse_json(path: str, wanted: str) -> tuple[Any, str | None]:
    """Return (parsed datalist, None), or (None, why the file is not a usable JSON object)."""
    if not os.path.isfile(path):
        return None, f"datalist not found; expected a JSON file with the {wanted} split(s)"
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        return None, f"cannot be read as a UTF-8 JSON text file: {e}"
    if not text.strip():
        return None, f"datalist is empty; expected a JSON object with the {wanted} split(s)"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
    if not isinstance(data, dict):
        return None, f"top level is a JSON {_json_type(data)}; expected an object with the {wanted} split(s)"
    return data, None


def _split_problems(data: dict, split: str, image_key: str) -> list[str]:
    if split not in data:
        return [f"has no '{split}' split (found keys: {', '.join(map(str, data)) or 'none'}); expected a list"]
    entries = data[split]
    if not isinstance(entries, list):
        return [f"'{split}' is a JSON {_json_type(entries)}; expected a list of entries"]
    if not entries:
        return [f"'{split}' is an empty list; expected at least one entry"]
    msgs = []
    for i, entry in enumerate(entries):
        where = f"'{split}'[{i}]"
        if isinstance(entry, dict) and image_key not in entry:
            msgs.append(f"{where} has no '{image_key}' key (keys: {', '.join(map(str, entry)) or 'none'})")
        elif isinstance(entry, dict) and not isinstance(entry[image_key], str):
            msgs.append(f"{where} '{image_key}' is a JSON {_json_type(entry[image_key])}; expected a path string")
        elif not isinstance(entry, (dict, str)):
            msgs.append(f"{where} is a JSON {_json_type(entry)}; expected a path string or an object")
    return msgs


def _cases(data: dict, splits: Sequence[str], keys: tuple[str, str], require_labels: bool) -> tuple[list, list]:
    """Collect unique (image, label) cases, plus problems for missing labels and images listed more than once."""
    image_key, label_key = keys
    cases: dict[tuple[str, str | None], None] = {}
    seen: dict[str, list[str]] = {}
    problems = []
    for split in splits:
        for entry in data[split]:
            image = entry if isinstance(entry, str) else entry[image_key]
            label = entry.get(label_key) if isinstance(entry, dict) else None
            if label is None and require_labels and split != "test":
                problems.append(Problem(image, f"'{split}' entry has no '{label_key}'; expected a label file"))
            elif label is not None and not isinstance(label, str):
                problems.append(Problem(image, f"'{label_key}' is a JSON {_json_type(label)}; expected a path"))
                label = None
            cases[(image, label)] = None
            seen.setdefault(image, []).append(split)
    for image, where in seen.items():
        if len(where) > 1:
            leak = "; cases shared between splits leak data" if len(set(where)) > 1 else ""
            problems.append(Problem(image, f"is listed {len(where)} times ({', '.join(where)}){leak}", "warning"))
    return list(cases), problems


# ----------------------------------------------------------------------------------------------- reading volumes


class _ReadError(Exception):
    """A file could not be opened as a volume; the message is the user-facing explanation."""


@dataclass
class _Volume:
    shape: tuple[int, ...]
    affine: np.ndarray
    load: Callable[[], np.ndarray]


def _sniff_nifti(path: str) -> str | None:
    """Return why ``path`` is not a NIfTI file at all (wrong magic), or None when it looks like one."""
    with open(path, "rb") as f:
        start = f.read(540)
    if not start:
        return "file is empty (0 bytes); expected a NIfTI image"
    if path.lower().endswith(".gz"):
        if start[:2] != b"\x1f\x8b":
            return f"is not a NIfTI .nii.gz image: it is not gzip-compressed (starts with {start[:16]!r})"
        try:
            with gzip.open(path, "rb") as g:
                start = g.read(540)
        except (OSError, EOFError):
            return None  # truncated or corrupt stream: reported as "cannot be read" by nibabel
    sizes = {int.from_bytes(start[:4], order) for order in ("little", "big")}
    if len(start) < 348 or not sizes & {348, 540}:
        return f"is not a NIfTI image (no NIfTI header; the file starts with {start[:16]!r})"
    return None


def _open_nifti(path: str) -> _Volume:
    reason = _sniff_nifti(path)
    if reason:
        raise _ReadError(reason)
    img = nib.load(path)
    shape = tuple(int(s) for s in img.shape)
    need = int(img.dataobj.offset) + int(np.prod(shape)) * img.get_data_dtype().itemsize  # header + voxels
    if path.lower().endswith(".nii") and os.path.getsize(path) < need:
        raise _ReadError(f"cannot be read: file is truncated ({os.path.getsize(path)} of {need} bytes)")
    if path.lower().endswith(".gz") and not _gzip_holds(path, need):
        raise _ReadError("cannot be read: file is truncated (its compressed data ends early)")
    return _Volume(shape, np.asarray(img.affine, dtype=float), lambda: np.asanyarray(img.dataobj))


def _gzip_holds(path: str, size: int) -> bool:
    """Whether a gzip file decompresses to at least ``size`` bytes, without decompressing it when its trailer (the
    uncompressed size modulo 2**32, the last 4 bytes) already says so; a cut-off file ends in other bytes."""
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        if int.from_bytes(f.read(4), "little") == size % 2**32:
            return True
    try:  # a trailer that does not match (several gzip members, padding): read the stream through once
        with gzip.open(path, "rb") as g:
            total = sum(len(chunk) for chunk in iter(lambda: g.read(1 << 20), b""))
    except (OSError, EOFError):
        return False
    return total >= size


NRRD_TO_RAS: dict[str, tuple[float, float, float]] = {
    "right-anterior-superior": (1.0, 1.0, 1.0),
    "left-anterior-superior": (-1.0, 1.0, 1.0),
    "left-posterior-superior": (-1.0, -1.0, 1.0),
}
"""NRRD patient spaces -> the signs that turn their world axes into RAS (``-time`` variants and the abbreviations
``RAS``, ``LAS``, ``LPS`` alike); a NRRD without ``space`` is read as LPS, as MONAI does."""


def nrrd_space_flip(space: str | None) -> tuple[float, float, float] | None:
    """The RAS signs of a NRRD ``space`` field, None for a space with no patient orientation (``scanner-xyz``,
    ``3D-right-handed``, ...), which the bundles cannot orient.

    Examples:
        >>> nrrd_space_flip("right-anterior-superior"), nrrd_space_flip("LPS"), nrrd_space_flip("scanner-xyz")
        ((1.0, 1.0, 1.0), (-1.0, -1.0, 1.0), None)
    """
    name = str(space or "left-posterior-superior").strip().lower().removesuffix("-time")
    words = {"r": "right", "l": "left", "a": "anterior", "p": "posterior", "s": "superior"}
    if len(name) == 3 and all(c in words for c in name):
        name = "-".join(words[c] for c in name)
    return NRRD_TO_RAS.get(name)


def _open_nrrd(path: str) -> _Volume:
    """A NRRD's header only (``nrrd.read_header``): shape, and the affine in RAS as MONAI's reader gives it."""
    import nrrd

    header = nrrd.read_header(path)
    flip = nrrd_space_flip(header.get("space"))
    if flip is None:
        raise _ReadError(
            f"NRRD space {header.get('space')!r} has no patient orientation; expected one of "
            f"{', '.join(NRRD_TO_RAS)} (re-save the volume in one of them)"
        )
    shape = tuple(int(s) for s in header["sizes"])
    affine = np.eye(4)
    directions = header.get("space directions")
    if directions is not None and len(shape) == 3:
        affine[:3, :3] = np.asarray(directions, dtype=float).T
        affine[:3, 3] = np.asarray(header.get("space origin", np.zeros(3)), dtype=float)
    affine = np.diag([*flip, 1.0]) @ affine
    return _Volume(shape, affine, lambda: nrrd.read(path)[0])


def _open_with_monai(path: str) -> _Volume:
    from monai.transforms import LoadImage  # slow import: only for non-NIfTI inputs

    data, meta = LoadImage(image_only=False)(path)
    arr = np.asarray(data)
    affine = np.asarray(meta.get("affine", np.eye(4)), dtype=float)
    return _Volume(tuple(int(s) for s in arr.shape), affine, lambda: arr)


def _open_volume(path: str, shown: str) -> _Volume:
    """Open the header of ``path`` (``shown`` is how the user wrote it); raise _ReadError with a readable reason."""
    if not os.path.exists(path):
        where = "" if os.path.abspath(shown) == os.path.abspath(path) else f" (looked for {path})"
        raise _ReadError(f"file not found{where}")
    name = path.lower()
    is_nifti = name.endswith((".nii", ".nii.gz"))
    if not (is_nifti or os.path.isdir(path) or name.endswith(MONAI_SUFFIXES)):
        suffix = os.path.splitext(name)[1] or "none"
        raise _ReadError(f"is not a medical image file (suffix {suffix!r}); {EXPECTED_FORMATS}")
    try:
        if is_nifti:
            return _open_nifti(path)
        return _open_nrrd(path) if name.endswith(".nrrd") else _open_with_monai(path)
    except _ReadError:
        raise
    except Exception as e:  # any reader failure is a data problem, reported without a traceback
        raise _ReadError(_unreadable(e)) from e


def _unreadable(e: Exception, max_chars: int = 300) -> str:
    text = " ".join(str(e).split())
    text = text if len(text) <= max_chars else text[:max_chars] + " ..."
    return f"cannot be read: {type(e).__name__}: {text}"


def _load(vol: _Volume) -> np.ndarray:
    try:
        return vol.load()
    except Exception as e:  # e.g. a truncated .nii.gz fails only when its voxels are decompressed
        raise _ReadError(_unreadable(e)) from e


# ----------------------------------------------------------------------------------------------- per-file checks


def _spatial_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Drop trailing singleton dimensions beyond the third (e.g. ``(16, 16, 8, 1)`` -> ``(16, 16, 8)``)."""
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _dims_problem(shape: tuple[int, ...]) -> str | None:
    spatial = _spatial_shape(shape)
    if len(spatial) != 3:
        return f"is {len(spatial)}D with shape {shape}; expected a 3D volume"
    if 0 in spatial:
        return f"has an empty dimension (shape {shape}); expected a 3D volume"
    return None


def _fmt(values: Iterable[float]) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


def _grid_problem(image: str, img: _Volume, lab: _Volume) -> str | None:
    """Compare label and image grids: same shape, and affines equal up to 1e-3 (relative spacing, mm otherwise)."""
    img_shape, lab_shape = _spatial_shape(img.shape), _spatial_shape(lab.shape)
    if img_shape != lab_shape:
        return f"shape {lab_shape} does not match its image {image} {img_shape}; expected the same grid"
    a, b = img.affine[:3, :4], lab.affine[:3, :4]
    sp_a, sp_b = np.linalg.norm(a[:, :3], axis=0), np.linalg.norm(b[:, :3], axis=0)
    tol = 1e-3 * max(1.0, float(sp_a.max()))
    differs = {
        "spacing": bool(np.any(np.abs(sp_a - sp_b) > 1e-3 * np.maximum(sp_a, sp_b))),
        "origin": bool(np.abs(a[:, 3] - b[:, 3]).max() > tol),
        "orientation": bool(np.abs(a[:, :3] / sp_a - b[:, :3] / sp_b).max() > 1e-3),
    }
    if not any(differs.values()):
        return None
    what = ", ".join(k for k, v in differs.items() if v)
    return (
        f"affine does not match its image {image} ({what} differ): image spacing {_fmt(sp_a)} origin "
        f"{_fmt(a[:, 3])}, label spacing {_fmt(sp_b)} origin {_fmt(b[:, 3])}; expected the same grid"
    )


def _fmt_values(values: np.ndarray) -> str:
    shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values[:MAX_LISTED].tolist())
    return shown + (f", ... ({len(values)} distinct)" if len(values) > MAX_LISTED else "")


def _label_problems(data: np.ndarray, num_classes: int | None) -> list[tuple[str, str]]:
    """Non-integer values, values outside ``0..num_classes-1``, and an all-background label (a warning)."""
    found = []
    if data.dtype.kind == "f":
        bad = data[data != np.floor(data)]  # NaN compares unequal, so it is caught here too
        if bad.size:
            msg = f"has {_plural(bad.size, 'voxel')} with non-integer values ({_fmt_values(np.unique(bad))})"
            found.append(("error", msg + "; expected integer class indices"))
    if num_classes is not None:
        outside = data[(data < 0) | (data > num_classes - 1)]
        if outside.size:
            values = np.unique(outside)
            msg = f"has values outside 0..{num_classes - 1}: {_fmt_values(values)} ({_plural(outside.size, 'voxel')}); "
            found.append(("error", msg + f"expected class indices 0..{num_classes - 1} (num_classes={num_classes})"))
    if not np.any(data):
        found.append(("warning", "contains only background (0); expected some foreground classes"))
    return found


def intensity_problems(data: np.ndarray, shown: str) -> list[Problem]:
    """NaN/Inf voxels (errors) and intensities that do not look like CT Hounsfield units (warnings) of the voxels of
    ``shown``: what the data check reads images for, also run on the volume a pipeline has already loaded.

    Examples:
        >>> [str(p) for p in intensity_problems(np.array([0.0, np.nan, 1.0]), "ct.nii.gz")][0]
        'ERROR  ct.nii.gz: contains 1 NaN and 0 Inf voxels; expected finite intensities'
    """
    return [Problem(shown, msg, severity) for severity, msg in _intensity_problems(np.asarray(data))]


def _intensity_problems(data: np.ndarray) -> list[tuple[str, str]]:
    found = []
    if data.dtype.kind == "f":
        n_nan, n_inf = int(np.count_nonzero(np.isnan(data))), int(np.count_nonzero(np.isinf(data)))
        if n_nan or n_inf:
            found.append(("error", f"contains {n_nan} NaN and {n_inf} Inf voxels; expected finite intensities"))
            data = data[np.isfinite(data)]
    if data.size == 0:
        return found
    lo, hi = float(data.min()), float(data.max())
    if hi <= 1.5 and lo >= -0.5:
        msg = f"intensities span {lo:.4g}..{hi:.4g}, which looks already normalised"
        found.append(("warning", msg + "; expected CT Hounsfield units (roughly -1024..3071)"))
    elif hi - lo < 10:
        found.append(("warning", f"intensity range is tiny ({lo:.4g}..{hi:.4g}); expected CT Hounsfield units"))
    return found


def _check_image(path: str, shown: str, check_intensity: bool) -> tuple[list[Problem], _Volume | None]:
    try:
        vol = _open_volume(path, shown)
        reason = _dims_problem(vol.shape)
        if reason:
            return [Problem(shown, reason)], None
        return (intensity_problems(_load(vol), shown) if check_intensity else []), vol
    except _ReadError as e:
        return [Problem(shown, str(e))], None


def _check_label(path: str, shown: str, image: str, img: _Volume | None, num_classes: int | None) -> list[Problem]:
    try:
        vol = _open_volume(path, shown)
        reason = _dims_problem(vol.shape)
        if reason is None and img is not None:
            reason = _grid_problem(image, img, vol)
        found = [("error", reason)] if reason else []
        found += _label_problems(_load(vol), num_classes)
    except _ReadError as e:
        return [Problem(shown, str(e))]
    return [Problem(shown, msg, sev) for sev, msg in found]


def _run_all(fn: Callable[[Any], list[Problem]], items: Sequence[Any], max_workers: int) -> list[Problem]:
    """Apply ``fn`` to every item (optionally in threads), keeping order; print progress for large sets."""
    problems: list[Problem] = []
    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        for done, found in enumerate(pool.map(fn, items), start=1):
            problems += found
            if len(items) > PROGRESS_MIN_CASES:
                print(f"checked {done}/{len(items)} cases", file=sys.stderr, flush=True)
    return problems


# ----------------------------------------------------------------------------------------------- public API


def datalist_path(dataset_dir: str, datalist: str | None = None) -> str:
    """The data list a run or a check reads: ``dataset_dir/dataset_0.json`` by default; a relative name that is not a
    file as given but is one under ``dataset_dir`` is taken from there; else the path as given (a missing file is
    then named as the user wrote it).

    Examples:
        >>> datalist_path("/data/btcv"), datalist_path("/data/btcv", "/lists/mine.json")
        ('/data/btcv/dataset_0.json', '/lists/mine.json')
    """
    if not datalist:
        return os.path.join(dataset_dir, "dataset_0.json")
    if not os.path.isfile(datalist) and os.path.isfile(os.path.join(dataset_dir, datalist)):
        return os.path.join(dataset_dir, datalist)
    return datalist


def check_entries(
    splits: Mapping[str, Sequence[Any]],
    dataset_dir: str = "",
    num_classes: int | None = 14,
    require_labels: bool = True,
    image_key: str = "image",
    label_key: str = "label",
    check_intensity: bool = True,
    max_workers: int = 1,
    check_labels: bool = True,
) -> list[Problem]:
    """Check data-list entries, split by split, and return every problem found (errors and warnings); never raises
    for data. The primitive of :func:`check_dataset` (entries read from a data list file); the segmentation bundle
    runs it on the lists its workflow will read (``train#dataset#data``, or what MONAI Label passes there).

    Args:
        splits: ``{split name: entries}``; an entry is ``{image_key: path, label_key: path}`` or an image path.
        dataset_dir: folder relative paths are taken under (absolute paths are used as they are).
        num_classes: label values must lie in ``0..num_classes-1``; None skips the range check.
        require_labels: whether entries (outside a split named ``"test"``) must name a label file.
        image_key: entry key of the image path.
        label_key: entry key of the label path.
        check_intensity: load the images to look for NaN/Inf voxels and non-HU intensities.
        max_workers: threads checking cases in parallel.
        check_labels: check the label files the entries name (False for pretraining, which reads images only).

    Examples:
        >>> [str(p) for p in check_entries({"training": [{"image": "/no/img.nii.gz", "label": "/no/lab.nii.gz"}]})]
        ['ERROR  /no/img.nii.gz: file not found', 'ERROR  /no/lab.nii.gz: file not found']
    """
    if not any(splits.values()):
        return [Problem("(data list)", "no cases: the list of entries is empty")]
    cases, problems = _cases(splits, list(splits), (image_key, label_key), require_labels)

    def check_case(case: tuple[str, str | None]) -> list[Problem]:
        image, label = case
        found, vol = _check_image(os.path.join(dataset_dir, image), image, check_intensity)
        if label is not None and check_labels:
            found += _check_label(os.path.join(dataset_dir, label), label, image, vol, num_classes)
        return found

    return problems + _run_all(check_case, cases, max_workers)


def _check_dataset(
    dataset_dir: str, datalist: str | None, splits: Sequence[str] | str, **check_args: Any
) -> tuple[list[Problem], int]:
    """:func:`check_dataset`'s problems and the number of cases it checked."""
    if not os.path.isdir(dataset_dir):
        what = "is not a directory" if os.path.exists(dataset_dir) else "does not exist"
        return [Problem(dataset_dir, f"dataset directory {what}")], 0
    splits = splits.split(",") if isinstance(splits, str) else list(splits)  # "training,validation"
    keys = (check_args.get("image_key", "image"), check_args.get("label_key", "label"))
    try:
        data = load_datalist_checked(datalist_path(dataset_dir, datalist), splits, keys[0])
    except DataCheckError as e:
        return e.problems, 0
    chosen = {split: data[split] for split in splits}
    cases = _cases(chosen, splits, keys, check_args.get("require_labels", True))[0]
    return check_entries(chosen, dataset_dir, **check_args), len(cases)


def check_dataset(
    dataset_dir: str,
    datalist: str | None = None,
    splits: Sequence[str] = ("training", "validation"),
    **check_args: Any,
) -> list[Problem]:
    """Check a BTCV-layout data set and return every problem found (errors and warnings); never raises for data.

    Args:
        dataset_dir: folder holding the datalist and the images/labels its entries name (relative paths).
        datalist: datalist JSON; defaults to ``dataset_dir/dataset_0.json`` (see :func:`datalist_path`).
        splits: datalist splits to check; labels are never required in a split named ``"test"``.
        check_args: the options of :func:`check_entries` (``num_classes`` 14, ``require_labels``,
            ``check_intensity``, ``max_workers``, ...).

    Examples:
        >>> check_dataset("/no/such/dir")
        [Problem(path='/no/such/dir', message='dataset directory does not exist', severity='error')]
    """
    return _check_dataset(dataset_dir, datalist, splits, **check_args)[0]


def _raise_errors(problems: list[Problem], source: str) -> list[Problem]:
    """Logs the warnings among ``problems`` and returns them; raises DataCheckError when there is any error."""
    warnings = [p for p in problems if p.severity != "error"]
    for p in warnings:
        logger.warning("%s", p)
    if len(warnings) < len(problems):
        raise DataCheckError(problems, source)
    return warnings


def validate_dataset(dataset_dir: str, datalist: str | None = None, **check_args: Any) -> list[Problem]:
    """Run check_dataset, log its warnings, raise DataCheckError if it found any error; return the warnings.

    Args:
        dataset_dir: as for :func:`check_dataset`.
        datalist: as for :func:`check_dataset`.
        check_args: the other arguments of :func:`check_dataset` (``splits``, ``num_classes``, ...).

    The pretraining bundle calls this from its ``initialize`` list.

    Examples:
        >>> validate_dataset("/no/such/dir")
        Traceback (most recent call last):
        ...
        selfmedhpm.check_data.DataCheckError: data check failed: 1 problem in /no/such/dir
          ERROR  /no/such/dir: dataset directory does not exist
    """
    source = datalist_path(dataset_dir, datalist) if os.path.isdir(dataset_dir) else dataset_dir
    return _raise_errors(check_dataset(dataset_dir, datalist, **check_args), source)


def validate_entries(
    splits: Mapping[str, Sequence[Any]], source: str = "the data lists of this run", **check_args: Any
) -> list[Problem]:
    """Run :func:`check_entries`, log its warnings, raise DataCheckError naming ``source`` if it found any error;
    return the warnings. The segmentation bundle calls this from its ``initialize`` list.

    Examples:
        >>> try:
        ...     validate_entries({"validation": [{"image": "/no/img.nii.gz", "label": "/no/lab.nii.gz"}]})
        ... except DataCheckError as e:
        ...     print(e.problems[0])
        ERROR  /no/img.nii.gz: file not found
    """
    return _raise_errors(check_entries(splits, **check_args), source)


def check_image_files(paths: Sequence[str], check_intensity: bool = True, max_workers: int = 1) -> list[Problem]:
    """Check inference inputs (no labels): each must exist, be a readable 3D volume, finite and HU-like.

    Args:
        paths: image files (or DICOM folders), named in the problems as given.
        check_intensity: load the images to look for NaN/Inf voxels and non-HU intensities.
        max_workers: threads checking files in parallel.

    Examples:
        >>> [str(p) for p in check_image_files(["scan.png"])]
        ['ERROR  scan.png: file not found']
    """
    return _run_all(lambda p: _check_image(p, p, check_intensity)[0], list(paths), max_workers)


def usable_images(paths: Sequence[str], check_intensity: bool = True, max_workers: int = 1) -> list[str]:
    """The inference inputs that pass :func:`check_image_files`; each one that fails is reported (logged as an
    error naming the file and the problem) and skipped, so one bad case does not cost the others' outputs.
    Raises :class:`DataCheckError` when no input is usable.

    Args:
        paths: image files (or DICOM folders).
        check_intensity: also load the voxels (NaN/Inf, non-HU intensities).
        max_workers: threads checking files in parallel.
    """
    paths = [str(p) for p in paths]
    problems = check_image_files(paths, check_intensity=check_intensity, max_workers=max_workers)
    bad = {p.path for p in problems if p.severity == "error"}
    for problem in problems:
        (logger.error if problem.severity == "error" else logger.warning)("%s", problem)
        if problem.severity == "error":
            print(f"skipping {problem}", file=sys.stderr, flush=True)
    good = [p for p in paths if p not in bad]
    if not good:
        raise DataCheckError(problems or [Problem("(inputs)", "no input images given")], "the inference inputs")
    return good


# ----------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry: print every problem and a summary; exit 0 (no errors), 1 (errors) or 2 (usage)."""
    parser = argparse.ArgumentParser(
        prog="python -m selfmedhpm.check_data", description="Check a BTCV-layout data set."
    )
    parser.add_argument("--dataset_dir", required=True, help="folder with dataset_0.json, imagesTr/, labelsTr/")
    parser.add_argument("--datalist", default=None, help="datalist JSON (default: DATASET_DIR/dataset_0.json)")
    parser.add_argument("--splits", default="training,validation", help="comma-separated datalist splits")
    parser.add_argument("--num_classes", type=int, default=14, help="label values must lie in 0..N-1")
    parser.add_argument(
        "--no-labels",
        dest="require_labels",
        action="store_false",
        help="images only: labels neither required nor read (as the pretraining bundle checks)",
    )
    parser.add_argument("--no-intensity", dest="check_intensity", action="store_false", help="skip image voxels")
    parser.add_argument("--max_workers", type=int, default=1, help="threads checking cases in parallel")
    args = parser.parse_args(argv)
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    if not splits or args.num_classes < 1:
        parser.error("--splits must name at least one split and --num_classes must be >= 1")
    problems, n_cases = _check_dataset(
        args.dataset_dir, args.datalist, splits, num_classes=args.num_classes, require_labels=args.require_labels,
        check_intensity=args.check_intensity, max_workers=args.max_workers, check_labels=args.require_labels,
    )  # fmt: skip
    for p in problems:
        print(p)
    n_err = sum(p.severity == "error" for p in problems)
    summary = f"{_plural(n_err, 'error')}, {_plural(len(problems) - n_err, 'warning')}"
    print(f"{summary} in {_plural(n_cases, 'case')} checked")
    return 1 if n_err else 0


if __name__ == "__main__":
    install_excepthook()  # this process is the command: a user error ends it with one ERROR line
    sys.exit(main())

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

"""Folders of DICOM CT series: found anywhere under ``--src``, grouped by ``SeriesInstanceUID`` (one series per
folder, or several mixed in one folder), read as volumes with their geometry, and optionally written as NIfTI.

Each series becomes one unlabelled case (or labelled, with ``--labels DIR`` holding ``<case name>.nii.gz``). Its
geometry comes from the headers alone (no pixel data is read while scanning): slices are ordered along the normal
of ``ImageOrientationPatient``; spacing is ``PixelSpacing`` in plane and the distance between slice positions.

Without conversion (``--convert auto``, the default) a series that has a folder of its own is listed as that folder,
which MONAI's ``LoadImage`` (pydicom) reads at training time: no extra disk, but every read decodes the DICOM files
again (the bundles cache the pre-processed volumes in memory, so once per run). A series that shares its folder
with another one, or whose ``InstanceNumber`` order does not follow the slice positions (MONAI's reader stacks
slices by ``InstanceNumber``), cannot be read that way and is written as NIfTI under ``OUT/images/``.
``--convert all`` writes every series (about the size of the compressed DICOM, a few seconds per 512x512x200
series); ``--convert none`` writes nothing and leaves such series out.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
from selfmedhpm_tools.datalists.core import Case, Scan, shown

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def is_dicom_file(path: str) -> bool:
    """True for a ``.dcm`` file or a file with the DICOM preamble (``DICM`` at byte 128); never ``DICOMDIR``."""
    if os.path.basename(path).upper() == "DICOMDIR":
        return False
    if path.lower().endswith(".dcm"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def find_dicom_files(src: str, limit: int | None = None) -> list[str]:
    """DICOM files under ``src`` (recursively, sorted); stops after ``limit`` files when given."""
    found = []
    for folder, dirs, files in os.walk(src):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            if not name.startswith(".") and is_dicom_file(path):
                found.append(path)
                if limit and len(found) >= limit:
                    return found
    return found


@dataclass
class Series:
    """One DICOM series read from its headers.

    Attributes:
        uid: ``SeriesInstanceUID``.
        files: slice files in position order (along the slice normal).
        folder: the folder holding the slices.
        affine: voxel-to-world matrix, RAS (as NIfTI and MONAI use), of the array ``[column, row, slice]``.
        shape: (columns, rows, slices).
        spacing: voxel size in mm.
        own_folder: whether the folder holds this series alone, in ``InstanceNumber`` order, so MONAI can read it.
        description: ``SeriesDescription`` and number, for the summary.
    """

    uid: str
    files: list[str]
    folder: str
    affine: np.ndarray
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    own_folder: bool = True
    description: str = ""
    headers: list = field(default_factory=list, repr=False)


def _headers(files: list[str], scan: Scan, src: str) -> dict[str, list]:
    import pydicom

    by_uid: dict[str, list] = defaultdict(list)
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as e:  # any unreadable file is a data problem, named with its reason
            scan.error(shown(path, src), f"cannot be read as DICOM: {type(e).__name__}: {e}; left out")
            continue
        uid = str(getattr(ds, "SeriesInstanceUID", "") or f"(no SeriesInstanceUID) {os.path.dirname(path)}")
        by_uid[uid].append((path, ds))
    return by_uid


def _geometry(slices: list, where: str) -> tuple[str | None, dict]:
    """Checks one series' slices and returns (why it cannot be used, or None; its geometry)."""
    first = slices[0][1]
    if int(getattr(first, "NumberOfFrames", 1) or 1) > 1:
        return "is an enhanced multi-frame DICOM object; export the series as classic single-frame slices", {}
    missing = [t for t in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing") if t not in first]
    if missing:
        return f"has no {', '.join(missing)}; the volume's geometry cannot be known", {}
    if len(slices) < 2:
        return "has a single slice (a 2D image); expected a CT volume of several slices", {}
    iop = np.array(first.ImageOrientationPatient, dtype=float)
    rows, cols = int(first.Rows), int(first.Columns)
    for path, ds in slices[1:]:
        if int(ds.Rows) != rows or int(ds.Columns) != cols:
            return f"slices differ in size ({rows}x{cols} and {ds.Rows}x{ds.Columns} in {os.path.basename(path)})", {}
        if not np.allclose(np.array(ds.ImageOrientationPatient, dtype=float), iop, atol=1e-4):
            return f"slices differ in orientation ({os.path.basename(path)})", {}
    normal = np.cross(iop[:3], iop[3:])
    positions = np.array([np.array(ds.ImagePositionPatient, dtype=float) for _, ds in slices])
    order = np.argsort(positions @ normal, kind="stable")
    distance = np.diff((positions @ normal)[order])
    if np.any(distance < 1e-3):
        return "has several slices at the same position (two acquisitions in one series?)", {}
    if distance.max() - distance.min() > max(0.01 * distance.mean(), 1e-3):
        return (
            f"slice spacing varies from {distance.min():.3g} to {distance.max():.3g} mm (missing slices?); "
            "expected evenly spaced slices"
        ), {}
    dr, dc = (float(v) for v in first.PixelSpacing)  # between rows, between columns
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1] = iop[:3] * dc, iop[3:] * dr
    lps[:3, 2] = (positions[order[-1]] - positions[order[0]]) / (len(slices) - 1)
    lps[:3, 3] = positions[order[0]]
    numbers = [getattr(ds, "InstanceNumber", None) for _, ds in slices]
    by_number = None if None in numbers else list(np.argsort(np.array(numbers, dtype=float), kind="stable"))
    monai_order = by_number is not None and by_number in (list(order), list(order[::-1]))
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    spacing = (dc, dr, float(np.linalg.norm(lps[:3, 2])))
    return None, {"order": order, "affine": ras, "shape": (cols, rows, len(slices)), "spacing": spacing,
                  "monai_order": monai_order}  # fmt: skip


def scan_dicom(src: str, scan: Scan) -> list[Series]:
    """Finds and checks the DICOM series under ``src``; refused series (not CT, 2D, broken geometry) are reported
    as errors naming their folder, localizers are skipped with a warning."""
    files = find_dicom_files(src)
    series_found = []
    for uid, slices in _headers(files, scan, src).items():
        first = slices[0][1]
        folders = sorted({os.path.dirname(p) for p, _ in slices})
        where = shown(folders[0], src) + ("" if len(folders) == 1 else f" (and {len(folders) - 1} other folders)")
        label = f"series {getattr(first, 'SeriesNumber', '?')} ({getattr(first, 'SeriesDescription', '') or uid})"
        modality = str(getattr(first, "Modality", "") or "")
        if modality and modality.upper() != "CT":
            scan.error(where, f"{label} is {modality}, not CT; refused (this project segments CT)")
            continue
        if any("LOCALIZER" in str(v).upper() for v in getattr(first, "ImageType", [])):
            scan.warning(where, f"{label} is a localizer (scout) image; skipped")
            continue
        reason, geo = _geometry(sorted(slices), where)
        if reason:
            scan.error(where, f"{label} {reason}; left out")
            continue
        if not modality:
            scan.warning(where, f"{label} has no Modality; taken as CT")
        order = geo["order"]
        series_found.append(
            Series(
                uid, [slices[i][0] for i in order], folders[0], geo["affine"], geo["shape"], geo["spacing"],
                own_folder=len(folders) == 1 and geo["monai_order"], description=label,
                headers=[slices[i][1] for i in order],
            )
        )  # fmt: skip
    per_folder: dict[str, int] = defaultdict(int)
    for path in files:
        per_folder[os.path.dirname(path)] += 1
    for s in series_found:
        if per_folder[s.folder] != len(s.files):
            s.own_folder = False
    return series_found


def series_cases(series: list[Series], src: str) -> list[Case]:
    """One case per series, named after its folder (relative to ``src``; ``_s<SeriesNumber>`` added when a folder
    holds several series)."""
    count: dict[str, int] = defaultdict(int)
    for s in series:
        count[s.folder] += 1
    cases = []
    for s in series:
        rel = os.path.relpath(s.folder, src)
        name = os.path.basename(os.path.abspath(src)) if rel == "." else rel.replace(os.sep, "_")
        if count[s.folder] > 1:
            name += f"_s{getattr(s.headers[0], 'SeriesNumber', None) or s.uid[-6:]}"
        cases.append(Case(name, s.folder, series=s))
    return cases


def read_volume(series: Series) -> np.ndarray:
    """The series' voxels in Hounsfield units (``RescaleSlope``/``RescaleIntercept`` applied), ``[col, row, slice]``,
    int16 when the values are integers in its range, else float32."""
    import pydicom

    planes = []
    for path in series.files:
        ds = pydicom.dcmread(path)
        slope, intercept = float(getattr(ds, "RescaleSlope", 1) or 1), float(getattr(ds, "RescaleIntercept", 0) or 0)
        planes.append(ds.pixel_array.astype(np.float32) * slope + intercept)
    volume = np.stack(planes, axis=-1).transpose(1, 0, 2)
    if np.all(volume == np.round(volume)) and volume.min() >= -32768 and volume.max() <= 32767:
        return volume.astype(np.int16)
    return volume


def write_nifti(series: Series, path: str) -> str:
    """Writes the series as a NIfTI file (RAS affine as qform and sform, mm); returns ``path``."""
    image = nib.Nifti1Image(read_volume(series), series.affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(series.affine, code=1)
    image.set_sform(series.affine, code=1)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    nib.save(image, path)
    return path

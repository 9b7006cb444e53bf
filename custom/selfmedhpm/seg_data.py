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

"""Data of the segmentation bundle: checking the exact training/validation entries a run will read, finding the
inputs of an inference run, and resampling them in a way MONAI Label can run."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from monai.transforms import Spacingd
from selfmedhpm.check_data import DataCheckError, Problem, validate_dataset
from selfmedhpm.errors import InputNotFoundError

__all__ = ["IMAGE_SUFFIXES", "check_entries", "is_dicom_folder", "find_images", "MetaSafeSpacingd"]

IMAGE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
"""File suffixes that MONAI's ``LoadImage`` reads with its default readers (nibabel, pynrrd; ``.nhdr`` and MetaImage
need ITK)."""


def check_entries(
    entries: Sequence[Mapping[str, str]],
    num_classes: int | None = None,
    source: str = "the training and validation data lists",
) -> list[Problem]:
    """Runs :func:`selfmedhpm.check_data.validate_dataset` on explicit ``{"image", "label"}`` entries, the ones a
    workflow will really read (a datalist split, or the lists MONAI Label passes as ``train#dataset#data``), and
    returns its warnings. Raises :class:`~selfmedhpm.check_data.DataCheckError` listing every problem found.

    Args:
        entries: data list entries; relative paths are taken from the current folder.
        num_classes: label values must lie in ``0..num_classes-1``; None skips the range check.
        source: what the entries are, named in the error.

    Examples::

        >>> try:
        ...     check_entries([{"image": "/no/img.nii.gz", "label": "/no/lab.nii.gz"}])
        ... except DataCheckError as e:
        ...     print(e.problems[0])
        ERROR  /no/img.nii.gz: file not found
    """
    if not entries:
        raise DataCheckError([Problem("(data list)", "no cases: the list of entries is empty")], source)
    absolute = [{k: os.path.abspath(v) if k in ("image", "label") else v for k, v in e.items()} for e in entries]
    with tempfile.TemporaryDirectory() as tmp:
        datalist = Path(tmp) / "datalist.json"
        datalist.write_text(json.dumps({"training": absolute}))
        try:
            return validate_dataset(tmp, str(datalist), splits=["training"], num_classes=num_classes)
        except DataCheckError as e:
            raise DataCheckError(e.problems, source) from None


def is_dicom_folder(path: str | os.PathLike) -> bool:
    """True for a folder holding DICOM files (``*.dcm``, or files with the ``DICM`` preamble).

    Examples::

        >>> is_dicom_folder(tempfile.mkdtemp())
        False
    """
    folder = Path(path)
    if not folder.is_dir():
        return False
    for i, file in enumerate(sorted(p for p in folder.iterdir() if p.is_file())):
        if file.suffix.lower() == ".dcm":
            return True
        if i < 5:
            with open(file, "rb") as f:
                if f.read(132)[128:] == b"DICM":
                    return True
    return False


def _images_in(folder: Path) -> list[str]:
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and entry.name.lower().endswith(IMAGE_SUFFIXES):
            found.append(str(entry))
        elif is_dicom_folder(entry):
            found.append(str(entry))
    return found


def find_images(dataset_dir: str | os.PathLike, subdir: str = "imagesTs") -> list[str]:
    """The inference inputs of a folder: image files (:data:`IMAGE_SUFFIXES`) and DICOM series folders, sorted,
    from ``dataset_dir/subdir`` when that folder exists, else from ``dataset_dir`` itself. Raises
    ``FileNotFoundError`` naming the folder when it is missing or holds no image.

    Args:
        dataset_dir: a BTCV-layout data set (its ``imagesTs/``) or a plain folder of images.
        subdir: the test-image folder looked in first. Defaults to "imagesTs".

    Examples::

        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "ct.nrrd").write_bytes(b""), (folder / "notes.txt").write_text("")
        >>> [Path(p).name for p in find_images(folder)]
        ['ct.nrrd']
    """
    root = Path(dataset_dir)
    folder = root / subdir if (root / subdir).is_dir() else root
    if not folder.is_dir():
        raise InputNotFoundError(f"{folder}: input folder not found; pass --dataset_dir DIR or --input_file PATH.")
    found = _images_in(folder)
    if not found:
        raise InputNotFoundError(
            f"{folder}: no input images (expected files ending {', '.join(IMAGE_SUFFIXES)} or DICOM series folders)."
        )
    return found


class MetaSafeSpacingd(Spacingd):
    """MONAI's ``Spacingd`` (same arguments) that leaves alone the ``<key>_*`` entries of the data that are not
    metadata dictionaries.

    For a NIfTI input, MONAI 1.6's ``Spacingd`` updates every entry whose name starts with ``<key>_`` as a metadata
    dict; MONAI Label 0.8.5 puts the input's path, a string, in ``image_path``, so inference on a NIfTI study
    fails there (``'str' object has no attribute 'update'``). Such entries are set aside while resampling.

    Examples::

        >>> import torch
        >>> from monai.data import MetaTensor
        >>> image = MetaTensor(torch.zeros(1, 4, 4, 4), meta={"filename_or_obj": "ct.nii.gz"})
        >>> out = MetaSafeSpacingd("image", pixdim=2.0)({"image": image, "image_path": "ct.nii.gz"})
        >>> tuple(out["image"].shape), out["image_path"]
        ((1, 2, 2, 2), 'ct.nii.gz')
    """

    def __call__(self, data: Mapping, lazy: bool | None = None) -> dict:
        d = dict(data)
        prefixes = tuple(f"{key}_" for key in self.keys)
        aside = {k: d.pop(k) for k in list(d) if str(k).startswith(prefixes) and not isinstance(d[k], Mapping)}
        d = super().__call__(d, lazy=lazy)
        d.update(aside)
        return d

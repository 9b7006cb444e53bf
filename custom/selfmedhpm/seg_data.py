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

"""Inputs of the segmentation bundle's inference: finding them, reading each one once, and resampling them in a way
MONAI Label can run. (The entries a training run reads are checked by
:func:`selfmedhpm.check_data.validate_entries`.)

Each input is decompressed once: before the loader only its header is checked
(:func:`selfmedhpm.check_data.usable_images` with ``check_intensity=False``); its voxels are checked where the
pipeline has loaded them (:class:`CheckIntensityd`). An input that fails there is skipped like one whose header
failed, and the others are still segmented (:class:`InputDataset`, :class:`UsableBatches`).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Hashable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.data import Dataset
from monai.data import NrrdReader as MonaiNrrdReader
from monai.transforms import LoadImaged as MonaiLoadImaged
from monai.transforms import MapTransform, Spacingd
from monai.utils import MetaKeys, SpaceKeys
from selfmedhpm.check_data import DataCheckError, intensity_problems, nrrd_space_flip
from selfmedhpm.errors import InputNotFoundError, UserInputError, user_error

__all__ = [
    "IMAGE_SUFFIXES", "is_dicom_folder", "find_images", "MetaSafeSpacingd", "NrrdReader", "LoadImaged",
    "CheckIntensityd", "InputDataset", "UsableBatches", "SKIPPED",
]  # fmt: skip

logger = logging.getLogger("selfmedhpm.seg_data")

IMAGE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
"""File suffixes that MONAI's ``LoadImage`` reads with its default readers (nibabel, pynrrd; ``.nhdr`` and MetaImage
need ITK)."""


def is_dicom_folder(path: str | os.PathLike) -> bool:
    """True for a folder holding DICOM files (``*.dcm``, or files with the ``DICM`` preamble).

    Examples::

        >>> import tempfile
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

        >>> import tempfile
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


class NrrdSpaceError(UserInputError, ValueError):
    """A NRRD whose ``space`` has no patient orientation (``scanner-xyz``, ``3D-right-handed``, ...)."""


class NrrdReader(MonaiNrrdReader):
    """MONAI's ``NrrdReader`` (same arguments) that reads a NRRD in any patient space: MONAI 1.6 turns
    ``left-posterior-superior`` (and no ``space``) into RAS but keeps other spaces as text, on which ``Orientationd``
    fails (``'right-anterior-superior' is not a valid SpaceKeys``). Here ``right-anterior-superior`` and
    ``left-anterior-superior`` are turned into RAS too (:func:`~selfmedhpm.check_data.nrrd_space_flip`); a space with no
    patient orientation raises :class:`NrrdSpaceError`.

    Examples::

        >>> import numpy as np, nrrd, tempfile
        >>> path = tempfile.mktemp(suffix=".nrrd")
        >>> nrrd.write(path, np.zeros((4, 3, 2)), {"space": "right-anterior-superior", "space directions": np.eye(3),
        ...                                        "space origin": np.array([10.0, 20.0, 30.0])})
        >>> _, meta = NrrdReader().get_data(NrrdReader().read(path))
        >>> str(meta["space"]), meta["affine"][:3, 3].tolist()
        ('RAS', [10.0, 20.0, 30.0])
    """

    def _switch_lps_ras(self, header: dict) -> dict:
        flip = nrrd_space_flip(header.get("space"))
        if flip is None:
            space = header.get("space")
            raise NrrdSpaceError(f"NRRD space {space!r} has no patient orientation; re-save it in RAS or LPS")
        header[MetaKeys.ORIGINAL_AFFINE] = np.diag([*flip, 1.0]) @ header[MetaKeys.ORIGINAL_AFFINE]
        header[MetaKeys.SPACE] = SpaceKeys.RAS
        return header


class LoadImaged(MonaiLoadImaged):
    """MONAI's ``LoadImaged`` (same arguments) with :class:`NrrdReader` registered for ``.nrrd`` files, so a NRRD in
    RAS or LAS space loads in the right orientation; other files go to MONAI's readers as before."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.register(NrrdReader())


class CheckIntensityd(MapTransform):
    """Checks the intensities of loaded CT volumes where the pipeline holds them, so each input is read once: NaN or
    Inf voxels raise :class:`~selfmedhpm.check_data.DataCheckError` naming the file; intensities that do not look
    like Hounsfield units are logged as warnings (:func:`~selfmedhpm.check_data.intensity_problems`).

    Args:
        keys: keys of the loaded images.
        enabled: False passes the data through unchecked (the bundle's ``--check_data false``).
        allow_missing_keys: as in MONAI's ``MapTransform``.

    Examples::

        >>> import torch
        >>> from monai.data import MetaTensor
        >>> image = MetaTensor(torch.tensor([[-1000.0, 40.0, float("nan")]]), meta={"filename_or_obj": "ct.nii.gz"})
        >>> try:
        ...     CheckIntensityd("image")({"image": image})
        ... except DataCheckError as e:
        ...     print(e.summary())
        ct.nii.gz: contains 1 NaN and 0 Inf voxels; expected finite intensities
    """

    def __init__(self, keys: KeysCollection, enabled: bool = True, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.enabled = enabled

    def __call__(self, data: Mapping[Hashable, Any]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d) if self.enabled else ():
            image = d[key]
            shown = str(getattr(image, "meta", {}).get("filename_or_obj", key))
            problems = intensity_problems(image.detach().cpu().numpy() if hasattr(image, "detach") else image, shown)
            for problem in problems:
                (logger.error if problem.severity == "error" else logger.warning)("%s", problem)
            if any(p.severity == "error" for p in problems):
                raise DataCheckError(problems, shown)
        return d


SKIPPED = "skipped"
"""The key of an input that :class:`InputDataset` skipped: its value is the problem, ``<file>: <what is wrong>``."""


class InputDataset(Dataset):
    """MONAI's ``Dataset`` (same arguments) for inference inputs: an input whose transforms fail on the user's data
    (a :class:`~selfmedhpm.errors.UserInputError` anywhere in the error's chain, e.g. NaN voxels found by
    :class:`CheckIntensityd`) comes out as ``{"skipped": "<file>: <problem>"}`` instead of ending the run; any other
    error still does. :class:`UsableBatches` leaves the skipped inputs out."""

    def _transform(self, index: int) -> Any:
        try:
            return super()._transform(index)
        except Exception as e:
            found = user_error(e)
            if found is None:
                raise
            return {SKIPPED: found.summary()}


class UsableBatches:
    """The batches of ``loader`` but those of inputs :class:`InputDataset` skipped, each reported as ``skipping
    ERROR  <file>: <problem>`` (as the inputs whose header check failed before the loader).

    Args:
        loader: a DataLoader over an :class:`InputDataset`.

    Examples::

        >>> batches = [{"image": [1]}, {SKIPPED: ["ct_2.nii.gz: contains 3 NaN and 0 Inf voxels"]}, {"image": [3]}]
        >>> [b["image"] for b in UsableBatches(batches)]  # and on stderr: skipping ERROR  ct_2.nii.gz: contains ...
        [[1], [3]]
    """

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    @property
    def sampler(self) -> Any:
        """The loader's sampler: how many inputs there are (the case counter of the progress lines)."""
        return self.loader.sampler

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            if SKIPPED in batch:
                for problem in batch[SKIPPED]:
                    logger.error("ERROR  %s", problem)
                    print(f"skipping ERROR  {problem}", file=sys.stderr, flush=True)
                continue
            yield batch

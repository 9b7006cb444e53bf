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

"""The cases of a study: the labelled pool its label budgets are drawn from, the model-selection cases, a test set no
run sees, the images pretraining reads, and the label set; from a user's data list or from synthetic CT."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["StudyData", "StudyError", "VALIDATION_SEED", "synthetic_datalist", "load_data", "check_budgets",
           "labelled_draw"]  # fmt: skip

VALIDATION_SEED = 12345  # the draw of the model-selection cases, the same for every seed and arm


@dataclass
class StudyData:
    """The cases of a study, every path absolute.

    Args:
        datalist: the data list file (a synthetic study writes its own).
        checksum: SHA-256 of the data list file.
        pool: labelled cases the label budgets are drawn from.
        validation: labelled cases for model selection.
        test: labelled cases no run trains, pretrains or selects on.
        pretraining: images pretraining reads (``{"image": ...}``): the unlabelled ones and those of the training
            cases.
        labels: the segmentation bundle's label-set override (``labels.json``), None for BTCV's 13 organs.
        class_names: the label set, background first.
    """

    datalist: Path
    checksum: str
    pool: list[dict]
    validation: list[dict]
    test: list[dict]
    pretraining: list[dict]
    labels: Path | None
    class_names: list[str]

    def describe(self) -> str:
        return (f"{len(self.pool)} labelled cases to draw the budgets from, {len(self.validation)} for model "
                f"selection, {len(self.test)} test cases (never trained, pretrained or selected on), "
                f"{len(self.pretraining)} images for pretraining")  # fmt: skip


class StudyError(ValueError):
    """A study that cannot run as asked (a budget larger than the labelled pool, a test image among the training
    ones, ...); the message says which and what to change."""


# ----------------------------------------------------------------------------------------------------- the data


def synthetic_datalist(
    out: Path, pool: int, test: int, unlabeled: int = 0, seed: int = 2026, size: str = "small"
) -> tuple[Path, Path]:
    """Writes the synthetic cases once (``out/data``) and their study data list ``out/data/study.json``: the first
    ``pool`` cases labelled (``training``), the next ``test`` the test set (``validation``), the ``unlabeled`` others
    images only. Case i depends on ``seed`` only, so a larger study adds cases and keeps the others. Returns
    ``(dataset_dir, datalist)``."""
    from selfmedhpm_tools.phantom import generate_dataset

    data = out / "data"
    total = pool + test + unlabeled
    listed = data / "dataset_0.json"
    found = json.loads(listed.read_text()) if listed.is_file() else {}
    cases = found.get("training", []) + found.get("validation", [])
    if len(cases) < total:  # case i depends on the seed only: regenerating adds cases, the others stay the same
        generate_dataset(data, cases=total, seed=seed, size=size, overwrite=bool(cases), verbose=False)
        found = json.loads(listed.read_text())
        cases = found["training"] + found["validation"]
    study = {
        "training": cases[:pool],
        "validation": cases[pool : pool + test],
        "unlabeled": [{"image": case["image"]} for case in cases[pool + test : total]],
    }
    path = data / "study.json"
    if not path.is_file() or json.loads(path.read_text()) != study:
        path.write_text(json.dumps(study, indent=1))
    return data, path


def load_data(
    dataset_dir: Path, datalist: Path, validation: int, test_split: str = "validation", labels: Path | None = None
) -> StudyData:
    """The study's cases from a data list (BTCV's layout, paths relative to ``dataset_dir``).

    Args:
        dataset_dir: the folder the data list's paths are relative to.
        datalist: the data list (``training`` labelled cases, ``test_split``, optional ``unlabeled``).
        validation: labelled training cases kept for model selection.
        test_split: the split that is the test set.
        labels: a label-set override file for the segmentation bundle; None looks for ``labels.json`` beside the data
            list (``python -m selfmedhpm.datalist`` writes one when the data's ``dataset.json`` names its labels).

    Raises:
        StudyError: too few labelled cases, a test image also among the training or unlabelled ones.
        ValueError: the data list's own problems (:func:`selfmedhpm.bundle.datalist` names the file and each one).
    """
    import hashlib

    from selfmedhpm.bundle import datalist as read_split
    from selfmedhpm.bundle import pretraining_splits
    from selfmedhpm.labels import BTCV_CLASSES, check_label_set

    dataset_dir, datalist = Path(dataset_dir).resolve(), Path(datalist).resolve()
    labelled = read_split(str(dataset_dir), str(datalist), "training", labels=True)
    test = read_split(str(dataset_dir), str(datalist), test_split, labels=True)
    extra = [s for s in pretraining_splits(str(dataset_dir), str(datalist)) if s != "training"]
    unlabelled = read_split(str(dataset_dir), str(datalist), extra, labels=False) if extra else []
    if len(labelled) < validation + 1:
        raise StudyError(f"{datalist}: 'training' has {len(labelled)} labelled cases; the study needs the "
                         f"{validation} for model selection (--validation) and at least one to train on.")  # fmt: skip
    tested = {Path(case["image"]).resolve() for case in test}
    leaked = sorted(str(p) for p in tested & {Path(c["image"]).resolve() for c in labelled + unlabelled})
    if leaked:
        raise StudyError(f"{datalist}: {len(leaked)} image(s) of the test split {test_split!r} are also training or "
                         f"unlabelled images, e.g. {leaked[0]}: a test set must be unseen")  # fmt: skip
    order = np.random.default_rng(VALIDATION_SEED).permutation(len(labelled))
    chosen = set(order[:validation].tolist())
    if labels is None and (datalist.parent / "labels.json").is_file():
        labels = datalist.parent / "labels.json"
    class_names = list(BTCV_CLASSES)
    if labels is not None:
        labels = Path(labels).resolve()
        class_names = list(json.loads(labels.read_text())["class_names"])
        check_label_set(class_names)
    return StudyData(
        datalist=datalist,
        checksum=hashlib.sha256(datalist.read_bytes()).hexdigest(),
        pool=[case for i, case in enumerate(labelled) if i not in chosen],
        validation=[labelled[i] for i in sorted(chosen)],
        test=test,
        pretraining=[{"image": case["image"]} for case in labelled] + list(unlabelled),
        labels=labels,
        class_names=class_names,
    )


def check_budgets(data: StudyData, budgets: Sequence[int]) -> None:
    """Refuses a label budget larger than the labelled pool, naming it.

    Examples::

        >>> data = StudyData(Path("d.json"), "", [{}] * 3, [{}], [{}], [], None, [])
        >>> try:
        ...     check_budgets(data, [1, 9])
        ... except StudyError as e:
        ...     print(str(e).split(";")[0])
        label budget 9 exceeds the 3 labelled cases of d.json left after the 1 for model selection
    """
    too_large = [b for b in budgets if b > len(data.pool) or b < 1]
    if too_large:
        raise StudyError(
            f"label budget {too_large[0]} exceeds the {len(data.pool)} labelled cases of {data.datalist} left after "
            f"the {len(data.validation)} for model selection; use --budgets of 1 to {len(data.pool)} (or fewer "
            "--validation cases)"
        )


def labelled_draw(pool: Sequence[dict], budget: int, seed: int) -> list[dict]:
    """The ``budget`` labelled cases of seed ``seed``: a seeded draw without replacement from the pool.

    Examples::

        >>> pool = [{"image": f"{i}"} for i in range(24)]
        >>> [d["image"] for d in labelled_draw(pool, 3, 0)] == [d["image"] for d in labelled_draw(pool, 3, 0)]
        True
    """
    index = np.random.default_rng(1000 + seed).permutation(len(pool))[:budget]
    return [pool[i] for i in sorted(index)]

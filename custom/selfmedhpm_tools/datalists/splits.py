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

"""Training/validation splits of the labelled cases: BTCV's two published splits, selectable by name, and a
seeded random split for any data set.

- ``monai``: the 24/6 split of MONAI's BTCV ``dataset_0.json`` (the UNETR / Swin UNETR tutorials): validation
  img0035..img0040, training the 24 other cases of BTCV's 30 labelled ones (img0001..0010, img0021..0034).
- ``transunet``: TransUNet's 18/12 split (Chen et al. 2021, ``lists/lists_Synapse/test_vol.txt``); its 12 test
  cases become the validation split, as TransUNet reports its results on them.
- ``random``: ``val_fraction`` of the labelled cases (at least one when there are two or more), drawn with ``seed``.
"""

from __future__ import annotations

import random
import re
from typing import Sequence

from selfmedhpm_tools.datalists.core import Case

BTCV_TRAINING_IDS: tuple[int, ...] = tuple(range(1, 11)) + tuple(range(21, 41))
"""The 30 labelled BTCV cases (img0001..0010, img0021..0040)."""

NAMED_SPLITS: dict[str, frozenset[int]] = {
    "monai": frozenset(range(35, 41)),
    "transunet": frozenset({1, 2, 3, 4, 8, 22, 25, 29, 32, 35, 36, 38}),
}
"""Validation case ids of each named split; every other BTCV case is training."""

SPLITS = ("monai", "transunet", "random")


def btcv_id(name: str) -> int | None:
    """The BTCV case number of a case name (``img0035`` -> 35, ``case0008`` -> 8), else None.

    Examples::

        >>> btcv_id("img0035"), btcv_id("label0001"), btcv_id("liver_7")
        (35, 1, None)
    """
    match = re.fullmatch(r"(?:img|label|case)(\d{4})", name.lower())
    return int(match.group(1)) if match else None


def split_cases(
    cases: Sequence[Case], method: str, val_fraction: float = 0.2, seed: int = 0
) -> tuple[list[Case], list[Case], list[str]]:
    """Splits labelled cases into training and validation.

    Args:
        cases: the labelled cases.
        method: ``monai``, ``transunet`` (BTCV case names only) or ``random``.
        val_fraction: share of validation cases of the random split.
        seed: seed of the random split (the same seed and case names give the same split).

    Returns:
        (training, validation, notes): notes are warnings for the summary (e.g. a case that is not one of BTCV's).

    Raises:
        ValueError: a named split for cases that are not BTCV cases, or an unknown method.

    Examples::

        >>> cases = [Case(f"img{i:04d}", "x") for i in (1, 5, 35)]
        >>> [[c.name for c in part] for part in split_cases(cases, "monai")[:2]]
        [['img0001', 'img0005'], ['img0035']]
        >>> [[c.name for c in part] for part in split_cases(cases, "transunet")[:2]]
        [['img0005'], ['img0001', 'img0035']]
    """
    if method == "random":
        names = sorted(c.name for c in cases)
        n_val = 0 if len(names) < 2 else min(len(names) - 1, max(1, round(len(names) * val_fraction)))
        chosen = set(random.Random(seed).sample(names, n_val))
        return [c for c in cases if c.name not in chosen], [c for c in cases if c.name in chosen], []
    if method not in NAMED_SPLITS:
        raise ValueError(f"--split must be one of {', '.join(SPLITS)}, got {method!r}")
    ids = {c.name: btcv_id(c.name) for c in cases}
    if cases and all(i is None for i in ids.values()):
        raise ValueError(
            f"the {method} split names BTCV cases (img0001 ...), but the case names here are "
            f"{', '.join(sorted(ids)[:3])} ...; use --split random"
        )
    notes = [
        f"{c.name}: not one of BTCV's 30 labelled cases; put in training" for c in cases
        if ids[c.name] not in BTCV_TRAINING_IDS
    ]  # fmt: skip
    validation_ids = NAMED_SPLITS[method]
    training = [c for c in cases if ids[c.name] not in validation_ids]
    return training, [c for c in cases if ids[c.name] in validation_ids], notes

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

"""Small statistics for comparing runs: paired bootstrap confidence intervals of paired samples (the same cases,
crops or seeds measured under two settings, as 1-D arrays), and the study's per-case means, pairing over seeds and
run-level aggregates. (Paired permutation p-values: ``scipy.stats.permutation_test``.)"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

__all__ = ["paired_bootstrap_ci", "case_means", "paired_differences", "aggregate"]


def paired_bootstrap_ci(
    a: Sequence[float], b: Sequence[float], level: float = 0.95, rounds: int = 10_000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean paired difference ``mean(a - b)`` and its percentile bootstrap confidence interval (pairs resampled
    with replacement).

    Args:
        a: values of the first setting.
        b: values of the second setting, paired with ``a``.
        level: coverage of the interval. Defaults to 0.95.
        rounds: bootstrap resamples.
        seed: seed of the resampling.

    Returns:
        ``(mean difference, lower bound, upper bound)``.

    Examples::

        >>> mean, low, high = paired_bootstrap_ci([1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 2.0, 3.0])
        >>> mean, low, high
        (1.0, 1.0, 1.0)
    """
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if diff.ndim != 1 or diff.size == 0:
        raise ValueError(f"need two paired 1-D samples, got shapes {np.shape(a)} and {np.shape(b)}.")
    index = np.random.default_rng(seed).integers(0, diff.size, size=(rounds, diff.size))
    means = diff[index].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(diff.mean()), float(low), float(high)


def case_means(rows: Sequence[Mapping[str, str]], organs: Sequence[str]) -> dict[str, float]:
    """Per test case, the mean Dice over ``organs`` (undefined organs left out) from ``dice_per_case.csv`` rows.

    Examples::

        >>> case_means([{"case": "a", "liver": "0.8", "spleen": "nan"}, {"case": "b", "liver": "0.6", "spleen": "0.4"}],
        ...            ["liver", "spleen"])
        {'a': 0.8, 'b': 0.5}
    """
    means = {}
    for row in rows:
        values = [float(row[o]) for o in organs if o in row and not math.isnan(float(row[o]))]
        means[row["case"]] = float(np.mean(values)) if values else float("nan")
    return means


def paired_differences(
    per_run: Mapping[tuple[str, int, int], Mapping[str, float]], a: str, b: str, budget: int
) -> tuple[list[float], list[float], int]:
    """Paired values of arms ``a`` and ``b`` at ``budget``: one pair per (seed, test case) present in both; also the
    number of seeds paired.

    Args:
        per_run: ``{(arm, budget, seed): {case: value}}``.
    """
    xs, ys, seeds = [], [], set()
    for (arm, n, seed), cases in per_run.items():
        if arm != a or n != budget or (b, n, seed) not in per_run:
            continue
        other = per_run[(b, n, seed)]
        for case, value in cases.items():
            if case in other and not (math.isnan(value) or math.isnan(other[case])):
                xs.append(value)
                ys.append(other[case])
                seeds.add(seed)
    return xs, ys, len(seeds)


def aggregate(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) of run-level values, NaN left out; unrounded: the
    tables and figures round them once, where they are shown.

    Examples::

        >>> aggregate([0.5, 0.7, float("nan")])
        (0.6, 0.14142135623730948)
    """
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return float("nan"), float("nan")
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return float(np.mean(finite)), std

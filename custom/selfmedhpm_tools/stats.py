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

"""Small statistics for comparing runs: paired bootstrap confidence intervals, of paired samples (the same cases,
crops or seeds measured under two settings) as 1-D arrays. (Paired permutation p-values: ``scipy.stats.
permutation_test``.)"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["paired_bootstrap_ci"]


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

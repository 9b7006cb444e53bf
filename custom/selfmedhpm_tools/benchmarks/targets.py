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


"""Every figure of ``docs/benchmarks.md``, written once: what it measures, its unit and its target per column. The
measurement modules only record values (:meth:`~.common.Results.add`); the report judges them against this table.

A target is ``"<= 1.7"``, ``">= 0.4"``, clauses joined by ``" and "``, and a clause may compare with another figure
of the same column (``">= mae_mfu"``). Text that is no comparison (``"~1 (linear)"``) is shown and not judged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

__all__ = ["Figure", "FIGURES", "BATCH_MFU_TARGETS", "judge", "status"]


@dataclass(frozen=True)
class Figure:
    """What a figure measures, its unit, its target on the CPU and on the GPU column, and whether quick mode (smaller
    models, ``quick=False``) still measures what the target is about."""

    what: str
    unit: str = ""
    cpu: str | None = None
    gpu: str | None = None
    quick: bool = True


BATCH_MFU_TARGETS = {8: 0.15, 32: 0.30}  # the paper-scale HPM step's share of the bf16 peak (issue #15)

FIGURES: dict[str, Figure] = {
    "hpm_step_over_mae_step": Figure("HPM iteration / MONAI MAE iteration (time)", "x", "<= 1.7", "<= 1.7"),
    "hpm_step_over_mae_step_flops": Figure("same, by FLOP count", "x"),
    "hpm_step_over_mae_step_bf16": Figure("same, both sides bf16", "x", "<= 1.7", "<= 1.7"),
    "hpm_step_over_mae_step_monai_defaults": Figure(
        "same, MONAI/torch defaults (zero-filled grads, non-fused AdamW)", "x"
    ),
    "pretrain_mfu": Figure("HPM iteration FLOP/s / dense matmul peak", "of peak", ">= 0.6 and >= mae_mfu", ">= 0.4"),
    "mae_mfu": Figure("MAE iteration FLOP/s / dense matmul peak", "of peak"),
    "pretrain_mfu_monai_defaults": Figure("HPM MFU, MONAI/torch defaults", "of peak"),
    "mae_mfu_monai_defaults": Figure("MAE MFU, non-fused AdamW", "of peak"),
    "pretrain_mfu_bf16": Figure("HPM iteration under bf16 autocast / bf16 peak", "of peak", ">= 0.4", ">= 0.4"),
    "mae_mfu_bf16": Figure("MAE (bf16 model) / bf16 peak", "of peak", ">= 0.4", ">= 0.4"),
    **{
        f"pretrain_b{b}_{name}": Figure(f"{what}, batch {b}", unit, gpu=target)
        for b in (8, 32, 64)
        for name, what, unit, target in (
            (
                "mfu",
                "paper-scale HPM step (bf16) / bf16 peak",
                "of peak",
                BATCH_MFU_TARGETS.get(b) and f">= {BATCH_MFU_TARGETS[b]}",
            ),
            ("mfu_hpm_over_mae", "HPM step MFU / same-code MAE step MFU", "x", ">= 1"),
            ("crops_per_s", "paper-scale HPM step crops/s", "crops/s", None),
            ("peak_memory", "paper-scale HPM step peak GPU memory", "GB", None),
        )
    },
    "pretrain_bundle_over_step": Figure(
        "pretraining bundle end to end (gpu_cache.json, compiled) / step benchmark, crops/s at batch 32",
        "x",
        gpu=">= 0.8",
    ),
    "finetune_b8_mfu": Figure("segmentation training iteration, eager, batch 8 (bf16) / bf16 peak", "of peak"),
    "finetune_b8_crops_per_s": Figure("same, crops/s", "crops/s"),
    "finetune_b8_compiled_speedup": Figure("same, eager / `--compile True` time", "x", gpu=">= 2"),
    "host_aten_ops_per_step": Figure("host: aten ops dispatched per HPM step (eager)"),
    "host_aten_ops_per_step_compiled": Figure("same, compiled (`--compile True`)"),
    "host_step_s_tiny": Figure("host: HPM step time at a tiny width (compute negligible), eager", "s"),
    "host_step_speedup_compiled": Figure("same, eager / compiled", "x"),
    "teacher_bf16_hard_set_overlap": Figure("hard-patch set overlap, bf16 vs fp32 teacher"),
    "teacher_int8_hard_set_overlap": Figure("hard-patch set overlap, int8 vs fp32 teacher"),
    "teacher_bf16_hard_set_overlap_trained": Figure("same, bf16, trained CPU-preset teacher"),
    "teacher_int8_hard_set_overlap_trained": Figure("same, int8, trained CPU-preset teacher"),
    "loader_crops_per_s": Figure("training crops/s from the bundle's loader", "crops/s"),
    "loader_over_step": Figure("loader crops/s / step crops/s", "x", ">= 1.5", ">= 1.5"),
    "loader_workers_0_crops_per_s": Figure("knob: num_workers 0", "crops/s"),
    "loader_persistent_workers_crops_per_s": Figure("knob: persistent_workers", "crops/s"),
    "loader_thread_cpu_crops_per_s": Figure("knob: gpu_cache.json recipe on the CPU", "crops/s"),
    "loader_cache_rate_0_crops_per_s": Figure("knob: cache_rate 0", "crops/s"),
    "inference_e2e_over_bare": Figure(
        "inference bundle end to end / bare sliding window", "x", "<= 1.2", "<= 1.2", quick=False
    ),
    "inference_peak_rss_gb": Figure(
        "inference bundle peak resident memory (paper-scale model)", "GB", "<= 6", "<= 6", quick=False
    ),
    "inference_peak_rss_gb_num_workers_0": Figure("knob: same, inference num_workers 0", "GB"),
    "inference_voxel_exponent": Figure("inference time ~ voxels^b", "", "~1 (linear)", "~1 (linear)"),
    "pretrain_step_token_exponent": Figure("HPM iteration time ~ tokens^b"),
    "bf16_rec_loss_gap": Figure("bf16 vs fp32 rec_loss curve gap", "relative"),
    "bf16_pretrain_epoch_speedup": Figure("bf16 speed-up, pretraining CPU preset epoch", "x"),
    "bf16_segment_step_speedup": Figure("bf16 speed-up, segmentation train iteration", "x"),
}

_CLAUSE = re.compile(r"^(<=|>=)\s*([0-9.]+|[a-z_0-9]+)$")


def judge(target: str | None, value: float | None, others: dict[str, float | None]) -> bool | None:
    """Whether ``value`` meets ``target``; None when there is no comparable target or value. ``others`` gives the
    values of the figures a clause names.

    Examples::

        >>> judge(">= 0.6 and >= mae_mfu", 0.7, {"mae_mfu": 0.65}), judge("<= 1.7", 1.9, {}), judge("~1", 1.1, {})
        (True, False, None)
    """
    if not target or value is None:
        return None
    met = True
    for clause in target.split(" and "):
        match = _CLAUSE.match(clause.strip())
        if not match:
            return None
        op, bound = match.groups()
        number = others.get(bound) if bound[0].isalpha() else float(bound)
        if number is None:
            return None
        met = met and (value <= number if op == "<=" else value >= number)
    return met


def status(key: str, column: str, figures: dict[str, dict[str, Any]], quick: bool) -> tuple[str | None, str]:
    """(target, "met" / "missed by <gap>" / "") of figure ``key`` in ``column`` of ``figures`` (the recorded
    values, as :class:`~.common.Results` keeps them)."""
    spec = FIGURES.get(key, Figure(""))
    target = getattr(spec, column)
    cell = figures.get(key, {}).get(column)
    if not cell or (quick and not spec.quick):
        return target, ""
    others = {k: (v.get(column) or {}).get("value") for k, v in figures.items()}
    met = judge(target, cell.get("value"), others)
    if met is None:
        return target, ""
    if met:
        return target, "met"
    gaps = []
    for clause in target.split(" and "):
        op, bound = _CLAUSE.match(clause.strip()).groups()
        number = others.get(bound) if bound[0].isalpha() else float(bound)
        gap = (cell["value"] - number) if op == "<=" else (number - cell["value"])
        if gap > 0:
            gaps.append(f"{gap:.2g}" if bound[0].isdigit() else f"{gap:.2g} (vs {bound})")
    return target, "missed by " + ", ".join(gaps)

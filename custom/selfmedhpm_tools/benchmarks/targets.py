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
from typing import Any, NamedTuple


class Figure(NamedTuple):
    """What a figure measures, its unit, its CPU and GPU targets, and whether quick mode (smaller models) still
    measures what the target is about."""

    what: str
    unit: str = ""
    cpu: str | None = None
    gpu: str | None = None
    quick: bool = True


# key | unit | CPU target | GPU target | what it measures ("-": none). b8/b32/b64: the paper-scale step at that batch.
_TABLE = """
hpm_step_over_mae_step | x | <= 1.7 | <= 1.7 | HPM iteration / MONAI MAE iteration (time)
hpm_step_over_mae_step_flops | x | - | - | same, by FLOP count
hpm_step_over_mae_step_bf16 | x | <= 1.7 | <= 1.7 | same, both sides bf16
hpm_step_over_mae_step_monai_defaults | x | - | - | same, MONAI/torch defaults (zero-filled grads, non-fused AdamW)
hpm_step_masked_view_over_full | x | - | - | HPM iteration with the masked teacher view (4 passes) / full view
hpm_step_reconstruction_view_over_full | x | - | - | HPM iteration with the reconstruction teacher view / full view
pretrain_mfu | of peak | >= 0.6 and >= mae_mfu | >= 0.4 | HPM iteration FLOP/s / dense matmul peak
mae_mfu | of peak | - | - | MAE iteration FLOP/s / dense matmul peak
pretrain_mfu_monai_defaults | of peak | - | - | HPM MFU, MONAI/torch defaults
mae_mfu_monai_defaults | of peak | - | - | MAE MFU, non-fused AdamW
pretrain_mfu_bf16 | of peak | >= 0.4 | >= 0.4 | HPM iteration under bf16 autocast / bf16 peak
mae_mfu_bf16 | of peak | >= 0.4 | >= 0.4 | MAE (bf16 model) / bf16 peak
pretrain_b8_mfu | of peak | - | >= 0.15 | paper-scale HPM step (bf16) / bf16 peak, batch 8
pretrain_b8_mfu_hpm_over_mae | x | - | >= 1 | HPM step MFU / same-code MAE step MFU, batch 8
pretrain_b8_crops_per_s | crops/s | - | - | paper-scale HPM step crops/s, batch 8
pretrain_b8_peak_memory | GB | - | - | paper-scale HPM step peak GPU memory, batch 8
pretrain_b32_mfu | of peak | - | >= 0.3 | paper-scale HPM step (bf16) / bf16 peak, batch 32
pretrain_b32_mfu_hpm_over_mae | x | - | >= 1 | HPM step MFU / same-code MAE step MFU, batch 32
pretrain_b32_crops_per_s | crops/s | - | - | paper-scale HPM step crops/s, batch 32
pretrain_b32_peak_memory | GB | - | - | paper-scale HPM step peak GPU memory, batch 32
pretrain_b64_mfu | of peak | - | - | paper-scale HPM step (bf16) / bf16 peak, batch 64
pretrain_b64_mfu_hpm_over_mae | x | - | >= 1 | HPM step MFU / same-code MAE step MFU, batch 64
pretrain_b64_crops_per_s | crops/s | - | - | paper-scale HPM step crops/s, batch 64
pretrain_b64_peak_memory | GB | - | - | paper-scale HPM step peak GPU memory, batch 64
pretrain_bundle_over_step | x | - | >= 0.8 | pretraining bundle (gpu_cache.json, compiled) / step benchmark, batch 32
finetune_b8_mfu | of peak | - | - | segmentation training iteration, eager, batch 8 (bf16) / bf16 peak
finetune_b8_crops_per_s | crops/s | - | - | same, crops/s
finetune_b8_compiled_speedup | x | - | >= 2 | same, eager / `--compile True` time
host_aten_ops_per_step | | - | - | host: aten ops dispatched per HPM step (eager)
host_aten_ops_per_step_compiled | | - | - | same, compiled (`--compile True`)
host_step_s_tiny | s | - | - | host: HPM step time at a tiny width (compute negligible), eager
host_step_speedup_compiled | x | - | - | same, eager / compiled
teacher_bf16_hard_set_overlap | | - | - | hard-patch set overlap, bf16 vs fp32 teacher
teacher_int8_hard_set_overlap | | - | - | hard-patch set overlap, int8 vs fp32 teacher
teacher_bf16_hard_set_overlap_trained | | - | - | same, bf16, trained CPU-preset teacher
teacher_int8_hard_set_overlap_trained | | - | - | same, int8, trained CPU-preset teacher
loader_crops_per_s | crops/s | - | - | training crops/s from the bundle's loader
loader_over_step | x | >= 1.5 | >= 1.5 | loader crops/s / step crops/s
loader_workers_0_crops_per_s | crops/s | - | - | knob: num_workers 0
loader_persistent_workers_crops_per_s | crops/s | - | - | knob: persistent_workers
loader_thread_cpu_crops_per_s | crops/s | - | - | knob: gpu_cache.json recipe on the CPU
loader_cache_rate_0_crops_per_s | crops/s | - | - | knob: cache_rate 0
inference_e2e_over_bare | x | <= 1.2 | <= 1.2 | inference bundle end to end / bare sliding window
inference_peak_rss_gb | GB | <= 6 | <= 6 | inference bundle peak resident memory (paper-scale model)
inference_peak_rss_gb_num_workers_0 | GB | - | - | knob: same, inference num_workers 0
inference_voxel_exponent | | ~1 (linear) | ~1 (linear) | inference time ~ voxels^b
pretrain_step_token_exponent | | - | - | HPM iteration time ~ tokens^b
bf16_rec_loss_gap | relative | - | - | bf16 vs fp32 rec_loss curve gap
bf16_pretrain_epoch_speedup | x | - | - | bf16 speed-up, pretraining CPU preset epoch
bf16_segment_step_speedup | x | - | - | bf16 speed-up, segmentation train iteration
"""
NOT_JUDGED_IN_QUICK_MODE = {"inference_e2e_over_bare", "inference_peak_rss_gb"}  # targets for the paper-scale model

FIGURES: dict[str, Figure] = {}
for _row in _TABLE.strip().splitlines():
    _key, _unit, _cpu, _gpu, _what = (cell.strip() for cell in _row.split("|"))
    FIGURES[_key] = Figure(
        _what, _unit, *(None if t == "-" else t for t in (_cpu, _gpu)), _key not in NOT_JUDGED_IN_QUICK_MODE
    )

_CLAUSE = re.compile(r"^(<=|>=)\s*([0-9.]+|[a-z_0-9]+)$")


def gaps(target: str | None, value: float | None, others: dict[str, float | None]) -> list[tuple[float, str]] | None:
    """By how much ``value`` misses each clause of ``target`` (<= 0: met), with the clause's bound; None when there
    is no comparable target or value. ``others`` gives the values of the figures a clause names.

    Examples::

        >>> [(round(gap, 2), bound) for gap, bound in gaps(">= 0.6 and >= mae_mfu", 0.7, {"mae_mfu": 0.75})]
        [(-0.1, '0.6'), (0.05, 'mae_mfu')]
        >>> gaps("~1 (linear)", 1.1, {}) is None
        True
    """
    if not target or value is None:
        return None
    out = []
    for clause in target.split(" and "):
        match = _CLAUSE.match(clause.strip())
        if not match:
            return None
        op, bound = match.groups()
        number = others.get(bound) if bound[0].isalpha() else float(bound)
        if number is None:
            return None
        out.append(((value - number) if op == "<=" else (number - value), bound))
    return out


def status(key: str, column: str, figures: dict[str, dict[str, Any]], quick: bool) -> str:
    """ "met", "missed by <gap>" or "" (not judged) for figure ``key`` in ``column`` of the recorded ``figures``."""
    spec, cell = FIGURES[key], figures.get(key, {}).get(column)
    if not cell or (quick and not spec.quick):
        return ""
    others = {k: (v.get(column) or {}).get("value") for k, v in figures.items()}
    missed = gaps(getattr(spec, column), cell.get("value"), others)
    if missed is None:
        return ""
    missed = [f"{gap:.2g}" + ("" if bound[0].isdigit() else f" (vs {bound})") for gap, bound in missed if gap > 0]
    return "missed by " + ", ".join(missed) if missed else "met"

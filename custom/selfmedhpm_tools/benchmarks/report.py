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

"""Writes ``docs/benchmarks.md`` (machine, figures table, details, knobs) and ``docs/benchmarks.json``."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from .common import Results

__all__ = ["FIGURES", "status", "figures_table", "write"]

# key -> what it measures (the order of the table)
FIGURES = {
    "hpm_step_over_mae_step": "HPM iteration / MONAI MAE iteration (time)",
    "hpm_step_over_mae_step_flops": "same, by FLOP count",
    "hpm_step_over_mae_step_bf16": "same, both sides bf16",
    "hpm_step_over_mae_step_monai_defaults": "same, MONAI/torch defaults (zero-filled grads, non-fused AdamW)",
    "pretrain_mfu": "HPM iteration FLOP/s / dense matmul peak",
    "mae_mfu": "MAE iteration FLOP/s / dense matmul peak",
    "pretrain_mfu_monai_defaults": "HPM MFU, MONAI/torch defaults",
    "mae_mfu_monai_defaults": "MAE MFU, non-fused AdamW",
    "pretrain_mfu_bf16": "HPM iteration under bf16 autocast / bf16 peak",
    "mae_mfu_bf16": "MAE (bf16 model) / bf16 peak",
    "teacher_bf16_hard_set_overlap": "hard-patch set overlap, bf16 vs fp32 teacher",
    "teacher_int8_hard_set_overlap": "hard-patch set overlap, int8 vs fp32 teacher",
    "teacher_bf16_hard_set_overlap_trained": "same, bf16, trained CPU-preset teacher",
    "teacher_int8_hard_set_overlap_trained": "same, int8, trained CPU-preset teacher",
    "loader_crops_per_s": "training crops/s from the bundle's loader",
    "loader_over_step": "loader crops/s / step crops/s",
    "loader_workers_0_crops_per_s": "knob: num_workers 0",
    "loader_persistent_workers_crops_per_s": "knob: persistent_workers",
    "loader_thread_cpu_crops_per_s": "knob: gpu_cache.json recipe on the CPU",
    "loader_cache_rate_0_crops_per_s": "knob: cache_rate 0",
    "inference_e2e_over_bare": "inference bundle end to end / bare sliding window",
    "inference_peak_rss_gb": "inference bundle peak resident memory",
    "inference_peak_rss_gb_num_workers_0": "knob: same, inference num_workers 0",
    "inference_voxel_exponent": "inference time ~ voxels^b",
    "pretrain_step_token_exponent": "HPM iteration time ~ tokens^b",
    "host_aten_ops_per_step": "host: aten ops dispatched per HPM step (eager)",
    "host_aten_ops_per_step_compiled": "same, compiled (`--compile True`)",
    "host_step_s_tiny": "host: HPM step time at a tiny width (compute negligible), eager",
    "host_step_speedup_compiled": "same, eager / compiled",
    "bf16_rec_loss_gap": "bf16 vs fp32 rec_loss curve gap",
    "bf16_pretrain_epoch_speedup": "bf16 speed-up, pretraining CPU preset epoch",
    "bf16_segment_step_speedup": "bf16 speed-up, segmentation train iteration",
}


def _fmt(value: Any, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        text = f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    else:
        text = str(value)
    return f"{text} {unit}".strip() if unit in ("GB", "crops/s") else text


def status(entry: dict[str, Any], cell: dict[str, Any] | None) -> str:
    """ "met", "missed by <gap>" or "" for one measured cell."""
    if not cell or cell.get("met") is None:
        return ""
    if cell["met"]:
        return "met"
    target, value = entry.get("target") or "", cell.get("value")
    bound = re.search(r"(<=|>=)[^0-9]*?([0-9.]+)", target)
    if bound and value is not None:
        op, number = bound.group(1), float(bound.group(2))
        gap = value - number if op == "<=" else number - value
        if gap > 0:
            return f"missed by {gap:.2g}"
    return "missed"


def figures_table(res: Results, has_gpu: bool) -> str:
    """The markdown table of all figures: key, meaning, CPU value, GPU value, target, status."""
    lines = [
        "| figure | what | CPU | GPU | target | status (CPU / GPU) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    keys = [k for k in FIGURES if k in res.figures] + [k for k in res.figures if k not in FIGURES]
    for key in keys:
        entry = res.figures[key]
        cpu, gpu = entry.get("cpu"), entry.get("gpu")
        gpu_text = _fmt(gpu["value"], entry["unit"]) if gpu else ("not run" if has_gpu else "not yet measured")
        states = [s for s in (status(entry, cpu), status(entry, gpu)) if s]
        lines.append(
            f"| `{key}` | {FIGURES.get(key, '')} | {_fmt(cpu['value'], entry['unit']) if cpu else 'n/a'} | "
            f"{gpu_text} | {entry.get('target') or ''} | {' / '.join(states)} |"
        )
    return "\n".join(lines)


def _notes(res: Results) -> str:
    lines = []
    for key, entry in res.figures.items():
        for column in ("cpu", "gpu"):
            cell = entry.get(column)
            if cell and (cell.get("label") or cell.get("note")):
                text = "; ".join(t for t in (cell.get("label"), cell.get("note")) if t)
                lines.append(f"- `{key}` ({column.upper()}): {text}")
    return "\n".join(lines)


def _machine(info: dict[str, Any]) -> str:
    rows = [
        ("CPU", info["cpu_model"]),
        (
            "cores (usable) / torch threads",
            f"{info['cpu_cores']} ({info['cpu_cores_usable']}) / {info['torch_threads']}",
        ),
        ("CPU features", ", ".join(info["cpu_flags"]) or "none of note"),
        ("memory", f"{info['memory_gb']} GB"),
        ("GPU", info["gpu"] or "none: the GPU column is not yet measured"),
        ("torch / MONAI / Python", f"{info['torch']} / {info['monai']} / {info['python']}"),
        ("load average (1 min) at start / end", f"{info.get('load_start')} / {info.get('load_end')}"),
    ]
    return "\n".join(["| | |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows])


def write(res: Results, info: dict[str, Any], mode: str, out_dir: Path, static: str, elapsed: float) -> str:
    """Writes benchmarks.md / benchmarks.json under ``out_dir``; returns the figures table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = figures_table(res, bool(info.get("gpu")))
    sections = "\n\n".join(f"### {title}\n\n{body}" for title, body in res.sections)
    contention = ""
    load = info.get("load_start") or 0
    if load and load > 0.5 * (info["cpu_cores_usable"] or 1):
        contention = (
            f"\n> **Contention:** the load average was {info.get('load_start')} at the start on "
            f"{info['cpu_cores_usable']} usable cores: other processes shared the CPU, so absolute times are "
            "inflated and noisy; ratios were measured side by side (interleaved) but are noisy too.\n"
        )
    quick = " Quick mode uses smaller settings where labelled." if mode == "quick" else ""
    text = (
        "# Benchmarks\n\n"
        "Generated by `make bench` (full mode) / `make bench-quick` (quick mode) from "
        "`custom/selfmedhpm_tools/benchmarks/`; do not edit by hand. Every ratio is measured in the same run on the "
        "same machine: warm-up first, then the two sides interleaved, median of the repetitions.\n\n"
        f"Mode: **{mode}**, {elapsed / 60:.1f} min.{quick}\n\n"
        f"## Machine\n\n{_machine(info)}\n{contention}\n"
        f"## Figures\n\n{table}\n\n"
        f"What each figure was measured on:\n\n{_notes(res)}\n\n"
        f"{static}\n\n"
        f"## Details of this run\n\n{sections}\n"
    )
    (out_dir / "benchmarks.md").write_text(text)
    flat = {k: (v.get("cpu") or {}).get("value") for k, v in res.figures.items()}
    payload = {
        "mode": mode,
        "elapsed_s": elapsed,
        "machine": info,
        **flat,
        "gpu": {k: (v.get("gpu") or {}).get("value") for k, v in res.figures.items() if v.get("gpu")},
        "figures": res.figures,
        "details": res.details,
    }
    (out_dir / "benchmarks.json").write_text(json.dumps(payload, indent=1, default=_json_default) + "\n")
    return table


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def detail_sections(res: Results) -> list[tuple[str, str]]:
    """Markdown sections built from ``res.details``: per-variant timings and the knobs with their measured effect."""
    out = []
    step = res.details.get("step", {}).get("cpu")
    if step:
        med, flops, mfu = step["median_s"], step["flops_gflop"], step["mfu"]
        rows = [
            ("HPM, everything fp32", "hpm_fp32", flops["hpm"]),
            ("HPM, fp32 student, bf16 teacher", "hpm_teacher_bf16", flops["hpm"]),
            ("HPM, fp32 student, int8 teacher (+ amortised re-quantisation)", "hpm_teacher_int8", flops["hpm"]),
            ("HPM, everything fp32, MONAI/torch defaults", "hpm_fp32_monai_defaults", flops["hpm"]),
            ("HPM, fp32 student, int8 teacher, MONAI/torch defaults", "hpm_teacher_int8_monai_defaults", flops["hpm"]),
            ("HPM, fp32 student, bf16 teacher, MONAI/torch defaults", "hpm_teacher_bf16_monai_defaults", flops["hpm"]),
            ("HPM, bf16 autocast (student and teacher)", "hpm_bf16", flops["hpm"]),
            ("MONAI MAE, fp32", "mae_fp32", flops["mae"]),
            ("MONAI MAE, model cast to bf16", "mae_bf16", flops["mae"]),
            ("MONAI MAE, fp32, non-fused AdamW", "mae_fp32_monai_defaults", flops["mae"]),
        ]
        lines = [
            "| ViT-B/16 iteration, 96^3, batch 2 (CPU) | median s | / MAE fp32 | GFLOP |",
            "| --- | --- | --- | --- |",
        ]
        for name, key, gflop in rows:
            if key not in med:
                continue
            lines.append(f"| {name} | {med[key]:.3f} | {med[key] / med['mae_fp32']:.2f} | {gflop:.0f} |")
        teacher = step["teacher_pass_s"]
        overlap = step["teacher_overlap_vs_fp32"]
        lines += [
            "",
            "As configured (both sides): AdamW `fused=True`, gradients set to None (the trainer's "
            "`optim_set_to_none=True`). MONAI/torch defaults: `optim_set_to_none=False` (zero-filled gradients) and "
            "AdamW `fused=False` (torch's default: a per-parameter loop on the CPU, foreach on GPUs); the MAE gets the "
            "non-fused AdamW, its gradients still set to None.",
            "",
            f"FLOPs: HPM {flops['hpm']:.0f} GFLOP (teacher pass {flops['teacher']:.0f}; a naive teacher pass with the "
            f"reconstructor would be {flops['teacher_naive']:.0f}), MAE {flops['mae']:.0f}. "
            f"MFU fp32: HPM {mfu['hpm_fp32']:.2f}, MAE {mfu['mae_fp32']:.2f}; bf16: HPM {mfu['hpm_bf16']:.2f}, "
            f"MAE {mfu['mae_bf16']:.2f}.",
            "",
            "| teacher pass alone (2 crops) | median s | hard-set overlap with fp32 (mean / min) |",
            "| --- | --- | --- |",
            f"| fp32 | {teacher['fp32']:.3f} | 1 |",
            f"| bf16 autocast | {teacher['bf16']:.3f} | {overlap['bf16']['mean']:.3f} / {overlap['bf16']['min']:.3f} |",
            f"| int8 (`selfmedhpm.quant.Int8Teacher`) | {teacher['int8']:.3f} | {overlap['int8']['mean']:.3f} / "
            f"{overlap['int8']['min']:.3f} |",
            "",
            f"int8 re-quantisation from the fp32 EMA weights: {step['int8_refresh_s']:.3f} s, every "
            f"{step['int8_refresh_interval']} iterations. Overlap by chance: {overlap['int8']['chance']:.3f}.",
        ]
        if "optimizer_s" in step:
            opt = step["optimizer_s"]
            lines += ["", "| AdamW step, HPM ViT-B parameters | median s |", "| --- | --- |"]
            lines += [f"| {k} | {v:.3f} |" for k, v in opt.items()]
        out.append(("Pretraining iteration", "\n".join(lines)))
    scaling = res.details.get("step", {}).get("scaling_cpu")
    if scaling:
        lines = ["| crop | tokens | HPM iteration s (CPU) |", "| --- | --- | --- |"]
        lines += [f"| {r}^3 | {v['tokens']} | {v['seconds']:.3f} |" for r, v in scaling["rows"].items()]
        lines.append(f"\nFit: t ~ tokens^{scaling['exponent']:.2f} ({scaling['teacher_precision']} teacher).")
        out.append(("Pretraining iteration vs crop size", "\n".join(lines)))
    loader = res.details.get("loader")
    if loader:
        lines = ["| loader variant | crops/s |", "| --- | --- |"]
        lines += [f"| {k} | {v:.1f} |" for k, v in loader["crops_per_s"].items()]
        for key in ("thread_loader_crops_per_s", "cache_rate_0_crops_per_s"):
            if key in loader:
                lines.append(f"| {key.replace('_crops_per_s', '')} | {loader[key]:.1f} |")
        lines.append(f"\nCaching the volumes took {loader['cache_s']:.1f} s (once per run).")
        out.append(("Data loader", "\n".join(lines)))
    inference = res.details.get("inference")
    if inference:
        knobs = inference["knobs_s"]
        shape = knobs.get("block_shape")
        lines = [f"| sliding-window variant on a {shape} block | median s |", "| --- | --- |"]
        lines += [f"| {k} | {v:.3f} |" for k, v in knobs.items() if k != "block_shape"]
        sc = inference["scaling"]
        lines += ["", "| volume | pre-processed voxels | windows | end-to-end s |", "| --- | --- | --- | --- |"]
        lines += [
            f"| {t}x | {v / 1e6:.2f} M | {w} | {s:.2f} |"
            for t, v, w, s in zip((1, 2, 4), sc["voxels"], sc["windows"], sc["e2e_s"])
        ]
        out.append(("Inference", "\n".join(lines)))
    precision = res.details.get("precision")
    if precision:
        curves = precision["pretrain"]
        lines = ["| epoch | rec_loss fp32 | rec_loss bf16 |", "| --- | --- | --- |"]
        for i, (a, b) in enumerate(zip(curves["rec_loss"]["fp32"], curves["rec_loss"]["bf16"])):
            lines.append(f"| {i + 1} | {a:.4f} | {b:.4f} |")
        seg = precision["segment"]["median_s"]
        lines.append(
            f"\nSegmentation train iteration: fp32 {seg['fp32']:.3f} s, bf16 {seg['bf16']:.3f} s "
            f"({precision['segment']['model']})."
        )
        out.append(("bf16 autocast on the CPU: loss curves", "\n".join(lines)))
    return out

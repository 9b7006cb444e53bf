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
import string
from pathlib import Path
from typing import Any

from .common import Results
from .targets import FIGURES, status

__all__ = ["figures_table", "write", "detail_sections"]


def _fmt(value: Any, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        text = f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    else:
        text = str(value)
    return f"{text} {unit}".strip() if unit in ("GB", "crops/s") else text


def figures_table(res: Results, has_gpu: bool, quick: bool = False) -> str:
    """The markdown table of all figures: key, meaning, CPU value, GPU value, target, status, in the order of
    :data:`~.targets.FIGURES`."""
    lines = [
        "| figure | what | CPU | GPU | target | status (CPU / GPU) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, spec in FIGURES.items():
        entry = res.figures.get(key)
        if not entry:
            continue
        cpu, gpu = entry.get("cpu"), entry.get("gpu")
        gpu_text = _fmt(gpu["value"], spec.unit) if gpu else ("not run" if has_gpu else "not yet measured")
        judged = [status(key, column, res.figures, quick) for column in ("cpu", "gpu")]
        targets = (
            spec.cpu or ""
            if spec.cpu == spec.gpu
            else "; ".join(f"{c}: {t}" for c, t in (("CPU", spec.cpu), ("GPU", spec.gpu)) if t)
        )
        if quick and not spec.quick and targets:
            targets += " (not judged in quick mode)"
        states = [s for _, s in judged if s]
        lines.append(
            f"| `{key}` | {spec.what} | {_fmt(cpu['value'], spec.unit) if cpu else 'n/a'} | {gpu_text} | "
            f"{targets} | {' / '.join(states)} |"
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


TEMPLATE = Path(__file__).with_name("benchmarks.md.in")


def write(res: Results, info: dict[str, Any], mode: str, out_dir: Path, prose: dict[str, str], elapsed: float) -> str:
    """Writes benchmarks.md (``benchmarks.md.in`` filled with this run's figures, ``prose`` and details) and
    benchmarks.json under ``out_dir``; returns the figures table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = figures_table(res, bool(info.get("gpu")), mode == "quick")
    contention = ""
    load = info.get("load_start") or 0
    if load and load > 0.5 * (info["cpu_cores_usable"] or 1):
        contention = (
            f"\n> **Contention:** the load average was {info.get('load_start')} at the start on "
            f"{info['cpu_cores_usable']} usable cores: other processes shared the CPU, so absolute times are "
            "inflated and noisy; ratios were measured side by side (interleaved) but are noisy too.\n"
        )
    text = string.Template(TEMPLATE.read_text()).substitute(
        mode=mode,
        minutes=f"{elapsed / 60:.1f}",
        quick_mode=" Quick mode uses smaller settings where labelled." if mode == "quick" else "",
        machine=_machine(info),
        contention=contention,
        table=table,
        figure_notes=_notes(res),
        details="\n\n".join(f"### {title}\n\n{body}" for title, body in res.sections),
        **prose,
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

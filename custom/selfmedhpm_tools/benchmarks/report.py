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

"""Writes ``docs/benchmarks.md`` from the template ``benchmarks.md.in`` and ``docs/benchmarks.json``. The template
holds all the prose; it names each figure by its key (``$pretrain_mfu``), its CPU target (``$target_pretrain_mfu``)
and this run's details by their path in ``benchmarks.json`` (``$step_cpu_median_s_hpm_fp32``, see :func:`flatten`).
What was not measured reads "n/a"; a name that nothing could fill stops the report (:class:`_Values`)."""

from __future__ import annotations

import json
import math
import re
import string
from pathlib import Path
from typing import Any

from .common import Results
from .targets import FIGURES, status

TEMPLATE = Path(__file__).with_name("benchmarks.md.in")


class _Values(dict):
    """The template's values by name. A name without a value reads "n/a" where this run may lack it: a detail of a
    section that did not run (its details are not in ``sections``), or of a precision or a GPU column that was not
    measured; any other name is a misspelling in ``benchmarks.md.in``, and filling the template raises ``KeyError``.

    Examples::

        >>> v = _Values({"step_cpu_s": "1.2"}, sections={"step"})
        >>> v["step_cpu_s"], v["step_cpu_s_bf16"], v["loader_crops_per_s"]
        ('1.2', 'n/a', 'n/a')
        >>> v["step_cpu_sec"]
        Traceback (most recent call last):
        KeyError: 'benchmarks.md.in names $step_cpu_sec, which is not a figure, a target or a detail of this run'
    """

    def __init__(self, values: dict[str, str], sections: set[str]) -> None:
        super().__init__(values)
        self.sections = sections

    def __missing__(self, key: str) -> str:
        if re.search("bf16|int8|gpu", key) or not any(key.startswith(f"{s}_") for s in self.sections):
            return "n/a"
        raise KeyError(f"benchmarks.md.in names ${key}, which is not a figure, a target or a detail of this run")


def fmt(value: Any, unit: str = "") -> str:
    """A figure as the report shows it.

    Examples::

        >>> fmt(0.4567), fmt(1234.5, "crops/s"), fmt(None), fmt(float("nan"))
        ('0.457', '1,234 crops/s', 'n/a', 'n/a')
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    text = (f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}") if isinstance(value, float) else str(value)
    return f"{text} {unit}".strip() if unit in ("GB", "crops/s") else text


def _table(header: str, rows: list[list[Any]]) -> str:
    cells = header.split(" | ")
    lines = [f"| {header} |", "|" + " --- |" * len(cells)]
    return "\n".join(
        lines + ["| " + " | ".join(fmt(c) if isinstance(c, float) else str(c) for c in r) + " |" for r in rows]
    )


def figures_table(res: Results, has_gpu: bool, quick: bool = False) -> str:
    """All recorded figures, in the order of :data:`~.targets.FIGURES`: key, meaning, CPU and GPU value, target,
    status per column."""
    rows = []
    for key, spec in FIGURES.items():
        if key not in res.figures:
            continue
        cpu, gpu = (res.figures[key].get(c) for c in ("cpu", "gpu"))
        gpu_text = fmt(gpu["value"], spec.unit) if gpu else ("not run" if has_gpu else "not yet measured")
        target = (
            spec.cpu or ""
            if spec.cpu == spec.gpu
            else "; ".join(f"{c}: {t}" for c, t in (("CPU", spec.cpu), ("GPU", spec.gpu)) if t)
        )
        target += " (not judged in quick mode)" if quick and not spec.quick and target else ""
        states = " / ".join(s for s in (status(key, c, res.figures, quick) for c in ("cpu", "gpu")) if s)
        rows.append([f"`{key}`", spec.what, fmt(cpu["value"], spec.unit) if cpu else "n/a", gpu_text, target, states])
    return _table("figure | what | CPU | GPU | target | status (CPU / GPU)", rows)


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """The leaves of nested dicts by their path (joined with "_", other characters too), as the report shows them.

    Examples::

        >>> flatten({"step": {"median_s": {"fused=False": 1.23456}}, "workers": 4})
        {'step_median_s_fused_False': '1.23', 'workers': '4'}
    """
    if not isinstance(tree, dict):
        return {prefix: fmt(tree)}
    out: dict[str, str] = {}
    for key, value in tree.items():
        out.update(flatten(value, re.sub(r"\W", "_", f"{prefix}_{key}" if prefix else str(key))))
    return out


def values(res: Results, info: dict[str, Any], mode: str, elapsed: float) -> dict[str, str]:
    """The template's values: this run's details by path (``$step_cpu_median_s_hpm_fp32``), every figure and its
    CPU target by key (``$pretrain_mfu``, ``$target_pretrain_mfu``), the machine and the tables."""
    v = _Values(flatten(res.details), set(res.details))
    v.update({key: fmt(res.value(key), spec.unit) for key, spec in FIGURES.items()})
    v.update({f"target_{key}": spec.cpu or "" for key, spec in FIGURES.items()})
    contention = ""
    if (info.get("load_start") or 0) > 0.5 * (info["cpu_cores_usable"] or 1):
        contention = (
            f"\n> **Contention:** the load average was {info['load_start']} at the start on {info['cpu_cores_usable']} "
            "usable cores: other processes shared the CPU, so absolute times are inflated and noisy; ratios were "
            "measured side by side but are noisy too.\n"
        )
    measured = info.get("precisions_measured", info["native_precisions"])  # by default, the native ones
    machine = {
        "CPU": info["cpu_model"],
        "cores (usable) / torch threads": f"{info['cpu_cores']} ({info['cpu_cores_usable']}) / {info['torch_threads']}",
        "CPU features": ", ".join(info["cpu_flags"]) or "none of note",
        "precisions measured (native to this CPU)": f"{', '.join(measured)} ({', '.join(info['native_precisions'])})",
        "memory": f"{info['memory_gb']} GB",
        "GPU": info["gpu"] or "none",
        "torch / MONAI / Python": f"{info['torch']} / {info['monai']} / {info['python']}",
        "load average (1 min) at start / end": f"{info.get('load_start')} / {info.get('load_end')}",
    }
    notes = [
        f"- `{key}` ({column.upper()}): " + "; ".join(t for t in (cell.get("label"), cell.get("note")) if t)
        for key, entry in res.figures.items()
        for column, cell in entry.items()
        if cell.get("label") or cell.get("note")
    ]
    v.update(
        mode=mode,
        minutes=f"{elapsed / 60:.1f}",
        reps=str(info.get("reps", "n/a")),
        quick_mode=" Quick mode uses smaller settings where labelled." if mode == "quick" else "",
        machine=_table("item | this run", list(map(list, machine.items()))),
        contention=contention,
        table=figures_table(res, bool(info.get("gpu")), mode == "quick"),
        figure_notes="\n".join(notes),
        gpu_note="" if info.get("gpu") else "\nNo GPU in this run: the GPU column is not yet measured.\n",
    )
    return v


def write(res: Results, info: dict[str, Any], mode: str, out_dir: Path, elapsed: float) -> str:
    """Writes ``benchmarks.md`` (the template filled with :func:`values`) and ``benchmarks.json`` under ``out_dir``;
    returns the figures table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    filled = values(res, info, mode, elapsed)
    (out_dir / "benchmarks.md").write_text(string.Template(TEMPLATE.read_text()).substitute(filled))
    payload = {"mode": mode, "elapsed_s": elapsed, "machine": info, "figures": res.figures, "details": res.details}
    (out_dir / "benchmarks.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return filled["table"]

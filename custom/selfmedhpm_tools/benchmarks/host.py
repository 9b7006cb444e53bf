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


"""The host-side cost of one HPM step, eager against compiled (the bundle's ``compile`` flag): the aten operators the
host dispatches per step (from the profiler) and the step time at a tiny width, where compute is negligible and what
is left is the host's work. On a GPU that host work is what leaves the device idle (the ViT-B step there is
host-bound); on the CPU it is the proxy that can be measured without one.
"""

from __future__ import annotations

import gc
from typing import Any

import torch

from .common import Config, Results, interleaved, log, median, phantom_crops
from .step import HPMStep

__all__ = ["TINY", "aten_ops_per_step", "host_rows", "run"]

# a ViT so narrow that its matmuls cost next to nothing, with the CPU preset's depth (12 + 2 x 2 blocks)
TINY = dict(hidden_size=24, mlp_dim=48, num_heads=2, decoder_hidden_size=12, decoder_mlp_dim=24, decoder_num_layers=2,
            decoder_num_heads=2)  # fmt: skip
ROI, BATCH = 64, 2


def aten_ops_per_step(step: Any) -> int:
    """aten operators the host dispatches in one call of ``step``: the profiler's ``aten::`` events that are not
    inside another aten operator (what Python or a compiled graph asked for, not the ops they decompose into).

    Examples::

        >>> aten_ops_per_step(lambda: torch.ones(3).add(1).sum())
        3
    """
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    count = 0
    for event in prof.events():
        parent = event.cpu_parent
        while parent is not None and not parent.name.startswith("aten::"):
            parent = parent.cpu_parent
        count += event.name.startswith("aten::") and parent is None
    return count


def host_rows(
    device: str = "cpu", reps: int = 5, modes: tuple[str, ...] = ("eager", "compiled")
) -> dict[str, dict[str, float]]:
    """Per mode in ``modes`` ("eager", "compiled"): aten ops per step and the median step time of the tiny network,
    fp32, with the bundle's trainer (:class:`~.step.HPMStep`). The compiled side is warmed up (compiled) before it
    is timed; its first step (compile time included) is reported as ``first_step_s``."""
    images = phantom_crops(BATCH, ROI, seed=4)
    steps, compile_s = {}, {}
    for mode in modes:
        steps[mode] = HPMStep(TINY, ROI, images, device=device, compile=mode == "compiled")
        first = interleaved({mode: steps[mode].step}, reps=1, warmup=0, device=device)[mode][0]
        compile_s[mode] = first
        log(f"host: {mode} step built, first step {first:.1f} s")
    ops = {mode: aten_ops_per_step(step.step) for mode, step in steps.items()}
    times = interleaved({mode: step.step for mode, step in steps.items()}, reps=reps, warmup=1, device=device)
    rows = {
        mode: {"aten_ops": ops[mode], "seconds": median(times[mode]), "first_step_s": compile_s[mode]} for mode in steps
    }
    steps = None
    gc.collect()
    return rows


def run(cfg: Config, res: Results) -> dict[str, Any]:
    """The host-cost figures on the CPU (and the GPU when there is one) into ``res``."""
    detail = {}
    for column, device in [("cpu", "cpu")] + ([("gpu", cfg.device)] if cfg.device else []):
        rows = host_rows(device, reps=max(cfg.reps, 5))
        eager, compiled = rows["eager"], rows["compiled"]
        label = f"HPM step, width {TINY['hidden_size']}, {ROI}^3, batch {BATCH}, fp32, {device}"
        res.add("host_aten_ops_per_step", eager["aten_ops"], column, "eager", label)
        compile_note = f"--compile True; first step (compiling) {compiled['first_step_s']:.0f} s"
        res.add("host_aten_ops_per_step_compiled", compiled["aten_ops"], column, compile_note, label)
        res.add("host_step_s_tiny", eager["seconds"], column, "eager", label)
        times = f"eager {eager['seconds'] * 1e3:.1f} ms, compiled {compiled['seconds'] * 1e3:.1f} ms per step"
        res.add("host_step_speedup_compiled", eager["seconds"] / compiled["seconds"], column, times, label)
        detail[column] = rows
        log(
            f"host ({column}): "
            + ", ".join(f"{m} {r['aten_ops']} ops {r['seconds'] * 1e3:.1f} ms" for m, r in rows.items())
        )
    return detail

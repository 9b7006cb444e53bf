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

"""The host-side cost of one HPM step, eager against compiled (the bundle's ``compile`` flag): aten operators
dispatched per step, and the step time at a tiny width, where compute is negligible and what is left is the host's
work: what leaves a GPU idle on the (host-bound) ViT-B step, measured on the CPU without one.
"""

from __future__ import annotations

from typing import Any

import torch

from .common import Config, Results, interleaved, log, medians, phantom_crops
from .step import HPMStep

# a ViT so narrow that its matmuls cost next to nothing, with the CPU preset's depth (12 + 2 x 2 blocks)
TINY = dict(hidden_size=24, mlp_dim=48, num_heads=2, decoder_hidden_size=12, decoder_mlp_dim=24, decoder_num_layers=2,
            decoder_num_heads=2)  # fmt: skip
ROI, BATCH = 64, 2


def aten_ops_per_step(step: Any) -> int:
    """aten operators the host dispatches in one call of ``step``: the profiler's ``aten::`` events not inside
    another aten operator (what Python or a compiled graph asked for, not what those decompose into).

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


def run(cfg: Config, res: Results, peak: dict[str, float]) -> dict[str, Any]:
    """Per column (CPU, and the GPU when there is one): aten ops and median step time of the tiny network, fp32,
    eager and compiled (the first compiled step, compile included, reported apart)."""
    detail = {}
    for column, device in [("cpu", "cpu")] + [("gpu", cfg.device)] * bool(cfg.device):
        steps = {
            m: HPMStep(TINY, ROI, phantom_crops(BATCH, ROI, seed=4), device, m == "compiled").step
            for m in ("eager", "compiled")
        }
        first = {m: interleaved({m: s}, reps=1, warmup=0, device=device)[m][0] for m, s in steps.items()}
        seconds = medians(steps, reps=max(cfg.reps, 5), device=device)
        rows = {
            m: {"aten_ops": aten_ops_per_step(s), "seconds": seconds[m], "first_step_s": first[m]}
            for m, s in steps.items()
        }
        eager, compiled = rows["eager"], rows["compiled"]
        label = f"HPM step, width {TINY['hidden_size']}, {ROI}^3, batch {BATCH}, fp32, {device}"
        res.add("host_aten_ops_per_step", eager["aten_ops"], column, "eager", label)
        note = f"--compile True; first step (compiling) {compiled['first_step_s']:.0f} s"
        res.add("host_aten_ops_per_step_compiled", compiled["aten_ops"], column, note, label)
        res.add("host_step_s_tiny", eager["seconds"], column, "eager", label)
        note = f"eager {eager['seconds'] * 1e3:.1f} ms, compiled {compiled['seconds'] * 1e3:.1f} ms per step"
        res.add("host_step_speedup_compiled", eager["seconds"] / compiled["seconds"], column, note, label)
        log(
            f"host ({column}): "
            + ", ".join(f"{m} {r['aten_ops']} ops {r['seconds'] * 1e3:.1f} ms" for m, r in rows.items())
        )
        detail[column] = rows
    return detail

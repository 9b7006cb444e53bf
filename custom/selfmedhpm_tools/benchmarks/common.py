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

"""Shared pieces of the benchmarks: run settings, the result record, the machine, interleaved timing, FLOP counting,
the matmul peak, and the bundles' configs and synthetic crops they run on."""

from __future__ import annotations

import functools
import gc
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from torch.utils import flop_counter

from .targets import FIGURES

ROOT = Path(__file__).resolve().parents[3]  # the repository: custom/selfmedhpm_tools/benchmarks/common.py
PRETRAIN_CONFIGS = ROOT / "bundles" / "selfmedhpm_ct_pretraining" / "configs"
SEGMENT_CONFIGS = ROOT / "bundles" / "selfmedhpm_ct_segmentation" / "configs"
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


@dataclass
class Config:
    """What one run measures and how hard it tries.

    Args:
        quick: small settings that finish in minutes on 2 CPU cores (``make bench-quick``); False: full mode, for GPU
            machines (paper-scale models and volumes everywhere).
        reps: timed repetitions per measurement (after ``warmup`` untimed ones); medians are reported.
        device: the accelerator of the GPU column ("cuda"), None for the CPU column only.
        workdir: scratch folder for synthetic data and bundle outputs.
        only: the sections to run (all when empty).
        precisions: the CPU precisions measured; by default those this CPU runs natively (:func:`native_precisions`).
    """

    quick: bool = True
    reps: int = 5
    warmup: int = 1
    device: str | None = None
    workdir: str = "results/bench"
    only: Sequence[str] = ()
    precisions: Sequence[str] = field(default_factory=lambda: native_precisions())

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "full"

    def wants(self, name: str) -> bool:
        return not self.only or name in self.only


@dataclass
class Results:
    """Figures (key -> column -> value, note, label; their meaning and targets: :data:`~.targets.FIGURES`) and
    free-form details."""

    figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def add(self, key: str, value: float | None, column: str = "cpu", note: str = "", label: str = "") -> None:
        """Records figure ``key`` (declared in :data:`~.targets.FIGURES`) in ``column`` ("cpu" or "gpu")."""
        if key not in FIGURES:
            raise KeyError(f"figure {key!r} is not declared in selfmedhpm_tools/benchmarks/targets.py")
        self.figures.setdefault(key, {})[column] = {"value": value, "note": note, "label": label}

    def add_all(self, figures: dict[str, tuple[float | None, str]], column: str = "cpu", label: str = "") -> None:
        """Records each ``key: (value, note)`` of ``figures`` with the same ``label``; a value of None (not measured
        here, e.g. a precision this CPU emulates) shows as "n/a"."""
        for key, (value, note) in figures.items():
            self.add(key, value, column, note, label)

    def value(self, key: str, column: str = "cpu") -> float | None:
        return self.figures.get(key, {}).get(column, {}).get("value")


def log(*args: Any) -> None:
    """Progress line, flushed (``make bench`` streams it)."""
    print("[bench]", *args, flush=True)


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from ``/proc/cpuinfo`` (empty where unavailable)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def fast_teacher_precision(flags: set[str] | None = None) -> str:
    """The teacher-pass precision that runs fastest on this CPU: "bf16" with AMX, "int8" with VNNI int8 dot products
    but no AMX (int8 is faster than bf16 there), else "fp32". What the benchmarks time beside the default (the student's
    precision); a run uses it only when asked (``--teacher_precision int8``).

    Examples::

        >>> fast_teacher_precision({"avx512_vnni"}), fast_teacher_precision({"amx_bf16"}), fast_teacher_precision(set())
        ('int8', 'bf16', 'fp32')
    """
    flags = cpu_flags() if flags is None else flags
    if "amx_bf16" in flags:
        return "bf16"
    return "int8" if flags & {"avx512_vnni", "avx_vnni"} else "fp32"


def native_precisions(flags: set[str] | None = None) -> tuple[str, ...]:
    """The CPU precisions that run at hardware speed: fp32; bf16 with AVX-512 BF16 or AMX; int8 with VNNI. Elsewhere
    torch emulates them about 50 times slower than fp32, so the benchmarks skip them (``--all-precisions`` keeps them).

    Examples::

        >>> native_precisions({"avx2"}), native_precisions({"avx512_bf16", "avx512_vnni"})
        (('fp32',), ('fp32', 'bf16', 'int8'))
    """
    flags = cpu_flags() if flags is None else flags
    return (
        ("fp32",)
        + ("bf16",) * bool(flags & {"avx512_bf16", "amx_bf16"})
        + ("int8",) * bool(flags & {"avx512_vnni", "avx_vnni"})
    )


def machine_info() -> dict[str, Any]:
    """CPU model, cores, the ISA flags that matter for bf16/int8, memory, load, versions and the GPU."""
    import monai
    import psutil

    fields: dict[str, str] = {}
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    model = fields.get("model name", platform.processor() or platform.machine())
    info: dict[str, Any] = {
        "cpu_model": f"{model} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})",
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_flags": [f for f in CPU_FLAGS if f in cpu_flags()],
        "native_precisions": list(native_precisions()),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_start": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "gpu": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    return info


def sync(device: torch.device | str | None = None) -> None:
    """Waits for queued GPU work (no-op on CPU)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def interleaved(
    fns: dict[str, Callable[[], Any]], reps: int, warmup: int = 1, device: torch.device | str | None = None
) -> dict[str, list[float]]:
    """Seconds of ``reps`` calls of each function (after ``warmup`` calls each), interleaved: each round calls every
    function once, in an order rotated per round, so that drift and contention hit all sides alike.

    Examples::

        >>> times = interleaved({"a": lambda: None, "b": lambda: sum(range(100))}, reps=3)
        >>> sorted(times), len(times["a"])
        (['a', 'b'], 3)
    """
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            gc.collect()
            sync(device)
            start = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def medians(*args: Any, **kwargs: Any) -> dict[str, float]:
    """:func:`interleaved`, reduced to the median per function."""
    return {k: median(v) for k, v in interleaved(*args, **kwargs).items()}


# FlopCounterMode counts the CUDA attention kernels but not the CPU flash kernel nor ``_int_mm``: register them, so
# fused attention (our network) and einsum attention (MONAI's MAE) count alike
for _name, _formula in {
    "_scaled_dot_product_flash_attention_for_cpu": lambda q, k, v, *a, out_shape=None, **kw: (
        flop_counter.sdpa_flop_count(q, k, v)
    ),
    "_scaled_dot_product_flash_attention_for_cpu_backward": lambda g, q, k, v, *a, out_shape=None, **kw: (
        flop_counter.sdpa_backward_flop_count(g, q, k, v)
    ),
    "_int_mm": lambda a, b, *args, out_shape=None, **kw: 2 * a[0] * a[1] * b[1],
}.items():
    _op = getattr(torch.ops.aten, _name, None)
    if _op is not None and _op not in flop_counter.flop_registry:
        flop_counter.register_flop_formula(_op)(_formula)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (matmuls, convolutions, attention; forward and backward; 2 per multiply-add)."""
    with flop_counter.FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak(device: str = "cpu", dtype: torch.dtype = torch.float32, sizes: Sequence[int] = (1024, 2048)) -> float:
    """The dense matmul peak in FLOP/s, measured now: the best ``torch.mm`` over square ``sizes`` and the two ViT-B
    linear shapes (best of 5 calls each, after a warm-up)."""
    best = 0.0
    for m, k, n in [(s, s, s) for s in sizes] + [(432, 768, 3072), (432, 3072, 768)]:
        a, b = torch.randn(m, k, device=device).to(dtype), torch.randn(k, n, device=device).to(dtype)
        seconds = min(interleaved({"mm": lambda: torch.mm(a, b)}, reps=5, device=device)["mm"])
        best = max(best, 2 * m * k * n / seconds)
    return best


def fit_exponent(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(y) on log(x): y ~ x^b.

    Examples::

        >>> round(fit_exponent([1, 2, 4], [3, 6, 12]), 3)
        1.0
    """
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def bundle_parser(folder: Path, files: Sequence[str], **overrides: Any) -> ConfigParser:
    """The bundle configs ``files`` of ``folder`` (merged in order) with ``overrides``."""
    parser = ConfigParser()
    parser.read_config([str(folder / name) for name in files])
    parser.update(overrides)
    return parser


def phantom_crops(count: int, roi: int, seed: int = 0) -> torch.Tensor:
    """``count`` random ``roi^3`` crops ``[count, 1, roi, roi, roi]`` of a synthetic abdominal CT
    (:func:`selfmedhpm_tools.phantom.generate_case`), HU window -175..250 scaled to [0, 1] as the bundles do."""
    import numpy as np
    from selfmedhpm_tools.phantom import generate_case

    image, _, _ = generate_case(seed, shape=(max(2 * roi, 128),) * 2 + (max(roi + 16, 64),))
    volume = np.clip((image.astype(np.float32) + 175.0) / 425.0, 0.0, 1.0)
    rng = np.random.default_rng(seed)
    corners = [[int(rng.integers(0, s - roi + 1)) for s in volume.shape] for _ in range(count)]
    crops = [volume[tuple(slice(c, c + roi) for c in corner)] for corner in corners]
    return torch.from_numpy(np.stack(crops)[:, None].copy())

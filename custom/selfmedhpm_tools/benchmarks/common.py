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

"""Shared pieces of the benchmarks: the machine's description, interleaved timing, FLOP counting, the matmul peak and
the result record that :mod:`selfmedhpm_tools.benchmarks.report` writes out."""

from __future__ import annotations

import contextlib
import gc
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils import flop_counter

from .targets import FIGURES

__all__ = [
    "ROOT",
    "PRETRAIN_CONFIGS",
    "SEGMENT_CONFIGS",
    "phantom_crops",
    "num_threads",
    "Config",
    "Results",
    "machine_info",
    "interleaved",
    "median",
    "count_flops",
    "matmul_peak",
    "sync",
    "fit_exponent",
    "log",
]

ROOT = Path(__file__).resolve().parents[3]  # the repository: custom/selfmedhpm_tools/benchmarks/common.py
PRETRAIN_CONFIGS = ROOT / "bundles" / "selfmedhpm_ct_pretraining" / "configs"
SEGMENT_CONFIGS = ROOT / "bundles" / "selfmedhpm_ct_segmentation" / "configs"
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


@dataclass
class Config:
    """What one benchmark run measures and how hard it tries.

    Args:
        quick: small settings that finish in minutes on 2 CPU cores (``make bench-quick``); False is the full mode,
            for GPU machines (paper-scale models and volumes everywhere).
        reps: timed repetitions per measurement (after warm-up), medians are reported.
        warmup: untimed runs before timing.
        device: the accelerator of the GPU column ("cuda" when available, else None: CPU only).
        workdir: scratch folder for synthetic data and bundle outputs.
    """

    quick: bool = True
    reps: int = 3
    warmup: int = 1
    device: str | None = None
    workdir: str = "results/bench"
    only: Sequence[str] = ()

    @property
    def mode(self) -> str:
        return "quick" if self.quick else "full"

    def wants(self, name: str) -> bool:
        """Whether the section ``name`` is selected (``--only``)."""
        return not self.only or name in self.only


@dataclass
class Results:
    """Figures (key -> column -> value, note, label; what each means and its target are in
    :data:`~.targets.FIGURES`), free-form details, and markdown sections."""

    figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    sections: list[tuple[str, str]] = field(default_factory=list)

    def add(self, key: str, value: float | None, column: str = "cpu", note: str = "", label: str = "") -> None:
        """Records figure ``key`` (declared in :data:`~.targets.FIGURES`) in ``column`` ("cpu" or "gpu")."""
        if key not in FIGURES:
            raise KeyError(f"figure {key!r} is not declared in selfmedhpm_tools/benchmarks/targets.py")
        self.figures.setdefault(key, {})[column] = {"value": value, "note": note, "label": label}

    def value(self, key: str, column: str = "cpu") -> float | None:
        """The recorded value of ``key`` in ``column``, None when absent."""
        return self.figures.get(key, {}).get(column, {}).get("value")


def log(*args: Any) -> None:
    """Progress line on stdout, flushed (``make bench`` streams it)."""
    print("[bench]", *args, flush=True)


def _cpu_model() -> str:
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
            if not line.strip():
                break
    if "model name" in fields:
        return f"{fields['model name']} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("flags"):
                present = set(line.split(":", 1)[1].split())
                return [f for f in CPU_FLAGS if f in present]
    return []


def machine_info() -> dict[str, Any]:
    """CPU model, cores, ISA flags that matter for bf16/int8, memory, load, torch/MONAI versions and the GPU."""
    import monai
    import psutil

    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_flags": _cpu_flags(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "mkldnn_bf16": bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "gpu": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
        info["gpu_count"] = torch.cuda.device_count()
    return info


def sync(device: torch.device | str | None = None) -> None:
    """Waits for queued GPU work (no-op on CPU)."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median(values: Sequence[float]) -> float:
    """Median of ``values`` (NaN when empty)."""
    return statistics.median(values) if values else math.nan


def interleaved(
    fns: dict[str, Callable[[], Any]], reps: int, warmup: int = 1, device: torch.device | str | None = None
) -> dict[str, list[float]]:
    """Times each function ``reps`` times, interleaved: warm-up runs of every function first, then rounds that call
    every function once, in an order rotated each round (so drift and contention hit all sides alike).

    Returns:
        name -> list of wall-clock seconds, one per round.

    Examples::

        >>> times = interleaved({"a": lambda: None, "b": lambda: sum(range(100))}, reps=3)
        >>> sorted(times), len(times["a"])
        (['a', 'b'], 3)
    """
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
        sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(reps):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            sync(device)
            start = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def _register_cpu_attention_flops() -> None:
    """FlopCounterMode (torch 2.13) counts the CUDA SDPA kernels but not the CPU flash kernel, nor ``_int_mm``:
    register them, so fused attention (our network) and einsum attention (MONAI's MAE) are counted alike."""
    aten = torch.ops.aten
    registry = flop_counter.flop_registry
    targets = {
        "_scaled_dot_product_flash_attention_for_cpu": lambda q, k, v, *a, out_shape=None, **kw: (
            flop_counter.sdpa_flop_count(q, k, v)
        ),
        "_scaled_dot_product_flash_attention_for_cpu_backward": lambda g, q, k, v, *a, out_shape=None, **kw: (
            flop_counter.sdpa_backward_flop_count(g, q, k, v)
        ),
        "_int_mm": lambda a, b, *args, out_shape=None, **kw: 2 * a[0] * a[1] * b[1],
    }
    for name, formula in targets.items():
        op = getattr(aten, name, None)
        if op is not None and op not in registry:
            flop_counter.register_flop_formula(op)(formula)


_register_cpu_attention_flops()


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions and
    attention, forward and backward; 2 per multiply-add), CPU attention kernels and int8 matmuls included."""
    with flop_counter.FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak(
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    sizes: Sequence[int] = (1024, 2048),
    shapes: Sequence[tuple[int, int, int]] = ((432, 768, 3072), (432, 3072, 768)),
) -> dict[str, Any]:
    """The dense matmul peak of this device and dtype, measured now: the best FLOP/s of ``torch.mm`` over square
    ``sizes`` and the ViT-B linear ``shapes`` (m, k, n) (best of 5 calls each, after a warm-up), in FLOP/s."""
    per_shape = {}
    for m, k, n in [(s, s, s) for s in sizes] + list(shapes):
        a = torch.randn(m, k, device=device).to(dtype)
        b = torch.randn(k, n, device=device).to(dtype)
        torch.mm(a, b)
        sync(device)
        best = math.inf
        for _ in range(5):
            start = time.perf_counter()
            torch.mm(a, b)
            sync(device)
            best = min(best, time.perf_counter() - start)
        per_shape[f"{m}x{k}x{n}"] = 2 * m * k * n / best
    return {"flops_per_s": max(per_shape.values()), "per_shape": per_shape, "dtype": str(dtype).replace("torch.", "")}


def fit_exponent(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of log(y) on log(x): y ~ x^b.

    Examples::

        >>> round(fit_exponent([1, 2, 4], [3, 6, 12]), 3)
        1.0
    """
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


@contextlib.contextmanager
def num_threads(n: int | None) -> Iterator[None]:
    """Temporarily sets torch's intra-op threads (None: unchanged)."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def phantom_crops(count: int, roi: int, seed: int = 0) -> torch.Tensor:
    """``count`` random ``roi^3`` crops ``[count, 1, roi, roi, roi]`` of a synthetic abdominal CT
    (:func:`selfmedhpm_tools.phantom.generate_case`), HU window -175..250 scaled to [0, 1] as the bundles do."""
    import numpy as np
    from selfmedhpm_tools.phantom import generate_case

    side = max(2 * roi, 128)
    image, _, _ = generate_case(seed, shape=(side, side, max(roi + 16, 64)))
    volume = np.clip((image.astype(np.float32) + 175.0) / 425.0, 0.0, 1.0)
    rng = np.random.default_rng(seed)
    crops = []
    for _ in range(count):
        corner = [int(rng.integers(0, s - roi + 1)) for s in volume.shape]
        crops.append(volume[tuple(slice(c, c + roi) for c in corner)])
    return torch.from_numpy(np.stack(crops)[:, None].copy())

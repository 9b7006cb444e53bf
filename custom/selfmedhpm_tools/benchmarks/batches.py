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

"""The pretraining step at paper scale by batch size, for GPU machines (``make bench``): seconds per step, crops/s,
MFU against the bf16 peak of the same run and peak memory at batches 8, 32 and 64 (ViT-B/16, 96^3, bf16), HPM beside
MAE through the same trainer (:class:`SameCodeMAEStep`) and MONAI's ``MaskedAutoEncoderViT``; the pretraining bundle
end to end against the step; the segmentation iteration eager and compiled. Each row is written to ``rows_file`` as
soon as it is measured (a run cut off by a time limit keeps it); a batch that does not fit is recorded as such.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from selfmedhpm.ema import unwrap
from selfmedhpm.utils import write_json_atomic

from .common import Config, Results, count_flops, log, medians, phantom_crops
from .step import BATCH, VIT_B, HPMStep, MAEStep

BATCHES = (8, 32, 64)  # their figures and targets: targets.py


class SameCodeMAEStep(HPMStep):
    """The HPM trainer's iteration as plain MAE: random masks (constant teacher scores, hard ratio 0), no
    loss-prediction term, no EMA update; the loss predictor's head still runs, as part of the network."""

    def __init__(self, dims: dict, roi: int, images: torch.Tensor, device: str = "cpu", compile: bool = False) -> None:
        super().__init__(dims, roi, images, device, compile)
        self.trainer.final_hard_ratio = 0.0
        unwrap(self.trainer.loss_function).pred_weight = 0.0  # before any call: a compiled loss sees it as constant
        patches = self.network.num_patches
        self.trainer.teacher_scores = lambda images: torch.zeros(images.shape[0], patches, device=images.device)

    def step(self, precision: str = "fp32", teacher_precision: str = "fp32", monai_defaults: bool = False) -> None:
        self.trainer.inferer.precision = precision
        self.trainer.iteration(self.batch)


def _rows(steps: dict[str, Any], batch: int, peak_flops: float, device: str, reps: int) -> dict[str, dict]:
    """seconds, crops/s, GFLOP, MFU and peak GPU memory (None on the CPU) of each step function."""
    on_gpu, flops, memory = torch.device(device).type == "cuda", {n: count_flops(fn) for n, fn in steps.items()}, {}
    for name, fn in steps.items():
        if on_gpu:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        fn()
        memory[name] = torch.cuda.max_memory_allocated() / 1e9 if on_gpu else None
    seconds = medians(steps, reps=reps, warmup=3, device=device)
    return {
        name: {
            "seconds": s,
            "crops_per_s": batch / s,
            "gflop": flops[name] / 1e9,
            "peak_memory_gb": memory[name],
            "mfu": flops[name] / s / peak_flops,
        }
        for name, s in seconds.items()
    }


def batch_rows(
    device: str,
    peak_flops: float,
    rows_file: Path,
    batches: Sequence[int] = BATCHES,
    network: tuple[dict, int] = (VIT_B, 96),
    reps: int = 10,
) -> dict[int, dict[str, Any]]:
    """One row per batch size with ``network`` (widths, crop edge): ``{"hpm" | "mae_same_code" | "monai_mae" (on a
    GPU also "hpm_compiled" | "mae_same_code_compiled", compiled in the untimed warm-up): {"seconds", "crops_per_s",
    "gflop", "mfu", "peak_memory_gb"}}``, or ``{"error": ...}`` for a batch that did not fit; ``rows_file`` is
    rewritten after each."""
    on_gpu = torch.device(device).type == "cuda"
    low, (dims, roi) = "bf16" if on_gpu else "fp32", network
    rows: dict[int, dict[str, Any]] = {}
    for batch in batches:
        try:
            images = phantom_crops(batch, roi, seed=3)
            hpm, same = HPMStep(dims, roi, images, device), SameCodeMAEStep(dims, roi, images, device)
            steps = {
                "hpm": lambda: hpm.step(low, low),
                "mae_same_code": lambda: same.step(low),
                "monai_mae": MAEStep(dims, roi, images, device, torch.bfloat16 if on_gpu else torch.float32).step,
            }
            if on_gpu:
                hpm_c, same_c = (cls(dims, roi, images, device, True) for cls in (HPMStep, SameCodeMAEStep))
                steps.update(hpm_compiled=lambda: hpm_c.step(low, low), mae_same_code_compiled=lambda: same_c.step(low))
                for name in ("hpm_compiled", "mae_same_code_compiled"):
                    steps[name]()  # compiles, outside the FLOP count and the timing
            rows[batch] = _rows(steps, batch, peak_flops, device, reps)
            log(f"batch {batch}: " + ", ".join(f"{k} {v['mfu']:.1%} MFU" for k, v in rows[batch].items()))
        except torch.cuda.OutOfMemoryError as error:
            rows[batch] = {"error": f"out of memory: {str(error).splitlines()[0]}"}
            log(f"batch {batch}: out of memory")
        steps = hpm = same = hpm_c = same_c = None
        gc.collect()
        if on_gpu:
            torch.cuda.empty_cache()
        write_json_atomic({str(b): row for b, row in rows.items()}, rows_file)
    return rows


def finetune_rows(device: str, peak_flops: float, batch: int = 8, reps: int = 10, **overrides: Any) -> dict:
    """The segmentation ``train.json`` iteration (paper-scale UNETR, 96^3; bf16 unless ``overrides`` say otherwise;
    ``files``: other config files) at ``batch``, eager and compiled (in the warm-up): seconds, crops/s, MFU."""
    from .precision import segment_trainer

    files = list(overrides.pop("files", ["train.json"]))
    overrides.setdefault("precision", "bf16")
    runs = {
        m: segment_trainer(files, device, batch, compile=m == "compiled", **overrides)[0].run
        for m in ("eager", "compiled")
    }
    flops = count_flops(runs["eager"])
    return {
        m: {"seconds": s, "crops_per_s": batch / s, "mfu": flops / s / peak_flops}
        for m, s in medians(runs, reps=reps, warmup=3, device=device).items()
    }


def bundle_crops_per_s(device: str, workdir: Path, extra: Sequence[str] = (), quick: bool = False, **overrides):
    """Crops/s of the pretraining bundle itself (``train.json`` + ``gpu_cache.json`` + ``extra``, compiled; loading,
    EMA, logging, checkpoints; 4 epochs of batch 2 x 16 crops unless ``overrides`` say otherwise) on synthetic CTs,
    over the epochs after the first (which caches and compiles), from its ``history.json``."""
    from .loader import make_dataset
    from .precision import train_pretraining

    dataset_dir, datalist = make_dataset(workdir, quick=quick)
    settings = {"epochs": 4, "batch_size": 2, "num_samples": 16, "compile": True, **overrides}
    history = train_pretraining(
        dataset_dir,
        workdir / "bundle_e2e",
        ("train.json", "gpu_cache.json", *extra),
        datalist=str(datalist),
        device=device,
        **settings,
    )[1:]
    crops = sum(r["iterations"] for r in history) * settings["batch_size"] * settings["num_samples"]
    return crops / sum(r["seconds"] for r in history)


def run(cfg: Config, res: Results, peak: dict[str, float]) -> dict[int, dict[str, Any]]:
    """The GPU batch table and its figures into ``res``; rows also in ``WORKDIR/gpu_batches.json`` as they come."""
    rows_file = Path(cfg.workdir) / "gpu_batches.json"
    rows_file.parent.mkdir(parents=True, exist_ok=True)
    rows = batch_rows(cfg.device, peak["gpu_bf16"], rows_file, batches=(BATCH, *BATCHES), reps=max(cfg.reps, 10))
    hpm, mae = rows[BATCH]["hpm"], rows[BATCH]["monai_mae"]  # the GPU column of the CPU step figures
    res.add_all(
        {
            "hpm_step_over_mae_step": (hpm["seconds"] / mae["seconds"], "bf16 autocast vs MONAI MAE cast to bf16"),
            "hpm_step_over_mae_step_bf16": (hpm["seconds"] / mae["seconds"], "bf16 autocast vs MAE cast to bf16"),
            "hpm_step_over_mae_step_flops": (hpm["gflop"] / mae["gflop"], "FlopCounterMode"),
            "pretrain_mfu": (hpm["mfu"], "bf16"),
            "pretrain_mfu_bf16": (hpm["mfu"], "bf16"),
            "mae_mfu": (mae["mfu"], "model cast to bf16"),
            "mae_mfu_bf16": (mae["mfu"], "model cast to bf16"),
        },
        "gpu",
        f"ViT-B/16, 96^3, batch {BATCH}, GPU",
    )
    for batch, row in rows.items():
        label = f"ViT-B/16, 96^3, bf16, batch {batch}, GPU"
        if batch == BATCH:
            continue
        if "error" in row:
            res.add(f"pretrain_b{batch}_mfu", None, "gpu", row["error"], label)
            continue
        mode = "_compiled" if "hpm_compiled" in row else ""  # the bundle's best: --compile True where measured
        hpm, mae = row[f"hpm{mode}"], row[f"mae_same_code{mode}"]
        note = f"MAE (same code) {mae['mfu']:.1%}, MONAI MAE (bf16 cast) {row['monai_mae']['mfu']:.1%}"
        if mode:
            label += ", --compile True"
            note += f"; eager: HPM {row['hpm']['mfu']:.1%}, MAE (same code) {row['mae_same_code']['mfu']:.1%}"
        res.add(f"pretrain_b{batch}_mfu", hpm["mfu"], "gpu", note, label)
        res.add(f"pretrain_b{batch}_crops_per_s", hpm["crops_per_s"], "gpu", label=label)
        res.add(f"pretrain_b{batch}_peak_memory", hpm["peak_memory_gb"], "gpu", label=label)
        res.add(f"pretrain_b{batch}_mfu_hpm_over_mae", hpm["mfu"] / mae["mfu"], "gpu", label=label)
    step32 = rows.get(32, {}).get("hpm_compiled")
    if step32:
        bundle = bundle_crops_per_s(cfg.device, Path(cfg.workdir))
        note = f"bundle {bundle:.0f} crops/s, step benchmark {step32['crops_per_s']:.0f} crops/s (batch 32, compiled)"
        res.add("pretrain_bundle_over_step", bundle / step32["crops_per_s"], "gpu", note, "train.json + gpu_cache.json")
    tune = finetune_rows(cfg.device, peak["gpu_bf16"])
    write_json_atomic({**{str(b): row for b, row in rows.items()}, "finetune_b8": tune}, rows_file)
    label, (eager, compiled) = "segmentation train.json: UNETR ViT-B, 96^3, bf16, batch 8, GPU", tune.values()
    res.add("finetune_b8_mfu", eager["mfu"], "gpu", f"compiled {compiled['mfu']:.1%}", label)
    res.add("finetune_b8_crops_per_s", eager["crops_per_s"], "gpu", f"compiled {compiled['crops_per_s']:.0f}", label)
    res.add("finetune_b8_compiled_speedup", eager["seconds"] / compiled["seconds"], "gpu", label=label)
    return rows

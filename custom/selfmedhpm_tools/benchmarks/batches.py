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

"""The pretraining step at paper scale by batch size, for GPU machines: seconds per step, crops per second, MFU
against the bf16 matmul peak measured in the same run, and peak memory, at batches 8, 32 and 64 (ViT-B/16, 96^3,
bf16). HPM is measured beside MAE run through the same trainer (:class:`SameCodeMAEStep`: uniform masks, no teacher
pass, no loss-prediction term) and MONAI's ``MaskedAutoEncoderViT`` (:class:`~.step.MAEStep`). Every batch's row is
written to ``rows_file`` as soon as it is measured, so a run cut off by a time limit keeps what it measured; a batch
that does not fit in memory is recorded as such and the next one is tried.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from selfmedhpm.ema import unwrap
from selfmedhpm.utils import write_json_atomic

from .common import Config, Results, count_flops, interleaved, log, median, phantom_crops
from .step import VIT_B, HPMStep, MAEStep

__all__ = ["BATCHES", "SameCodeMAEStep", "batch_rows", "run"]

BATCHES = (8, 32, 64)  # their MFU targets: targets.BATCH_MFU_TARGETS


class SameCodeMAEStep(HPMStep):
    """The HPM trainer's iteration as plain MAE: random masks (the teacher pass replaced by constant scores and a
    hard ratio of 0), no loss-prediction term and no EMA update; the loss predictor's head still runs, as it is part
    of the network."""

    def __init__(self, dims: dict, roi: int, images: torch.Tensor, device: str = "cpu", compile: bool = False) -> None:
        super().__init__(dims, roi, images, device, compile)
        self.trainer.final_hard_ratio = 0.0
        unwrap(self.trainer.loss_function).pred_weight = 0.0  # before any call: a compiled loss sees it as constant
        patches = self.network.num_patches
        self.trainer.teacher_scores = lambda images: torch.zeros(images.shape[0], patches, device=images.device)

    def step(self, precision: str = "fp32", teacher_precision: str = "fp32", monai_defaults: bool = False) -> None:
        self.trainer.inferer.precision = precision
        self.trainer.iteration(self.batch)


def _peak_memory_gb(fn: Callable[[], Any], device: str) -> float | None:
    if torch.device(device).type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 1e9


def batch_rows(
    device: str,
    peak_flops: float,
    rows_file: Path,
    batches: Sequence[int] = BATCHES,
    network: tuple[dict, int] = (VIT_B, 96),
    reps: int = 10,
) -> dict[int, dict[str, Any]]:
    """Measures one row per batch size (see the module) with ``network`` (widths, crop edge), 3 warm-ups and
    ``reps`` timed steps, and rewrites ``rows_file`` after each. On a GPU, HPM and the same-code MAE are also
    measured with the bundle's ``compile`` flag on (``hpm_compiled``, ``mae_same_code_compiled``; compiled in the
    warm-up, which is not timed).

    Returns:
        batch -> ``{"hpm" | "mae_same_code" | "monai_mae" (| "hpm_compiled" | "mae_same_code_compiled"):
        {"seconds", "crops_per_s", "gflop", "mfu", "peak_memory_gb"}}``, or ``{"error": ...}`` for a batch that did
        not fit.
    """
    on_gpu = torch.device(device).type == "cuda"
    low, (dims, roi) = "bf16" if on_gpu else "fp32", network
    rows: dict[int, dict[str, Any]] = {}
    for batch in batches:
        hpm = same = monai = steps = hpm_c = same_c = None
        try:
            images = phantom_crops(batch, roi, seed=3)
            hpm = HPMStep(dims, roi, images, device=device)
            same = SameCodeMAEStep(dims, roi, images, device=device)
            monai = MAEStep(dims, roi, images, device=device, dtype=torch.bfloat16 if low == "bf16" else torch.float32)
            steps = {
                "hpm": lambda: hpm.step(low, low),
                "mae_same_code": lambda: same.step(low),
                "monai_mae": monai.step,
            }
            if on_gpu:
                hpm_c = HPMStep(dims, roi, images, device=device, compile=True)
                same_c = SameCodeMAEStep(dims, roi, images, device=device, compile=True)
                steps.update(hpm_compiled=lambda: hpm_c.step(low, low), mae_same_code_compiled=lambda: same_c.step(low))
                for name in ("hpm_compiled", "mae_same_code_compiled"):  # compile outside the FLOP count and timing
                    steps[name]()
            flops = {name: count_flops(fn) for name, fn in steps.items()}
            memory = {name: _peak_memory_gb(fn, device) for name, fn in steps.items()}
            times = interleaved(steps, reps=reps, warmup=3, device=device)
            rows[batch] = {}
            for name in steps:
                seconds = median(times[name])
                rows[batch][name] = {
                    "seconds": seconds, "crops_per_s": batch / seconds, "gflop": flops[name] / 1e9,
                    "mfu": flops[name] / seconds / peak_flops, "peak_memory_gb": memory[name],
                }  # fmt: skip
            log(f"batch {batch}: " + ", ".join(f"{k} {v['mfu']:.1%} MFU" for k, v in rows[batch].items()))
        except torch.cuda.OutOfMemoryError as error:
            rows[batch] = {"error": f"out of memory: {str(error).splitlines()[0]}"}
            log(f"batch {batch}: out of memory")
        hpm = same = monai = steps = hpm_c = same_c = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        write_json_atomic({str(b): row for b, row in rows.items()}, rows_file)
    return rows


def finetune_rows(device: str, peak_flops: float, batch: int = 8, reps: int = 10, **overrides: Any) -> dict:
    """The segmentation bundle's training iteration as configured in ``train.json`` (paper-scale UNETR, 96^3; bf16
    autocast unless ``overrides`` say otherwise; ``files`` other config files) at ``batch``, eager and with its
    ``compile`` flag (compiled in the warm-up): seconds, crops/s, MFU."""
    from .precision import segment_trainer

    files = list(overrides.pop("files", ["train.json"]))
    overrides.setdefault("precision", "bf16")
    trainers = {
        mode: segment_trainer(files, device, batch, compile=mode == "compiled", **overrides)[0]
        for mode in ("eager", "compiled")
    }
    flops = count_flops(trainers["eager"].run)
    times = interleaved({mode: t.run for mode, t in trainers.items()}, reps=reps, warmup=3, device=device)
    rows = {}
    for mode in trainers:
        seconds = median(times[mode])
        rows[mode] = {"seconds": seconds, "crops_per_s": batch / seconds, "mfu": flops / seconds / peak_flops}
    return rows


def bundle_crops_per_s(
    device: str, workdir: Path, extra: Sequence[str] = (), quick: bool = False, **overrides
) -> float:
    """Crops per second of the pretraining bundle itself (``train.json`` + ``gpu_cache.json`` + ``extra``, compiled,
    with its data loading, EMA, logging and checkpoints; 4 epochs of batch 2 x 16 crops unless ``overrides`` say
    otherwise) on synthetic CTs (``quick``: the small set), over the epochs after the first (which caches and
    compiles), from its ``history.json``."""
    from .loader import make_dataset
    from .precision import train_pretraining

    dataset_dir, datalist = make_dataset(workdir, quick=quick)
    settings = {"epochs": 4, "batch_size": 2, "num_samples": 16, "compile": True, **overrides}
    history = train_pretraining(
        dataset_dir, workdir / "bundle_e2e", ("train.json", "gpu_cache.json", *extra), datalist=str(datalist),
        device=device, **settings,
    )[1:]  # fmt: skip
    crops = sum(r["iterations"] for r in history) * settings["batch_size"] * settings["num_samples"]
    return crops / sum(r["seconds"] for r in history)


def run(cfg: Config, res: Results, peaks: dict[str, dict]) -> dict[int, dict[str, Any]]:
    """The batch table on the GPU (``make bench``), its figures into ``res``; the rows also in
    ``WORKDIR/gpu_batches.json`` as they come."""
    rows_file = Path(cfg.workdir) / "gpu_batches.json"
    rows_file.parent.mkdir(parents=True, exist_ok=True)
    rows = batch_rows(cfg.device, peaks["gpu_bf16"]["flops_per_s"], rows_file, reps=max(cfg.reps, 10))
    for batch, row in rows.items():
        label = f"ViT-B/16, 96^3, bf16, batch {batch}, GPU"
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
    peak = peaks["gpu_bf16"]["flops_per_s"]
    step32 = rows.get(32, {}).get("hpm_compiled")
    if step32:
        bundle = bundle_crops_per_s(cfg.device, Path(cfg.workdir))
        note = f"bundle {bundle:.0f} crops/s, step benchmark {step32['crops_per_s']:.0f} crops/s (batch 32, compiled)"
        res.add("pretrain_bundle_over_step", bundle / step32["crops_per_s"], "gpu", note, "train.json + gpu_cache.json")
    tune = finetune_rows(cfg.device, peak)
    write_json_atomic({**{str(b): row for b, row in rows.items()}, "finetune_b8": tune}, rows_file)
    label = "segmentation train.json: UNETR ViT-B, 96^3, bf16, batch 8, GPU"
    eager, compiled = tune["eager"], tune["compiled"]
    res.add("finetune_b8_mfu", eager["mfu"], "gpu", f"compiled {compiled['mfu']:.1%}", label)
    res.add("finetune_b8_crops_per_s", eager["crops_per_s"], "gpu", f"compiled {compiled['crops_per_s']:.0f}", label)
    res.add("finetune_b8_compiled_speedup", eager["seconds"] / compiled["seconds"], "gpu", label=label)
    return rows

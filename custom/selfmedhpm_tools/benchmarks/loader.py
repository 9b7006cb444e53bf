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

"""Figure 3: training crops per second that the pretraining bundle's data pipeline delivers, against the crops per
second the training step consumes; knobs: loader workers, cache_rate, the device-resident ``gpu_cache.json`` variant.

The loader is the bundle's own ``train#dataloader`` built from ``train.json`` with ``monai.bundle.ConfigParser``
(CacheDataset of the deterministic transforms, random 96^3 crops and flips, the configured workers and batch), over
synthetic CTs from :mod:`selfmedhpm_tools.phantom`. Caching is timed separately; the crops per second are measured over
whole epochs, so the per-epoch start of the worker processes is included, as in training.
"""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.data import DataLoader

from .common import PRETRAIN_CONFIGS, Config, Results, log, median, sync

__all__ = ["make_dataset", "loader_parser", "crops_per_second", "run"]


def make_dataset(workdir: Path, quick: bool) -> tuple[Path, Path]:
    """Synthetic training CTs and a data list that repeats them to a BTCV-sized epoch (24 entries; 8 in quick
    mode; the loader caches each case once). Full mode: 8 cases of 512 x 512 in-plane (BTCV-like, 0.6-1 mm
    pixels); quick: 3 cases of 256 in-plane. Returns (dataset folder, data list path)."""
    from selfmedhpm_tools.phantom import generate_dataset

    cases, size, entries = (3, "medium", 8) if quick else (8, "full", 24)
    out = workdir / f"loader_{size}_{cases}"
    if not (out / "dataset_0.json").is_file():
        generate_dataset(out, cases=cases, seed=7, val_fraction=0.0, size=size, overwrite=True, verbose=False)
    info = json.loads((out / "dataset_0.json").read_text())
    every = info["training"] + info["validation"]  # generate_dataset keeps one case for validation
    info["training"] = [every[i % len(every)] for i in range(entries)]
    datalist = out / f"datalist_{entries}.json"
    datalist.write_text(json.dumps(info, indent=1))
    return out, datalist


def loader_parser(dataset_dir: Path, datalist: Path, extra: list[str] = (), **overrides: Any) -> ConfigParser:
    """The pretraining bundle's ``train.json`` (plus ``extra`` override files) on the synthetic data set."""
    parser = ConfigParser()
    parser.read_config([str(PRETRAIN_CONFIGS / "train.json")] + [str(PRETRAIN_CONFIGS / f) for f in extra])
    parser.update({"dataset_dir": str(dataset_dir), "datalist": str(datalist), **overrides})
    parser["train#dataset#progress"] = False
    # the data list repeats cases: cache each case once; the random part still runs per entry
    parser["train#dataset#hash_as_key"] = True
    return parser


def crops_per_second(
    loader: Any, epochs: int, device: str | None = None, max_batches: int | None = None
) -> dict[str, float]:
    """Iterates ``loader`` for ``epochs`` whole epochs (or ``max_batches`` batches each), touching each batch like a
    trainer's ``.to(device)``, and returns crops per second over all epochs and the per-epoch times."""
    crops, per_epoch = 0, []
    for _ in range(epochs):
        start = time.perf_counter()
        for i, batch in enumerate(loader):
            image = batch["image"]
            if device:
                image = image.to(device, non_blocking=True)
            crops += image.shape[0]
            if max_batches and i + 1 >= max_batches:
                break
        sync(device)
        per_epoch.append(time.perf_counter() - start)
    return {"crops_per_s": crops / sum(per_epoch), "crops": crops, "epoch_s": per_epoch}


def _step_crops_per_s(res: Results, column: str) -> tuple[float | None, str]:
    """Crops per second the HPM step consumes, from the step figures of this run (batch-2 median)."""
    step = res.details.get("step", {}).get(column)
    if not step:
        return None, ""
    med = step["median_s"]
    if column == "cpu":
        key = (
            "hpm_fp32"
            if step["headline_teacher_precision"] == "fp32"
            else (f"hpm_teacher_{step['headline_teacher_precision']}")
        )
    else:
        key = "hpm_bf16"
    return 2 / med[key], key


def run(cfg: Config, res: Results) -> None:
    """Figure 3 and the loader knobs into ``res``."""
    workdir = Path(cfg.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    log("loader: writing synthetic CTs")
    dataset_dir, datalist = make_dataset(workdir, cfg.quick)
    epochs = 2 if cfg.quick else 3
    detail: dict[str, Any] = {"data": str(datalist), "epochs": epochs}

    parser = loader_parser(dataset_dir, datalist, device="cpu")
    start = time.perf_counter()
    dataset = parser.get_parsed_content("train#dataset")
    detail["cache_s"] = time.perf_counter() - start
    loader = parser.get_parsed_content("train#dataloader")
    workers, batch = parser.get_parsed_content("num_workers"), parser.get_parsed_content("batch_size")
    crops_per_item = parser.get_parsed_content("num_samples")
    unique = len({str(d["image"]) for d in dataset.data})
    log(
        f"loader: cached {unique} volumes ({len(dataset)} entries) in {detail['cache_s']:.1f} s; "
        f"{workers} workers, batch {batch} x {crops_per_item} crops"
    )

    # the configured loader vs no workers (the knob), interleaved epochs
    no_workers = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=0)
    loaders = {f"workers_{workers}": loader, "workers_0": no_workers}
    if workers:
        loaders["persistent"] = DataLoader(
            dataset, batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=True
        )
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    for name in loaders:  # warm-up epoch each
        crops_per_second(loaders[name], 1)
    for r in range(epochs):
        shift = r % len(loaders)
        for name in list(loaders)[shift:] + list(loaders)[:shift]:
            rates[name].append(crops_per_second(loaders[name], 1)["crops_per_s"])
    rate = median(rates[f"workers_{workers}"])
    loaders.pop("persistent", None)  # ends its worker processes
    detail["crops_per_s"] = {k: median(v) for k, v in rates.items()}
    detail["crops_per_s_all"] = rates

    step_rate, step_key = _step_crops_per_s(res, "cpu")
    label = f"train.json loader, {workers} workers, batch {batch} x {crops_per_item} crops of 96^3, CPU"
    res.add("loader_crops_per_s", rate, note=f"{unique} cached volumes, {len(dataset)} entries per epoch", label=label)
    if step_rate:
        note = f"step consumes {step_rate:.2f} crops/s ({step_key}, ViT-B, batch 2); loader alone on the CPU, which "
        res.add("loader_over_step", rate / step_rate, "cpu", note + "training shares", label)
    res.add("loader_workers_0_crops_per_s", detail["crops_per_s"]["workers_0"], label="same data, num_workers 0")
    if "persistent" in rates:
        persistent = f"same data, {workers} workers, persistent_workers=True"
        res.add("loader_persistent_workers_crops_per_s", detail["crops_per_s"]["persistent"], label=persistent)

    # gpu_cache.json on this machine's CPU: ThreadDataLoader, no worker processes, crops on the cache's device
    thread_parser = loader_parser(dataset_dir, datalist, extra=["gpu_cache.json"], device="cpu")
    thread_dataset = thread_parser.get_parsed_content("train#dataset")
    thread_loader = thread_parser.get_parsed_content("train#dataloader")
    crops_per_second(thread_loader, 1)
    detail["thread_loader_crops_per_s"] = median(
        [crops_per_second(thread_loader, 1)["crops_per_s"] for _ in range(epochs)]
    )
    thread_label = "gpu_cache.json with device cpu (ThreadDataLoader, no workers)"
    res.add("loader_thread_cpu_crops_per_s", detail["thread_loader_crops_per_s"], label=thread_label)
    del thread_dataset, thread_loader

    # cache_rate 0: every item re-runs load + resample + scaling (one epoch is enough to see it)
    nocache = loader_parser(dataset_dir, datalist, device="cpu", cache_rate=0.0)
    nocache_loader = nocache.get_parsed_content("train#dataloader")
    detail["cache_rate_0_crops_per_s"] = crops_per_second(nocache_loader, 1, max_batches=2)["crops_per_s"]
    nocache_label = f"cache_rate 0, {workers} workers (first 2 batches)"
    res.add("loader_cache_rate_0_crops_per_s", detail["cache_rate_0_crops_per_s"], label=nocache_label)
    del nocache_loader, dataset, loader, no_workers
    gc.collect()

    if cfg.device:
        gpu_parser = loader_parser(dataset_dir, datalist, extra=["gpu_cache.json"], device=cfg.device)
        start = time.perf_counter()
        gpu_parser.get_parsed_content("train#dataset")
        detail["gpu_cache_s"] = time.perf_counter() - start
        gpu_loader = gpu_parser.get_parsed_content("train#dataloader")
        crops_per_second(gpu_loader, 1, cfg.device)
        gpu_rate = median([crops_per_second(gpu_loader, 1, cfg.device)["crops_per_s"] for _ in range(epochs)])
        cpu_to_gpu = median([crops_per_second(loaders[f"workers_{workers}"], 1, cfg.device)["crops_per_s"]])
        step_rate, step_key = _step_crops_per_s(res, "gpu")
        label = "gpu_cache.json: volumes cached on the GPU, ThreadDataLoader, crops and flips on the GPU"
        res.add("loader_crops_per_s", gpu_rate, "gpu", label=label)
        if step_rate:
            note = f"step consumes {step_rate:.1f} crops/s ({step_key}, batch 2); train.json loader to GPU: "
            res.add("loader_over_step", gpu_rate / step_rate, "gpu", note + f"{cpu_to_gpu:.1f} crops/s", label)
        detail["gpu"] = {"gpu_cache_crops_per_s": gpu_rate, "cpu_workers_to_gpu_crops_per_s": cpu_to_gpu}
        del gpu_loader
        gc.collect()
        torch.cuda.empty_cache()
    res.details["loader"] = detail

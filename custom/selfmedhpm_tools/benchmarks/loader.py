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

"""Training crops per second that the pretraining bundle's data pipeline delivers (its own ``train#dataloader`` from
``train.json``: cached deterministic transforms, random 96^3 crops and flips, the configured workers and batch) over
synthetic CTs, against the crops per second the step consumes; knobs: workers, ``cache_rate``, ``gpu_cache.json``.
Caching is timed apart; rates are over whole epochs, worker start-up included, as in training.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from monai.data import DataLoader

from .common import PRETRAIN_CONFIGS, Config, Results, bundle_parser, interleaved, log, median, sync
from .step import BATCH


def make_dataset(workdir: Path, quick: bool) -> tuple[Path, Path]:
    """Synthetic CTs (quick: 3 of 256 in-plane; full: 8 of 512, BTCV-like) and a data list repeating them to an
    epoch of 8 (quick) or 24 entries. Returns (dataset folder, data list path)."""
    from selfmedhpm_tools.phantom import generate_dataset

    cases, size, entries = (3, "medium", 8) if quick else (8, "full", 24)
    out = workdir / f"loader_{size}_{cases}"
    if not (out / "dataset_0.json").is_file():
        generate_dataset(out, cases=cases, seed=7, val_fraction=0.0, size=size, overwrite=True, verbose=False)
    info = json.loads((out / "dataset_0.json").read_text())
    every = info["training"] + info["validation"]
    info["training"] = [every[i % len(every)] for i in range(entries)]
    datalist = out / f"datalist_{entries}.json"
    datalist.write_text(json.dumps(info, indent=1))
    return out, datalist


def loader_parser(dataset_dir: Path, datalist: Path, extra: list[str] = (), **overrides: Any):
    """The pretraining ``train.json`` (plus ``extra`` files) on the synthetic set, each repeated case cached once."""
    return bundle_parser(
        PRETRAIN_CONFIGS,
        ["train.json", *extra],
        dataset_dir=str(dataset_dir),
        datalist=str(datalist),
        **{"train#dataset#progress": False, "train#dataset#hash_as_key": True, **overrides},
    )


def crops_per_second(loader: Any, device: str | None = None, max_batches: int | None = None) -> float:
    """Crops per second of one epoch of ``loader`` (or its first ``max_batches``), each batch moved to ``device``."""
    crops, start = 0, time.perf_counter()
    for i, batch in enumerate(loader):
        crops += batch["image"].to(device or "cpu", non_blocking=True).shape[0]
        if max_batches and i + 1 >= max_batches:
            break
    sync(device)
    return crops / (time.perf_counter() - start)


def run(cfg: Config, res: Results, peak: dict[str, float]) -> dict[str, Any]:
    """The loader figures and knobs into ``res``."""
    log("loader: writing synthetic CTs")
    dataset_dir, datalist = make_dataset(Path(cfg.workdir), cfg.quick)
    epochs = 2 if cfg.quick else 3
    detail = {"data": str(datalist), "epochs": epochs}
    parser = loader_parser(dataset_dir, datalist, device="cpu")
    start = time.perf_counter()
    dataset = parser.get_parsed_content("train#dataset")
    detail["cache_s"] = time.perf_counter() - start
    workers, batch, per_item = (parser.get_parsed_content(k) for k in ("num_workers", "batch_size", "num_samples"))
    unique = len({str(d["image"]) for d in dataset.data})
    detail["workers"] = workers
    log(f"loader: cached {unique} volumes in {detail['cache_s']:.1f} s; {workers} workers, batch {batch}x{per_item}")
    loaders = {"configured": parser.get_parsed_content("train#dataloader")}
    loaders["workers_0"] = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=0)
    if workers:
        loaders["persistent"] = DataLoader(
            dataset, batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=True
        )
    rates: dict[str, list[float]] = {name: [] for name in loaders}  # a warm-up epoch each, then rounds of epochs
    interleaved({n: lambda n=n: rates[n].append(crops_per_second(loaders[n])) for n in loaders}, reps=epochs)
    loaders.pop("persistent", None)  # ends its workers
    cps = detail["crops_per_s"] = {k: median(v[1:]) for k, v in rates.items()}
    label = f"train.json loader, {workers} workers, batch {batch} x {per_item} crops of 96^3, CPU"
    res.add("loader_crops_per_s", cps["configured"], note=f"{unique} cached volumes", label=label)
    step = res.details.get("step", {}).get("cpu")
    if step:
        step_rate = BATCH / step["headline_s"]
        teacher = step["headline_teacher_precision"]
        note = (
            f"step consumes {step_rate:.2f} crops/s (ViT-B, batch {BATCH}, {teacher} teacher); loader alone on the CPU"
        )
        res.add("loader_over_step", cps["configured"] / step_rate, note=note, label=label)
    res.add("loader_workers_0_crops_per_s", cps["workers_0"], label="same data, num_workers 0")
    if "persistent" in cps:
        res.add("loader_persistent_workers_crops_per_s", cps["persistent"], label="same, persistent_workers=True")

    # gpu_cache.json on the CPU: ThreadDataLoader, no workers; cache_rate 0: every item re-runs the pre-processing
    thread = loader_parser(dataset_dir, datalist, ["gpu_cache.json"], device="cpu").get_parsed_content(
        "train#dataloader"
    )
    crops_per_second(thread)
    detail["thread_loader_crops_per_s"] = median([crops_per_second(thread) for _ in range(epochs)])
    res.add("loader_thread_cpu_crops_per_s", detail["thread_loader_crops_per_s"], label="gpu_cache.json on the CPU")
    nocache = loader_parser(dataset_dir, datalist, device="cpu", cache_rate=0.0).get_parsed_content("train#dataloader")
    detail["cache_rate_0_crops_per_s"] = crops_per_second(nocache, max_batches=2)
    res.add("loader_cache_rate_0_crops_per_s", detail["cache_rate_0_crops_per_s"], label="cache_rate 0, 2 batches")
    if cfg.device:
        gpu = loader_parser(dataset_dir, datalist, ["gpu_cache.json"], device=cfg.device)
        gpu_loader = gpu.get_parsed_content("train#dataloader")
        crops_per_second(gpu_loader, cfg.device)
        rate = median([crops_per_second(gpu_loader, cfg.device) for _ in range(epochs)])
        to_gpu = crops_per_second(loaders["configured"], cfg.device)
        label = "gpu_cache.json: volumes cached on the GPU, ThreadDataLoader, crops and flips on the GPU"
        res.add("loader_crops_per_s", rate, "gpu", f"train.json loader to the GPU: {to_gpu:.1f} crops/s", label)
        step = res.details.get("batches", {}).get(BATCH, {}).get("hpm")  # the paper-scale step at batch 2, bf16
        if step:
            note = f"step consumes {step['crops_per_s']:.1f} crops/s (ViT-B, batch {BATCH}, bf16)"
            res.add("loader_over_step", rate / step["crops_per_s"], "gpu", note, label)
        detail["gpu"] = {"gpu_cache_crops_per_s": rate, "cpu_workers_to_gpu_crops_per_s": to_gpu}
    return detail

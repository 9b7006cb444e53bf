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

"""bf16 autocast on the CPU as an option of both bundles: its speed-up and its effect on training.

* Pretraining: the CPU preset (``train.json`` + ``train_cpu.json``) for a few epochs on synthetic CTs in fp32 and in
  bf16, same seed; their ``rec_loss`` curves compared. The trained fp32 teacher then gives the hard-patch overlap of
  the reduced-precision teacher passes on a teacher that has learned something.
* Segmentation: one training iteration of the bundle's ``SupervisedTrainer`` in fp32 and bf16, interleaved.

Only the precisions this CPU runs natively are measured (:func:`~.common.native_precisions`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .common import (
    PRETRAIN_CONFIGS,
    SEGMENT_CONFIGS,
    Config,
    Results,
    bundle_parser,
    log,
    median,
    medians,
    phantom_crops,
)


def train_pretraining(data: Path, out: Path, configs: Sequence[str] = ("train.json", "train_cpu.json"), **overrides):
    """Runs the pretraining bundle (``configs`` of its folder, plus ``overrides``) in-process on the data set
    ``data``, as the demo does (:func:`selfmedhpm_tools.demo.run_bundle`, untracked); returns its ``history.json``."""
    from selfmedhpm_tools.demo import run_bundle

    settings = {"log_interval": 10**6, "train#dataset#progress": False, **overrides}
    files = [str(PRETRAIN_CONFIGS / name) for name in configs]
    run_bundle(files, None, "", dataset_dir=str(data), output_dir=str(out), **settings)
    return json.loads((out / "history.json").read_text())


def pretrain_curves(cfg: Config, workdir: Path) -> dict[str, Any]:
    """``rec_loss`` per epoch of the pretraining CPU preset in fp32 (and bf16); hard-patch overlap of the reduced
    teacher passes with the trained fp32 teacher on 32 phantom crops of 64^3."""
    from selfmedhpm.checkpoint import load_weights
    from selfmedhpm.masking import num_masked
    from selfmedhpm.networks import HPMMaskedAutoEncoder
    from selfmedhpm.quant import Int8Teacher
    from selfmedhpm_tools.phantom import generate_dataset

    from .step import CPU_PRESET, HARD_RATIO, MASK_RATIO, hard_set_overlap

    cases, epochs = (3, 8) if cfg.quick else (6, 60)
    data = workdir / f"pretrain_data_{cases}"
    if not (data / "dataset_0.json").is_file():
        generate_dataset(data, cases=cases, seed=0, shape=(96, 96, 48), verbose=False, overwrite=True)
    rec, secs = {}, {}
    for p in [p for p in ("fp32", "bf16") if p in cfg.precisions]:
        log(f"precision: pretraining CPU preset, {epochs} epochs, {p}")
        history = train_pretraining(
            data,
            workdir / f"pretrain_{p}",
            epochs=epochs,
            precision=p,
            device="cpu",
            pixdim=[3.0] * 3,
            num_samples=2,
            save_interval=epochs,
        )
        rec[p], secs[p] = np.array([r["rec_loss"] for r in history]), median([r["seconds"] for r in history[1:]])
    net = HPMMaskedAutoEncoder(img_size=64, **CPU_PRESET).eval()
    net.load_state_dict(load_weights(workdir / "pretrain_fp32" / "teacher.pt"))
    crops, n_hard = phantom_crops(32, 64, seed=5), int(num_masked(net.num_patches, MASK_RATIO) * HARD_RATIO)
    with torch.inference_mode():
        scores = {"fp32": net.predict_patch_loss(crops)}
        if "bf16" in cfg.precisions:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                scores["bf16"] = net.predict_patch_loss(crops).float()
    if "int8" in cfg.precisions:
        scores["int8"] = Int8Teacher(net).predict_patch_loss(crops)
    out = {
        "epochs": epochs,
        "cases": cases,
        "rec_loss": {p: v.tolist() for p, v in rec.items()},
        "epoch_s": secs,
        "fall": {p: float(v[-1] / v[0]) for p, v in rec.items()},
        "trained_teacher_overlap": {
            p: hard_set_overlap(scores["fp32"], s, n_hard) for p, s in scores.items() if p != "fp32"
        },
    }
    if "bf16" in rec:
        gap = np.abs(rec["bf16"] - rec["fp32"]) / rec["fp32"]
        out.update(
            relative_gap_max=float(gap.max()), relative_gap_last_third=float(gap[-max(1, len(gap) // 3) :].mean())
        )
    return out


def segment_trainer(files: list[str], device: str = "cpu", batch_size: int = 2, **overrides: Any):
    """The segmentation bundle's ``SupervisedTrainer`` from ``files`` (plus ``overrides``) on one fixed batch of
    phantom crops, without handlers or metrics: each ``trainer.run()`` is one iteration. Returns (trainer, batch)."""
    parser = bundle_parser(SEGMENT_CONFIGS, files, device=device, epochs=1, **overrides)
    roi, classes = parser.get_parsed_content("roi_size"), parser.get_parsed_content("num_classes")
    torch.manual_seed(0)
    image = phantom_crops(batch_size, roi[0], seed=4)
    label = (image * (classes - 1)).round().long().clamp(0, classes - 1)
    batch = {"image": image.to(device), "label": label.to(device)}
    parser.update(
        {
            "train#trainer#train_data_loader": [batch],
            "train#trainer#train_handlers": [],
            "train#trainer#key_train_metric": None,
            "lr_scheduler#warmup_steps": 10,
            "lr_scheduler#t_total": 1000,
        }
    )
    return parser.get_parsed_content("train#trainer"), batch


def run(cfg: Config, res: Results, peak: dict[str, float]) -> dict[str, Any]:
    """The bf16 option's figures and the trained teacher's overlaps into ``res``."""
    if set(cfg.precisions) == {"fp32"}:
        log("precision: skipped, this CPU has no native bf16 or int8 (--all-precisions measures them emulated)")
        return {}
    workdir = Path(cfg.workdir).resolve() / "precision"
    workdir.mkdir(parents=True, exist_ok=True)
    curves = pretrain_curves(cfg, workdir)
    setting = f"pretraining CPU preset, {curves['epochs']} epochs, {curves['cases']} synthetic CTs, same seed"
    for p, overlap in curves["trained_teacher_overlap"].items():
        res.add(
            f"teacher_{p}_hard_set_overlap_trained",
            overlap["mean"],
            label=f"CPU-preset teacher, {setting}",
            note=f"32 phantom crops of 64^3; min {overlap['min']:.3f}, chance {overlap['chance']:.3f}",
        )
    seg: dict[str, Any] = {}
    if "bf16" in cfg.precisions:
        note = f"mean |bf16 - fp32| / fp32 over the last third of the epochs (max {curves['relative_gap_max']:.3f})"
        res.add("bf16_rec_loss_gap", curves["relative_gap_last_third"], note=note, label=setting)
        speedup = curves["epoch_s"]["fp32"] / curves["epoch_s"]["bf16"]
        res.add("bf16_pretrain_epoch_speedup", speedup, label=f"{setting}; epoch time fp32 / bf16 (overhead-bound)")
        log("precision: segmentation training iteration fp32 vs bf16")
        files = ["train.json", "train_cpu.json"] if cfg.quick else ["train.json"]
        trainer, batch = segment_trainer(files)

        def iteration(precision: str) -> None:
            trainer.inferer.precision = precision
            trainer.run()

        seg = medians({p: lambda p=p: iteration(p) for p in ("fp32", "bf16")}, reps=cfg.reps, warmup=cfg.warmup)
        model = "train_cpu.json widths" if cfg.quick else "paper-scale UNETR"
        label = f"segmentation train iteration, {model}, {batch['image'].shape[2]}^3, batch 2, CPU"
        note = f"fp32 {seg['fp32']:.2f} s, bf16 {seg['bf16']:.2f} s"
        res.add("bf16_segment_step_speedup", seg["fp32"] / seg["bf16"], note=note, label=label)
    return {"pretrain": curves, "segment_s": seg}

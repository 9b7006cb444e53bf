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

* Pretraining: the bundle's CPU preset (``train.json`` + ``train_cpu.json``) trained for a few epochs on synthetic
  CTs with ``precision`` fp32 and bf16 (teacher likewise), same seed; the per-epoch ``rec_loss`` curves of the two
  runs are compared. The trained fp32 teacher then gives the hard-patch overlap of bf16 and int8 teacher passes on a
  teacher that has learned something (the step figures use a randomly initialised ViT-B).
* Segmentation: one training iteration of the bundle's ``SupervisedTrainer`` (``train.json``; its ``precision`` key
  drives ``AutocastInferer``) in fp32 and bf16, interleaved.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from .common import PRETRAIN_CONFIGS, SEGMENT_CONFIGS, Config, Results, interleaved, log, median, phantom_crops

__all__ = ["train_pretraining", "pretrain_curves", "segment_trainer", "segment_speed", "run"]


def train_pretraining(
    data: Path, out: Path, configs: Sequence[str] = ("train.json", "train_cpu.json"), **overrides: Any
) -> list[dict]:
    """Runs the pretraining bundle (``configs`` of its folder, plus ``overrides``) in-process on the data set
    ``data`` and returns its ``history.json``."""
    workflow = ConfigWorkflow(
        config_file=[str(PRETRAIN_CONFIGS / name) for name in configs],
        meta_file=str(PRETRAIN_CONFIGS / "metadata.json"),
        logging_file=str(PRETRAIN_CONFIGS / "logging.conf"),
        workflow_type="train",
        dataset_dir=str(data),
        output_dir=str(out),
        **{"log_interval": 10**6, "train#dataset#progress": False, **overrides},
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    return json.loads((out / "history.json").read_text())


def pretrain_curves(cfg: Config, workdir: Path) -> dict[str, Any]:
    """fp32 vs bf16 ``rec_loss`` curves of the pretraining CPU preset; hard-patch overlap on the trained teacher."""
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
    histories = {}
    for precision in ("fp32", "bf16"):
        log(f"precision: pretraining CPU preset, {epochs} epochs, {precision}")
        histories[precision] = train_pretraining(
            data, workdir / f"pretrain_{precision}", epochs=epochs, precision=precision, device="cpu",
            pixdim=[3.0, 3.0, 3.0], num_samples=2, save_interval=epochs,
        )  # fmt: skip
    rec = {p: np.array([r["rec_loss"] for r in h]) for p, h in histories.items()}
    secs = {p: [r["seconds"] for r in h[1:]] for p, h in histories.items()}  # first epoch: warm-up
    gap = np.abs(rec["bf16"] - rec["fp32"]) / rec["fp32"]
    tail = max(1, len(gap) // 3)

    # hard-patch overlap on the trained fp32 teacher (64^3 crops, 64 patches)
    net = HPMMaskedAutoEncoder(img_size=64, **CPU_PRESET).eval()
    net.load_state_dict(load_weights(workdir / "pretrain_fp32" / "teacher.pt"))
    crops = phantom_crops(32, 64, seed=5)
    with torch.inference_mode():
        ref = net.predict_patch_loss(crops)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = net.predict_patch_loss(crops).float()
    int8 = Int8Teacher(net).predict_patch_loss(crops)
    n_hard = int(num_masked(net.num_patches, MASK_RATIO) * HARD_RATIO)
    return {
        "epochs": epochs,
        "cases": cases,
        "rec_loss": {p: v.tolist() for p, v in rec.items()},
        "relative_gap_max": float(gap.max()),
        "relative_gap_last_third": float(gap[-tail:].mean()),
        "epoch_s": {p: median(v) for p, v in secs.items()},
        "fall": {p: float(v[-1] / v[0]) for p, v in rec.items()},
        "trained_teacher_overlap": {
            "bf16": hard_set_overlap(ref, bf16, n_hard),
            "int8": hard_set_overlap(ref, int8, n_hard),
        },
    }


def segment_trainer(
    files: list[str], device: str = "cpu", batch_size: int = 2, **overrides: Any
) -> tuple[Any, dict[str, torch.Tensor]]:
    """The segmentation bundle's ``SupervisedTrainer`` from ``files`` (plus ``overrides``) on one fixed batch of
    phantom crops, without handlers or metrics: each ``trainer.run()`` is one training iteration."""
    parser = ConfigParser()
    parser.read_config([str(SEGMENT_CONFIGS / f) for f in files])
    parser.update({"device": device, "epochs": 1, **overrides})
    roi = parser.get_parsed_content("roi_size")
    torch.manual_seed(0)
    num_classes = parser.get_parsed_content("num_classes")
    image = phantom_crops(batch_size, roi[0], seed=4)
    label = (image * (num_classes - 1)).round().long().clamp(0, num_classes - 1)
    batch = {"image": image.to(device), "label": label.to(device)}
    parser["train#trainer#train_data_loader"] = [batch]
    parser["train#trainer#train_handlers"] = []
    parser["train#trainer#key_train_metric"] = None
    parser["lr_scheduler#warmup_steps"], parser["lr_scheduler#t_total"] = 10, 1000
    return parser.get_parsed_content("train#trainer"), batch


def segment_speed(cfg: Config) -> dict[str, Any]:
    """Seconds of one segmentation training iteration (the bundle's trainer) in fp32 and bf16 autocast."""
    files = ["train.json", "train_cpu.json"] if cfg.quick else ["train.json"]
    trainer, batch = segment_trainer(files)
    roi, batch_size = list(batch["image"].shape[2:]), batch["image"].shape[0]
    inferer = trainer.inferer
    losses: dict[str, list[float]] = {"fp32": [], "bf16": []}

    def iteration(precision: str) -> None:
        inferer.precision = precision
        trainer.run()
        output = trainer.state.output
        output = output[0] if isinstance(output, list) else output
        losses[precision].append(float(output["loss"]))

    times = interleaved({p: (lambda p=p: iteration(p)) for p in ("fp32", "bf16")}, reps=cfg.reps, warmup=cfg.warmup)
    return {
        "model": "train_cpu.json widths" if cfg.quick else "paper-scale UNETR",
        "roi": roi,
        "batch": batch_size,
        "median_s": {k: median(v) for k, v in times.items()},
        "times_s": times,
        "losses_finite": all(np.isfinite(v).all() for v in losses.values()),
    }


def run(cfg: Config, res: Results) -> None:
    """bf16 option figures into ``res``."""
    workdir = Path(cfg.workdir).resolve() / "precision"
    workdir.mkdir(parents=True, exist_ok=True)
    curves = pretrain_curves(cfg, workdir)
    res.add(
        "bf16_rec_loss_gap",
        curves["relative_gap_last_third"],
        label=f"pretraining CPU preset, {curves['epochs']} epochs, {curves['cases']} synthetic CTs, same seed",
        note=f"mean |bf16 - fp32| / fp32 of rec_loss over the last third of the epochs (max over all "
        f"{curves['relative_gap_max']:.3f}); rec_loss last/first fp32 {curves['fall']['fp32']:.2f}, "
        f"bf16 {curves['fall']['bf16']:.2f}",
    )
    res.add(
        "bf16_pretrain_epoch_speedup",
        curves["epoch_s"]["fp32"] / curves["epoch_s"]["bf16"],
        label="pretraining CPU preset, epoch time fp32 / bf16 (tiny model: overhead-bound)",
    )
    for p in ("bf16", "int8"):
        overlap = curves["trained_teacher_overlap"][p]
        res.add(
            f"teacher_{p}_hard_set_overlap_trained",
            overlap["mean"],
            label=f"CPU-preset teacher after {curves['epochs']} epochs, 32 phantom crops of 64^3",
            note=f"min {overlap['min']:.3f}, chance {overlap['chance']:.3f}",
        )
    log("precision: segmentation training iteration fp32 vs bf16")
    seg = segment_speed(cfg)
    res.add(
        "bf16_segment_step_speedup",
        seg["median_s"]["fp32"] / seg["median_s"]["bf16"],
        label=f"segmentation train iteration, {seg['model']}, {seg['roi'][0]}^3, batch {seg['batch']}, CPU",
        note=f"fp32 {seg['median_s']['fp32']:.2f} s, bf16 {seg['median_s']['bf16']:.2f} s; "
        f"losses finite: {seg['losses_finite']}",
    )
    res.details["precision"] = {"pretrain": curves, "segment": seg}

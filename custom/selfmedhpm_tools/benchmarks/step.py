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

"""Figures 1, 2 and 5b: one HPM pretraining iteration against one iteration of MONAI's ``MaskedAutoEncoderViT``.

The HPM iteration runs through the real code path: ``HPMTrainer._iteration`` (teacher pass, hard-patch mask, student
forward, ``HPMLoss``, backward, AdamW step) followed by ``EMATeacher.update``, as the trainer's handler does. The MAE
iteration is MONAI's network with the same encoder/decoder widths, crop, batch and mask ratio, the same per-patch
normalised MSE on masked patches, and the same AdamW config (parameter groups, ``fused=True``). Both sides also run
with MONAI/torch defaults instead (``optim_set_to_none=False``, non-fused AdamW) for comparison.
"""

from __future__ import annotations

import functools
import gc
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.networks.nets import MaskedAutoEncoderViT
from selfmedhpm.ema import EMATeacher, unwrap
from selfmedhpm.engine import HPMTrainer
from selfmedhpm.losses import patch_targets, per_patch_loss
from selfmedhpm.masking import num_masked
from selfmedhpm.networks import HPMMaskedAutoEncoder
from selfmedhpm.quant import default_teacher_precision

from .common import (
    PRETRAIN_CONFIGS,
    Config,
    Results,
    count_flops,
    fit_exponent,
    interleaved,
    log,
    matmul_peak,
    median,
    phantom_crops,
)

__all__ = ["VIT_B", "CPU_PRESET", "HPMStep", "MAEStep", "hard_set_overlap", "unfused_like", "run"]

NETWORK_KEYS = ("hidden_size", "mlp_dim", "num_heads", "decoder_hidden_size", "decoder_mlp_dim", "decoder_num_layers",
                "decoder_num_heads")  # fmt: skip


def network_sizes(*configs: str) -> dict[str, int]:
    """The widths of the pretraining bundle's network in ``configs`` (merged in order), so the benchmarks measure
    the bundle's presets as they are: ``network_sizes("train.json")`` is ViT-B, ``+ "train_cpu.json"`` the CPU one."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(PRETRAIN_CONFIGS / name) for name in configs])
    return {key: int(parser[key]) for key in NETWORK_KEYS}


VIT_B = network_sizes("train.json")
CPU_PRESET = network_sizes("train.json", "train_cpu.json")
MASK_RATIO, HARD_RATIO, BATCH = 0.75, 0.5, 2


def bundle_parser(dims: dict, roi: int, device: str, config: str = "train.json") -> ConfigParser:
    """The pretraining bundle's config (``train.json``) with the network widths, crop and device overridden."""
    parser = ConfigParser()
    parser.read_config(str(PRETRAIN_CONFIGS / config))
    parser.update({"device": device, "roi_size": [roi] * 3, **dims})
    return parser


class HPMStep:
    """One HPM training iteration of the pretraining bundle as configured in its ``train.json``: the network, EMA
    teacher, loss, AdamW (with its parameter groups) and ``HPMTrainer`` are instantiated from the config with
    ``monai.bundle.ConfigParser``; only the data loader (one fixed batch) and the handlers (none: no checkpoints or
    logs) are replaced. The int8 teacher copy is not re-quantised inside :meth:`step` (the trainer's iteration counter
    is held off the refresh schedule); the benchmark times ``refresh`` alone and adds it amortised.

    Args:
        dims: network widths (:data:`VIT_B` or :data:`CPU_PRESET`).
        roi: crop edge.
        images: ``[N, 1, roi, roi, roi]`` crops (the batch).
        device: device.
        compile: the bundle's ``compile`` flag (``torch.compile`` of the student, loss and teacher pass).
    """

    def __init__(self, dims: dict, roi: int, images: torch.Tensor, device: str = "cpu", compile: bool = False) -> None:
        self.device = torch.device(device)
        torch.manual_seed(0)
        self.images = images.to(self.device)
        self.batch = {"image": self.images}
        parser = bundle_parser(dims, roi, device)
        parser["compile"] = compile
        parser["train#trainer#train_data_loader"] = [self.batch]
        parser["train#trainer#train_handlers"] = []
        parser["lr_scheduler#warmup_steps"], parser["lr_scheduler#t_total"] = 10, 1000
        self.trainer: HPMTrainer = parser.get_parsed_content("train#trainer")
        self.network: HPMMaskedAutoEncoder = unwrap(self.trainer.network)
        self.teacher: EMATeacher = self.trainer.teacher
        self.optimizer = self.trainer.optimizer
        self.trainer.state.epoch = 1  # last epoch: alpha_e = alpha_T, the hard-patch share at its highest
        self.trainer.state.max_epochs = 1
        # iteration 2 of a long epoch: off the int8 re-quantisation schedule (it refreshes at iterations 1, 11, ...)
        self.trainer.state.iteration, self.trainer.state.epoch_length = 2, 1000
        self.trainer.mask_ratio, self.trainer.final_hard_ratio = MASK_RATIO, HARD_RATIO

    @functools.cached_property
    def default_optimizer(self) -> torch.optim.AdamW:
        """The configured AdamW with torch's default implementation (``fused=False``; built on first use, own state)."""
        return unfused_like(self.optimizer)

    def step(self, precision: str = "fp32", teacher_precision: str = "fp32", monai_defaults: bool = False) -> None:
        """``HPMTrainer._iteration`` then the EMA update (what the trainer's ITERATION_COMPLETED handler runs).
        ``monai_defaults``: with ``optim_set_to_none=False`` (MONAI's default: zero-filled gradients) and a non-fused
        AdamW, instead of the configured ``optim_set_to_none=True`` and ``fused=True``."""
        self.trainer.inferer.precision, self.trainer.teacher_precision = precision, teacher_precision  # AutocastInferer
        configured = self.trainer.optim_set_to_none, self.trainer.optimizer
        if monai_defaults:
            self.trainer.optim_set_to_none, self.trainer.optimizer = False, self.default_optimizer
        try:
            self.trainer.iteration(self.batch)
        finally:
            self.trainer.optim_set_to_none, self.trainer.optimizer = configured
        self.teacher.update(self.network, self.teacher.decay_at(self.trainer.state.epoch - 1))

    def naive_teacher_pass(self) -> None:
        """The teacher pass as a naive port would run it: the whole network (reconstructor included) on the
        unmasked crop, under ``no_grad`` instead of ``inference_mode``."""
        with torch.no_grad():
            self.teacher.module(self.images, torch.zeros(self.images.shape[0], self.network.num_patches, dtype=bool))

    def teacher_pass(self, precision: str) -> torch.Tensor:
        """The trainer's teacher pass alone, in ``precision`` ("fp32", "bf16" or "int8")."""
        self.trainer.teacher_precision = precision
        return self.trainer.teacher_scores(self.images)


class MAEStep:
    """One training iteration of MONAI's ``MaskedAutoEncoderViT`` (forward, masked normalised-pixel MSE, backward,
    AdamW step), with the pretraining bundle's optimizer config (``optimizer`` of ``train.json``: fused, its
    parameter groups built on the MAE). ``dtype=torch.bfloat16`` casts the model and the input: MONAI's MAE fails under
    ``torch.autocast`` (its ``index_put`` writes bf16 decoder features into fp32 mask tokens), so its bf16 figure is a
    pure-bf16 model, which does no fp32 master-weight work and no autocast casts: a lower bound on an autocast MAE
    step."""

    def __init__(self, dims: dict, roi: int, images: torch.Tensor, device: str = "cpu", dtype=torch.float32) -> None:
        self.device = torch.device(device)
        torch.manual_seed(0)
        self.network = MaskedAutoEncoderViT(
            in_channels=1,
            img_size=roi,
            patch_size=16,
            num_layers=12,
            masking_ratio=MASK_RATIO,
            **dims,
        ).to(self.device, dtype)
        parser = bundle_parser(dims, roi, device)
        parser["network"] = self.network
        self.optimizer = parser.get_parsed_content("optimizer")
        self.images = images.to(self.device)
        self.inputs = self.images.to(dtype)
        self.dtype = dtype

    @functools.cached_property
    def default_optimizer(self) -> torch.optim.AdamW:
        """The configured AdamW with torch's default implementation (``fused=False``; built on first use, own state)."""
        return unfused_like(self.optimizer)

    def step(self, monai_defaults: bool = False) -> None:
        """One iteration; ``monai_defaults``: with a non-fused AdamW (gradients are always set to None, torch's
        default)."""
        optimizer = self.default_optimizer if monai_defaults else self.optimizer
        self.network.train()
        optimizer.zero_grad(set_to_none=True)
        prediction, mask = self.network(self.inputs)  # mask [N, L] int, 1 = masked
        target = patch_targets(self.images, 16, normalize=True)
        loss = per_patch_loss(prediction, target)[mask.bool()].mean()
        loss.backward()
        optimizer.step()


def hard_set_overlap(reference: torch.Tensor, scores: torch.Tensor, n_hard: int) -> dict[str, float]:
    """Overlap of the hard-patch sets (the ``n_hard`` top-scored patches per image) of two teachers: mean and
    minimum over images of ``|A & B| / n_hard``; ``chance`` is the expected overlap of two random sets.

    Examples::

        >>> s = torch.arange(8.0)[None]
        >>> hard_set_overlap(s, s, 2)["mean"], hard_set_overlap(s, -s, 2)["mean"]
        (1.0, 0.0)
    """
    a = torch.topk(reference.float(), n_hard, dim=1).indices
    b = torch.topk(scores.float(), n_hard, dim=1).indices
    per_image = [len(set(x.tolist()) & set(y.tolist())) / n_hard for x, y in zip(a, b)]
    return {
        "mean": sum(per_image) / len(per_image),
        "min": min(per_image),
        "chance": n_hard / reference.shape[1],
    }


def _overlaps(hpm: HPMStep, crops: torch.Tensor) -> dict[str, dict[str, float]]:
    """Hard-patch overlap of the bf16 and int8 teacher passes with the fp32 one, over ``crops``."""
    n_hard = int(num_masked(hpm.network.num_patches, MASK_RATIO) * HARD_RATIO)
    scores: dict[str, list[torch.Tensor]] = {"fp32": [], "bf16": [], "int8": []}
    saved = hpm.images
    for i in range(0, crops.shape[0], BATCH):
        hpm.images = crops[i : i + BATCH].to(hpm.device)
        for precision in scores:
            scores[precision].append(hpm.teacher_pass(precision))
    hpm.images = saved
    ref = torch.cat(scores["fp32"])
    return {p: hard_set_overlap(ref, torch.cat(scores[p]), n_hard) for p in ("bf16", "int8")}


def unfused_like(optimizer: torch.optim.Optimizer) -> torch.optim.AdamW:
    """An AdamW with ``optimizer``'s parameter groups and hyper-parameters and ``fused=False`` (its own state): torch's
    default implementation, a per-parameter loop on the CPU and ``foreach`` on GPUs.

    Examples::

        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> unfused_like(torch.optim.AdamW([w], lr=0.1, fused=True)).param_groups[0]["lr"]
        0.1
    """
    groups = [{k: v for k, v in g.items() if k not in ("fused", "foreach")} for g in optimizer.param_groups]
    return torch.optim.AdamW(groups, fused=False)


def _optimizer_knob(hpm: HPMStep, cfg: Config) -> dict[str, float]:
    """AdamW step of the HPM ViT-B parameters as configured (``fused=True``: one vectorised kernel) vs torch's
    default implementation (``fused=False``)."""
    default = hpm.default_optimizer
    for p in hpm.network.parameters():
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)
    times = interleaved({"as configured": hpm.optimizer.step, "fused=False": default.step}, reps=cfg.reps, warmup=1)
    return {k: median(v) for k, v in times.items()}


def _cpu_figures(cfg: Config, res: Results, peak_table: dict[str, dict]) -> dict[str, Any]:
    roi = 96
    crops = phantom_crops(16 if cfg.quick else 32, roi, seed=1)
    images = crops[:BATCH]
    log("step: building ViT-B/16 HPM (student, EMA teacher, int8 teacher copy) and MONAI MAE (fp32, bf16)")
    hpm = HPMStep(VIT_B, roi, images)
    mae = MAEStep(VIT_B, roi, images)
    mae_bf16 = MAEStep(VIT_B, roi, images, dtype=torch.bfloat16)

    log("step: FLOP counts (FlopCounterMode)")
    flops = {
        "hpm": count_flops(lambda: hpm.step("fp32", "fp32")),
        "mae": count_flops(mae.step),
        "teacher": count_flops(lambda: hpm.teacher_pass("fp32")),
        "teacher_naive": count_flops(hpm.naive_teacher_pass),
    }
    flops["hpm_naive"] = flops["hpm"] - flops["teacher"] + flops["teacher_naive"]
    hpm.teacher_pass("int8")  # builds the int8 copy outside the timed region
    refresh = interleaved({"refresh": hpm.trainer.int8_teacher.refresh}, reps=2, warmup=0)["refresh"]
    interval = hpm.trainer.teacher_refresh_interval

    log("step: teacher pass alone (fp32 / bf16 / int8), 2 crops")
    teacher_t = interleaved(
        {p: (lambda p=p: hpm.teacher_pass(p)) for p in ("fp32", "bf16", "int8")}, reps=cfg.reps, warmup=cfg.warmup
    )
    log("step: full iterations, interleaved (this takes a while at ViT-B)")
    variants = {
        "hpm_fp32": lambda: hpm.step("fp32", "fp32"),
        "hpm_teacher_bf16": lambda: hpm.step("fp32", "bf16"),
        "hpm_teacher_int8": lambda: hpm.step("fp32", "int8"),
        "mae_fp32": mae.step,
        "hpm_bf16": lambda: hpm.step("bf16", "bf16"),
        "mae_bf16": mae_bf16.step,
        "hpm_fp32_monai_defaults": lambda: hpm.step("fp32", "fp32", monai_defaults=True),
        "mae_fp32_monai_defaults": lambda: mae.step(monai_defaults=True),
    }
    pick = default_teacher_precision("cpu", "fp32")  # the teacher precision train.json picks on this CPU
    configured_key = "hpm_fp32" if pick == "fp32" else f"hpm_teacher_{pick}"
    if pick != "fp32":
        variants[f"{configured_key}_monai_defaults"] = lambda: hpm.step("fp32", pick, monai_defaults=True)
    times = interleaved(variants, reps=cfg.reps, warmup=cfg.warmup)
    med = {k: median(v) for k, v in times.items()}
    for key in ("hpm_teacher_int8", "hpm_teacher_int8_monai_defaults"):
        if key in med:
            med[key] += median(refresh) / interval  # amortised re-quantisation
    again = peaks(cfg)  # the peak once more, after the timings: the better of the two
    for key, value in again.items():
        if value["flops_per_s"] > peak_table[key]["flops_per_s"]:
            peak_table[key] = value
    hpm.trainer.int8_teacher.refresh()  # from the EMA teacher as it is now, which the fp32 pass uses
    overlaps = _overlaps(hpm, crops)
    optimizer_s = _optimizer_knob(hpm, cfg)

    # the headline: fp32 student, teacher in the fastest reduced precision that keeps the hard set (overlap >= 0.9)
    usable = [p for p in ("bf16", "int8") if overlaps[p]["mean"] >= 0.9]
    best_teacher = min(usable, key=lambda p: med[f"hpm_teacher_{p}"]) if usable else "fp32"
    headline = "hpm_fp32" if best_teacher == "fp32" else f"hpm_teacher_{best_teacher}"
    if med["hpm_fp32"] < med[headline]:
        best_teacher, headline = "fp32", "hpm_fp32"
    ratio = med[headline] / med["mae_fp32"]
    ratio_bf16 = med["hpm_bf16"] / med["mae_bf16"]
    fp32_peak, bf16_peak = peak_table["cpu_fp32"]["flops_per_s"], peak_table["cpu_bf16"]["flops_per_s"]
    mfu = {
        "hpm_fp32": flops["hpm"] / med["hpm_fp32"] / fp32_peak,
        "mae_fp32": flops["mae"] / med["mae_fp32"] / fp32_peak,
        "hpm_bf16": flops["hpm"] / med["hpm_bf16"] / bf16_peak,
        "mae_bf16": flops["mae"] / med["mae_bf16"] / bf16_peak,
        "hpm_fp32_monai_defaults": flops["hpm"] / med["hpm_fp32_monai_defaults"] / fp32_peak,
        "mae_fp32_monai_defaults": flops["mae"] / med["mae_fp32_monai_defaults"] / fp32_peak,
    }
    defaults_ratio = med[f"{configured_key}_monai_defaults"] / med["mae_fp32_monai_defaults"]
    label = "ViT-B/16, 96^3, gamma 0.75, batch 2, CPU"
    defaults_label = f"{label}; MONAI/torch defaults: optim_set_to_none=False, AdamW fused=False (MAE: fused=False)"
    flop_ratio = f"FLOP ratio {flops['hpm'] / flops['mae']:.2f} (naive {flops['hpm_naive'] / flops['mae']:.2f})"
    for key, value, note, where in (
        ("hpm_step_over_mae_step", ratio, f"fp32 student, {best_teacher} teacher; {flop_ratio}; all-fp32 "
         f"{med['hpm_fp32'] / med['mae_fp32']:.2f}", label),
        ("hpm_step_over_mae_step_flops", flops["hpm"] / flops["mae"], "FlopCounterMode", label),
        ("hpm_step_over_mae_step_bf16", ratio_bf16, "HPM under bf16 autocast (student and teacher) over MONAI MAE cast "
         "to bf16", label),
        ("pretrain_mfu", mfu["hpm_fp32"], f"everything fp32; peak {fp32_peak / 1e9:.0f} GFLOP/s fp32 mm", label),
        ("mae_mfu", mfu["mae_fp32"], "fp32", label),
        ("pretrain_mfu_bf16", mfu["hpm_bf16"], f"bf16 autocast; peak {bf16_peak / 1e9:.0f} GFLOP/s bf16 mm", label),
        ("mae_mfu_bf16", mfu["mae_bf16"], "", label),
        ("hpm_step_over_mae_step_monai_defaults", defaults_ratio, f"fp32 student, {pick} teacher "
         f"(selfmedhpm.quant.default_teacher_precision); HPM {med[f'{configured_key}_monai_defaults']:.3f} s vs as "
         f"configured {med[configured_key]:.3f} s; MAE {med['mae_fp32_monai_defaults']:.3f} s vs "
         f"{med['mae_fp32']:.3f} s",
         defaults_label),
        ("pretrain_mfu_monai_defaults", mfu["hpm_fp32_monai_defaults"], "everything fp32", defaults_label),
        ("mae_mfu_monai_defaults", mfu["mae_fp32_monai_defaults"], "fp32", defaults_label),
    ):  # fmt: skip
        res.add(key, value, note=note, label=where)
    for p in ("bf16", "int8"):
        res.add(
            f"teacher_{p}_hard_set_overlap",
            overlaps[p]["mean"],
            label=f"{label}, random-init teacher, {crops.shape[0]} phantom crops",
            note=f"min {overlaps[p]['min']:.3f}, chance {overlaps[p]['chance']:.3f}",
        )
    detail = {
        "flops_gflop": {k: v / 1e9 for k, v in flops.items()},
        "median_s": med,
        "times_s": times,
        "teacher_pass_s": {k: median(v) for k, v in teacher_t.items()},
        "int8_refresh_s": median(refresh),
        "int8_refresh_interval": interval,
        "mfu": mfu,
        "teacher_overlap_vs_fp32": overlaps,
        "headline_teacher_precision": best_teacher,
        "optimizer_s": optimizer_s,
    }
    gc.collect()
    return detail


def _gpu_figures(cfg: Config, res: Results, peaks: dict[str, dict]) -> dict[str, Any]:
    device = cfg.device
    roi = 96
    images = phantom_crops(BATCH, roi, seed=1)
    hpm = HPMStep(VIT_B, roi, images, device=device)
    mae = MAEStep(VIT_B, roi, images, device=device, dtype=torch.bfloat16)
    mae32 = MAEStep(VIT_B, roi, images, device=device)
    flops = {"hpm": count_flops(lambda: hpm.step("bf16", "bf16")), "mae": count_flops(mae.step)}
    reps = max(cfg.reps, 10)
    times = interleaved(
        {
            "hpm_bf16": lambda: hpm.step("bf16", "bf16"),
            "mae_bf16": mae.step,
            "hpm_fp32_teacher_bf16": lambda: hpm.step("fp32", "bf16"),
            "mae_fp32": mae32.step,
        },
        reps=reps,
        warmup=3,
        device=device,
    )
    med = {k: median(v) for k, v in times.items()}
    peak = peaks["gpu_bf16"]["flops_per_s"]
    label = "ViT-B/16, 96^3, batch 2, GPU"
    ratio = med["hpm_bf16"] / med["mae_bf16"]
    mfu_h, mfu_m = flops["hpm"] / med["hpm_bf16"] / peak, flops["mae"] / med["mae_bf16"] / peak
    for key, value, note in (
        ("hpm_step_over_mae_step", ratio, "bf16 autocast vs MAE cast"),
        ("hpm_step_over_mae_step_bf16", ratio, "bf16 autocast vs MAE cast"),
        ("hpm_step_over_mae_step_flops", flops["hpm"] / flops["mae"], ""),
        ("pretrain_mfu_bf16", mfu_h, ""),
        ("mae_mfu_bf16", mfu_m, ""),
        ("pretrain_mfu", mfu_h, "bf16 on GPU"),
        ("mae_mfu", mfu_m, "bf16 (model cast) on GPU"),
    ):
        res.add(key, value, "gpu", note, label)
    detail = {"flops_gflop": {k: v / 1e9 for k, v in flops.items()}, "median_s": med, "times_s": times}
    hpm = mae = mae32 = None
    gc.collect()
    torch.cuda.empty_cache()
    return detail


def _scaling(cfg: Config, res: Results, teacher_precision: str, device: str = "cpu") -> dict[str, Any]:
    """Iteration time vs crop size (64^3, 96^3, 128^3: 64, 216, 512 tokens) at ViT-B, batch 2."""
    rows = {}
    for roi in (64, 96, 128):
        hpm = HPMStep(VIT_B, roi, phantom_crops(BATCH, roi, seed=2), device=device)
        precision = "bf16" if device != "cpu" else "fp32"
        t = interleaved(
            {"hpm": lambda: hpm.step(precision, teacher_precision)},
            reps=max(2, cfg.reps - 1) if cfg.quick else cfg.reps,
            warmup=1,
            device=device,
        )["hpm"]
        rows[roi] = {"tokens": hpm.network.num_patches, "seconds": median(t), "times_s": t}
        log(f"step scaling: {roi}^3 ({rows[roi]['tokens']} tokens) {median(t):.3f} s")
        hpm = None
        gc.collect()
    exponent = fit_exponent([r["tokens"] for r in rows.values()], [r["seconds"] for r in rows.values()])
    res.add(
        "pretrain_step_token_exponent",
        exponent,
        "cpu" if device == "cpu" else "gpu",
        note="t ~ tokens^b over 64, 216, 512 tokens; "
        + ", ".join(f"{r}^3: {v['seconds']:.2f} s" for r, v in rows.items()),
        label=f"ViT-B/16 HPM step, batch 2, {teacher_precision} teacher",
    )
    return {"rows": rows, "exponent": exponent, "teacher_precision": teacher_precision}


def peaks(cfg: Config) -> dict[str, dict]:
    """Dense matmul peaks measured now: fp32 and bf16 on the CPU, bf16 (and fp32) on the GPU."""
    sizes = (1024, 2048) if cfg.quick else (1024, 2048, 4096)
    out = {
        "cpu_fp32": matmul_peak("cpu", torch.float32, sizes),
        "cpu_bf16": matmul_peak("cpu", torch.bfloat16, sizes),
    }
    if cfg.device:
        out["gpu_bf16"] = matmul_peak(cfg.device, torch.bfloat16, (4096, 8192))
        out["gpu_fp32"] = matmul_peak(cfg.device, torch.float32, (4096, 8192))
    for k, v in out.items():
        log(f"matmul peak {k}: {v['flops_per_s'] / 1e9:.0f} GFLOP/s")
    return out


def run(cfg: Config, res: Results, peak: dict[str, dict]) -> None:
    """Figures 1, 2 and 5b into ``res``."""
    detail = {"cpu": _cpu_figures(cfg, res, peak)}
    if cfg.device:
        detail["gpu"] = _gpu_figures(cfg, res, peak)
    detail["scaling_cpu"] = _scaling(cfg, res, detail["cpu"]["headline_teacher_precision"])
    if cfg.device:
        detail["scaling_gpu"] = _scaling(cfg, res, "bf16", cfg.device)
    res.details["step"] = detail

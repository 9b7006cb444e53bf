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

"""The pretraining step: one HPM iteration against one of MONAI's ``MaskedAutoEncoderViT`` (time, FLOPs, MFU), the
teacher pass per precision and its effect on the hard-patch mask, time against crop size, and the host's cost per
step, eager and compiled.

The HPM iteration is the real code path, instantiated from the pretraining ``train.json``: ``HPMTrainer.iteration``
(teacher pass, hard-patch mask, student forward, ``HPMLoss``, backward, AdamW step), then the EMA update. The MAE is
MONAI's network with the same widths, crop, batch and mask ratio, the same normalised-pixel MSE on masked patches and
the same AdamW config. Both also run with MONAI/torch defaults (zero-filled gradients, non-fused AdamW).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from monai.networks.nets import MaskedAutoEncoderViT
from selfmedhpm.ema import unwrap
from selfmedhpm.losses import patch_targets, per_patch_loss
from selfmedhpm.masking import num_masked
from selfmedhpm.views import TeacherView

from . import common
from .common import PRETRAIN_CONFIGS, Config, Results, bundle_parser, interleaved, log, median, medians, phantom_crops

NETWORK_KEYS = ("hidden_size", "mlp_dim", "num_heads", "decoder_hidden_size", "decoder_mlp_dim", "decoder_num_layers",
                "decoder_num_heads")  # fmt: skip
# a ViT so narrow that its matmuls cost next to nothing, with the CPU preset's depth: what is left is the host's work
TINY = dict(hidden_size=24, mlp_dim=48, num_heads=2, decoder_hidden_size=12, decoder_mlp_dim=24, decoder_num_layers=2,
            decoder_num_heads=2)  # fmt: skip


def network_sizes(*files: str) -> dict[str, int]:
    """The pretraining network's widths in the bundle's config ``files``: ``("train.json",)`` is ViT-B."""
    parser = bundle_parser(PRETRAIN_CONFIGS, files)
    return {key: int(parser[key]) for key in NETWORK_KEYS}


VIT_B, CPU_PRESET = network_sizes("train.json"), network_sizes("train.json", "train_cpu.json")
MASK_RATIO, HARD_RATIO, BATCH = 0.75, 0.5, 2


class HPMStep:
    """One training iteration of the pretraining bundle as ``train.json`` configures it, on one fixed batch, without
    handlers, at the last epoch (the hard-patch share at its highest), off the int8 teacher's re-quantisation
    schedule (timed apart).

    Args:
        dims: network widths (:data:`VIT_B`, :data:`CPU_PRESET`, :data:`TINY`).
        roi: crop edge.
        images: ``[N, 1, roi, roi, roi]`` crops (the batch).
        device: device.
        compile: the bundle's ``compile`` flag.
    """

    def __init__(self, dims: dict, roi: int, images: torch.Tensor, device: str = "cpu", compile: bool = False) -> None:
        torch.manual_seed(0)
        self.images = images.to(device)
        self.batch = {"image": self.images}
        parser = bundle_parser(PRETRAIN_CONFIGS, ["train.json"], device=device, roi_size=[roi] * 3, compile=compile)
        parser.update({"train#trainer#train_data_loader": [self.batch], "train#trainer#train_handlers": [], **dims})
        parser.update({"lr_scheduler#warmup_steps": 10, "lr_scheduler#t_total": 1000})
        self.trainer = parser.get_parsed_content("train#trainer")
        self.network, self.teacher = unwrap(self.trainer.network), self.trainer.teacher
        self.optimizer = self.trainer.optimizer
        self.default_optimizer = unfused_like(self.optimizer)
        self.trainer.state.epoch = self.trainer.state.max_epochs = 1
        self.trainer.state.iteration, self.trainer.state.epoch_length = 2, 1000  # int8 refresh at 1, 11, ...
        self.trainer.mask_ratio, self.trainer.final_hard_ratio = MASK_RATIO, HARD_RATIO

    def step(
        self,
        precision: str = "fp32",
        teacher_precision: str = "fp32",
        monai_defaults: bool = False,
        teacher_view: str = "full",
    ) -> None:
        """``HPMTrainer.iteration`` then the EMA update; ``monai_defaults``: zero-filled gradients and a non-fused
        AdamW instead of the configured ``optim_set_to_none=True`` and ``fused=True``; ``teacher_view``: what the
        teacher scores patches in (:class:`~selfmedhpm.views.TeacherView`, the config's passes)."""
        self.trainer.inferer.precision, self.trainer.teacher_precision = precision, teacher_precision
        configured = self.trainer.optim_set_to_none, self.trainer.optimizer, self.trainer.view
        if monai_defaults:
            self.trainer.optim_set_to_none, self.trainer.optimizer = False, self.default_optimizer
        view = configured[2]
        self.trainer.view = TeacherView(teacher_view, view.mask_ratio, view.passes, view.norm_pix_loss)
        try:
            self.trainer.iteration(self.batch)
        finally:
            self.trainer.optim_set_to_none, self.trainer.optimizer, self.trainer.view = configured
        self.teacher.update(self.network, self.teacher.decay_at(self.trainer.state.epoch - 1))

    def teacher_pass(self, precision: str, images: torch.Tensor | None = None) -> torch.Tensor:
        """The trainer's teacher pass alone on ``images`` (default: the batch) in ``precision``."""
        self.trainer.teacher_precision = precision
        return self.trainer.teacher_scores(self.images if images is None else images)

    def naive_teacher_pass(self) -> None:
        """The teacher pass of a naive port: the whole network, reconstructor included, under ``no_grad``."""
        with torch.no_grad():
            self.teacher.module(self.images, torch.zeros(self.images.shape[0], self.network.num_patches, dtype=bool))


class MAEStep:
    """One iteration of MONAI's ``MaskedAutoEncoderViT`` with the bundle's AdamW config. ``dtype=torch.bfloat16``
    casts model and input: MONAI's MAE fails under autocast (its ``index_put`` mixes dtypes), so its bf16 figure has
    no master weights and no casts, a lower bound on an autocast step."""

    def __init__(self, dims: dict, roi: int, images: torch.Tensor, device: str = "cpu", dtype=torch.float32) -> None:
        torch.manual_seed(0)
        self.network = MaskedAutoEncoderViT(1, roi, 16, num_layers=12, masking_ratio=MASK_RATIO, **dims).to(
            device, dtype
        )
        self.optimizer = bundle_parser(PRETRAIN_CONFIGS, ["train.json"], network=self.network).get_parsed_content(
            "optimizer"
        )
        self.default_optimizer = unfused_like(self.optimizer)
        self.images, self.inputs = images.to(device), images.to(device, dtype)

    def step(self, monai_defaults: bool = False) -> None:
        optimizer = self.default_optimizer if monai_defaults else self.optimizer
        optimizer.zero_grad(set_to_none=True)
        prediction, mask = self.network(self.inputs)  # mask [N, L], 1 = masked
        per_patch_loss(prediction, patch_targets(self.images, 16, normalize=True))[mask.bool()].mean().backward()
        optimizer.step()


def unfused_like(optimizer: torch.optim.Optimizer) -> torch.optim.AdamW:
    """An AdamW with ``optimizer``'s parameter groups and ``fused=False`` (torch's default; its own state).

    Examples::

        >>> w = torch.nn.Parameter(torch.zeros(2))
        >>> unfused_like(torch.optim.AdamW([w], lr=0.1, fused=True)).param_groups[0]["lr"]
        0.1
    """
    return torch.optim.AdamW(
        [{k: v for k, v in g.items() if k not in ("fused", "foreach")} for g in optimizer.param_groups], fused=False
    )


def hard_set_overlap(reference: torch.Tensor, scores: torch.Tensor, n_hard: int) -> dict[str, float]:
    """Overlap of the ``n_hard`` top-scored patches per image of two teachers: mean and minimum over images of
    ``|A & B| / n_hard``, and ``chance``, the expected overlap of two random sets.

    Examples::

        >>> s = torch.arange(8.0)[None]
        >>> hard_set_overlap(s, s, 2)["mean"], hard_set_overlap(s, -s, 2)["mean"]
        (1.0, 0.0)
    """
    a, b = (torch.topk(s.float(), n_hard, dim=1).indices.tolist() for s in (reference, scores))
    per_image = [len(set(x) & set(y)) / n_hard for x, y in zip(a, b)]
    return {"mean": sum(per_image) / len(per_image), "min": min(per_image), "chance": n_hard / reference.shape[1]}


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


def peaks(cfg: Config) -> dict[str, float]:
    """Dense matmul peaks (FLOP/s) measured now: fp32 (and bf16 where native) on the CPU, bf16 and fp32 on the GPU."""
    dtypes, sizes = {"fp32": torch.float32, "bf16": torch.bfloat16}, (1024, 2048) if cfg.quick else (1024, 2048, 4096)
    out = {f"cpu_{p}": common.matmul_peak("cpu", dtypes[p], sizes) for p in cfg.precisions if p in dtypes}
    if cfg.device:
        out |= {f"gpu_{p}": common.matmul_peak(cfg.device, d, (4096, 8192)) for p, d in dtypes.items()}
    log("matmul peaks: " + ", ".join(f"{k} {v / 1e9:.0f} GFLOP/s" for k, v in out.items()))
    return out


def _hpm_key(teacher_precision: str) -> str:
    """The name of the timed HPM variant with an fp32 student and the teacher in ``teacher_precision``."""
    return "hpm_fp32" if teacher_precision == "fp32" else f"hpm_teacher_{teacher_precision}"


def _iteration(cfg: Config, res: Results, peak: dict[str, float]) -> dict[str, Any]:
    """The ViT-B iteration on the CPU, each precision this CPU runs natively; the headline is the fp32 student with
    the teacher in the fastest precision that keeps the hard set (overlap >= 0.9)."""
    reduced = [p for p in ("bf16", "int8") if p in cfg.precisions]
    crops = phantom_crops(16 if cfg.quick else 32, 96, seed=1)
    hpm, mae = HPMStep(VIT_B, 96, crops[:BATCH]), MAEStep(VIT_B, 96, crops[:BATCH])
    flops = {
        "hpm": hpm.step,
        "mae": mae.step,
        "teacher": functools.partial(hpm.teacher_pass, "fp32"),
        "teacher_naive": hpm.naive_teacher_pass,
    }
    flops = {k: common.count_flops(fn) / 1e9 for k, fn in flops.items()}  # GFLOP
    refresh, interval = 0.0, hpm.trainer.teacher_refresh_interval
    if "int8" in reduced:
        hpm.teacher_pass("int8")  # builds the int8 copy outside the timed region
        refresh = median(interleaved({"r": hpm.trainer.int8_teacher.refresh}, reps=2, warmup=0)["r"])
    log(f"step: ViT-B/16 teacher pass alone, then whole iterations, interleaved; precisions {cfg.precisions}")
    teacher = medians({p: functools.partial(hpm.teacher_pass, p) for p in ["fp32"] + reduced}, cfg.reps, cfg.warmup)
    pick = common.fast_teacher_precision()  # what --teacher_precision would best pick on this CPU
    pick = pick if pick in reduced else "fp32"
    variants = {
        "hpm_fp32": hpm.step,
        "mae_fp32": mae.step,
        "mae_fp32_monai_defaults": functools.partial(mae.step, True),
        **{f"hpm_fp32_view_{v}": functools.partial(hpm.step, teacher_view=v) for v in ("masked", "reconstruction")},
    }
    variants |= {f"hpm_teacher_{p}": functools.partial(hpm.step, "fp32", p) for p in reduced}
    variants |= {f"{_hpm_key(p)}_monai_defaults": functools.partial(hpm.step, "fp32", p, True) for p in {"fp32", pick}}
    if "bf16" in reduced:
        mae_bf16 = MAEStep(VIT_B, 96, crops[:BATCH], dtype=torch.bfloat16)
        variants |= {"hpm_bf16": functools.partial(hpm.step, "bf16", "bf16"), "mae_bf16": mae_bf16.step}
    times = interleaved(variants, reps=cfg.reps, warmup=cfg.warmup)
    med = {k: median(v) + (refresh / interval if "int8" in k else 0.0) for k, v in times.items()}
    for key, value in peaks(cfg).items():  # the peak once more, after the timings: the better of the two
        peak[key] = max(peak[key], value)
    if "int8" in reduced:
        hpm.trainer.int8_teacher.refresh()  # from the EMA teacher as it is now, as the fp32 pass sees it
    n_hard = int(num_masked(hpm.network.num_patches, MASK_RATIO) * HARD_RATIO)
    scores = {p: torch.cat([hpm.teacher_pass(p, c) for c in crops.split(BATCH)]) for p in ["fp32"] + reduced}
    overlaps = {p: hard_set_overlap(scores["fp32"], scores[p], n_hard) for p in reduced}
    optimizer_s = medians({"as configured": hpm.optimizer.step, "fused=False": hpm.default_optimizer.step}, cfg.reps)
    best = min(["fp32"] + [p for p in reduced if overlaps[p]["mean"] >= 0.9], key=lambda p: med[_hpm_key(p)])
    headline = med[_hpm_key(best)]
    mfu = {
        k: flops[k[:3]] * 1e9 / v / peak[f"cpu_{k.split('_')[1]}"]
        for k, v in med.items()
        if "teacher" not in k and "view" not in k
    }
    defaults = "MONAI/torch defaults: optim_set_to_none=False, AdamW fused=False (MAE: fused=False)"
    res.add_all(
        {
            "hpm_step_over_mae_step": (headline / med["mae_fp32"], f"fp32 student, {best} teacher"),
            "hpm_step_over_mae_step_flops": (flops["hpm"] / flops["mae"], "FlopCounterMode"),
            "hpm_step_over_mae_step_bf16": (
                med["hpm_bf16"] / med["mae_bf16"] if "bf16" in reduced else None,
                "HPM under bf16 autocast over MONAI's MAE cast to bf16",
            ),
            "hpm_step_over_mae_step_monai_defaults": (
                med[f"{_hpm_key(pick)}_monai_defaults"] / med["mae_fp32_monai_defaults"],
                f"{pick} teacher; {defaults}",
            ),
            **{
                f"hpm_step_{v}_view_over_full": (
                    med[f"hpm_fp32_view_{v}"] / med["hpm_fp32"],
                    f"fp32 student and teacher; {hpm.trainer.view.passes} passes" if v == "masked" else "fp32",
                )
                for v in ("masked", "reconstruction")
            },
            "pretrain_mfu": (mfu["hpm_fp32"], f"fp32; peak {peak['cpu_fp32'] / 1e9:.0f} GFLOP/s"),
            "mae_mfu": (mfu["mae_fp32"], "fp32"),
            "pretrain_mfu_monai_defaults": (mfu["hpm_fp32_monai_defaults"], defaults),
            "mae_mfu_monai_defaults": (mfu["mae_fp32_monai_defaults"], defaults),
            "pretrain_mfu_bf16": (mfu.get("hpm_bf16"), "bf16 autocast, over the bf16 peak"),
            "mae_mfu_bf16": (mfu.get("mae_bf16"), "model cast to bf16, over the bf16 peak"),
            **{
                f"teacher_{p}_hard_set_overlap": (
                    overlaps.get(p, {}).get("mean"),
                    (f"random-init teacher, {len(crops)} crops; min {overlaps[p]['min']:.3f}" if p in overlaps else ""),
                )
                for p in ("bf16", "int8")
            },
        },
        label=f"ViT-B/16, 96^3, gamma 0.75, batch 2, CPU; precisions measured: {', '.join(cfg.precisions)}",
    )
    share = {"student": (headline - teacher[best]) / med["mae_fp32"], "teacher": teacher[best] / med["mae_fp32"]}
    return {
        "flops_gflop": flops,
        "median_s": med,
        "times_s": times,
        "teacher_pass_s": teacher,
        "mfu": mfu,
        "int8_refresh_s": refresh,
        "share_of_mae": share,
        "teacher_overlap_vs_fp32": overlaps,
        "headline_teacher_precision": best,
        "headline_s": headline,
        "optimizer_s": optimizer_s,
    }


def _scaling(cfg: Config, res: Results, teacher_precision: str, device: str = "cpu") -> dict[str, Any]:
    """Iteration time against crop size (64^3, 96^3, 128^3: 64, 216, 512 tokens) at ViT-B, batch 2."""
    rows = {}
    for roi in (64, 96, 128):
        hpm = HPMStep(VIT_B, roi, phantom_crops(BATCH, roi, seed=2), device=device)
        step = functools.partial(hpm.step, "fp32" if device == "cpu" else "bf16", teacher_precision)
        t = interleaved({"hpm": step}, reps=max(2, cfg.reps - 1) if cfg.quick else cfg.reps, device=device)["hpm"]
        rows[roi] = {"tokens": hpm.network.num_patches, "seconds": median(t)}
        log(f"step scaling: {roi}^3 ({rows[roi]['tokens']} tokens) {median(t):.3f} s")
    exponent = common.fit_exponent([r["tokens"] for r in rows.values()], [r["seconds"] for r in rows.values()])
    note = "64, 216, 512 tokens: " + ", ".join(f"{r}^3 {v['seconds']:.2f} s" for r, v in rows.items())
    label = f"ViT-B/16 HPM step, batch 2, {teacher_precision} teacher"
    res.add("pretrain_step_token_exponent", exponent, "cpu" if device == "cpu" else "gpu", note, label)
    return rows


def _host(res: Results, device: str, column: str, reps: int) -> dict[str, Any]:
    """aten ops and step time of the :data:`TINY` network (fp32), eager and compiled (its first step, compiling,
    reported apart): the host's work per step, what leaves a GPU idle on the host-bound ViT-B step."""
    steps = {
        m: HPMStep(TINY, 64, phantom_crops(BATCH, 64, seed=4), device, m == "compiled").step
        for m in ("eager", "compiled")
    }
    first = {m: interleaved({m: s}, reps=1, warmup=0, device=device)[m][0] for m, s in steps.items()}
    seconds = medians(steps, reps=max(reps, 5), device=device)
    ops = {m: aten_ops_per_step(s) for m, s in steps.items()}
    label = f"HPM step, width {TINY['hidden_size']}, 64^3, batch {BATCH}, fp32, {device}"
    res.add_all(
        {
            "host_aten_ops_per_step": (ops["eager"], "eager"),
            "host_aten_ops_per_step_compiled": (
                ops["compiled"],
                f"--compile True; compiling took {first['compiled']:.0f} s",
            ),
            "host_step_s_tiny": (seconds["eager"], "eager"),
            "host_step_speedup_compiled": (
                seconds["eager"] / seconds["compiled"],
                f"compiled {seconds['compiled']:.3f} s",
            ),
        },
        column,
        label,
    )
    log(f"host ({column}): aten ops {ops}, seconds {seconds}")
    return {m: {"aten_ops": ops[m], "seconds": seconds[m], "first_step_s": first[m]} for m in steps}


def run(cfg: Config, res: Results, peak: dict[str, float]) -> dict[str, Any]:
    """The step section: the iteration figures and the crop-size scaling into ``res``."""
    detail = {"cpu": _iteration(cfg, res, peak)}
    detail["scaling_cpu"] = _scaling(cfg, res, detail["cpu"]["headline_teacher_precision"])
    if cfg.device:
        detail["scaling_gpu"] = _scaling(cfg, res, "bf16", cfg.device)
    return detail


def run_host(cfg: Config, res: Results, peak: dict[str, float]) -> dict[str, Any]:
    """The host section (``--only host``: a minute): the host's cost per step on the CPU and the GPU."""
    return {
        column: _host(res, device, column, cfg.reps)
        for column, device in (("cpu", "cpu"), ("gpu", cfg.device))
        if device
    }

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

"""The parts of docs/benchmarks.md that depend on this run (its template is ``benchmarks.md.in``): targets met or
missed with what limits them, and the speed knobs with their measured effect. Numbers come from this run's results;
nothing here is hard-coded from an earlier run."""

from __future__ import annotations

from typing import Any

from .common import Config, Results
from .targets import FIGURES

__all__ = ["values"]


def _v(res: Results, key: str, column: str = "cpu") -> float | None:
    return res.value(key, column)


def _f(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _t(key: str) -> str:
    return FIGURES[key].cpu or ""


def _targets(res: Results, info: dict[str, Any], quick: bool) -> list[str]:
    lines = []
    step = res.details.get("step", {}).get("cpu")
    peaks = res.details.get("matmul_peak", {})
    bf16_over_fp32 = None
    if "cpu_bf16" in peaks and "cpu_fp32" in peaks:
        bf16_over_fp32 = peaks["cpu_bf16"]["flops_per_s"] / peaks["cpu_fp32"]["flops_per_s"]
    amx = "amx_bf16" in info.get("cpu_flags", [])
    if step:
        med, teacher = step["median_s"], step["teacher_pass_s"]
        best = step["headline_teacher_precision"]
        key = "hpm_fp32" if best == "fp32" else f"hpm_teacher_{best}"
        student_part = med[key] - teacher[best]
        lines.append(
            f"- **`hpm_step_over_mae_step` = {_f(_v(res, 'hpm_step_over_mae_step'))}** "
            f"(target {_t('hpm_step_over_mae_step')}) with the "
            f"teacher in {best}; everything in fp32 it is {_f(med['hpm_fp32'] / med['mae_fp32'])} and by FLOPs "
            f"{_f(_v(res, 'hpm_step_over_mae_step_flops'))}. The HPM iteration without its teacher pass (student "
            f"forward/backward with the second, loss-predictor stack over all tokens, AdamW over its extra "
            f"parameters, EMA update) already costs {_f(student_part / med['mae_fp32'])} MAE iterations; the teacher "
            f"pass adds {_f(teacher[best] / med['mae_fp32'])} ({teacher[best]:.3f} s; fp32 {teacher['fp32']:.3f} s, "
            f"bf16 {teacher['bf16']:.3f} s, int8 {teacher['int8']:.3f} s)."
        )
        if bf16_over_fp32 is not None:
            lines.append(
                f"- bf16 on this CPU: the dense bf16 matmul peak is {_f(bf16_over_fp32)} times the fp32 one "
                + (
                    "(AMX present)."
                    if amx
                    else "(AVX-512 BF16 without AMX: one bf16 dot-product instruction does the work of the two fp32 "
                    "FMA ports, plus conversions), so a bf16 teacher or student is no faster here. AVX-512 VNNI int8 "
                    "is this CPU's fast reduced precision, hence the int8 teacher. On GPUs and AMX CPUs bf16 is the "
                    "choice."
                )
            )
        lines.append(
            f"- **`hpm_step_over_mae_step_bf16` = {_f(_v(res, 'hpm_step_over_mae_step_bf16'))}**: HPM under bf16 "
            "autocast (fp32 master weights, casts) against MONAI's MAE cast to pure bf16 (no master weights, no "
            "casts: MONAI's MAE fails under autocast), so the MAE side is a lower bound."
        )
        mfu, mae_mfu = _v(res, "pretrain_mfu"), _v(res, "mae_mfu")
        lines.append(
            f"- **`pretrain_mfu` = {_f(mfu)}, `mae_mfu` = {_f(mae_mfu)}** of the fp32 matmul peak measured in this "
            f"run (target {_t('pretrain_mfu')}). HPM's teacher pass is inference over the full 217-token sequence "
            "(large, efficient matmuls) while MAE's encoder sees 55 tokens per crop and MONAI's attention is unfused"
            + (", so HPM runs closer to the peak than MAE. " if (mfu or 0) >= (mae_mfu or 0) else ". ")
            + "What keeps both below the peak: the backward pass's weight "
            "gradients on short sequences, attention, LayerNorm and GELU, and the optimizer and EMA update, which "
            "are memory-bound and count no matmul FLOPs (AdamW alone: see the knobs table)."
        )
        if _v(res, "hpm_step_over_mae_step_monai_defaults") is not None:
            lines.append(
                "- These figures use the bundles' optimizer settings on both sides (`optim_set_to_none: true` in the "
                "trainer, `fused: true` in the AdamW; the MAE takes the same optimizer config). With MONAI/torch "
                "defaults instead (zero-filled gradients, non-fused AdamW; MAE: non-fused AdamW): "
                f"`hpm_step_over_mae_step` {_f(_v(res, 'hpm_step_over_mae_step_monai_defaults'))}, `pretrain_mfu` "
                f"{_f(_v(res, 'pretrain_mfu_monai_defaults'))} (MAE {_f(_v(res, 'mae_mfu_monai_defaults'))})."
            )
        lines.append(
            f"- **bf16 MFU** (everything under bf16 autocast, over the bf16 peak): HPM "
            f"{_f(_v(res, 'pretrain_mfu_bf16'))}, MAE {_f(_v(res, 'mae_mfu_bf16'))} (target {_t('pretrain_mfu_bf16')})."
        )
    ops = _v(res, "host_aten_ops_per_step")
    if ops is not None:
        host = res.details.get("host", {}).get("cpu", {})
        lines.append(
            f"- **Host cost per HPM step** (a ViT of width 24, where compute is negligible: the proxy on a CPU for "
            f"the host-bound ViT-B step on a GPU): {ops:.0f} aten operators dispatched eagerly, "
            f"{_v(res, 'host_aten_ops_per_step_compiled'):.0f} with `--compile True` (the rest: autograd's gradient "
            f"accumulation and the extern matmuls of the compiled graphs); step time "
            f"{host.get('eager', {}).get('seconds', float('nan')) * 1e3:.1f} ms eager, "
            f"{host.get('compiled', {}).get('seconds', float('nan')) * 1e3:.1f} ms compiled. The compile itself took "
            f"{host.get('compiled', {}).get('first_step_s', float('nan')):.0f} s here (inductor caches it on disk)."
        )
    overlap = _v(res, "teacher_int8_hard_set_overlap")
    if overlap is not None:
        lines.append(
            f"- Effect of the teacher's precision on the mask: the hard-patch sets (the int(K * alpha_T) top-scored "
            f"patches) of the bf16 and int8 teacher passes overlap the fp32 teacher's by "
            f"{_f(_v(res, 'teacher_bf16_hard_set_overlap'), 3)} and {_f(overlap, 3)} (random-init ViT-B), and "
            f"{_f(_v(res, 'teacher_bf16_hard_set_overlap_trained'), 3)} and "
            f"{_f(_v(res, 'teacher_int8_hard_set_overlap_trained'), 3)} (trained CPU-preset teacher); two random "
            "sets would overlap by 0.375. The masks' random part is drawn independently of the precision."
        )
    ratio = _v(res, "loader_over_step")
    if ratio is not None:
        lines.append(
            f"- **`loader_over_step` = {_f(ratio)}** (target {_t('loader_over_step')}): on a CPU the data pipeline is "
            "never the limit "
            "(the step is seconds); the loader here runs alone, while in training it shares the cores with the "
            "step. On a GPU the step is ~100 times faster and the figure that matters is the GPU column."
        )
    e2e = _v(res, "inference_e2e_over_bare")
    if e2e is not None:
        inf = res.details.get("inference", {})
        job = inf.get("timing", {}).get("jobs", [{}])
        main = max(job, key=lambda j: j.get("windows", 0)) if job else {}
        med = main.get("median_s", {})
        overhead = med.get("e2e", 0) - med.get("bare", 0)
        lines.append(
            f"- **`inference_e2e_over_bare` = {_f(e2e)}** (target {_t('inference_e2e_over_bare')}"
            + ("; quick mode: the CPU-preset model on a small block, not the target configuration" if quick else "")
            + f"): the bundle adds {overhead:.2f} s to the "
            "sliding window: reading and decompressing the NIfTI, orientation, resampling to 1.5 x 1.5 x 2 mm, "
            "intensity scaling, foreground crop, softmax and argmax over 14 channels, inverting the crop and the "
            "resampling, compressing and writing the label map, and starting the loader's worker processes. That "
            "overhead is fixed per case, so the ratio improves with the model's cost (paper-scale UNETR) and "
            "worsens on a GPU, where the sliding window is fast."
        )
    rss = _v(res, "inference_peak_rss_gb")
    if rss is not None:
        lines.append(
            f"- **`inference_peak_rss_gb` = {_f(rss)} GB** (target {_t('inference_peak_rss_gb')} GB at the "
            "paper-scale model"
            + (", which quick mode does not run" if quick else "")
            + "; the bundle process and its loader workers, PSS summed): pre- and post-processing at full "
            "resolution (the image read and resampled in the loader worker, the 14-channel float32 output and its "
            "softmax, the inverted label map), the network's weights, and its activations for `sw_batch_size` "
            "windows (UNETR's decoder runs at full crop resolution)."
        )
    return lines


def _knobs(res: Results) -> list[str]:
    rows = ["| knob | where | measured in this run | advice |", "| --- | --- | --- | --- |"]
    step = res.details.get("step", {}).get("cpu")
    if step:
        med, teacher = step["median_s"], step["teacher_pass_s"]
        rows.append(
            f"| teacher precision | pretraining `teacher_precision` | teacher pass fp32 {teacher['fp32']:.3f} s, "
            f"bf16 {teacher['bf16']:.3f} s, int8 {teacher['int8']:.3f} s | bf16 on GPUs and AMX CPUs; int8 on "
            "AVX-512 VNNI CPUs without AMX (the pretraining default, `default_teacher_precision`, picks these) |"
        )
        rows.append(
            f"| bf16 autocast | both bundles' `precision` | ViT-B HPM iteration fp32 {med['hpm_fp32']:.3f} s, bf16 "
            f"{med['hpm_bf16']:.3f} s | on CPUs only where bf16 matmuls are faster (AMX); default on GPUs |"
        )
        if "hpm_fp32_monai_defaults" in med:
            rows.append(
                f"| grads to None + fused AdamW | both bundles' `train#trainer#optim_set_to_none`, `optimizer#fused` | "
                f"HPM iteration (fp32) as configured {med['hpm_fp32']:.3f} s; with MONAI/torch defaults (zero-filled "
                f"grads, non-fused AdamW) {med['hpm_fp32_monai_defaults']:.3f} s; MAE {med['mae_fp32']:.3f} s, "
                f"non-fused {med['mae_fp32_monai_defaults']:.3f} s | keep both (set in both bundles) |"
            )
        if "optimizer_s" in step:
            opt = step["optimizer_s"]
            rows.append(
                f'| fused AdamW | `optimizer` (`"fused": true`) | AdamW step (ViT-B HPM) as configured (fused) '
                f"{opt['as configured']:.3f} s, torch's default (`fused=False`) {opt['fused=False']:.3f} s | keep it "
                "(CPU and GPU) |"
            )
    loader = res.details.get("loader")
    if loader:
        cps = loader["crops_per_s"]
        parts = ", ".join(f"{k} {v:.0f}" for k, v in cps.items())
        rows.append(
            f"| loader workers | pretraining `num_workers` | crops/s: {parts} | workers restart every epoch: "
            "`persistent_workers` where epochs are short; on small CPUs fewer workers |"
        )
        if "cache_rate_0_crops_per_s" in loader:
            rows.append(
                f"| cache_rate | `cache_rate` | 1.0: {cps[next(iter(cps))]:.0f} crops/s; 0: "
                f"{loader['cache_rate_0_crops_per_s']:.1f} crops/s | keep 1.0 if the volumes fit in memory |"
            )
        if "thread_loader_crops_per_s" in loader:
            gpu = loader.get("gpu", {}).get("gpu_cache_crops_per_s")
            gpu_text = f"; on the GPU {gpu:.0f}" if gpu else "; GPU: not yet measured"
            rows.append(
                f"| device-resident cache | `gpu_cache.json` | on the CPU (ThreadDataLoader, no workers) "
                f"{loader['thread_loader_crops_per_s']:.0f} crops/s{gpu_text} | on GPU machines |"
            )
    lean, peak = _v(res, "inference_peak_rss_gb_num_workers_0"), _v(res, "inference_peak_rss_gb")
    if lean is not None and peak is not None:
        rows.append(
            f"| inference workers | inference `num_workers` | peak memory {peak:.2f} GB with the configured workers, "
            f"{lean:.2f} GB with 0 | 0 for one case or when memory is tight; workers only overlap loading of the next "
            "case |"
        )
    knobs = res.details.get("inference", {}).get("knobs_s")
    if knobs:
        sw = {k: v for k, v in knobs.items() if k.startswith("sw_batch_size")}
        base = next(iter(sw))
        rows.append(
            "| sw_batch_size | inference `sw_batch_size` | "
            + ", ".join(f"{k.replace('sw_batch_size_', '')}: {v:.2f} s" for k, v in sw.items())
            + " (3 windows) | larger while memory allows |"
        )
        rows.append(
            f"| bf16 inference | inference `precision` | fp32 {knobs[base]:.2f} s, bf16 {knobs['bf16']:.2f} s | "
            "measure: convolutions and transformer matmuls gain differently |"
        )
        rows.append(
            f"| channels-last | (network memory format) | contiguous {knobs[base]:.2f} s, channels_last_3d "
            f"{knobs['channels_last_3d']:.2f} s | only where faster (not applied by the bundles) |"
        )
    return rows


def values(res: Results, info: dict[str, Any], cfg: Config) -> dict[str, str]:
    """The parts of ``benchmarks.md.in`` that this run's results decide."""
    return {
        "gpu_note": (
            ""
            if info.get("gpu")
            else "\nNo GPU in this run: the GPU column is not yet measured (run " "`make bench` on a GPU machine).\n"
        ),
        "targets": "\n".join(_targets(res, info, cfg.quick)),
        "knobs": "\n".join(_knobs(res)),
        "bf16_gap": _f(_v(res, "bf16_rec_loss_gap"), 3),
        "bf16_segment_speedup": _f(_v(res, "bf16_segment_step_speedup")),
        "quick_note": (
            "\nQuick mode: the pretraining figures are at ViT-B as specified; the inference figures use the "
            "CPU preset UNETR on a small block (labelled), so `inference_e2e_over_bare` and `inference_peak_rss_gb` "
            "are not the target configuration; the loss curves are short.\n"
            if cfg.quick
            else ""
        ),
    }

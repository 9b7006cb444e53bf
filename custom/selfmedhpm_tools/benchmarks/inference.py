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

"""Figures 4 and 5a: the segmentation inference bundle end to end against a bare sliding window, its peak memory, and
inference time against volume size; knobs: sw_batch_size, bf16 autocast, channels-last.

The bundle runs in a child process (``python -m selfmedhpm_tools.benchmarks.inference JOB.json``) so that its peak
resident memory (the child and its data-loader workers, sampled with psutil; the child's ``VmHWM``) is its own. The
child builds the bundle with ``monai.bundle.ConfigWorkflow`` from ``inference.json`` and times ``evaluator.run()``
(read, pre-process, sliding window at overlap 0.5, softmax/argmax, invert, write) interleaved with a bare
``monai.inferers.sliding_window_inference`` of the same network, in the same precision, on the already pre-processed
tensor.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import SEGMENT_CONFIGS, Config, Results, fit_exponent, interleaved, log, median

__all__ = ["make_volume", "make_model", "run_child", "run"]

CPU_PRESET_KEYS = ("roi_size", "sw_batch_size", "feature_size", "hidden_size", "mlp_dim", "num_heads")


def make_volume(
    path: Path, shape: tuple[int, int, int], seed: int = 0, tiles: int = 1, crop: tuple[int, int, int] | None = None
) -> Path:
    """A synthetic CT (:func:`selfmedhpm_tools.phantom.generate_case`) as NIfTI. ``crop`` keeps a central block of that
    many voxels (a smaller field of view: the phantom's spacing adapts to ``shape`` so that the body always fills
    it); ``tiles`` > 1 stacks copies along z with the same spacing (``tiles`` times the voxels before and after
    pre-processing)."""
    import nibabel as nib
    from selfmedhpm_tools.phantom import generate_case

    if not path.is_file():
        image, _, affine = generate_case(seed, shape=shape)
        if crop:
            start = [(s - c) // 2 for s, c in zip(image.shape, crop)]
            image = image[tuple(slice(a, a + c) for a, c in zip(start, crop))]
            affine = affine.copy()
            affine[:3, 3] += affine[:3, :3] @ np.array(start, dtype=float)
        if tiles > 1:
            image = np.concatenate([image] * tiles, axis=2)
        nifti = nib.Nifti1Image(image, affine)
        nifti.set_qform(affine, code=1)
        nifti.set_sform(affine, code=1)
        nib.save(nifti, str(path))
    return path


def model_overrides(preset: str) -> dict[str, Any]:
    """Network overrides of the inference bundle: "paper" (ViT-B UNETR, the bundle's defaults) or "cpu" (the
    segmentation bundle's ``train_cpu.json`` widths, crop and sw_batch_size)."""
    if preset == "paper":
        return {}
    cpu = json.loads((SEGMENT_CONFIGS / "train_cpu.json").read_text())
    return {k: cpu[k] for k in CPU_PRESET_KEYS if k in cpu}


def make_model(path: Path, overrides: dict[str, Any]) -> Path:
    """A randomly initialised checkpoint of the inference bundle's network (timing does not depend on weights)."""
    import torch
    from monai.bundle import ConfigParser

    if not path.is_file():
        parser = ConfigParser()
        parser.read_config(str(SEGMENT_CONFIGS / "inference.json"))
        parser.update({"device": "cpu", **overrides})
        torch.manual_seed(0)
        net = parser.get_parsed_content("network_def")
        torch.save({"model": net.state_dict()}, str(path))
    return path


def _tree_memory(proc: Any) -> tuple[int, int]:
    """(summed PSS, summed RSS) of ``proc`` and its descendants. PSS shares each page among the processes mapping
    it, so the sum is the tree's real footprint; the RSS sum counts pages shared by the loader workers (forked
    from the bundle process) once per process, an upper bound."""
    pss = rss = 0
    for p in [proc] + proc.children(recursive=True):
        try:
            info = p.memory_full_info()
            rss += info.rss
            pss += getattr(info, "pss", info.rss)
        except Exception:  # noqa: BLE001 - a worker may exit between listing and reading
            pass
    return pss, rss


def run_child(job: dict[str, Any], workdir: Path, name: str, timeout: float = 3600) -> dict[str, Any]:
    """Runs ``job`` in a child process, sampling the resident memory of its process tree every 50 ms.
    Returns the child's JSON result plus ``peak_tree_pss_gb``, ``peak_tree_rss_gb``, ``rusage_children_maxrss_gb``
    and ``wall_s``."""
    import psutil

    job_path, out_path = workdir / f"{name}.job.json", workdir / f"{name}.out.json"
    job_path.write_text(json.dumps(job, indent=1))
    out_path.unlink(missing_ok=True)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "selfmedhpm_tools.benchmarks.inference", str(job_path), str(out_path)]
    )
    peak, stop = [0, 0], threading.Event()

    def sample() -> None:
        handle = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                peak[:] = [max(a, b) for a, b in zip(peak, _tree_memory(handle))]
            except psutil.Error:
                return
            stop.wait(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        code = proc.wait(timeout=timeout)
    finally:
        stop.set()
        thread.join()
        if proc.poll() is None:
            proc.kill()
    if code != 0 or not out_path.is_file():
        raise RuntimeError(f"benchmark child {name} failed with exit code {code}; see its output above")
    result = json.loads(out_path.read_text())
    result["peak_tree_pss_gb"], result["peak_tree_rss_gb"] = peak[0] / 2**30, peak[1] / 2**30
    # an upper bound only: Linux carries this process's own peak over fork + execve into the child's ru_maxrss
    result["rusage_children_maxrss_gb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    result["wall_s"] = time.perf_counter() - start
    return result


# ---------------------------------------------------------------------------------------------------------------
# child side


def _workflow(job: dict[str, Any], input_file: str) -> Any:
    from monai.bundle import ConfigWorkflow

    overrides = dict(job["overrides"], input_file=input_file)
    workflow = ConfigWorkflow(
        config_file=[str(SEGMENT_CONFIGS / c) for c in job["configs"]],
        meta_file=str(SEGMENT_CONFIGS / "metadata.json"),
        logging_file=str(SEGMENT_CONFIGS / "logging.conf"),
        workflow_type="infer",
        **overrides,
    )
    workflow.initialize()
    return workflow


def _bare(workflow: Any, input_file: str) -> tuple[Any, Any]:
    """The pre-processed tensor of ``input_file`` and a bare sliding window of the bundle's network on it, with the
    bundle's roi, sw_batch_size, overlap and precision, under ``no_grad`` like MONAI's evaluator."""
    import torch
    from monai.inferers import sliding_window_inference
    from selfmedhpm.utils import autocast

    parser = workflow.parser
    device = parser.get_parsed_content("device")
    tensor = parser.get_parsed_content("preprocessing")({"image": input_file})["image"]
    tensor = tensor.as_tensor()[None].to(device)  # [1, C, H, W, D], no metadata
    network = parser.get_parsed_content("network").eval()
    roi, sw, overlap = (parser.get_parsed_content(k) for k in ("roi_size", "sw_batch_size", "overlap"))
    precision = parser.get_parsed_content("precision") if "precision" in parser else "fp32"

    def bare(net: Any = network, x: Any = tensor, sw_batch_size: int = sw, precision: str = precision) -> Any:
        with torch.no_grad(), autocast(x.device, precision):
            out = sliding_window_inference(x, roi, sw_batch_size, net, overlap=overlap)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        return out

    return tensor, bare


def _windows(spatial: Any, workflow: Any) -> int:
    """Number of sliding windows MONAI places on a volume of ``spatial`` size."""
    import math

    roi, overlap = (workflow.parser.get_parsed_content(k) for k in ("roi_size", "overlap"))
    count = 1
    for size, r in zip(spatial, roi):
        stride = max(int(r * (1 - overlap)), 1)
        count *= 1 if size <= r else math.ceil((size - r) / stride) + 1
    return count


def _knobs(bare: Any, tensor: Any, workflow: Any, reps: int) -> dict[str, float]:
    """Bare sliding-window seconds on (a block of) the pre-processed tensor for sw_batch_size, bf16 autocast and
    channels-last variants, interleaved."""
    import copy

    import torch

    parser = workflow.parser
    roi = parser.get_parsed_content("roi_size")
    sw = parser.get_parsed_content("sw_batch_size")
    axis = int(np.argmax(tensor.shape[2:]))
    extent = [2 * r if i == axis else r for i, r in enumerate(roi)]  # 3 windows along the longest axis
    block = tensor[(..., *(slice(0, e) for e in extent))]
    network = parser.get_parsed_content("network").eval()
    cl_net = copy.deepcopy(network).to(memory_format=torch.channels_last_3d)
    variants = {
        f"sw_batch_size_{sw}": lambda: bare(x=block),
        "sw_batch_size_1": lambda: bare(x=block, sw_batch_size=1),
        f"sw_batch_size_{2 * sw}": lambda: bare(x=block, sw_batch_size=2 * sw),
        "bf16": lambda: bare(x=block, precision="bf16"),
        "channels_last_3d": lambda: bare(net=cl_net, x=block.contiguous(memory_format=torch.channels_last_3d)),
    }
    times = interleaved(variants, reps=reps, warmup=1, device=block.device)
    return {k: median(v) for k, v in times.items()} | {"block_shape": list(block.shape)}


def _vm_hwm_gb() -> float:
    """This process's peak resident memory (``VmHWM``). ``getrusage(RUSAGE_SELF).ru_maxrss`` would not do: Linux
    carries it over ``fork`` + ``execve``, so a child reports its (large) parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def child_main(job_path: str, out_path: str) -> None:
    """Child process: runs the jobs of ``job_path`` and writes their timings to ``out_path``."""
    import torch

    job = json.loads(Path(job_path).read_text())
    torch.set_num_threads(job.get("threads") or torch.get_num_threads())
    out: dict[str, Any] = {"jobs": []}
    for spec in job["jobs"]:
        start = time.perf_counter()
        workflow = _workflow(job, spec["input"])
        evaluator = workflow.parser.get_parsed_content("evaluator")
        init_s = time.perf_counter() - start
        result: dict[str, Any] = {"input": spec["input"], "init_s": init_s}
        fns = {"e2e": evaluator.run}
        tensor, bare = _bare(workflow, spec["input"])
        result["preprocessed_shape"] = list(tensor.shape)
        result["windows"] = _windows(tensor.shape[2:], workflow)
        if spec.get("bare"):
            fns["bare"] = bare
        times = interleaved(fns, reps=spec.get("reps", 1), warmup=spec.get("warmup", 0))
        result["times_s"] = times
        result["median_s"] = {k: median(v) for k, v in times.items()}
        if spec.get("knobs"):
            result["knobs_s"] = _knobs(bare, tensor, workflow, spec.get("reps", 1))
        out["jobs"].append(result)
        del workflow, evaluator, fns, tensor, bare
    out["maxrss_self_gb"] = _vm_hwm_gb()
    out["maxrss_children_gb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    Path(out_path).write_text(json.dumps(out, indent=1))


# ---------------------------------------------------------------------------------------------------------------
# parent side


def run(cfg: Config, res: Results) -> None:
    """Figures 4, 5a and the inference knobs into ``res``.

    Quick mode: the CPU-preset UNETR on a 56 x 56 x 100 block of a 256 x 256 x 100 phantom (about 63 x 63 x 124
    voxels after pre-processing, 3 windows), stacked 1, 2 and 4 times along z; the ratio figure uses the 4x volume.
    Full mode: the paper-scale UNETR on the 512 x 512 x 200 phantom (about 290 x 290 x 124 pre-processed voxels,
    72 windows), stacked likewise; peak memory on the CPU, timings on the GPU when there is one.
    """
    import torch

    workdir = Path(cfg.workdir).resolve() / "inference"
    workdir.mkdir(parents=True, exist_ok=True)
    preset = "cpu" if cfg.quick else "paper"
    overrides = model_overrides(preset)
    if cfg.quick:
        shape, crop, name = (256, 256, 100), (56, 56, 100), "56x56x100 block of a 256x256x100 CT"
    else:
        shape, crop, name = (512, 512, 200), None, "512x512x200 CT"
    log(f"inference: synthetic {name}, {preset} model")
    tag = "x".join(map(str, crop or shape))
    volumes = [make_volume(workdir / f"ct_{tag}_{t}x.nii.gz", shape, seed=0, tiles=t, crop=crop) for t in (1, 2, 4)]
    model = make_model(workdir / f"model_{preset}.pt", overrides)
    device = cfg.device or "cpu"
    column = "gpu" if cfg.device else "cpu"

    def job_of(device: str, jobs: list[dict], **extra: Any) -> dict[str, Any]:
        common = {"output_dir": str(workdir / "out"), "model_file": str(model), "device": device, **extra}
        return {
            "configs": ["inference.json"],
            "overrides": {**common, **overrides},
            "jobs": jobs,
            "threads": torch.get_num_threads(),
        }

    model_label = "CPU preset UNETR (train_cpu.json widths), quick mode" if cfg.quick else "paper-scale UNETR (ViT-B)"
    detail: dict[str, Any] = {"volumes": [str(v) for v in volumes], "model": preset, "overrides": overrides}

    log("inference: one cold bundle run in a fresh process on the CPU (peak memory)")
    main = volumes[2] if cfg.quick else volumes[0]
    main_name = f"{name} stacked 4 times along z" if cfg.quick else name
    cold = run_child(job_of("cpu", [{"input": str(main), "reps": 1}]), workdir, "cold")
    rss = max(cold["peak_tree_pss_gb"], cold["maxrss_self_gb"])  # sampling could miss a short peak of the process
    detail["cold"] = cold
    res.add(
        "inference_peak_rss_gb",
        rss,
        note=f"bundle process and its loader workers, PSS summed, sampled every 50 ms (RSS summed, counting shared "
        f"pages per process: {cold['peak_tree_rss_gb']:.2f} GB; bundle process alone, VmHWM: "
        f"{cold['maxrss_self_gb']:.2f} GB); cold run {cold['wall_s']:.1f} s incl. Python start-up",
        label=f"{main_name}, {model_label}, CPU",
    )

    log("inference: the same with num_workers 0 (the knob that sets the peak)")
    lean = run_child(job_of("cpu", [{"input": str(main), "reps": 1}], num_workers=0), workdir, "cold_workers0")
    detail["cold_num_workers_0"] = lean
    res.add(
        "inference_peak_rss_gb_num_workers_0",
        max(lean["peak_tree_pss_gb"], lean["maxrss_self_gb"]),
        note=f"cold run {lean['wall_s']:.1f} s; no loader worker process: the bundle process reads and pre-processes",
        label=f"{main_name}, {model_label}, CPU, --num_workers 0",
    )

    log(f"inference: end to end vs bare sliding window ({device}), interleaved; knobs; 1x/2x/4x voxels")
    on_gpu = device != "cpu"
    reps = cfg.reps if on_gpu and not cfg.quick else 2  # a paper-scale run on a CPU takes a minute or more
    jobs = [{"input": str(v), "reps": 1, "warmup": int(i == 0), "bare": on_gpu} for i, v in enumerate(volumes)]
    jobs[2 if cfg.quick else 0].update(reps=reps, bare=True, knobs=True)
    timing = run_child(job_of(device, jobs), workdir, "timing")
    job = timing["jobs"][2 if cfg.quick else 0]
    ratio = job["median_s"]["e2e"] / job["median_s"]["bare"]
    res.add(
        "inference_e2e_over_bare",
        ratio,
        column,
        note=f"e2e {job['median_s']['e2e']:.2f} s, bare {job['median_s']['bare']:.2f} s on "
        f"{'x'.join(map(str, job['preprocessed_shape'][2:]))} pre-processed voxels, {job['windows']} windows",
        label=f"{main_name}, {model_label}, {column.upper()}",
    )
    detail["timing"] = timing
    detail["knobs_s"] = job["knobs_s"]

    voxels = [float(np.prod(j["preprocessed_shape"][2:])) for j in timing["jobs"]]
    windows = [j["windows"] for j in timing["jobs"]]
    e2e = [j["median_s"]["e2e"] for j in timing["jobs"]]
    exponent, exponent_windows = fit_exponent(voxels, e2e), fit_exponent(windows, e2e)
    detail["scaling"] = {"voxels": voxels, "windows": windows, "e2e_s": e2e}
    res.add(
        "inference_voxel_exponent",
        exponent,
        column,
        note="e2e s ~ voxels^b over 1x/2x/4x (z-stacked copies); "
        + ", ".join(f"{v / 1e6:.2f} Mvox / {w} windows: {t:.1f} s" for v, w, t in zip(voxels, windows, e2e))
        + f"; vs window count b = {exponent_windows:.2f}",
        label=f"{name} stacked 1/2/4 times along z, {model_label}, {column.upper()}",
    )
    res.details["inference"] = detail


if __name__ == "__main__":
    child_main(sys.argv[1], sys.argv[2])

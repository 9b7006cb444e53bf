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

"""The segmentation inference bundle end to end against a bare sliding window, its peak memory, and its time against
volume size; knobs: sw_batch_size, bf16 autocast, channels-last.

The bundle runs in a child process (``python -m selfmedhpm_tools.benchmarks.inference JOB.json OUT.json``) so that
its peak memory (the child and its loader workers, PSS sampled with psutil; the child's ``VmHWM``) is its own. The
child builds the bundle from ``inference.json`` with ``monai.bundle.ConfigWorkflow`` and times ``evaluator.run()``
(read, pre-process, sliding window, softmax/argmax, invert, write) interleaved with a bare
``monai.inferers.sliding_window_inference`` of the same network and precision on the pre-processed tensor.
"""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import SEGMENT_CONFIGS, Config, Results, bundle_parser, fit_exponent, log, medians

CPU_PRESET_KEYS = ("roi_size", "sw_batch_size", "feature_size", "hidden_size", "mlp_dim", "num_heads")


def make_volume(path: Path, shape: tuple[int, int, int], tiles: int = 1, crop: tuple[int, ...] | None = None) -> Path:
    """A synthetic CT as NIfTI: its central ``crop`` block if given (the phantom's spacing adapts to ``shape``, so the
    body fills it), stacked ``tiles`` times along z with the same spacing."""
    from selfmedhpm_tools.phantom import generate_case, save_nifti

    if not path.is_file():
        image, _, affine = generate_case(0, shape=shape)
        if crop:
            start = [(s - c) // 2 for s, c in zip(image.shape, crop)]
            image = image[tuple(slice(a, a + c) for a, c in zip(start, crop))]
            affine = affine.copy()
            affine[:3, 3] += affine[:3, :3] @ np.array(start, dtype=float)
        save_nifti(np.concatenate([image] * tiles, axis=2), affine, path)
    return path


def make_model(path: Path, overrides: dict[str, Any]) -> Path:
    """A randomly initialised checkpoint of the inference bundle's network (timing does not depend on weights)."""
    import torch

    if not path.is_file():
        torch.manual_seed(0)
        net = bundle_parser(SEGMENT_CONFIGS, ["inference.json"], device="cpu", **overrides).get_parsed_content(
            "network_def"
        )
        torch.save({"model": net.state_dict()}, str(path))
    return path


def run_child(job: dict[str, Any], workdir: Path, name: str, timeout: float = 3600) -> dict[str, Any]:
    """Runs ``job`` in a fresh process (``python -m selfmedhpm_tools.benchmarks.inference JOB OUT``); returns its
    result plus ``wall_s``."""
    job_path, out_path = workdir / f"{name}.job.json", workdir / f"{name}.out.json"
    job_path.write_text(json.dumps(job, indent=1))
    start = time.perf_counter()
    command = [sys.executable, "-m", "selfmedhpm_tools.benchmarks.inference", str(job_path), str(out_path)]
    subprocess.run(command, check=True, timeout=timeout)
    return json.loads(out_path.read_text()) | {"wall_s": time.perf_counter() - start}


def _sample_memory(stop: threading.Event, peak: list[int]) -> None:
    """Until ``stop``, every 50 ms: the peak (PSS, RSS) summed over this process and its loader workers. PSS shares
    each page among the processes mapping it (the real footprint); RSS counts the pages the forked workers share
    once per process (an upper bound)."""
    import psutil

    me = psutil.Process()
    while not stop.wait(0.05):
        pss = rss = 0
        for proc in [me] + me.children(recursive=True):
            try:
                info = proc.memory_full_info()
            except psutil.Error:  # a worker may exit between listing and reading
                continue
            pss, rss = pss + getattr(info, "pss", info.rss), rss + info.rss
        peak[:] = max(peak[0], pss), max(peak[1], rss)


def _child_job(job: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """Child side, one volume: the bundle's ``evaluator.run()`` (and the bare sliding window, and the knobs on a
    3-window block of the pre-processed tensor) timed interleaved."""
    import torch
    from monai.bundle import ConfigWorkflow
    from monai.inferers import sliding_window_inference
    from selfmedhpm.utils import autocast

    start = time.perf_counter()
    workflow = ConfigWorkflow(
        config_file=[str(SEGMENT_CONFIGS / c) for c in job["configs"]],
        workflow_type="infer",
        meta_file=str(SEGMENT_CONFIGS / "metadata.json"),
        logging_file=str(SEGMENT_CONFIGS / "logging.conf"),
        **job["overrides"],
        input_file=spec["input"],
    )
    workflow.initialize()
    parser = workflow.parser
    evaluator = parser.get_parsed_content("evaluator")
    result: dict[str, Any] = {"input": spec["input"], "init_s": time.perf_counter() - start}
    device = parser.get_parsed_content("device")
    tensor = parser.get_parsed_content("preprocessing")({"image": spec["input"]})["image"].as_tensor()[None].to(device)
    network = parser.get_parsed_content("network").eval()
    roi, sw, overlap = (parser.get_parsed_content(k) for k in ("roi_size", "sw_batch_size", "overlap"))
    precision = parser.get_parsed_content("precision") if "precision" in parser else "fp32"

    def bare(net: Any = network, x: Any = tensor, sw_batch_size: int = sw, precision: str = precision) -> None:
        with torch.no_grad(), autocast(x.device, precision):  # as MONAI's evaluator
            sliding_window_inference(x, roi, sw_batch_size, net, overlap=overlap)

    result["preprocessed_shape"] = list(tensor.shape)
    result["windows"] = math.prod(
        1 if s <= r else math.ceil((s - r) / max(int(r * (1 - overlap)), 1)) + 1 for s, r in zip(tensor.shape[2:], roi)
    )
    fns = {"e2e": evaluator.run} | ({"bare": bare} if spec.get("bare") else {})
    result["median_s"] = medians(fns, reps=spec.get("reps", 1), warmup=spec.get("warmup", 0), device=device)
    if spec.get("knobs"):
        axis = int(np.argmax(tensor.shape[2:]))
        block = tensor[(..., *(slice(0, 2 * r if i == axis else r) for i, r in enumerate(roi)))]  # 3 windows
        cl_net = copy.deepcopy(network).to(memory_format=torch.channels_last_3d)
        knobs = {
            f"sw_batch_size_{k}": (lambda n=n: bare(x=block, sw_batch_size=n))
            for k, n in (("configured", sw), ("1", 1), ("double", 2 * sw))
        }
        result["sw_batch_size"] = sw
        knobs["channels_last_3d"] = lambda: bare(cl_net, block.contiguous(memory_format=torch.channels_last_3d))
        if "bf16" in job["precisions"]:
            knobs["bf16"] = lambda: bare(x=block, precision="bf16")
        result["knobs_s"] = medians(knobs, reps=spec.get("reps", 1), device=device) | {"block_shape": list(block.shape)}
    return result


def child_main(job_path: str, out_path: str) -> None:
    """Child process: runs the volumes of ``job_path``, writes their timings and its ``VmHWM`` to ``out_path``
    (``ru_maxrss`` would not do: Linux carries the parent's peak over ``fork`` + ``execve``)."""
    import torch

    job = json.loads(Path(job_path).read_text())
    torch.set_num_threads(job.get("threads") or torch.get_num_threads())
    peak, stop = [0, 0], threading.Event()
    if job.get("memory"):  # not while timing: reading smaps costs CPU time
        threading.Thread(target=_sample_memory, args=(stop, peak), daemon=True).start()
    out = {"jobs": [_child_job(job, spec) for spec in job["jobs"]]}
    stop.set()
    status = Path("/proc/self/status").read_text().splitlines()
    out["maxrss_self_gb"] = next(int(line.split()[1]) / 2**20 for line in status if line.startswith("VmHWM:"))
    out["peak_tree_pss_gb"], out["peak_tree_rss_gb"] = peak[0] / 2**30, peak[1] / 2**30
    Path(out_path).write_text(json.dumps(out, indent=1))


def run(cfg: Config, res: Results, peak: dict[str, float]) -> dict[str, Any]:
    """The inference figures into ``res``. Quick mode: the CPU-preset UNETR on a 56 x 56 x 100 block of a
    256 x 256 x 100 phantom (3 windows), stacked 1, 2 and 4 times along z; the ratio and the memory figures use the
    4x volume. Full mode: the paper-scale UNETR on the 512 x 512 x 200 phantom, stacked likewise; peak memory on the
    CPU, timings on the GPU when there is one."""
    import torch

    workdir = Path(cfg.workdir).resolve() / "inference"
    workdir.mkdir(parents=True, exist_ok=True)
    cpu = json.loads((SEGMENT_CONFIGS / "train_cpu.json").read_text())
    overrides = {k: cpu[k] for k in CPU_PRESET_KEYS if k in cpu} if cfg.quick else {}
    shape, crop = ((256, 256, 100), (56, 56, 100)) if cfg.quick else ((512, 512, 200), None)
    name = "56x56x100 block of a 256x256x100 CT" if cfg.quick else "512x512x200 CT"
    tag = "x".join(map(str, crop or shape))
    volumes = [make_volume(workdir / f"ct_{tag}_{t}x.nii.gz", shape, tiles=t, crop=crop) for t in (1, 2, 4)]
    model = make_model(workdir / f"model_{'cpu' if cfg.quick else 'paper'}.pt", overrides)
    device, column = (cfg.device, "gpu") if cfg.device else ("cpu", "cpu")
    model_label = "CPU preset UNETR (train_cpu.json widths), quick mode" if cfg.quick else "paper-scale UNETR (ViT-B)"
    main, main_name = (2, f"{name} stacked 4 times along z") if cfg.quick else (0, name)

    def child(name: str, device: str, jobs: list[dict], memory: bool = False, **extra: Any) -> dict[str, Any]:
        settings = {"output_dir": str(workdir / "out"), "model_file": str(model), "device": device, **overrides}
        job = {
            "configs": ["inference.json"],
            "overrides": settings | extra,
            "jobs": jobs,
            "threads": torch.get_num_threads(),
            "precisions": list(cfg.precisions),
            "memory": memory,
        }
        return run_child(job, workdir, name)

    log(f"inference: synthetic {name}, {model_label}; cold runs in fresh processes (peak memory), workers and none")
    detail: dict[str, Any] = {"volumes": [str(v) for v in volumes], "overrides": overrides}
    for key, extra in (("inference_peak_rss_gb", {}), ("inference_peak_rss_gb_num_workers_0", {"num_workers": 0})):
        cold = detail[key] = child(key, "cpu", [{"input": str(volumes[main])}], memory=True, **extra)
        note = (
            f"PSS of the bundle process and its loader workers, sampled every 50 ms (RSS summed: "
            f"{cold['peak_tree_rss_gb']:.2f} GB; process alone, VmHWM {cold['maxrss_self_gb']:.2f} GB); cold run "
            f"{cold['wall_s']:.1f} s"
        )
        where = f"{main_name}, {model_label}, CPU" + (", --num_workers 0" if extra else "")
        res.add(key, max(cold["peak_tree_pss_gb"], cold["maxrss_self_gb"]), note=note, label=where)

    log(f"inference: end to end vs bare sliding window ({device}), interleaved; knobs; 1x/2x/4x voxels")
    jobs = [{"input": str(v), "warmup": int(i == 0), "bare": device != "cpu"} for i, v in enumerate(volumes)]
    detail["reps"] = cfg.reps if device != "cpu" and not cfg.quick else 2
    jobs[main].update(reps=detail["reps"], bare=True, knobs=True)
    timing = detail["timing"] = child("timing", device, jobs)
    job = timing["jobs"][main]
    detail["knobs_s"], med = job["knobs_s"], job["median_s"]
    detail["overhead_s"], detail["sw_batch_size"] = med["e2e"] - med["bare"], job["sw_batch_size"]
    note = (
        f"e2e {med['e2e']:.2f} s, bare {med['bare']:.2f} s on {'x'.join(map(str, job['preprocessed_shape'][2:]))} "
        f"pre-processed voxels, {job['windows']} windows"
    )
    res.add("inference_e2e_over_bare", med["e2e"] / med["bare"], column, note, f"{main_name}, {model_label}")
    voxels = [float(np.prod(j["preprocessed_shape"][2:])) for j in timing["jobs"]]
    windows, e2e = [j["windows"] for j in timing["jobs"]], [j["median_s"]["e2e"] for j in timing["jobs"]]
    detail["scaling"] = {"voxels": voxels, "windows": windows, "e2e_s": e2e}
    note = (
        "e2e s ~ voxels^b over 1x/2x/4x (z-stacked copies); "
        + ", ".join(f"{v / 1e6:.2f} Mvox / {w} windows: {t:.1f} s" for v, w, t in zip(voxels, windows, e2e))
        + f"; vs window count b = {fit_exponent(windows, e2e):.2f}"
    )
    label = f"{name} stacked 1/2/4 times along z, {model_label}"
    res.add("inference_voxel_exponent", fit_exponent(voxels, e2e), column, note, label)
    return detail


if __name__ == "__main__":
    child_main(sys.argv[1], sys.argv[2])

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

"""Entry point of the benchmarks: ``python -m selfmedhpm_tools.benchmarks.run [--quick] [--only step loader ...]``.

Measures the figures of docs/benchmarks.md on this machine (the CPU column, and the GPU column when a GPU is
present), writes ``docs/benchmarks.md`` and ``docs/benchmarks.json`` and prints the figures table. Quick mode
(``make bench-quick``) keeps to minutes on 2 CPU cores; full mode (``make bench``) is meant for GPU machines.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import traceback
from pathlib import Path

import torch
from selfmedhpm.errors import install_excepthook

from . import batches, inference, loader, precision, report, step
from .common import ROOT, Config, Results, log, machine_info

SECTIONS = {
    "step": step.run,
    "host": step.run_host,
    "batches": batches.run,
    "loader": loader.run,
    "inference": inference.run,
    "precision": precision.run,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m selfmedhpm_tools.benchmarks.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small settings, minutes on 2 CPU cores")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), default=(), help="run only these sections")
    parser.add_argument(
        "--reps", type=int, default=Config.reps, help="timed repetitions per measurement (medians reported)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="folder of benchmarks.md / .json")
    parser.add_argument("--workdir", type=Path, default=ROOT / "results" / "bench", help="scratch folder")
    parser.add_argument("--no-gpu", action="store_true", help="measure the CPU column only")
    parser.add_argument(
        "--all-precisions",
        action="store_true",
        help="also bf16 and int8 where this CPU emulates them (about 50 times slower than fp32: hours)",
    )
    parser.add_argument("--render-only", action="store_true", help="rewrite benchmarks.md from benchmarks.json")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: one per core)")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error(f"--reps must be at least 1, got {args.reps}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Runs the selected sections (a failed one is reported and the others go on), writes the report, prints the
    table; returns 1 if a section failed."""
    args = parse_args(argv)
    if args.render_only:
        payload = json.loads((args.out / "benchmarks.json").read_text())
        res = Results(figures=payload["figures"], details=payload["details"])
        print(report.write(res, payload["machine"], payload["mode"], args.out, payload["elapsed_s"]))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the inference bundle's child process
    cfg = Config(
        quick=args.quick,
        reps=args.reps,
        workdir=str(args.workdir),
        device="cuda" if torch.cuda.is_available() and not args.no_gpu else None,
        only=tuple(args.only),
    )
    if args.all_precisions:
        cfg.precisions = ("fp32", "bf16", "int8")
    info = machine_info() | {"precisions_measured": list(cfg.precisions), "reps": cfg.reps}
    log(
        f"{cfg.mode} mode on {info['cpu_model']}, {info['cpu_cores_usable']} cores, precisions {cfg.precisions}, "
        f"GPU: {info['gpu'] or 'none'}"
    )
    start, res, failed = time.perf_counter(), Results(), []
    peak = step.peaks(cfg)
    res.details["matmul_peak_gflops"] = {k: v / 1e9 for k, v in peak.items()}
    for name, fn in SECTIONS.items():
        if not cfg.wants(name) or (name == "batches" and not cfg.device):  # the batch table: GPU only
            continue
        t0 = time.perf_counter()
        try:
            res.details[name] = fn(cfg, res, peak)
        except Exception:  # noqa: BLE001 - report the failure, keep the other figures
            failed.append(name)
            res.details.setdefault("errors", {})[name] = traceback.format_exc()
            traceback.print_exc()
        res.details.setdefault("section_s", {})[name] = time.perf_counter() - t0
        log(f"{name}: {time.perf_counter() - t0:.0f} s")
    info["load_end"] = round(os.getloadavg()[0], 2)
    elapsed = time.perf_counter() - start
    print("\n" + report.write(res, info, cfg.mode, args.out, elapsed))
    print(f"\nwrote {args.out / 'benchmarks.md'} and {args.out / 'benchmarks.json'} in {elapsed / 60:.1f} min")
    if failed:
        print(f"FAILED sections: {', '.join(failed)} (tracebacks in benchmarks.json details.errors)")
    return 1 if failed else 0


if __name__ == "__main__":
    install_excepthook()  # this process is the command: a user error ends it with one ERROR line
    raise SystemExit(main())

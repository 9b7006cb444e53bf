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
(``make bench-quick``) keeps to a few minutes on 2 CPU cores; full mode (``make bench``) is meant for GPU machines.
"""

from __future__ import annotations

import argparse
import os
import time
import traceback
from pathlib import Path

import torch

from . import batches, host, inference, loader, notes, precision, report, step
from .common import ROOT, Config, Results, log, machine_info

SECTIONS = ("step", "host", "batches", "loader", "inference", "precision")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m selfmedhpm_tools.benchmarks.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small settings, a few minutes on 2 CPU cores")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=(), help="run only these sections")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions (default 3 quick, 5 full)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="folder of benchmarks.md / .json")
    parser.add_argument("--workdir", type=Path, default=ROOT / "results" / "bench", help="scratch folder")
    parser.add_argument("--no-gpu", action="store_true", help="measure the CPU column only")
    parser.add_argument(
        "--render-only", action="store_true", help="rewrite benchmarks.md from benchmarks.json, measure nothing"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's, one per core)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Runs the selected sections, writes the report, prints the table; 1 if a section failed."""
    args = parse_args(argv)
    if args.render_only:
        return render(args.out)
    if args.threads:
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the inference bundle's child process
    device = "cuda" if torch.cuda.is_available() and not args.no_gpu else None
    cfg = Config(
        quick=args.quick,
        reps=args.reps or (3 if args.quick else 5),
        warmup=1,
        device=device,
        workdir=str(args.workdir),
        only=tuple(args.only),
    )
    info = machine_info()
    info["load_start"] = info.pop("load_average_1m")
    log(f"{cfg.mode} mode on {info['cpu_model']} ({info['cpu_cores_usable']} cores), GPU: {info['gpu'] or 'none'}")
    start = time.perf_counter()
    res, failed = Results(), []
    peaks = step.peaks(cfg)
    res.details["matmul_peak"] = peaks

    def section(name: str, fn) -> None:
        if not cfg.wants(name):
            return
        t0 = time.perf_counter()
        try:
            fn()
        except Exception:  # noqa: BLE001 - report the failure, keep the other figures
            failed.append(name)
            res.details.setdefault("errors", {})[name] = traceback.format_exc()
            traceback.print_exc()
        res.details.setdefault("section_s", {})[name] = time.perf_counter() - t0
        log(f"{name}: {time.perf_counter() - t0:.0f} s")

    section("step", lambda: step.run(cfg, res, peaks))
    section("host", lambda: res.details.update(host=host.run(cfg, res)))
    if cfg.device:  # the paper-scale step by batch size: GPU only
        section("batches", lambda: res.details.update(gpu_batches=batches.run(cfg, res, peaks)))
    section("loader", lambda: loader.run(cfg, res))
    section("inference", lambda: inference.run(cfg, res))
    section("precision", lambda: precision.run(cfg, res))

    info["load_end"] = round(os.getloadavg()[0], 2)
    res.sections = report.detail_sections(res)
    elapsed = time.perf_counter() - start
    table = report.write(res, info, cfg.mode, args.out, notes.values(res, info, cfg), elapsed)
    print()
    print(table)
    print(f"\nwrote {args.out / 'benchmarks.md'} and {args.out / 'benchmarks.json'} in {elapsed / 60:.1f} min")
    if failed:
        print(f"FAILED sections: {', '.join(failed)} (tracebacks in benchmarks.json details.errors)")
    return 1 if failed else 0


def render(out: Path) -> int:
    """Rewrites ``out/benchmarks.md`` from ``out/benchmarks.json`` (after a change of the report's wording)."""
    import json

    payload = json.loads((out / "benchmarks.json").read_text())
    res = Results(figures=payload["figures"], details=payload["details"])
    res.sections = report.detail_sections(res)
    cfg = Config(quick=payload["mode"] == "quick")
    table = report.write(
        res, payload["machine"], payload["mode"], out, notes.values(res, payload["machine"], cfg), payload["elapsed_s"]
    )
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

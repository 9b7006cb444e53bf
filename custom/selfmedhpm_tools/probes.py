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

"""When does self-pretraining pay: small studies (probes) at other scales, summarised side by side, so that a reader
sees MAE - scratch (and HPM - scratch) against the pretraining compute, tokens per crop and data.

A probe is a finished study folder (``python -m selfmedhpm_tools.study --out FOLDER ...`` with a few arms, budgets
and seeds). ``add`` summarises it into a JSON list (``docs/results/probes.json``); the study's report renders that
list as a table and a figure.

Examples::

    python -m selfmedhpm_tools.study --out results/probe_long --arms scratch mae --budgets 1 --pretrain_epochs 200
    python -m selfmedhpm_tools.probes add results/probe_long --into docs/results/probes.json --label "200 epochs"
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["summarize", "add", "section"]

PAIRS = (("mae", "scratch"), ("hpm", "scratch"), ("hpm_reconstruction", "scratch"), ("hpm_reconstruction", "mae"))


def summarize(folder: Path, label: str) -> dict[str, Any]:
    """One probe's settings and paired differences (13-organ mean test Dice, 95% bootstrap CI over test cases and
    seeds) from its study folder.

    Args:
        folder: a study's ``--out`` (with ``study.json`` and finished runs).
        label: what the probe changes, in a few words.
    """
    from selfmedhpm_tools.stats import case_means, paired_bootstrap_ci, paired_differences
    from selfmedhpm_tools.study import Protocol
    from selfmedhpm_tools.study_report import collect

    record = json.loads((folder / "study.json").read_text())
    protocol = Protocol(**record["protocol"])
    runs = collect(folder, protocol)
    organs = record["class_names"][1:]
    per_case = {key: case_means(run["dice"], organs) for key, run in runs.items()}
    pretrain = record["stages"]["pretrain"]["overrides"]
    finetune = record["stages"]["finetune"]["overrides"]
    roi = pretrain.get("roi_size", finetune.get("roi_size", [96, 96, 96]))
    iterations = []
    for history in sorted((folder / "runs" / "pretrain").glob("*_seed*/history.json")):
        iterations.append(sum(epoch["iterations"] for epoch in json.loads(history.read_text())))
    differences = []
    for budget in protocol.budgets:
        for a, b in PAIRS:
            xs, ys, seeds = paired_differences(per_case, a, b, budget)
            if xs:
                mean, low, high = paired_bootstrap_ci(xs, ys)
                differences.append({"budget": budget, "pair": f"{a} - {b}", "mean": mean, "low": low, "high": high,
                                    "seeds": seeds, "pairs": len(xs)})  # fmt: skip
    return {
        "label": label,
        "folder": folder.name,
        "tokens_per_crop": int(math.prod(int(s) // 16 for s in roi)),
        "roi_size": roi,
        "pixdim": pretrain.get("pixdim", finetune.get("pixdim")),
        "pretraining_images": len(record["splits"]["pretraining"]),
        "pretraining_epochs": pretrain.get("epochs"),
        "pretraining_iterations": int(np.mean(iterations)) if iterations else 0,
        "finetune_iterations": protocol.settings()["finetune_iterations"],
        "finetune": finetune,
        "differences": differences,
    }


def add(folder: Path, into: Path, label: str) -> dict[str, Any]:
    """Summarises the probe of ``folder`` into the JSON list ``into`` (replacing an entry of the same label)."""
    entry = summarize(Path(folder).resolve(), label)
    probes = json.loads(into.read_text()) if into.is_file() else []
    probes = [p for p in probes if p["label"] != label] + [entry]
    into.parent.mkdir(parents=True, exist_ok=True)
    into.write_text(json.dumps(probes, indent=1))
    return entry


def section(path: Path, figure: Path) -> list[str]:
    """The report's lines on the probes of ``path`` (none when it is missing) and their figure at ``figure``: MAE -
    scratch (and the other pairs measured) against the number of pretraining images."""
    from selfmedhpm_tools import reports
    from selfmedhpm_tools.reports import plt

    if not path.is_file():
        return []
    probes = json.loads(path.read_text())
    rows = []
    for number, probe in enumerate(probes, 1):
        for d in probe["differences"]:
            rows.append([f"P{number}: {probe['label']}", probe["tokens_per_crop"], probe["pretraining_images"],
                         probe["pretraining_iterations"], probe.get("finetune_iterations", "-"), d["budget"],
                         d["pair"], f"{d['mean']:+.3f}", f"[{d['low']:+.3f}, {d['high']:+.3f}]",
                         d["seeds"]])  # fmt: skip
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for pair in dict.fromkeys(d["pair"] for p in probes for d in p["differences"] if d["budget"] == 1):
        points, seen = [], {}
        for n, p in enumerate(probes, 1):
            for d in p["differences"]:
                if d["pair"] == pair and d["budget"] == 1:  # probes with as many images side by side, not on top
                    images = p["pretraining_images"]
                    seen[images] = seen.get(images, -1) + 1
                    points.append((n, images * 1.12 ** seen[images], d))
        x = [it for _, it, _ in points]
        y = [d["mean"] for _, _, d in points]
        err = [[d["mean"] - d["low"] for *_, d in points], [d["high"] - d["mean"] for *_, d in points]]
        ax.errorbar(x, y, yerr=err, marker="o", linestyle="none", capsize=3, label=pair)
        for number, it, d in points:  # the probe's number of the table beside each point
            ax.annotate(f"P{number}", (it, d["mean"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    counts = sorted({p["pretraining_images"] for p in probes})
    ax.set_xticks(counts, [str(c) for c in counts])
    ax.set_xlabel("pretraining images (probes with as many set side by side)")
    ax.set_ylabel("test mean Dice difference, 1 labelled case")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    reports._save(fig, figure)
    header = ["probe (P<n> in the figure)", "tokens per crop", "pretraining images", "pretraining iterations",
              "fine-tuning iterations", "labelled cases", "difference", "mean Dice", "95% CI", "seeds"]  # fmt: skip
    return [
        "## When does pretraining pay (probes at other scales)",
        "",
        "Smaller studies with one setting changed at a time (a few arms, 3 seeds, 1 labelled case where the table "
        "names no other), summarised by "
        "`python -m selfmedhpm_tools.probes add`; each probe's settings are in `probes.json`. Paired differences of "
        "the mean test Dice over all organs, 95% bootstrap intervals over test cases and seeds.",
        "",
        f"![Differences against pretraining images](figures/{figure.name})",
        "",
        reports.markdown_table(header, rows),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selfmedhpm_tools.probes", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    adding = commands.add_parser("add", help="summarise a finished probe study into a probes JSON list")
    adding.add_argument("folder", type=Path, help="the probe's study folder (its --out)")
    adding.add_argument("--into", type=Path, default=Path("docs/results/probes.json"))
    adding.add_argument("--label", required=True, help="what the probe changes, in a few words")
    args = parser.parse_args(argv)
    entry = add(args.folder, args.into, args.label)
    for d in entry["differences"]:
        print(f"{entry['label']}: {d['budget']} labelled, {d['pair']} {d['mean']:+.3f} [{d['low']:+.3f}, "
              f"{d['high']:+.3f}] ({d['pairs']} pairs)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

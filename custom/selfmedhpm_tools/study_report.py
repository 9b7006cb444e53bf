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

"""The study's report: ``README.md`` with its tables and figures, and ``study.json`` (what two users need to compare
their studies), rebuilt from whatever runs are finished."""

from __future__ import annotations

import csv
import json
import math
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from selfmedhpm_tools.stats import aggregate, case_means, paired_differences
from selfmedhpm_tools.study import ARMS, COMPARISONS, PRETRAIN, SEGMENT, Protocol, _done, stage_settings
from selfmedhpm_tools.study_data import VALIDATION_SEED, StudyData

__all__ = ["collect", "ranking_section", "write_record", "write_report"]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def collect(out: Path, protocol: Protocol) -> dict[str, Any]:
    """Everything the report needs from the finished runs."""
    runs: dict[tuple[str, int, int], dict] = {}
    for arm in protocol.arms:
        for budget in protocol.budgets:
            for seed in protocol.seeds:
                folder = out / "runs" / "finetune" / f"{arm}_n{budget}_seed{seed}"
                if not _done(folder):
                    continue
                runs[(arm, budget, seed)] = {
                    "summary": json.loads((folder / "eval" / "summary.json").read_text()),
                    "dice": _read_csv(folder / "eval" / "dice_per_case.csv"),
                    "history": json.loads((folder / "history.json").read_text()),
                    "seconds": json.loads((folder / "done.json").read_text())["seconds"],
                }
    return runs


def ranking_section(out: Path, protocol: Protocol) -> list[str]:
    """The report's lines on whether the mining mines: per arm with a loss predictor, each teacher view's figures on the
    test crops (:func:`~selfmedhpm_tools.metrics.mining_figures`, mean +- std over seeds of its ``ranking.json``)."""
    from selfmedhpm_tools.metrics import mining_table

    lines = []
    for arm in protocol.arms:
        found = [out / "runs" / "pretrain" / f"{arm}_seed{seed}" / "ranking.json" for seed in protocol.seeds]
        found = [json.loads(path.read_text()) for path in found if path.is_file()]
        if not found:
            continue
        names = found[0]["scorers"]
        means = {n: {k: aggregate([r["scorers"][n][k] for r in found])[0] for k in names[n]} for n in names}
        spread = {n: {k: aggregate([r["scorers"][n][k] for r in found])[1] for k in names[n]} for n in names}
        masked = aggregate([r["masked_tau_student"] for r in found])
        position = aggregate([r["masked_tau_position_only"] for r in found])
        view = (ARMS[arm] or {}).get("teacher_view", "full")
        chosen = (
            "masks at random" if ARMS[arm].get("final_hard_ratio") == 0.0 else f"chose its masks with the {view} view"
        )
        lines += [
            f"### {arm} ({len(found)} seeds; {chosen})",
            "",
            mining_table(means, spread),
            f"Masked pass of the student (what the ranking loss trains): tau {masked[0]:.3f} +- {masked[1]:.3f}, "
            f"patch position alone {position[0]:.3f} +- {position[1]:.3f}.",
            "",
        ]
    if not lines:
        return []
    return [
        "## Does the mining mine (test crops, mean +- std over seeds)",
        "",
        "Per arm with a loss predictor, its EMA teacher scored 4 crops of each test case in each view: Kendall tau of "
        "the scores against each patch's true reconstruction loss when masked (8 random masks); the masked patches' "
        "reconstruction loss under the HPM mask those scores choose (75% masked, half of them the top-scored) over "
        "that under random masks (above 1: harder than random); and that gain as a share of the oracle's (the same "
        "recipe fed each patch's true loss), the figure that stays comparable across scales.",
        "",
        *lines,
    ]


SPLITS = ("pool", "validation", "test", "pretraining")


def write_record(out: Path, protocol: Protocol, data: StudyData, source: str) -> Path:
    """``out/study.json``: what two users need to compare their studies: the data list's path and checksum, the
    cases of each split, the protocol and the exact config files (with their checksums) and overrides of each
    stage."""
    import hashlib

    stages = stage_settings(protocol, data)
    for stage, bundle in (("pretrain", PRETRAIN), ("finetune", SEGMENT)):
        files = [Path(c) if Path(c).is_absolute() else bundle / "configs" / c for c in stages[stage]["configs"]]
        stages[stage]["sha256"] = {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    record = {
        "source": source,
        "datalist": str(data.datalist),
        "datalist_sha256": data.checksum,
        "class_names": data.class_names,
        "protocol": {k: v for k, v in vars(protocol).items()},
        "validation_seed": VALIDATION_SEED,
        "splits": {name: [c["image"] for c in getattr(data, name)] for name in SPLITS},
        "stages": stages,
        "arms": {arm: ARMS[arm] for arm in protocol.arms},
    }  # fmt: skip
    path = out / "study.json"
    path.write_text(json.dumps(record, indent=1, default=list))
    return path


def write_report(
    out: Path, protocol: Protocol, runs: Mapping, wall: float, command: str, data: StudyData, source: str
) -> Path:
    """``out/README.md`` and ``out/figures/*.png`` from the finished runs (and the probes of ``out/probes.json``:
    :mod:`selfmedhpm_tools.probes`); ``source``: what the data are."""
    from selfmedhpm_tools import probes, reports
    from selfmedhpm_tools.stats import paired_bootstrap_ci

    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    settings = protocol.settings()
    organs = list(next(iter(runs.values()))["summary"]["organs"]) if runs else data.class_names[1:]
    per_case = {key: case_means(run["dice"], organs) for key, run in runs.items()}
    stages = stage_settings(protocol, data)
    pretrain_seconds = sum(
        json.loads(path.read_text())["seconds"]
        for path in (out / "runs" / "pretrain" / f"{arm}_seed{seed}" / "done.json" for arm in protocol.arms
                     for seed in protocol.seeds)
        if path.is_file()
    )  # fmt: skip
    finetune_seconds = sum(run["seconds"] for run in runs.values())
    run_minutes = (pretrain_seconds + finetune_seconds) / 60
    lines = [
        f"# Did self-pretraining help with few labels ({source})",
        "",
        f"Generated by `{command}` in {wall / 60:.0f} min (this invocation; its runs took {run_minutes:.0f} min in "
        f"all, those finished earlier included) on {platform.node() or 'this machine'} "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs); preset `{protocol.preset}`; arms "
        f"{list(protocol.arms)}; labelled cases {list(protocol.budgets)}; seeds {list(protocol.seeds)}. "
        f"{len(runs)} fine-tuning runs finished.",
        "",
        f"Data: `{data.datalist}` (SHA-256 `{data.checksum[:16]}...`): {data.describe()}. The test set is the data "
        f"list's held-out split; the {len(data.validation)} model-selection cases are a seeded draw "
        f"(seed {VALIDATION_SEED}) from its labelled training cases, the same for every run; pretraining reads the "
        "unlabelled images and those of the training cases, never a test image. Label set: "
        f"{len(data.class_names) - 1} classes{' (BTCV)' if data.labels is None else f' from `{data.labels}`'}. The "
        "splits, the config files (with checksums) and every override are in `study.json`.",
        "",
        f"Pretraining: `{' + '.join(stages['pretrain']['configs'])}` with "
        f"{json.dumps(stages['pretrain']['overrides'])}; fine-tuning: {settings['finetune_iterations']} iterations "
        f"whatever the label budget, with `{' + '.join(Path(c).name for c in stages['finetune']['configs'])}` and "
        f"{json.dumps(stages['finetune']['overrides'])}.",
        "",
        "![Dice against labelled cases](figures/dice_vs_labels.png)",
        "",
        "## Test Dice, mean +- std over seeds",
        "",
    ]
    groups = [("all_organs", f"{len(organs)}-organ mean Dice")]
    if any("transunet_8_organs" in run["summary"]["mean_dice"] for run in runs.values()):
        groups.append(("transunet_8_organs", "8-organ mean Dice"))
    header = ["arm", "labelled cases", "runs", *(title for _, title in groups), "mean HD95 (mm)"]
    rows = []
    for arm in protocol.arms:
        for budget in protocol.budgets:
            found = [runs[k] for k in runs if k[0] == arm and k[1] == budget]
            if not found:
                continue
            cells = [arm, budget, len(found)]
            getters = [lambda r, g=group: r["summary"]["mean_dice"].get(g) for group, _ in groups]
            for getter in (*getters, lambda r: r["summary"].get("mean_hd95_mm", {}).get("all_organs")):
                mean, std = aggregate([float("nan") if getter(r) is None else getter(r) for r in found])
                cells.append(f"{mean:.3f} +- {std:.3f}")
            rows.append(cells)
    lines += [
        reports.markdown_table(header, rows),
        "## Paired differences (95% bootstrap CI over test cases and seeds)",
        "",
    ]
    diff_rows = []
    for budget in protocol.budgets:
        for a, b in COMPARISONS:
            if a not in protocol.arms or b not in protocol.arms:
                continue
            xs, ys, seeds = paired_differences(per_case, a, b, budget)
            if not xs:
                continue
            mean, low, high = paired_bootstrap_ci(xs, ys)
            diff_rows.append([budget, f"{a} - {b}", f"{mean:+.3f}", f"[{low:+.3f}, {high:+.3f}]", seeds, len(xs)])
    diff_header = ["labelled cases", "difference", f"{len(organs)}-organ mean Dice", "95% CI", "seeds", "pairs"]
    halves = ""
    if "lp_random" in protocol.arms:
        halves = (" The two halves of HPM: `hpm* - lp_random` is what choosing hard masks adds (the same loss predictor"
                  " trained in both), `lp_random - mae` what training the loss predictor does to the encoder (masks"
                  " random in both).")  # fmt: skip
    lines += [
        reports.markdown_table(diff_header, diff_rows),
        "A difference whose interval excludes 0 is a measured effect at this scale; one that includes 0 is not."
        + halves,
        "",
        "## Per-organ test Dice and HD95 (mm), mean +- std over seeds",
        "",
    ]
    columns = [f"{arm}, n={budget}" for arm in protocol.arms for budget in protocol.budgets]
    for metric, title in (("dice", "Dice"), ("hd95_mm", "HD95 (mm)")):
        organ_rows = []
        for organ in organs:
            row = [organ]
            for arm in protocol.arms:
                for budget in protocol.budgets:
                    found = [r["summary"]["organs"][organ].get(metric, {}).get("mean") for k, r in runs.items()
                             if k[:2] == (arm, budget)]  # fmt: skip
                    mean, std = aggregate([float("nan") if v is None else v for v in found])
                    row.append("" if not found else "n/a" if math.isnan(mean) else f"{mean:.3f} +- {std:.3f}")
            organ_rows.append(row)
        lines += [f"### {title}", "", reports.markdown_table(["organ", *columns], organ_rows)]
    lines += ["n/a: the organ was predicted in no run of that arm and budget, so its HD95 is undefined.", ""]
    lines += ranking_section(out, protocol)
    lines += probes.section(out / "probes.json", figures / "pretraining_pays.png")
    _figures(figures, protocol, runs, len(organs))
    lines += [
        "## Figures",
        "",
        "- `figures/dice_vs_labels.png`: test 13-organ mean Dice against labelled cases, per arm (mean +- std).",
        "- `figures/dice_per_organ.png`: per-organ test Dice at the largest label budget.",
        "- `figures/learning_curves.png`: validation mean Dice during fine-tuning, per arm.",
        "- `figures/teacher_first_epoch_hpm.png`, `figures/teacher_last_epoch_hpm.png`: the HPM teacher's predicted "
        "loss on the same slices after the first and the last pretraining epoch, with reconstructions.",
        "",
        f"Wall time of the runs (each run's `done.json`): pretraining {pretrain_seconds / 60:.0f} min, fine-tuning "
        f"with evaluation {finetune_seconds / 60:.0f} min.",
        "",
    ]
    path = out / "README.md"
    path.write_text("\n".join(lines))
    return path


def _figures(figures: Path, protocol: Protocol, runs: Mapping, organs: int) -> None:
    from selfmedhpm_tools import reports
    from selfmedhpm_tools.reports import plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for arm in protocol.arms:
        points = []
        for budget in protocol.budgets:
            values = [r["summary"]["mean_dice"]["all_organs"] for k, r in runs.items() if k[:2] == (arm, budget)]
            if values:
                points.append((budget, *aggregate([float("nan") if v is None else v for v in values])))
        if points:
            x, mean, std = zip(*points)
            ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, label=arm)
    ax.set_xscale("log")
    ax.set_xticks(list(protocol.budgets), [str(b) for b in protocol.budgets])
    ax.set_xlabel("labelled training cases")
    ax.set_ylabel(f"test mean Dice ({organs} organs)")
    ax.legend()
    ax.grid(alpha=0.3)
    reports._save(fig, figures / "dice_vs_labels.png")
    largest = max(protocol.budgets)
    summaries = {arm: r["summary"] for (arm, n, seed), r in runs.items() if n == largest and seed == protocol.seeds[0]}
    if summaries:
        reports.plot_dice_bars(summaries, figures / "dice_per_organ.png")
    histories = {arm: r["history"] for (arm, n, seed), r in runs.items() if n == largest and seed == protocol.seeds[0]}
    if histories:
        reports.plot_curves(None, histories, figures / "learning_curves.png")

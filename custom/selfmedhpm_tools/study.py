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

"""What HPM pretraining buys with few labels: scratch vs MAE vs HPM vs loss-prediction-only, over seeds and label
budgets, on synthetic CT, with paired confidence intervals. ``make study`` / ``make study-quick``.

Protocol (one folder of synthetic CTs, case i drawn from seed ``data_seed``):

- an unlabelled pool of ``pool`` cases (cases 0..pool-1) for self-pretraining, from which the labelled fine-tuning
  sets of each budget are drawn (``budget`` cases, a different draw per seed); a validation pair (model selection,
  never tested on) and a test set of ``test`` cases that neither stage ever sees;
- arms, identical but for the encoder's initialisation: ``scratch``; ``mae`` (the same pretraining code, uniform
  random masks, no loss-prediction objective: ``final_hard_ratio 0``, ``pred_weight 0``); ``hpm`` (the method as
  configured); ``lp_random`` (the loss predictor trained, masks random: ``final_hard_ratio 0``), the HPM paper's
  ablation separating "predicting the loss" from "masking where it is hard";
- seed s pretrains with seed s and fine-tunes with seed s on draw s of the labelled cases; every arm of a budget
  gets the same fine-tuning schedule (the same number of iterations whatever the budget);
- each fine-tuned model is evaluated on the test set (per-case, per-organ Dice and HD95);
- each pretraining with a loss predictor (``hpm``, ``lp_random``) is asked what it ranks on crops of the test set
  (Kendall tau against the true per-patch loss, against patch position alone, and what the teacher's mask choice
  buys: :func:`selfmedhpm_tools.demo.ranking_figures`), so the report says whether the mining mined content.

Every run is tracked in MLflow (experiment ``selfmedhpm_study`` in ``<out>/mlflow.db``) and leaves ``done.json``
when finished: a killed study started again skips finished runs. The report (``<out>/README.md`` and figures) is
rebuilt from whatever runs are done.

Examples::

    python -m selfmedhpm_tools.study --out docs/results            # the full study (CPU preset)
    python -m selfmedhpm_tools.study --quick --out results/study_quick
    python -m selfmedhpm_tools.study --preset gpu --out results/study_gpu
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import platform
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from selfmedhpm.errors import install_excepthook

__all__ = ["ARMS", "PRESETS", "Protocol", "case_means", "paired_differences", "aggregate", "main"]

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
PRETRAIN = ROOT / "bundles" / "selfmedhpm_ct_pretraining"
SEGMENT = ROOT / "bundles" / "selfmedhpm_ct_segmentation"

ARMS: dict[str, dict[str, Any] | None] = {
    "scratch": None,
    "mae": {"final_hard_ratio": 0.0, "pred_weight": 0.0},
    "hpm": {"teacher_view": "full"},
    "hpm_masked": {"teacher_view": "masked"},
    "hpm_reconstruction": {"teacher_view": "reconstruction"},
    "lp_random": {"final_hard_ratio": 0.0},
}
"""Arm -> pretraining overrides (None: no pretraining). ``hpm`` is the method as the paper and HPM's code run it (the
teacher's full view chooses the mask); ``hpm_masked`` and ``hpm_reconstruction`` score patches in the other teacher
views (:mod:`selfmedhpm.views`)."""
COMPARISONS = (
    ("mae", "scratch"),
    ("hpm", "scratch"),
    ("hpm", "mae"),
    ("hpm_masked", "scratch"),
    ("hpm_masked", "mae"),
    ("hpm_masked", "hpm"),
    ("hpm_reconstruction", "scratch"),
    ("hpm_reconstruction", "mae"),
    ("hpm_reconstruction", "hpm"),
    ("hpm", "lp_random"),
    ("hpm_masked", "lp_random"),
)
ORGANS_8 = ["spleen", "right kidney", "left kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas"]

PRESETS: dict[str, dict[str, Any]] = {
    # the demo's recipes (both bundles' configs/train_demo.json) on an 8 mm grid, whose 48x32x32 crop holds the
    # synthetic abdomen from the lung bases to below the kidneys at a third of the demo's voxels (half the cases reach
    # on into the pelvis): 36 fine-tunings and 9 pretrainings in 30 min to 2 hours on 2 CPU cores. The
    # pretraining recipe matters: without its crop margin every organ sits at the same patch of every crop, and the
    # loss predictor learns patch position, not content (masked-pass Kendall tau on test crops -0.06 against 0.17 for
    # position alone; with it 0.11 against 0.01)
    "cpu": {
        "pretrain_configs": ["train.json", "train_cpu.json", "train_demo.json"],
        "finetune_configs": ["train.json", "train_cpu.json", "train_demo.json"],
        "pretrain": {"epochs": 40, "norm_pix_loss": True},
        "finetune_iterations": 150,
        "common": {"pixdim": [8.0, 8.0, 8.0], "roi_size": [48, 32, 32]},
        "finetune": {},
        "size": "small",
    },
    "gpu": {
        "pretrain_configs": ["train.json"],
        "finetune_configs": ["train.json"],
        "pretrain": {"epochs": 800},
        "finetune_iterations": 20000,
        "common": {},
        "finetune": {},
        "size": "full",
    },
}
"""Model presets: the bundles' CPU preset (2-core machines) and the paper-scale configs (GPUs)."""


@dataclass
class Protocol:
    """Sizes and seeds of the study.

    Args:
        arms: arms to run (keys of :data:`ARMS`).
        budgets: labelled fine-tuning cases.
        seeds: pretraining and fine-tuning seeds.
        pool: unlabelled pretraining cases (the labelled sets are drawn from them).
        validation: labelled validation cases (model selection).
        test: held-out test cases.
        data_seed: seed of the synthetic data.
        preset: key of :data:`PRESETS`.
    """

    arms: Sequence[str] = ("scratch", "mae", "hpm", "lp_random")
    budgets: Sequence[int] = (1, 3, 9)
    seeds: Sequence[int] = (0, 1, 2)
    pool: int = 24
    validation: int = 2
    test: int = 8
    data_seed: int = 2026
    preset: str = "cpu"
    overrides: dict[str, Any] = field(default_factory=dict)

    def settings(self) -> dict[str, Any]:
        return {**PRESETS[self.preset], **self.overrides}


QUICK = {"arms": ("scratch", "hpm"), "budgets": (3,), "seeds": (0,)}
"""``--quick``: one seed, arms scratch and HPM, one label budget."""


# ----------------------------------------------------------------------------------------------------- the data


def make_data(out: Path, protocol: Protocol) -> dict[str, list[dict]]:
    """Writes the synthetic cases once (``out/data``) and returns the lists ``pool``, ``validation``, ``test``."""
    from selfmedhpm_tools.phantom import generate_dataset

    data = out / "data"
    total = protocol.pool + protocol.validation + protocol.test
    if not (data / "dataset_0.json").is_file():
        generate_dataset(data, cases=total, seed=protocol.data_seed, size=protocol.settings()["size"], verbose=False)
    listed = json.loads((data / "dataset_0.json").read_text())
    cases = listed["training"] + listed["validation"]
    if len(cases) < total:
        raise ValueError(f"{data} holds {len(cases)} cases, the protocol needs {total}: remove it to regenerate.")
    return {
        "pool": cases[: protocol.pool],
        "validation": cases[protocol.pool : protocol.pool + protocol.validation],
        "test": cases[protocol.pool + protocol.validation : total],
    }


def labelled_draw(pool: Sequence[dict], budget: int, seed: int) -> list[dict]:
    """The ``budget`` labelled cases of seed ``seed``: a seeded draw without replacement from the pool.

    Examples::

        >>> pool = [{"image": f"{i}"} for i in range(24)]
        >>> [d["image"] for d in labelled_draw(pool, 3, 0)] == [d["image"] for d in labelled_draw(pool, 3, 0)]
        True
    """
    index = np.random.default_rng(1000 + seed).permutation(len(pool))[:budget]
    return [pool[i] for i in sorted(index)]


# ----------------------------------------------------------------------------------------------------- the runs


def _done(folder: Path) -> bool:
    return (folder / "done.json").is_file()


def _finish(folder: Path, started: float, **facts: Any) -> None:
    (folder / "done.json").write_text(json.dumps({"seconds": time.perf_counter() - started, **facts}, indent=2))


def _bundle(configs: Sequence[str], bundle: Path, tracking_uri: str, run_name: str, **overrides: Any) -> None:
    from selfmedhpm_tools.demo import run_bundle

    files = [str(bundle / "configs" / name) for name in configs]
    run_bundle(files, tracking_uri, run_name, experiment_name="selfmedhpm_study", **overrides)


def pretrain(out: Path, arm: str, seed: int, lists: Mapping, protocol: Protocol, tracking_uri: str) -> Path:
    """Pretrains ``arm`` with ``seed`` on the pool (skipped when done); returns its folder (``encoder.pt``)."""
    folder = out / "runs" / "pretrain" / f"{arm}_seed{seed}"
    if _done(folder):
        return folder
    settings = protocol.settings()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "datalist.json").write_text(json.dumps({"training": lists["pool"]}, indent=1))
    started = time.perf_counter()
    _bundle(settings["pretrain_configs"], PRETRAIN, tracking_uri, f"pretrain_{arm}_seed{seed}",
            dataset_dir=str(out / "data"), datalist=str(folder / "datalist.json"), output_dir=str(folder), seed=seed,
            snapshot_epochs=[1] if arm == "hpm" else [], **settings["common"], **settings["pretrain"],
            **(ARMS[arm] or {}))  # fmt: skip
    _finish(folder, started, arm=arm, seed=seed)
    return folder


def ranking(out: Path, arm: str, seed: int, lists: Mapping, protocol: Protocol) -> None:
    """What the loss predictor of ``arm``'s pretraining with ``seed`` ranks on 4 crops of each test case (never
    pretrained on): :func:`selfmedhpm_tools.demo.ranking_figures`, written to its ``ranking.json`` (skipped when
    there, and for an arm without a trained loss predictor: ``scratch``, ``mae``)."""
    from selfmedhpm.utils import write_json_atomic
    from selfmedhpm_tools.demo import ranking_figures

    folder = out / "runs" / "pretrain" / f"{arm}_seed{seed}"
    if ARMS[arm] is None or ARMS[arm].get("pred_weight") == 0.0 or (folder / "ranking.json").is_file():
        return
    settings = protocol.settings()
    values = {**settings["common"], **settings["pretrain"]}
    figures = ranking_figures(folder, out / "data", lists["test"], values, 4, settings["pretrain_configs"])
    write_json_atomic(figures, folder / "ranking.json")


def finetune(
    out: Path, arm: str, budget: int, seed: int, lists: Mapping, protocol: Protocol, tracking_uri: str
) -> Path:
    """Fine-tunes (pretrained encoder of ``arm`` and ``seed``, or scratch) on draw ``seed`` of ``budget`` labelled
    cases, then evaluates on the test set; skipped when done. Returns its folder (``eval/summary.json``)."""
    folder = out / "runs" / "finetune" / f"{arm}_n{budget}_seed{seed}"
    if _done(folder):
        return folder
    settings = protocol.settings()
    encoder = None if ARMS[arm] is None else out / "runs" / "pretrain" / f"{arm}_seed{seed}" / "encoder.pt"
    folder.mkdir(parents=True, exist_ok=True)
    datalist = folder / "datalist.json"
    datalist.write_text(json.dumps({"training": labelled_draw(lists["pool"], budget, seed),
                                    "validation": lists["validation"], "test": lists["test"]}, indent=1))  # fmt: skip
    batch = 1 if protocol.preset == "cpu" else 2
    epochs = max(1, math.ceil(settings["finetune_iterations"] / math.ceil(budget / batch)))
    started = time.perf_counter()
    common = {"dataset_dir": str(out / "data"), "datalist": str(datalist), **settings["common"],
              **settings["finetune"]}  # fmt: skip
    _bundle(settings["finetune_configs"], SEGMENT, tracking_uri, f"finetune_{arm}_n{budget}_seed{seed}",
            output_dir=str(folder), epochs=epochs, val_interval=max(1, epochs // 5), seed=seed,
            pretrained_encoder=str(encoder) if encoder else None, **common)  # fmt: skip
    _bundle([*settings["finetune_configs"], "evaluate.json"], SEGMENT, tracking_uri,
            f"evaluate_{arm}_n{budget}_seed{seed}", model_file=str(folder / "model.pt"),
            output_dir=str(folder / "eval"), eval_split="test", **common)  # fmt: skip
    _finish(folder, started, arm=arm, budget=budget, seed=seed, epochs=epochs)
    return folder


# -------------------------------------------------------------------------------------------------- statistics


def case_means(rows: Sequence[Mapping[str, str]], organs: Sequence[str]) -> dict[str, float]:
    """Per test case, the mean Dice over ``organs`` (undefined organs left out) from ``dice_per_case.csv`` rows.

    Examples::

        >>> case_means([{"case": "a", "liver": "0.8", "spleen": "nan"}, {"case": "b", "liver": "0.6", "spleen": "0.4"}],
        ...            ["liver", "spleen"])
        {'a': 0.8, 'b': 0.5}
    """
    means = {}
    for row in rows:
        values = [float(row[o]) for o in organs if o in row and not math.isnan(float(row[o]))]
        means[row["case"]] = float(np.mean(values)) if values else float("nan")
    return means


def paired_differences(
    per_run: Mapping[tuple[str, int, int], Mapping[str, float]], a: str, b: str, budget: int
) -> tuple[list[float], list[float], int]:
    """Paired values of arms ``a`` and ``b`` at ``budget``: one pair per (seed, test case) present in both; also the
    number of seeds paired.

    Args:
        per_run: ``{(arm, budget, seed): {case: value}}``.
    """
    xs, ys, seeds = [], [], set()
    for (arm, n, seed), cases in per_run.items():
        if arm != a or n != budget or (b, n, seed) not in per_run:
            continue
        other = per_run[(b, n, seed)]
        for case, value in cases.items():
            if case in other and not (math.isnan(value) or math.isnan(other[case])):
                xs.append(value)
                ys.append(other[case])
                seeds.add(seed)
    return xs, ys, len(seeds)


def aggregate(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) of run-level values, NaN left out.

    Examples::

        >>> aggregate([0.5, 0.7, float("nan")])
        (0.6, 0.1414)
    """
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return float("nan"), float("nan")
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return round(float(np.mean(finite)), 4), round(std, 4)


# ------------------------------------------------------------------------------------------------------ report


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


def write_report(out: Path, protocol: Protocol, runs: Mapping, wall: float, command: str) -> Path:
    """``out/README.md`` and ``out/figures/*.png`` from the finished runs."""
    from selfmedhpm_tools import reports
    from selfmedhpm_tools.stats import paired_bootstrap_ci

    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    settings = protocol.settings()
    organs = list(next(iter(runs.values()))["summary"]["organs"]) if runs else []
    per_case = {key: case_means(run["dice"], organs) for key, run in runs.items()}
    lines = [
        "# What HPM pretraining buys with few labels (synthetic CT)",
        "",
        f"Generated by `{command}` in {wall / 60:.0f} min on {platform.node() or 'this machine'} "
        f"({platform.processor() or platform.machine()}); preset `{protocol.preset}`; arms {list(protocol.arms)}; "
        f"labelled cases {list(protocol.budgets)}; seeds {list(protocol.seeds)}; {protocol.pool} unlabelled "
        f"pretraining cases, {protocol.validation} validation cases, {protocol.test} test cases never seen in "
        f"training (synthetic data seed {protocol.data_seed}). {len(runs)} fine-tuning runs finished.",
        "",
        f"Settings of every run: {json.dumps(settings['common'])}; pretraining {json.dumps(settings['pretrain'])} "
        f"with `{' + '.join(settings['pretrain_configs'])}`; fine-tuning {settings['finetune_iterations']} iterations "
        f"whatever the label budget, with `{' + '.join(settings['finetune_configs'])}` "
        f"{json.dumps(settings['finetune'])}.",
        "",
        "![Dice against labelled cases](figures/dice_vs_labels.png)",
        "",
        "## Test Dice, mean +- std over seeds",
        "",
    ]
    header = ["arm", "labelled cases", "runs", "13-organ mean Dice", "8-organ mean Dice", "mean HD95 (mm)"]
    rows = []
    for arm in protocol.arms:
        for budget in protocol.budgets:
            found = [runs[k] for k in runs if k[0] == arm and k[1] == budget]
            if not found:
                continue
            cells = [arm, budget, len(found)]
            for getter in (
                lambda r: r["summary"]["mean_dice"].get("all_organs"),
                lambda r: r["summary"]["mean_dice"].get("transunet_8_organs"),
                lambda r: r["summary"].get("mean_hd95_mm", {}).get("all_organs"),
            ):
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
    diff_header = ["labelled cases", "difference", "13-organ mean Dice", "95% CI", "seeds", "pairs"]
    lines += [
        reports.markdown_table(diff_header, diff_rows),
        "A difference whose interval excludes 0 is a measured effect at this scale; one that includes 0 is not.",
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
    _figures(figures, protocol, runs)
    lines += [
        "## Figures",
        "",
        "- `figures/dice_vs_labels.png`: test 13-organ mean Dice against labelled cases, per arm (mean +- std).",
        "- `figures/dice_per_organ.png`: per-organ test Dice at the largest label budget.",
        "- `figures/learning_curves.png`: validation mean Dice during fine-tuning, per arm.",
        "- `figures/teacher_first_epoch_hpm.png`, `figures/teacher_last_epoch_hpm.png`: the HPM teacher's predicted "
        "loss on the same slices after the first and the last pretraining epoch, with reconstructions.",
        "",
        f"Wall time of the fine-tuning runs: {sum(r['seconds'] for r in runs.values()) / 60:.0f} min in all.",
        "",
    ]
    path = out / "README.md"
    path.write_text("\n".join(lines))
    return path


def _figures(figures: Path, protocol: Protocol, runs: Mapping) -> None:
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
    ax.set_ylabel("test mean Dice (13 organs)")
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


def teacher_figures(out: Path, protocol: Protocol, lists: Mapping, tracking_uri: str) -> None:
    """The HPM teacher's heat map and reconstructions on one test case, after the first and the last epoch of the
    first seed's HPM pretraining (its first epoch's teacher is kept: ``snapshot_epochs``)."""
    import shutil

    folder = out / "runs" / "pretrain" / f"hpm_seed{protocol.seeds[0]}"
    first = folder / "teacher_epoch1.pt"
    if not first.is_file() or not (folder / "teacher.pt").is_file():
        return
    settings = protocol.settings()
    image = str(out / "data" / lists["test"][0]["image"])
    for name, weights in (("teacher_first_epoch", first), ("teacher_last_epoch", folder / "teacher.pt")):
        target = out / "runs" / "figures" / name
        configs = ["inference.json", *settings["pretrain_configs"][1:]]
        values = {**settings["common"], **settings["pretrain"]}
        _bundle(configs, PRETRAIN, tracking_uri, f"heatmap_{name}", input_files=[image], load_path=str(weights),
                output_dir=str(target), **values)  # fmt: skip
        (out / "figures").mkdir(exist_ok=True)
        for png in target.glob("*_hpm.png"):
            shutil.copyfile(png, out / "figures" / f"{name}_hpm.png")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selfmedhpm_tools.study", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/results"), help="results (and runs/, data/)")
    parser.add_argument("--quick", action="store_true", help="one seed, arms scratch and hpm, one label budget")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--arms", nargs="*", choices=sorted(ARMS), default=None)
    parser.add_argument("--budgets", nargs="*", type=int, default=None)
    parser.add_argument("--seeds", nargs="*", type=int, default=None)
    parser.add_argument("--pool", type=int, default=24)
    parser.add_argument("--test", type=int, default=8)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="preset values, e.g. "
                        "'finetune_iterations=40' or 'pretrain={\"epochs\": 2}'")  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    chosen = dict(QUICK) if args.quick else {}
    for key in ("arms", "budgets", "seeds"):
        if getattr(args, key):
            chosen[key] = tuple(getattr(args, key))
    overrides = {k: json.loads(v) for k, _, v in (item.partition("=") for item in args.set)}
    protocol = Protocol(**chosen, pool=args.pool, test=args.test, preset=args.preset, overrides=overrides)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    tracking_uri = f"sqlite:///{out / 'runs' / 'mlflow.db'}"
    (out / "runs").mkdir(exist_ok=True)
    started = time.perf_counter()
    lists = make_data(out, protocol)
    plan = [(arm, seed) for seed in protocol.seeds for arm in protocol.arms if ARMS[arm] is not None]
    total = len(plan) + len(protocol.arms) * len(protocol.budgets) * len(protocol.seeds)
    done = 0
    for arm, seed in plan:
        done += 1
        print(f"=== [{done}/{total}] pretraining {arm}, seed {seed} ===", flush=True)
        pretrain(out, arm, seed, lists, protocol, tracking_uri)
        ranking(out, arm, seed, lists, protocol)
    for seed in protocol.seeds:
        for budget in protocol.budgets:
            for arm in protocol.arms:
                done += 1
                print(f"=== [{done}/{total}] fine-tuning {arm}, {budget} labelled, seed {seed} ===", flush=True)
                finetune(out, arm, budget, seed, lists, protocol, tracking_uri)
    if "hpm" in protocol.arms:
        teacher_figures(out, protocol, lists, tracking_uri)
    command = "make study-quick" if args.quick else "make study"
    report = write_report(out, protocol, collect(out, protocol), time.perf_counter() - started, command)
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    install_excepthook()  # this process is the command: a user error ends it with one ERROR line
    sys.exit(main())

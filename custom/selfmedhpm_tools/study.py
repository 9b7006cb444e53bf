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

"""Did self-pretraining help: scratch vs MAE vs HPM (each teacher view) vs loss-prediction-only, over seeds and label
budgets, with paired confidence intervals, on synthetic CT (``make study``) or on your own data list.

Protocol, on one data list (BTCV's layout: ``training`` labelled, ``validation``, optional ``unlabeled``):

- the test set is the data list's ``validation`` split (``--test_split``): no run trains, pretrains or selects a
  model on it;
- a validation share for model selection (``--validation`` cases, a seeded draw from the labelled ``training``
  cases) and the labelled pool the budgets are drawn from (the other training cases; ``budget`` cases per run, a
  different draw per seed);
- pretraining reads the ``unlabeled`` images and the images of the training cases, as the bundles do;
- arms, identical but for the encoder's initialisation: ``scratch``; ``mae`` (the same pretraining code, uniform
  random masks, no loss-prediction objective: ``final_hard_ratio 0``, ``pred_weight 0``); ``hpm`` (the method as the
  paper and HPM's code run it: the teacher's full view chooses the mask); ``hpm_masked`` and ``hpm_reconstruction``
  (the other teacher views of :mod:`selfmedhpm.views`); ``lp_random`` (the loss predictor trained, masks random), the
  HPM paper's ablation separating "predicting the loss" from "masking where it is hard";
- seed s pretrains with seed s and fine-tunes with seed s on draw s of the labelled cases; every arm of a budget
  gets the same number of fine-tuning iterations whatever the budget;
- each fine-tuned model is evaluated on the test set (per-case, per-organ Dice and HD95); each pretraining with a
  loss predictor is asked whether its mining mines on crops of the test set
  (:func:`selfmedhpm_tools.demo.ranking_figures`).

Before any run, the study prints what it will run and a time estimate from a short warm-up measured on this machine,
and refuses a label budget larger than the labelled pool. Every run is tracked in MLflow (experiment
``selfmedhpm_study`` in ``<out>/runs/mlflow.db``) and leaves ``done.json``: a killed study started again skips
finished runs. The report (``<out>/README.md``, figures, and ``<out>/study.json`` with the data list's path and
checksum, the splits and the exact configs) is rebuilt from whatever runs are done.

Examples::

    python -m selfmedhpm_tools.study --out docs/results            # synthetic CT, the CPU preset (make study)
    python -m selfmedhpm_tools.study --quick --out results/study_quick
    python -m selfmedhpm_tools.study --dataset_dir /data/btcv --datalist data/btcv/dataset_0.json --preset gpu \
        --out results/study_btcv                                   # your data list (python -m selfmedhpm.datalist)
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfmedhpm.errors import install_excepthook
from selfmedhpm_tools.study_data import StudyData, check_budgets, labelled_draw, load_data, synthetic_datalist

__all__ = ["ARMS", "PRESETS", "Protocol", "known_overrides", "stage_settings", "main"]

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
    ("hpm_reconstruction", "lp_random"),
    ("lp_random", "mae"),
)
ORGANS_8 = ["spleen", "right kidney", "left kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas"]

PRESETS: dict[str, dict[str, Any]] = {
    # the demo's recipes (both bundles' configs/train_demo.json) on an 8 mm grid, whose 48x32x32 crop holds the
    # synthetic abdomen from the lung bases to below the kidneys (half the cases reach on into the pelvis). The
    # pretraining recipe matters: without its crop margin every organ sits at the same patch of every crop, and the
    # loss predictor learns patch position, not content
    "cpu": {
        "pretrain_configs": ["train.json", "train_cpu.json", "train_demo.json"],
        "finetune_configs": ["train.json", "train_cpu.json", "train_demo.json"],
        "pretrain": {"epochs": 40, "norm_pix_loss": True},
        "finetune_iterations": 150,
        "common": {"pixdim": [8.0, 8.0, 8.0], "roi_size": [48, 32, 32]},
        "finetune": {},
        "size": "small",
        "unlabeled": 0,
    },
    "gpu": {
        "pretrain_configs": ["train.json"],
        "finetune_configs": ["train.json"],
        "pretrain": {"epochs": 800},
        "finetune_iterations": 20000,
        "common": {},
        "finetune": {},
        "size": "full",
        "unlabeled": 0,
    },
}
"""Model presets: the bundles' CPU preset (2-core machines) and the paper-scale configs (GPUs). ``unlabeled``: extra
unlabelled synthetic cases for pretraining (synthetic study only)."""


@dataclass
class Protocol:
    """Sizes and seeds of the study.

    Args:
        arms: arms to run (keys of :data:`ARMS`).
        budgets: labelled fine-tuning cases.
        seeds: pretraining and fine-tuning seeds.
        validation: labelled cases kept for model selection (a seeded draw from the labelled training cases).
        preset: key of :data:`PRESETS`.
        overrides: preset values replaced (``--set``).
        pool: synthetic study: labelled training cases (the budgets are drawn from them, less ``validation``).
        test: synthetic study: test cases.
        data_seed: synthetic study: seed of the synthetic CT.
    """

    arms: Sequence[str] = ("scratch", "mae", "hpm", "hpm_reconstruction", "lp_random")
    budgets: Sequence[int] = (1, 3, 9)
    seeds: Sequence[int] = (0, 1, 2)
    validation: int = 2
    preset: str = "cpu"
    overrides: dict[str, Any] = field(default_factory=dict)
    pool: int = 26
    test: int = 8
    data_seed: int = 2026

    def settings(self) -> dict[str, Any]:
        return {**PRESETS[self.preset], **self.overrides}


QUICK = {"arms": ("scratch", "hpm_reconstruction"), "budgets": (3,), "seeds": (0,)}
"""``--quick``: one seed, one label budget, scratch against HPM as the pretraining bundle's CPU presets run it (the
reconstruction view: ``train_cpu.json``)."""
HEATMAP_ARMS = ("hpm", "hpm_reconstruction", "hpm_masked")
"""The arms whose teacher's heat maps the report shows: the first of these that the study runs."""


def heatmap_arm(arms: Sequence[str]) -> str | None:
    """The arm whose first seed keeps its first epoch's teacher for the report's heat maps.

    Examples::

        >>> heatmap_arm(["scratch", "mae", "hpm", "hpm_reconstruction"]), heatmap_arm(["scratch", "hpm_reconstruction"])
        ('hpm', 'hpm_reconstruction')
        >>> heatmap_arm(["scratch", "mae"]) is None
        True
    """
    return next((arm for arm in HEATMAP_ARMS if arm in arms), None)


# ----------------------------------------------------------------------------------------------------- the runs


def _done(folder: Path) -> bool:
    return (folder / "done.json").is_file()


def _finish(folder: Path, started: float, **facts: Any) -> None:
    (folder / "done.json").write_text(json.dumps({"seconds": time.perf_counter() - started, **facts}, indent=2))


def _config_files(configs: Sequence[str], bundle: Path) -> list[str]:
    """``configs`` as paths: a name is a file of ``bundle``'s ``configs`` folder, an absolute path stays as it is."""
    return [str(c) if Path(c).is_absolute() else str(bundle / "configs" / c) for c in configs]


def _bundle(configs: Sequence[str], bundle: Path, tracking_uri: str | None, run_name: str, **overrides: Any) -> None:
    from selfmedhpm_tools.demo import run_bundle

    run_bundle(_config_files(configs, bundle), tracking_uri, run_name, experiment_name="selfmedhpm_study", **overrides)


def known_overrides(configs: Sequence[str], bundle: Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """The ``overrides`` whose keys the ``configs`` of ``bundle`` define: a pretraining stage's values passed on to
    the bundle's inference, which has no use for training-only keys such as ``pred_weight`` or ``lr`` (the
    pretraining runs have already checked every key against the training configs).

    Example::

        >>> known_overrides(["inference.json"], PRETRAIN, {"teacher_view": "masked", "pred_weight": 0.1})
        {'teacher_view': 'masked'}
    """
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(_config_files(configs, bundle))
    return {key: value for key, value in overrides.items() if key in parser}


def stage_settings(protocol: Protocol, data: StudyData) -> dict[str, dict[str, Any]]:
    """The config files and overrides of each stage, as every run of the study uses them (recorded in
    ``study.json``): ``pretrain`` and ``finetune``, each ``{"configs": [...], "overrides": {...}}``."""
    settings = protocol.settings()
    finetune_configs = list(settings["finetune_configs"])
    finetune = {**settings["common"], **settings["finetune"]}
    if data.labels is not None:
        finetune_configs.append(str(data.labels))
        if "train_demo.json" in finetune_configs and len(data.class_names) != 14:
            finetune.setdefault("class_ratios", [1] * len(data.class_names))  # not the demo recipe's 14 BTCV ones
    return {
        "pretrain": {"configs": list(settings["pretrain_configs"]),
                     "overrides": {**settings["common"], **settings["pretrain"], "train_splits": ["training"]}},
        "finetune": {"configs": finetune_configs, "overrides": finetune},
    }  # fmt: skip


def finetune_epochs(protocol: Protocol, budget: int) -> int:
    """Fine-tuning epochs of a run with ``budget`` labelled cases: the preset's iterations whatever the budget."""
    batch = 1 if protocol.preset == "cpu" else 2
    return max(1, math.ceil(protocol.settings()["finetune_iterations"] / math.ceil(budget / batch)))


def pretrain(out: Path, arm: str, seed: int, data: StudyData, protocol: Protocol, tracking_uri: str | None) -> Path:
    """Pretrains ``arm`` with ``seed`` on the pretraining images (skipped when done); returns its folder."""
    folder = out / "runs" / "pretrain" / f"{arm}_seed{seed}"
    if _done(folder):
        return folder
    stage = stage_settings(protocol, data)["pretrain"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "datalist.json").write_text(json.dumps({"training": data.pretraining}, indent=1))
    started = time.perf_counter()
    _bundle(stage["configs"], PRETRAIN, tracking_uri, f"pretrain_{arm}_seed{seed}", dataset_dir=str(out),
            datalist=str(folder / "datalist.json"), output_dir=str(folder), seed=seed,
            snapshot_epochs=[1] if arm == heatmap_arm(protocol.arms) else [], **stage["overrides"],
            **(ARMS[arm] or {}))  # fmt: skip
    _finish(folder, started, arm=arm, seed=seed)
    return folder


def ranking(out: Path, arm: str, seed: int, data: StudyData, protocol: Protocol) -> None:
    """Whether the mining of ``arm``'s pretraining with ``seed`` mines, on 4 crops of each test case (never
    pretrained on): :func:`selfmedhpm_tools.demo.ranking_figures`, written to its ``ranking.json`` (skipped when
    there, and for an arm without a trained loss predictor: ``scratch``, ``mae``)."""
    from selfmedhpm.utils import write_json_atomic
    from selfmedhpm_tools.demo import ranking_figures

    folder = out / "runs" / "pretrain" / f"{arm}_seed{seed}"
    if ARMS[arm] is None or ARMS[arm].get("pred_weight") == 0.0 or (folder / "ranking.json").is_file():
        return
    stage = stage_settings(protocol, data)["pretrain"]
    values = {k: v for k, v in stage["overrides"].items() if k != "train_splits"}
    figures = ranking_figures(folder, out, data.test, {**values, **ARMS[arm]}, 4, stage["configs"])
    write_json_atomic(figures, folder / "ranking.json")


def finetune(
    out: Path, arm: str, budget: int, seed: int, data: StudyData, protocol: Protocol, tracking_uri: str | None
) -> Path:
    """Fine-tunes (pretrained encoder of ``arm`` and ``seed``, or scratch) on draw ``seed`` of ``budget`` labelled
    cases, then evaluates on the test set; skipped when done. Returns its folder (``eval/summary.json``)."""
    folder = out / "runs" / "finetune" / f"{arm}_n{budget}_seed{seed}"
    if _done(folder):
        return folder
    stage = stage_settings(protocol, data)["finetune"]
    encoder = None if ARMS[arm] is None else out / "runs" / "pretrain" / f"{arm}_seed{seed}" / "encoder.pt"
    folder.mkdir(parents=True, exist_ok=True)
    datalist = folder / "datalist.json"
    datalist.write_text(json.dumps({"training": labelled_draw(data.pool, budget, seed),
                                    "validation": data.validation, "test": data.test}, indent=1))  # fmt: skip
    epochs = finetune_epochs(protocol, budget)
    started = time.perf_counter()
    common = {"dataset_dir": str(out), "datalist": str(datalist), **stage["overrides"]}
    # one checkpoint at the end: a study resumes whole runs (a 1-case budget has 150 epochs of one iteration)
    _bundle(stage["configs"], SEGMENT, tracking_uri, f"finetune_{arm}_n{budget}_seed{seed}",
            output_dir=str(folder), epochs=epochs, val_interval=max(1, epochs // 5), seed=seed, save_interval=epochs,
            pretrained_encoder=str(encoder) if encoder else None, **common)  # fmt: skip
    _bundle([*stage["configs"], "evaluate.json"], SEGMENT, tracking_uri,
            f"evaluate_{arm}_n{budget}_seed{seed}", model_file=str(folder / "model.pt"),
            output_dir=str(folder / "eval"), eval_split="test", **common)  # fmt: skip
    _finish(folder, started, arm=arm, budget=budget, seed=seed, epochs=epochs)
    return folder


def warm_up(out: Path, data: StudyData, protocol: Protocol) -> dict[str, float]:
    """What one iteration and one evaluated case cost on this machine with the preset's configs: 2 short epochs of
    each stage on a few cases (the second epoch's seconds per iteration, so caching and validation are left out; the
    fine-tuning validates after a third), the rest of each
    run's wall time as its start-up, and an evaluation of 2 test cases. Kept in ``out/runs/warmup/estimate.json``."""
    folder = out / "runs" / "warmup"
    saved = folder / "estimate.json"
    if saved.is_file():
        return json.loads(saved.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    stages = stage_settings(protocol, data)
    (folder / "pretrain.json").write_text(json.dumps({"training": data.pretraining[:4]}))
    started = time.perf_counter()
    _bundle(stages["pretrain"]["configs"], PRETRAIN, None, "warmup", dataset_dir=str(out),
            datalist=str(folder / "pretrain.json"), output_dir=str(folder / "pretrain"), check_data=False,
            **{**stages["pretrain"]["overrides"], "epochs": 2, "save_interval": 2, "snapshot_epochs": []})  # fmt: skip
    pre_wall = time.perf_counter() - started
    pre = json.loads((folder / "pretrain" / "history.json").read_text())
    few = {"training": data.pool[:2], "validation": data.validation[:1], "test": data.test[:2]}
    (folder / "finetune.json").write_text(json.dumps(few))
    common = {"dataset_dir": str(out), "datalist": str(folder / "finetune.json"), "check_data": False,
              **stages["finetune"]["overrides"]}  # fmt: skip
    started = time.perf_counter()
    _bundle(
        stages["finetune"]["configs"],
        SEGMENT,
        None,
        "warmup",
        output_dir=str(folder / "finetune"),
        epochs=3,
        val_interval=3,
        **common,
    )  # fmt: skip: validates (and writes model.pt) after epoch 3 only
    fine_wall = time.perf_counter() - started
    fine = json.loads((folder / "finetune" / "history.json").read_text())
    started = time.perf_counter()
    _bundle([*stages["finetune"]["configs"], "evaluate.json"], SEGMENT, None, "warmup",
            model_file=str(folder / "finetune" / "model.pt"), output_dir=str(folder / "eval"), eval_split="test",
            **common)  # fmt: skip
    estimate = {
        "pretrain_iteration_s": pre[-1]["seconds"] / max(pre[-1]["iterations"], 1),
        "pretrain_startup_s": max(pre_wall - sum(r["seconds"] for r in pre), 0.0),
        "finetune_iteration_s": fine[1]["seconds"] / max(fine[1]["iterations"], 1),
        "finetune_startup_s": max(fine_wall - sum(r["seconds"] for r in fine), 0.0),
        "evaluated_case_s": (time.perf_counter() - started) / min(len(data.test), 2),
    }
    saved.write_text(json.dumps(estimate, indent=1))
    return estimate


def plan(out: Path, data: StudyData, protocol: Protocol, estimate: dict[str, float] | None) -> tuple[str, float]:
    """What the study runs, in words, and the estimated seconds of the runs not finished yet (0 without an
    ``estimate``)."""
    settings = protocol.settings()
    pretrained = [arm for arm in protocol.arms if ARMS[arm] is not None]
    batch = 1 if protocol.preset == "cpu" else 2
    iterations = int(settings["pretrain"].get("epochs", 1)) * math.ceil(len(data.pretraining) / batch)
    runs = out / "runs"
    todo_pre = [(a, s) for a in pretrained for s in protocol.seeds if not _done(runs / "pretrain" / f"{a}_seed{s}")]
    todo_fine = [(a, b, s) for a in protocol.arms for b in protocol.budgets for s in protocol.seeds
                 if not _done(runs / "finetune" / f"{a}_n{b}_seed{s}")]  # fmt: skip
    text = (f"{len(pretrained) * len(protocol.seeds)} pretrainings ({', '.join(pretrained) or 'none'} x "
            f"{len(protocol.seeds)} seeds) of about {iterations} iterations each on {len(data.pretraining)} images; "
            f"{len(protocol.arms) * len(protocol.budgets) * len(protocol.seeds)} fine-tunings ({len(protocol.arms)} "
            f"arms x budgets {list(protocol.budgets)} x {len(protocol.seeds)} seeds) of "
            f"{settings['finetune_iterations']} iterations each with 5 validations on {len(data.validation)} cases, "
            f"each evaluated on the {len(data.test)} test cases; {len(todo_pre)} pretrainings and {len(todo_fine)} "
            "fine-tunings to run")  # fmt: skip
    if estimate is None:
        return text, 0.0
    per_pretraining = estimate["pretrain_startup_s"] + iterations * estimate["pretrain_iteration_s"]
    per_finetuning = (2 * estimate["finetune_startup_s"]
                      + settings["finetune_iterations"] * estimate["finetune_iteration_s"]
                      + (5 * len(data.validation) + len(data.test)) * estimate["evaluated_case_s"])  # fmt: skip
    return text, len(todo_pre) * per_pretraining + len(todo_fine) * per_finetuning


def teacher_figures(out: Path, protocol: Protocol, data: StudyData, tracking_uri: str | None) -> None:
    """The HPM teacher's heat map and reconstructions on one test case, after the first and the last epoch of the
    first seed's pretraining of :func:`heatmap_arm` (its first epoch's teacher is kept: ``snapshot_epochs``)."""
    import shutil

    arm = heatmap_arm(protocol.arms)
    if arm is None:
        return
    folder = out / "runs" / "pretrain" / f"{arm}_seed{protocol.seeds[0]}"
    first = folder / "teacher_epoch1.pt"
    if not first.is_file() or not (folder / "teacher.pt").is_file():
        return
    stage = stage_settings(protocol, data)["pretrain"]
    configs = ["inference.json", *stage["configs"][1:]]
    values = known_overrides(configs, PRETRAIN, {**stage["overrides"], **ARMS[arm]})  # train_splits, lr... left out
    for name, weights in (("teacher_first_epoch", first), ("teacher_last_epoch", folder / "teacher.pt")):
        target = out / "runs" / "figures" / name
        _bundle(configs, PRETRAIN, tracking_uri, f"heatmap_{name}", input_files=[data.test[0]["image"]],
                model_file=str(weights), output_dir=str(target), **values)  # fmt: skip
        (out / "figures").mkdir(exist_ok=True)
        for png in target.glob("*_hpm.png"):
            shutil.copyfile(png, out / "figures" / f"{name}_hpm.png")


def main(argv: Sequence[str] | None = None) -> int:
    from selfmedhpm_tools.study_report import collect, write_record, write_report  # it imports this module

    parser = argparse.ArgumentParser(prog="python -m selfmedhpm_tools.study", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="results (and runs/); default docs/results for the "
                        "synthetic study; required with --datalist")  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true", help="one seed, arms scratch and hpm_reconstruction, 3 labelled cases"
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--arms", nargs="*", choices=sorted(ARMS), default=None)
    parser.add_argument("--budgets", nargs="*", type=int, default=None, help="labelled cases per fine-tuning")
    parser.add_argument("--seeds", nargs="*", type=int, default=None)
    parser.add_argument("--validation", type=int, default=2, help="labelled cases kept for model selection")
    parser.add_argument("--dataset_dir", type=Path, default=None, help="your data: the folder the data list's "
                        "paths are relative to")  # fmt: skip
    parser.add_argument("--datalist", type=Path, default=None, help="your data list (BTCV layout, e.g. from "
                        "python -m selfmedhpm.datalist); default: synthetic CT")  # fmt: skip
    parser.add_argument("--test_split", default="validation", help="the data list's split that is the test set")
    parser.add_argument("--labels", type=Path, default=None, help="label-set override of the segmentation bundle "
                        "(default: labels.json beside the data list, else BTCV's 13 organs)")  # fmt: skip
    parser.add_argument("--pretrain_epochs", type=int, default=None, help="pretraining epochs (default: preset's)")
    parser.add_argument("--finetune_iterations", type=int, default=None, help="fine-tuning iterations per run")
    parser.add_argument("--pool", type=int, default=26, help="synthetic study: labelled training cases")
    parser.add_argument("--test", type=int, default=8, help="synthetic study: test cases")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON", help="preset values, e.g. "
                        "'finetune_iterations=40' or 'pretrain={\"epochs\": 2}'")  # fmt: skip
    parser.add_argument("--dry_run", action="store_true", help="print the plan and the time estimate, run nothing")
    parser.add_argument("--no_estimate", action="store_true", help="skip the warm-up that estimates the time")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if (args.datalist is None) != (args.dataset_dir is None):
        parser.error("--dataset_dir and --datalist go together (your data), or neither (synthetic CT)")
    if args.datalist is not None and args.out is None:
        parser.error("--out is required with --datalist: name the folder for your study's runs and report")
    chosen = dict(QUICK) if args.quick else {}
    for key in ("arms", "budgets", "seeds"):
        if getattr(args, key):
            chosen[key] = tuple(getattr(args, key))
    overrides = {k: json.loads(v) for k, _, v in (item.partition("=") for item in args.set)}
    if args.pretrain_epochs is not None:
        overrides["pretrain"] = {**PRESETS[args.preset]["pretrain"], **overrides.get("pretrain", {}),
                                 "epochs": args.pretrain_epochs}  # fmt: skip
    if args.finetune_iterations is not None:
        overrides["finetune_iterations"] = args.finetune_iterations
    protocol = Protocol(**chosen, validation=args.validation, pool=args.pool, test=args.test, preset=args.preset,
                        overrides=overrides)  # fmt: skip
    out = (args.out or Path("docs/results")).resolve()
    (out / "runs").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if args.datalist is None:
        settings = protocol.settings()
        dataset_dir, datalist = synthetic_datalist(out, protocol.pool, protocol.test, settings.get("unlabeled", 0),
                                                   protocol.data_seed, settings["size"])  # fmt: skip
        source = f"synthetic CT, seed {protocol.data_seed}"
    else:
        dataset_dir, datalist = args.dataset_dir, args.datalist
        source = f"data list {Path(args.datalist).name}"
    try:
        data = load_data(dataset_dir, datalist, protocol.validation, args.test_split, args.labels)
        check_budgets(data, protocol.budgets)
    except ValueError as error:
        print(f"ERROR {error}", file=sys.stderr)
        return 2
    write_record(out, protocol, data, source)
    print(f"study of {source}: {data.describe()}", flush=True)
    estimate = None if args.no_estimate else warm_up(out, data, protocol)
    text, seconds = plan(out, data, protocol, estimate)
    print(f"plan: {text}", flush=True)
    if estimate is not None:
        print(f"estimated time of what is left on this machine: {seconds / 3600:.1f} h ({seconds / 60:.0f} min), "
              f"from a warm-up: {json.dumps({k: round(v, 3) for k, v in estimate.items()})}", flush=True)  # fmt: skip
    if args.dry_run:
        return 0
    tracking_uri = f"sqlite:///{out / 'runs' / 'mlflow.db'}"
    todo = [(arm, seed) for seed in protocol.seeds for arm in protocol.arms if ARMS[arm] is not None]
    total = len(todo) + len(protocol.arms) * len(protocol.budgets) * len(protocol.seeds)
    done = 0
    for arm, seed in todo:
        done += 1
        print(f"=== [{done}/{total}] pretraining {arm}, seed {seed} ===", flush=True)
        pretrain(out, arm, seed, data, protocol, tracking_uri)
        ranking(out, arm, seed, data, protocol)
    for seed in protocol.seeds:
        for budget in protocol.budgets:
            for arm in protocol.arms:
                done += 1
                print(f"=== [{done}/{total}] fine-tuning {arm}, {budget} labelled, seed {seed} ===", flush=True)
                finetune(out, arm, budget, seed, data, protocol, tracking_uri)
    if heatmap_arm(protocol.arms) is not None:
        teacher_figures(out, protocol, data, tracking_uri)
    command = "python -m selfmedhpm_tools.study " + " ".join(argv if argv is not None else sys.argv[1:])
    report = write_report(out, protocol, collect(out, protocol), time.perf_counter() - started, command, data, source)
    print(f"wrote {report}")
    return 0


if __name__ == "__main__":
    install_excepthook()  # this process is the command: a user error ends it with one ERROR line
    sys.exit(main())

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

"""The main job, end to end on built-in synthetic CT: generate data -> HPM pretraining -> UNETR fine-tuning from the
pretrained encoder and from scratch -> evaluation on the validation cases and on held-out cases of a new look (body
size, fat, contrast timing, scanner and slices the training never saw: does what the models learnt carry over) ->
report (tables, figures), every stage tracked in MLflow.

Run ``make demo`` or ``python -m selfmedhpm_tools.demo --results_dir results/demo``; the defaults took 5 to 15
minutes on 2 CPU cores with the 30 fine-tuning epochs of segmentation 0.4.2, depending on the CPU; the 40 of 0.5.0
take about a third more for the fine-tuning (not yet measured on a quiet machine). Everything lands under
``--results_dir``; ``mlflow ui --backend-store-uri sqlite:///results/demo/mlflow.db`` shows the runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from selfmedhpm.errors import install_excepthook
from selfmedhpm_tools import reports
from selfmedhpm_tools.phantom import BTCV_LABELS, generate_dataset

ROOT = Path(__file__).resolve().parents[2]
PRETRAIN = ROOT / "bundles" / "selfmedhpm_ct_pretraining"
SEGMENT = ROOT / "bundles" / "selfmedhpm_ct_segmentation"
DEMO_RECIPE = SEGMENT / "configs" / "train_demo.json"  # the fine-tuning recipe; its grid and crop serve both stages
PRETRAIN_CONFIGS = ("train.json", "train_cpu.json", "train_demo.json")  # CPU preset + the demo's pretraining recipe
RECIPE_FLAGS = {  # flag: (key of train_demo.json, type, help); the demo's flags whose defaults that file holds
    "pixdim": ("pixdim", float, "spacing in mm of both stages"),
    "roi_size": ("roi_size", int, "crop of both stages (multiples of 16)"),
    "feature_size": ("feature_size", int, "UNETR's convolutional width"),
    "learning_rate": ("learning_rate", float, "fine-tuning learning rate"),
    "layer_decay": ("layer_decay", float, "fine-tuning layer-wise lr decay"),
    "warmup_epochs": ("warmup_epochs", int, "fine-tuning warm-up epochs"),
    "num_samples": ("num_samples", int, "fine-tuning crops per case and iteration"),
    "finetune_epochs": ("epochs", int, "fine-tuning epochs per run"),
    "val_interval": ("val_interval", int, "fine-tuning epochs between validations"),
}

logger = logging.getLogger(__name__)


class Stages:
    """Prints a banner and the wall time of each stage, and keeps the times for the report."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.times: dict[str, float] = {}

    def __call__(self, name: str):
        stages = self

        class _Stage:
            def __enter__(self):
                self.t0 = time.perf_counter()
                print(f"\n=== [{time.perf_counter() - stages.start:6.0f} s] {name} ===", flush=True)

            def __exit__(self, *exc):
                stages.times[name] = time.perf_counter() - self.t0
                print(f"=== {name}: {stages.times[name]:.0f} s ===", flush=True)

        return _Stage()


def _configs(bundle: Path, *names: str) -> list[str]:
    return [str(bundle / "configs" / name) for name in names]


def _tracking(bundle: Path) -> str:
    settings = bundle / "configs" / "mlflow_tracking.json"
    return str(settings) if settings.is_file() else "mlflow"


def run_bundle(
    config_file: list[str],
    tracking_uri: str | None,
    run_name: str,
    experiment_name: str = "selfmedhpm_demo",
    **overrides: Any,
) -> None:
    """``python -m monai.bundle run`` in this process, MLflow-tracked (run ``run_name`` of ``experiment_name``) when
    ``tracking_uri`` is given."""
    from monai.bundle import run

    bundle = Path(config_file[0]).parents[1]
    kwargs: dict[str, Any] = {"bundle_root": str(bundle), **overrides}
    if tracking_uri:
        kwargs.update(
            tracking=_tracking(bundle), tracking_uri=tracking_uri, experiment_name=experiment_name, run_name=run_name
        )
    run(
        config_file=config_file,
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=str(bundle / "configs" / "logging.conf"),
        **kwargs,
    )


def ranking_figures(
    pre_dir: Path,
    data: Path,
    cases: list[dict],
    overrides: dict,
    crops_per_case: int = 8,
    configs: tuple[str, ...] | list[str] = PRETRAIN_CONFIGS,
) -> dict:
    """Does the mining mine, on held-out crops (the ``cases``, never pretrained on, cropped as in pretraining: padded
    by ``crop_margin``, so that organs sit at other patches from crop to crop): for the EMA teacher, each teacher view's
    Kendall tau against the true per-patch loss, the mask loss ratio of the mask it chooses and its share of the
    oracle's gain, beside patch position alone and the oracle (:func:`~selfmedhpm_tools.metrics.mining_figures`); the
    masked-pass tau of the teacher, the student and an untrained network; and the full view's position share. The
    pretraining run of ``pre_dir`` used the pretraining bundle's ``configs`` with ``overrides``."""
    import torch
    from monai.bundle import ConfigParser
    from selfmedhpm.checkpoint import load_weights
    from selfmedhpm_tools.metrics import held_out_crops, mining_figures

    parser = ConfigParser()
    parser.read_config(_configs(PRETRAIN, *configs))
    parser.update({"dataset_dir": str(data), **overrides})
    crops = held_out_crops(parser, [data / case["image"] for case in cases], crops_per_case)
    settings = {k: parser.get_parsed_content(k) for k in ("norm_pix_loss", "mask_ratio", "teacher_passes")}
    nets = {}
    torch.manual_seed(0)
    for name, weights in (("untrained", None), ("teacher", "teacher.pt"), ("student", "model.pt")):
        nets[name] = parser.get_parsed_content("network_def", lazy=False)
        if weights:
            nets[name].load_state_dict(load_weights(pre_dir / weights))
    common = {"norm_pix_loss": settings["norm_pix_loss"], "mask_ratio": settings["mask_ratio"],
              "passes": settings["teacher_passes"]}  # fmt: skip
    teacher = mining_figures(nets["teacher"], crops, **common)
    untrained = mining_figures(nets["untrained"], crops, views=("full",), draws=1, **common)
    student = mining_figures(nets["student"], crops, views=(), draws=1, **common)
    return {
        "crops": len(crops),
        "crop_margin": parser.get_parsed_content("crop_margin"),
        "teacher_view": parser.get_parsed_content("teacher_view"),
        "scorers": teacher["scorers"],
        "tau_untrained": untrained["scorers"]["full"]["tau"],
        "hard_mask_loss_ratio_untrained": untrained["scorers"]["full"]["mask_loss_ratio"],
        "position_share": teacher["position_share"],
        "masked_tau_student": float(np.mean(student["masked_tau"])),
        "masked_tau_teacher": float(np.mean(teacher["masked_tau"])),
        "masked_tau_untrained": float(np.mean(untrained["masked_tau"])),
        "masked_tau_position_only": float(np.mean(teacher["masked_position_tau"])),
    }


def _load(path: Path) -> Any:
    return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m selfmedhpm_tools.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", default="results/data", type=Path, help="synthetic data (generated if absent)")
    parser.add_argument("--results_dir", default="results/demo", type=Path, help="everything the demo writes")
    parser.add_argument("--cases", default=12, type=int, help="synthetic cases (a quarter for validation)")
    parser.add_argument("--seed", default=0, type=int)
    parser.add_argument("--new_look_cases", default=4, type=int, help="held-out cases of the phantom's new look")
    parser.add_argument("--new_look_seed", default=1000, type=int, help="their seed (another than --seed)")
    parser.add_argument("--pretrain_epochs", default=60, type=int)
    parser.add_argument("--hidden_size", default=96, type=int, help="ViT width of both bundles (mlp_dim: 4x)")
    parser.add_argument("--num_heads", default=4, type=int)
    parser.add_argument("--norm_pix_loss", default=True, action=argparse.BooleanOptionalAction,
                        help="pretrain on per-patch normalised targets (the paper's setting)")  # fmt: skip
    recipe = _load(DEMO_RECIPE)
    for flag, (key, kind, text) in RECIPE_FLAGS.items():
        nargs = len(recipe[key]) if isinstance(recipe[key], list) else None
        parser.add_argument(f"--{flag}", type=kind, nargs=nargs, help=f"{text} (default: {recipe[key]}, from "
                            "configs/train_demo.json of the segmentation bundle)")  # fmt: skip
    parser.add_argument("--no_mlflow", action="store_true", help="do not track the stages in MLflow")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for flag, (key, _, _) in RECIPE_FLAGS.items():  # the report names every value the run used
        if getattr(args, flag) is None:
            setattr(args, flag, recipe[key])

    results = args.results_dir.resolve()
    results.mkdir(parents=True, exist_ok=True)
    data = args.data_dir.resolve()
    tracking_uri = None if args.no_mlflow else f"sqlite:///{results / 'mlflow.db'}"
    stages = Stages()
    vit = {"hidden_size": args.hidden_size, "mlp_dim": 4 * args.hidden_size, "num_heads": args.num_heads}
    # one grid and one ViT for both bundles: the encoder is loaded strictly, its position embeddings as pretrained
    common = {"pixdim": list(args.pixdim), "roi_size": list(args.roi_size), **vit}
    finetuning = {key: getattr(args, flag) for flag, (key, _, _) in RECIPE_FLAGS.items() if key not in common}
    mae = {
        "decoder_hidden_size": args.hidden_size // 2,
        "decoder_mlp_dim": 2 * args.hidden_size,
        "norm_pix_loss": args.norm_pix_loss,
    }
    unetr = {"feature_size": args.feature_size}

    with stages("synthetic CT"):
        if (data / "dataset_0.json").is_file():
            print(f"using the existing data set {data}")
        else:
            generate_dataset(data, cases=args.cases, seed=args.seed, size="small")
    datalist = _load(data / "dataset_0.json")
    new_look = data / "new_look"  # held-out cases, all listed for validation
    with stages("synthetic CT, new look"):
        if (new_look / "dataset_0.json").is_file():
            print(f"using the existing data set {new_look}")
        else:
            generate_dataset(
                new_look, cases=args.new_look_cases, seed=args.new_look_seed, val_fraction=1.0, size="small",
                new_look=True,
            )  # fmt: skip
    val_case = datalist["validation"][0]

    pre_dir = results / "pretrain"
    with stages("HPM pretraining (CPU preset)"):
        run_bundle(
            _configs(PRETRAIN, *PRETRAIN_CONFIGS), tracking_uri, "pretrain_hpm",
            dataset_dir=str(data), output_dir=str(pre_dir), epochs=args.pretrain_epochs, save_interval=10,
            **mae, **common,
        )  # fmt: skip

    # the bundles write trained_with.json beside their weights: make release and make monailabel-app merge it
    runs = {"HPM-initialised": pre_dir / "encoder.pt", "scratch": None}
    finetune_configs = ["train.json", "train_cpu.json", DEMO_RECIPE.name]
    run_dirs = {name: results / ("finetune_hpm" if encoder else "finetune_scratch") for name, encoder in runs.items()}
    for name, encoder in runs.items():
        with stages(f"UNETR fine-tuning, {name}"):
            run_bundle(
                _configs(SEGMENT, *finetune_configs), tracking_uri, f"finetune_{name}",
                dataset_dir=str(data), output_dir=str(run_dirs[name]),
                pretrained_encoder=str(encoder) if encoder else None, **finetuning, **common,
            )  # fmt: skip
    summaries = {}
    for name in runs:
        with stages(f"evaluation, {name}"):
            run_bundle(
                _configs(SEGMENT, "train.json", "train_cpu.json", "evaluate.json"), tracking_uri, f"evaluate_{name}",
                dataset_dir=str(data), model_file=str(run_dirs[name] / "model.pt"),
                output_dir=str(run_dirs[name] / "eval"), **unetr, **common,
            )  # fmt: skip
            summaries[name] = _load(run_dirs[name] / "eval" / "summary.json")
    new_summaries = {}
    for name in runs:
        with stages(f"evaluation on the new look, {name}"):
            run_bundle(
                _configs(SEGMENT, "train.json", "train_cpu.json", "evaluate.json"), tracking_uri,
                f"evaluate_new_look_{name}", dataset_dir=str(new_look), model_file=str(run_dirs[name] / "model.pt"),
                output_dir=str(run_dirs[name] / "eval_new_look"), **unetr, **common,
            )  # fmt: skip
            new_summaries[name] = _load(run_dirs[name] / "eval_new_look" / "summary.json")

    figures = results / "figures"
    with stages("inference and figures"):
        image_path = data / val_case["image"]
        run_bundle(
            _configs(PRETRAIN, "inference.json", "train_cpu.json", "train_demo.json"), tracking_uri, "hpm_heatmap",
            dataset_dir=str(data), input_files=[str(image_path)], model_file=str(pre_dir / "teacher.pt"),
            output_dir=str(figures), **mae, **common,
        )  # fmt: skip
        infer_dir = results / "inference"
        run_bundle(
            _configs(SEGMENT, "inference.json", "train_cpu.json"), tracking_uri, "inference",
            input_file=str(image_path), model_file=str(run_dirs["HPM-initialised"] / "model.pt"),
            output_dir=str(infer_dir), **unetr, **common,
        )  # fmt: skip
        stem = image_path.name.split(".")[0]
        # every volume in RAS+ voxel order, whatever its storage (a third of the synthetic cases are stored LPS)
        image = nib.as_closest_canonical(nib.load(image_path)).get_fdata()
        label = np.asarray(nib.as_closest_canonical(nib.load(data / val_case["label"])).dataobj)
        pred = np.asarray(nib.as_closest_canonical(nib.load(infer_dir / f"{stem}_seg.nii.gz")).dataobj)
        reports.plot_overlay(np.clip((image + 175) / 425, 0, 1), label, pred, figures / "overlay.png")
        reports.plot_dice_bars(summaries, figures / "dice_per_organ.png")
        histories = {name: _load(run_dirs[name] / "history.json") for name in runs}
        reports.plot_curves(_load(pre_dir / "history.json"), histories, figures / "curves.png")
        ranking = ranking_figures(pre_dir, data, datalist["validation"], {**mae, **common})
        (results / "hpm_ranking.json").write_text(json.dumps(ranking, indent=2))

    _, _, table = reports.write_dice_table(summaries, results)
    _, carry_over = reports.write_carry_over_table(summaries, new_summaries, results)
    text = _report(summaries, table, stages, args, ranking, recipe, (new_summaries, carry_over))
    (results / "report.md").write_text(text)
    print("\n" + text, flush=True)
    if tracking_uri:
        _log_report(tracking_uri, results, figures, summaries, new_summaries, args)
        print(f"MLflow: mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000")
    return 0


def _log_report(
    tracking_uri: str, results: Path, figures: Path, summaries: dict, new_summaries: dict, args: argparse.Namespace
) -> None:
    """The report, the Dice tables and the figures as the MLflow run "report" of the demo's experiment."""
    from selfmedhpm.tracking import log_run

    keys = ("cases", "seed", "new_look_cases", "new_look_seed", "pretrain_epochs", "norm_pix_loss", *RECIPE_FLAGS)
    params = {k: getattr(args, k) for k in keys}
    metrics = {f"mean_dice/{name}": s["mean_dice"]["all_organs"] for name, s in summaries.items()}
    metrics.update({f"mean_dice_new_look/{name}": s["mean_dice"]["all_organs"] for name, s in new_summaries.items()})
    files = [results / "report.md", results / "dice_table.csv", results / "dice_table.md", results / "carry_over.csv"]
    files.append(figures)
    log_run(tracking_uri, "selfmedhpm_demo", "report", params, metrics, files)


def organs_above(summary: dict, threshold: float) -> int:
    """How many organs of an evaluation ``summary.json`` have a mean Dice of at least ``threshold``.

    Examples::

        >>> organs_above({"organs": {"liver": {"dice": {"mean": 0.9}}, "aorta": {"dice": {"mean": None}}}}, 0.6)
        1
    """
    return sum((organ["dice"]["mean"] or 0.0) >= threshold for organ in summary["organs"].values())


def crop_centres(ratios: list[float] | None) -> str:
    """How the fine-tuning crops are centred, from ``class_ratios`` of ``train_demo.json`` (one weight per class).

    Examples::

        >>> crop_centres(None)
        'centred on each of the 14 classes in turn'
        >>> crop_centres([1, 1, 1, 1, 2] + [1] * 9)
        'centred on each of the 14 classes in turn, gallbladder x2'
    """
    ratios = ratios or []
    base = min(ratios, default=1)
    extra = [f"{BTCV_LABELS[c]} x{w / base:g}" for c, w in enumerate(ratios) if w != base]
    return ", ".join(["centred on each of the 14 classes in turn", *extra])


def _report(
    summaries: dict,
    table: str,
    stages: Stages,
    args: argparse.Namespace,
    ranking: dict,
    recipe: dict,
    new_look: tuple[dict, str],
) -> str:
    """The demo's report.md; ``recipe``: the segmentation bundle's ``train_demo.json`` the run fine-tuned with;
    ``new_look``: the evaluation summaries on the new-look cases and the carry-over table."""
    from selfmedhpm_tools.metrics import mining_table

    hpm, scratch = (summaries[k]["mean_dice"]["all_organs"] for k in ("HPM-initialised", "scratch"))
    if hpm is None or scratch is None:
        verdict = "The mean Dice is undefined for one of the runs: see the per-organ table."
    elif hpm > scratch:
        verdict = f"In this budget, HPM initialisation beats training from scratch by {hpm - scratch:+.3f} mean Dice."
    else:
        verdict = (
            f"In this budget, HPM initialisation does NOT beat training from scratch ({hpm - scratch:+.3f} mean Dice): "
            "a few CPU minutes of pretraining on a handful of synthetic volumes are far from the paper's schedule."
        )
    ema = _load(PRETRAIN / "configs" / "train_demo.json")
    times = "\n".join(f"| {name} | {seconds:.0f} |" for name, seconds in stages.times.items())
    total = sum(stages.times.values())
    found = ", ".join(f"{name} {organs_above(s, 0.6)} of 13" for name, s in summaries.items())
    return (
        "# SelfMedHPM demo report\n\n"
        f"Synthetic CT ({args.cases} cases, seed {args.seed}); both stages on a {args.pixdim} mm grid with "
        f"{args.roi_size} crops; CPU presets. Pretraining: {args.pretrain_epochs} epochs, per-patch normalised "
        f"targets {args.norm_pix_loss}, EMA teacher decay {ema['ema_decay_start']} -> {ema['ema_decay_end']} "
        "(the pretraining bundle's `configs/train_demo.json`). Fine-tuning (the segmentation bundle's "
        f"`configs/train_demo.json`): {args.finetune_epochs} epochs of "
        f"{args.num_samples} crop(s) per case {crop_centres(recipe['class_ratios'])}, UNETR feature size "
        f"{args.feature_size}, "
        f"learning rate {args.learning_rate}, layer decay {args.layer_decay}, {args.warmup_epochs} warm-up "
        "epochs.\n\n"
        f"{verdict} Organs with validation Dice >= 0.6: {found}.\n\n## Validation Dice per organ\n\n{table}\n"
        f"{_carry_over_section(summaries, *new_look, args)}"
        "## Does hard patches mining mine\n\n"
        f"On {ranking['crops']} held-out crops of the validation cases (never pretrained on; each volume padded by "
        f"{ranking['crop_margin']} voxels a side before cropping, as in pretraining, so that organs sit at other "
        "patches from crop to crop), the EMA teacher's scores in each view against each patch's true reconstruction "
        "loss when masked (8 random masks): Kendall tau; the reconstruction loss of the masked patches under the HPM "
        "mask those scores choose (75% masked, half of them the top-scored, alpha_T; 8 masks per crop) over that under "
        "random masks, same network (above 1: harder than random, as HPM intends); and that gain as a share of the "
        "oracle's, the same recipe fed each patch's true loss. This run's teacher chose its masks with the "
        f"**{ranking['teacher_view']}** view.\n\n"
        f"{mining_table(ranking['scorers'])}\n"
        f"An untrained network's full view: tau {ranking['tau_untrained']:.3f}, mask loss ratio "
        f"{ranking['hard_mask_loss_ratio_untrained']:.3f}. Share of the variance of the teacher's full-view scores "
        f"explained by patch position alone: {ranking['position_share']:.2f} (near 1: it learnt where patches are "
        "usually hard rather than what makes them hard).\n\n"
        "What the ranking loss trains, the masked pass: under random masks, Kendall tau of the predictions for the "
        "masked patches, made from the visible ones, against those patches' losses under the same mask: student "
        f"{ranking['masked_tau_student']:.3f}, EMA teacher {ranking['masked_tau_teacher']:.3f}, untrained network "
        f"{ranking['masked_tau_untrained']:.3f}, patch position alone {ranking['masked_tau_position_only']:.3f}.\n\n"
        "## Figures\n\n- `figures/dice_per_organ.png`\n- `figures/curves.png`\n- `figures/overlay.png`\n"
        "- `figures/*_hpm.png` (the mask the HPM teacher chooses, the reconstruction, the teacher's scores in its view "
        "and its predicted loss when masked, beside each patch's true loss when masked)\n\n"
        f"## Wall time\n\n| stage | seconds |\n| --- | --- |\n{times}\n| total | {total:.0f} |\n"
    )


def _carry_over_section(summaries: dict, new_summaries: dict, table: str, args: argparse.Namespace) -> str:
    """The report's carry-over section: seen look (the validation cases) beside the new look, and the gap."""
    gaps = reports.carry_over_gaps(summaries, new_summaries)
    within = all(abs(g) <= 0.1 for g in gaps.values())
    gap_text = ", ".join(f"{name} {gap:+.3f}" for name, gap in gaps.items())
    return (
        "## Does it carry over: seen look and new look\n\n"
        f"{args.new_look_cases} held-out synthetic cases of the phantom's new look (seed {args.new_look_seed}; "
        "`python -m selfmedhpm_tools.phantom --new-look`): body size, subcutaneous and visceral fat, contrast timing "
        "(arterial or late instead of portal-venous), noise, kernel, beam-hardening streaks, field of view and slice "
        "thickness (5-8 mm) all drawn from outside the ranges of the training cases, beside the validation cases "
        f"(the seen look). 13-organ mean, new look minus seen look: {gap_text} "
        f"({'within' if within else 'NOT within'} the target of 0.1).\n\n{table}\n"
    )


if __name__ == "__main__":
    install_excepthook()  # this process is the command: a user error ends it with one ERROR line
    sys.exit(main())

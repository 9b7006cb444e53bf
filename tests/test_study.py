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

"""The label-scarce study: its statistics on fixed numbers, and `make study-quick`'s pipeline on a tiny setting."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from selfmedhpm_tools import stats, study, study_data
from selfmedhpm_tools.stats import paired_bootstrap_ci


def test_paired_bootstrap_ci_on_fixed_numbers():
    a = [0.80, 0.70, 0.90, 0.60, 0.75, 0.85]
    b = [0.70, 0.65, 0.80, 0.62, 0.70, 0.75]
    mean, low, high = paired_bootstrap_ci(a, b, rounds=20_000)
    assert mean == pytest.approx(np.mean(np.subtract(a, b)))  # 0.0633
    assert 0.0 < low < mean < high < 0.11
    assert paired_bootstrap_ci(a, b, rounds=20_000) == (mean, low, high)  # seeded
    mean, low, high = paired_bootstrap_ci(b, a)
    assert high < 0  # the order of the arms is the sign
    with pytest.raises(ValueError):
        paired_bootstrap_ci([], [])


def test_aggregation_and_pairing_over_seeds_and_cases():
    per_run = {
        ("hpm", 3, 0): {"c1": 0.8, "c2": 0.6},
        ("hpm", 3, 1): {"c1": 0.7, "c2": float("nan")},
        ("mae", 3, 0): {"c1": 0.5, "c2": 0.4},
        ("mae", 3, 1): {"c1": 0.6, "c2": 0.5},
        ("mae", 9, 0): {"c1": 0.9, "c2": 0.9},
    }
    xs, ys, seeds = stats.paired_differences(per_run, "hpm", "mae", 3)
    assert (xs, ys, seeds) == ([0.8, 0.6, 0.7], [0.5, 0.4, 0.6], 2)  # the NaN pair is left out
    assert stats.paired_differences(per_run, "hpm", "mae", 9) == ([], [], 0)
    assert stats.aggregate([0.5, 0.7]) == (0.6, 0.14142135623730948)
    assert stats.aggregate([0.4]) == (0.4, 0.0)
    rows = [
        {"case": "a", "liver": "0.9", "spleen": "0.5", "aorta": "nan"},
        {"case": "b", "liver": "0.1", "spleen": "0.3"},
    ]
    assert stats.case_means(rows, ["liver", "spleen", "aorta"]) == {"a": 0.7, "b": 0.2}


def test_labelled_draws_differ_by_seed_and_stay_in_the_pool():
    pool = [{"image": f"case_{i}"} for i in range(24)]
    draws = {seed: [d["image"] for d in study_data.labelled_draw(pool, 9, seed)] for seed in range(3)}
    assert all(len(set(d)) == 9 for d in draws.values())
    assert draws[0] != draws[1] != draws[2]
    assert study_data.labelled_draw(pool, 3, 0) == study_data.labelled_draw(pool, 3, 0)


# pred_weight: a training-only key, which the teacher's heat maps (inference.json) must leave out, not fail on
TINY = [
    "--pool", "3", "--test", "2", "--budgets", "1",
    "--set", 'pretrain={"epochs": 2, "roi_size": [32, 32, 32], "num_samples": 1, "pred_weight": 1.0}',
    "--set", "finetune_iterations=2", "--set", "unlabeled=1",
    "--set", 'common={"pixdim": [8.0, 8.0, 8.0]}',
    "--set", 'finetune={"roi_size": [32, 32, 32], "num_samples": 1, "feature_size": 8, "warmup_epochs": 1}',
]  # fmt: skip


@pytest.mark.slow
def test_quick_study_pipeline_runs_reports_and_resumes(tmp_path, one_thread):
    out = tmp_path / "study"
    assert study.main(["--quick", "--out", str(out), "--no_estimate", *TINY]) == 0
    report = (out / "README.md").read_text()
    assert "| scratch | 1 | 1 |" in report and "| hpm_reconstruction | 1 | 1 |" in report  # the CPU presets' view
    assert "| 1 | hpm_reconstruction - scratch |" in report  # the paired difference with its interval
    assert "nan" not in report and "| n/a |" in report  # organs found in no run (2 iterations): HD95 "n/a"
    for figure in ("dice_vs_labels.png", "dice_per_organ.png", "learning_curves.png"):
        assert (out / "figures" / figure).stat().st_size > 5_000, figure
    for name in ("teacher_first_epoch_hpm.png", "teacher_last_epoch_hpm.png"):
        assert (out / "figures" / name).is_file(), name
    ranking = json.loads((out / "runs" / "pretrain" / "hpm_reconstruction_seed0" / "ranking.json").read_text())
    assert ranking["crops"] == 8  # 4 crops of each of the 2 test cases
    scorers = ranking["scorers"]
    assert all(-1.0 <= row["tau"] <= 1.0 for row in scorers.values()) and 0.0 <= ranking["position_share"] <= 1.0
    section = report.split("## Does the mining mine")[1]
    assert "### hpm_reconstruction (1 seeds; chose its masks with the reconstruction view)" in section
    full = scorers["full"]
    row = f"| full view (HPM's paper and code) | {full['tau']:.3f} +- 0.000 | {full['mask_loss_ratio']:.3f} +- 0.000 |"
    assert row in section, section
    pretrained_on = json.loads((out / "runs" / "pretrain" / "hpm_reconstruction_seed0" / "datalist.json").read_text())[
        "training"
    ]
    assert len(pretrained_on) == 4  # the 3 labelled training cases' images and the 1 unlabelled case, no test case
    runs = sorted(p.name for p in (out / "runs" / "finetune").iterdir())
    assert runs == ["hpm_reconstruction_n1_seed0", "scratch_n1_seed0"]
    summary = json.loads(
        (out / "runs" / "finetune" / "hpm_reconstruction_n1_seed0" / "eval" / "summary.json").read_text()
    )
    assert summary["num_cases"] == 2  # the test set, never trained on
    datalist = json.loads((out / "runs" / "finetune" / "hpm_reconstruction_n1_seed0" / "datalist.json").read_text())
    used = {e["image"] for e in datalist["training"] + datalist["validation"]}
    assert used.isdisjoint(e["image"] for e in datalist["test"])
    with sqlite3.connect(out / "runs" / "mlflow.db") as db:
        names = {row[0] for row in db.execute("select name from experiments")}
        finished = db.execute("select count(*) from runs where status = 'FINISHED'").fetchone()[0]
    assert "selfmedhpm_study" in names and finished >= 5  # pretraining, 2 fine-tunings, 2 evaluations (+ figures)

    from selfmedhpm_tools import probes

    entry = probes.add(out, out / "probes.json", "tiny")  # this study as a probe: its settings and differences
    assert (entry["tokens_per_crop"], entry["pretraining_images"], entry["pretraining_iterations"]) == (8, 4, 8)
    assert [(d["budget"], d["pair"], d["pairs"]) for d in entry["differences"]] == [
        (1, "hpm_reconstruction - scratch", 2)
    ]
    stamps = {p: p.stat().st_mtime for p in (out / "runs").rglob("done.json")}
    assert study.main(["--quick", "--out", str(out), "--no_estimate", *TINY]) == 0  # again: finished runs not redone
    assert {p: p.stat().st_mtime for p in (out / "runs").rglob("done.json")} == stamps
    section = (out / "README.md").read_text().split("## When does pretraining pay")[1]  # the report shows the probe
    assert (
        f"| P1: tiny | 8 | 4 | 8 | 2 | 1 | hpm_reconstruction - scratch | {entry['differences'][0]['mean']:+.3f} |"
        in section
    )
    assert (out / "figures" / "pretraining_pays.png").stat().st_size > 5_000


TINY_MODEL = TINY[6:]  # the --set values: tiny crops and iterations, whatever the data


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["btcv", "nnunet"])
def test_study_runs_on_a_users_data_list_with_an_unseen_test_set(layout, tmp_path, python_env, one_thread, capsys):
    """A user's data set as distributed (BTCV's RawData tree; an nnU-Net raw folder with its own label set), listed
    by ``python -m selfmedhpm.datalist``, then the study on that list: a budget larger than the labelled pool is
    refused by name before anything runs; the study prints its plan and a time estimate, runs end to end, and writes
    the report and study.json (data list checksum, splits, configs); no test image is in any training, validation
    or pretraining list of any run."""
    from selfmedhpm_tools.phantom import generate_case
    from test_datalist import btcv_tree, nnunet_tree

    volumes = [generate_case(i, shape=(48, 48, 24), orientation="RAS") for i in range(4)]
    src = (btcv_tree if layout == "btcv" else nnunet_tree)(tmp_path / layout, volumes)
    lists = tmp_path / "lists"
    built = subprocess.run([sys.executable, "-m", "selfmedhpm.datalist", "--src", str(src), "--out", str(lists)],
                           capture_output=True, text=True, env=python_env)  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    out = tmp_path / "study"
    args = ["--dataset_dir", str(src), "--datalist", str(lists / "dataset_0.json"), "--out", str(out),
            "--validation", "1", "--arms", "scratch", "hpm", "--seeds", "0", *TINY_MODEL]  # fmt: skip
    assert study.main([*args, "--budgets", "1", "9"]) == 2
    refused = capsys.readouterr().err
    assert "label budget 9 exceeds the" in refused and str(lists / "dataset_0.json") in refused
    assert not (out / "runs" / "pretrain").exists()  # refused before any run

    assert study.main([*args, "--budgets", "1"]) == 0
    printed = capsys.readouterr().out
    assert "plan: 1 pretrainings (hpm x 1 seeds)" in printed and "estimated time of what is left" in printed
    record = json.loads((out / "study.json").read_text())
    assert record["datalist_sha256"] == hashlib.sha256((lists / "dataset_0.json").read_bytes()).hexdigest()
    test_images = set(record["splits"]["test"])
    assert len(test_images) == 1 and test_images.isdisjoint(record["splits"]["pretraining"])
    for listed in (out / "runs").glob("*/*/datalist.json"):
        used = json.loads(listed.read_text())
        seen = {entry["image"] for split in ("training", "validation") for entry in used.get(split, [])}
        assert seen and seen.isdisjoint(test_images), listed
    report = (out / "README.md").read_text()
    assert "| scratch | 1 | 1 |" in report and "| 1 | hpm - scratch |" in report
    assert str(lists / "dataset_0.json") in report and record["datalist_sha256"][:16] in report
    if layout == "nnunet":  # its own label set: liver and spleen, from labels.json beside the data list
        assert record["class_names"] == ["background", "liver", "spleen"]
        assert "2-organ mean Dice" in report and "8-organ" not in report
        summary = json.loads((out / "runs" / "finetune" / "hpm_n1_seed0" / "eval" / "summary.json").read_text())
        assert sorted(summary["organs"]) == ["liver", "spleen"]
    else:
        assert "13-organ mean Dice" in report and "8-organ mean Dice" in report

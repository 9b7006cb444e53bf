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

"""`make demo`'s pipeline on a tiny setting: every stage runs and the report holds its tables and figures."""

from __future__ import annotations

import json
import math

import pytest
from selfmedhpm_tools import demo


@pytest.mark.slow
def test_demo_pipeline_writes_report_ranking_and_figures(tmp_path, one_thread):
    out = tmp_path / "demo"
    args = ["--data_dir", str(tmp_path / "data"), "--results_dir", str(out), "--cases", "4", "--pretrain_epochs", "2",
            "--finetune_epochs", "1", "--val_interval", "1", "--no_mlflow", "--new_look_cases", "2"]  # fmt: skip
    assert demo.main(args) == 0
    report = (out / "report.md").read_text()
    for section in ("## Validation Dice per organ", "## Does it carry over: seen look and new look",
                    "## Does hard patches mining mine", "## Wall time", "| liver |"):  # fmt: skip
        assert section in report, section
    new_look = json.loads((tmp_path / "data" / "new_look" / "dataset_0.json").read_text())
    assert len(new_look["validation"]) == 2 and new_look["numTraining"] == 0 and "new look" in new_look["description"]
    for name in ("finetune_hpm", "finetune_scratch"):  # each model evaluated on both looks
        seen, new = (json.loads((out / name / d / "summary.json").read_text()) for d in ("eval", "eval_new_look"))
        assert seen["num_cases"] == 1 and new["num_cases"] == 2
        gap = new["mean_dice"]["all_organs"] - seen["mean_dice"]["all_organs"]
        run = "HPM-initialised" if name == "finetune_hpm" else "scratch"
        assert f"{run} {gap:+.3f}" in report
    carry = report.split("## Does it carry over: seen look and new look")[1].split("## ")[0]
    assert "| organ | HPM-initialised, seen look | HPM-initialised, new look | scratch, seen look |" in carry
    assert "| new minus seen, 13-organ mean |" in carry and (out / "carry_over.csv").is_file()
    times = report.split("## Wall time")[1]
    for stage in ("synthetic CT, new look", "evaluation on the new look, HPM-initialised",
                  "evaluation on the new look, scratch"):  # fmt: skip
        assert f"| {stage} |" in times, stage
    ranking = json.loads((out / "hpm_ranking.json").read_text())
    assert ranking["crops"] == 8 and ranking["crop_margin"] == 16  # one validation case, 8 crops
    figures = ("tau_untrained", "masked_tau_student", "masked_tau_teacher", "masked_tau_position_only",
               "hard_mask_loss_ratio_untrained", "position_share")  # fmt: skip
    assert all(math.isfinite(ranking[k]) for k in figures)
    scorers = ranking["scorers"]
    assert set(scorers) == {"full", "masked", "reconstruction", "position", "oracle"}
    assert all(math.isfinite(row["tau"]) and math.isfinite(row["mask_loss_ratio"]) for row in scorers.values())
    assert scorers["oracle"]["tau"] == pytest.approx(1.0) and scorers["oracle"]["oracle_share"] == pytest.approx(1.0)
    assert scorers["full"]["tau"] != ranking["tau_untrained"]  # the pretrained teacher was loaded
    section = report.split("## Does hard patches mining mine")[1]
    assert (
        f"| oracle: each patch's true loss when masked | 1.000 | {scorers['oracle']['mask_loss_ratio']:.3f} |"
        in section
    )
    for figure in ("dice_per_organ.png", "curves.png", "overlay.png"):
        assert (out / "figures" / figure).stat().st_size > 5_000, figure
    assert list((out / "figures").glob("*_hpm.png"))

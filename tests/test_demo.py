"""`make demo`'s pipeline on a tiny setting: every stage runs and the report holds its tables and figures."""

from __future__ import annotations

import json
import math

import pytest
from selfmedhpm import demo


@pytest.mark.slow
def test_demo_pipeline_writes_report_ranking_and_figures(tmp_path, one_thread):
    out = tmp_path / "demo"
    args = ["--data_dir", str(tmp_path / "data"), "--results_dir", str(out), "--cases", "4", "--pretrain_epochs", "2",
            "--finetune_epochs", "1", "--val_interval", "1", "--no_mlflow"]  # fmt: skip
    assert demo.main(args) == 0
    report = (out / "report.md").read_text()
    for section in ("## Validation Dice per organ", "## What the HPM teacher ranks", "## Wall time", "| liver |"):
        assert section in report, section
    ranking = json.loads((out / "hpm_ranking.json").read_text())
    assert ranking["crops"] == 4  # one validation case, 4 crops
    assert all(math.isfinite(ranking[k]) for k in ("tau_teacher", "tau_untrained", "tau_position_only"))
    assert ranking["tau_teacher"] != ranking["tau_untrained"]  # the pretrained teacher was loaded
    for figure in ("dice_per_organ.png", "curves.png", "overlay.png"):
        assert (out / "figures" / figure).stat().st_size > 5_000, figure
    assert list((out / "figures").glob("*_hpm.png"))

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

"""The GPU batch table of ``make bench`` (``selfmedhpm_tools.benchmarks.batches``), run on the CPU at a tiny size:
the rows it writes as it goes, and the MAE it measures beside HPM being the same trainer without HPM's work."""

from __future__ import annotations

import json

import pytest
import torch
from selfmedhpm_tools.benchmarks.batches import SameCodeMAEStep, batch_rows
from selfmedhpm_tools.benchmarks.common import phantom_crops
from selfmedhpm_tools.benchmarks.step import CPU_PRESET, HPMStep


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


@pytest.mark.slow
def test_batch_rows_measure_each_batch_and_write_them_as_they_come(tmp_path):
    rows_file = tmp_path / "gpu_batches.json"
    rows = batch_rows("cpu", 1e11, rows_file, batches=(1, 2), network=(CPU_PRESET, 32), reps=1)
    assert sorted(rows) == [1, 2] and json.loads(rows_file.read_text()).keys() == {"1", "2"}
    for batch, row in rows.items():
        assert set(row) == {"hpm", "mae_same_code", "monai_mae"}
        for figures in row.values():
            assert figures["seconds"] > 0 and figures["crops_per_s"] == pytest.approx(batch / figures["seconds"])
            assert 0 < figures["mfu"] < 1 and figures["peak_memory_gb"] is None  # no CUDA memory on the CPU
    # HPM's FLOPs: the MAE's plus the teacher's full-crop pass; twice the batch, twice the FLOPs
    assert rows[1]["hpm"]["gflop"] > rows[1]["mae_same_code"]["gflop"] > 0
    assert rows[2]["hpm"]["gflop"] == pytest.approx(2 * rows[1]["hpm"]["gflop"], rel=0.01)


def test_same_code_mae_draws_uniform_masks_and_leaves_the_teacher_alone():
    images = phantom_crops(2, 32, seed=0)
    mae = SameCodeMAEStep(CPU_PRESET, 32, images)
    teacher = {k: v.clone() for k, v in mae.teacher.state_dict().items()}
    seen = []
    original = mae.trainer.loss_function.forward
    mae.trainer.loss_function.forward = lambda rec, pred, imgs, mask, k: seen.append(mask.clone()) or original(
        rec, pred, imgs, mask, k
    )
    mae.step()
    mae.step()
    assert all(torch.equal(v, mae.teacher.state_dict()[k]) for k, v in teacher.items())  # no EMA update
    assert mae.trainer.final_hard_ratio == 0.0 and mae.trainer.loss_function.pred_weight == 0.0
    assert len(seen) == 2 and not torch.equal(seen[0], seen[1])  # random masks, not the teacher's choice
    assert seen[0].sum(1).tolist() == [int(0.75 * 8)] * 2  # gamma = 0.75 of the 2x2x2 patches
    assert HPMStep(CPU_PRESET, 32, images).trainer.loss_function.pred_weight > 0  # the HPM step keeps its loss


def test_report_judges_each_figure_against_its_one_declared_target(tmp_path):
    from selfmedhpm_tools.benchmarks import report
    from selfmedhpm_tools.benchmarks.common import Results, machine_info

    res = Results()
    with pytest.raises(KeyError, match="targets.py"):
        res.add("an_undeclared_figure", 1.0)
    res.add("pretrain_mfu", 0.7)  # CPU target ">= 0.6 and >= mae_mfu"
    res.add("mae_mfu", 0.75)
    res.add("hpm_step_over_mae_step", 1.9, note="a note", label="a label")  # "<= 1.7"
    res.add("inference_e2e_over_bare", 1.5)  # not judged in quick mode
    res.add("pretrain_b32_mfu", 0.31, "gpu")  # GPU target ">= 0.3"
    rows = {line.split(" | ")[0][3:-1]: line for line in report.figures_table(res, True, quick=True).splitlines()[2:]}
    assert rows["pretrain_mfu"].endswith("| missed by 0.05 (vs mae_mfu) |")
    assert rows["hpm_step_over_mae_step"].endswith("| <= 1.7 | missed by 0.2 |")
    assert rows["inference_e2e_over_bare"].endswith("| <= 1.2 (not judged in quick mode) |  |")
    assert rows["pretrain_b32_mfu"].endswith("| GPU: >= 0.3 | met |")
    info = {**machine_info(), "load_start": 0.0, "load_end": 0.0}
    table = report.write(res, info, "quick", tmp_path, 60.0)
    text = (tmp_path / "benchmarks.md").read_text()
    assert table in text and "a label; a note" in text and "$" not in text.replace("$(", "")


def test_report_renders_the_committed_run_and_refuses_a_misspelt_name(tmp_path, monkeypatch):
    """``--render-only`` rewrites the committed ``docs/benchmarks.md`` from ``docs/benchmarks.json`` unchanged; a name
    in the template that no figure, target or detail fills (here a misspelt detail of a section that ran) stops the
    report instead of reading "n/a" like a precision this CPU did not measure."""
    from helpers import ROOT
    from selfmedhpm_tools.benchmarks import report, run

    (tmp_path / "benchmarks.json").write_text((ROOT / "docs" / "benchmarks.json").read_text())
    assert run.main(["--render-only", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "benchmarks.md").read_text() == (ROOT / "docs" / "benchmarks.md").read_text()
    template = report.TEMPLATE.read_text()
    assert "$step_cpu_median_s_hpm_fp32 " in template and "$step_cpu_teacher_pass_s_bf16" in template
    misspelt = tmp_path / "benchmarks.md.in"
    misspelt.write_text(template.replace("$step_cpu_median_s_hpm_fp32 ", "$step_cpu_median_s_hpm_fp23 ", 1))
    monkeypatch.setattr(report, "TEMPLATE", misspelt)
    with pytest.raises(KeyError, match="step_cpu_median_s_hpm_fp23"):
        run.main(["--render-only", "--out", str(tmp_path)])


def test_medians_are_of_five_repetitions_unless_told_and_the_report_says_how_many(capsys):
    """Five timed repetitions by default in both modes (three left the ViT-B step ratio to chance on a noisy host);
    fewer than one is refused on the command line; the committed report names the count its medians are of."""
    import json

    from helpers import ROOT
    from selfmedhpm_tools.benchmarks import run

    assert run.parse_args([]).reps == run.parse_args(["--quick"]).reps == 5
    assert run.parse_args(["--reps", "2"]).reps == 2
    with pytest.raises(SystemExit):
        run.parse_args(["--reps", "0"])
    assert "--reps must be at least 1, got 0" in capsys.readouterr().err
    reps = json.loads((ROOT / "docs" / "benchmarks.json").read_text())["machine"]["reps"]
    assert f"medians of {reps} timed repetitions" in (ROOT / "docs" / "benchmarks.md").read_text()


@pytest.mark.slow
def test_gpu_mode_bundle_and_finetuning_rows_run_eager_and_compiled_on_the_cpu_preset(tmp_path):
    """The GPU-only parts of ``make bench`` (the pretraining bundle end to end with gpu_cache.json and --compile True;
    the segmentation iteration eager vs compiled), run on the CPU presets so that a GPU run does not meet them
    first."""
    from selfmedhpm_tools.benchmarks.batches import bundle_crops_per_s, finetune_rows

    rows = finetune_rows("cpu", 1e11, batch=1, reps=1, files=("train.json", "train_cpu.json"), precision="fp32")
    assert set(rows) == {"eager", "compiled"}
    for row in rows.values():
        assert row["seconds"] > 0 and row["crops_per_s"] == pytest.approx(1 / row["seconds"]) and 0 < row["mfu"] < 1
    rate = bundle_crops_per_s(
        "cpu", tmp_path, ["train_cpu.json"], quick=True, batch_size=1, num_samples=2, epochs=2,
        pixdim=[6.0, 6.0, 6.0], roi_size=[32, 32, 32], save_interval=2,
    )  # fmt: skip
    assert rate > 0
    history = json.loads((tmp_path / "bundle_e2e" / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2] and (tmp_path / "bundle_e2e" / "encoder.pt").is_file()

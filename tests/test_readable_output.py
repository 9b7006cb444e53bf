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

"""Output a person reads: the evaluation's per-organ table and ``summary.md``, each validation's organs in label
order, the line a fine-tuning ends with, the warning that a paper-scale run started on a CPU, the CPU preset's
validation settings, and the figures (colour bars on the HPM maps, an organ legend and no black margins on the
overlay)."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import PRETRAIN, SEGMENT, configs
from ignite.engine import Engine
from monai.bundle import ConfigParser
from selfmedhpm.checkpoint import BestModelSaver
from selfmedhpm.evaluation import log_validation, summarize, summary_table, write_reports
from selfmedhpm.handlers import CPUCostWarning
from selfmedhpm.labels import BTCV_CLASSES

ORGANS = list(BTCV_CLASSES[1:])


def test_evaluation_writes_summary_md_with_three_decimals_in_label_order(tmp_path):
    dice = np.tile(np.linspace(0.1, 0.9, 13), (2, 1)) + 0.0001234
    hd95 = np.full((2, 13), 12.3456)
    write_reports(tmp_path, ["a.nii.gz", "b.nii.gz"], BTCV_CLASSES, dice, hd95, grid="pre-processed")
    text = (tmp_path / "summary.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| organ")][1:]
    assert [row.split(" | ")[0][2:] for row in rows[:13]] == ORGANS  # label order, not alphabetical
    assert rows[0] == "| spleen | 0.100 | 0.000 | 12.3 | 2 |"
    assert rows[-2].startswith("| mean over all organs (13) | 0.500 |")
    assert text.startswith("# Evaluation: 2 cases (pre-processed)")


def test_summary_table_marks_undefined_values():
    dice = np.full((1, 13), 0.5)
    dice[0, 4] = np.nan
    table = summary_table(summarize(dice, BTCV_CLASSES))
    assert "| esophagus | n/a | n/a | 0 |" in table


def test_each_validation_logs_its_organs_as_a_table_in_label_order(caplog):
    values = {f"val_dice/{organ}": 0.1 * (i % 10) for i, organ in enumerate(ORGANS)}
    state = SimpleNamespace(epoch=5, metrics={"val_mean_dice": 0.4567, "val_dice_per_organ": values},
                            key_metric_name="val_mean_dice", best_metric=0.5, best_metric_epoch=3)  # fmt: skip
    with caplog.at_level(logging.INFO, logger="selfmedhpm.evaluation"):
        log_validation(SimpleNamespace(state=state))
    lines = caplog.records[-1].getMessage().splitlines()
    assert lines[0] == "validation after epoch 5: val_mean_dice 0.457 (best 0.500 at epoch 3)"
    assert [line.split("  ")[1].strip() for line in lines[1:]] == ORGANS
    assert lines[3].split()[-1] == "0.200" and max(len(line) for line in lines[1:]) < 40


def test_fine_tuning_ends_with_the_best_dice_its_epoch_and_the_model(tmp_path):
    saver = BestModelSaver(tmp_path, torch.nn.Linear(1, 1), settings={"roi_size": [64, 64, 64]})
    assert saver.report().startswith("no validation ran, so no model.pt was written")
    for epoch, dice in [(1, 0.2), (2, 0.61234), (3, 0.5)]:
        saver(SimpleNamespace(state=SimpleNamespace(epoch=epoch, metrics={"d": dice}, key_metric_name="d")))
    assert saver.report() == (
        f"best validation mean Dice 0.612 at epoch 2: {tmp_path / 'model.pt'} (settings: trained_with.json)"
    )
    assert (tmp_path / "trained_with.json").read_text().replace(" ", "").replace("\n", "") == '{"roi_size":[64,64,64]}'


def test_the_segmentation_run_lists_end_with_the_report_lines():
    parser = ConfigParser()
    parser.read_config(configs(SEGMENT, "train.json"))
    assert parser["run"] == ["$@train#trainer.run()", "$@validate#best_model.report()"]
    parser.read_config(configs(SEGMENT, "train.json", "evaluate.json"))
    assert parser["run"] == ["$@validate#evaluator.run()", "$@validate#report.log_summary()"]


def test_a_paper_scale_run_on_a_cpu_warns_with_its_estimate_and_the_cpu_preset(caplog):
    engine = Engine(lambda e, b: time.sleep(0.02))
    warning = CPUCostWarning("cpu", 768, "bundles/x/configs/train_cpu.json", iterations=2)
    warning.attach(engine)
    with caplog.at_level(logging.WARNING, logger="selfmedhpm.handlers"):
        engine.run(list(range(5)), max_epochs=100)
    (message,) = [r.getMessage() for r in caplog.records if "paper-scale" in r.getMessage()]
    seconds = float(message.split(": ")[1].split(" s per iteration")[0])
    assert 0.015 <= seconds < 0.5 and "for 100 epochs of 5 iterations" in message
    assert message.endswith("add bundles/x/configs/train_cpu.json to --config_file")
    for quiet in (CPUCostWarning("cpu", 96, "p"), CPUCostWarning("cuda", 768, "p")):
        assert not quiet.enabled  # the CPU preset on a CPU, or any run on a GPU: nothing to say


@pytest.mark.parametrize("bundle", [PRETRAIN, SEGMENT], ids=["pretraining", "segmentation"])
def test_both_trainers_attach_the_cpu_warning_for_the_paper_scale_only(bundle):
    for files, enabled in ((("train.json",), True), (("train.json", "train_cpu.json"), False)):
        parser = ConfigParser()
        parser.read_config(configs(bundle, *files))
        parser.update({"device": "$torch.device('cpu')"})
        (handler,) = [h for h in parser["train"]["handlers"] if h["_target_"].endswith("CPUCostWarning")]
        index = parser["train"]["handlers"].index(handler)
        built = parser.get_parsed_content(f"train#handlers#{index}")
        assert built.enabled is enabled and built.cpu_preset.endswith("configs/train_cpu.json")


def test_the_cpu_preset_validates_once_without_window_overlap_and_evaluation_keeps_it():
    parser = ConfigParser()
    parser.read_config(configs(SEGMENT, "train.json", "train_cpu.json"))
    parser.update({"train#trainer#max_epochs": 7})  # as MONAI Label sets it
    assert parser.get_parsed_content("val_interval") == 7
    assert parser.get_parsed_content("validate#inferer#inferer#overlap") == 0.0
    assert parser.get_parsed_content("sw_batch_size") == 4
    parser = ConfigParser()
    parser.read_config(configs(SEGMENT, "train.json", "train_cpu.json", "evaluate.json"))
    assert parser.get_parsed_content("validate#inferer#inferer#overlap") == 0.5


def test_overlay_has_an_organ_legend_and_no_black_margins(tmp_path):
    from matplotlib.image import imread
    from selfmedhpm_tools.reports import plot_overlay

    image = np.zeros((128, 128, 16))
    image[40:88, 30:98] = 0.6  # a body in the middle of a large field of view
    label = np.zeros(image.shape, dtype=np.uint8)
    label[50:60, 40:60], label[70:80, 60:80] = 6, 1  # liver, spleen
    path = plot_overlay(image, label, label, tmp_path / "overlay.png")
    pixels = imread(path)[..., :3]
    dark = (pixels.sum(axis=2) < 0.05).mean()  # the body's black surroundings are cropped away
    assert dark < 0.15, dark
    height, width = pixels.shape[:2]
    assert height < 1.2 * width  # the crop follows the body, not the square field of view


def test_hpm_figure_has_a_colour_bar_per_map(tmp_path, monkeypatch):
    from selfmedhpm import visualize

    figures = []
    monkeypatch.setattr(visualize.plt, "close", figures.append)
    rng = np.random.default_rng(0)
    views = {k: rng.random((32, 32, 24)) for k in ("image", "mask", "reconstruction", "heatmap", "true_loss")}
    visualize.plot_hpm_figure(views, tmp_path / "hpm.png", "case")
    (figure,) = figures
    bars = [ax for ax in figure.axes if ax.get_label() == "<colorbar>"]
    assert [bar.get_xlabel() for bar in bars] == ["score (higher: harder)", "reconstruction error (MSE)"]

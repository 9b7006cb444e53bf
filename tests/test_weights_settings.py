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

"""Weights carry the settings they were trained with: a model fine-tuned with the CPU preset (and a smaller grid) is
evaluated, run and put into a MONAI Label app through the plain configs, which apply the ``trained_with.json`` beside
it; an override that contradicts it, and an encoder of other ViT sizes, stop the run with one line naming the file
and what to change."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest
import torch
from helpers import SEG_TINY, SEGMENT, configs, run_workflow
from monai.bundle import ConfigParser
from selfmedhpm.bundle import apply_trained_with
from selfmedhpm.networks import HPMMaskedAutoEncoder
from selfmedhpm.transfer import EncoderMismatchError, encoder_state_dict
from selfmedhpm_tools import label_app

VIT = {"hidden_size": 96, "mlp_dim": 384, "num_heads": 4}
RECORDED = {**SEG_TINY, **VIT}  # what the CPU-preset model below is trained with, beyond the plain train.json


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def cpu_model(phantom_dir, tmp_path_factory) -> Path:
    """A model fine-tuned for one epoch with the CPU preset on a 6 mm grid with 32^3 crops: its folder."""
    out = tmp_path_factory.mktemp("cpu_model")
    run_workflow(
        configs(SEGMENT, "train.json", "train_cpu.json"),
        dataset_dir=str(phantom_dir),
        output_dir=str(out),
        epochs=1,
        **RECORDED,
    )
    return out


def test_the_settings_are_applied_before_anything_is_built(tmp_path):
    (tmp_path / "trained_with.json").write_text(json.dumps({"roi_size": [32, 32, 32], "hidden_size": 96, "x": 1}))
    parser = ConfigParser({"roi_size": [96, 96, 96], "hidden_size": 768, "net": {"size": "@roi_size"}})
    assert apply_trained_with(str(tmp_path / "model.pt"), parser) == {"roi_size": [32, 32, 32], "hidden_size": 96}
    assert parser.get_parsed_content("net") == {"size": [32, 32, 32]}  # "x" is not a key of this config: left out
    assert apply_trained_with(str(tmp_path / "elsewhere" / "model.pt"), parser) == {}  # no record, nothing applied


@pytest.mark.slow
def test_training_writes_the_settings_beside_the_model(cpu_model):
    record = json.loads((cpu_model / "trained_with.json").read_text())
    assert {k: record[k] for k in RECORDED if k in record} == {
        k: v for k, v in RECORDED.items() if k in ("roi_size", "pixdim", "feature_size", *VIT)
    }
    assert record["num_classes"] == 14 and record["class_names"][1] == "spleen" and "a_min" in record


@pytest.mark.slow
def test_evaluation_and_inference_of_a_cpu_preset_model_run_with_the_plain_configs(cpu_model, phantom_dir, tmp_path):
    from monai.bundle import run

    records: list[logging.LogRecord] = []
    listener = logging.Handler(logging.INFO)
    listener.emit = records.append  # the bundle's logging.conf replaces the root's handlers (pytest's caplog too)
    logging.getLogger("selfmedhpm").addHandler(listener)
    try:
        run(
            config_file=configs(SEGMENT, "train.json", "evaluate.json"),  # no preset, no size overrides
            dataset_dir=str(phantom_dir),
            model_file=str(cpu_model / "model.pt"),
            output_dir=str(tmp_path / "eval"),
        )
    finally:
        logging.getLogger("selfmedhpm").removeHandler(listener)
    applied = [r.getMessage() for r in records if "the weights were trained with" in r.getMessage()]
    assert len(applied) == 1 and "roi_size [32, 32, 32]" in applied[0] and "hidden_size 96" in applied[0]
    table = [r.getMessage() for r in records if r.getMessage().startswith("evaluation of 1 cases:")]
    assert len(table) == 1 and "| spleen | 0." in table[0] and table[0].endswith("dice_per_case.csv)")
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["num_cases"] == 1 and (tmp_path / "eval" / "summary.md").is_file()
    case = json.loads((phantom_dir / "dataset_0.json").read_text())["validation"][0]["image"]
    run(
        config_file=configs(SEGMENT, "inference.json"),
        input_file=str(phantom_dir / case),
        model_file=str(cpu_model / "model.pt"),
        output_dir=str(tmp_path / "seg"),
    )
    stem = Path(case).name.split(".")[0]
    assert nib.load(tmp_path / "seg" / f"{stem}_seg.nii.gz").shape == nib.load(phantom_dir / case).shape


@pytest.mark.slow
def test_an_override_against_the_recorded_settings_stops_with_one_line(cpu_model, phantom_dir, python_env):
    case = json.loads((phantom_dir / "dataset_0.json").read_text())["validation"][0]["image"]
    config = str(SEGMENT / "configs" / "inference.json")
    weights = str(cpu_model / "model.pt")
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, "--input_file",
               str(phantom_dir / case), "--model_file", weights, "--roi_size", "[96,96,96]"]  # fmt: skip
    result = subprocess.run(command, env=python_env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith(f"ERROR {cpu_model / 'model.pt'} was trained with roi_size [32, 32, 32]"), last
    assert str(cpu_model / "trained_with.json") in last and "remove --roi_size" in last
    assert "Traceback" not in result.stderr and "Failed to evaluate" not in result.stderr


def test_fine_tuning_from_an_encoder_of_other_vit_sizes_names_the_overrides(tmp_path):
    net = HPMMaskedAutoEncoder(img_size=32, decoder_hidden_size=48, decoder_mlp_dim=192, decoder_num_layers=1,
                               decoder_num_heads=4, **VIT)  # fmt: skip
    path = tmp_path / "encoder.pt"
    torch.save(encoder_state_dict(net), path)
    pretrained_with = {"pixdim": [6.0, 6.0, 6.0], "a_min": -175.0, "a_max": 250.0, "roi_size": [32, 32, 32], **VIT}
    (tmp_path / "encoder.json").write_text(json.dumps({"pretrained_with": pretrained_with, "epoch": 1}))
    parser = ConfigParser()
    parser.read_config(configs(SEGMENT, "train.json"))  # the paper-scale ViT-B
    parser.update({"pretrained_encoder": str(path), "roi_size": [32, 32, 32], "device": "$torch.device('cpu')"})
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("load_encoder")
    error = info.value if isinstance(info.value, EncoderMismatchError) else info.value.__cause__
    assert isinstance(error, EncoderMismatchError) and "\n" not in str(error)
    assert str(tmp_path / "encoder.json") in str(error)
    assert "add --hidden_size 96 --mlp_dim 384 --num_heads 4" in str(error)


@pytest.mark.slow
def test_a_monai_label_app_serves_and_describes_the_model_its_weights_were_trained_as(cpu_model, tmp_path):
    sample = tmp_path / "sample"
    sample.mkdir()
    (sample / "main.py").write_text("# a stand-in for MONAI Label's monaibundle sample app\n")
    argv = ["--out", str(tmp_path / "app"), "--preset", "none", "--weights", str(cpu_model / "model.pt"),
            "--sample_app", str(sample)]  # fmt: skip
    assert label_app.main(argv) == 0  # the weights load strictly into the merged network, or it refuses
    bundle = tmp_path / "app" / "model" / SEGMENT.name
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    assert (inference["roi_size"], inference["hidden_size"], inference["feature_size"]) == ([32, 32, 32], 96, 8)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())  # MONAI Label's /info/ shows it
    described = meta["description"]
    assert "ViT of width 96, 4 heads, MLP 384" in described and "32x32x32 crops at 6 x 6 x 6 mm" in described
    assert "ViT-B" not in described and "96^3" not in described
    assert "6 x 6 x 6 mm" in meta["image_classes"]

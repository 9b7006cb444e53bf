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

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import PRETRAIN, SEGMENT, configs
from monai.bundle import ConfigParser
from selfmedhpm.bundle import UnknownConfigKeyError, bundle_root, check_overrides
from selfmedhpm.utils import as_bool


@pytest.mark.parametrize("text,expected", [("true", True), ("False", False), ("0", False), ("yes", True), (1, True)])
def test_flags_parse_words_and_numbers(text, expected):
    assert as_bool(text) is expected


def test_flag_rejects_garbage_with_value():
    with pytest.raises(ValueError, match="'maybe'"):
        as_bool("maybe", "resume")


def test_bundle_root_is_parent_of_configs_folder(tmp_path):
    argv = ["run", "--config_file", str(tmp_path / "b" / "configs" / "train.json")]
    assert bundle_root(argv) == str(tmp_path / "b")


def test_override_typo_is_refused_with_suggestion(tmp_path):
    files = str(configs(PRETRAIN, "train.json", "train_cpu.json"))
    assert check_overrides(["run", "--config_file", files, "--epochs", "3", "--train#dataloader#num_workers", "0"])
    with pytest.raises(UnknownConfigKeyError, match="'learnig_rate'.*did you mean 'learning_rate'"):
        check_overrides(["run", "--config_file", files, "--learnig_rate", "0.1"])


def test_override_typo_stops_bundle_run_before_training(tmp_path):
    config = str(configs(PRETRAIN, "train.json", "train_cpu.json"))
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, "--dataset_dir", str(tmp_path),
               "--output_dir", str(tmp_path / "out"), "--epoch", "3"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "unknown config key 'epoch'" in result.stderr and "did you mean 'epochs'" in result.stderr
    assert not (tmp_path / "out").exists()


def test_missing_dataset_dir_is_reported_before_work(tmp_path):
    config = str(configs(PRETRAIN, "train.json"))
    missing = tmp_path / "no_such_data"
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, "--dataset_dir", str(missing),
               "--output_dir", str(tmp_path / "out")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert f"{missing}: dataset directory does not exist" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("device,expected", [("cpu", "fp32"), ("cuda", "bf16")])
@pytest.mark.parametrize("bundle", ["pretraining", "segmentation"])
def test_precision_follows_the_device_alone_and_the_teacher_follows_the_student(bundle, device, expected):
    """The same expression in both bundles, reading nothing but the device; the teacher's precision is the student's
    (int8 only when asked: ``--teacher_precision int8``), so the masks do not follow the CPU's features."""
    parser = ConfigParser()
    parser.read_config(configs(PRETRAIN if bundle == "pretraining" else SEGMENT, "train.json"))
    parser.update({"device": f"$torch.device('{device}')"})
    assert parser.get_parsed_content("precision") == expected
    if bundle == "pretraining":
        assert (
            parser["teacher_precision"] == "@precision" and parser.get_parsed_content("teacher_precision") == expected
        )
    pretraining, segmentation = (ConfigParser.load_config_files(configs(b, "train.json")) for b in (PRETRAIN, SEGMENT))
    assert pretraining["precision"] == segmentation["precision"]

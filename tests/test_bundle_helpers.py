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

import json
import subprocess
import sys

import pytest
import torch
from helpers import PRETRAIN, SEGMENT, configs
from monai.bundle import ConfigParser
from selfmedhpm.bundle import UnknownConfigKeyError, bundle_root, check_overrides
from selfmedhpm.errors import user_error
from selfmedhpm.utils import as_bool


@pytest.mark.parametrize("text,expected", [("true", True), ("False", False), ("0", False), ("yes", True), (1, True)])
def test_flags_parse_words_and_numbers(text, expected):
    assert as_bool(text) is expected


def test_flag_rejects_garbage_with_value():
    with pytest.raises(ValueError, match="'maybe'"):
        as_bool("maybe", "resume")


def test_bundle_root_is_parent_of_configs_folder(tmp_path):
    assert bundle_root([str(tmp_path / "b" / "configs" / "train.json")]) == str(tmp_path / "b")


def test_bundle_root_of_an_in_process_run_is_the_bundle_of_its_config_file(tmp_path, monkeypatch):
    """``monai.bundle.run(...)`` from another working folder: the bundle is found from the config file, as on the
    command line (``sys.argv`` is pytest's here)."""
    from monai.bundle import run

    configs_dir = tmp_path / "my_bundle" / "configs"
    configs_dir.mkdir(parents=True)
    seen = tmp_path / "seen.txt"
    config = {
        "imports": ["$import selfmedhpm", "$import pathlib"],
        "seen": str(seen),
        "root": "$selfmedhpm.bundle.bundle_root()",
        "run": ["$pathlib.Path(@seen).write_text(@root)"],
    }
    (configs_dir / "x.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)
    run(config_file=str(configs_dir / "x.json"), logging_file=False, meta_file=None)
    assert seen.read_text() == str(tmp_path / "my_bundle")


def test_override_typo_is_refused_with_suggestion(tmp_path):
    files = configs(PRETRAIN, "train.json", "train_cpu.json")
    assert check_overrides(files, {"epochs": 3, "train#dataloader#num_workers": 0, "train::dataloader::shuffle": 0})
    with pytest.raises(UnknownConfigKeyError, match="'learnig_rate'.*did you mean 'learning_rate'"):
        check_overrides(files, {"learnig_rate": 0.1})


@pytest.mark.parametrize("bundle", [PRETRAIN, SEGMENT])
def test_override_typo_is_refused_in_process(bundle, tmp_path):
    """``monai.bundle.run(config_file=..., epoch=3)`` from Python (as the demo, the study or a user's script run the
    bundles) is refused as ``--epoch 3`` is on the command line, before any work."""
    from monai.bundle import run
    from selfmedhpm.errors import user_error

    with pytest.raises(Exception) as info:
        run(config_file=configs(bundle, "train.json", "train_cpu.json"), dataset_dir=str(tmp_path / "no_data"),
            output_dir=str(tmp_path / "out"), epoch=3)  # fmt: skip
    found = user_error(info.value)
    assert isinstance(found, UnknownConfigKeyError) and "did you mean 'epochs'?" in str(found), repr(info.value)
    assert not (tmp_path / "out").exists()


def test_in_process_overrides_of_existing_keys_pass(tmp_path):
    """The same check lets real keys through (here the run then stops at the data check of a missing folder)."""
    from monai.bundle import run
    from selfmedhpm.check_data import DataCheckError
    from selfmedhpm.errors import user_error

    with pytest.raises(Exception) as info:
        run(config_file=configs(PRETRAIN, "train.json", "train_cpu.json"), dataset_dir=str(tmp_path / "no_data"),
            output_dir=str(tmp_path / "out"), epochs=3, **{"train#dataloader#num_workers": 0})  # fmt: skip
    assert isinstance(user_error(info.value), DataCheckError), repr(info.value)


@pytest.mark.slow
def test_override_typo_stops_bundle_run_before_training(tmp_path):
    config = str(configs(PRETRAIN, "train.json", "train_cpu.json"))
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, "--dataset_dir", str(tmp_path),
               "--output_dir", str(tmp_path / "out"), "--epoch", "3"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "unknown config key 'epoch'" in result.stderr and "did you mean 'epochs'" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
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


def _parse(bundle, *names, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(configs(bundle, *names))
    parser.update({"device": "$torch.device('cpu')", **overrides})
    return parser


def test_gpu_cache_changes_one_named_transform_of_the_pretraining_pipeline():
    plain = _parse(PRETRAIN, "train.json").get_parsed_content("train#deterministic_transforms")
    cached = _parse(PRETRAIN, "train.json", "gpu_cache.json", device="$torch.device('meta')")
    steps = cached.get_parsed_content("train#deterministic_transforms")
    assert [type(t).__name__ for t in steps] == [type(t).__name__ for t in plain]
    assert type(steps[-1]).__name__ == "EnsureTyped" and steps[-1].converter.device == torch.device("meta")
    assert plain[-1].converter.device is None
    override = json.loads((PRETRAIN / "configs" / "gpu_cache.json").read_text())
    assert set(override) == {"cache_rate", "train#ensure_type#device", "train#dataloader"}


def test_demo_recipe_adds_class_indices_as_a_named_transform_between_cached_and_random_steps():
    parser = _parse(SEGMENT, "train.json", "train_demo.json")
    names = [type(t).__name__ for t in parser.get_parsed_content("train#preprocessing").transforms]
    cached = len(parser["train#deterministic_transforms"]) + len(parser["train#hu_transforms"])
    assert names[cached] == "ClassesToIndicesd" and names[cached + 1] == "RandCropByLabelClassesd"
    assert names.count("ClassesToIndicesd") == 1
    assert parser.get_parsed_content("train#class_indices").converter.num_classes == 14


@pytest.mark.parametrize("bundle", [PRETRAIN, SEGMENT])
def test_each_flag_is_parsed_once_and_checkpoints_list_their_objects_once(bundle):
    texts = {p.name: p.read_text() for p in (bundle / "configs").glob("*.json")}
    train = json.loads(texts["train.json"])
    assert {k: train["flags"][k] for k in ("check_data", "resume", "compile")} == {
        k: f"$selfmedhpm.utils.as_bool(@{k}, '{k}')" for k in ("check_data", "resume", "compile")
    }
    assert sum(text.count("as_bool(") for text in texts.values()) == 4  # train: 3 flags; inference: check_data
    handlers = {h["_target_"].split(".")[-1]: h for h in train["train"]["handlers"]}
    assert (
        handlers["ResumeFromCheckpoint"]["load_dict"]
        == handlers["EpochCheckpointer"]["save_dict"]
        == "@checkpoint_dict"
    )
    multi_gpu = json.loads(texts["multi_gpu_train.json"])
    assert not {"initialize", "run", "device"} & set(multi_gpu) and "distributed_setup" in multi_gpu
    assert "@distributed_setup" in train["initialize"] and train["distributed_setup"] is None


@pytest.mark.parametrize("bundle", [PRETRAIN, SEGMENT])
def test_inference_check_data_false_skips_every_input_check(bundle, tmp_path):
    """One meaning in both bundles: ``--check_data false`` reads no input before the loader."""
    parser = _parse(bundle, "inference.json", check_data="false")
    files = [str(tmp_path / "no_such.nii.gz")]
    parser.update({"input_files": files})
    assert parser.get_parsed_content("inputs") == files
    parser.update({"check_data": "true"})
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("inputs", lazy=False)
    assert "file not found" in str(user_error(info.value))

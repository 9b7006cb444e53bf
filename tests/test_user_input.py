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

"""What a user's input does to every workflow of both bundles: a broken data list is named in the last line a run
prints, and boolean flags given as text on the command line mean what they say."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import PRETRAIN, SEGMENT, configs
from monai.bundle import ConfigParser, ConfigWorkflow
from selfmedhpm.bundle import check_overrides
from selfmedhpm.check_data import DataCheckError, Problem
from selfmedhpm.errors import FlagError, UserInputError, user_error

TRAIN_SEG = ("train.json", "train_cpu.json")
WORKFLOWS = {  # name: (bundle, config files, workflow type, config key whose evaluation reads the data list)
    "pretraining train": (PRETRAIN, ("train.json", "train_cpu.json"), "train", "train#dataset#data"),
    "pretraining multi-GPU train": (
        PRETRAIN, ("train.json", "train_cpu.json", "multi_gpu_train.json"), "train", "train#dataset#data"
    ),
    "pretraining inference": (PRETRAIN, ("inference.json", "train_cpu.json"), "infer", "input_files"),
    "segmentation train": (SEGMENT, TRAIN_SEG, "train", "train#dataset#data"),
    "segmentation multi-GPU train": (SEGMENT, (*TRAIN_SEG, "multi_gpu_train.json"), "train", "train#dataset#data"),
    "segmentation evaluate": (SEGMENT, (*TRAIN_SEG, "evaluate.json"), "eval", "validate#dataset#data"),
}  # fmt: skip


def _entry(i: int) -> dict:
    return {"image": f"imagesTr/case_{i:03d}.nii.gz", "label": f"labelsTr/case_{i:03d}.nii.gz"}


BROKEN = {  # what the user did to dataset_0.json -> (its text, words the error must contain)
    "missing": (None, "datalist not found"),
    "cut off mid-entry": ('{"training": [{"image": "imagesTr/case_000.nii.gz",', "is not valid JSON"),
    "not an object": ("[1, 2]", "top level is a JSON array"),
    "no such split": (json.dumps({"train": [_entry(0)]}), "split (found keys: train)"),
    "entry without image": (
        json.dumps({s: [{"img": "x"}] for s in ("training", "validation", "test")}), "has no 'image' key"
    ),
    "file not there": (
        json.dumps({"training": [_entry(0), {"image": "imagesTr/nope.nii.gz", "label": "labelsTr/case_000.nii.gz"}],
                    "validation": [_entry(1), {"image": "imagesTr/nope.nii.gz", "label": "labelsTr/case_000.nii.gz"}],
                    "test": [{"image": "imagesTr/nope.nii.gz"}]}),
        "nope.nii.gz: listed in dataset_0.json but not found",
    ),
}  # fmt: skip


def _broken_set(phantom_dir: Path, folder: Path, how: str) -> Path:
    shutil.copytree(phantom_dir, folder)
    text, _ = BROKEN[how]
    datalist = folder / "dataset_0.json"
    if text is None:
        datalist.unlink()
    else:
        datalist.write_text(text)
    return folder


@pytest.mark.parametrize("how", list(BROKEN))
@pytest.mark.parametrize("workflow", list(WORKFLOWS))
def test_broken_datalist_is_named_in_every_workflow(workflow, how, phantom_dir, tmp_path):
    bundle, files, _, key = WORKFLOWS[workflow]
    data = _broken_set(phantom_dir, tmp_path / "data", how)
    parser = ConfigParser()
    parser.read_config(configs(bundle, *files))
    splits = {"infer_splits": ["test"]} if "inference" in workflow else {}
    parser.update({"dataset_dir": str(data), "output_dir": str(tmp_path / "out"), "check_data": False, **splits})
    with pytest.raises(Exception) as info:  # MONAI wraps it: "Failed to evaluate ConfigExpression"
        parser.get_parsed_content(key)
    found = user_error(info.value)
    assert isinstance(found, DataCheckError), repr(info.value)
    assert str(data / "dataset_0.json") in str(found) and BROKEN[how][1] in str(found), str(found)


def _last_line(stderr: str) -> str:
    return [line for line in stderr.splitlines() if line.strip()][-1]


@pytest.mark.slow
@pytest.mark.parametrize("workflow", list(WORKFLOWS))
def test_command_line_run_ends_with_the_datalist_problem(workflow, phantom_dir, tmp_path, python_env):
    """``python -m monai.bundle run`` (or torchrun for multi-GPU) of a data list cut off mid-entry: the last line
    printed names the file, the problem, its line and column."""
    bundle, files, _, _ = WORKFLOWS[workflow]
    data = _broken_set(phantom_dir, tmp_path / "data", "cut off mid-entry")
    config = str(configs(bundle, *files))
    args = ["run", "--config_file", config, "--dataset_dir", str(data), "--output_dir", str(tmp_path / "out")]
    if "inference" in workflow:
        args += ["--infer_splits", "['training']"]
    if "multi-GPU" in workflow:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                   "-m", "monai.bundle", *args]  # fmt: skip
    else:
        command = [sys.executable, "-m", "monai.bundle", *args]
    result = subprocess.run(command, env=python_env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    datalist = data / "dataset_0.json"
    expected = f"ERROR {datalist}: is not valid JSON: Expecting property name enclosed in double quotes at line 1"
    if "multi-GPU" in workflow:  # torchrun prints its own summary of the failed rank after the rank's output
        assert expected in result.stderr, result.stderr[-3000:]
    else:
        assert expected in _last_line(result.stderr), result.stderr[-3000:]
        assert "Traceback" not in result.stderr, result.stderr[-3000:]  # the ERROR line alone (SELFMEDHPM_DEBUG=1)


@pytest.mark.slow
def test_segmentation_inference_names_a_missing_input_folder(tmp_path, python_env):
    missing = tmp_path / "no_such_folder"
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
               str(configs(SEGMENT, "inference.json", "train_cpu.json")), "--dataset_dir", str(missing)]  # fmt: skip
    result = subprocess.run(command, env=python_env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert (
        _last_line(result.stderr) == f"ERROR {missing}: input folder not found; pass --dataset_dir DIR or "
        "--input_file PATH."
    ), result.stderr[-3000:]


# ------------------------------------------------------------------------------------------------ boolean flags


@pytest.fixture(scope="module")
def rejected_set(tmp_path_factory, phantom_dir) -> Path:
    """The phantom set with NaN voxels in one training image: the data check refuses it."""
    folder = tmp_path_factory.mktemp("rejected") / "data"
    shutil.copytree(phantom_dir, folder)
    entry = json.loads((folder / "dataset_0.json").read_text())["training"][0]
    path = folder / entry["image"]
    image = nib.load(path)
    voxels = np.asarray(image.dataobj, dtype=np.float32)
    voxels[10:12, 10:12, 5] = np.nan
    nib.save(nib.Nifti1Image(voxels, image.affine), path)
    return folder


FLAG_WORKFLOWS = {
    "pretraining train": (PRETRAIN, ("train.json", "train_cpu.json"), "train"),
    "segmentation train": (SEGMENT, TRAIN_SEG, "train"),
    "segmentation evaluate": (SEGMENT, (*TRAIN_SEG, "evaluate.json"), "eval"),
}


@pytest.mark.parametrize("value", ["false", "False", "0", "off", 0, False, "true", "True", "1", 1, True])
@pytest.mark.parametrize("workflow", list(FLAG_WORKFLOWS))
def test_check_data_flag_given_as_text(workflow, value, rejected_set, tmp_path):
    bundle, files, kind = FLAG_WORKFLOWS[workflow]
    overrides = {"dataset_dir": str(rejected_set), "output_dir": str(tmp_path), "check_data": value}
    if kind == "eval":
        overrides["eval_split"] = "training"
    workflow_ = ConfigWorkflow(config_file=configs(bundle, *files), workflow_type=kind, **overrides)
    checks = str(value).lower() in ("true", "1")
    if checks:
        with pytest.raises(Exception) as info:
            workflow_.initialize()
        found = user_error(info.value)
        assert isinstance(found, DataCheckError) and "NaN" in str(found), repr(info.value)
    else:
        workflow_.initialize()  # the check did not run: the run proceeds past it


@pytest.mark.parametrize("value,runs_check", [("false", False), ("0", False), ("True", True), ("1", True)])
def test_check_data_flag_of_segmentation_inference(value, runs_check, rejected_set, tmp_path):
    """The header check passes a volume with NaN voxels (it reads no voxels); the voxels are checked once loaded,
    unless ``check_data`` is false."""
    entry = json.loads((rejected_set / "dataset_0.json").read_text())["training"][0]
    bad = str(rejected_set / entry["image"])
    parser = ConfigParser()
    parser.read_config(configs(SEGMENT, "inference.json", "train_cpu.json"))
    parser.update({"input_file": bad, "check_data": value, "output_dir": str(tmp_path)})
    assert parser.get_parsed_content("inputs") == [bad]
    preprocessing = parser.get_parsed_content("preprocessing")
    if runs_check:
        with pytest.raises(Exception) as info:
            preprocessing({"image": bad})
        assert isinstance(user_error(info.value), DataCheckError) and "NaN" in str(user_error(info.value))
    else:
        assert preprocessing({"image": bad})["image"].ndim == 4


@pytest.mark.parametrize("key", ["check_data", "resume"])
def test_a_flag_that_is_not_a_boolean_is_refused_by_name(key, phantom_dir, tmp_path):
    workflow = ConfigWorkflow(
        config_file=configs(SEGMENT, *TRAIN_SEG), workflow_type="train", dataset_dir=str(phantom_dir),
        output_dir=str(tmp_path), **{key: "maybe"},
    )  # fmt: skip
    with pytest.raises(Exception) as info:
        workflow.initialize()
        workflow.run()
    found = user_error(info.value)
    assert isinstance(found, FlagError) and f"--{key} must be true or false" in str(found) and "'maybe'" in str(found)


@pytest.mark.slow
@pytest.mark.parametrize("bundle", [PRETRAIN, SEGMENT])
def test_override_typo_is_refused_in_both_bundles(bundle, phantom_dir, tmp_path, python_env):
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(configs(bundle, "train.json")),
               "--dataset_dir", str(phantom_dir), "--output_dir", str(tmp_path), "--epoch", "1"]  # fmt: skip
    result = subprocess.run(command, env=python_env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    last = _last_line(result.stderr)
    assert last.startswith("ERROR unknown config key 'epoch'") and "did you mean 'epochs'?" in last, last


ALL_WORKFLOWS = {
    **{k: v[:3] for k, v in WORKFLOWS.items()},
    "segmentation inference": (SEGMENT, ("inference.json",), "infer"),
}


@pytest.mark.parametrize("workflow", list(ALL_WORKFLOWS))
def test_every_workflow_installs_the_error_hook_before_anything_else(workflow):
    """The one place a bundle run gets its last ``ERROR`` line from (importing the package installs nothing)."""
    bundle, files, _ = ALL_WORKFLOWS[workflow]
    parser = ConfigParser()
    parser.read_config(configs(bundle, *files))
    assert parser["initialize"][:2] == [
        "$selfmedhpm.errors.install_excepthook()",
        "$selfmedhpm.bundle.check_overrides()",
    ]


def test_importing_the_package_leaves_the_excepthook_alone(python_env):
    """A host process (MONAI Label, a notebook, another program) that imports every runtime module keeps its own
    excepthook."""
    code = (
        "import sys\nhook = sys.excepthook\nimport importlib, selfmedhpm\n"
        "for name in sorted(selfmedhpm._SUBMODULES):\n    importlib.import_module('selfmedhpm.' + name)\n"
        "print(sys.excepthook is hook, len(selfmedhpm._SUBMODULES))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=python_env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[0] == "True", result.stdout


def test_user_errors_share_one_base():
    from selfmedhpm.bundle import UnknownConfigKeyError
    from selfmedhpm.checkpoint import CheckpointError

    for error in (DataCheckError, FlagError, CheckpointError, UnknownConfigKeyError):
        assert issubclass(error, UserInputError)


# ------------------------------------------------------------------------------------- what a run prints at the end


def test_a_user_error_ends_with_its_error_line_alone_unless_debugging(monkeypatch, capsys):
    from selfmedhpm.errors import _hook

    shown = []
    hook = _hook(lambda *args: shown.append(args))
    try:
        try:
            raise DataCheckError([Problem("imagesTr/a.nii.gz", "file not found")], "/data/dataset_0.json")
        except DataCheckError as e:
            raise RuntimeError("Failed to evaluate ConfigExpression") from e
    except RuntimeError as wrapped:
        error = wrapped
    monkeypatch.delenv("SELFMEDHPM_DEBUG", raising=False)
    hook(RuntimeError, error, error.__traceback__)
    assert shown == [] and capsys.readouterr().err == "ERROR imagesTr/a.nii.gz: file not found\n"
    monkeypatch.setenv("SELFMEDHPM_DEBUG", "1")
    hook(RuntimeError, error, error.__traceback__)
    assert len(shown) == 1 and capsys.readouterr().err.endswith("\nERROR imagesTr/a.nii.gz: file not found\n")
    monkeypatch.delenv("SELFMEDHPM_DEBUG")
    bug = ZeroDivisionError("not the user's")
    hook(ZeroDivisionError, bug, None)
    assert len(shown) == 2 and "ERROR" not in capsys.readouterr().err  # a bug keeps Python's traceback


def test_error_records_about_a_user_error_are_dropped_while_it_unwinds():
    import logging

    from selfmedhpm.errors import _RECORDS_FILTER

    record = logging.LogRecord(
        "ignite.engine.engine.SupervisedEvaluator", logging.ERROR, "x", 1, "terminating", (), None
    )
    try:
        raise DataCheckError([Problem("a.nii.gz", "file not found")])
    except DataCheckError:
        assert not _RECORDS_FILTER.filter(record)
    try:
        raise ZeroDivisionError
    except ZeroDivisionError:
        assert _RECORDS_FILTER.filter(record)


def test_known_third_party_notices_are_filtered_and_others_kept():
    import warnings

    from selfmedhpm.errors import quiet_known_notices

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        quiet_known_notices()
        warnings.warn("parsing config_file ['t.json']: any `\"_target_\"` value in it is resolved ...", UserWarning)
        warnings.warn(
            "monai.transforms.spatial.dictionary Orientationd.__init__:labels: Current default", FutureWarning
        )
        warnings.warn("NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register", UserWarning)
        warnings.warn("torch.meshgrid: in an upcoming release, it will be required to pass the indexing", UserWarning)
        warnings.warn("something a user should see", UserWarning)
    assert [str(w.message) for w in seen] == ["something a user should see"]


def test_the_weights_are_model_file_in_both_bundles_and_load_path_gets_a_did_you_mean():
    heat_maps = [str(f) for f in configs(PRETRAIN, "inference.json")]
    assert check_overrides(heat_maps, {"model_file": "teacher.pt"})
    with pytest.raises(UserInputError, match="unknown config key 'load_path' .*did you mean 'model_file'"):
        check_overrides(heat_maps, {"load_path": "teacher.pt"})
    segment = [str(f) for f in configs(SEGMENT, "inference.json")]
    assert check_overrides(segment, {"model_file": "model.pt"})


@pytest.fixture(scope="module")
def three_problems(phantom_dir, tmp_path_factory) -> Path:
    """The phantom set with three broken training cases: a missing image, a label value outside 0..13 and a
    truncated image."""
    folder = tmp_path_factory.mktemp("three_problems") / "data"
    shutil.copytree(phantom_dir, folder)
    datalist = json.loads((folder / "dataset_0.json").read_text())
    training = datalist["training"]
    training[0]["image"] = "imagesTr/missing.nii.gz"
    label = nib.load(folder / training[1]["label"])
    values = np.asarray(label.dataobj).copy()
    values[0, 0, 0] = 20
    nib.save(nib.Nifti1Image(values, label.affine), folder / "labelsTr" / "bad_values.nii.gz")
    training[1]["label"] = "labelsTr/bad_values.nii.gz"
    raw = (folder / training[2]["image"]).read_bytes()
    (folder / "imagesTr" / "truncated.nii.gz").write_bytes(raw[: len(raw) // 2])
    training[2]["image"] = "imagesTr/truncated.nii.gz"
    (folder / "dataset_0.json").write_text(json.dumps(datalist))
    return folder


@pytest.mark.parametrize("bundle", [SEGMENT, PRETRAIN], ids=["segmentation", "pretraining"])
def test_a_run_with_several_data_problems_reports_all_at_once_each_once(bundle, three_problems, tmp_path):
    parser = ConfigParser()
    parser.read_config(configs(bundle, "train.json", "train_cpu.json"))
    parser.update({"dataset_dir": str(three_problems), "output_dir": str(tmp_path)})
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("data_check")
    found = user_error(info.value)
    assert isinstance(found, DataCheckError), repr(info.value)
    errors = [p for p in found.problems if p.severity == "error"]
    named = sorted(Path(p.path).name for p in errors)
    expected = ["bad_values.nii.gz", "missing.nii.gz", "truncated.nii.gz"]
    if bundle == PRETRAIN:  # pretraining reads the images only: a label's values are not its problem
        expected.remove("bad_values.nii.gz")
    assert named == expected, [str(p) for p in errors]
    assert str(three_problems / "dataset_0.json") in str(found)

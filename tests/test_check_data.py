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

"""Tests for selfmedhpm.check_data: every check builds tiny bad data in tmp_path and looks for the file and problem."""

from __future__ import annotations

import gzip
import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from selfmedhpm.check_data import (
    DataCheckError,
    Problem,
    check_dataset,
    check_entries,
    check_image_files,
    load_datalist_checked,
    validate_dataset,
    validate_entries,
)
from selfmedhpm.transfer import describe_state_dict_mismatch

SHAPE = (16, 16, 8)
AFFINE = np.diag([1.5, 1.5, 2.5, 1.0])


def ct(shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    """A small HU-like volume: air and soft tissue."""
    return np.random.default_rng(seed).integers(-1000, 400, size=shape).astype(np.int16)


def seg(shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    lab = np.zeros(shape, dtype=np.uint8)
    lab[4:8, 4:8, 2:4] = 1
    lab[8:12, 8:12, 4:6] = 13
    return lab


def save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return str(path)


def make_dataset(root: Path, n: int = 2, splits: tuple[str, ...] = ("training", "validation")) -> Path:
    """A clean BTCV-layout data set with ``n`` cases per split; returns the dataset folder."""
    datalist: dict[str, list] = {}
    for split in splits:
        datalist[split] = []
        for i in range(n):
            name = f"{split[:2]}{i}.nii.gz"
            save(root / "imagesTr" / name, ct(seed=i))
            save(root / "labelsTr" / name, seg())
            datalist[split].append({"image": f"imagesTr/{name}", "label": f"labelsTr/{name}"})
    write_datalist(root, datalist)
    return root


def write_datalist(root: Path, datalist: object) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_0.json").write_text(json.dumps(datalist, indent=2))


def errors(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == "error"]


def only_error(problems: list[Problem], path: str) -> Problem:
    found = errors(problems)
    assert len(found) == 1, found
    assert found[0].path == path
    return found[0]


# ----------------------------------------------------------------------------------------------- 1. dataset / datalist


def test_reports_missing_dataset_dir(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    problems = check_dataset(missing)
    assert problems == [Problem(missing, "dataset directory does not exist")]
    with pytest.raises(DataCheckError, match="dataset directory does not exist"):
        validate_dataset(missing)


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "datalist not found"),
        ("", "datalist is empty"),
        ('{"training": [\n  {"image": "a.nii.gz"}\n  {"image": "b.nii.gz"}]}', "not valid JSON: Expecting ',' "),
        ("[1, 2]", "top level is a JSON array"),
        ('{"training": [{"image": "a.nii.gz"}]}', "has no 'validation' split"),
        (
            '{"training": {"image": "a.nii.gz"}, "validation": ["b.nii.gz"]}',
            "'training' is a JSON object; expected a list",
        ),
        ('{"training": [{"label": "a.nii.gz"}], "validation": ["b.nii.gz"]}', "'training'[0] has no 'image' key"),
        ('{"training": ["a.nii.gz"], "validation": []}', "'validation' is an empty list"),
    ],
)
def test_reports_bad_datalist(tmp_path: Path, content: str | None, expected: str) -> None:
    if content is not None:
        (tmp_path / "dataset_0.json").write_text(content)
    problems = check_dataset(str(tmp_path))
    assert len(problems) == 1 and problems[0].path.endswith("dataset_0.json")
    assert expected in problems[0].message
    with pytest.raises(DataCheckError) as info:
        load_datalist_checked(str(tmp_path / "dataset_0.json"), ["training", "validation"])
    assert expected in str(info.value) and "dataset_0.json" in str(info.value)


def test_invalid_json_names_line_and_column(tmp_path: Path) -> None:
    (tmp_path / "dataset_0.json").write_text('{"training": [\n  {"image": "a.nii.gz"}\n  {"image": "b"}]}')
    (problem,) = check_dataset(str(tmp_path))
    assert "line 3 column 3" in problem.message


def test_relative_datalist_resolved_against_dataset_dir(tmp_path: Path) -> None:
    make_dataset(tmp_path)
    os.rename(tmp_path / "dataset_0.json", tmp_path / "other.json")
    assert check_dataset(str(tmp_path), datalist="other.json") == []


# ----------------------------------------------------------------------------------------------- 2-4. files


def test_reports_missing_image_and_label_files(tmp_path: Path) -> None:
    make_dataset(tmp_path)
    os.remove(tmp_path / "imagesTr" / "tr0.nii.gz")
    os.remove(tmp_path / "labelsTr" / "va1.nii.gz")
    problems = errors(check_dataset(str(tmp_path)))
    assert [p.path for p in problems] == ["imagesTr/tr0.nii.gz", "labelsTr/va1.nii.gz"]
    assert all("file not found" in p.message and str(tmp_path) in p.message for p in problems)


def test_reports_entry_without_label(tmp_path: Path) -> None:
    make_dataset(tmp_path)
    data = json.loads((tmp_path / "dataset_0.json").read_text())
    del data["training"][1]["label"]
    write_datalist(tmp_path, data)
    problem = only_error(check_dataset(str(tmp_path)), "imagesTr/tr1.nii.gz")
    assert "no 'label'" in problem.message
    assert errors(check_dataset(str(tmp_path), require_labels=False)) == []


def test_reports_corrupt_nifti_with_file_name(tmp_path: Path) -> None:
    make_dataset(tmp_path)
    for path in (tmp_path / "imagesTr" / "tr0.nii.gz", tmp_path / "labelsTr" / "va0.nii.gz"):
        data = path.read_bytes()
        path.write_bytes(data[: min(200, len(data) // 2)])  # the tiny label compresses to ~130 bytes
    problems = errors(check_dataset(str(tmp_path)))
    assert [p.path for p in problems] == ["imagesTr/tr0.nii.gz", "labelsTr/va0.nii.gz"]
    assert all(p.message.startswith("cannot be read: ") for p in problems)


def test_reports_truncated_uncompressed_nifti(tmp_path: Path) -> None:
    path = Path(save(tmp_path / "scan.nii", ct()))
    path.write_bytes(path.read_bytes()[:1000])
    (problem,) = check_image_files([str(path)], check_intensity=False)
    assert problem.path == str(path) and "truncated" in problem.message


def test_finds_a_cut_off_compressed_nifti_without_decompressing_its_voxels(tmp_path: Path, monkeypatch) -> None:
    """The gzip trailer (uncompressed size) tells a whole ``.nii.gz`` from a cut-off one, so inference inputs are
    decompressed once, by the loader."""
    whole = Path(save(tmp_path / "whole.nii.gz", ct((64, 64, 32))))
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(whole.read_bytes()[: len(whole.read_bytes()) * 2 // 3])
    decompressed = []
    read = gzip.GzipFile.read
    monkeypatch.setattr(gzip.GzipFile, "read", lambda self, *a: decompressed.append(len(out := read(self, *a))) or out)
    assert check_image_files([str(whole)], check_intensity=False) == []
    assert 0 < sum(decompressed) < 64 * 64 * 32 * 2 / 10  # the header, not the voxels
    (problem,) = check_image_files([str(cut)], check_intensity=False)
    assert (
        problem.path == str(cut)
        and problem.message == "cannot be read: file is truncated (its compressed data ends early)"
    )


def test_nrrd_header_gives_the_grid_monai_reads(tmp_path: Path) -> None:
    """A NRRD image (LPS or RAS space) and a NIfTI label of the same voxels in the same world grid: no grid problem
    (the NRRD is read from its header, its affine turned into RAS as MONAI's reader does)."""
    import nrrd

    spacing, origin = np.array([1.5, 1.5, 2.5]), np.array([-10.0, -20.0, 30.0])
    for space, flip in (("left-posterior-superior", [-1, -1, 1]), ("right-anterior-superior", [1, 1, 1])):
        root = tmp_path / space
        header = {"space": space, "space directions": np.diag(spacing * flip), "space origin": origin * flip}
        (root / "imagesTr").mkdir(parents=True)
        nrrd.write(str(root / "imagesTr" / "a.nrrd"), ct(), header)
        save(root / "labelsTr" / "a.nii.gz", seg(), np.vstack([np.c_[np.diag(spacing), origin], [0, 0, 0, 1]]))
        entries = [{"image": "imagesTr/a.nrrd", "label": "labelsTr/a.nii.gz"}]
        write_datalist(root, {"training": entries, "validation": entries})
        assert check_dataset(str(root)) == [Problem("imagesTr/a.nrrd", "is listed 2 times (training, validation); "
                                                    "cases shared between splits leak data", "warning")]  # fmt: skip


def test_refuses_a_nrrd_without_patient_orientation_naming_the_file(tmp_path: Path) -> None:
    import nrrd

    path = str(tmp_path / "scan.nrrd")
    nrrd.write(path, ct(), {"space": "scanner-xyz", "space directions": np.eye(3), "space origin": np.zeros(3)})
    (problem,) = check_image_files([path], check_intensity=False)
    assert problem.path == path and "NRRD space 'scanner-xyz' has no patient orientation" in problem.message


def test_entries_are_checked_as_the_data_list_that_holds_them(tmp_path: Path) -> None:
    """check_entries is the primitive: the entries of a data list, checked directly, give the problems of
    check_dataset on that data list (paths absolute here, as a workflow holds them)."""
    make_dataset(tmp_path)
    save(tmp_path / "labelsTr" / "tr1.nii.gz", seg() + 14)
    data = json.loads((tmp_path / "dataset_0.json").read_text())
    absolute = {s: [{k: str(tmp_path / v) for k, v in e.items()} for e in data[s]] for s in ("training", "validation")}
    found = check_entries(absolute)
    assert [(p.path, p.message.split(":")[0]) for p in found] == [
        (str(tmp_path / "labelsTr" / "tr1.nii.gz"), "has values outside 0..13")
    ]
    assert [p.message for p in check_dataset(str(tmp_path))] == [p.message for p in found]
    with pytest.raises(DataCheckError, match="in the data lists of this run"):
        validate_entries(absolute)
    assert check_entries({"training": []})[0].message == "no cases: the list of entries is empty"


def test_reports_non_image_files(tmp_path: Path) -> None:
    (tmp_path / "notes.nii.gz").write_text("this is not an image\n")
    (tmp_path / "gzipped_text.nii.gz").write_bytes(gzip.compress(b"hello " * 100))
    (tmp_path / "plain.nii").write_text("hello " * 100)
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    (tmp_path / "scan.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "scan.txt").write_text("1 2 3")
    names = ["notes.nii.gz", "gzipped_text.nii.gz", "plain.nii", "empty.nii.gz", "scan.png", "scan.txt"]
    problems = check_image_files([str(tmp_path / n) for n in names])
    assert [Path(p.path).name for p in problems] == names
    assert "not gzip-compressed" in problems[0].message and "this is not" in problems[0].message
    assert "is not a NIfTI image" in problems[1].message and "is not a NIfTI image" in problems[2].message
    assert "empty (0 bytes)" in problems[3].message
    assert "is not a medical image file (suffix '.png')" in problems[4].message
    assert "suffix '.txt'" in problems[5].message and "expected NIfTI" in problems[5].message


# ----------------------------------------------------------------------------------------------- 5-6. geometry


def test_reports_2d_and_4d_images(tmp_path: Path) -> None:
    flat = save(tmp_path / "flat.nii.gz", ct((16, 16)))
    multi = save(tmp_path / "multi.nii.gz", ct((16, 16, 8, 2)))
    problems = check_image_files([flat, multi])
    assert [p.path for p in problems] == [flat, multi]
    assert "is 2D with shape (16, 16); expected a 3D volume" in problems[0].message
    assert "is 4D with shape (16, 16, 8, 2); expected a 3D volume" in problems[1].message


def test_accepts_4d_with_trailing_singleton(tmp_path: Path) -> None:
    make_dataset(tmp_path, n=1)
    save(tmp_path / "imagesTr" / "tr0.nii.gz", ct((16, 16, 8, 1)))
    assert check_dataset(str(tmp_path)) == []


def test_reports_shape_mismatch(tmp_path: Path) -> None:
    make_dataset(tmp_path)
    save(tmp_path / "labelsTr" / "tr1.nii.gz", seg((16, 16, 9)))
    problem = only_error(check_dataset(str(tmp_path)), "labelsTr/tr1.nii.gz")
    assert "shape (16, 16, 9) does not match its image imagesTr/tr1.nii.gz (16, 16, 8)" in problem.message


def test_reports_affine_mismatch(tmp_path: Path) -> None:
    make_dataset(tmp_path)
    moved = AFFINE.copy()
    moved[0, 3] = 5.0
    moved[2, 2] = 3.0
    save(tmp_path / "labelsTr" / "va0.nii.gz", seg(), moved)
    problem = only_error(check_dataset(str(tmp_path)), "labelsTr/va0.nii.gz")
    assert "affine does not match its image imagesTr/va0.nii.gz (spacing, origin differ)" in problem.message
    assert "image spacing (1.5, 1.5, 2.5) origin (0, 0, 0)" in problem.message
    assert "label spacing (1.5, 1.5, 3) origin (5, 0, 0)" in problem.message


def test_tolerates_tiny_affine_difference(tmp_path: Path) -> None:
    make_dataset(tmp_path, n=1)
    save(tmp_path / "labelsTr" / "tr0.nii.gz", seg(), AFFINE + 1e-5)
    assert check_dataset(str(tmp_path)) == []


# ----------------------------------------------------------------------------------------------- 7-9. voxel values


def test_reports_label_values_out_of_range(tmp_path: Path) -> None:
    make_dataset(tmp_path)
    bad = seg()
    bad[0, 0, :3] = [14, 255, 20]
    save(tmp_path / "labelsTr" / "tr0.nii.gz", bad)
    problem = only_error(check_dataset(str(tmp_path)), "labelsTr/tr0.nii.gz")
    assert "values outside 0..13: 14, 20, 255 (3 voxels)" in problem.message and "num_classes=14" in problem.message
    assert errors(check_dataset(str(tmp_path), num_classes=None)) == []


def test_lists_at_most_ten_label_values(tmp_path: Path) -> None:
    bad = np.arange(16 * 16 * 8).reshape(SHAPE).astype(np.int16) % 40
    label = save(tmp_path / "labelsTr" / "a.nii.gz", bad)
    save(tmp_path / "imagesTr" / "a.nii.gz", ct())
    write_datalist(tmp_path, {"training": [{"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}]})
    (problem,) = check_dataset(str(tmp_path), splits=["training"], num_classes=3)
    assert Path(label).name in problem.path
    assert "3, 4, 5, 6, 7, 8, 9, 10, 11, 12, ... (37 distinct)" in problem.message


def test_reports_non_integer_labels(tmp_path: Path) -> None:
    make_dataset(tmp_path)
    bad = seg().astype(np.float32)
    bad[0, 0, 0], bad[0, 0, 1] = 0.5, np.nan
    save(tmp_path / "labelsTr" / "va1.nii.gz", bad)
    problem = only_error(check_dataset(str(tmp_path)), "labelsTr/va1.nii.gz")
    assert "2 voxels with non-integer values (0.5, nan)" in problem.message


def test_reports_nan_and_inf_counts(tmp_path: Path) -> None:
    make_dataset(tmp_path)
    bad = ct().astype(np.float32)
    bad[0, 0, :3] = np.nan
    bad[1, 1, 1] = np.inf
    save(tmp_path / "imagesTr" / "tr1.nii.gz", bad)
    problem = only_error(check_dataset(str(tmp_path)), "imagesTr/tr1.nii.gz")
    assert "contains 3 NaN and 1 Inf voxels" in problem.message


def test_warns_on_normalised_intensities(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_dataset(tmp_path)
    scaled = np.random.default_rng(0).random(SHAPE).astype(np.float32)
    save(tmp_path / "imagesTr" / "va0.nii.gz", scaled)
    save(tmp_path / "imagesTr" / "va1.nii.gz", np.full(SHAPE, 40, dtype=np.int16))
    problems = check_dataset(str(tmp_path))
    assert [(p.path, p.severity) for p in problems] == [("imagesTr/va0.nii.gz", "warning")] + [
        ("imagesTr/va1.nii.gz", "warning")
    ]
    assert "looks already normalised" in problems[0].message and "Hounsfield" in problems[0].message
    assert "intensity range is tiny (40..40)" in problems[1].message
    with caplog.at_level(logging.WARNING, logger="selfmedhpm.check_data"):
        assert validate_dataset(str(tmp_path)) == problems
    assert "imagesTr/va0.nii.gz" in caplog.text
    assert check_dataset(str(tmp_path), check_intensity=False) == []


# ----------------------------------------------------------------------------------------------- whole data sets


def test_reports_all_problems_not_just_the_first(tmp_path: Path) -> None:
    make_dataset(tmp_path, n=3)
    os.remove(tmp_path / "imagesTr" / "tr0.nii.gz")
    (tmp_path / "labelsTr" / "tr2.nii.gz").write_bytes(b"garbage")
    bad = seg()
    bad[0, 0, 0] = 99
    save(tmp_path / "labelsTr" / "va2.nii.gz", bad)
    problems = check_dataset(str(tmp_path))
    assert [p.path for p in problems] == ["imagesTr/tr0.nii.gz", "labelsTr/tr2.nii.gz", "labelsTr/va2.nii.gz"]
    with pytest.raises(DataCheckError) as info:
        validate_dataset(str(tmp_path))
    text = str(info.value)
    assert text.splitlines()[0] == f"data check failed: 3 problems in {tmp_path / 'dataset_0.json'}"
    assert text.splitlines()[1].strip().startswith("ERROR  imagesTr/tr0.nii.gz: file not found")
    assert len(info.value.problems) == 3 and pickle.loads(pickle.dumps(info.value)).problems == problems


def test_clean_dataset_has_no_problems(tmp_path: Path) -> None:
    make_dataset(tmp_path, splits=("training", "validation", "test"))
    data = json.loads((tmp_path / "dataset_0.json").read_text())
    data["test"] = [e["image"] for e in data["test"]]  # test entries as plain strings, no labels
    write_datalist(tmp_path, data)
    assert check_dataset(str(tmp_path), splits=("training", "validation", "test")) == []
    assert validate_dataset(str(tmp_path), max_workers=2) == []


def test_warns_on_case_in_two_splits(tmp_path: Path) -> None:
    make_dataset(tmp_path)
    data = json.loads((tmp_path / "dataset_0.json").read_text())
    data["validation"].append(data["training"][0])
    write_datalist(tmp_path, data)
    (problem,) = check_dataset(str(tmp_path))
    assert problem.severity == "warning" and problem.path == "imagesTr/tr0.nii.gz"
    assert "listed 2 times (training, validation)" in problem.message


def test_progress_for_large_sets(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    save(tmp_path / "imagesTr" / "a.nii.gz", ct())
    save(tmp_path / "labelsTr" / "a.nii.gz", seg())
    entries = [{"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz"}] * 21
    write_datalist(tmp_path, {"training": entries[:11], "validation": entries[11:]})
    check_dataset(str(tmp_path), check_intensity=False)  # duplicates are checked once: no progress
    assert "checked" not in capsys.readouterr().err
    entries = [{"image": "imagesTr/a.nii.gz", "label": f"labelsTr/{i}.nii.gz"} for i in range(21)]
    for i in range(21):
        os.link(tmp_path / "labelsTr" / "a.nii.gz", tmp_path / "labelsTr" / f"{i}.nii.gz")
    write_datalist(tmp_path, {"training": entries, "validation": entries[:1]})
    check_dataset(str(tmp_path), check_intensity=False, max_workers=2)
    assert "checked 21/21 cases" in capsys.readouterr().err


def test_reads_nrrd_through_monai(tmp_path: Path) -> None:
    import nrrd  # a dependency (pynrrd): a broken install fails here instead of skipping

    bad = ct().astype(np.float32)
    bad[0, 0, 0] = np.nan
    path = str(tmp_path / "scan.nrrd")
    header = {"space": "left-posterior-superior", "space directions": np.diag([1.5, 1.5, 2.5]), "space origin": [0] * 3}
    nrrd.write(path, bad, header)
    (problem,) = check_image_files([path])
    assert problem.path == path and "contains 1 NaN and 0 Inf voxels" in problem.message


# ----------------------------------------------------------------------------------------------- CLI


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "selfmedhpm.check_data", *args], capture_output=True, text=True, timeout=60
    )


def test_cli_reports_errors_without_traceback(tmp_path: Path) -> None:
    make_dataset(tmp_path)
    (tmp_path / "imagesTr" / "va1.nii.gz").write_bytes(b"junk")
    result = run_cli("--dataset_dir", str(tmp_path))
    assert result.returncode == 1, result.stderr
    assert "ERROR  imagesTr/va1.nii.gz: is not a NIfTI .nii.gz image" in result.stdout
    assert "1 error, 0 warnings in 4 cases checked" in result.stdout
    assert "Traceback" not in result.stderr


def test_cli_clean_dataset_exits_zero(tmp_path: Path) -> None:
    make_dataset(tmp_path)
    result = run_cli("--dataset_dir", str(tmp_path), "--splits", "training", "--num_classes", "14")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 errors, 0 warnings in 2 cases checked" in result.stdout


def test_cli_missing_dataset_dir_and_usage_errors(tmp_path: Path) -> None:
    result = run_cli("--dataset_dir", str(tmp_path / "nope"))
    assert result.returncode == 1 and "dataset directory does not exist" in result.stdout
    assert "Traceback" not in result.stderr
    assert run_cli("--num_classes", "3").returncode == 2


# ----------------------------------------------------------------------------------------------- state dicts


def test_describe_state_dict_mismatch() -> None:
    expected = {"a.weight": torch.Size([4, 3]), "a.bias": torch.Size([4]), "b.weight": torch.Size([2, 4])}
    assert describe_state_dict_mismatch(expected, dict(expected), "ckpt.pt") is None
    found = {"a.weight": torch.Size([4, 5]), "b.weight": torch.Size([2, 4]), "head.weight": torch.Size([1])}
    text = describe_state_dict_mismatch(expected, found, "runs/ckpt.pt")
    assert text is not None and "runs/ckpt.pt" in text.splitlines()[0]
    assert "missing keys (1):\n    a.bias" in text and "unexpected keys (1):\n    head.weight" in text
    assert "a.weight: expected (4, 3) found (4, 5)" in text


def test_describe_state_dict_mismatch_truncates_long_lists() -> None:
    expected = {f"layer{i}.weight": torch.Size([i + 1]) for i in range(25)}
    text = describe_state_dict_mismatch(expected, {}, "encoder.pt")
    assert text is not None and "missing keys (25):" in text and "... and 5 more" in text
    assert "layer19.weight" in text and "layer20.weight" not in text

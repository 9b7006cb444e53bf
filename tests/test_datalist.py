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

"""``python -m selfmedhpm.datalist`` on tiny synthetic trees in each layout (BTCV as distributed, Decathlon, nnU-Net
v2 raw, plain folders, DICOM series written with pydicom), with the broken variants users produce; the built lists
drive one epoch of pretraining (with unlabelled cases) and one of fine-tuning."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import PRETRAIN, SEG_TINY, SEGMENT, configs, run_workflow
from selfmedhpm_tools.datalist import build_datalist, main
from selfmedhpm_tools.datalists import DatalistError, detect_layout

SHAPE = (48, 48, 24)
LIVER, SPLEEN = 6, 1  # BTCV label values of the phantom


@pytest.fixture(scope="module")
def volumes():
    """Four phantoms of 48x48x24 voxels: (HU image int16, BTCV label uint8, RAS affine); the first two LPS."""
    from selfmedhpm_tools.phantom import generate_case

    return [generate_case(i, shape=SHAPE, orientation="LPS" if i < 2 else "RAS") for i in range(4)]


def save(array: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def two_organs(label: np.ndarray) -> np.ndarray:
    """The phantom's liver as 1 and spleen as 2, everything else background: a label set named by dataset.json."""
    return ((label == LIVER) * 1 + (label == SPLEEN) * 2).astype(np.uint8)


def write_dicom_series(image, affine, folder: Path, uid: str, number=1, modality="CT", prefix="", description=""):
    """One DICOM file per slice of ``image`` ([x, y, z], HU) with the geometry of ``affine`` (RAS): CT Image
    Storage, stored as unsigned values + 1024 with RescaleIntercept -1024, like scanners do."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    iop = np.concatenate([lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]])
    study = generate_uid()
    for k in range(image.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{prefix}{k:03d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = modality, uid, study
        ds.SeriesNumber, ds.InstanceNumber, ds.SeriesDescription = number, k + 1, description
        ds.PatientID, ds.ImageType = "phantom", ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [float(v) for v in lps[:3, 3] + lps[:3, 2] * k]
        ds.ImageOrientationPatient = [float(v) for v in iop]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # between rows, between columns
        ds.SliceThickness = float(spacing[2])
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.Rows, ds.Columns = image.shape[1], image.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = np.ascontiguousarray((image[:, :, k].T.astype(np.int32) + 1024).astype(np.uint16)).tobytes()
        ds.save_as(str(folder / f"{prefix}{k:03d}.dcm"), enforce_file_format=True)
    return folder


def entries(out: Path, split: str) -> list[dict]:
    return json.loads((out / "dataset_0.json").read_text()).get(split, [])


def names(out: Path, split: str) -> list[str]:
    return sorted(Path(e["image"]).name.split(".")[0] for e in entries(out, split))


def messages(result) -> list[str]:
    return [str(p) for p in result.problems]


# ------------------------------------------------------------------------------------------------------ trees


def btcv_tree(root: Path, volumes, broken: bool = False) -> Path:
    """BTCV as Synapse distributes it: RawData/Training/{img,label}, RawData/Testing/img."""
    raw = root / "RawData"
    for i, case in zip(range(4), (1, 5, 6, 35)):
        image, label, affine = volumes[i]
        save(image, affine, raw / "Training" / "img" / f"img{case:04d}.nii.gz")
        save(label, affine, raw / "Training" / "label" / f"label{case:04d}.nii.gz")
    save(volumes[3][0], volumes[3][2], raw / "Testing" / "img" / "img0061.nii.gz")
    if broken:
        save(volumes[0][1], volumes[0][2], raw / "Training" / "label" / "label0007.nii.gz")  # no image
        save(volumes[1][0], volumes[1][2], raw / "Training" / "img" / "img0008.nii.gz")  # no label
    return root


def nnunet_tree(root: Path, volumes, file_ending: str = ".nii.gz", channels=("CT",)) -> Path:
    """nnU-Net v2 raw: Dataset001_Tiny with 3 labelled cases (liver 1, spleen 2) and 1 test image."""
    root.mkdir(parents=True)
    dataset = {
        "channel_names": {str(i): c for i, c in enumerate(channels)},
        "labels": {"background": 0, "liver": 1, "spleen": 2},
        "numTraining": 3,
        "file_ending": file_ending,
    }
    (root / "dataset.json").write_text(json.dumps(dataset, indent=2))
    for i in range(3):
        image, label, affine = volumes[i]
        for channel in range(len(channels)):
            save(image, affine, root / "imagesTr" / f"tiny_{i:03d}_{channel:04d}.nii.gz")
        save(two_organs(label), affine, root / "labelsTr" / f"tiny_{i:03d}.nii.gz")
    save(volumes[3][0], volumes[3][2], root / "imagesTs" / "tiny_003_0000.nii.gz")
    return root


def msd_tree(root: Path, volumes, modality=None) -> Path:
    """A Decathlon task: dataset.json (modality CT; labels background, liver, spleen), 3 training cases, 1 test."""
    training = [{"image": f"./imagesTr/liver_{i}.nii.gz", "label": f"./labelsTr/liver_{i}.nii.gz"} for i in range(3)]
    dataset = {
        "name": "Tiny", "modality": modality or {"0": "CT"}, "labels": {"0": "background", "1": "liver", "2": "spleen"},
        "numTraining": 3, "numTest": 1, "training": training, "test": ["./imagesTs/liver_3.nii.gz"],
    }  # fmt: skip
    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps(dataset, indent=2))
    for i in range(4):
        image, label, affine = volumes[i]
        save(image, affine, root / ("imagesTr" if i < 3 else "imagesTs") / f"liver_{i}.nii.gz")
        if i < 3:
            save(two_organs(label), affine, root / "labelsTr" / f"liver_{i}.nii.gz")
    (root / "imagesTr" / "._liver_0.nii.gz").write_bytes(b"\0\5\26\7")  # a macOS resource fork from the tar
    return root


# ------------------------------------------------------------------------------------------------------ BTCV


def test_btcv_as_distributed_monai_split_and_testing_images_unlabelled(volumes, tmp_path, capsys):
    src = btcv_tree(tmp_path / "btcv", volumes)
    out = tmp_path / "list"
    assert detect_layout(str(src)) == "btcv"
    assert main(["--src", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    print(printed)
    assert names(out, "training") == ["img0001", "img0005", "img0006"]
    assert names(out, "validation") == ["img0035"]
    assert names(out, "unlabeled") == ["img0061"]
    assert entries(out, "training")[0] == {
        "image": "RawData/Training/img/img0001.nii.gz", "label": "RawData/Training/label/label0001.nii.gz"
    }  # fmt: skip
    assert all((src / e["image"]).is_file() for split in ("training", "unlabeled") for e in entries(out, split))
    assert not (out / "labels.json").exists()  # BTCV's labels are the bundles' default
    assert "layout: btcv" in printed and "problems: none" in printed
    assert "cases: 5 images: 4 labelled (training 3, validation 1; split monai), 1 unlabelled" in printed
    assert "label set: BTCV (the bundles' default, 14 classes); label values found: 0..13" in printed
    assert "spacing: x " in printed and f"--datalist {out}/dataset_0.json" in printed


def test_btcv_transunet_and_random_splits(volumes, tmp_path):
    src = btcv_tree(tmp_path / "btcv", volumes)
    build_datalist(str(src), str(tmp_path / "tu"), split="transunet")
    assert names(tmp_path / "tu", "training") == ["img0005", "img0006"]
    assert names(tmp_path / "tu", "validation") == ["img0001", "img0035"]  # TransUNet's test cases
    first = build_datalist(str(src), str(tmp_path / "r1"), split="random", val_fraction=0.5, seed=3)
    again = build_datalist(str(src), str(tmp_path / "r2"), split="random", val_fraction=0.5, seed=3)
    assert [c.name for c in first.splits["validation"]] == [c.name for c in again.splits["validation"]]
    assert len(first.splits["validation"]) == 2 and len(first.splits["training"]) == 2


def test_btcv_label_without_image_and_image_without_label(volumes, tmp_path, capsys):
    src = btcv_tree(tmp_path / "btcv", volumes, broken=True)
    out = tmp_path / "list"
    assert main(["--src", str(src), "--out", str(out)]) == 1  # an error, the list is still written
    printed = capsys.readouterr().out
    print(printed)
    assert "ERROR  RawData/Training/label/label0007.nii.gz: label has no image of the same name; left out" in printed
    assert (
        "WARNING  RawData/Training/img/img0008.nii.gz: image has no label of the same name; used as unlabelled data"
        in printed
    )
    assert names(out, "unlabeled") == ["img0008", "img0061"]
    assert names(out, "training") == ["img0001", "img0005", "img0006"]


# ------------------------------------------------------------------------------------------------------ nnU-Net / MSD


def test_nnunet_raw_writes_the_label_set_override(volumes, tmp_path, capsys):
    src = nnunet_tree(tmp_path / "Dataset001_Tiny", volumes)
    out = tmp_path / "list"
    assert main(["--src", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    print(printed)
    assert detect_layout(str(src)) == "nnunet"
    assert len(entries(out, "training")) == 2 and len(entries(out, "validation")) == 1
    assert entries(out, "unlabeled") == [{"image": "imagesTs/tiny_003_0000.nii.gz"}]
    assert entries(out, "training")[0]["label"].startswith("labelsTr/tiny_00")
    override = json.loads((out / "labels.json").read_text())
    assert override == {"num_classes": 3, "class_names": ["background", "liver", "spleen"]}
    meta = json.loads((out / "labels_metadata.json").read_text())
    example = json.loads((SEGMENT / "configs" / "whole_body_example_metadata.json").read_text())
    assert set(meta) == set(example) and meta["network_data_format#outputs#pred#channel_def"]["2"] == "spleen"
    assert set(override) == set(json.loads((SEGMENT / "configs" / "whole_body_example.json").read_text()))
    assert "label set: dataset.json (3 classes); label values found: 0..2" in printed
    assert f"{out}/labels.json']\"" in printed


def test_nnunet_two_channels_refused(volumes, tmp_path, capsys):
    src = nnunet_tree(tmp_path / "Dataset002_CTPET", volumes, channels=("CT", "PET"))
    assert main(["--src", str(src), "--out", str(tmp_path / "list")]) == 1
    printed = capsys.readouterr().out
    assert (
        "ERROR  dataset.json: dataset.json has 2 input channels (0: CT, 1: PET); this project takes one CT" in printed
    )
    assert "nothing usable found" in printed and not (tmp_path / "list" / "dataset_0.json").exists()
    # dataset.json says one channel, but a second channel's files are there: each is named
    (src / "dataset.json").write_text(json.dumps({**json.loads((src / "dataset.json").read_text()),
                                                  "channel_names": {"0": "CT"}}))  # fmt: skip
    result = build_datalist(str(src), str(tmp_path / "list2"))
    assert "ERROR  imagesTr/tiny_000_0001.nii.gz: a second input channel: this project takes one CT channel " \
           "(<case>_0000.nii.gz); left out" in messages(result)  # fmt: skip
    assert len(result.splits["training"]) + len(result.splits["validation"]) == 3


def test_nnunet_wrong_file_ending_and_a_4d_image(volumes, tmp_path):
    src = nnunet_tree(tmp_path / "Dataset003_Broken", volumes, file_ending=".nii")
    image, _, affine = volumes[2]
    save(np.stack([image, image], axis=-1), affine, src / "imagesTr" / "tiny_002_0000.nii.gz")  # 4D
    result = build_datalist(str(src), str(tmp_path / "list"))
    found = messages(result)
    print("\n".join(found) + "\n" + result.summary)
    assert (
        "WARNING  dataset.json: file_ending is '.nii' but imagesTr holds .nii.gz images; used '.nii.gz' "
        "(fix dataset.json for nnU-Net itself)" in found
    )
    assert any(m.startswith("ERROR  imagesTr/tiny_002_0000.nii.gz: is 4D with shape (48, 48, 24, 2)") for m in found)
    assert any("a 4D image: 2 volumes" in m and "left out" in m for m in found)
    listed = [
        e["image"] for split in ("training", "validation", "unlabeled") for e in entries(tmp_path / "list", split)
    ]
    assert "imagesTr/tiny_002_0000.nii.gz" not in listed and len(listed) == 3


def test_decathlon_task(volumes, tmp_path, capsys):
    src = msd_tree(tmp_path / "Task99_Tiny", volumes)
    dataset = json.loads((src / "dataset.json").read_text())
    dataset["training"].append({"image": "./imagesTr/liver_9.nii.gz", "label": "./labelsTr/liver_9.nii.gz"})
    (src / "dataset.json").write_text(json.dumps(dataset))
    out = tmp_path / "list"
    assert main(["--src", str(src), "--out", str(out)]) == 1
    printed = capsys.readouterr().out
    print(printed)
    assert "ERROR  ./imagesTr/liver_9.nii.gz: listed in dataset.json 'training' but not found; left out" in printed
    assert "WARNING  imagesTr/._liver_0.nii.gz: skipped 1 macOS '._' files like this one (not images)" in printed
    assert len(entries(out, "training")) + len(entries(out, "validation")) == 3
    assert entries(out, "unlabeled") == [{"image": "imagesTs/liver_3.nii.gz"}]
    assert json.loads((out / "labels.json").read_text())["class_names"] == ["background", "liver", "spleen"]


def test_decathlon_non_ct_and_multi_modality_refused(volumes, tmp_path):
    mr = build_datalist(str(msd_tree(tmp_path / "Task98_MR", volumes, {"0": "MRI"})), str(tmp_path / "a"))
    assert "ERROR  dataset.json: dataset.json says the images are 'MRI', not CT; refused" in messages(mr)[0]
    both = build_datalist(
        str(msd_tree(tmp_path / "Task97_MM", volumes, {"0": "FLAIR", "1": "T1w"})), str(tmp_path / "b")
    )
    assert "2 input channels (0: FLAIR, 1: T1w)" in messages(both)[0] and not both.written


def test_labels_the_label_set_does_not_name_are_reported(volumes, tmp_path):
    src = nnunet_tree(tmp_path / "Dataset004_Extra", volumes)
    _, label, affine = volumes[0]
    save(
        (two_organs(label) + (label == 8) * 5).astype(np.uint8), affine, src / "labelsTr" / "tiny_000.nii.gz"
    )  # aorta as 5
    result = build_datalist(str(src), str(tmp_path / "list"))
    assert "ERROR  labelsTr/tiny_000.nii.gz: has label values 5 that dataset.json does not name (0..2)" in messages(
        result
    )
    # the case stays in the list (its image is good for pretraining): the summary says the fine-tuning will stop
    lines = result.summary.splitlines()
    note = next(i for i, line in enumerate(lines) if line.startswith("NOTE: 1 labelled case in the list has"))
    assert "the fine-tune commands below stop at their data check until the labels are fixed" in lines[note]
    assert note < next(i for i, line in enumerate(lines) if line.startswith("next "))


def test_next_commands_name_the_paper_scale_and_the_cpu_preset_of_each_bundle(volumes, tmp_path):
    result = build_datalist(str(nnunet_tree(tmp_path / "Dataset003_Liver", volumes)), str(tmp_path / "list"))
    lines = result.summary.splitlines()
    steps = lines[next(i for i, line in enumerate(lines) if line.startswith("next ")) + 1 :]
    assert [line.split(":")[0].strip() for line in steps] == [
        "pretrain, GPU (paper scale)", "pretrain, CPU preset", "fine-tune, GPU (paper scale)", "fine-tune, CPU preset",
    ]  # fmt: skip
    assert f"'{PRETRAIN.relative_to(PRETRAIN.parents[1])}/configs/train_cpu.json']" in steps[1]
    assert "labels.json','bundles/selfmedhpm_ct_segmentation/configs/train_cpu.json']" in steps[3]
    assert all(f"--datalist {tmp_path / 'list' / 'dataset_0.json'}" in line for line in steps)


# ------------------------------------------------------------------------------------------------------ plain folders


def test_plain_folder_with_parallel_labels_and_mismatched_names(volumes, tmp_path, capsys):
    src, labels = tmp_path / "ct", tmp_path / "ct_labels"
    for i, name in enumerate(("a", "b", "case_07")):
        save(volumes[i][0], volumes[i][2], src / f"{name}.nii.gz")
    save(volumes[0][1], volumes[0][2], labels / "a.nii.gz")
    save(volumes[1][1], volumes[1][2], labels / "b_seg.nii.gz")  # matched: a known suffix
    save(volumes[2][1], volumes[2][2], labels / "case07.nii.gz")  # mismatched name
    save(volumes[3][1], volumes[3][2], labels / "zz.nii.gz")  # no image at all
    out = tmp_path / "list"
    assert main(["--src", str(src), "--labels", str(labels), "--out", str(out), "--val_fraction", "0.5"]) == 1
    printed = capsys.readouterr().out
    print(printed)
    assert (
        f"ERROR  {labels}/case07.nii.gz: label has no image of the same name; left out; an image without a label "
        "has a similar name: case_07.nii.gz\n" in printed
    )
    assert f"ERROR  {labels}/zz.nii.gz: label has no image of the same name; left out\n" in printed
    assert "WARNING  case_07.nii.gz: image has no label of the same name; used as unlabelled data" in printed
    assert names(out, "unlabeled") == ["case_07"]
    pairs = {e["image"]: e["label"] for split in ("training", "validation") for e in entries(out, split)}
    assert pairs == {"a.nii.gz": "../ct_labels/a.nii.gz", "b.nii.gz": "../ct_labels/b_seg.nii.gz"}


def test_nothing_usable_and_usage_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["--src", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 1
    assert "no known layout" in capsys.readouterr().out
    assert main(["--src", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "dataset_0.json").write_text("{}")
    with pytest.raises(DatalistError, match="already exists; pass --overwrite"):
        build_datalist(str(tmp_path / "empty"), str(tmp_path / "out"))


# ------------------------------------------------------------------------------------------------------ DICOM


@pytest.fixture(scope="module")
def dicom_tree(volumes, tmp_path_factory):
    """patient1/ct: a series in its own folder (LPS); patient2/mixed: two series in one folder; patient3/mr: MR."""
    from pydicom.uid import generate_uid

    root = tmp_path_factory.mktemp("dicom")
    write_dicom_series(volumes[0][0], volumes[0][2], root / "patient1" / "ct", generate_uid())
    write_dicom_series(volumes[1][0], volumes[1][2], root / "patient2" / "mixed", generate_uid(), 2, prefix="a")
    write_dicom_series(volumes[2][0], volumes[2][2], root / "patient2" / "mixed", generate_uid(), 3, prefix="b")
    write_dicom_series(
        volumes[3][0], volumes[3][2], root / "patient3" / "mr", generate_uid(), 4, "MR", description="T2 axial"
    )
    return root


def test_dicom_series_grouped_converted_where_needed_and_mr_refused(volumes, dicom_tree, tmp_path, capsys):
    out = tmp_path / "list"
    assert main(["--src", str(dicom_tree), "--out", str(out)]) == 1  # the MR series is an error
    printed = capsys.readouterr().out
    print(printed)
    assert "ERROR  patient3/mr: series 4 (T2 axial) is MR, not CT; refused (this project segments CT)" in printed
    assert "converted 2 DICOM series to NIfTI" in printed
    listed = {e["image"] for e in entries(out, "unlabeled")}
    converted = {os.path.relpath(out / "images" / f"patient2_mixed_s{n}.nii.gz", dicom_tree) for n in (2, 3)}
    assert listed == {"patient1/ct"} | converted
    # the converted series holds the phantom's voxels and geometry
    nifti = nib.load(out / "images" / "patient2_mixed_s2.nii.gz")
    np.testing.assert_allclose(nifti.affine, volumes[1][2], atol=1e-3)
    np.testing.assert_array_equal(np.asarray(nifti.dataobj), volumes[1][0])


def test_dicom_folder_entry_reads_in_monai_as_the_phantom(volumes, dicom_tree, tmp_path):
    from monai.transforms import LoadImage

    result = build_datalist(str(dicom_tree), str(tmp_path / "list"), convert="none")
    assert any("shares its folder with another series" in m and "patient2/mixed" in m for m in messages(result))
    assert [e["image"] for e in entries(tmp_path / "list", "unlabeled")] == ["patient1/ct"]
    image = LoadImage(image_only=True)(str(dicom_tree / "patient1" / "ct"))
    np.testing.assert_allclose(np.asarray(image.affine), volumes[0][2], atol=1e-3)
    np.testing.assert_array_equal(np.asarray(image), volumes[0][0])
    case = result.splits["unlabeled"][0]
    assert case.shape == SHAPE and np.allclose(case.spacing, np.abs(np.diag(volumes[0][2])[:3]), atol=1e-4)


def test_dicom_convert_all_with_labels_by_case_name(volumes, dicom_tree, tmp_path):
    labels = tmp_path / "labels"
    save(volumes[0][1], volumes[0][2], labels / "patient1_ct.nii.gz")
    result = build_datalist(str(dicom_tree), str(tmp_path / "list"), labels=str(labels), convert="all")
    labelled = result.splits["training"] + result.splits["validation"]
    assert [c.name for c in labelled] == ["patient1_ct"] and labelled[0].image.endswith("patient1_ct.nii.gz")
    assert not [m for m in messages(result) if "patient1" in m and "ERROR" in m]
    save(volumes[1][1], volumes[1][2], labels / "patient1_ct.nii.gz")  # another case's grid
    result = build_datalist(str(dicom_tree), str(tmp_path / "list"), labels=str(labels), overwrite=True)
    assert any(
        m.startswith(f"ERROR  {labels}/patient1_ct.nii.gz: affine does not match its image patient1/ct")
        for m in messages(result)
    )
    assert not result.splits["training"] + result.splits["validation"]


# ------------------------------------------------------------------------------------------------------ bundles


def test_pretraining_default_splits_leave_validation_out(volumes, tmp_path, caplog):
    from selfmedhpm.bundle import log_pretraining_splits, pretraining_splits

    src = btcv_tree(tmp_path / "btcv", volumes)
    build_datalist(str(src), str(tmp_path / "list"))
    datalist = str(tmp_path / "list" / "dataset_0.json")
    assert pretraining_splits(str(src), datalist) == ["training", "unlabeled"]
    with caplog.at_level(logging.INFO, logger="selfmedhpm.bundle"):
        message = log_pretraining_splits(str(src), datalist, ["training", "unlabeled"])
    assert message == (
        "pretraining on training (3 images) + unlabeled (1 image); not used: validation (1 image) "
        "(name a split in --train_splits to use it)"
    )
    assert message in caplog.text
    asked = log_pretraining_splits(str(src), datalist, ["training", "validation"])
    assert "validation used because train_splits names it" in asked
    assert pretraining_splits(str(src), None) == ["training"]  # no data list there: the data check reports it


@pytest.mark.slow
def test_built_lists_drive_pretraining_with_unlabelled_cases_and_fine_tuning(volumes, tmp_path, one_thread):
    btcv = btcv_tree(tmp_path / "btcv", volumes)
    build_datalist(str(btcv), str(tmp_path / "btcv_list"))
    logged: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: logged.append(record.getMessage())
    logging.getLogger("selfmedhpm.bundle").addHandler(handler)  # the bundle's logging.conf replaces root handlers
    try:
        workflow = run_workflow(
            configs(PRETRAIN, "train.json", "train_cpu.json"),
            dataset_dir=str(btcv),
            datalist=str(tmp_path / "btcv_list" / "dataset_0.json"),
            output_dir=str(tmp_path / "pretrain"),
            epochs=1,
            pixdim=[6.0, 6.0, 6.0],
            roi_size=[32, 32, 32],
            num_samples=1,
        )
    finally:
        logging.getLogger("selfmedhpm.bundle").removeHandler(handler)
    assert workflow.parser.get_parsed_content("train_splits") == ["training", "unlabeled"]
    read = sorted(Path(d["image"]).name for d in workflow.parser.get_parsed_content("train#dataset").data)
    assert read == ["img0001.nii.gz", "img0005.nii.gz", "img0006.nii.gz", "img0061.nii.gz"]  # img0035 held out
    assert any("pretraining on training (3 images) + unlabeled (1 image); not used: validation" in m for m in logged)
    assert (tmp_path / "pretrain" / "encoder.pt").is_file()

    nnunet = nnunet_tree(tmp_path / "Dataset001_Tiny", volumes)
    out = tmp_path / "nnunet_list"
    build_datalist(str(nnunet), str(out))
    workflow = run_workflow(
        configs(SEGMENT, "train.json", "train_cpu.json") + [str(out / "labels.json")],
        bundle_root=str(tmp_path / "finetune"),
        dataset_dir=str(nnunet),
        datalist=str(out / "dataset_0.json"),
        epochs=1,
        **{**SEG_TINY, "hidden_size": 96, "mlp_dim": 384, "num_heads": 4},
    )
    assert workflow.parser.get_parsed_content("network_def").out.conv.conv.out_channels == 3
    history = json.loads((tmp_path / "finetune" / "models" / "history.json").read_text())
    assert len(history) == 1 and "val_dice/spleen" in history[0]["val_dice_per_organ"]


def test_command_line_entry_point(volumes, tmp_path, python_env):
    src = btcv_tree(tmp_path / "btcv", volumes)
    shutil.rmtree(src / "RawData" / "Testing")
    run = subprocess.run(
        [sys.executable, "-m", "selfmedhpm.datalist", "--src", str(src), "--out", str(tmp_path / "o"), "--split",
         "transunet"],
        capture_output=True, text=True, env=python_env,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "split transunet), 0 unlabelled" in run.stdout and "unlabeled" not in json.loads(
        (tmp_path / "o" / "dataset_0.json").read_text()
    )

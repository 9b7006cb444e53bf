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

"""The segmentation bundle on tiny synthetic CTs: weight transfer, train / evaluate / infer as the model zoo's CI runs
bundles, label-set overrides, the zoo's offline checks and a two-process run under torchrun."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import SCHEMA, SEG_TINY, SEGMENT, configs, phantom_set, run_workflow
from monai.bundle import ConfigParser, ConfigWorkflow
from selfmedhpm.checkpoint import BestModelSaver, EpochCheckpointer, ResumeFromCheckpoint, save_atomic
from selfmedhpm.evaluation import SpacingHausdorffDistanceMetric, summarize, write_reports
from selfmedhpm.labels import BTCV_CLASSES, TRANSUNET_8_ORGANS, LabelSetError, check_label_set
from selfmedhpm.networks import HPMMaskedAutoEncoder
from selfmedhpm.seg_data import find_images
from selfmedhpm.transfer import EncoderMismatchError, encoder_state_dict
from selfmedhpm_tools import label_metadata
from selfmedhpm_tools.label_metadata import channel_def

CONFIGS = SEGMENT / "configs"
ORGANS = list(BTCV_CLASSES[1:])
VIT = {"hidden_size": 96, "mlp_dim": 384, "num_heads": 4}  # the pretraining bundle's CPU preset ViT
TINY = {**SEG_TINY, **VIT}  # the CPU preset at a 32^3 crop on a 6 mm grid: seconds per epoch


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Four synthetic abdominal CTs of 96x96x48 voxels (two RAS, two LPS): two for training, two for validation."""
    return phantom_set(tmp_path_factory, "seg_data", cases=4, val_fraction=0.5)


def save_encoder(path: Path, img_size: int = 32, hidden_size: int = 96, mlp_dim: int = 384, seed: int = 0) -> Path:
    """An encoder file as the pretraining bundle writes it (models/encoder.pt), from a fresh HPM autoencoder."""
    torch.manual_seed(seed)
    net = HPMMaskedAutoEncoder(
        img_size=img_size, hidden_size=hidden_size, mlp_dim=mlp_dim, num_heads=4, decoder_hidden_size=48,
        decoder_mlp_dim=96, decoder_num_layers=1, decoder_num_heads=4,
    )  # fmt: skip
    save_atomic(encoder_state_dict(net), path)
    return path


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory) -> Path:
    return save_encoder(tmp_path_factory.mktemp("encoder") / "encoder.pt")


def parse(*names: str, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / n) for n in names])
    parser.read_meta(str(CONFIGS / "metadata.json"))
    parser.update({"bundle_root": "/nonexistent", **overrides})
    return parser


def train(data_dir: Path, root: Path, epochs: int = 2, **overrides) -> ConfigWorkflow:
    return run_workflow(
        configs(SEGMENT, "train.json", "train_cpu.json"),
        bundle_root=str(root),
        dataset_dir=str(data_dir),
        epochs=epochs,
        **{**TINY, **overrides},
    )


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------------------- label sets and reports


def test_label_sets_and_channel_def():
    assert len(BTCV_CLASSES) == 14 and BTCV_CLASSES[0] == "background"
    assert {k: BTCV_CLASSES[k] for k in TRANSUNET_8_ORGANS} == TRANSUNET_8_ORGANS
    assert channel_def(BTCV_CLASSES)["13"] == "left adrenal gland"
    with pytest.raises(LabelSetError, match="num_classes is 15"):
        check_label_set(BTCV_CLASSES, 15)
    with pytest.raises(LabelSetError, match="background"):
        check_label_set(["liver", "spleen"])
    train = json.loads((CONFIGS / "train.json").read_text())
    infer = json.loads((CONFIGS / "inference.json").read_text())
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert train["class_names"] == infer["class_names"] == list(BTCV_CLASSES)
    assert (
        train["num_classes"] == infer["num_classes"] == meta["network_data_format"]["outputs"]["pred"]["num_channels"]
    )
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == channel_def(BTCV_CLASSES)


def test_whole_body_override_and_its_metadata_agree():
    override = json.loads((CONFIGS / "whole_body_example.json").read_text())
    assert set(override) == {"num_classes", "class_names"}
    names = check_label_set(override["class_names"], override["num_classes"])
    assert len(names) > 14
    meta = ConfigParser.load_config_files(
        [str(CONFIGS / "metadata.json"), str(CONFIGS / "whole_body_example_metadata.json")]
    )
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["num_channels"] == len(names) and pred["channel_def"] == channel_def(names)


def test_label_metadata_command_writes_the_label_set_of_a_config(tmp_path):
    out = tmp_path / "metadata.json"
    argv = ["--config", str(CONFIGS / "whole_body_example.json"), "--metadata", str(CONFIGS / "metadata.json")]
    assert label_metadata.main(argv + ["--out", str(out)]) == 0
    written = json.loads(out.read_text())["network_data_format"]["outputs"]["pred"]
    shipped = ConfigParser.load_config_files(
        [str(CONFIGS / "metadata.json"), str(CONFIGS / "whole_body_example_metadata.json")]
    )["network_data_format"]["outputs"]["pred"]
    assert (written["num_channels"], written["channel_def"]) == (shipped["num_channels"], shipped["channel_def"])


def test_summary_ignores_undefined_values_and_reports_both_means(tmp_path):
    dice = np.full((3, 13), 0.8)
    dice[:, 4] = 0.2  # esophagus, not a TransUNet organ
    dice[0, 0] = np.nan  # spleen absent from case 0's label
    dice[1, 0] = 0.5
    hd95 = np.full((3, 13), 4.0)
    hd95[2, 10] = np.nan
    summary = write_reports(tmp_path, ["a.nii.gz", "b.nii.gz", "c.nii.gz"], BTCV_CLASSES, dice, hd95)
    spleen = summary["organs"]["spleen"]["dice"]
    assert spleen["mean"] == pytest.approx(0.65) and (spleen["cases"], spleen["undefined"]) == (2, 1)
    assert summary["mean_dice"]["transunet_8_organs"] == pytest.approx((0.65 + 7 * 0.8) / 8)
    assert summary["mean_dice"]["all_organs"] == pytest.approx((0.65 + 0.2 + 11 * 0.8) / 13)
    assert summary["organs"]["pancreas"]["hd95_mm"] == {"mean": 4.0, "std": 0.0, "cases": 2, "undefined": 1}
    rows = read_csv(tmp_path / "dice_per_case.csv")
    assert [r["case"] for r in rows] == ["a.nii.gz", "b.nii.gz", "c.nii.gz"] and list(rows[0])[1:] == ORGANS
    assert rows[0]["spleen"] == "nan"
    assert json.loads((tmp_path / "summary.json").read_text())["organs"]["spleen"]["dice"]["undefined"] == 1
    table = {r["organ"]: r for r in read_csv(tmp_path / "summary.csv")}
    assert float(table["mean over transunet_8_organs (8)"]["dice_mean"]) == pytest.approx((0.65 + 5.6) / 8)
    assert summarize(dice, ["background"] + [f"c{i}" for i in range(13)])["groups"].keys() == {"all_organs"}


def test_hd95_is_in_millimetres_of_the_prediction_grid():
    from monai.data import MetaTensor

    pred, label = torch.zeros(1, 2, 10, 10, 10), torch.zeros(1, 2, 10, 10, 10)
    pred[0, 1, 2:4, 2:4, 2:4] = 1
    label[0, 1, 2:4, 2:4, 5:7] = 1  # 3 voxels apart along z
    metric = SpacingHausdorffDistanceMetric(percentile=95)
    pred_mm = MetaTensor(pred, affine=torch.diag(torch.tensor([1.5, 1.5, 2.0, 1.0])))
    assert metric(pred_mm, label).item() == pytest.approx(6.0)
    assert SpacingHausdorffDistanceMetric(spacing=[1.0, 1.0, 1.0], percentile=95)(pred, label).item() == 3.0


def test_find_images_takes_images_ts_or_the_folder(tmp_path):
    (tmp_path / "a.nii.gz").write_bytes(b"")
    (tmp_path / "b.nrrd").write_bytes(b"")
    (tmp_path / "series").mkdir()
    (tmp_path / "series" / "1.dcm").write_bytes(b"")
    assert [Path(p).name for p in find_images(tmp_path)] == ["a.nii.gz", "b.nrrd", "series"]
    (tmp_path / "imagesTs").mkdir()
    with pytest.raises(FileNotFoundError, match="imagesTs: no input images"):
        find_images(tmp_path)


def test_metadata_verifies_against_the_shipped_schema():
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(SCHEMA))
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"] and "nibabel" in meta["required_packages_version"]
    image = meta["network_data_format"]["inputs"]["image"]
    assert (image["num_channels"], image["spatial_shape"], image["value_range"]) == (1, [96, 96, 96], [0, 1])
    assert "@_meta_" not in (CONFIGS / "inference.json").read_text()


# ----------------------------------------------------------------------------------------- weight transfer


def test_pretrained_encoder_loads_exactly_into_unetr(encoder_file):
    parser = parse("train.json", **TINY, pretrained_encoder=str(encoder_file), device="$torch.device('cpu')")
    parser.get_parsed_content("load_encoder")
    vit = parser.get_parsed_content("network").vit.state_dict()
    saved = torch.load(encoder_file, weights_only=True)
    assert vit.keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(vit[key], value), key


def test_encoder_of_another_crop_size_gets_interpolated_position_embeddings(tmp_path):
    from selfmedhpm.transfer import POS_KEY, load_pretrained_encoder

    path = save_encoder(tmp_path / "encoder64.pt", img_size=64)  # 4x4x4 tokens
    net = parse("train.json", **TINY).get_parsed_content("network_def")  # 32^3 crop: 2x2x2 tokens
    load_pretrained_encoder(net, path)
    saved, vit = torch.load(path, weights_only=True), net.vit.state_dict()
    assert saved[POS_KEY].shape == (1, 64, 96) and vit[POS_KEY].shape == (1, 8, 96)
    assert all(torch.equal(vit[k], v) for k, v in saved.items() if k != POS_KEY)


def test_encoder_of_another_width_fails_naming_file_and_keys(tmp_path):
    path = save_encoder(tmp_path / "wide_encoder.pt", hidden_size=120, mlp_dim=240)
    parser = parse("train.json", **TINY, pretrained_encoder=str(path), device="$torch.device('cpu')")
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("load_encoder")
    error = info.value if isinstance(info.value, EncoderMismatchError) else info.value.__cause__
    assert isinstance(error, EncoderMismatchError)
    assert str(path) in str(error) and "shape mismatches" in str(error)
    assert "blocks.0.attn.qkv.weight: expected (288, 96) found (360, 120)" in str(error)


def test_fine_tuning_names_every_setting_that_differs_from_pretraining(tmp_path, caplog):
    path = save_encoder(tmp_path / "encoder.pt")
    parser = parse("train.json", **TINY, pretrained_encoder=str(path), device="$torch.device('cpu')")
    ours = parser.get_parsed_content("encoder_settings")
    assert ours["pixdim"] == TINY["pixdim"] and ours["hidden_size"] == 96 and "patch_size" not in ours
    record = tmp_path / "encoder.json"  # as the pretraining bundle's exporter writes it
    record.write_text(json.dumps({"pretrained_with": {**ours, "pixdim": [1.5, 1.5, 2.0], "a_min": -1000}, "epoch": 3}))
    with caplog.at_level("INFO", logger="selfmedhpm.transfer"):
        parser.get_parsed_content("load_encoder")  # loads all the same: the widths match
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(path) in warnings[0] and str(record) in warnings[0]
    assert "pixdim: pretrained with [1.5, 1.5, 2.0], fine-tuned with" in warnings[0]
    assert "a_min: pretrained with -1000, fine-tuned with" in warnings[0] and "a_max: " not in warnings[0]

    caplog.clear()
    record.write_text(json.dumps({"pretrained_with": {**ours, "patch_size": 16}, "epoch": 3}))
    with caplog.at_level("INFO", logger="selfmedhpm.transfer"):
        parse("train.json", **TINY, pretrained_encoder=str(path)).get_parsed_content("load_encoder")
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert any("pretrained with the settings this fine-tuning uses" in r.getMessage() for r in caplog.records)

    record.write_text("{not json")
    with pytest.raises(Exception) as info:
        parse("train.json", **TINY, pretrained_encoder=str(path)).get_parsed_content("load_encoder")
    error = info.value if isinstance(info.value, EncoderMismatchError) else info.value.__cause__
    assert isinstance(error, EncoderMismatchError) and str(record) in str(error)


# ----------------------------------------------------------------------------------------- workflows end to end


@pytest.fixture(scope="module")
def trained(data_dir, encoder_file, tmp_path_factory) -> Path:
    """A bundle folder whose models/ holds a model fine-tuned for 2 epochs from the pretrained encoder."""
    root = tmp_path_factory.mktemp("bundle")
    train(data_dir, root, epochs=2, pretrained_encoder=str(encoder_file))
    return root


def load_model_strictly(root: Path, *configs_: str, **overrides) -> torch.nn.Module:
    net = parse(*configs_, **{**TINY, **overrides}).get_parsed_content("network_def", instantiate=True)
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    net.load_state_dict(state, strict=True)
    return net


@pytest.mark.slow
def test_training_writes_plain_model_and_history(trained):
    load_model_strictly(trained, "train.json")
    history = json.loads((trained / "models" / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    for record in history:
        assert list(record["val_dice_per_organ"]) == [f"val_dice/{organ}" for organ in ORGANS]
        organs = [v for v in record["val_dice_per_organ"].values() if np.isfinite(v)]
        assert np.isfinite(record["loss"])  # the mean Dice is the organs', background left out:
        assert len(organs) == len(ORGANS)  # every organ is in both validation labels of this data set, so the mean
        assert record["val_mean_dice"] == pytest.approx(np.mean(organs), abs=1e-5)  # is exactly the organs' mean
    assert (trained / "models" / "checkpoints" / "checkpoint_epoch=2.pt").is_file()


@pytest.mark.slow
def test_training_from_scratch(data_dir, tmp_path):
    workflow = train(data_dir, tmp_path, epochs=1)
    assert workflow.parser.get_parsed_content("pretrained_encoder") is None
    load_model_strictly(tmp_path, "train.json")
    assert json.loads((tmp_path / "models" / "history.json").read_text())[0]["epoch"] == 1


@pytest.mark.slow
def test_evaluate_writes_per_case_dice_hd95_and_summary(trained, data_dir, tmp_path):
    run_workflow(
        configs(SEGMENT, "train.json", "evaluate.json", "train_cpu.json"),
        bundle_root=str(trained),
        dataset_dir=str(data_dir),
        output_dir=str(tmp_path),
        **TINY,
    )
    validation = json.loads((data_dir / "dataset_0.json").read_text())["validation"]
    rows = read_csv(tmp_path / "dice_per_case.csv")
    assert [r["case"] for r in rows] == [Path(v["image"]).name for v in validation]
    assert list(rows[0]) == ["case"] + ORGANS
    assert len(read_csv(tmp_path / "hd95_per_case.csv")) == len(validation)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["mean_dice"]) == {"all_organs", "transunet_8_organs"}
    assert summary["num_cases"] == 2 and summary["grid"].startswith("pre-processed")
    per_organ = {organ: [float(r[organ]) for r in rows] for organ in ORGANS}  # the per-case table, recomputed
    means = {organ: np.nanmean(v) if not np.isnan(v).all() else np.nan for organ, v in per_organ.items()}
    eight = ["spleen", "right kidney", "left kidney", "gallbladder", "liver", "stomach", "aorta", "pancreas"]
    for group, organs in (("all_organs", ORGANS), ("transunet_8_organs", eight)):
        expected = np.nanmean([means[o] for o in organs])
        assert summary["mean_dice"][group] == pytest.approx(expected, abs=1e-5), group
    assert {r["organ"] for r in read_csv(tmp_path / "summary.csv")} >= set(ORGANS)


def lps_anisotropic_input(data_dir: Path, out: Path) -> tuple[Path, Path]:
    """The first case re-stored as LPS with 3 x 2.5 x 6 mm voxels (NIfTI), and as an LPS NRRD."""
    import nrrd

    data = np.asarray(nib.load(data_dir / "imagesTr" / "case_0001.nii.gz").dataobj)[:90, :80, ::2]
    affine = np.diag([-3.0, -2.5, 6.0, 1.0])
    affine[:3, 3] = [120.0, 90.0, -60.0]
    out.mkdir(parents=True, exist_ok=True)
    nifti = out / "lps_case.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(nifti))
    header = {"space": "left-posterior-superior", "space directions": np.diag([4.0, 4.0, 5.0]),
              "space origin": np.array([-200.0, -190.0, 10.0])}  # fmt: skip
    nrrd_file = out / "scan.nrrd"
    nrrd.write(str(nrrd_file), data[:, :, :20].astype(np.int16), header)
    return nifti, nrrd_file


def dicom_series(volume: np.ndarray, folder: Path, spacing=(4.0, 3.5, 5.0), origin=(-150.0, -120.0, 10.0)) -> Path:
    """``volume`` [x, y, z] as an axial CT DICOM series (LPS patient coordinates, one file per slice)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    for k in range(volume.shape[2]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.InstanceNumber = "CT", "phantom", k + 1
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + spacing[2] * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [spacing[1], spacing[0]], spacing[2]  # [row (y), column (x)] spacing
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.ascontiguousarray(volume[:, :, k].T.astype(np.int16)).tobytes()
        try:
            ds.save_as(folder / f"{k:03d}.dcm", enforce_file_format=True)  # pydicom 3
        except TypeError:
            ds.save_as(folder / f"{k:03d}.dcm", write_like_original=False)  # pydicom 2
    return folder


@pytest.mark.slow
def test_inference_writes_labels_in_the_input_grid(trained, data_dir, tmp_path):
    nifti, nrrd_file = lps_anisotropic_input(data_dir, tmp_path / "inputs")
    volume = np.asarray(nib.load(data_dir / "imagesTr" / "case_0000.nii.gz").dataobj)[:90, :80, :12]
    dicom_series(volume, tmp_path / "inputs" / "series")
    out = tmp_path / "out"
    workflow = run_workflow(
        configs(SEGMENT, "inference.json", "train_cpu.json"),
        workflow_type="infer",
        bundle_root=str(trained),
        dataset_dir=str(tmp_path / "inputs"),
        output_dir=str(out),
        **TINY,
    )
    assert sorted(p.name for p in out.iterdir()) == ["lps_case_seg.nii.gz", "scan_seg.nii.gz", "series_seg.nii.gz"]
    source, result = nib.load(nifti), nib.load(out / "lps_case_seg.nii.gz")
    assert result.shape == source.shape and np.allclose(result.affine, source.affine)
    assert nib.aff2axcodes(result.affine) == nib.aff2axcodes(source.affine) == ("L", "P", "S")
    labels = np.asarray(result.dataobj)
    assert result.get_data_dtype() == np.uint8 and labels.max() <= 13
    scan = nib.load(out / "scan_seg.nii.gz")
    assert scan.shape == (90, 80, 20)
    expected = np.diag([-4.0, -4.0, 5.0, 1.0])
    expected[:3, 3] = [200.0, 190.0, 10.0]  # the NRRD's LPS origin (-200, -190, 10) in RAS
    assert np.allclose(scan.affine, expected)
    series = nib.load(out / "series_seg.nii.gz")
    expected = np.diag([-4.0, -3.5, 5.0, 1.0])
    expected[:3, 3] = [150.0, 120.0, 10.0]  # the DICOM LPS position (-150, -120, 10) in RAS
    assert series.shape == (90, 80, 12) and np.allclose(series.affine, expected)
    weight = workflow.parser.get_parsed_content("network").state_dict()["out.conv.conv.weight"]
    assert torch.equal(weight, torch.load(trained / "models" / "model.pt", weights_only=True)["out.conv.conv.weight"])


@pytest.mark.slow
def test_single_input_file_override(trained, data_dir, tmp_path):
    nifti, _ = lps_anisotropic_input(data_dir, tmp_path / "inputs")
    run_workflow(
        configs(SEGMENT, "inference.json", "train_cpu.json"),
        workflow_type="infer",
        bundle_root=str(trained),
        input_file=str(nifti),
        output_dir=str(tmp_path / "out"),
        **TINY,
    )
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["lps_case_seg.nii.gz"]


@pytest.mark.slow
def test_demo_recipe_learns_four_organs_in_150_iterations(data_dir, tmp_path):
    """The demo's recipe (``train_demo.json``: class-balanced crops, feature size 16, no layer decay) on a coarse
    8 mm grid, where one 48x32x32 crop holds most of the abdomen, at lr 1e-2: 75 epochs of the two training cases,
    one crop per iteration (about 3 minutes on one thread). Measured: six organs above 0.3 on the training cases
    (spleen, left kidney, gallbladder, liver, stomach, IVC); after 80 iterations only liver and stomach, and the
    untrained network none, so a recipe that learns at half the pace fails."""
    small = {"roi_size": [48, 32, 32], "pixdim": [8.0, 8.0, 8.0], "sw_batch_size": 2, **VIT}
    recipe = {"epochs": 75, "learning_rate": 0.01, "val_interval": 75, "log_interval": 100, "save_interval": 75}
    run_workflow(
        configs(SEGMENT, "train.json", "train_cpu.json", "train_demo.json"),
        bundle_root=str(tmp_path / "trained"),
        dataset_dir=str(data_dir),
        **small,
        **recipe,
    )
    torch.manual_seed(0)
    net = parse("train.json", "train_cpu.json", "train_demo.json", **small).get_parsed_content("network_def")
    save_atomic(net.state_dict(), tmp_path / "untrained" / "models" / "model.pt")
    summaries = {}
    for name in ("trained", "untrained"):
        run_workflow(
            configs(SEGMENT, "train.json", "train_cpu.json", "train_demo.json", "evaluate.json"),
            bundle_root=str(tmp_path / name),
            dataset_dir=str(data_dir),
            eval_split="training",
            **small,
        )
        summaries[name] = json.loads((tmp_path / name / "eval" / "summary.json").read_text())
    dice = {organ: v["dice"]["mean"] or 0.0 for organ, v in summaries["trained"]["organs"].items()}
    learnt = sorted(organ for organ, value in dice.items() if value > 0.3)
    assert len(learnt) >= 4, dice
    assert "liver" in learnt, dice
    untrained = max(v["dice"]["mean"] or 0.0 for v in summaries["untrained"]["organs"].values())
    assert untrained < 0.3, summaries["untrained"]["organs"]


@pytest.mark.slow
def test_whole_body_override_retargets_train_and_inference(data_dir, tmp_path):
    override = json.loads((CONFIGS / "whole_body_example.json").read_text())
    n = override["num_classes"]
    train_parser = parse("train.json", "whole_body_example.json", **TINY)
    assert train_parser.get_parsed_content("network_def").out.conv.conv.out_channels == n
    assert train_parser.get_parsed_content("train#postprocessing").transforms[1].to_onehot == [n, n]
    net = parse("inference.json", "whole_body_example.json", **TINY).get_parsed_content("network_def")
    with torch.no_grad():
        net.out.conv.conv.bias[n - 1] = 100.0  # every voxel goes to the last class
    save_atomic(net.state_dict(), tmp_path / "models" / "model.pt")
    nifti, _ = lps_anisotropic_input(data_dir, tmp_path / "inputs")
    run_workflow(
        configs(SEGMENT, "inference.json", "train_cpu.json", "whole_body_example.json"),
        workflow_type="infer",
        bundle_root=str(tmp_path),
        input_file=str(nifti),
        **TINY,
    )
    labels = np.asarray(nib.load(tmp_path / "eval" / "lps_case_seg.nii.gz").dataobj)
    assert np.unique(labels).tolist() == [0, n - 1]  # the last class inside the body, 0 outside its crop


@pytest.mark.slow
def test_zoo_checks_net_in_out_and_torchscript_export(trained, tmp_path):
    from monai.bundle import ckpt_export, verify_net_in_out

    tiny = {"feature_size": 8, **VIT}
    meta = str(CONFIGS / "metadata.json")
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=str(CONFIGS / "inference.json"), **tiny)
    ts = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(ts),
        ckpt_file=str(trained / "models" / "model.pt"),
        meta_file=meta,
        config_file=str(CONFIGS / "inference.json"),
        **{**tiny, "roi_size": TINY["roi_size"]},
    )
    scripted = torch.jit.load(str(ts))
    x = torch.rand(1, 1, 32, 32, 32)
    expected = load_model_strictly(trained, "inference.json").eval()(x)
    assert torch.allclose(scripted(x), expected, atol=1e-5)


@pytest.mark.slow
def test_two_process_training_under_torchrun(data_dir, encoder_file, tmp_path):
    overrides = {**TINY, "epochs": 3, "bundle_root": str(tmp_path), "dataset_dir": str(data_dir),
                 "pretrained_encoder": str(encoder_file)}  # fmt: skip
    files = [str(CONFIGS / n) for n in ("train.json", "train_cpu.json", "multi_gpu_train.json")]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "monai.bundle", "run", "--config_file", str(files), "--meta_file", str(CONFIGS / "metadata.json"),
               "--logging_file", str(CONFIGS / "logging.conf")]  # fmt: skip
    for key, value in overrides.items():
        command += [f"--{key}", json.dumps(value) if isinstance(value, list) else str(value)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [
        "checkpoints",
        "history.json",
        "model.pt",
        "trained_with.json",
    ]
    history = json.loads((tmp_path / "models" / "history.json").read_text())
    # one training case per rank: 3 DDP iterations each (UNETR's unused cross-attention norms are frozen)
    assert [(r["epoch"], r["iterations"]) for r in history] == [(1, 1), (2, 1), (3, 1)]
    assert all(np.isfinite(r["loss"]) for r in history)
    load_model_strictly(tmp_path, "train.json")
    loaded = (result.stdout + result.stderr).count(f"loaded pretrained encoder from {encoder_file}")
    assert loaded == 2  # every rank starts from the pretrained encoder (multi_gpu_train.json's @load_encoder)
    logged = (result.stdout + result.stderr).count("validation after epoch ")  # selfmedhpm.evaluation.log_validation
    assert logged == len(history)  # validated every epoch, logged (and the best model saved) by rank 0 only


def test_class_balanced_override_centres_crops_on_every_class(data_dir):
    """``train_demo.json``: crops centred on classes drawn by ``class_ratios`` (every class, the gallbladder twice as
    often; indices computed once, in the cached part), no left-right flip; the cached indices do not reach the
    network."""
    settings = {**TINY, "num_samples": 28, "cache_rate": 0.0, "pixdim": [3.0, 3.0, 3.0]}  # crops can move
    parser = parse("train.json", "train_cpu.json", "train_demo.json", dataset_dir=str(data_dir), **settings)
    names = [type(t).__name__ for t in parser.get_parsed_content("train#preprocessing").transforms]
    assert "ClassesToIndicesd" in names and "RandCropByLabelClassesd" in names and "RandFlipd" not in names
    crops = parser.get_parsed_content("train#dataset")[0]
    assert len(crops) == 28 and all("label_cls_indices" not in c for c in crops)
    assert all(tuple(c["image"].shape[1:]) == tuple(TINY["roi_size"]) for c in crops)
    centres = [int(c["label"][0][tuple(s // 2 for s in TINY["roi_size"])]) for c in crops]
    # organs, not background and liver, at most crop centres (label-guided pos/neg crops: half on background)
    assert len(set(centres)) >= 6 and sum(c in (0, 6) for c in centres) < 0.4 * len(centres), centres


def test_demo_recipe_randomises_hounsfield_units_in_front_of_the_window_and_validation_stays_deterministic():
    """``train_demo.json``'s domain randomisation: per-organ offsets (SynthSeg-style), scale and shift in HU in front of
    the CT window (a random window), then on the crops geometry (anisotropic scaling, small rotations), gamma, bias
    field, blur, lower resolution and noise; no left-right flip; validation runs the deterministic part only."""
    parser = parse("train.json", "train_cpu.json", "train_demo.json", **TINY)
    names = [type(t).__name__ for t in parser.get_parsed_content("train#preprocessing").transforms]
    window = names.index("ScaleIntensityRanged")
    assert names[window - 3 : window] == ["RandLabelIntensityd", "RandScaleIntensityd", "RandShiftIntensityd"]
    assert names.index("ClassesToIndicesd") < names.index("RandCropByLabelClassesd") < names.index("RandAffined")
    for name in ("RandAdjustContrastd", "RandBiasFieldd", "RandGaussianSmoothd", "RandSimulateLowResolutiond",
                 "RandGaussianNoised"):  # fmt: skip
        assert names.index(name) > names.index("RandCropByLabelClassesd"), name
    assert "RandFlipd" not in names
    affine = next(t for t in parser.get_parsed_content("train#random_transforms") if type(t).__name__ == "RandAffined")
    assert tuple(affine.rand_affine.rand_affine_grid.scale_range) == (0.1, 0.1, 0.1)  # drawn per axis: anisotropic
    validation = [type(t).__name__ for t in parser.get_parsed_content("validate#preprocessing").transforms]
    assert validation == names[:3] + names[window : window + 3]  # load, orient, space, window, crop, pad


def test_shared_recipe_never_flips_left_right():
    parser = parse("train.json")
    for transform in parser.get_parsed_content("train#random_transforms"):
        axes = getattr(getattr(transform, "flipper", None), "spatial_axis", None)
        assert not (type(transform).__name__ == "RandFlipd" and axes in (None, 0, (0,), [0]))
        assert type(transform).__name__ != "RandRotate90d"


def _evaluator(scores: list[float]):
    """An ignite engine standing in for the validator: ``validate(epoch)`` completes an evaluation epoch whose key
    metric is ``scores[epoch - 1]``, as MONAI's evaluator does when the trainer's ``ValidationHandler`` runs it."""
    from ignite.engine import Engine, Events

    evaluator = Engine(lambda engine, batch: None)
    evaluator.state.key_metric_name = "val_mean_dice"

    def validate(engine):
        evaluator.state.epoch = engine.state.epoch
        evaluator.state.metrics = {"val_mean_dice": scores[engine.state.epoch - 1]}
        evaluator.fire_event(Events.EPOCH_COMPLETED)

    return evaluator, validate


def test_best_model_saver_writes_only_better_models_and_its_best_survives_a_resume(tmp_path):
    from ignite.engine import Engine, Events

    net = torch.nn.Linear(2, 1)
    saver = BestModelSaver(tmp_path, net)
    trainer = Engine(lambda engine, batch: net.weight.data.add_(1.0))  # the weights change every epoch
    evaluator, validate = _evaluator([0.5, 0.4, 0.7])
    saver.attach(evaluator)
    written = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, validate)
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED, lambda e: written.append(torch.load(tmp_path / "model.pt", weights_only=True))
    )
    EpochCheckpointer(tmp_path / "ckpt", {"best_model": saver}).attach(trainer)
    trainer.run([0], max_epochs=3)
    # epoch 2 (0.4) did not replace epoch 1's model; epoch 3 (0.7) did
    assert [w["weight"][0, 0].item() - written[0]["weight"][0, 0].item() for w in written] == pytest.approx(
        [0.0, 0.0, 2.0]
    )
    assert saver.state_dict() == {"best": 0.7, "epoch": 3}
    assert torch.equal(written[-1]["weight"], net.weight) and not list(tmp_path.glob("*.tmp"))

    # a resumed run with a worse model keeps the interrupted run's best file
    resumed = BestModelSaver(tmp_path, torch.nn.Linear(2, 1))
    trainer2 = Engine(lambda engine, batch: None)
    ResumeFromCheckpoint(str(tmp_path / "ckpt"), {"best_model": resumed}).attach(trainer2)
    evaluator2, validate2 = _evaluator([0.1, 0.2, 0.3, 0.6])
    resumed.attach(evaluator2)
    trainer2.add_event_handler(Events.EPOCH_COMPLETED, validate2)
    trainer2.run([0], max_epochs=4)
    assert resumed.state_dict() == {"best": 0.7, "epoch": 3}
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["weight"], written[-1]["weight"])

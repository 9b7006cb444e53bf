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

"""The method as users run it, through the parsed bundle configs rather than the parts in isolation: the masks the
HPM trainer hands the student, one EMA update per iteration, the pretrained encoder really in the UNETR, and what
inference writes, voxel by voxel."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import PRETRAIN, SEG_TINY, SEGMENT, configs, run_workflow
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow
from selfmedhpm.checkpoint import load_weights, save_atomic
from selfmedhpm.ema import ema_decay_at
from selfmedhpm.transfer import interpolate_pos_embed

pytestmark = pytest.mark.slow  # the method through the parsed bundle configs: trainer runs and inference runs

EPOCHS, MASK_RATIO, FINAL_HARD = 2, 0.75, 0.5
DECAY = {"ema_decay_start": 0.5, "ema_decay_end": 0.7, "ema_ramp_epochs": 1}  # far from 1: every update shows


@pytest.fixture(scope="module")
def hpm_run(phantom_dir, tmp_path_factory, one_thread) -> dict:
    """Two epochs of the pretraining bundle's parsed ``train#trainer`` (CPU preset, fp32 teacher, full view) with a
    teacher whose scores are known (seeded random numbers, recorded), the masks the student receives, the student's
    weights after each iteration and the number of EMA updates."""
    parser = ConfigParser()
    parser.read_config(configs(PRETRAIN, "train.json", "train_cpu.json"))
    parser.update({"dataset_dir": str(phantom_dir), "output_dir": str(tmp_path_factory.mktemp("hpm")),
                   "epochs": EPOCHS, "pixdim": [3.0, 3.0, 3.0], "cache_rate": 0.0,
                   "mask_ratio": MASK_RATIO, "final_hard_ratio": FINAL_HARD, "teacher_view": "full",
                   **DECAY})  # fmt: skip
    torch.manual_seed(0)
    trainer = parser.get_parsed_content("train#trainer")
    teacher = trainer.teacher
    generator = torch.Generator().manual_seed(1)
    record: dict = {"scores": [], "masks": [], "epochs": [], "ratios": [], "students": [], "updates": 0}
    record["teacher0"] = copy.deepcopy(teacher.state_dict())

    def known_scores(images: torch.Tensor) -> torch.Tensor:  # replaces the teacher's loss predictor
        scores = torch.rand(images.shape[0], teacher.module.num_patches, generator=generator)
        record["scores"].append(scores)
        return scores

    teacher.module.predict_patch_loss = known_scores
    trainer.network.register_forward_pre_hook(lambda module, args: record["masks"].append(args[1].detach().clone()))
    update = teacher.update

    def counted_update(student, decay):
        record["updates"] += 1
        update(student, decay)

    teacher.update = counted_update

    @trainer.on(Events.ITERATION_COMPLETED)  # after the trainer's own EMA handler: the student is unchanged since
    def _student(engine):
        output = engine.state.output[0] if isinstance(engine.state.output, list) else engine.state.output
        record["epochs"].append(engine.state.epoch)
        record["ratios"].append(output["hard_ratio"])
        record["students"].append({k: v.detach().clone() for k, v in engine.network.state_dict().items()})

    trainer.run()
    record["teacher"] = teacher.state_dict()
    record["iterations"] = trainer.state.iteration
    return record


def test_trainer_masks_the_teachers_hardest_patches_with_the_epochs_hard_ratio(hpm_run):
    assert len(hpm_run["masks"]) == len(hpm_run["scores"]) == hpm_run["iterations"] >= 2 * EPOCHS
    num_patches = hpm_run["masks"][0].shape[1]
    masked = num_patches - int(num_patches * (1 - MASK_RATIO))  # K
    for mask, scores, epoch, ratio in zip(hpm_run["masks"], hpm_run["scores"], hpm_run["epochs"], hpm_run["ratios"]):
        alpha = FINAL_HARD * epoch / EPOCHS  # alpha_e = alpha_T (e + 1) / E, e 0-based
        assert ratio == pytest.approx(alpha)
        n_hard = int(masked * alpha)
        assert n_hard > 0 and mask.shape == scores.shape
        assert mask.sum(1).tolist() == [masked] * mask.shape[0]  # K patches per crop
        for row, score in zip(mask, scores):
            hardest = score.topk(n_hard).indices
            assert row[hardest].all(), f"epoch {epoch}: a patch among the teacher's {n_hard} hardest is visible"
    # the rest is random: over the run, not every mask is the teacher's top K
    top_k = [bool(m[torch.arange(len(s))[:, None], s.topk(masked, dim=1).indices].all()) for m, s in
             zip(hpm_run["masks"], hpm_run["scores"])]  # fmt: skip
    assert not all(top_k)


def test_one_ema_update_per_iteration_in_closed_form(hpm_run):
    """The teacher after the run equals theta_T <- d_e theta_T + (1 - d_e) theta_S applied once per iteration to the
    recorded student weights: a second update per step (a teacher also put in ``train#handlers``) would not."""
    assert hpm_run["updates"] == hpm_run["iterations"]
    expected = {k: v.double() for k, v in hpm_run["teacher0"].items() if v.is_floating_point()}
    for epoch, student in zip(hpm_run["epochs"], hpm_run["students"]):
        decay = ema_decay_at(epoch - 1, DECAY["ema_decay_start"], DECAY["ema_decay_end"], DECAY["ema_ramp_epochs"])
        for key in expected:
            expected[key] = decay * expected[key] + (1 - decay) * student[key].double()
    assert {ema_decay_at(e - 1, *DECAY.values()) for e in hpm_run["epochs"]} == {0.5, 0.7}
    worst = max((hpm_run["teacher"][k].double() - v).abs().max().item() for k, v in expected.items())
    assert worst < 1e-5
    moved = max((hpm_run["teacher"][k].double() - hpm_run["teacher0"][k].double()).abs().max().item() for k in expected)
    assert moved > 1e-3  # the teacher did follow the student


# ------------------------------------------------------------------------------------- the pretrained encoder

VIT = {"hidden_size": 96, "mlp_dim": 384, "num_heads": 4}


def _encoder(path: Path, img_size: int) -> Path:
    from selfmedhpm.networks import HPMMaskedAutoEncoder
    from selfmedhpm.transfer import encoder_state_dict

    torch.manual_seed(123)
    net = HPMMaskedAutoEncoder(img_size=img_size, **VIT, decoder_hidden_size=48, decoder_mlp_dim=96,
                               decoder_num_layers=1, decoder_num_heads=4)  # fmt: skip
    return save_atomic(encoder_state_dict(net), path)


@pytest.mark.parametrize("pretrained_crop", [32, 64])  # the fine-tuning crop is 32: equal, then interpolated
def test_fine_tuning_starts_from_the_encoder_file(pretrained_crop, phantom_dir, tmp_path):
    encoder = _encoder(tmp_path / "encoder.pt", pretrained_crop)
    settings = {**SEG_TINY, **VIT, "dataset_dir": str(phantom_dir), "output_dir": str(tmp_path), "check_data": False}
    workflow = ConfigWorkflow(configs(SEGMENT, "train.json", "train_cpu.json"), workflow_type="train",
                              pretrained_encoder=str(encoder), **settings)  # fmt: skip
    workflow.initialize()
    vit = workflow.parser.get_parsed_content("network").vit.state_dict()
    saved = load_weights(encoder)
    grid = tuple(s // 16 for s in SEG_TINY["roi_size"])
    pos = "patch_embedding.position_embeddings"
    if pretrained_crop != SEG_TINY["roi_size"][0]:
        assert saved[pos].shape != vit[pos].shape
        saved[pos] = interpolate_pos_embed(saved[pos], grid)
    assert vit.keys() == saved.keys()
    for key, value in saved.items():
        assert torch.equal(vit[key], value), key
    fresh = ConfigWorkflow(configs(SEGMENT, "train.json", "train_cpu.json"), workflow_type="train", **settings)
    fresh.initialize()
    scratch = fresh.parser.get_parsed_content("network").vit.state_dict()
    assert not torch.equal(scratch["blocks.0.attn.qkv.weight"], vit["blocks.0.attn.qkv.weight"])


# ------------------------------------------------------------------------------------------ inference content

HU_THRESHOLD = 37.5  # 0.5 after the bundle's -175..250 HU window: the stub's threshold
LABEL = 6


def _inputs(phantom_dir: Path, folder: Path) -> dict[str, tuple[Path, np.ndarray, list[float]]]:
    """The same phantom volume as RAS NIfTI, LPS NIfTI, NRRD in LPS, RAS and LAS space and an axial DICOM series:
    ``{kind: (input, its voxels in the file's own index order, spacing)}``."""
    import nrrd
    from test_segmentation_bundle import dicom_series

    case = json.loads((phantom_dir / "dataset_0.json").read_text())["training"][0]["image"]
    volume = np.asarray(nib.load(phantom_dir / case).dataobj).astype(np.int16)[:64, :56, :24]
    folder.mkdir(parents=True)
    found = {}
    for name, sign in (("ras", 1.0), ("lps", -1.0)):
        affine = np.diag([sign * 3.0, sign * 2.5, 6.0, 1.0])
        affine[:3, 3] = [sign * -90.0, sign * -70.0, -40.0]
        nib.save(nib.Nifti1Image(volume, affine), folder / f"{name}.nii.gz")
        found[name] = (folder / f"{name}.nii.gz", volume, [3.0, 2.5, 6.0])
    for name, space, flip in (("nrrd", "left-posterior-superior", [1.0, 1.0, 1.0]),
                              ("nrrd_ras", "right-anterior-superior", [-1.0, 1.0, 1.0]),
                              ("nrrd_las", "left-anterior-superior", [1.0, -1.0, 1.0])):  # fmt: skip
        header = {"space": space, "space directions": np.diag(np.multiply([4.0, 3.0, 5.0], flip)),
                  "space origin": np.array([-100.0, -90.0, 10.0])}  # fmt: skip
        nrrd.write(str(folder / f"{name}.nrrd"), volume, header)
        found[name] = (folder / f"{name}.nrrd", volume, [4.0, 3.0, 5.0])
    found["dicom"] = (dicom_series(volume, folder / "series", spacing=(4.0, 3.5, 5.0)), volume, [4.0, 3.5, 5.0])
    return found


@pytest.mark.parametrize("kind", ["ras", "lps", "nrrd", "nrrd_ras", "nrrd_las", "dicom"])
def test_inference_output_is_the_networks_answer_in_the_input_grid(kind, phantom_dir, tmp_path):
    """With the network replaced by a fixed threshold, the written labels equal the thresholded input voxel by voxel
    in the input's own grid: a label flipped (left-right or otherwise) but saved with the right affine fails."""
    path, voxels, spacing = _inputs(phantom_dir, tmp_path / "inputs")[kind]
    model = save_atomic({}, tmp_path / "model.pt")  # the stub has no weights
    network = {"_target_": "stubs.ThresholdNet", "threshold": 0.5, "label": LABEL, "num_classes": 14}
    run_workflow(configs(SEGMENT, "inference.json", "train_cpu.json"), workflow_type="infer", input_file=str(path),
                 output_dir=str(tmp_path / "out"), model_file=str(model), network_def=network, pixdim=spacing,
                 roi_size=[32, 32, 32], num_workers=0)  # fmt: skip
    written = list((tmp_path / "out").iterdir())
    assert len(written) == 1
    labels = np.asarray(nib.load(written[0]).dataobj)
    expected = np.where(voxels > HU_THRESHOLD, LABEL, 0)
    assert labels.shape == expected.shape
    assert 0.05 < (expected > 0).mean() < 0.6  # the threshold splits the volume
    assert np.array_equal(labels, expected), f"{(labels != expected).sum()} voxels differ"
    assert not np.array_equal(labels[::-1], expected)  # the check would see a left-right flip


def test_inference_reads_each_input_once_and_skips_a_bad_one_by_name(phantom_dir, tmp_path, monkeypatch, capsys):
    """A folder of three inputs: each volume is decompressed once (the header check before the loader reads no
    voxels; the intensities are checked on the loaded volume), the one with NaN voxels and a NRRD without patient
    orientation are skipped with one line naming the file, and the others are segmented."""
    import nibabel.arrayproxy
    import nrrd

    folder = tmp_path / "inputs"
    path, voxels, spacing = _inputs(phantom_dir, tmp_path / "made")["ras"]
    image = nib.load(path)
    for name in ("a", "b"):
        folder.mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(voxels, image.affine), folder / f"{name}.nii.gz")
    broken = voxels.astype(np.float32)
    broken[:4, :4, :2] = np.nan
    nib.save(nib.Nifti1Image(broken, image.affine), folder / "c_nan.nii.gz")
    nrrd.write(str(folder / "d_scanner.nrrd"), voxels, {"space": "scanner-xyz", "space directions": np.eye(3),
                                                        "space origin": np.zeros(3)})  # fmt: skip
    reads: list[str] = []
    unscaled = nibabel.arrayproxy.ArrayProxy._get_unscaled

    def counted(self, *args, **kwargs):
        reads.append(Path(self.file_like).name)
        return unscaled(self, *args, **kwargs)

    monkeypatch.setattr(nibabel.arrayproxy.ArrayProxy, "_get_unscaled", counted)
    model = save_atomic({}, tmp_path / "model.pt")
    network = {"_target_": "stubs.ThresholdNet", "threshold": 0.5, "label": LABEL, "num_classes": 14}
    run_workflow(configs(SEGMENT, "inference.json", "train_cpu.json"), workflow_type="infer", dataset_dir=str(folder),
                 output_dir=str(tmp_path / "out"), model_file=str(model), network_def=network, pixdim=spacing,
                 roi_size=[32, 32, 32], num_workers=0)  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_seg.nii.gz", "b_seg.nii.gz"]
    assert sorted(reads) == ["a.nii.gz", "b.nii.gz", "c_nan.nii.gz"]  # one decompression each
    skipped = [line for line in capsys.readouterr().err.splitlines() if line.startswith("skipping ERROR")]
    assert [line.split(": ", 1)[0].rsplit("/", 1)[-1] for line in skipped] == ["d_scanner.nrrd", "c_nan.nii.gz"]
    assert "contains 32 NaN and 0 Inf voxels" in skipped[1] and "NRRD space 'scanner-xyz'" in skipped[0]

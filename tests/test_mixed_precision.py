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

"""Both bundles under CPU bf16 autocast, why the project has its own masked autoencoder (MONAI's fails under
autocast), and the int8 teacher pass (a reduced-precision teacher for CPUs without fast bf16)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import PRETRAIN, SEGMENT, configs, phantom_set, run_workflow
from selfmedhpm.checkpoint import load_weights
from selfmedhpm.networks import HPMMaskedAutoEncoder
from selfmedhpm.quant import Int8Linear, Int8Teacher

SMALL = dict(hidden_size=48, mlp_dim=96, num_heads=4)
SMALL_DECODER = dict(decoder_hidden_size=24, decoder_mlp_dim=48, decoder_num_heads=4)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def tiny_ct(tmp_path_factory) -> Path:
    """Three synthetic abdominal CTs of 96x96x48 voxels (two for training, one for validation)."""
    return phantom_set(tmp_path_factory, "bf16_data", cases=3, val_fraction=0.25)


@contextlib.contextmanager
def linear_dtypes():
    """Yields the set of output dtypes of every ``torch.nn.Linear`` run with gradients enabled (training passes)
    while the block runs."""
    seen: set = set()

    def hook(module, args, output):
        if isinstance(module, torch.nn.Linear) and torch.is_grad_enabled():
            seen.add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


@pytest.mark.slow
def test_pretraining_bundle_runs_under_cpu_bf16_autocast(tiny_ct, tmp_path):
    with linear_dtypes() as seen:
        workflow = run_workflow(
            configs(PRETRAIN, "train.json", "train_cpu.json"),
            dataset_dir=str(tiny_ct),
            output_dir=str(tmp_path),
            device="cpu",
            precision="bf16",
            epochs=2,
            pixdim=[3.0, 3.0, 3.0],
            num_samples=2,
        )
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert (
        trainer.inferer.precision == "bf16" and trainer.teacher_precision == "bf16"
    )  # the teacher follows "precision"
    assert type(trainer.inferer).__name__ == "AutocastInferer" and not trainer.amp  # fp16's gradient scaler only
    assert seen == {torch.bfloat16}, seen  # the student's linear layers really ran in bf16
    history = json.loads((tmp_path / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    for record in history:
        for key in ("loss", "rec_loss", "pred_loss"):
            assert np.isfinite(record[key]), (key, record)
    weights = load_weights(tmp_path / "model.pt")
    assert all(v.dtype == torch.float32 for v in weights.values() if v.is_floating_point())  # fp32 master weights


@pytest.mark.slow
def test_segmentation_bundle_runs_under_cpu_bf16_autocast(tiny_ct, tmp_path):
    with linear_dtypes() as seen:
        workflow = run_workflow(
            configs(SEGMENT, "train.json", "train_cpu.json"),
            bundle_root=str(tmp_path),
            dataset_dir=str(tiny_ct),
            device="cpu",
            precision="bf16",
            epochs=2,
            val_interval=1,
            roi_size=[32, 32, 32],
            pixdim=[6.0, 6.0, 6.0],
            feature_size=8,
            num_samples=2,
            warmup_epochs=1,
        )
    assert workflow.parser.get_parsed_content("train#inferer").precision == "bf16"
    assert seen == {torch.bfloat16}, seen  # the UNETR's ViT ran in bf16 in training
    history = json.loads((tmp_path / "models" / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    for record in history:
        assert np.isfinite(record["loss"]), record
    assert "val_mean_dice" in history[-1]  # validated


def test_our_autoencoder_trains_under_autocast():
    """HPMMaskedAutoEncoder keeps dtypes consistent under ``torch.autocast`` (MONAI 1.6.1's MaskedAutoEncoderViT
    writes bf16 decoder features into fp32 mask tokens with index_put, which fails there): bf16 outputs, fp32
    gradients for every trainable weight."""
    torch.manual_seed(0)
    images = torch.rand(2, 1, 32, 32, 32)
    ours = HPMMaskedAutoEncoder(img_size=32, decoder_num_layers=1, **SMALL, **SMALL_DECODER)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, :6] = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reconstruction, predicted = ours(images, mask)
        teacher_scores = ours.predict_patch_loss(images)
    assert reconstruction.dtype == predicted.dtype == torch.bfloat16
    assert reconstruction.shape == (2, 8, 16**3) and teacher_scores.shape == (2, 8)
    (reconstruction.float().square().mean() + predicted.float().mean()).backward()
    grads = [p.grad for p in ours.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_int8_linear_matches_float_linear():
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 64)
    x = torch.randn(3, 17, 96)
    quantised = Int8Linear(linear)
    assert quantised.weight.dtype == torch.int8 and quantised(x).shape == (3, 17, 64)
    error = (quantised(x) - linear(x)).norm() / linear(x).norm()
    assert error < 0.02


def test_int8_teacher_ranks_patches_like_fp32_and_follows_the_ema_weights():
    torch.manual_seed(0)
    net = HPMMaskedAutoEncoder(img_size=64, decoder_num_layers=2, **SMALL, **SMALL_DECODER).eval()
    images = torch.rand(4, 1, 64, 64, 64)
    teacher = Int8Teacher(net, refresh_interval=2)
    with torch.inference_mode():
        reference = net.predict_patch_loss(images)
    scores = teacher.predict_patch_loss(images)
    assert scores.dtype == torch.float32 and scores.shape == reference.shape == (4, 64)
    ranks = [torch.argsort(torch.argsort(s)).float() for s in (reference.flatten(), scores.flatten())]
    assert torch.corrcoef(torch.stack(ranks))[0, 1] > 0.95  # Spearman rank correlation
    assert not any(isinstance(m, Int8Linear) for m in net.modules())  # the fp32 teacher is left alone

    with torch.no_grad():  # an EMA step moves the fp32 teacher; the int8 copy follows at its next refresh
        for p in net.parameters():
            p.mul_(-1.0)
    teacher.predict_patch_loss(images)  # call 2: not due yet (refresh every 2 calls)
    refreshed = teacher.predict_patch_loss(images)  # call 3: re-quantised first
    with torch.inference_mode():
        moved = net.predict_patch_loss(images)
    assert torch.allclose(refreshed, moved, atol=0.05 * moved.abs().max().item())


def test_trainer_int8_teacher_requantises_at_each_epoch_start_and_every_interval(monkeypatch):
    from selfmedhpm.ema import EMATeacher
    from selfmedhpm.engine import HPMTrainer
    from selfmedhpm.losses import HPMLoss

    torch.manual_seed(0)
    net = HPMMaskedAutoEncoder(img_size=32, decoder_num_layers=1, **SMALL, **SMALL_DECODER)
    batches = [{"image": torch.rand(1, 1, 32, 32, 32)} for _ in range(5)]
    trainer = HPMTrainer(
        device="cpu", max_epochs=2, train_data_loader=batches, network=net,
        optimizer=torch.optim.AdamW(net.parameters(), 1e-3), loss_function=HPMLoss(patch_size=16),
        teacher=EMATeacher(net), teacher_precision="int8", teacher_refresh_interval=2,
    )  # fmt: skip
    refreshed = []
    monkeypatch.setattr(Int8Teacher, "refresh", lambda self: refreshed.append(trainer.state.iteration))
    trainer.run()
    assert isinstance(trainer.int8_teacher, Int8Teacher)  # built at iteration 1 from the EMA weights
    # epoch 1 (iterations 1-5): built at 1, refreshed at 3 and 5; epoch 2 (6-10): at 6 (its start), 8 and 10,
    # so a run resumed from the epoch-1 checkpoint (built at 6) quantises the same weights at the same iterations
    assert refreshed == [3, 5, 6, 8, 10]
    with pytest.raises(ValueError, match="CPU only"):
        HPMTrainer(device="meta", max_epochs=1, train_data_loader=batches, network=net, optimizer=trainer.optimizer,
                   loss_function=HPMLoss(patch_size=16), teacher=EMATeacher(net), teacher_precision="int8")  # fmt: skip

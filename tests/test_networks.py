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

import pytest
import torch
from monai.networks.nets import UNETR
from selfmedhpm.losses import HPMLoss, patchify
from selfmedhpm.masking import hard_patch_mask, mask_indices
from selfmedhpm.networks import HPMMaskedAutoEncoder, PatchLossMap
from selfmedhpm.transfer import encoder_state_dict
from selfmedhpm.utils import autocast

SMALL = dict(
    hidden_size=48,
    mlp_dim=96,
    num_heads=4,
    decoder_hidden_size=24,
    decoder_mlp_dim=48,
    decoder_num_layers=1,
    decoder_num_heads=4,
)


def small_net(img_size=32) -> HPMMaskedAutoEncoder:
    torch.manual_seed(0)
    return HPMMaskedAutoEncoder(img_size=img_size, **SMALL)


@pytest.mark.parametrize("hidden,mlp,heads", [(48, 96, 4), (768, 3072, 12)])
def test_encoder_keys_load_into_unetr_vit_strictly(hidden, mlp, heads):
    net = HPMMaskedAutoEncoder(
        img_size=32,
        hidden_size=hidden,
        mlp_dim=mlp,
        num_heads=heads,
        decoder_hidden_size=24,
        decoder_mlp_dim=48,
        decoder_num_layers=1,
        decoder_num_heads=4,
    )
    unetr = UNETR(1, 14, (32, 32, 32), hidden_size=hidden, mlp_dim=mlp, num_heads=heads)
    state = encoder_state_dict(net)
    unetr.vit.load_state_dict(state, strict=True)  # raises on a missing, unexpected or mis-shaped key
    assert set(state) == set(unetr.vit.state_dict())
    assert torch.equal(unetr.vit.blocks[11].mlp.linear2.weight, net.encoder.blocks[11].mlp.linear2.weight)


def test_encoder_sees_only_visible_tokens():
    net = small_net()
    x = torch.rand(2, 1, 32, 32, 32)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, [1, 2, 5, 6, 7, 0]] = True
    visible, _, _ = mask_indices(mask, 6)
    assert visible.tolist() == [[3, 4], [3, 4]]
    latent = net.encoder(x, visible, net.cls_token)
    assert latent.shape == (2, 1 + 2, 48)
    x2 = x.clone()
    x2[:, :, :16, :16, :16] = 0  # patch 0 is masked: changing it must not change the encoding
    assert torch.allclose(net.encoder(x2, visible, net.cls_token), latent, atol=1e-6)
    x2[:, :, 16:, :16, :16] = 0  # patch 4 is visible: changing it must change the encoding
    assert not torch.allclose(net.encoder(x2, visible, net.cls_token), latent, atol=1e-3)


def test_patch_embedding_as_a_matrix_product_equals_monai_conv_block():
    net = small_net(img_size=(32, 48, 16))
    x = torch.randn(2, 1, 32, 48, 16)
    reference = net.encoder.patch_embedding(x)  # MONAI's Conv3d path, flattened H-major
    assert torch.allclose(net.encoder.embed(x), reference, atol=1e-5)


def _forward_with_boolean_indexing(net, x, mask):
    """The student pass as written before static shapes: boolean selection of visible tokens, masked_scatter of
    the decoder tokens (the reference the index-gather version must reproduce)."""
    tokens = net.encoder.patch_embedding(x)
    n, _, width = tokens.shape
    tokens = torch.cat([net.cls_token.expand(n, -1, -1), tokens[~mask].view(n, -1, width)], dim=1)
    for block in net.encoder.blocks:
        tokens = block(tokens)
    y = net.decoder_embed(net.encoder.norm(tokens))
    full = net.mask_token.expand(n, net.num_patches, y.shape[-1]).masked_scatter(~mask[..., None], y[:, 1:])
    y = torch.cat([y[:, :1], full], dim=1) + net.decoder_pos_embed
    return net.reconstruct(y), net.predict_loss(y)


def test_static_shape_student_pass_equals_boolean_indexing():
    net = small_net(img_size=48)  # 27 patches
    x = torch.randn(3, 1, 48, 48, 48)
    mask = hard_patch_mask(torch.randn(3, 27), 0.75, 0.5, torch.Generator().manual_seed(1))
    rec, pred = net(x, mask, num_masked=int(mask[0].sum()))
    ref_rec, ref_pred = _forward_with_boolean_indexing(net, x, mask)
    assert torch.allclose(rec, ref_rec, atol=1e-5) and torch.allclose(pred, ref_pred, atol=1e-5)
    rec_counted, _ = net(x, mask)  # num_masked counted from the mask
    assert torch.equal(rec_counted, rec)


def test_teacher_pass_skips_reconstructor():
    net = small_net()
    calls = []
    net.decoder_pred.register_forward_hook(lambda *a: calls.append("rec"))
    net.predictor_head.register_forward_hook(lambda *a: calls.append("pred"))
    out = net.predict_patch_loss(torch.rand(2, 1, 32, 32, 32))
    assert out.shape == (2, 8) and calls == ["pred"]


def test_loss_predictor_gradient_reaches_encoder():
    net = small_net()
    x = torch.rand(2, 1, 32, 32, 32)
    mask = hard_patch_mask(torch.rand(2, 8), 0.75, 0.0)
    _, pred = net(x, mask)
    pred.sum().backward()
    assert net.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert net.decoder_pred.weight.grad is None


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_forward_and_backward_under_cpu_autocast(precision):
    net = small_net()
    x = torch.rand(2, 1, 32, 32, 32)
    mask = hard_patch_mask(torch.rand(2, 8), 0.75, 0.5)
    with autocast("cpu", precision):
        rec, pred = net(x, mask)
        out = HPMLoss(16)(rec, pred, x, mask)
        heat = PatchLossMap(net)(x)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and heat.shape == (2, 1, 32, 32, 32)
    assert (rec.dtype == torch.bfloat16) == (precision == "bf16")


def test_reconstruct_volume_pastes_visible_patches():
    net = small_net().eval()
    x = torch.rand(1, 1, 32, 32, 32)
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[0, :6] = True
    with torch.no_grad():
        volume = net.reconstruct_volume(x, mask)
    assert volume.shape == x.shape
    assert torch.allclose(volume[:, :, 16:, 16:, :], x[:, :, 16:, 16:, :])  # patches 6 and 7 are visible


def test_reconstruct_volume_maps_normalised_targets_back_only_when_trained_on_them():
    """A network trained on raw voxels (``norm_pix_loss`` False, the CPU preset) shows its output as it is; one
    trained on per-patch normalised targets gets each patch's mean and spread back from the input."""
    net = small_net().eval()
    x = torch.rand(1, 1, 32, 32, 32) * 3.0 + 1.0
    mask = torch.ones(1, 8, dtype=torch.bool)
    with torch.no_grad():
        raw, _ = net(x, mask)  # [1, 8, 16^3]
        shown_raw = patchify(net.reconstruct_volume(x, mask, norm_pix_loss=False), 16)
        shown_norm = patchify(net.reconstruct_volume(x, mask, norm_pix_loss=True), 16)
    original = patchify(x, 16)
    mean, std = original.mean(-1, keepdim=True), original.std(-1, keepdim=True, unbiased=False)
    assert torch.allclose(shown_raw, raw, atol=1e-6)
    assert torch.allclose(shown_norm, raw * (std + 1e-6) + mean, atol=1e-5)


def test_bad_img_size_raises_with_value():
    with pytest.raises(ValueError, match="40"):
        HPMMaskedAutoEncoder(img_size=40, **SMALL)


def test_hpm_trainer_takes_images_from_prepare_batch_and_runs_the_student_through_the_inferer():
    from monai.inferers import SimpleInferer
    from selfmedhpm.ema import EMATeacher
    from selfmedhpm.engine import HPMTrainer

    net = small_net()
    seen, calls = [], []

    def prepare_batch(batchdata, device, non_blocking, **kwargs):  # the volumes sit under a custom key
        seen.append(batchdata["ct"].sum().item())
        return batchdata["ct"].to(device), None

    class CountingInferer(SimpleInferer):
        def __call__(self, inputs, network, *args, **kwargs):
            calls.append(tuple(getattr(a, "shape", a) for a in args))  # the mask and K reach the network
            return super().__call__(inputs, network, *args, **kwargs)

    batches = [{"ct": torch.full((1, 1, 32, 32, 32), float(i + 1))} for i in range(3)]
    trainer = HPMTrainer(
        device="cpu", max_epochs=1, train_data_loader=batches, network=net,
        optimizer=torch.optim.AdamW(net.parameters(), 1e-3), loss_function=HPMLoss(patch_size=16),
        teacher=EMATeacher(net), prepare_batch=prepare_batch, inferer=CountingInferer(), decollate=False,
    )  # fmt: skip
    trainer.run()
    assert seen == [32.0**3, 2 * 32.0**3, 3 * 32.0**3]
    assert calls == [(torch.Size([1, 8]), 6)] * 3  # [N, L] masks of the 2x2x2 token grid, K = 6 masked
    assert torch.equal(trainer.state.output["image"], batches[-1]["ct"])


@pytest.mark.parametrize("refused", [{"amp_kwargs": {"dtype": torch.bfloat16}}, {"accumulation_steps": 2}])
def test_hpm_trainer_refuses_the_trainer_arguments_it_would_ignore(refused):
    from selfmedhpm.ema import EMATeacher
    from selfmedhpm.engine import HPMTrainer

    net = small_net()
    with pytest.raises(ValueError, match=f"does not honour {{'{next(iter(refused))}'"):
        HPMTrainer(
            device="cpu", max_epochs=1, train_data_loader=[], network=net, loss_function=HPMLoss(patch_size=16),
            optimizer=torch.optim.AdamW(net.parameters(), 1e-3), teacher=EMATeacher(net), **refused,
        )  # fmt: skip

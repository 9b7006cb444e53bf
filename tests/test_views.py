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

"""The teacher's views (``selfmedhpm.views``): complementary masks, the masked view's per-pass standardised scores, the
reconstruction view's real losses, and the trainer's use of them."""

from __future__ import annotations

import pytest
import torch
from selfmedhpm.ema import EMATeacher
from selfmedhpm.engine import HPMTrainer
from selfmedhpm.losses import HPMLoss
from selfmedhpm.masking import hard_patch_mask, num_masked
from selfmedhpm.networks import HPMMaskedAutoEncoder
from selfmedhpm.patches import patch_targets, per_patch_loss
from selfmedhpm.views import TEACHER_VIEWS, TeacherView, complementary_masks, standardise_masked

SMALL = dict(hidden_size=48, mlp_dim=96, num_heads=4, decoder_hidden_size=24, decoder_mlp_dim=48,
             decoder_num_layers=1, decoder_num_heads=4)  # fmt: skip


@pytest.fixture
def net() -> HPMMaskedAutoEncoder:
    torch.manual_seed(0)
    return HPMMaskedAutoEncoder(img_size=(64, 48, 48), **SMALL).eval()  # 36 patches, as the demo's crop


@pytest.mark.parametrize(
    "length, ratio, passes", [(36, 0.75, 4), (36, 0.75, 2), (216, 0.75, 4), (27, 0.7, 3), (27, 0.6, 3)]
)
def test_complementary_masks_show_each_patch_at_most_once_and_mask_it_in_the_other_passes(length, ratio, passes):
    k = num_masked(length, ratio)
    masks = complementary_masks(3, length, k, passes, torch.Generator().manual_seed(1))  # [R, N, L]
    assert masks.shape == (passes, 3, length) and masks.dtype == torch.bool
    assert (masks.sum(-1) == k).all()  # static: K masked in every pass and image
    shown = (~masks).sum(0)  # [N, L]: passes that showed each patch
    assert shown.max() <= -(-passes * (length - k) // length)  # no overlap while R * (L - K) <= L, then evenly
    assert ((~masks).sum(0) < passes).all()  # every patch masked in at least one pass
    assert shown.sum(1).tolist() == [passes * (length - k)] * 3
    other = complementary_masks(3, length, k, passes, torch.Generator().manual_seed(2))
    assert not torch.equal(masks, other)  # random: another permutation per draw


def test_complementary_masks_refuse_what_cannot_mask_every_patch():
    with pytest.raises(ValueError, match="cannot mask every patch"):
        complementary_masks(1, 8, 1, 2)  # 2 passes showing 7 of 8 patches each: some patch in both
    with pytest.raises(ValueError, match="teacher_passes must be >= 2"):
        complementary_masks(1, 8, 6, 1)
    with pytest.raises(ValueError, match="teacher_view must be one of"):
        TeacherView("teacher")


def test_masked_view_scores_are_per_pass_z_scores_of_the_predictor_averaged_where_masked(net):
    images = torch.rand(2, 1, 64, 48, 48)
    view = TeacherView("masked", passes=4)
    masks = view.draw(2, net.num_patches, torch.Generator().manual_seed(0))
    with torch.no_grad():
        scores = view.scores(net, images, masks)  # [2, 36]
        expected = torch.zeros(2, 36)
        for mask in masks:  # one pass at a time, by hand
            predicted = net.predict_patch_loss(images, mask, num_masked(36, 0.75))
            for i in range(2):
                chosen = predicted[i][mask[i]]
                z = (predicted[i] - chosen.mean()) / chosen.std()
                expected[i] += torch.where(mask[i], z, 0.0)
    expected /= masks.sum(0)
    assert torch.allclose(scores, expected, atol=1e-4)
    assert masks.sum(0).min() == 3  # each patch masked in 3 of the 4 passes


def test_masked_pass_of_the_network_uses_only_the_visible_patches(net):
    """What the masked view is for: the predictor's outputs in a masked pass do not depend on the hidden voxels."""
    images = torch.rand(1, 1, 64, 48, 48)
    mask = hard_patch_mask(torch.zeros(1, 36), 0.75, 0.0, torch.Generator().manual_seed(0))
    changed = images.clone()
    hidden = torch.nonzero(mask[0]).flatten()[:3]  # overwrite three hidden patches' voxels
    for index in hidden.tolist():
        h, rest = divmod(index, 9)
        w, d = divmod(rest, 3)
        changed[..., h * 16 : h * 16 + 16, w * 16 : w * 16 + 16, d * 16 : d * 16 + 16] = 1.0
    with torch.no_grad():
        same = [net.predict_patch_loss(x, mask, 27) for x in (images, changed)]
        full = [net.predict_patch_loss(x) for x in (images, changed)]
    assert torch.allclose(same[0], same[1])
    assert not torch.allclose(full[0], full[1])  # the full view sees them


def test_reconstruction_view_scores_the_teachers_real_loss_on_its_masked_set(net):
    images = torch.rand(2, 1, 64, 48, 48)
    view = TeacherView("reconstruction", norm_pix_loss=True)
    masks = view.draw(2, net.num_patches, torch.Generator().manual_seed(0))
    assert masks.shape == (1, 2, 36) and (masks.sum(-1) == 27).all()
    with torch.no_grad():
        scores = view.scores(net, images, masks)
        reconstruction, _ = net(images, masks[0], 27)
    loss = per_patch_loss(reconstruction, patch_targets(images, 16, True))
    assert torch.allclose(scores[masks[0]], loss[masks[0]])
    assert (scores[~masks[0]] == -1.0).all()
    hard = hard_patch_mask(scores, 0.75, 0.5, torch.Generator().manual_seed(1))
    top = scores.topk(int(27 * 0.5), dim=1).indices
    assert masks[0].gather(1, top).all() and hard.gather(1, top).all()  # the hard patches: from the pass's masked set


def test_full_view_draws_nothing_so_its_masks_stay_those_of_earlier_releases(net):
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    assert TeacherView("full").draw(2, 36, generator) is None
    assert torch.equal(generator.get_state(), state)
    images = torch.rand(2, 1, 64, 48, 48)
    with torch.no_grad():
        assert torch.equal(TeacherView("full")(net, images, generator), net.predict_patch_loss(images))


def test_standardise_masked_gives_zero_mean_unit_std_over_the_masked_entries():
    values = torch.tensor([[1.0, 5.0, 2.0, 8.0, 100.0], [3.0, 3.0, 3.0, 1.0, 0.0]])
    mask = torch.tensor([[True, True, True, True, False], [True, True, True, False, False]])
    z = standardise_masked(values, mask)
    assert z[0, :4].mean().abs() < 1e-6 and z[0, :4].std() == pytest.approx(1.0)
    assert z[0, 4] == 0 and (z[1] == 0).all()  # unmasked entries, and a constant row


@pytest.mark.parametrize("view", TEACHER_VIEWS)
def test_trainer_masks_the_top_scores_of_its_view(view, net):
    """The hard-patch contract of the full view holds for every view: the student's mask holds the int(K * alpha)
    top-scored patches of the scores the teacher computed in its view this iteration, K in every row."""
    batches = [{"image": torch.rand(2, 1, 64, 48, 48, generator=torch.Generator().manual_seed(i))} for i in range(3)]
    trainer = HPMTrainer(
        device="cpu", max_epochs=1, train_data_loader=batches, network=net.train(),
        optimizer=torch.optim.AdamW(net.parameters(), 1e-3), loss_function=HPMLoss(patch_size=16),
        teacher=EMATeacher(net, 0.9, 0.9), final_hard_ratio=1.0, decollate=False, teacher_view=view,
    )  # fmt: skip
    seen = {"scores": [], "masks": []}
    scores_of = trainer.view.scores
    trainer.view.scores = lambda *a: seen["scores"].append(scores_of(*a)) or seen["scores"][-1]
    net.register_forward_pre_hook(
        lambda module, args: seen["masks"].append(args[1].clone()) if module.training else None
    )
    trainer.run()
    assert len(seen["scores"]) == len(seen["masks"]) == 3
    n_hard = int(27 * 1.0)  # alpha_T = 1, one epoch: every masked patch is a hard one
    for scores, mask in zip(seen["scores"], seen["masks"]):
        assert mask.sum(1).tolist() == [27, 27]
        assert mask.gather(1, scores.topk(n_hard, dim=1).indices).all(), view


def test_int8_teacher_refuses_the_reconstruction_view(net):
    with pytest.raises(ValueError, match="reconstructor"):
        HPMTrainer(device="cpu", max_epochs=1, train_data_loader=[], network=net,
                   optimizer=torch.optim.AdamW(net.parameters()), loss_function=HPMLoss(patch_size=16),
                   teacher=EMATeacher(net), teacher_view="reconstruction", teacher_precision="int8")  # fmt: skip

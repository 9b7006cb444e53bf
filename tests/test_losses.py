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

import itertools
import math

import pytest
import torch
from selfmedhpm.losses import HPMLoss, patch_targets, patchify, relative_loss_prediction, unpatchify


def brute_force_ranking_loss(p: torch.Tensor, true: torch.Tensor) -> float:
    total, pairs = 0.0, 0
    for n in range(p.shape[0]):
        for j, k in itertools.permutations(range(p.shape[1]), 2):
            if true[n, k] == true[n, j]:
                continue
            s = 1 / (1 + math.exp(-(p[n, k] - p[n, j]).item()))
            total += -math.log(s + 1e-6) if true[n, k] > true[n, j] else -math.log(1 - s + 1e-6)
            pairs += 1
    return total / pairs if pairs else 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranking_loss_matches_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    p, true = torch.randn(3, 7, generator=g), torch.randn(3, 7, generator=g)
    assert relative_loss_prediction(p, true).item() == pytest.approx(brute_force_ranking_loss(p, true), rel=1e-5)


def test_ranking_loss_excludes_ties():
    p = torch.tensor([[0.3, -0.2, 0.9, 0.1]])
    true = torch.tensor([[1.0, 1.0, 2.0, 2.0]])  # 4 tied ordered pairs excluded, 8 counted
    assert relative_loss_prediction(p, true).item() == pytest.approx(brute_force_ranking_loss(p, true), rel=1e-5)
    assert relative_loss_prediction(p, torch.ones(1, 4)).item() == 0.0


def test_ranking_loss_rewards_right_order():
    true = torch.tensor([[0.1, 0.5, 0.9, 1.3]])
    assert relative_loss_prediction(true * 10, true) < relative_loss_prediction(-true * 10, true)


def test_ranking_loss_gradients_match_brute_force_and_target_detached():
    p = torch.randn(2, 5, requires_grad=True)
    true = torch.randn(2, 5, requires_grad=True)
    relative_loss_prediction(p, true).backward()
    assert true.grad is None
    eps = 1e-3
    numeric = torch.zeros_like(p)
    for idx in itertools.product(range(2), range(5)):
        plus, minus = p.detach().clone(), p.detach().clone()
        plus[idx] += eps
        minus[idx] -= eps
        target = true.detach()
        numeric[idx] = (brute_force_ranking_loss(plus, target) - brute_force_ranking_loss(minus, target)) / (2 * eps)
    assert torch.allclose(p.grad, numeric, atol=1e-3)


def test_patchify_roundtrip_and_token_order_matches_patch_embedding():
    x = torch.rand(2, 1, 32, 48, 16)
    patches = patchify(x, 16)
    assert patches.shape == (2, 6, 4096)
    assert torch.equal(unpatchify(patches, (2, 3, 1), 16), x)
    conv = torch.nn.Conv3d(1, 1, 16, 16, bias=False)
    torch.nn.init.ones_(conv.weight)
    tokens = conv(x).flatten(2).transpose(1, 2)[..., 0]  # PatchEmbeddingBlock's order
    assert torch.allclose(tokens, patches.sum(-1), rtol=1e-4)


def test_normalised_targets_have_zero_mean_unit_variance():
    t = patch_targets(torch.rand(1, 1, 32, 32, 32) * 5 + 2, 16)
    assert torch.allclose(t.mean(-1), torch.zeros(1, 8), atol=1e-4)
    assert torch.allclose(t.var(-1, unbiased=False), torch.ones(1, 8), atol=1e-3)


def test_hpm_loss_counts_only_masked_patches():
    images = torch.rand(2, 1, 32, 32, 32)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, :4] = True
    target = patch_targets(images, 16)
    reconstruction = target.clone()
    reconstruction[:, 4:] += 100.0  # huge error on visible patches must not count
    reconstruction[:, :4] += 1.0
    out = HPMLoss(16, pred_weight=0.0)(reconstruction, torch.zeros(2, 8), images, mask)
    assert out["rec_loss"].item() == pytest.approx(1.0, rel=1e-5)
    assert out["loss"].item() == pytest.approx(1.0, rel=1e-5)

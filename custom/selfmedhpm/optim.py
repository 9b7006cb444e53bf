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

"""Optimiser parameter groups: no weight decay on biases, norms and tokens; optional layer-wise lr decay."""

from __future__ import annotations

import re

import torch.nn as nn

__all__ = ["param_groups", "vit_layer_id"]

_NO_DECAY = ("cls_token", "mask_token", "position_embeddings", "pos_embed")


def vit_layer_id(name: str, num_layers: int = 12, prefix: str = "vit.") -> int:
    """Depth of a parameter for layer-wise lr decay: 0 for the patch embedding, i + 1 for ViT block i, and
    ``num_layers + 1`` for the final norm and everything outside the ViT (UNETR's decoder).

    Examples::

        >>> vit_layer_id("vit.patch_embedding.patch_embeddings.weight"), vit_layer_id("vit.blocks.3.mlp.linear1.weight")
        (0, 4)
        >>> vit_layer_id("decoder5.transp_conv.conv.weight")
        13
    """
    if name.startswith(prefix + "patch_embedding"):
        return 0
    match = re.match(re.escape(prefix) + r"blocks\.(\d+)\.", name)
    if match:
        return int(match.group(1)) + 1
    return num_layers + 1


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.05,
    layer_decay: float | None = None,
    num_layers: int = 12,
    prefix: str = "vit.",
) -> list[dict]:
    """Parameter groups for AdamW. Biases, norm weights (1-D tensors), tokens and position embeddings get no weight
    decay. With ``layer_decay``, parameters at depth ``i`` (:func:`vit_layer_id`) get
    ``lr * layer_decay ** (num_layers + 1 - i)`` (BEiT/MAE fine-tuning); an ``lr_scale`` entry records the factor.

    Args:
        model: the network (DDP wrappers are fine: the ``module.`` prefix is stripped).
        lr: base learning rate.
        weight_decay: decay of the weight matrices. Defaults to 0.05.
        layer_decay: layer-wise lr decay factor, None for none.
        num_layers: ViT depth. Defaults to 12.
        prefix: name prefix of the ViT inside ``model``. Defaults to ``"vit."`` (UNETR).

    Examples::

        >>> groups = param_groups(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)), lr=1e-3)
        >>> [(len(g["params"]), g["weight_decay"]) for g in groups]
        [(1, 0.05), (3, 0.0)]
    """
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        name = name.removeprefix("module.")
        no_decay = param.ndim <= 1 or name.endswith(".bias") or any(key in name for key in _NO_DECAY)
        depth = vit_layer_id(name, num_layers, prefix) if layer_decay is not None else num_layers + 1
        scale = layer_decay ** (num_layers + 1 - depth) if layer_decay is not None else 1.0
        group = groups.setdefault(
            (depth, no_decay),
            {"params": [], "weight_decay": 0.0 if no_decay else weight_decay, "lr": lr * scale, "lr_scale": scale},
        )
        group["params"].append(param)
    return [groups[key] for key in sorted(groups)]

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

"""Weight transfer: the pretrained HPM encoder into MONAI's ``UNETR``, strictly, with position-embedding
interpolation when the fine-tuning crop differs from the pretraining crop.

Beside ``encoder.pt`` the pretraining bundle writes ``encoder.json``: the settings the encoder was pretrained with
(voxel spacing, intensity window, crop, patch and ViT sizes; the ``encoder_settings`` of both bundles'
``train.json``). Fine-tuning compares its own settings with them and names every difference.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from selfmedhpm.checkpoint import CheckpointError, load_weights
from selfmedhpm.ema import unwrap

__all__ = [
    "EncoderMismatchError",
    "describe_state_dict_mismatch",
    "encoder_settings_path",
    "encoder_state_dict",
    "pretraining_differences",
    "interpolate_pos_embed",
    "load_pretrained_encoder",
]

logger = logging.getLogger(__name__)
POS_KEY = "patch_embedding.position_embeddings"
VIT_KEYS = ("hidden_size", "mlp_dim", "num_heads", "patch_size")
"""Settings of ``encoder.json`` that fine-tuning must share: the ViT's shape."""


class EncoderMismatchError(CheckpointError):
    """A pretrained encoder that does not fit the network; the message lists what did not match."""


def _listing(title: str, items: list[str], limit: int = 20) -> list[str]:
    if not items:
        return []
    more = [f"    ... and {len(items) - limit} more"] if len(items) > limit else []
    return [f"  {title} ({len(items)}):"] + [f"    {s}" for s in items[:limit]] + more


def describe_state_dict_mismatch(
    expected: Mapping[str, Any], found: Mapping[str, Any], source: str, limit: int = 20
) -> str | None:
    """Describe how a loaded state dict differs from the model's; None when keys and shapes match exactly.

    Args:
        expected: key -> shape (e.g. ``torch.Size``) the model expects.
        found: key -> shape in the checkpoint.
        source: where ``found`` came from (a checkpoint path), named in the message.
        limit: entries listed per section before "... and N more".

    Examples:
        >>> print(describe_state_dict_mismatch({"w": (2, 3), "b": (2,)}, {"w": (2, 4), "x": (1,)}, "ckpt.pt"))
        state dict from ckpt.pt does not match the model: 1 missing, 1 unexpected, 1 shape mismatch
          missing keys (1):
            b
          unexpected keys (1):
            x
          shape mismatches (1):
            w: expected (2, 3) found (2, 4)
    """
    shape = lambda s: "(" + ", ".join(str(int(d)) for d in s) + ")"  # noqa: E731
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    mismatched = [
        f"{k}: expected {shape(expected[k])} found {shape(found[k])}"
        for k in expected
        if k in found and tuple(expected[k]) != tuple(found[k])
    ]
    if not (missing or unexpected or mismatched):
        return None
    counts = f"{len(missing)} missing, {len(unexpected)} unexpected, "
    counts += f"{len(mismatched)} shape mismatch" + ("" if len(mismatched) == 1 else "es")
    lines = [f"state dict from {source} does not match the model: {counts}"]
    lines += _listing("missing keys", missing, limit) + _listing("unexpected keys", unexpected, limit)
    return "\n".join(lines + _listing("shape mismatches", mismatched, limit))


def encoder_state_dict(network: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder of an :class:`~selfmedhpm.networks.HPMMaskedAutoEncoder` in the key layout of
    ``UNETR(...).vit`` (``patch_embedding.*``, ``blocks.i.*``, ``norm.*``), as plain CPU tensors."""
    return {k: v.detach().cpu().clone() for k, v in unwrap(network).encoder.state_dict().items()}


def encoder_settings_path(path: str | os.PathLike) -> Path:
    """Where the settings of the encoder file ``path`` are recorded: ``encoder.pt`` -> ``encoder.json``."""
    return Path(path).with_suffix(".json")


def _plain(value: Any) -> Any:
    """A setting in a comparable form: sequences as lists, numbers as floats (``[8, 8, 8]`` equals
    ``[8.0, 8.0, 8.0]``)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def pretraining_differences(recorded: Mapping[str, Any], settings: Mapping[str, Any]) -> list[str]:
    """The settings that differ between an encoder's pretraining (``recorded``) and a fine-tuning (``settings``),
    one line each; only the names both hold are compared.

    Args:
        recorded: the ``pretrained_with`` settings of an ``encoder.json``.
        settings: the fine-tuning's ``encoder_settings``.

    Examples:
        >>> pretraining_differences({"pixdim": [1.5, 1.5, 2.0], "a_min": -175}, {"pixdim": [5, 5, 5], "a_min": -175.0})
        ['pixdim: pretrained with [1.5, 1.5, 2.0], fine-tuned with [5, 5, 5]']
    """
    return [
        f"{name}: pretrained with {recorded[name]}, fine-tuned with {settings[name]}"
        for name in settings
        if name in recorded and _plain(recorded[name]) != _plain(settings[name])
    ]


def _check_pretraining_settings(path: str | os.PathLike, settings: Mapping[str, Any]) -> list[str]:
    """Logs how the fine-tuning's ``settings`` differ from those recorded beside the encoder file ``path``."""
    record = encoder_settings_path(path)
    if not record.is_file():  # a full pretraining model.pt: the encoder's record beside it
        record = record.with_name("encoder.json")
    if not record.is_file():
        logger.warning("%s: no record of the settings %s was pretrained with; they are not checked.", record, path)
        return []
    try:
        recorded = json.loads(record.read_text())["pretrained_with"]
        if not isinstance(recorded, Mapping):
            raise TypeError(f"pretrained_with is a {type(recorded).__name__}, not an object")
    except (ValueError, KeyError, TypeError) as error:
        raise EncoderMismatchError(f"{record}: not a record of pretraining settings ({error}).") from error
    vit_keys = [k for k in VIT_KEYS if k in recorded and k in settings and _plain(recorded[k]) != _plain(settings[k])]
    if vit_keys:
        add = " ".join(f"--{k} {recorded[k]}" for k in vit_keys)
        raise EncoderMismatchError(
            f"{path} was pretrained with a ViT of {', '.join(f'{k} {recorded[k]}' for k in vit_keys)} ({record}); "
            f"this fine-tuning builds {', '.join(f'{k} {settings[k]}' for k in vit_keys)}: add {add} (or "
            "configs/train_cpu.json, when the encoder comes from the pretraining's CPU preset)"
        )
    differences = pretraining_differences(recorded, settings)
    if differences:
        logger.warning(
            "%s was pretrained with other settings than this fine-tuning uses (%s):\n  %s\nThe encoder learned "
            "features at its pretraining spacing and intensity window; fine-tune with the same values (e.g. "
            "--pixdim, --a_min, --a_max) unless the difference is intended. Position embeddings of another crop "
            "are interpolated.",
            path,
            record,
            "\n  ".join(differences),
        )
    else:
        logger.info("%s: pretrained with the settings this fine-tuning uses (%s)", path, record)
    return differences


def interpolate_pos_embed(pos: torch.Tensor, new_grid: tuple[int, int, int]) -> torch.Tensor:
    """Trilinear resampling of ``[1, L, D]`` position embeddings from a cubic-or-not source grid to ``new_grid``.
    The source grid is inferred as the cube root of L when cubic.

    Examples::

        >>> interpolate_pos_embed(torch.rand(1, 27, 6), (4, 4, 2)).shape
        torch.Size([1, 32, 6])
    """
    length, width = pos.shape[1], pos.shape[2]
    side = round(length ** (1 / 3))
    if side**3 != length:
        raise EncoderMismatchError(f"cannot infer the grid of {length} position embeddings (not a cube).")
    grid = pos.reshape(1, side, side, side, width).permute(0, 4, 1, 2, 3).float()  # [1, D, g, g, g]
    grid = F.interpolate(grid, size=tuple(new_grid), mode="trilinear", align_corners=False)
    return grid.permute(0, 2, 3, 4, 1).reshape(1, -1, width).to(pos.dtype)


def load_pretrained_encoder(
    network: nn.Module,
    path: str | os.PathLike,
    vit_attr: str = "vit",
    settings: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Loads an encoder file (from the pretraining bundle's ``models/encoder.pt``) into ``network.vit`` strictly.

    Every ViT tensor must be in the file with the right shape, except that position embeddings of another grid are
    interpolated to the network's grid. A file holding a full pretraining model (``encoder.`` prefixed keys) is
    accepted too. Anything else raises :class:`EncoderMismatchError` listing the missing, unexpected and
    mismatched keys: a pretrained file is never silently ignored.

    Args:
        network: a ``UNETR`` (or a DDP wrapper of one).
        path: the encoder file; loaded with ``weights_only=True``.
        vit_attr: attribute of the ViT in ``network``. Defaults to "vit".
        settings: the fine-tuning's spacing, intensity window, crop and ViT sizes, compared with the ones recorded
            in ``encoder.json`` beside ``path``: other ViT sizes stop the run with one line naming the overrides to
            add, any other difference is logged as a warning. Defaults to no check.

    Returns:
        ``network``, for use in config expressions.
    """
    vit = getattr(unwrap(network), vit_attr)
    if settings is not None:
        _check_pretraining_settings(path, settings)
    state = load_weights(path)
    if not isinstance(state, Mapping):
        raise EncoderMismatchError(f"{path}: expected a state dict of tensors, found {type(state).__name__}.")
    if not any(k.startswith("patch_embedding.") for k in state) and any(k.startswith("encoder.") for k in state):
        state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    state = dict(state)
    expected = vit.state_dict()
    if POS_KEY in state and POS_KEY in expected and state[POS_KEY].shape != expected[POS_KEY].shape:
        old_shape = tuple(state[POS_KEY].shape)
        if old_shape[-1] == expected[POS_KEY].shape[-1]:
            grid = tuple(unwrap(network).feat_size)  # UNETR's token grid
            state[POS_KEY] = interpolate_pos_embed(state[POS_KEY], grid)
            logger.info("interpolated position embeddings %s -> %s", old_shape, tuple(state[POS_KEY].shape))
    problem = describe_state_dict_mismatch(
        {k: v.shape for k, v in expected.items()}, {k: getattr(v, "shape", None) for k, v in state.items()}, str(path)
    )
    if problem:
        raise EncoderMismatchError(problem)
    vit.load_state_dict(state, strict=True)
    logger.info("loaded pretrained encoder from %s (%d tensors)", path, len(state))
    return network

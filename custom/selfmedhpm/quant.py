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

"""An int8 shadow of the EMA teacher for HPM's teacher pass, for CPUs whose fast reduced precision is int8 (an
explicit option: ``--teacher_precision int8``; the default teacher pass runs in the student's precision).

HPM's teacher only *ranks* patches (which ones to mask); its pass over the full crop costs about as much as a whole
MAE iteration. Where the hardware has fast bf16 (GPUs, CPUs with AMX) the trainer's ``teacher_precision="bf16"``
does the job; many CPUs (AVX-512 without AMX) run bf16 matmuls no faster than fp32 but have AVX-512 VNNI int8 dot
products, about 4 times the fp32 rate. :class:`Int8Teacher` runs the teacher's linear layers as int8 x int8 -> int32
matmuls (``torch._int_mm``; symmetric per-channel weights, per-token dynamic activations), everything else
(patch embedding, LayerNorm, attention, GELU) in fp32. The fp32 EMA weights stay the teacher of record (EMA update,
checkpoints, export); the int8 copy is re-quantised from them every ``refresh_interval`` calls.

What it trades: the teacher pass about 1.7 times faster on such CPUs, for masks whose hard sets overlap the fp32
teacher's by about 98% (``make bench`` measures both), and that depend on the CPU (int8 kernels and rounding differ
between CPUs), which is why no config picks it by itself.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

__all__ = ["Int8Linear", "Int8Teacher"]


class Int8Linear(nn.Module):
    """Inference-only ``nn.Linear`` with int8 weights (symmetric, one scale per output channel) and int8
    activations quantised per token at run time; the int32 accumulator is rescaled to fp32 and the bias added.

    Args:
        linear: the float layer to quantise.

    Examples::

        >>> lin = nn.Linear(64, 32)
        >>> x = torch.randn(20, 64)
        >>> err = (Int8Linear(lin)(x) - lin(x)).abs().max() / lin(x).abs().max()
        >>> bool(err < 0.03)
        True
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", torch.empty(self.out_features, self.in_features, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.empty(self.out_features))
        self.register_buffer("bias", None if linear.bias is None else torch.empty(self.out_features))
        self.refresh(linear)

    @torch.no_grad()
    def refresh(self, linear: nn.Linear) -> None:
        """Re-quantises from ``linear``'s current weights (in place)."""
        weight = linear.weight.detach().float()  # [out, in]
        low, high = torch.aminmax(weight, dim=1)
        scale = torch.maximum(-low, high).clamp_min_(1e-12).div_(127.0)  # [out]
        self.weight_scale.copy_(scale)
        self.weight.copy_(torch.div(weight, scale[:, None]).round_())
        if self.bias is not None:
            self.bias.copy_(linear.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).float()
        x_scale = x2.abs().amax(dim=1, keepdim=True).clamp_min_(1e-12).div_(127.0)  # [M, 1]
        q = x2.div(x_scale).round_().to(torch.int8)
        y = torch._int_mm(q, self.weight.t()).float().mul_(x_scale)  # [M, out] from int32 accumulators
        y = y.mul_(self.weight_scale) if self.bias is None else torch.addcmul(self.bias, y, self.weight_scale)
        return y.view(*shape[:-1], self.out_features)


def _swap_linears(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.Linear) and min(child.in_features, child.out_features) >= 16:
            setattr(module, name, Int8Linear(child))
        else:
            _swap_linears(child)


class Int8Teacher:
    """Int8 copy of an :class:`~selfmedhpm.networks.HPMMaskedAutoEncoder` teacher for
    :meth:`~selfmedhpm.networks.HPMMaskedAutoEncoder.predict_patch_loss` only (the reconstructor is dropped).

    Args:
        source: the fp32 teacher (``EMATeacher.module``); it is read, never changed.
        refresh_interval: re-quantise from ``source`` every this many calls (1 = every call; None: only when
            :meth:`refresh` is called, as ``HPMTrainer`` does on its own schedule). The EMA teacher moves
            by ``1 - d`` (at most 1e-3) of the student-teacher gap per iteration, far below one int8 step, so a few
            iterations of staleness change nothing measurable; the benchmarks report the hard-patch overlap.

    Examples::

        >>> from selfmedhpm.networks import HPMMaskedAutoEncoder
        >>> net = HPMMaskedAutoEncoder(img_size=32, hidden_size=48, mlp_dim=96, num_heads=4, decoder_hidden_size=24,
        ...                            decoder_mlp_dim=48, decoder_num_layers=1, decoder_num_heads=4).eval()
        >>> Int8Teacher(net).predict_patch_loss(torch.rand(2, 1, 32, 32, 32)).shape
        torch.Size([2, 8])
    """

    def __init__(self, source: nn.Module, refresh_interval: int | None = 1) -> None:
        if refresh_interval is not None and refresh_interval < 1:
            raise ValueError(f"refresh_interval must be >= 1, got {refresh_interval}.")
        self.source = source
        self.refresh_interval = refresh_interval
        reconstructor = (source.decoder_blocks, source.decoder_norm, source.decoder_pred)
        memo = {id(m): m for m in reconstructor}  # deepcopy skips (shares) the unused reconstructor
        self.net = copy.deepcopy(source, memo).eval().requires_grad_(False)
        self.net.decoder_blocks, self.net.decoder_norm, self.net.decoder_pred = nn.ModuleList(), None, None
        for part in (self.net.encoder.blocks, self.net.predictor_blocks):
            _swap_linears(part)
        self.net.decoder_embed = Int8Linear(source.decoder_embed)
        self.calls = 0

    @torch.no_grad()
    def refresh(self) -> None:
        """Copies the fp32 teacher's current weights into the int8 copy (re-quantising the linear layers)."""
        source = dict(self.source.named_modules())
        for name, module in self.net.named_modules():
            if isinstance(module, Int8Linear):
                module.refresh(source[name])
        own = dict(self.net.named_parameters())
        own.update(dict(self.net.named_buffers()))
        for name, value in list(self.source.named_parameters()) + list(self.source.named_buffers()):
            if name in own and own[name].shape == value.shape and own[name].dtype == value.dtype:
                own[name].copy_(value)

    def predict_patch_loss(
        self, images: torch.Tensor, mask: torch.Tensor | None = None, num_masked: int | None = None
    ) -> torch.Tensor:
        """The teacher's predicted per-patch loss ``[N, L]`` (fp32), full view or masked pass as
        :meth:`~selfmedhpm.networks.HPMMaskedAutoEncoder.predict_patch_loss`, re-quantising first when due."""
        if self.refresh_interval and self.calls and self.calls % self.refresh_interval == 0:
            self.refresh()
        self.calls += 1
        with torch.inference_mode():
            return self.net.predict_patch_loss(images.float(), mask, num_masked).float()

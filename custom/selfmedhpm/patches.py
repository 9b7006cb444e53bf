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

"""Patch geometry shared by the network, the losses and the teacher views: volumes cut into the ViT's patches in its
token order, the inverse, the reconstruction targets and the per-patch reconstruction error."""

from __future__ import annotations

import torch

__all__ = ["patchify", "unpatchify", "patch_targets", "per_patch_loss"]


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Cuts ``[N, C, H, W, D]`` volumes into ``[N, L, p^3 * C]`` patches in the token order of MONAI's
    ``PatchEmbeddingBlock`` (conv projection, flattened H-major).

    Args:
        images: ``[N, C, H, W, D]`` with every spatial size divisible by ``patch_size``.
        patch_size: p, the cubic patch edge in voxels.

    Examples::

        >>> patchify(torch.zeros(2, 1, 32, 32, 16), 16).shape
        torch.Size([2, 4, 4096])
    """
    n, c, h, w, d = images.shape
    p = patch_size
    if h % p or w % p or d % p:
        raise ValueError(f"spatial size {(h, w, d)} must be divisible by patch_size {p}.")
    x = images.reshape(n, c, h // p, p, w // p, p, d // p, p)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # [N, gh, gw, gd, p, p, p, C]
    return x.reshape(n, (h // p) * (w // p) * (d // p), p**3 * c)


def unpatchify(patches: torch.Tensor, grid: tuple[int, int, int], patch_size: int, channels: int = 1) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``[N, L, p^3 * C]`` -> ``[N, C, H, W, D]``.

    Args:
        patches: ``[N, L, p^3 * C]`` with ``L = prod(grid)``.
        grid: patches per axis ``(gh, gw, gd)``.
        patch_size: p.
        channels: C.

    Examples::

        >>> x = torch.rand(1, 1, 32, 32, 16)
        >>> torch.equal(unpatchify(patchify(x, 16), (2, 2, 1), 16), x)
        True
    """
    n = patches.shape[0]
    gh, gw, gd = grid
    p = patch_size
    x = patches.reshape(n, gh, gw, gd, p, p, p, channels)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # [N, C, gh, p, gw, p, gd, p]
    return x.reshape(n, channels, gh * p, gw * p, gd * p)


def patch_targets(images: torch.Tensor, patch_size: int, normalize: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """Reconstruction targets ``[N, L, p^3 * C]``: raw voxels, or per-patch normalised (SelfMedMAE's choice).

    Args:
        images: ``[N, C, H, W, D]``.
        patch_size: p.
        normalize: subtract each patch's mean and divide by its standard deviation.
        eps: added to the variance.
    """
    target = patchify(images.float(), patch_size)
    if normalize:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True, unbiased=False)
        target = (target - mean) / (var + eps).sqrt()
    return target


def per_patch_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per patch: ``[N, L, P]`` x2 -> ``[N, L]``.

    Examples::

        >>> per_patch_loss(torch.ones(1, 2, 4), torch.tensor([[[1.0] * 4, [3.0] * 4]])).tolist()
        [[0.0, 4.0]]
    """
    return (reconstruction.float() - target).pow(2).mean(dim=-1)

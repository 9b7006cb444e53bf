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

"""The HPM masked autoencoder: a 3D ViT encoder in the key layout of MONAI's ``UNETR.vit`` and two heads.

Reference: Wang et al., "Hard Patches Mining for Masked Image Modeling", CVPR 2023 (arXiv 2304.05919), applied to
3D CT as in SelfMedHPM (Lv et al., arXiv 2504.02524) and SelfMedMAE (Zhou et al., arXiv 2203.05573).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from monai.networks.blocks.patchembedding import PatchEmbeddingBlock
from monai.networks.blocks.pos_embed_utils import build_sincos_position_embedding
from monai.networks.blocks.transformerblock import TransformerBlock
from monai.networks.layers import trunc_normal_
from monai.utils import ensure_tuple_rep
from selfmedhpm.masking import mask_indices
from selfmedhpm.patches import patchify, unpatchify

__all__ = ["HPMEncoder", "HPMMaskedAutoEncoder", "PatchLossMap", "freeze_cross_attn_norms"]


def freeze_cross_attn_norms(network: nn.Module) -> nn.Module:
    """Freezes the ``norm_cross_attn`` LayerNorms that MONAI's ``TransformerBlock`` builds even without
    cross-attention (as in ``UNETR.vit``): their keys stay in the ``state_dict``, but they never get a gradient,
    which ``DistributedDataParallel`` would otherwise report as unused parameters at the second iteration.

    Args:
        network: any module (changed in place and returned).

    Examples::

        >>> from monai.networks.nets import UNETR
        >>> net = freeze_cross_attn_norms(UNETR(1, 3, img_size=32, feature_size=8, hidden_size=48, mlp_dim=96,
        ...                                     num_heads=4))
        >>> net.vit.blocks[0].norm_cross_attn.weight.requires_grad, net.vit.blocks[0].norm1.weight.requires_grad
        (False, True)
    """
    for block in network.modules():
        if isinstance(block, TransformerBlock) and not block.with_cross_attention:
            block.norm_cross_attn.requires_grad_(False)
    return network


def _blocks(depth: int, hidden_size: int, mlp_dim: int, num_heads: int, qkv_bias: bool) -> nn.ModuleList:
    blocks = nn.ModuleList(
        TransformerBlock(hidden_size, mlp_dim, num_heads, qkv_bias=qkv_bias, use_flash_attention=True)
        for _ in range(depth)
    )
    return freeze_cross_attn_norms(blocks)


class HPMEncoder(nn.Module):
    """ViT encoder whose ``state_dict`` has exactly the keys of ``monai.networks.nets.UNETR(...).vit``
    (``patch_embedding.*``, ``blocks.i.*``, ``norm.*``), and which encodes only the visible patches.

    Args:
        in_channels: input channels. Defaults to 1.
        img_size: crop size. Defaults to 96.
        patch_size: patch edge; UNETR requires 16. Defaults to 16.
        hidden_size: token width. Defaults to 768 (ViT-B).
        mlp_dim: MLP width. Defaults to 3072.
        num_layers: transformer blocks; UNETR requires 12. Defaults to 12.
        num_heads: attention heads. Defaults to 12.
        qkv_bias: bias in the qkv projection (UNETR's default is False). Defaults to False.

    Examples::

        >>> enc = HPMEncoder(img_size=32, hidden_size=48, mlp_dim=96, num_heads=4)
        >>> enc(torch.rand(2, 1, 32, 32, 32), torch.tensor([[0, 5], [3, 4]])).shape
        torch.Size([2, 2, 48])
    """

    def __init__(
        self,
        in_channels: int = 1,
        img_size: Sequence[int] | int = 96,
        patch_size: int = 16,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
        qkv_bias: bool = False,
    ) -> None:
        super().__init__()
        self.img_size = ensure_tuple_rep(img_size, 3)
        if any(s % patch_size for s in self.img_size):
            raise ValueError(f"img_size {self.img_size} must be divisible by patch_size {patch_size}.")
        self.patch_embedding = PatchEmbeddingBlock(
            in_channels, self.img_size, patch_size, hidden_size, num_heads, proj_type="conv", pos_embed_type="sincos"
        )
        self.blocks = _blocks(num_layers, hidden_size, mlp_dim, num_heads, qkv_bias)
        self.norm = nn.LayerNorm(hidden_size)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding ``[N, C, H, W, D]`` -> ``[N, L, hidden]`` with position embeddings added: the weights of
        ``patch_embedding`` (a strided Conv3d) applied as one matrix product on the patchified input, which is the
        same function (a convolution whose stride equals its kernel) but runs as a plain GEMM, with tensor cores on
        GPUs, where cuDNN's strided 3D convolution does not."""
        block = self.patch_embedding
        conv = block.patch_embeddings
        weight = conv.weight.permute(0, 2, 3, 4, 1).reshape(
            conv.out_channels, -1
        )  # [hidden, p^3 * C], patchify's order
        tokens = nn.functional.linear(patchify(x, conv.kernel_size[0]), weight, conv.bias)  # [N, L, hidden]
        return block.dropout(tokens + block.position_embeddings)

    def forward(
        self, x: torch.Tensor, visible: torch.Tensor | None = None, cls_token: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Encodes ``x`` ``[N, C, H, W, D]``; ``visible`` ``[N, L_vis]`` (patch indices, from
        :func:`~selfmedhpm.masking.mask_indices`) keeps only those patches, None keeps all. A ``cls_token``
        ``[1, 1, hidden]`` is prepended when given. Returns ``[N, (1 +) L_vis, hidden]``."""
        tokens = self.embed(x)  # [N, L, hidden]
        n, _, width = tokens.shape
        if visible is not None:  # a gather of static shape: [N, L_vis, hidden]
            tokens = tokens.gather(1, visible[..., None].expand(-1, -1, width))
        if cls_token is not None:
            tokens = torch.cat([cls_token.to(tokens.dtype).expand(n, -1, -1), tokens], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)


class HPMMaskedAutoEncoder(nn.Module):
    """Masked autoencoder with a loss predictor (HPM) for 3D volumes.

    A shared decoder stem (linear to the decoder width, learned mask token, fixed sin-cos positions) feeds two
    heads of the same shape: the reconstructor (blocks, LayerNorm, linear to ``p^3 * C`` voxels per patch) and the
    loss predictor (blocks, LayerNorm, linear to one scalar per patch). The loss predictor is not detached from the
    encoder. Convention: masks are ``[N, L]`` bool, True = masked.

    Args:
        in_channels: input channels. Defaults to 1.
        img_size: crop size. Defaults to 96.
        patch_size: patch edge. Defaults to 16.
        hidden_size: encoder width. Defaults to 768.
        mlp_dim: encoder MLP width. Defaults to 3072.
        num_layers: encoder blocks. Defaults to 12.
        num_heads: encoder heads. Defaults to 12.
        decoder_hidden_size: decoder width. Defaults to 384 (SelfMedMAE).
        decoder_mlp_dim: decoder MLP width. Defaults to 1536.
        decoder_num_layers: blocks of each head. Defaults to 8.
        decoder_num_heads: decoder heads. Defaults to 12.
        qkv_bias: bias in the qkv projections. Defaults to False (UNETR's layout).

    Examples::

        >>> net = HPMMaskedAutoEncoder(img_size=32, hidden_size=48, mlp_dim=96, num_heads=4,
        ...                            decoder_hidden_size=24, decoder_mlp_dim=48, decoder_num_layers=1,
        ...                            decoder_num_heads=4)
        >>> mask = torch.zeros(2, 8, dtype=torch.bool)
        >>> mask[:, :6] = True
        >>> rec, pred = net(torch.rand(2, 1, 32, 32, 32), mask)
        >>> rec.shape, pred.shape, net.predict_patch_loss(torch.rand(2, 1, 32, 32, 32)).shape
        (torch.Size([2, 8, 4096]), torch.Size([2, 8]), torch.Size([2, 8]))
    """

    def __init__(
        self,
        in_channels: int = 1,
        img_size: Sequence[int] | int = 96,
        patch_size: int = 16,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_layers: int = 12,
        num_heads: int = 12,
        decoder_hidden_size: int = 384,
        decoder_mlp_dim: int = 1536,
        decoder_num_layers: int = 8,
        decoder_num_heads: int = 12,
        qkv_bias: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.encoder = HPMEncoder(
            in_channels, img_size, patch_size, hidden_size, mlp_dim, num_layers, num_heads, qkv_bias
        )
        self.img_size = self.encoder.img_size
        self.grid = tuple(s // patch_size for s in self.img_size)
        self.num_patches = self.grid[0] * self.grid[1] * self.grid[2]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))

        self.decoder_embed = nn.Linear(hidden_size, decoder_hidden_size)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_hidden_size))
        pos = build_sincos_position_embedding(list(self.grid), decoder_hidden_size, 3)  # [1, L, Dd], frozen
        self.decoder_pos_embed = nn.Parameter(
            torch.cat([torch.zeros(1, 1, decoder_hidden_size), pos.data], dim=1), requires_grad=False
        )  # [1, 1 + L, Dd], the CLS position is zero

        def head(out_features: int) -> tuple[nn.ModuleList, nn.LayerNorm, nn.Linear]:
            blocks = _blocks(decoder_num_layers, decoder_hidden_size, decoder_mlp_dim, decoder_num_heads, qkv_bias)
            return blocks, nn.LayerNorm(decoder_hidden_size), nn.Linear(decoder_hidden_size, out_features)

        self.decoder_blocks, self.decoder_norm, self.decoder_pred = head(patch_size**3 * in_channels)
        self.predictor_blocks, self.predictor_norm, self.predictor_head = head(1)

        trunc_normal_(self.cls_token, mean=0.0, std=0.02, a=-2.0, b=2.0)
        trunc_normal_(self.mask_token, mean=0.0, std=0.02, a=-2.0, b=2.0)
        for module in (self.decoder_embed, self.decoder_pred, self.predictor_head):
            trunc_normal_(module.weight, mean=0.0, std=0.02, a=-2.0, b=2.0)
            nn.init.zeros_(module.bias)

    def decoder_tokens(self, latent: torch.Tensor, restore: torch.Tensor | None) -> torch.Tensor:
        """Shared decoder stem: ``[N, 1 + L_vis, hidden]`` -> ``[N, 1 + L, Dd]``, mask tokens appended after the
        visible tokens and ``restore`` ``[N, L]`` (from :func:`~selfmedhpm.masking.mask_indices`) putting them in
        patch order; None when all patches are visible. Kept in the latent's dtype, so the stem runs under
        autocast."""
        x = self.decoder_embed(latent)  # [N, 1 + L_vis, Dd]
        n, visible_plus_cls, width = x.shape
        if restore is not None:
            masked = self.mask_token.to(x.dtype).expand(n, self.num_patches + 1 - visible_plus_cls, width)
            full = torch.cat([x[:, 1:], masked], dim=1).gather(1, restore[..., None].expand(-1, -1, width))
            x = torch.cat([x[:, :1], full], dim=1)  # [N, 1 + L, Dd]
        return x + self.decoder_pos_embed.to(x.dtype)

    @staticmethod
    def _run_head(x: torch.Tensor, blocks: nn.ModuleList, norm: nn.LayerNorm, out: nn.Linear) -> torch.Tensor:
        for block in blocks:
            x = block(x)
        return out(norm(x))[:, 1:]  # drop CLS: [N, L, out]

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstructor head on decoder tokens: ``[N, 1 + L, Dd]`` -> ``[N, L, p^3 * C]``."""
        return self._run_head(x, self.decoder_blocks, self.decoder_norm, self.decoder_pred)

    def predict_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Loss-predictor head on decoder tokens: ``[N, 1 + L, Dd]`` -> ``[N, L]``."""
        return self._run_head(x, self.predictor_blocks, self.predictor_norm, self.predictor_head)[..., 0]

    def tokens(self, x: torch.Tensor, mask: torch.Tensor | None = None, num_masked: int | None = None) -> torch.Tensor:
        """Encoder and shared decoder stem: ``x`` ``[N, C, H, W, D]`` -> decoder tokens ``[N, 1 + L, Dd]``, which
        both heads take. ``mask`` ``[N, L]`` with ``num_masked`` True in every row (passed, so that every shape is
        known without reading the mask: no host synchronisation, and a compiled step has static shapes; None counts
        the first row); ``mask=None`` encodes every patch (the full view)."""
        if mask is None:
            return self.decoder_tokens(self.encoder(x, None, self.cls_token), None)
        visible, _, restore = mask_indices(mask, num_masked)
        return self.decoder_tokens(self.encoder(x, visible, self.cls_token), restore)

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, num_masked: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Student pass. ``x`` ``[N, C, H, W, D]``, ``mask`` ``[N, L]`` with ``num_masked`` True in every row (see
        :meth:`tokens`). Returns the reconstruction ``[N, L, p^3 * C]`` and the predicted per-patch loss ``[N, L]``."""
        tokens = self.tokens(x, mask, num_masked)
        return self.reconstruct(tokens), self.predict_loss(tokens)

    def predict_patch_loss(
        self, x: torch.Tensor, mask: torch.Tensor | None = None, num_masked: int | None = None
    ) -> torch.Tensor:
        """Teacher pass: encoder + stem + loss predictor, no reconstructor. Without ``mask``, on the full, unmasked
        crop (HPM's teacher view); with one, on the visible patches, as the student sees them in training (the
        outputs at the masked patches are the ones the ranking loss trains). Returns ``[N, L]``."""
        return self.predict_loss(self.tokens(x, mask, num_masked))

    def reconstruct_patches(self, x: torch.Tensor, mask: torch.Tensor, num_masked: int | None = None) -> torch.Tensor:
        """Reconstructor alone on a masked pass (no loss predictor): ``[N, L, p^3 * C]``."""
        return self.reconstruct(self.tokens(x, mask, num_masked))

    def reconstruct_volume(
        self, x: torch.Tensor, mask: torch.Tensor, paste_visible: bool = True, norm_pix_loss: bool = True
    ) -> torch.Tensor:
        """Reconstruction as a volume ``[N, C, H, W, D]``; visible patches are pasted from the input. With
        ``norm_pix_loss`` (the network was trained on per-patch normalised targets) each reconstructed patch is
        mapped back to that patch's intensity statistics, taken from the input; without it the output is voxels."""
        rec, _ = self.forward(x, mask)
        original = patchify(x.float(), self.patch_size)
        rec = rec.float()
        if norm_pix_loss:
            mean, std = original.mean(-1, keepdim=True), original.std(-1, keepdim=True, unbiased=False)
            rec = rec * (std + 1e-6) + mean
        if paste_visible:
            rec = torch.where(mask[..., None], rec, original)
        return unpatchify(rec, self.grid, self.patch_size, self.in_channels)


class PatchLossMap(nn.Module):
    """Inference wrapper: the predicted per-patch loss as a voxel map, one tensor out (for sliding windows,
    ``verify_net_in_out`` and TorchScript).

    Args:
        net: an :class:`HPMMaskedAutoEncoder` (typically the EMA teacher's weights).

    Examples::

        >>> net = HPMMaskedAutoEncoder(img_size=32, hidden_size=48, mlp_dim=96, num_heads=4,
        ...                            decoder_hidden_size=24, decoder_mlp_dim=48, decoder_num_layers=1,
        ...                            decoder_num_heads=4)
        >>> PatchLossMap(net)(torch.rand(1, 1, 32, 32, 32)).shape
        torch.Size([1, 1, 32, 32, 32])
    """

    def __init__(self, net: HPMMaskedAutoEncoder) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.net.patch_size
        scores = self.net.predict_patch_loss(x)  # [N, L]
        grid = self.net.grid
        volume = scores.reshape(x.shape[0], 1, *grid)  # [N, 1, gh, gw, gd]
        return volume.repeat_interleave(p, 2).repeat_interleave(p, 3).repeat_interleave(p, 4)

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

"""The teacher's view: what the EMA teacher sees when it scores the patches that choose the next mask.

- ``"full"``: the whole crop, nothing masked; the loss predictor's output for every patch (the HPM paper and its
  official code). The predictor is trained only at masked slots, so this scores patches in a view it never trained
  in (the "input mismatch" of HPM's issue 1).
- ``"masked"``: R random masked passes at the training mask ratio, complementary (their visible sets do not overlap,
  so every patch is masked in R - 1 of them or more; EMAE's complementary masks, arXiv 2302.14431). A patch's score
  is the loss predictor's output where it was masked, standardised within each pass (the ranking loss fixes the order
  of a pass's masked patches, not their offset or scale), averaged over those passes.
- ``"reconstruction"``: AnatoMask's (ECCV 2024): the teacher's real per-patch reconstruction loss in one random masked
  pass; visible patches score below every masked one, so the hard patches come from that pass's masked set.

The random part (:meth:`TeacherView.draw`) is kept apart from the network passes (:meth:`TeacherView.scores`), so the
passes have static shapes and compile, and the full view draws nothing: its masks are those of earlier releases.
Convention: masks are bool, True = masked.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from selfmedhpm.masking import num_masked as masked_count
from selfmedhpm.patches import patch_targets, per_patch_loss

__all__ = ["TEACHER_VIEWS", "masked_mean", "standardise_masked", "complementary_masks", "TeacherView"]

TEACHER_VIEWS = ("full", "masked", "reconstruction")
VISIBLE_SCORE = -1.0  # the reconstruction view's score of a visible patch: below any squared error


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` ``[..., L]`` over the masked entries of each row: ``[...]`` (0 for a row with none masked).

    Examples::

        >>> masked_mean(torch.tensor([[1.0, 2.0, 9.0]]), torch.tensor([[True, True, False]]))
        tensor([1.5000])
    """
    return torch.where(mask, values, 0.0).sum(-1) / mask.sum(-1).clamp(min=1)


def standardise_masked(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Z-scores of ``values`` ``[..., L]`` over the masked entries of each row (sample standard deviation); 0 where a
    row's masked values are all equal and at the unmasked entries.

    Examples::

        >>> standardise_masked(torch.tensor([[0.0, 0.0, 3.0, 9.0]]), torch.tensor([[True, True, True, False]]))
        tensor([[-0.5774, -0.5774,  1.1547,  0.0000]])
    """
    values = values.float()
    count = mask.sum(-1, keepdim=True)
    mean = masked_mean(values, mask)[..., None]
    var = masked_mean((values - mean).pow(2), mask)[..., None] * count / (count - 1).clamp(min=1)
    std = var.sqrt()
    z = torch.where(std > 0, (values - mean) / std.clamp(min=1e-12), 0.0)
    return torch.where(mask, z, 0.0)


def complementary_masks(
    batch: int,
    num_patches: int,
    num_masked: int,
    passes: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``passes`` masks per image whose visible sets tile a random permutation of the patches: pass r shows patches
    ``perm[r * V : (r + 1) * V]`` (cyclically, ``V = L - K``), so the visible sets do not overlap while
    ``R * V <= L``, and every patch is masked in at least one pass.

    Args:
        batch: N, images.
        num_patches: L.
        num_masked: K, masked patches per pass.
        passes: R >= 2.
        generator: random source (on ``device``).
        device: device of the masks.

    Returns:
        ``[R, N, L]`` bool, ``K`` True in every row.

    Raises:
        ValueError: ``passes`` below 2, or too few masked patches for every patch to be masked once
            (``R * (L - K) > (R - 1) * L``).

    Examples::

        >>> masks = complementary_masks(2, 8, 6, 4, torch.Generator().manual_seed(0))
        >>> masks.shape, masks.sum(-1).tolist(), (~masks).sum(0).tolist()  # each patch visible once
        (torch.Size([4, 2, 8]), [[6, 6], [6, 6], [6, 6], [6, 6]], [[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1]])
    """
    visible = num_patches - num_masked
    if passes < 2:
        raise ValueError(f"teacher_passes must be >= 2 for complementary masked passes, got {passes}.")
    if passes * visible > (passes - 1) * num_patches:
        raise ValueError(
            f"{passes} passes of {num_masked} masked patches of {num_patches} cannot mask every patch once: "
            f"raise the mask ratio or lower teacher_passes (at most {num_patches // max(visible, 1)})."
        )
    order = torch.rand(batch, num_patches, generator=generator, device=device).argsort(dim=1)  # [N, L]
    slots = torch.arange(passes, device=device)[:, None] * visible + torch.arange(visible, device=device)  # [R, V]
    shown = order[:, slots % num_patches].transpose(0, 1)  # [R, N, V] patch indices
    masks = torch.ones(passes, batch, num_patches, dtype=torch.bool, device=device)
    return masks.scatter_(2, shown, False)


class TeacherView:
    """How the EMA teacher scores the patches of a batch for the next mask (see the module's docstring).

    Args:
        view: ``"full"``, ``"masked"`` or ``"reconstruction"``.
        mask_ratio: gamma of the masked passes (the training mask ratio). Defaults to 0.75.
        passes: R, masked passes of the ``"masked"`` view. Defaults to 4.
        norm_pix_loss: the reconstruction targets of the ``"reconstruction"`` view, as in training.

    Examples::

        >>> from selfmedhpm.networks import HPMMaskedAutoEncoder
        >>> net = HPMMaskedAutoEncoder(img_size=32, hidden_size=48, mlp_dim=96, num_heads=4, decoder_hidden_size=24,
        ...                            decoder_mlp_dim=48, decoder_num_layers=1, decoder_num_heads=4).eval()
        >>> images, generator = torch.rand(2, 1, 32, 32, 32), torch.Generator().manual_seed(0)
        >>> [tuple(TeacherView(v)(net, images, generator).shape) for v in TEACHER_VIEWS]
        [(2, 8), (2, 8), (2, 8)]
        >>> scores = TeacherView("reconstruction")(net, images, generator)
        >>> (scores == -1.0).sum(1).tolist()  # the visible patches of its one pass (2 of 8)
        [2, 2]
    """

    def __init__(self, view: str = "full", mask_ratio: float = 0.75, passes: int = 4, norm_pix_loss: bool = True):
        if view not in TEACHER_VIEWS:
            raise ValueError(f"teacher_view must be one of {list(TEACHER_VIEWS)}, got {view!r}.")
        self.view, self.mask_ratio, self.passes, self.norm_pix_loss = view, mask_ratio, int(passes), norm_pix_loss
        if view == "masked" and self.passes < 2:
            raise ValueError(f"teacher_passes must be >= 2 for complementary masked passes, got {passes}.")

    def __repr__(self) -> str:
        extra = f", passes={self.passes}" if self.view == "masked" else ""
        return f"TeacherView({self.view!r}, mask_ratio={self.mask_ratio}{extra})"

    def draw(
        self,
        batch: int,
        num_patches: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor | None:
        """The random masks of the view's passes: None (``"full"``: nothing drawn), ``[R, N, L]`` complementary masks
        (``"masked"``) or one random mask ``[1, N, L]`` (``"reconstruction"``)."""
        if self.view == "full":
            return None
        k = masked_count(num_patches, self.mask_ratio)
        if self.view == "masked":
            return complementary_masks(batch, num_patches, k, self.passes, generator, device)
        priority = torch.rand(batch, num_patches, generator=generator, device=device)  # [N, L]
        chosen = priority.topk(k, dim=1).indices
        return torch.zeros(1, batch, num_patches, dtype=torch.bool, device=device).scatter_(2, chosen[None], True)

    def scores(self, net: nn.Module, images: torch.Tensor, masks: torch.Tensor | None) -> torch.Tensor:
        """Per-patch scores ``[N, L]`` (higher: harder) of ``images`` ``[N, C, H, W, D]`` for the ``masks`` of
        :meth:`draw`. ``net``: an :class:`~selfmedhpm.networks.HPMMaskedAutoEncoder` (or its int8 shadow, which has
        no reconstructor) in eval mode; call under ``torch.no_grad`` / ``inference_mode``. Every shape is static."""
        if masks is None:
            return net.predict_patch_loss(images).float()  # [N, L]
        passes, n, length = masks.shape
        k = masked_count(length, self.mask_ratio)
        if self.view == "reconstruction":
            reconstruction = net.reconstruct_patches(images, masks[0], k)  # [N, L, P]
            loss = per_patch_loss(reconstruction, patch_targets(images, net.patch_size, self.norm_pix_loss))
            return torch.where(masks[0], loss, VISIBLE_SCORE)
        stacked = images.repeat(passes, *([1] * (images.ndim - 1)))  # [R * N, C, H, W, D], pass-major
        predicted = net.predict_patch_loss(stacked, masks.reshape(passes * n, length), k).float()
        z = standardise_masked(predicted.reshape(passes, n, length), masks)  # [R, N, L]
        return z.sum(0) / masks.sum(0).clamp(min=1)

    @torch.no_grad()
    def __call__(self, net: nn.Module, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """:meth:`draw` then :meth:`scores`: ``[N, L]``."""
        masks = self.draw(images.shape[0], _num_patches(net), generator, images.device)
        return self.scores(net, images, masks)


def _num_patches(net: nn.Module) -> int:
    return getattr(net, "num_patches", None) or net.net.num_patches  # the int8 shadow keeps the network as .net

"""Modules over the ops: drop-in replacements for transformers' modules.

    from interleave.nn import FusedSiglipPatchEmbedding
    vision_model.embeddings = FusedSiglipPatchEmbedding.from_hf(vision_model.embeddings)
    embeddings = vision_model.embeddings(tiles_uint8)      # [N, S, S, 3] uint8, as anyres_tiles writes
    embeddings = vision_model.embeddings(pixel_values)     # or HF's normalized [N, 3, S, S] float
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from . import reference
from .ops.patch_embed import patch_embed


class FusedSiglipPatchEmbedding(nn.Module):
    """transformers' SiglipVisionEmbeddings (Conv2d patch embedding + learned position embedding)
    computed by interleave.ops.patch_embed: same parameters and state-dict keys
    (`patch_embedding.weight`, `patch_embedding.bias`, `position_embedding.weight`; the
    non-persistent `position_ids` buffer too), same output [N, T, C] in the weight's dtype.

    forward() also accepts uint8 tiles [N, S, S, 3]; they are normalized with `image_mean` /
    `image_std` (the image processor's, SigLIP's 0.5 / 0.5 by default) folded into the weights.
    """

    def __init__(self, hidden_size: int = 1152, patch_size: int = 14, image_size: int = 384,
                 num_channels: int = 3, image_mean: Sequence[float] = reference.SIGLIP_MEAN,
                 image_std: Sequence[float] = reference.SIGLIP_STD, device=None, dtype=None):
        super().__init__()
        self.embed_dim = hidden_size
        self.image_size = image_size
        self.patch_size = patch_size
        self.patch_embedding = nn.Conv2d(num_channels, hidden_size, kernel_size=patch_size,
                                         stride=patch_size, padding="valid", device=device, dtype=dtype)
        self.num_patches = (image_size // patch_size) ** 2
        self.num_positions = self.num_patches
        self.position_embedding = nn.Embedding(self.num_positions, hidden_size, device=device, dtype=dtype)
        self.register_buffer("position_ids", torch.arange(self.num_positions, device=device).expand((1, -1)),
                             persistent=False)
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)

    @classmethod
    def from_config(cls, config, image_mean: Sequence[float] = reference.SIGLIP_MEAN,
                    image_std: Sequence[float] = reference.SIGLIP_STD, device=None, dtype=None):
        """From a transformers SiglipVisionConfig (hidden_size, patch_size, image_size, num_channels)."""
        return cls(config.hidden_size, config.patch_size, config.image_size, config.num_channels,
                   image_mean, image_std, device=device, dtype=dtype)

    @classmethod
    def from_hf(cls, module: nn.Module, image_mean: Optional[Sequence[float]] = None,
                image_std: Optional[Sequence[float]] = None) -> "FusedSiglipPatchEmbedding":
        """Wraps a transformers SiglipVisionEmbeddings, sharing its parameters (no copy: training
        either module trains both). mean/std: of the image processor that makes the uint8 tiles'
        pixel_values (SigLIP's 0.5 by default)."""
        conv = module.patch_embedding
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        new.embed_dim = conv.out_channels
        new.patch_size = conv.kernel_size[0]
        new.num_patches = new.num_positions = module.position_embedding.num_embeddings
        new.image_size = getattr(module, "image_size", None)
        new.patch_embedding = conv
        new.position_embedding = module.position_embedding
        new.register_buffer("position_ids", getattr(module, "position_ids", torch.arange(
            new.num_positions, device=conv.weight.device).expand((1, -1))), persistent=False)
        new.image_mean = tuple(float(v) for v in (image_mean or reference.SIGLIP_MEAN))
        new.image_std = tuple(float(v) for v in (image_std or reference.SIGLIP_STD))
        if conv.kernel_size[0] != conv.kernel_size[1] or conv.stride != conv.kernel_size or conv.bias is None:
            raise ValueError(f"FusedSiglipPatchEmbedding.from_hf: expected a square Conv2d with stride == "
                             f"kernel and a bias, got {conv}")
        return new

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        if interpolate_pos_encoding:
            raise NotImplementedError("FusedSiglipPatchEmbedding: interpolate_pos_encoding is not supported "
                                      "(LLaVA-NeXT-Interleave never interpolates; use transformers' module)")
        return patch_embed(pixel_values, self.patch_embedding.weight, self.patch_embedding.bias,
                           self.position_embedding.weight, self.image_mean, self.image_std)

    def extra_repr(self) -> str:
        return f"image_mean={self.image_mean}, image_std={self.image_std}"

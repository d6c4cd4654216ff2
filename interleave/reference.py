"""Pure-PyTorch references: the semantics every kernel must match, written as transformers does.

Each function cites the code it mirrors. They are also the fallback when the compiled extension is
unavailable, so they check their arguments as the ops do.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def placeholder_mask(input_ids: torch.Tensor, image_token_ids: Sequence[int]) -> torch.Tensor:
    """`input_ids == config.image_token_id` (transformers LlavaModel.get_placeholder_mask), for one
    or several placeholder ids (image and video)."""
    mask = input_ids == image_token_ids[0]
    for token_id in image_token_ids[1:]:
        mask = mask | (input_ids == token_id)
    return mask


def merge_tokens(input_ids: torch.Tensor, embed_weight: torch.Tensor, visual: torch.Tensor,
                 image_token_ids: Sequence[int], padding_idx: int | None = None) -> torch.Tensor:
    """transformers LlavaModel.forward: `inputs_embeds = embed_tokens(input_ids)`, then
    `get_placeholder_mask` (count check) and `inputs_embeds.masked_scatter(mask, image_features)`
    with the features cast to the embedding dtype.

    Placeholder ids at or past the end of the table (some configs) are looked up as row 0, whose
    value the scatter overwrites; the gradient of row 0 is unchanged by it.
    """
    image_token_ids = list(image_token_ids)
    mask = placeholder_mask(input_ids, image_token_ids)
    lookup = input_ids
    if max(image_token_ids) >= embed_weight.shape[0]:
        lookup = input_ids.masked_fill(mask, 0)
    inputs_embeds = F.embedding(lookup, embed_weight, padding_idx)
    n_tokens = mask.sum()
    # transformers' torch_compilable_check: a tracing hint under torch.compile, a sync otherwise.
    if torch.compiler.is_compiling():
        torch._check_tensor_all(n_tokens == visual.shape[0])
    elif int(n_tokens) != visual.shape[0]:
        raise ValueError(f"merge_tokens: input_ids holds {int(n_tokens)} placeholder tokens but "
                         f"visual has {visual.shape[0]} rows; they must be equal")
    mask = mask.unsqueeze(-1).expand_as(inputs_embeds)
    return inputs_embeds.masked_scatter(mask, visual.to(inputs_embeds.dtype))


def merge_tokens_index_put(input_ids: torch.Tensor, embed_weight: torch.Tensor,
                           visual: torch.Tensor, image_token_ids: Sequence[int]) -> torch.Tensor:
    """The best plain-PyTorch version we know (benchmark baseline, not a semantic reference): one
    embedding output, then the visual rows written in place at the placeholder positions."""
    mask = placeholder_mask(input_ids, list(image_token_ids))
    inputs_embeds = F.embedding(input_ids.masked_fill(mask, 0), embed_weight)
    inputs_embeds[mask] = visual.to(inputs_embeds.dtype)
    return inputs_embeds


def anyres_tiles(images, plans, tile: int = 384) -> torch.Tensor:
    """Tiles as transformers' PIL image processors make them (LlavaNext/LlavaOnevision
    get_image_patches, pad_to_square), with Pillow itself: base = Image.resize((tile, tile),
    BICUBIC) of the image (of its padded square in `pad` mode); grid = the image resized to the
    plan's size, pasted centred on a canvas of the pad value, cut into tiles row-major.
    images: uint8 [H, W, 3] CPU tensors; plans: interleave.plan.ImagePlan per image."""
    import numpy as np
    from PIL import Image

    out = []
    for image, p in zip(images, plans):
        pil = Image.fromarray(image.numpy(), "RGB")
        source = pil
        if p.mode == "pad":
            source = Image.new("RGB", (p.canvas[1], p.canvas[0]), tuple(p.pad_value))
            source.paste(pil, (p.padding[2], p.padding[0]))
        out.append(np.asarray(source.resize((tile, tile), Image.BICUBIC)))
        if p.grid != (0, 0):
            resized = pil.resize((p.resized[1], p.resized[0]), Image.BICUBIC)
            canvas = Image.new("RGB", (p.canvas[1], p.canvas[0]), tuple(p.pad_value))
            canvas.paste(resized, (p.padding[2], p.padding[0]))
            grid = np.asarray(canvas)
            for r in range(p.grid[0]):
                for c in range(p.grid[1]):
                    out.append(grid[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile])
    if not out:
        return torch.empty(0, tile, tile, 3, dtype=torch.uint8)
    return torch.from_numpy(np.stack(out))

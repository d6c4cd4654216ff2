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


def pack_tokens(features: torch.Tensor, plans, newline: torch.Tensor | None = None,
                side: int = 27) -> torch.Tensor:
    """The visual tokens of a batch in the order the merge step consumes them, as transformers
    builds them after the projector (LlavaOnevisionModel.pack_image_features for images,
    apply_pooling + one newline for OneVision video; LLaVA-NeXT-Video 2x2 avg/max pooling).

    features: [P_total, side*side, H], every image's tiles (base first, then the grid) or every
    video's frames, in plan order. plans: interleave.plan.ImagePlan / VideoPlan per item.
    newline: [H] (image_newline) or None. Returns [T_total, H]; T_total = sum of plan.num_tokens
    when a newline is given.
    """
    from .plan import VideoPlan

    counts = [p.num_frames if isinstance(p, VideoPlan) else p.num_patches for p in plans]
    if features.dim() != 3 or features.shape[1] != side * side:
        raise ValueError(f"pack_tokens: features must be [P, {side * side}, H], got {tuple(features.shape)}")
    if sum(counts) != features.shape[0]:
        raise ValueError(f"pack_tokens: the plans describe {sum(counts)} tiles/frames but features has "
                         f"{features.shape[0]}")
    if newline is not None and newline.shape != (features.shape[2],):
        raise ValueError(f"pack_tokens: newline must be [{features.shape[2]}], got {tuple(newline.shape)}")
    out, offset = [], 0
    for p, n in zip(plans, counts):
        f = features[offset:offset + n]
        offset += n
        if isinstance(p, VideoPlan):
            # contiguous NCHW, as transformers' apply_pooling and LLaVA-NeXT-Video's pooling make it
            maps = f.view(n, side, side, -1).permute(0, 3, 1, 2).contiguous()  # [F, H, side, side]
            if p.pooling == "bilinear":
                maps = F.interpolate(maps, size=list(p.frame_features), mode="bilinear")
            elif p.pooling == "avg":
                maps = F.avg_pool2d(maps, 2)
            elif p.pooling == "max":
                maps = F.max_pool2d(maps, 2)
            tokens = maps.permute(0, 2, 3, 1).reshape(-1, f.shape[-1])
            if p.newline and newline is not None:
                tokens = torch.cat((tokens, newline[None].to(tokens)), dim=0)
        elif p.grid != (0, 0):
            rows, cols = p.grid
            grid = f[1:].view(rows, cols, side, side, -1).permute(4, 0, 2, 1, 3)
            grid = grid.flatten(1, 2).flatten(2, 3)  # [H, rows*side, cols*side]
            uh, uw = p.unpadded_features
            top, left = (grid.shape[1] - uh) // 2, (grid.shape[2] - uw) // 2
            grid = grid[:, top:top + uh, left:left + uw]  # unpad_image: a symmetric crop
            if p.shrunk_features is not None:
                grid = F.interpolate(grid[None], list(p.shrunk_features), mode="bilinear")[0]
            if newline is not None:
                column = newline[:, None, None].expand(*grid.shape[:-1], 1).to(grid)
                grid = torch.cat((grid, column), dim=-1)
            tokens = torch.cat((f[0], grid.flatten(1, 2).transpose(0, 1)), dim=0)
        else:
            tokens = f[0]
            if p.newline and newline is not None:
                tokens = torch.cat((tokens, newline[None].to(tokens)), dim=0)
        out.append(tokens)
    return torch.cat(out, dim=0)


# ---- patch_embed (REFERENCE.md section 2) ------------------------------------------------------
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)


def normalize_tiles(tiles: torch.Tensor, mean=SIGLIP_MEAN, std=SIGLIP_STD) -> torch.Tensor:
    """uint8 tiles [N, S, S, 3] -> float32 pixel_values [N, 3, S, S] with the arithmetic of
    transformers' image processors (BaseImageProcessor.rescale then normalize): the rescale is
    `float32(u8 * (1/255))` computed in float64, then `(x - mean) / std` in float32."""
    x = (tiles.permute(0, 3, 1, 2).double() * (1 / 255)).float()
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return ((x - m) / s).contiguous()  # processors return contiguous [N, 3, S, S]


def patch_embed(pixel_values: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                pos_embed: torch.Tensor) -> torch.Tensor:
    """transformers SiglipVisionEmbeddings.forward (interpolate_pos_encoding=False): the pixels
    cast to the weight dtype, Conv2d(kernel p, stride p, padding "valid"), flatten(2).transpose(1, 2),
    plus the position embedding of every token (position_ids = arange(T)).
    pixel_values [N, 3, S, S] float, weight [C, 3, p, p], bias [C], pos_embed [T, C] -> [N, T, C]."""
    p = weight.shape[-1]
    patch_embeds = F.conv2d(pixel_values.to(weight.dtype), weight, bias, stride=p)
    embeddings = patch_embeds.flatten(2).transpose(1, 2)
    return embeddings + pos_embed


def patch_embed_tiles(tiles: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                      pos_embed: torch.Tensor, mean=SIGLIP_MEAN, std=SIGLIP_STD) -> torch.Tensor:
    """The reference path from uint8 tiles: the processor's normalization (normalize_tiles) then
    SiglipVisionEmbeddings (patch_embed)."""
    return patch_embed(normalize_tiles(tiles, mean, std), weight, bias, pos_embed)


def patch_embed_unfold(tiles: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                       pos_embed: torch.Tensor, mean=SIGLIP_MEAN, std=SIGLIP_STD) -> torch.Tensor:
    """The conv as a linear layer (benchmark baseline): normalize, unfold into [N, T, 3*p*p]
    patches, F.linear with the flattened weight, add the position embedding."""
    p = weight.shape[-1]
    x = normalize_tiles(tiles, mean, std).to(weight.dtype)
    patches = F.unfold(x, kernel_size=p, stride=p).transpose(1, 2)  # [N, T, 3*p*p], (ch, i, j) order
    return F.linear(patches, weight.flatten(1), bias) + pos_embed

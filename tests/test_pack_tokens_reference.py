"""interleave.reference.pack_tokens against transformers' own packing (the semantics the
pack_tokens kernels of issue 5 will match)."""
import types

import pytest
import torch

from interleave import plan, reference

modeling_ov = pytest.importorskip("transformers.models.llava_onevision.modeling_llava_onevision")

SIZES = [(1080, 1920), (384, 384), (300, 200), (899, 1024), (2000, 3000), (47, 846), (5000, 7)]


def hf_pack(features_per_image, sizes, newline, grid):
    fake = types.SimpleNamespace(config=types.SimpleNamespace(
        vision_config=types.SimpleNamespace(image_size=384, patch_size=14), image_grid_pinpoints=grid))
    packed, lens = modeling_ov.LlavaOnevisionModel.pack_image_features(
        fake, features_per_image, torch.tensor(sizes), image_newline=newline, vision_aspect_ratio="anyres_max_9")
    return (torch.cat(packed) if isinstance(packed, (list, tuple)) else packed), lens


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_onevision_images_equal_transformers(dtype):
    grid = [list(p) for p in plan.ONEVISION_PINPOINTS]
    plans = [plan.plan_image(h, w, "anyres_max_9") for h, w in SIZES]
    H = 8
    g = torch.Generator().manual_seed(0)
    feats = [torch.randn(p.num_patches, 729, H, generator=g).to(dtype) for p in plans]
    newline = torch.randn(H, generator=g).to(dtype)
    expected, lens = hf_pack(feats, SIZES, newline, grid)
    ours = reference.pack_tokens(torch.cat(feats), plans, newline)
    assert lens.tolist() == [p.num_tokens for p in plans]
    assert torch.equal(ours, expected)


def test_single_patch_images_and_video():
    H = 4
    g = torch.Generator().manual_seed(1)
    image = plan.plan_image(300, 200, "llava", newline=True)
    video = plan.plan_video(3, "bilinear")
    frames = torch.randn(3, 729, H, generator=g)
    feats = torch.cat([torch.randn(1, 729, H, generator=g), frames])
    newline = torch.randn(H, generator=g)
    out = reference.pack_tokens(feats, [image, video], newline)
    assert out.shape[0] == image.num_tokens + video.num_tokens == 730 + 3 * 196 + 1
    # OneVision apply_pooling: interpolate each frame's 27x27 map to 14x14 (bilinear).
    maps = frames.view(3, 27, 27, H).permute(0, 3, 1, 2)
    pooled = torch.nn.functional.interpolate(maps, size=[14, 14], mode="bilinear").permute(0, 2, 3, 1).reshape(-1, H)
    assert torch.equal(out[730:730 + 588], pooled) and torch.equal(out[-1], newline)
    avg = reference.pack_tokens(frames, [plan.plan_video(3, "avg")])
    assert avg.shape == (3 * 169, H)


def test_bad_inputs():
    p = plan.plan_image(300, 200, "anyres_max_9")
    with pytest.raises(ValueError, match=r"describe 2 tiles/frames but features has 3"):
        reference.pack_tokens(torch.zeros(3, 729, 4), [p])
    with pytest.raises(ValueError, match=r"features must be \[P, 729, H\]"):
        reference.pack_tokens(torch.zeros(2, 700, 4), [p])
    with pytest.raises(ValueError, match=r"newline must be \[4\]"):
        reference.pack_tokens(torch.zeros(2, 729, 4), [p], torch.zeros(5))

"""interleave.plan against transformers' own count functions and REFERENCE.md's worked examples."""
import functools
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from interleave import plan

# importorskip: an older transformers on a GPU machine must not break collection of the CUDA tests.
image_size_to_num_patches = pytest.importorskip(
    "transformers.models.llava_next.modeling_llava_next").image_size_to_num_patches
LlavaNextProcessor = pytest.importorskip("transformers.models.llava_next.processing_llava_next").LlavaNextProcessor
LlavaOnevisionProcessor = pytest.importorskip(
    "transformers.models.llava_onevision.processing_llava_onevision").LlavaOnevisionProcessor

# The lmms-lab grid as transformers reads the checkpoint config (pairs taken as (h, w)).
LMMS_AS_HF = [list(p) for p in plan.LMMS_INTERLEAVE_PINPOINTS_WH]
GRIDS = {"onevision": [list(p) for p in plan.ONEVISION_PINPOINTS], "lmms": LMMS_AS_HF}
SIZES = st.integers(1, 8000)


def hf_onevision_tokens(h, w, grid):
    """LlavaOnevisionProcessor._get_number_of_features with only the attributes it reads."""
    fake = types.SimpleNamespace(image_processor=types.SimpleNamespace(image_grid_pinpoints=grid),
                                 num_image_tokens=729, vision_aspect_ratio="anyres_max_9")
    fake._get_unpadded_features = functools.partial(LlavaOnevisionProcessor._get_unpadded_features, fake)
    return LlavaOnevisionProcessor._get_number_of_features(fake, h, w, 384, 384)


def hf_llava_next_tokens(h, w, grid):
    """LlavaNextProcessor._get_number_of_features for SigLIP (patch 14, no CLS)."""
    fake = types.SimpleNamespace(image_processor=types.SimpleNamespace(image_grid_pinpoints=grid),
                                 patch_size=14, num_additional_image_tokens=0)
    fake._get_unpadded_features = functools.partial(LlavaNextProcessor._get_unpadded_features, fake)
    return LlavaNextProcessor._get_number_of_features(fake, h, w, 384, 384)


@settings(max_examples=300, deadline=None)
@given(h=SIZES, w=SIZES, grid=st.sampled_from(sorted(GRIDS)))
def test_counts_equal_transformers(h, w, grid):
    pinpoints = GRIDS[grid]
    ov = plan.plan_image(h, w, "anyres_max_9", pinpoints=pinpoints)
    nx = plan.plan_image(h, w, "anyres", pinpoints=pinpoints)
    assert ov.num_tokens == hf_onevision_tokens(h, w, pinpoints)
    assert nx.num_tokens == hf_llava_next_tokens(h, w, pinpoints)
    patches = image_size_to_num_patches((h, w), pinpoints, 384)
    assert ov.num_patches == nx.num_patches == patches


@pytest.mark.parametrize("h,w", [(1, 1), (1, 8000), (8000, 1), (384, 384), (383, 385), (8000, 8000),
                                 (49, 49), (47, 423), (1080, 1920), (1411, 1411), (512, 512)])
@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_counts_equal_transformers_edges(h, w, grid):
    test_counts_equal_transformers.hypothesis.inner_test(h=h, w=w, grid=grid)


@pytest.mark.parametrize("h,w,patches,tokens", [
    (899, 1024, 10, 6551), (480, 640, 5, 2929), (384, 384, 2, 1485), (300, 200, 2, 1269),
    (1080, 1920, 16, 7269), (2000, 3000, 25, 7329)])
def test_onevision_worked_examples(h, w, patches, tokens):
    p = plan.plan_image(h, w, "anyres_max_9", pinpoints=plan.ONEVISION_PINPOINTS)
    assert (p.num_patches, p.num_tokens) == (patches, tokens)


def test_onevision_shrink_worked_example():
    # REFERENCE.md: 1080x1920 -> best 1152x1920 (3x5 tiles, 16 patches), unpadded 75x135 features,
    # shrunk to 60x108: 729 + 60 * 109 = 7269 tokens.
    p = plan.plan_image(1080, 1920, "anyres_max_9")
    assert p.canvas == (1152, 1920) and p.grid == (3, 5) and p.num_patches == 16
    assert p.resized == (1080, 1920) and p.padding == (36, 36, 0, 0)
    assert p.unpadded_features == (75, 135) and p.shrunk_features == (60, 108)
    assert p.num_tokens == 729 + 60 * 109


@pytest.mark.parametrize("w,h,tokens", [(384, 384, 1513), (1920, 1080, 2379), (1000, 1000, 3699)])
def test_lmms_worked_examples_original_code(w, h, tokens):
    # The original LLaVA code reads the config's pairs as (width, height).
    p = plan.plan_image(h, w, "anyres", pinpoints=plan.LMMS_INTERLEAVE_PINPOINTS, rounding="original")
    assert p.num_tokens == tokens


def test_first_candidate_wins_ties():
    # 384x384 fits (384, 768) and (768, 384) equally: list order decides.
    assert plan.select_best_resolution(384, 384, [(384, 768), (768, 384)]) == (384, 768)
    assert plan.select_best_resolution(384, 384, [(768, 384), (384, 768)]) == (768, 384)


def test_resize_uses_ceil_and_padding_puts_odd_pixel_last():
    # 1080x1920 into 1536x1536: width-bound, height = ceil(1080 * 0.8) = 864.
    assert plan.resized_size(1080, 1920, 1536, 1536) == (864, 1536)
    assert plan.resized_size(100, 3, 768, 384) == (768, min(int(np.ceil(3 * 7.68)), 384))
    assert plan.center_padding(863, 1536, 1536, 1536) == (336, 337, 0, 0)


def test_rounding_modes_differ_where_the_reference_does():
    # 47 * (54 / 846) = 2.9999999999999996 in float64: transformers rounds to 3 (pad 25 per side,
    # 4 rows kept), the original code truncates to 2 (pad 26, 2 rows kept).
    assert plan.unpadded_extent(47, 846, 54, 54, "hf") == (4, 54)
    assert plan.unpadded_extent(47, 846, 54, 54, "original") == (2, 54)
    with pytest.raises(ValueError, match="rounding"):
        plan.unpadded_extent(47, 846, 54, 54, "nearest")


def test_squash_and_pad_modes():
    assert plan.plan_image(300, 500, "llava").num_tokens == 729
    assert plan.plan_image(300, 500, "llava", newline=True).num_tokens == 730
    p = plan.plan_image(300, 501, "pad", newline=True)
    assert p.num_tokens == 730 and p.canvas == (501, 501) and p.pad_value == (127, 127, 127)
    assert p.padding == (100, 101, 0, 0)  # transformers pad_to_square: start = (501 - 300) // 2
    assert plan.plan_image(7, 7, "pad").padding == (0, 0, 0, 0)


def test_video_counts():
    assert plan.plan_video(16).num_tokens == 16 * 729
    assert plan.plan_video(10, "avg").num_tokens == 10 * 169
    assert plan.plan_video(10, "max").frame_features == (13, 13)
    # transformers LlavaOnevisionProcessor: num_frames * 14 * 14 + 1 newline.
    assert plan.plan_video(8, "bilinear").num_tokens == 8 * 196 + 1
    with pytest.raises(ValueError, match="at least one frame"):
        plan.plan_video(0)
    with pytest.raises(ValueError, match="pooling"):
        plan.plan_video(3, "mean")


@given(total=st.integers(1, 5000), k=st.integers(1, 64))
def test_sample_frames_matches_numpy_linspace(total, k):
    expected = np.linspace(0, total - 1, k).astype(int).tolist()
    assert plan.sample_frames(total, k) == expected


def test_sample_frames_errors():
    with pytest.raises(ValueError, match="no frames"):
        plan.sample_frames(0, 10)
    with pytest.raises(ValueError, match="num_samples"):
        plan.sample_frames(10, 0)
    # a video shorter than the count: linspace's repeated indices, or an error naming both numbers
    assert plan.sample_frames(3, 5) == [0, 0, 1, 1, 2]
    with pytest.raises(ValueError, match=r"too short: 3 frame\(s\), 5 asked for"):
        plan.sample_frames(3, 5, allow_repeats=False)
    assert plan.sample_frames(5, 5, allow_repeats=False) == [0, 1, 2, 3, 4]


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown mode"):
        plan.plan_image(10, 10, "anyres_max_x")
    with pytest.raises(ValueError, match="positive integers"):
        plan.plan_image(0, 10)
    with pytest.raises(ValueError, match="positive integers"):
        plan.plan_image(10.5, 10)
    with pytest.raises(ValueError, match="newline"):
        plan.plan_image(10, 10, "anyres", newline=False)
    with pytest.raises(ValueError, match="empty"):
        plan.select_best_resolution(10, 10, [])


def test_grid_constants():
    assert len(plan.ONEVISION_PINPOINTS) == 36
    assert plan.ONEVISION_PINPOINTS[:3] == ((384, 384), (384, 768), (384, 1152))
    assert plan.LMMS_INTERLEAVE_PINPOINTS[0] == (768, 384)  # (h, w) of the config's first (w, h) pair

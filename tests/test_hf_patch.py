"""interleave.hf.patch (issue 6, deliverable 4): a patched transformers Llava / LlavaNext /
LlavaOnevision model gives the unpatched model's logits and greedy generations, on tiny random
models (SigLIP + Qwen2 configs) built in memory."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

import interleave.hf  # noqa: E402
import interleave.ops  # noqa: E402
from interleave import plan, transformers_compat  # noqa: E402

IMAGE_ID, VIDEO_ID = 290, 291
TILE = 28  # 2x2 features per tile: small enough for CPU, big enough for every packing path
GRID = [[28, 56], [56, 28], [56, 56]]


def _configs():
    vision = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                             num_attention_heads=2, image_size=TILE, patch_size=14)
    text = transformers.Qwen2Config(vocab_size=300, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    return vision, text


def _model(kind):
    torch.manual_seed({"llava": 0, "llava_next": 1, "onevision": 2}[kind])
    vision, text = _configs()
    common = dict(vision_config=vision, text_config=text, image_token_id=IMAGE_ID,
                  vision_feature_layer=-1, vision_feature_select_strategy="full")
    if kind == "llava":
        model = transformers.LlavaForConditionalGeneration(transformers.LlavaConfig(**common))
    elif kind == "llava_next":
        model = transformers.LlavaNextForConditionalGeneration(transformers.LlavaNextConfig(
            image_grid_pinpoints=GRID, **common))
    else:
        model = transformers.LlavaOnevisionForConditionalGeneration(transformers.LlavaOnevisionConfig(
            image_grid_pinpoints=GRID, video_token_id=VIDEO_ID, vision_aspect_ratio="anyres_max_1", **common))
    return model.eval()


def _image_inputs(kind, sizes, batch_num_images=None):
    """input_ids with each image's placeholders (counts from interleave.plan, as the processors
    expand them), pixel_values in transformers' layout, image_sizes."""
    g = torch.Generator().manual_seed(7)
    if kind == "llava":
        plans = [plan.plan_image(h, w, "llava", tile=TILE) for h, w in sizes]
        pixel_values = torch.randn(len(sizes), 3, TILE, TILE, generator=g)
    else:
        mode = "anyres" if kind == "llava_next" else "anyres_max_1"
        multi = batch_num_images is not None and max(batch_num_images) > 1
        plans = [plan.plan_image(h, w, "llava", newline=True, tile=TILE) if multi else
                 plan.plan_image(h, w, mode, pinpoints=[tuple(p) for p in GRID], tile=TILE) for h, w in sizes]
        pmax = max(p.num_patches for p in plans)
        pixel_values = torch.zeros(len(sizes), pmax, 3, TILE, TILE)
        for i, p in enumerate(plans):
            pixel_values[i, :p.num_patches] = torch.randn(p.num_patches, 3, TILE, TILE, generator=g)
    ids = []
    for i, p in enumerate(plans):
        ids += [10 + i, 11] + [IMAGE_ID] * p.num_tokens + [12]
    inputs = dict(input_ids=torch.tensor([ids + [13, 14]]), pixel_values=pixel_values)
    if kind != "llava":
        inputs["image_sizes"] = torch.tensor(sizes)
    if batch_num_images is not None:
        inputs["batch_num_images"] = torch.tensor(batch_num_images)
    return inputs, plans


def _compare(model, inputs, exact):
    with torch.no_grad():
        interleave.hf.unpatch(model)
        expected = model(**inputs).logits
        greedy_expected = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        interleave.hf.patch(model)
        try:
            got = model(**inputs).logits
            greedy = model.generate(**inputs, max_new_tokens=6, do_sample=False)
        finally:
            interleave.hf.unpatch(model)
    if exact:
        assert torch.equal(got, expected)
    else:
        torch.testing.assert_close(got, expected)
    assert torch.equal(greedy, greedy_expected)


@pytest.mark.parametrize("kind", ["llava", "llava_next", "onevision"])
def test_patched_model_equals_transformers(kind):
    """Within fp32 rounding: our patch embedding is a GEMM where transformers runs a conv, and
    OneVision's shrink interpolates; packing and merging copies are bitwise (test_pack_tokens)."""
    model = _model(kind)
    sizes = [(30, 50), (60, 20), (56, 56)]
    inputs, plans = _image_inputs(kind, sizes)
    shrinks = any(getattr(p, "shrunk_features", None) for p in plans)
    assert shrinks == (kind == "onevision")
    _compare(model, inputs, exact=False)


def test_onevision_multi_image_sample_is_not_tiled():
    """batch_num_images > 1: each image is its base tile + one newline (730 tokens at 384px)."""
    model = _model("onevision")
    inputs, plans = _image_inputs("onevision", [(30, 50), (60, 20)], batch_num_images=[2])
    assert [p.num_tokens for p in plans] == [5, 5]
    _compare(model, inputs, exact=False)


def test_onevision_video_and_image_prompt():
    model = _model("onevision")
    inputs, _ = _image_inputs("onevision", [(30, 50)])
    frames = torch.randn(1, 3, 3, TILE, TILE, generator=torch.Generator().manual_seed(3))
    video = plan.plan_video(3, "bilinear", tile=TILE)
    ids = inputs["input_ids"][0].tolist()
    inputs["input_ids"] = torch.tensor([[20] + [VIDEO_ID] * video.num_tokens + ids])
    inputs["pixel_values_videos"] = frames
    _compare(model, inputs, exact=False)
    only_video = dict(input_ids=torch.tensor([[20] + [VIDEO_ID] * video.num_tokens + [21]]), pixel_values_videos=frames)
    _compare(model, only_video, exact=False)
    # the image first, then the video; and a batch of two rows, each kind in each row
    inputs["input_ids"] = torch.tensor([ids[:-2] + [20] + [VIDEO_ID] * video.num_tokens + ids[-2:]])
    _compare(model, inputs, exact=False)
    row_a = ids[:4] + [VIDEO_ID] * 2 + ids[4:]  # the video's first two rows inside the image's ...
    row_b = [VIDEO_ID] * (video.num_tokens - 2) + [21] * (len(row_a) - video.num_tokens + 2)  # ... the rest in row 2
    two, _ = _image_inputs("onevision", [(30, 50)])
    two["input_ids"] = torch.tensor([row_a, row_b])
    two["pixel_values_videos"] = frames
    two["attention_mask"] = torch.ones_like(two["input_ids"])
    _compare(model, two, exact=False)
    # a count that does not match: an error naming the numbers (transformers raises its own unpatched)
    bad = dict(inputs, input_ids=torch.tensor([ids + [VIDEO_ID] * 3]))
    interleave.hf.patch(model)
    try:
        with pytest.raises(ValueError, match=r"image placeholder\(s\) for .* and 3 video placeholder\(s\) for"):
            with torch.no_grad():
                model(**bad)
    finally:
        interleave.hf.unpatch(model)


def test_visual_tokens_equal_transformers_features():
    """The patched visual path alone: our tokens equal what transformers' get_image_features packs."""
    model = _model("llava_next")
    inputs, plans = _image_inputs("llava_next", [(30, 50), (60, 20)])
    with torch.no_grad():
        ours, _ = interleave.hf.visual_tokens(model, inputs["pixel_values"], inputs["image_sizes"])
        hf = transformers_compat.image_features(model.model, inputs["pixel_values"], inputs["image_sizes"])
    torch.testing.assert_close(ours, hf)
    assert ours.shape[0] == sum(p.num_tokens for p in plans)


def test_mixed_images_and_video_merge_compiles_without_a_graph_break():
    """Images and a video in one batch: their rows put in placeholder order and merged by one
    merge_tokens over both ids equal transformers' two masked_scatters; under
    torch.compile(fullgraph=True) that is one graph (the per-kind counts are checked on the device
    there, eagerly with a ValueError naming them), and a per-kind mismatch still fails."""
    import torch._dynamo
    from interleave.patching import _in_placeholder_order
    g = torch.Generator().manual_seed(5)
    weight = torch.randn(300, 16, generator=g)
    ids = torch.tensor([[1, IMAGE_ID, IMAGE_ID, 2, VIDEO_ID, 3, IMAGE_ID],
                        [VIDEO_ID, VIDEO_ID, 4, 5, IMAGE_ID, 6, 7]])
    images, videos = torch.randn(4, 16, generator=g), torch.randn(3, 16, generator=g)

    def merge(ids, images, videos):
        rows = _in_placeholder_order(ids, IMAGE_ID, VIDEO_ID, images, videos)
        return interleave.ops.merge_tokens(ids, weight, rows, [IMAGE_ID, VIDEO_ID])

    ref = torch.nn.functional.embedding(ids, weight)
    ref = ref.masked_scatter((ids == IMAGE_ID)[..., None].expand_as(ref), images)
    ref = ref.masked_scatter((ids == VIDEO_ID)[..., None].expand_as(ref), videos)
    assert torch.equal(merge(ids, images, videos), ref)
    swapped = (images[:3], torch.cat([images[3:], videos]))  # the total matches, the kinds do not
    with pytest.raises(ValueError, match=r"4 image placeholder\(s\) for 3 image token rows and 3 video "
                                         r"placeholder\(s\) for 4 video token rows"):
        merge(ids, *swapped)
    explained = torch._dynamo.explain(merge)(ids, images, videos)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(merge, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(ids, images, videos), ref)
    with pytest.raises(RuntimeError, match="placeholder counts differ"):
        compiled(ids, *swapped)


def test_transformers_older_than_supported_is_named(monkeypatch, tmp_path):
    """transformers is no hard dependency, so an older one can be installed: every entry point
    says which version it needs and found, before anything fails deep inside."""
    from interleave.tiny import save_tiny_checkpoint
    model = _model("llava")
    checkpoint = save_tiny_checkpoint(str(tmp_path / "ck"), "llava")
    monkeypatch.setattr(transformers_compat, "installed_version", lambda: "4.45.2")
    pil = transformers_compat.pil_image_processor_class("siglip")()
    calls = {"interleave.hf.patch": lambda: interleave.hf.patch(model),
             "ImageProcessor.from_hf": lambda: interleave.hf.ImageProcessor.from_hf(pil),
             "VideoProcessor.from_hf": lambda: interleave.hf.VideoProcessor.from_hf(pil),
             "InterleaveModel.from_pretrained": lambda: interleave.InterleaveModel.from_pretrained(checkpoint),
             "interleave.hf.patch ": lambda: interleave.InterleaveModel.from_transformers(model)}
    for what, call in calls.items():
        with pytest.raises(ImportError, match=rf"{what.strip()} needs transformers >= 4\.57, found 4\.45\.2; "
                                              r"pip install 'transformers>=4\.57'"):
            call()
    assert not interleave.hf.is_patched(model)
    monkeypatch.setattr(transformers_compat, "installed_version", lambda: "4.57.0.dev0")
    assert interleave.hf.patch(model) is model  # a 4.57 development build is 4.57
    interleave.hf.unpatch(model)


def test_patch_unpatch_and_errors():
    model = _model("llava")
    keys = set(model.state_dict())
    assert interleave.hf.patch(model) is model and interleave.hf.is_patched(model)
    assert set(model.state_dict()) == keys  # the fused patch embedding shares the tower's parameters
    interleave.hf.patch(model)  # idempotent
    interleave.hf.unpatch(model)
    assert not interleave.hf.is_patched(model) and "forward" not in model.model.__dict__
    with pytest.raises(TypeError, match="not a Llava"):
        interleave.hf.patch(torch.nn.Linear(2, 2))
    inputs, _ = _image_inputs("llava", [(30, 50)])
    inputs["input_ids"][0, 3] = 5  # one placeholder fewer than the 4 feature rows
    interleave.hf.patch(model)
    with pytest.raises(ValueError, match="placeholder"):
        model(**inputs)


def test_compiled_visual_path_and_merge_have_no_graph_break():
    """torch.compile(fullgraph=True) of the patched visual path + merge: one graph (the sizes live in
    the plans), and it computes what eager does."""
    import torch._dynamo
    model = _model("llava_next")
    inputs, plans = _image_inputs("llava_next", [(30, 50)])
    pixels = inputs["pixel_values"][0, :plans[0].num_patches]
    weight = model.model.get_input_embeddings().weight

    def path(pv, ids):
        tokens = interleave.hf.visual_path(model, pv, plans)
        return interleave.ops.merge_tokens(ids, weight, tokens, IMAGE_ID)

    with torch.no_grad():
        explained = torch._dynamo.explain(path)(pixels, inputs["input_ids"])
        assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
        torch._dynamo.reset()
        compiled = torch.compile(path, fullgraph=True)(pixels, inputs["input_ids"])
        torch.testing.assert_close(compiled, path(pixels, inputs["input_ids"]))

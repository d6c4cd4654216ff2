"""InterleaveModel, processing and generate (issue 6): tiny random checkpoints saved by transformers
to a temporary folder (Llava, LlavaNext, LlavaOnevision), real images from scikit-image. Our model's
logits equal transformers' (the same checkpoint, unpatched, on the same inputs), greedy generations
are identical for every prompt kind, and a batch generates what its prompts generate one by one."""
import pytest
import torch

transformers = pytest.importorskip("transformers")
skdata = pytest.importorskip("skimage.data")

import interleave  # noqa: E402
from interleave import processing  # noqa: E402
from interleave.tiny import save_tiny_checkpoint, tiny_tokenizer  # noqa: E402

KINDS = ["llava", "llava_next", "onevision"]


@pytest.fixture(scope="module")
def images():
    left, right, _ = skdata.stereo_motorcycle()
    return {"astronaut": skdata.astronaut(), "cat": skdata.chelsea(), "coffee": skdata.coffee(),
            "left": left, "right": right}


@pytest.fixture(scope="module", params=KINDS)
def model(request, tmp_path_factory):
    path = str(tmp_path_factory.mktemp(request.param))
    save_tiny_checkpoint(path, request.param)
    return interleave.InterleaveModel.from_pretrained(path)


def _prompts(model, im):
    """Every prompt kind of the paper: multi-image, video (frames), 3D (a stereo pair), single image."""
    video = interleave.Video([im["astronaut"], im["cat"], im["coffee"], im["cat"]])
    video_holder = "<video>" if model.kind == "onevision" else "<image>" * 4
    return {
        "multi_image": ("<image><image>What differs between the two?", [im["astronaut"], im["cat"]]),
        "video": (video_holder + "What happens?", [video]),
        "3d": ("<image><image>How far is the motorcycle?", [im["left"], im["right"]]),
        "single_anyres": ("<image>Describe the image.", [im["coffee"]]),
    }


def _reference(model, fn):
    """Runs fn with the model unpatched: transformers' own visual path and merge."""
    interleave.hf.unpatch(model.hf)
    try:
        return fn()
    finally:
        interleave.hf.patch(model.hf)


def test_logits_and_greedy_generation_equal_transformers(model, images):
    for name, (prompt, visuals) in _prompts(model, images).items():
        batch = model.prepare([prompt], [visuals])
        with torch.no_grad():
            ours = model(**batch).logits
            expected = _reference(model, lambda: model.hf(**batch).logits)
        torch.testing.assert_close(ours, expected, msg=f"{model.kind} {name}")
        ours_text = interleave.generate(model, prompt, visuals, max_new_tokens=8)
        ref_ids = _reference(model, lambda: model.hf.generate(**batch, max_new_tokens=8, do_sample=False,
                                                               pad_token_id=model.tokenizer.pad_token_id,
                                                               eos_token_id=model.tokenizer.eos_token_id))
        expected_text = model.tokenizer.decode(ref_ids[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        assert ours_text == expected_text, (model.kind, name)


def test_batched_generation_equals_one_by_one(model, images):
    """Every kind of visual input in one left-padded batch (a video beside images, a text-only
    prompt), against each prompt alone."""
    prompts = _prompts(model, images)
    prompts["text_only"] = ("Say something.", [])
    names = ["multi_image", "video", "single_anyres", "text_only", "3d"]
    batch_out = interleave.generate(model, [prompts[n][0] for n in names], [prompts[n][1] for n in names],
                                    max_new_tokens=6)
    single = [interleave.generate(model, prompts[n][0], prompts[n][1], max_new_tokens=6) for n in names]
    assert batch_out == single


def test_training_forward_masks_visual_labels(model, images):
    prompt, visuals = _prompts(model, images)["multi_image"]
    batch = model.prepare([prompt], [visuals])
    labels = batch["input_ids"].clone()
    out = model(**batch, labels=labels)
    masked = labels.clone()
    masked[labels == model.image_token_id] = -100
    with torch.no_grad():
        expected = _reference(model, lambda: model.hf(**batch, labels=masked).loss)
    torch.testing.assert_close(out.loss.detach(), expected)
    out.loss.backward()  # gradients flow through our ops into the projector and the LM
    assert model.hf.model.multi_modal_projector.linear_1.weight.grad is not None
    model.hf.zero_grad()


def test_raw_visuals_in_forward(model, images):
    prompt, visuals = _prompts(model, images)["single_anyres"]
    batch = model.prepare([prompt], [visuals])
    pixels = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
    with torch.no_grad():
        a = model(batch["input_ids"], batch["attention_mask"], **pixels).logits
        b = model(batch["input_ids"], batch["attention_mask"], visuals=[visuals]).logits
    assert torch.equal(a, b)


def test_streaming_and_stop_strings(model, images):
    prompt, visuals = _prompts(model, images)["single_anyres"]
    full = interleave.generate(model, prompt, visuals, max_new_tokens=6)
    assert "".join(interleave.generate(model, prompt, visuals, max_new_tokens=6, stream=True)) == full
    sampled = interleave.generate(model, prompt, visuals, max_new_tokens=6, do_sample=True, top_k=5, top_p=0.9,
                                  temperature=0.7, seed=0)
    assert isinstance(sampled, str)
    assert len(full) > 1, full  # the tiny model's greedy answer (the stop string below needs 2 characters)
    stop = full[1]
    cut = interleave.generate(model, prompt, visuals, max_new_tokens=6, stop=[stop])
    assert cut == full[:full.find(stop)]
    # streamed with the stop string: the same text, nothing from the stop string on
    assert "".join(interleave.generate(model, prompt, visuals, max_new_tokens=6, stop=[stop], stream=True)) == cut
    # the static cache (CUDA graphs' cache) generates the same greedy text
    assert interleave.generate(model, prompt, visuals, max_new_tokens=6, static_cache=True) == full


@pytest.mark.parametrize("pieces,stops,expected", [
    (["Hel", "lo <", "|e", "nd|> more"], ["<|end|>"], ["Hel", "lo ", ""]),  # held back over three pieces
    (["ab", "c<", "x"], ["<|end|>"], ["ab", "c", "<x"]),                     # a false start is released
    (["abc"], ["b", "c"], ["a"]),                                             # the earliest stop string wins
    (["STOP at once"], ["STOP"], []),
    (["no", " stop"], [], ["no", " stop"]),
    (["tail <|"], ["<|end|>"], ["tail ", "<|"]),                              # the end flushes what was held
])
def test_stream_pieces_cut_at_stop_strings(pieces, stops, expected):
    from interleave.generation import _trim, _until_stop
    got = list(_until_stop(iter(pieces), stops))
    assert [p for p in got if p] == [p for p in expected if p]
    assert "".join(got) == _trim("".join(pieces), stops)


# ---- processing -----------------------------------------------------------------------------------
def test_chat_prompt_formats():
    text = processing.chat_prompt("Compare <image> and <image> please.", image_format="front")
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                    "<image>\n<image>\nCompare  and  please.<|im_end|>\n<|im_start|>assistant\n")
    inter = processing.chat_prompt("A <image> B", system=None)
    assert inter == "<|im_start|>user\nA <image> B<|im_end|>\n<|im_start|>assistant\n"
    with pytest.raises(ValueError, match="image_format"):
        processing.chat_prompt("x", image_format="middle")


def test_encode_expands_placeholders_and_checks_counts():
    from interleave import plan
    tok = tiny_tokenizer()
    plans = [plan.plan_image(300, 500, "anyres_max_9"), plan.plan_video(2, "bilinear")]
    ids = processing.encode(tok, "a<image>b<video>c", plans)
    assert ids.count(259) == plans[0].num_tokens and ids.count(260) == plans[1].num_tokens
    with pytest.raises(ValueError, match=r"1 <image> and 0 <video> placeholders \(1 in all\) but 2 visual inputs"):
        processing.encode(tok, "a<image>b", plans)
    with pytest.raises(ValueError, match="is <image> but its input is a video"):
        processing.encode(tok, "<image><image>", [plans[1], plans[0]])
    ids, labels = processing.encode_chat(tok, [("user", "<image>What?"), ("assistant", "A cat.")], plans[:1],
                                         image_token_id=259)
    learned = [t for t, lab in zip(ids, labels) if lab != -100]
    assert tok.decode(learned) == "A cat.<|im_end|>\n"
    assert all(lab == -100 for t, lab in zip(ids, labels) if t == 259)


@pytest.mark.parametrize("widths", ["tiny", "real"])
def test_tiny_model_has_no_pooling_head(widths):
    """The random models mirror the published checkpoints' towers, which have no attention-pooling
    head (transformers would run it in get_image_features, and the benchmarks would time that
    against us)."""
    from interleave.tiny import tiny_model
    model = tiny_model("onevision", widths=widths, vision_layers=1, text_layers=1, vocab_size=300)
    assert model.config.vision_config.vision_use_head is False
    assert not any(".head." in name for name, _ in model.named_parameters())


def test_tiny_model_made_on_a_device(device):
    """tiny_model(device=...) makes and initializes the weights there (the benchmarks' 0.5B-depth
    model: ~27 s of host initialization before): every tensor on that device, the config as without
    it, and on the CPU the same weights for the same seed."""
    from interleave.tiny import tiny_model
    plain = tiny_model("onevision", seed=3)
    made = tiny_model("onevision", seed=3, device=device)
    assert made.config.to_dict() == plain.config.to_dict()
    state = made.state_dict()
    assert all(t.device.type == device for t in state.values())
    assert all(t.device.type == device for t in made.buffers())
    if device == "cpu":
        assert all(torch.equal(state[k], v) for k, v in plain.state_dict().items())
    else:
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
        with torch.no_grad():  # runs there
            ids = torch.tensor([[1, 2, 3]], device=device)
            assert made(input_ids=ids).logits.isfinite().all()


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        interleave.InterleaveModel.from_pretrained(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        interleave.InterleaveModel.from_pretrained(str(tmp_path))


def test_both_checkpoint_key_layouts_load(tmp_path):
    """REFERENCE.md section 10: the Hub / transformers 4.57 layout (`vision_tower.vision_model.*`)
    and the 5.x layout (`vision_tower.*`) load to the same weights."""
    import shutil

    from safetensors.torch import load_file, save_file
    old_prefix, new_prefix = "vision_tower.vision_model.", "vision_tower."
    saved = save_tiny_checkpoint(str(tmp_path / "saved"), "llava")
    state = load_file(f"{saved}/model.safetensors")
    tower = [k for k in state if k.startswith(new_prefix)]
    # recent 5.x saves the new layout, 4.57 and 5.0 the Hub's: the other one is made from it
    legacy = all(k.startswith(old_prefix) for k in tower)
    assert tower and (legacy or not any(k.startswith(old_prefix) for k in tower))
    src, dst = (old_prefix, new_prefix) if legacy else (new_prefix, old_prefix)
    other = tmp_path / "other"
    shutil.copytree(saved, other)
    save_file({(dst + k[len(src):] if k.startswith(src) else k): v for k, v in state.items()},
              str(other / "model.safetensors"), metadata={"format": "pt"})
    a = interleave.InterleaveModel.from_pretrained(saved).hf.state_dict()
    b = interleave.InterleaveModel.from_pretrained(str(other)).hf.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_uint8_tiles_give_the_normalized_pixels_features(model, images):
    """The trainer's pixels: uint8 tiles straight into the fused patch embedding (normalization
    folded into its weights) give the visual tokens of transformers' normalized pixel_values,
    within fp32 rounding, for a batch of every prompt kind (videos, multi-image padding included)."""
    from interleave.model import to_model
    visuals = [v for _, v in _prompts(model, images).values()]
    floats, _ = model.visual_inputs(visuals)
    maker = model.pixel_maker(uint8=None)
    assert maker.uint8
    tiles = to_model(maker(visuals, model.device), model.device, model.hf.dtype)
    assert tiles["pixel_values"].dtype == torch.uint8 and tiles["pixel_values"].shape[-1] == 3
    assert tiles.keys() == floats.keys()
    with torch.no_grad():
        a, _ = interleave.hf.visual_tokens(model.hf, **floats)
        b, _ = interleave.hf.visual_tokens(model.hf, **tiles)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)


def test_pixel_maker_batches_videos_in_one_call(model, images):
    """Several videos of a batch: one tiling call for all frames, viewed as [videos, frames, ...];
    equal to tiling each video on its own (OneVision; the other kinds see frames as images)."""
    if model.kind != "onevision":
        pytest.skip("only OneVision models take pixel_values_videos")
    from interleave.ops import anyres_tiles
    videos = [interleave.Video([images["astronaut"], images["cat"], images["coffee"]]),
              interleave.Video([images["cat"], images["left"], images["right"]])]
    maker = model.pixel_maker()
    got = maker([[videos[0]], [videos[1]]], model.device)["pixel_values_videos"]
    table = model.image_processor._table_on(torch.device(model.device))
    from interleave.model import _frames
    expected = torch.stack([anyres_tiles(_frames(v), "llava", tile=maker.tile, normalize=table).tiles for v in videos])
    assert got.shape == (2, 3, 3, maker.tile, maker.tile) and torch.equal(got, expected)

"""Training: `python -m interleave train --model DIR --data FILE --out DIR ...` (or `train(TrainConfig)`).

The release's recipe (REFERENCE.md section 9): continue from a checkpoint, fine-tune on mixed
multi-image / video / 3D / single-image conversations, vision tower frozen, projector and LLM
trained (`--tune projector,llm`), AdamW, cosine schedule with warmup, bf16 autocast on GPU, gradient
accumulation and clipping, optional activation checkpointing. The model's visual path and merge run
on our ops (InterleaveModel); `--reference` trains the same model through transformers' own path.

Exactness choices:
- The loss of a step is the sum of the token cross-entropies of all its micro-batches (and all
  ranks) divided by the step's total count of labelled tokens, so gradient accumulation and data
  parallelism give the loss and gradients of the one big batch (a 2-process run equals the
  1-process run over the same global batch; tests/test_train.py).
- The data order is a function of (seed, step): step s takes samples [s*G, (s+1)*G) of the seeded
  epoch permutation (G = global batch), rank r the r-th slice of it. Resuming from a checkpoint
  (weights, optimizer, schedule, every rank's RNG states, step) therefore continues bit for bit,
  under DDP and FSDP too (FSDP checkpoints hold the gathered, unsharded optimizer state).
Checkpoints are transformers folders (`from_pretrained` loads them) plus `trainer_state.pt`.
Under `torchrun` the same command uses torch.distributed (DDP; gloo on CPU, NCCL on GPU).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import random
import time
from typing import Optional

import torch

from . import data as datamod, nvtx
from .model import to_model

TUNABLE = ("vision", "projector", "llm")


@dataclasses.dataclass
class TrainConfig:
    model: str                      # checkpoint folder to start from
    data: list                      # data files (JSON/JSONL), or Source objects
    out: str                        # where checkpoints go
    image_root: str = ""
    steps: int = 100
    batch_size: int = 4             # samples per micro-batch per process
    grad_accum: int = 1
    lr: float = 1e-5
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_len: int = 4096
    image_format: str = "mixed"
    front_ratio: float = 0.5
    num_frames: int = 10
    tune: str = "projector,llm"
    bf16: Optional[bool] = None     # default: on CUDA
    activation_checkpointing: bool = False
    save_every: int = 0             # 0: only the final checkpoint
    seed: int = 0
    num_workers: int = 0
    resume: Optional[str] = None    # a checkpoint folder written by this trainer
    reference: bool = False         # train through transformers' unpatched path
    fsdp: bool = False              # shard parameters with FSDP2 (fully_shard) instead of DDP
    pack: bool = False              # pack each micro-batch's samples into rows of at most max_len
    # transformers attention for the LLM and the tower: "sdpa", "flash_attention_2", "flex_attention",
    # ...; None: the model's own, except flash_attention_2 under --pack on CUDA when flash-attn is
    # installed. With a varlen backend (flash_attention_*, flex_attention) --pack puts the
    # micro-batch in one unpadded row and no mask is built (see data.collate_packed).
    attn_implementation: Optional[str] = None
    # Tile (anyres_tiles + normalization) in the DataLoader workers on the CPU, next to decoding,
    # instead of in the main process on the model's device (the default: on a GPU that is fastest).
    tile_in_workers: bool = False
    fused_loss: bool = True         # LM head + cross-entropy without the logits (linear_cross_entropy)
    device: Optional[str] = None
    progress: bool = True


class CausalLMLoss(torch.nn.Module):
    """transformers' model up to the last hidden state, then the LM head and the summed token
    cross-entropy (next-token targets, -100 ignored). fused: interleave.ops.linear_cross_entropy,
    which never materializes the [tokens, vocabulary] logits; else the head and F.cross_entropy. One
    module, so that DDP / FSDP see the head's weight used inside their forward."""

    def __init__(self, hf_model, fused: bool = True):
        super().__init__()
        self.hf = hf_model
        self.fused = fused

    def forward(self, input_ids, attention_mask, labels, **kwargs):
        # use_cache=False: no KV cache in training, and without one transformers reads packed samples'
        # boundaries from restarting position_ids when attention_mask is None (the varlen layout).
        hidden = self.hf.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                               **kwargs).last_hidden_state
        hidden, targets = hidden[:, :-1], labels[:, 1:]
        head = self.hf.lm_head
        if self.fused:
            from .ops import linear_cross_entropy
            weight = head.weight.to(hidden.dtype)
            bias = head.bias.to(hidden.dtype) if head.bias is not None else None
            mean = linear_cross_entropy(hidden, weight, targets, bias=bias).float()
            return mean * (targets != -100).sum()
        logits = head(hidden).float()
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100,
                                                 reduction="sum")


VARLEN_ATTENTION = ("flash_attention_2", "flash_attention_3", "flash_attention_4", "flex_attention")


def choose_attention(cfg: TrainConfig, device: torch.device) -> Optional[str]:
    """The attention implementation to set, or None to keep the model's: cfg's, else flash-attn's
    varlen kernels for packed training on CUDA when flash-attn is installed."""
    if cfg.attn_implementation:
        return cfg.attn_implementation
    if cfg.pack and device.type == "cuda":
        import importlib.util
        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
    return None


def _check_flex_head_widths(hf_model) -> None:
    """FlexAttention's GPU (Triton) kernels need heads at least 16 wide; say so before training
    starts rather than deep inside Inductor's lowering at the first step."""
    for name in ("text_config", "vision_config"):
        config = getattr(hf_model.config, name, None)
        if config is None:
            continue
        width = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        if width < 16:
            raise ValueError(f"train: --attn-implementation flex_attention on CUDA needs attention heads at "
                             f"least 16 wide; this model's {name} has {width}-wide heads (use sdpa or flash_attention_2)")


def uses_varlen_attention(hf_model) -> bool:
    """Whether the LLM's attention finds packed samples from restarting position ids itself."""
    config = getattr(hf_model.config, "text_config", hf_model.config)
    return getattr(config, "_attn_implementation", None) in VARLEN_ATTENTION


def cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warmup from 0 over `warmup` steps, then cosine decay to 0 at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_trainable(model, tune: str) -> list:
    """Freezes everything, then unfreezes the named parts; returns the trainable parameters."""
    parts = [p.strip() for p in tune.split(",") if p.strip()]
    bad = [p for p in parts if p not in TUNABLE]
    if bad or not parts:
        raise ValueError(f"--tune takes a comma list of {TUNABLE}, got {tune!r}")
    inner = model.hf.model
    model.hf.requires_grad_(False)
    if "vision" in parts:
        inner.vision_tower.requires_grad_(True)
    if "projector" in parts:
        inner.multi_modal_projector.requires_grad_(True)
        if getattr(inner, "image_newline", None) is not None:
            inner.image_newline.requires_grad_(True)
    if "llm" in parts:
        inner.language_model.requires_grad_(True)
        model.hf.lm_head.requires_grad_(True)
    return [p for p in model.hf.parameters() if p.requires_grad]


def _rng_state() -> dict:
    import numpy as np
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def _set_rng_state(state: dict) -> None:
    import numpy as np
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _dist():
    """(world, rank, whether this call created the process group)."""
    import torch.distributed as dist
    world = int(os.environ.get("WORLD_SIZE", "1"))
    created = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        created = True
    rank = dist.get_rank() if world > 1 else 0
    return world, rank, created


class _CollateWithPixels:
    """A collate function that also tiles the batch's images (decoded by the dataset) on the CPU:
    batch["pixels"] holds the model's pixel kwargs as the PixelMaker makes them (uint8 tiles on our
    path). Picklable: it holds the image processor, not the model."""

    def __init__(self, collate, maker):
        self.collate, self.maker = collate, maker

    def __call__(self, samples):
        batch = self.collate(samples)
        if batch.get("input_ids") is not None and any(batch["visuals"]):
            batch["pixels"] = self.maker(batch["visuals"], torch.device("cpu"))
        return batch


class _StepBatches(torch.utils.data.Sampler):
    """Index lists of this rank's micro-batches, step after step (see the module doc)."""

    def __init__(self, n: int, cfg: TrainConfig, world: int, rank: int, start_step: int):
        self.n, self.cfg, self.world, self.rank, self.start = n, cfg, world, rank, start_step

    def _order(self, epoch: int) -> list[int]:
        if getattr(self, "_epoch", None) != epoch:
            g = torch.Generator().manual_seed(self.cfg.seed * 1009 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=g).tolist()
        return self._perm

    def __iter__(self):
        cfg, B = self.cfg, self.cfg.batch_size
        per_step = B * cfg.grad_accum * self.world
        for step in range(self.start, cfg.steps):
            first = step * per_step
            for micro in range(cfg.grad_accum):
                base = first + micro * B * self.world + self.rank * B
                yield [self._order((base + k) // self.n)[(base + k) % self.n] for k in range(B)]

    def __len__(self):
        return (self.cfg.steps - self.start) * self.cfg.grad_accum


def train(cfg: TrainConfig, model=None) -> dict:
    """Runs the training; returns {"losses": [per-step loss], "skipped": n, "truncated": n,
    "skip_reasons": [...], "checkpoint": final folder}."""
    from . import InterleaveModel, hf

    world, rank, created_group = _dist()
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    start_step, state = 0, None
    source = cfg.resume or cfg.model
    if model is None:
        model = InterleaveModel.from_pretrained(source, device=device)
    elif cfg.resume:
        raise ValueError("train: pass either a model or resume=, not both")
    if cfg.resume:
        state = torch.load(os.path.join(cfg.resume, "trainer_state.pt"), weights_only=False)
        start_step = state["step"]
    if cfg.reference:
        hf.unpatch(model.hf)
    attn = choose_attention(cfg, device)
    if attn == "flex_attention" and device.type == "cuda":
        _check_flex_head_widths(model.hf)
    if attn is not None:
        model.hf.set_attn_implementation(attn)
    varlen = cfg.pack and uses_varlen_attention(model.hf)
    trainable = set_trainable(model, cfg.tune)
    if cfg.activation_checkpointing:
        # transformers 5.x renamed it (the old name warns); 4.57 has only gradient_checkpointing_enable.
        enable = getattr(model.hf, "activation_checkpointing_enable", None) or model.hf.gradient_checkpointing_enable
        enable()
    model.hf.train()
    net = CausalLMLoss(model.hf, cfg.fused_loss and not cfg.reference)  # the reference path: transformers' head + CE
    if world > 1 and cfg.fsdp:
        # FSDP2 on the LLM's decoder layers (the bulk of a large model; every rank runs them every
        # step). The rest (vision tower, projector, newline, embeddings, head) stays replicated and its
        # gradients are all-reduced by hand below: a rank whose micro-batch holds no image does not
        # use the visual parameters, which a sharded unit cannot tolerate (mismatched collectives).
        from torch.distributed.fsdp import fully_shard
        for layer in model.hf.model.language_model.layers:
            fully_shard(layer)
        trainable = [p for p in model.hf.parameters() if p.requires_grad]  # fully_shard swaps in DTensor parameters
    elif world > 1:
        # find_unused_parameters: a step without multi-patch images leaves image_newline unused.
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None,
                                                        find_unused_parameters=True)
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = int(round(cfg.warmup_ratio * cfg.steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_with_warmup(s, cfg.steps, warmup))
    if state is not None:
        _load_optimizer(model, optimizer, state, world, cfg.fsdp)
        scheduler.load_state_dict(state["scheduler"])
        per_rank = state.get("rng_per_rank")
        if per_rank is not None and len(per_rank) != world:
            import warnings
            warnings.warn(f"train: {cfg.resume} was saved by {len(per_rank)} processes and is resumed by "
                          f"{world}: the data order and RNG streams differ from an uninterrupted run")
        _set_rng_state(per_rank[rank] if per_rank is not None and rank < len(per_rank) else state["rng"])
    sources = [s if isinstance(s, datamod.Source) else datamod.Source(s, cfg.image_root) for s in cfg.data]
    dataset = datamod.ConversationDataset(sources, model, max_len=cfg.max_len, image_format=cfg.image_format,
                                          front_ratio=cfg.front_ratio, num_frames=cfg.num_frames, seed=cfg.seed)
    pad = model.tokenizer.pad_token_id or 0
    collate = (functools.partial(datamod.collate_packed, max_len=cfg.max_len, pad_id=pad, varlen=varlen)
               if cfg.pack else functools.partial(datamod.collate, pad_id=pad))
    # The pixels stay uint8 until the patch embedding when the patched tower folds the normalization
    # in (our path); transformers' path (--reference) gets its normalized pixel_values.
    maker = model.pixel_maker(uint8=None)
    if cfg.tile_in_workers:
        collate = _CollateWithPixels(collate, maker)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=_StepBatches(len(dataset), cfg, world, rank, start_step),
                                         collate_fn=collate, num_workers=cfg.num_workers)
    use_bf16 = cfg.bf16 if cfg.bf16 is not None else device.type == "cuda"
    bar = None
    if cfg.progress and rank == 0:
        from tqdm.auto import tqdm
        bar = tqdm(total=cfg.steps, initial=start_step, desc="train", unit="step")
    result = {"losses": [], "skipped": 0, "truncated": 0, "skip_reasons": []}
    batches = iter(loader)
    for step in range(start_step, cfg.steps):
        t0 = time.perf_counter()
        with nvtx.range("train/data"):
            micro = [next(batches) for _ in range(cfg.grad_accum)]
        for b in micro:
            result["skipped"] += b["skipped"]
            result["truncated"] += b["truncated"]
            result["skip_reasons"] += b["skip_reasons"]
        if world == 1:
            micro = [b for b in micro if b["input_ids"] is not None]
        # The step's labelled-token count over micro-batches and ranks: the loss's denominator.
        count = torch.tensor(float(sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro
                                       if b["input_ids"] is not None)))
        if world > 1:
            torch.distributed.all_reduce(count)
        loss_sum = torch.zeros((), dtype=torch.float64)
        tokens = visual_tokens = 0
        for b in micro:
            if b["input_ids"] is None:
                # Every sample of this micro-batch was skipped, but every rank must take part in the
                # gradient collectives: a zero-weight pass over one padding token.
                dummy = torch.full((1, 2), pad, dtype=torch.long, device=device)
                (net(dummy, torch.ones_like(dummy), torch.full_like(dummy, -100)) * 0).backward()
                continue
            ids, labels = b["input_ids"].to(device), b["labels"].to(device)
            mask = b["attention_mask"].to(device) if b["attention_mask"] is not None else None
            extra = {"position_ids": b["position_ids"].to(device)} if "position_ids" in b else {}
            with nvtx.range("train/pixels"):
                if "pixels" in b:  # tiled in a DataLoader worker
                    pixels = to_model(b["pixels"], device, model.hf.dtype)
                else:
                    pixels = to_model(maker(b["visuals"], device), device, model.hf.dtype) if any(b["visuals"]) else {}
            with nvtx.range("train/forward"), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                ce = net(ids, mask, labels, **extra, **pixels)
            # x world: DDP averages gradients over ranks; the denominator already counts every rank.
            with nvtx.range("train/backward"):
                (ce * world / count.clamp(min=1).to(device)).backward()
            loss_sum += ce.detach().double().cpu()
            tokens += int((ids != pad).sum()) if cfg.pack else int(mask.sum())
            visual_tokens += b["visual_tokens"]
        if world > 1:
            torch.distributed.all_reduce(loss_sum)
        if world > 1 and cfg.fsdp:
            _all_reduce_replicated_grads(trainable, world)
        with nvtx.range("train/optimizer"):
            clip_grad_norm(trainable, cfg.max_grad_norm, world)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        loss = float(loss_sum / max(count.item(), 1))
        result["losses"].append(loss)
        if bar is not None:
            dt = time.perf_counter() - t0
            bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens * world / dt:.0f}", vis_tok_s=f"{visual_tokens * world / dt:.0f}",
                            lr=f"{scheduler.get_last_lr()[0]:.2e}")
            bar.update(1)
        done = step + 1
        if (cfg.save_every and done % cfg.save_every == 0) or done == cfg.steps:
            result["checkpoint"] = save_checkpoint(model, optimizer, scheduler, done, cfg, rank)
    if bar is not None:
        bar.close()
    if result["skipped"] and rank == 0:
        print(f"train: skipped {result['skipped']} samples, e.g. {result['skip_reasons'][:3]}")
    if created_group:
        # Every rank passes this barrier before any leaves; the group's gloo threads outlive
        # destroy_process_group all the same (see exit_worker, which torchrun scripts end with).
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return result


def exit_worker(code: int = 0) -> None:
    """Ends a torchrun worker after train() returned, without the interpreter's finalization.

    destroy_process_group() does not stop a gloo group's worker threads (gloo's shutdown is a no-op),
    and the group outlives it: DTensor's sharding caches keep FSDP2's device mesh alive. Those threads
    then meet the interpreter's teardown, where a C++ thread that touches a Python object exits
    mid-destructor and the rank aborts ("terminate called without an active exception": one rank
    of the 2-process FSDP2 test, twice in this project's CI runs, never in 22 local runs). The
    checkpoint is written and every rank has passed train()'s final barrier by now, so nothing is
    lost by leaving at once: output streams and logging are flushed first."""
    import logging
    import sys
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def clip_grad_norm(params, max_norm: float, world: int = 1) -> float:
    """Scales the gradients so that their global 2-norm is at most max_norm; returns the norm.
    Sums of squares in float64, sharded (FSDP2 DTensor) gradients summed over ranks, replicated ones
    counted once: the same norm in 1-process, DDP and FSDP runs (torch's clip_grad_norm_ does not
    mix sharded and plain gradients)."""
    from torch.distributed.tensor import DTensor
    sharded = torch.zeros((), dtype=torch.float64)
    replicated = torch.zeros((), dtype=torch.float64)
    grads = [p.grad for p in params if p.grad is not None]
    for g in grads:
        if isinstance(g, DTensor):
            sharded += g.to_local().detach().double().pow(2).sum().cpu()
        else:
            replicated += g.detach().double().pow(2).sum().cpu()
    if world > 1 and any(isinstance(g, DTensor) for g in grads):
        torch.distributed.all_reduce(sharded)
    total = float((sharded + replicated).sqrt())
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in grads:
            g.mul_(coef)
    return total


def _all_reduce_replicated_grads(params, world: int) -> None:
    """Averages the gradients of the parameters FSDP does not shard (plain tensors), in a fixed
    order, with zeros where a rank did not use a parameter."""
    from torch.distributed.tensor import DTensor
    for p in params:
        if isinstance(p, DTensor):
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        torch.distributed.all_reduce(p.grad)
        p.grad.div_(world)


def save_checkpoint(model, optimizer, scheduler, step: int, cfg: TrainConfig, rank: int) -> str:
    """Writes `out/step-N`: a transformers folder plus trainer_state.pt (step, optimizer, schedule,
    every rank's RNG states). Under FSDP every rank takes part in gathering the full (unsharded)
    weights and optimizer state, so the files are the same as a 1-process run's."""
    path = os.path.join(cfg.out, f"step-{step}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    state_dict = optim_state = None
    if cfg.fsdp and world > 1:  # gather the shards (every rank takes part)
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)
        full = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state_dict = get_model_state_dict(model.hf, options=full)
        # Keyed by parameter name, whole tensors: rank 0's local optimizer.state_dict() would hold
        # only its own shards of the sharded layers' moments.
        optim_state = get_optimizer_state_dict(model.hf, optimizer, options=full)
    rng = [_rng_state()]
    if world > 1:
        rng = [None] * world
        torch.distributed.all_gather_object(rng, _rng_state())
    if rank == 0:
        os.makedirs(path, exist_ok=True)
        model.hf.save_pretrained(path, state_dict=state_dict)
        if model.tokenizer is not None:
            model.tokenizer.save_pretrained(path)
        torch.save({"step": step, "optimizer": optim_state if optim_state is not None else optimizer.state_dict(),
                    "fsdp": bool(cfg.fsdp and world > 1),
                    "scheduler": scheduler.state_dict(), "rng": rng[0], "rng_per_rank": rng,
                    "config": {k: v for k, v in dataclasses.asdict(cfg).items()
                               if isinstance(v, (int, float, str, bool, type(None)))}},
                   os.path.join(path, "trainer_state.pt"))
    if world > 1:
        torch.distributed.barrier()
    return path


def _load_optimizer(model, optimizer, state: dict, world: int, fsdp: bool) -> None:
    """Restores the optimizer saved by save_checkpoint. An FSDP checkpoint holds the full state keyed
    by parameter name; each rank takes its own shards of it (and FSDP resumes only under FSDP: the
    two layouts differ)."""
    saved_fsdp = bool(state.get("fsdp", False))
    if saved_fsdp != bool(fsdp and world > 1):
        raise ValueError("train: the checkpoint's optimizer state was saved "
                         f"{'with' if saved_fsdp else 'without'} FSDP; resume it the same way "
                         "(--fsdp under torchrun with the same number of processes)")
    if not saved_fsdp:
        optimizer.load_state_dict(state["optimizer"])
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    set_optimizer_state_dict(model.hf, optimizer, optim_state_dict=state["optimizer"],
                             options=StateDictOptions(full_state_dict=True))


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m interleave train", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--data", action="append", required=True, help="a JSON/JSONL file; FILE:WEIGHT for a mixture")
    p.add_argument("--image-root", default="")
    p.add_argument("--out", required=True)
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("model", "data", "out", "image_root", "bf16", "progress"):
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool) or isinstance(f.default, bool):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            kind = {int: int, float: float}.get(type(f.default), str)
            p.add_argument(flag, type=kind, default=f.default)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None)
    args = vars(p.parse_args(argv))
    sources = []
    for item in args.pop("data"):
        path, _, weight = item.rpartition(":") if not os.path.isfile(item) else (item, "", "")
        sources.append(datamod.Source(path, args["image_root"], float(weight) if weight else 1.0))
    cfg = TrainConfig(data=sources, **{k: v for k, v in args.items()})
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"final loss {result['losses'][-1]:.4f}; checkpoint {result.get('checkpoint')}; "
              f"skipped {result['skipped']}, truncated {result['truncated']}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        exit_worker(0)  # see exit_worker: a torchrun worker skips the interpreter's teardown
    return 0

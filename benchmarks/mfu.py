"""Model-FLOP utilisation: useful FLOPs per second over this machine's measured dense matmul FLOPs per second.

Useful FLOPs are counted from the model's shapes on real (unpadded) tokens:

  forward    2 x the parameters of every matmul in the decoder stack, per real token (q, k, v, o, MLP;
             the embedding is a lookup and is not counted);
             attention scores: QK^T and AV, 2 x 2 x heads x head_dim per (query, key) pair, causal pairs
             only (n(n+1)/2 for a sequence of n real tokens), per layer;
             LM head: 2 x hidden x vocab at each real position where the method computes logits (CLO and
             its reference pass: response positions; TRL SFT and DPO: every position; generation: one
             per new token).
  backward   per matmul, what autograd computes in that step (read from the model by forward hooks):
             + 2 x its parameters for its input's gradient when the input needs one (something trainable
             lies below it), + 2 x its parameters for its weight's gradient when the weight is trainable;
             attention scores: + 2 x their forward in each layer where q, k or v needs a gradient.
  not counted: padding positions, norms, activations, softmax, the loss, the optimizer step.

The matmul throughput is an N x N x N GEMM at the dtype the call's matmuls run in (fp32 on a CPU; on a
GPU bf16 for training steps, which autocast, and the weights' dtype for the reference pass and
generation) and this run's thread count, timed right before each measured call; a call's utilisation is
against the GEMM rate measured beside it (median over rounds for the training steps). Times are wall
time on a GPU; on a CPU, process CPU time / threads for the call and the GEMM alike, so other jobs on a
shared machine slow neither figure (a call's single-threaded stretches then count at their CPU time). A GEMM at the
model's own MLP shape is printed beside it: what a matmul of this model's width can reach here.

The trainers run with the kit's defaults for this machine (training_profile): on a CPU a CLO batch is forwarded
in chunks of rows of similar length (CLOConfig.forward_chunk_padding); the same step with the batch in one
forward is measured beside it, on the same trainer, when the defaults chunk.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from benchmarks.harness import Context, median, synchronize, timed

NAME = "mfu"
TARGETS = {
    "mfu_clo_step": (">=", 0.5, "CLO training step: useful FLOP/s / measured GEMM FLOP/s"),
    "mfu_clo_step_one_forward": (
        None,
        None,
        "CLO training step, the padded batch in one forward (forward_chunk_padding=None): the same",
    ),
    "mfu_sft_step": (None, None, "TRL SFT step: useful FLOP/s / GEMM FLOP/s"),
    "mfu_dpo_step": (None, None, "TRL DPO step (precomputed reference): useful FLOP/s / GEMM FLOP/s"),
    "mfu_reference_pass": (None, None, "CLO reference pass (forward only): useful FLOP/s / GEMM FLOP/s"),
    "mfu_generation": (">=", 0.40, "batched generation: useful FLOP/s / GEMM FLOP/s"),
}
RULE = (
    "useful FLOPs: 2 x matmul params per real token forward + causal attention scores + LM head where "
    "logits are computed; backward: +2 x params for each input gradient and each trainable weight "
    "autograd computes, 2 x attention scores where q/k/v need a gradient; padding not counted"
)
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation", "aten::matmul")


# --------------------------------------------------------------------------- counting


@dataclass
class FlopCosts:
    """FLOPs per real token (stack), per logit position (head), and attention widths (sum over layers)."""

    stack_forward: int = 0
    stack_backward: int = 0
    head_forward: int = 0
    head_backward: int = 0
    attention_width: int = 0
    attention_backward_width: int = 0

    def sequence(self, n: int, head_positions: int, train: bool) -> float:
        """Useful FLOPs of one sequence of n real tokens with logits at `head_positions` of them."""
        pairs = n * (n + 1) / 2
        flops = n * self.stack_forward + head_positions * self.head_forward + 4 * pairs * self.attention_width
        if train:
            flops += (
                n * self.stack_backward
                + head_positions * self.head_backward
                + 8 * pairs * self.attention_backward_width
            )
        return flops


def _attention_modules(model):
    return [m for m in model.modules() if type(m).__name__.endswith("Attention")]


def flop_costs(model) -> FlopCosts:
    """Per-token costs of `model` with its current trainable set, read by one tiny forward with hooks."""
    import torch

    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    width = cfg.num_attention_heads * head_dim
    head = model.get_output_embeddings()
    costs = FlopCosts()
    hooks = []

    def linear_hook(module, inputs, output):
        params = 2 * module.in_features * module.out_features
        backward = params * (int(inputs[0].requires_grad) + int(module.weight.requires_grad))
        if module is head:
            costs.head_forward += params
            costs.head_backward += backward
        else:
            costs.stack_forward += params
            costs.stack_backward += backward

    def attention_hook(module, args, kwargs, output):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        qkv_trainable = any(
            p.requires_grad
            for n, p in module.named_parameters()
            if n.split(".")[0] not in ("o_proj", "out_proj", "dense")
        )
        costs.attention_width += width
        if (hidden is not None and hidden.requires_grad) or qkv_trainable:
            costs.attention_backward_width += width

    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    for m in _attention_modules(model):
        hooks.append(m.register_forward_hook(attention_hook, with_kwargs=True))
    device = next(model.parameters()).device
    try:
        with torch.enable_grad():
            model(input_ids=torch.tensor([[1, 2]], device=device), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return costs


class HeadCounter:
    """Counts the real positions at which the LM head runs during a call (forward hook on the head)."""

    def __init__(self, model):
        self.positions = 0
        self.mask = None  # (B, L) attention mask of the batch being run
        self._hook = model.get_output_embeddings().register_forward_hook(self._count)

    def _count(self, module, inputs, output):
        x = inputs[0]
        computed = x.shape[:-1].numel()
        if self.mask is not None and x.dim() == 3 and tuple(x.shape[:2]) == tuple(self.mask.shape):
            computed = int(self.mask.sum())  # every position: the real ones are useful
        self.positions += computed

    def remove(self):
        self._hook.remove()


def batch_flops(costs: FlopCosts, batch: dict, head_positions: int, train: bool) -> tuple[float, int]:
    """(useful FLOPs, real tokens) of one batch of right- or left-padded rows, or of sequences packed in a row."""
    mask = batch.get("attention_mask")
    if "segment_ids" in batch:  # padding-free: each sequence attends to itself only
        lengths = batch["segment_ids"].flatten().bincount().tolist()
    elif mask is not None:
        lengths = mask.sum(-1).tolist()
    else:
        lengths = [batch["input_ids"].shape[1]] * len(batch["input_ids"])
    flops = sum(costs.sequence(int(n), 0, train) for n in lengths)
    flops += head_positions * (costs.head_forward + (costs.head_backward if train else 0))
    return flops, int(sum(lengths))


# --------------------------------------------------------------------------- matmul throughput


def training_dtype():
    """What a training step's matmuls run in: bf16 autocast on a GPU (training_profile), fp32 on a CPU."""
    import torch

    return torch.bfloat16 if torch.cuda.is_available() else torch.float32


def clock(wall: float, cpu: float) -> float:
    """The time a rate is measured over: wall time on a GPU; on a CPU, process CPU time divided by the
    thread count, so a step and the GEMM descheduled by other jobs on a shared machine are compared
    on the time they actually ran."""
    import torch

    return wall if torch.cuda.is_available() else cpu / torch.get_num_threads()


def gemm_rate(m: int, k: int, n: int, dtype=None, seconds: float = 0.5) -> float:
    """FLOP/s of an (m x k) @ (k x n) matmul at `dtype` (default: training_dtype()) on the model's device,
    over the calls that fit in `seconds` after a warm-up."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = dtype or training_dtype()
    a = torch.randn(m, k, dtype=dtype, device=device)
    b = torch.randn(k, n, dtype=dtype, device=device)
    return 2 * m * k * n * _calls_per_second(lambda: torch.mm(a, b), seconds)


def _calls_per_second(call, seconds: float) -> float:
    """Calls of `call` per second (mfu.clock) over those that fit in `seconds` after a warm-up."""
    warm = time.perf_counter()
    while time.perf_counter() - warm < seconds / 5:  # thread pool and clock frequency up before the count
        call()
        synchronize()
    calls, w0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - w0 < seconds:
        call()
        synchronize()
        calls += 1
    return calls / clock(time.perf_counter() - w0, time.process_time() - c0)


def peak_gemm(args, dtype=None) -> float:
    return gemm_rate(args.gemm_size, args.gemm_size, args.gemm_size, dtype)


def packed_gemm_rate(m: int, k: int, n: int, seconds: float = 0.5) -> float | None:
    """FLOP/s of the same matmul through oneDNN on a packed fp32 weight on a CPU
    (clo_utils.evaluation.packed_linear), or None where that path does not apply."""
    import torch

    from clo_utils.evaluation.packed_linear import PACKED, linear_backend

    layer = torch.nn.Linear(k, n, bias=False)
    if torch.cuda.is_available() or linear_backend(layer) != PACKED:
        return None
    a = torch.randn(m, k)
    packed = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach())

    return (
        2
        * m
        * k
        * n
        * _calls_per_second(lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], ""), seconds)
    )


def inference_peak_gemm(args, dtype=None) -> float:
    """The GEMM rate inference can reach here: the higher of torch.mm and, on a CPU in fp32, oneDNN on a
    packed weight (the path the decoding loop takes): MFU of generation is against the better one."""
    import torch

    rate = peak_gemm(args, dtype)
    if dtype in (None, torch.float32):
        rate = max(rate, packed_gemm_rate(args.gemm_size, args.gemm_size, args.gemm_size) or 0.0)
    return rate


# --------------------------------------------------------------------------- the measured calls


def measure_steps(ctx: Context, trainers: dict, costs: dict[str, FlopCosts], rounds: list[list[int]]) -> dict:
    """Training steps of every trainer, round-robin, each round after a GEMM measurement."""
    from benchmarks.steps import one_step

    args = ctx.args
    out = {name: {"flops": [], "tokens": [], "seconds": [], "gemm": []} for name in trainers}
    for r, idx in enumerate(rounds):
        line = []
        for name, entry in trainers.items():
            trainer = entry["trainer"]
            batch = trainer._prepare_inputs(entry["batch"](idx))
            gemm = peak_gemm(args)
            counter = HeadCounter(trainer.model)
            counter.mask = batch.get("attention_mask")
            variant = "forward_chunk_padding" in entry  # a CLO variant sharing the trainer, its own setting
            if variant:
                chunking, trainer.forward_chunk_padding = trainer.forward_chunk_padding, entry["forward_chunk_padding"]
            try:
                seconds = clock(*one_step(trainer, batch))
            finally:
                counter.remove()
                if variant:
                    trainer.forward_chunk_padding = chunking
            flops, tokens = batch_flops(costs[name], batch, counter.positions, train=True)
            if r >= args.warmup:
                for key, value in (("flops", flops), ("tokens", tokens), ("seconds", seconds), ("gemm", gemm)):
                    out[name][key].append(value)
            line.append(f"{name} {seconds:.1f} s ({flops / seconds / gemm:.2f})")
        print(f"  round {r}{' (warm-up)' if r < args.warmup else ''}: " + ", ".join(line), flush=True)
    return out


def measure_reference_pass(ctx: Context, trainer, costs: FlopCosts) -> dict:
    """CLOTrainer's reference pass over the benchmark seeds (forward only), its batches recorded."""
    import torch

    examples = [dict(ex) for ex in trainer.train_dataset]
    ref = torch.full((len(examples), 4), float("nan"))
    counter = HeadCounter(trainer.model)
    original = trainer._response_logps
    record = {"flops": 0.0, "tokens": 0}

    def recorded(model, batch):
        counter.mask, counter.positions = batch["attention_mask"], 0
        result = original(model, batch)
        flops, tokens = batch_flops(costs, batch, counter.positions, train=False)
        record["flops"] += flops
        record["tokens"] += tokens
        return result

    gemm = peak_gemm(ctx.args, next(trainer.model.parameters()).dtype)  # no autocast in the reference pass
    trainer._response_logps = recorded
    try:
        seconds = clock(*timed(lambda: trainer._reference_pass(examples, ref)))
    finally:
        del trainer._response_logps
        counter.remove()
    return {**record, "seconds": seconds, "gemm": gemm}


def measure_generation(ctx: Context, model, tok, costs: FlopCosts) -> dict:
    """clo_utils.evaluation.evaluate.generate_answers at the demo's batch size, the positions of its batches
    counted (clo_utils.evaluation.decoding.DecodeStats)."""
    from benchmarks.generation import useful_flops
    from clo_utils.evaluation.decoding import DecodeStats
    from clo_utils.evaluation.evaluate import generate_answers

    args = ctx.args
    prompts = [s["prompt_tgt"] for s in ctx.seeds(args.gen_prompts)]
    generate_answers(model, tok, prompts[:2], max_new_tokens=4, batch_size=2, progress=False)  # warm-up
    gemm = inference_peak_gemm(args, next(model.parameters()).dtype)
    stats = DecodeStats()
    seconds = clock(
        *timed(
            lambda: generate_answers(
                model,
                tok,
                prompts,
                max_new_tokens=args.gen_tokens,
                batch_size=args.gen_batch,
                progress=False,
                stats=stats,
            )
        )
    )
    tokens = sum(p + n for p, n in stats.rows)
    flops = useful_flops(costs, stats)
    return {"flops": flops, "tokens": tokens, "seconds": seconds, "gemm": gemm, "prompts": len(prompts)}


# --------------------------------------------------------------------------- profile


def profile_step(trainer, batch, useful_matmul_flops: float, gemm: float) -> dict:
    """One CLO step under torch.profiler: the share of time in matmul kernels, the rate they reach, and
    the other ops that take the rest."""
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.steps import one_step

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        one_step(trainer, batch)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
    others = sorted((e for e in events if e.key not in MATMUL_OPS), key=lambda e: -e.self_cpu_time_total)[:6]
    rate = useful_matmul_flops / (matmul / 1e6) if matmul else 0.0
    out = {
        "matmul_share": matmul / total,
        "matmul_rate_vs_gemm": rate / gemm,
        "top_other_ops": [{"op": e.key, "share": e.self_cpu_time_total / total} for e in others],
    }
    print(
        f"  profile of one CLO step: matmul kernels {out['matmul_share']:.0%} of op time, running at "
        f"{out['matmul_rate_vs_gemm']:.2f} of the GEMM rate on the useful matmul FLOPs; the rest: "
        + ", ".join(f"{o['op']} {o['share']:.0%}" for o in out["top_other_ops"])
    )
    return out


# --------------------------------------------------------------------------- section


def run(ctx: Context) -> None:
    from benchmarks.steps import build_trainers

    args, results = ctx.args, ctx.results
    B = args.mfu_batch_seeds
    n_rounds = args.warmup + args.steps
    seeds = ctx.seeds(max(B * n_rounds, B))
    print(f"  counting rule: {RULE}")
    trainers = build_trainers(args, ctx.work, seeds, batch_seeds=B, methods=("clo", "sft", "dpo_precomputed"))
    chunks = trainers["clo"]["trainer"].forward_chunk_padding
    if chunks is not None:  # the same CLO trainer, each padded batch in one forward
        trainers["clo_one_forward"] = {**trainers["clo"], "forward_chunk_padding": None}
    costs = {name: flop_costs(entry["trainer"].model) for name, entry in trainers.items()}
    c = costs["clo"]
    cfg = trainers["clo"]["trainer"].model.config
    print(
        f"  per token: forward {c.stack_forward / 1e6:.0f} MFLOP (stack) + {c.head_forward / 1e6:.0f} MFLOP "
        f"(LM head, per logit position); backward (CLO's trainable set) {c.stack_backward / 1e6:.0f} + "
        f"{c.head_backward / 1e6:.0f} MFLOP; attention width {c.attention_width} summed over layers"
    )
    peak = peak_gemm(args)
    rounds = [[(r * B + k) % len(seeds) for k in range(B)] for r in range(n_rounds)]
    tokens = trainers["clo"]["batch"](rounds[0])["input_ids"].numel()  # the rows x width of a CLO batch
    shape = gemm_rate(tokens, cfg.hidden_size, getattr(cfg, "intermediate_size", 4 * cfg.hidden_size))
    dtype = str(training_dtype()).replace("torch.", "")
    print(
        f"  GEMM {args.gemm_size}^3 ({dtype}): {peak / 1e9:.1f} GFLOP/s; at the "
        f"model's MLP shape ({tokens} x {cfg.hidden_size} x {getattr(cfg, 'intermediate_size', '?')}): "
        f"{shape / 1e9:.1f} GFLOP/s ({shape / peak:.2f} of it)"
    )
    steps = measure_steps(ctx, trainers, costs, rounds)
    section = {
        "rule": RULE,
        "gemm_flops": peak,
        "gemm_model_shape_flops": shape,
        "gemm_dtype": dtype,
        "costs": {k: v.__dict__ for k, v in costs.items()},
        "steps": steps,
    }
    rows = {"clo": "mfu_clo_step", "clo_one_forward": "mfu_clo_step_one_forward", "sft": "mfu_sft_step"}
    rows["dpo_precomputed"] = "mfu_dpo_step"
    for name, ratio in rows.items():
        if name not in steps:
            continue
        s = steps[name]
        mfu = median([f / w / g for f, w, g in zip(s["flops"], s["seconds"], s["gemm"])])
        tok_s = sum(s["tokens"]) / sum(s["seconds"])
        results.add(
            TARGETS,
            ratio,
            mfu,
            f"{median([f / w for f, w in zip(s['flops'], s['seconds'])]) / 1e9:.1f} vs "
            f"{median(s['gemm']) / 1e9:.1f} GFLOP/s; {tok_s:.0f} real tokens/s; "
            f"{B} seeds per step"
            + (f", padded batch forwarded in chunks of <= {chunks:.0%} padding" if name == "clo" and chunks else ""),
        )
    clo = trainers["clo"]["trainer"]
    ref = measure_reference_pass(ctx, clo, costs["clo"])
    section["reference_pass"] = ref
    results.add(
        TARGETS,
        "mfu_reference_pass",
        ref["flops"] / ref["seconds"] / ref["gemm"],
        f"{ref['flops'] / ref['seconds'] / 1e9:.1f} vs {ref['gemm'] / 1e9:.1f} GFLOP/s; "
        f"{ref['tokens'] / ref['seconds']:.0f} real tokens/s",
    )
    if results.status("mfu_clo_step") == "MISS" or args.profile:
        idx = rounds[-1]
        batch = clo._prepare_inputs(trainers["clo"]["batch"](idx))
        from clo_utils.losses import response_positions

        real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()
        heads = int(response_positions(batch["labels"]).sum())
        matmul_flops = real * (c.stack_forward + c.stack_backward) + heads * (c.head_forward + c.head_backward)
        section["profile_clo_step"] = profile_step(clo, batch, matmul_flops, median(steps["clo"]["gemm"]))
    model = clo.model
    trainers.clear()
    gen = measure_generation(ctx, model, clo.processing_class, flop_costs(model))
    section["generation"] = gen
    results.add(
        TARGETS,
        "mfu_generation",
        gen["flops"] / gen["seconds"] / gen["gemm"],
        f"{gen['flops'] / gen['seconds'] / 1e9:.2f} vs {gen['gemm'] / 1e9:.1f} GFLOP/s; "
        f"{gen['tokens'] / gen['seconds']:.0f} tokens/s; batch {args.gen_batch}, {args.gen_tokens} new tokens",
    )
    results.sections["mfu"] = section

"""Generation throughput for evaluation (clo_utils.evaluation.evaluate.generate_answers): the greedy loop
(clo_utils.evaluation.decoding: every uncached batch's prompts in one continuously refilled decode batch of up to
128 rows over an in-place KV cache, clo_utils.evaluation.continuous) against transformers' generate
(shrinking=False, the earlier path, batch by batch), the same prompts and batch_size (the loop's batches only key
the generation cache; it decodes up to 128 rows together), in this one process; their answers compared token for
token; the loop vs one prompt at a time (decode_rows=1); beside it the ceiling of batching on this device (B x a
decode step at batch 1 / a step at batch B, equal lengths, no early stops; wall time).

Times are process CPU time / threads on a CPU (other jobs on a shared machine slow neither side), wall time on
a GPU. Each path runs `--gen-rounds` times, alternating; the ratio is of their medians.

Measured here (SmolLM2-135M fp32, the 48 bench prompts, batch 25, 40 new tokens at most, 1 torch thread on a
shared 2-core AMD EPYC, load average 4-6, `bench.py --only generate --threads 1`, three invocations, the last
with prefill cut to 256 positions a forward):
  transformers' generate 28.5, 29.0 s | 32.0, 33.9 s | 30.2, 29.7 s (padding 0.39 of computed positions, MFU
  0.32-0.36 of a 93-97 GFLOP/s GEMM); the loop 18.2, 19.5 s | 18.8, 20.7 s | 20.2, 18.4 s (padding 0.05, 0.05,
  0.01; MFU 0.53-0.56): 1.55x | 1.67x | 1.55x, the 48 answers identical each time. (The shrinking loop of one
  batch at a time before it: 23.8 s against 30.7 s, 1.29x.)
  The loop's time (English prompts of the smoke set, same settings): prefill 6.7 s (2187 positions in 2
  chunks, ~0.72 of the GEMM rate), decode 10.8 s (41 steps of ~45 rows, ~263 ms a step, ~0.47 of it).
  Demo-like (120 English prompts of <= 64 tokens from the packaged english_sft set, batch 60 as in
  params/demo.yaml, 40 new tokens, two alternating rounds, a one-off script calling generate_answers with
  shrinking=False/True): generate 46.2, 47.0 s (padding 0.21), the loop 38.2, 39.4 s (padding 0.05): 1.19x;
  with the prefill cut: generate 50.5, 51.7 s, the loop 40.9, 39.1 s (padding 0.01): 1.26x; 0 of 120 answers
  differing each time.
  A fourth invocation (load average 1-3.4, a study's evaluation running beside it; GEMM 88 GFLOP/s): generate
  31.3, 28.3 s, the loop 18.5, 17.7 s (padding 0.01, MFU 0.63): 1.65x, 48 answers identical. The same
  direction with its reference NLL (`evaluation_comparison`): generate then the earlier padded NLL pass 70.6,
  67.2 s, the loop with each reference scored in its prompt's prefill 43.3, 42.8 s: 1.60x; 0 answers and 0 of
  48 reference scores differing (corpus NLL 5.045098 both).
  A fifth invocation, the loop's linear layers through oneDNN on packed weights (load average 0.7-1.0; the
  GEMM rate is now the higher of torch.mm, 88 GFLOP/s, and oneDNN packed, 108.7): generate 30.4, 29.0 s, the
  loop 16.7, 15.0 s (MFU 0.59 of 108.7), the loop with torch's default linear layers 19.1, 20.7 s: 1.87x
  generate, 1.26x from the packing; 48 answers identical on all three paths. With the reference NLL: 63.6,
  60.2 s against 34.4, 32.7 s (1.85x); 0 answers and 0 reference scores differing.
Where the loop's time went before the packing (torch.profiler over one call on the 48 bench prompts, 1 thread,
18.2 s of op time): GEMMs 13.4 s (prefill 5.8 s, at ~0.85 of the torch.mm rate; decode layers 5.5 s, e.g.
67 GFLOP/s for 48 x 576 -> 1536; the decode LM head 1.65 s at ~53 GFLOP/s; the prefill's LM head at each
prompt's last position 0.47 s, a bmm at M = 1 per row, as in generate), decode attention 1.9 s (each step reads
every active row's keys and values up to the longest row, ~12 MB a layer at 48 rows: ~2-3 ms a call against
~1 ms on the same tensors kept in cache), prefill attention 0.3 s, elementwise and copies 1.6 s. The loop
computes the real positions and little else (padding 0.01), so the GEMMs' own rate was what was left to move.
Tried and kept:
  - prefill forwards cut to 256 padded positions on a CPU (activations stay in cache): prefill 6.0, 6.0, 6.2 s
    against 7.0, 7.3, 6.4 s uncut (512: 6.3, 1024: 6.5, 128: 7.1; English smoke prompts, one process each).
  - the linear layers through oneDNN on weights packed once per call (clo_utils.evaluation.packed_linear;
    torch.ops.mkldnn._reorder_linear_weight and _linear_pointwise, what inductor's CPU freezing uses). torch's
    CPU linear is MKL's sgemm, which on this AMD processor runs at 74 GFLOP/s for 48 x 576 -> 1536 and 51 for
    the LM head (48 x 576 -> 49152); oneDNN on the packed weight 102 and 92-98 (1 thread, process CPU time,
    the batch-size hint of the packing makes no difference). The same fp32 products summed in another order:
    outputs within ~1e-6, the greedy answers identical on the bench (above) and on the demo's 3,360. On an
    Intel CPU, where MKL runs its AVX-512 kernels, the gain is unmeasured.
Tried and not kept:
  - torch.compile (inductor, dynamic=True: the decode batch changes shape at every stop and every step's
    cache is one column wider), the loop's answers to the 48 bench prompts, 1 thread, process CPU time: the
    whole forward compiled: 326 s for the first call (compiling), then 22.2 and 23.0 s against 20.4 s
    uncompiled; only the MLPs and RMSNorms compiled (the elementwise work inductor fuses): 22.5 s first call,
    then 19.9 and 19.6 s against 18.2 s. Answers identical both times; slower both times, before counting the
    compile that every evaluation process would pay. A static cache would need a compiled step per shape on
    top. On a GPU the trade differs: unmeasured.
  - the LM head as (W @ x.T).T instead of x @ W.T: no faster at M=46 (44 vs 52 GFLOP/s).
  - contiguous keys/values or an additive float mask for sdpa: ~0.1 ms a layer-step at 46 rows, not worth a copy.
  - MKL-prepacked weights (torch.ops.mkl._mkl_reorder_linear_weight and _mkl_linear) at the decode step's
    shapes, M = 46, 1 thread, process CPU time: 51.7 vs 56.3 GFLOP/s (576 -> 1536), 56.9 vs 55.1
    (1536 -> 576), 79.5 vs 73.7 (576 -> 576), 49.9 vs 46.5 (the LM head); bitwise the same results, the gain
    within noise: MKL's kernels, not its repacking, set the rate.
Not tried: prefill packed into the decode steps (mixed batches: a step's GEMMs would carry prompt tokens
beside the ~45 decode rows; it needs attention over a flattened cache, and on the bench every prompt is
prefilled before the first decode step anyway), decode attention over each row's own columns only (a custom
attention function), bf16 weights on CPU (it changes the arithmetic, so greedy answers could change).
"""

from __future__ import annotations

import time

from benchmarks.harness import Context, fresh_model, median, synchronize, timed

NAME = "generate"
TARGETS = {
    "generate_speedup_vs_generate": (
        ">=",
        1.8,
        "generation: transformers' generate time / the shrinking loop's time, same prompts and batch",
    ),
    "generate_answers_differing": ("==", 0, "greedy answers that differ between the two paths (of all prompts)"),
    "generate_batched_speedup": (">=", 4.0, "generation: one-at-a-time time (decode_rows 1) / batched time"),
    # how much of the speedup is the linear layers' GEMM path (clo_utils.evaluation.packed_linear)
    "generate_speedup_packed_linear": (None, None, "generation: the loop unpacked / packed"),
    # B x a decode step at batch 1 / a step at batch B (equal lengths): the most batching can give here
    "generate_decode_step_ceiling": (None, None, "generation: batching's ceiling on this device"),
    "evaluate_speedup_vs_earlier": (
        None,
        None,
        "answers + reference NLL of one direction: generate then a padded NLL pass / the loop with the NLL in its prefill",
    ),
    "evaluate_nll_differing": ("==", 0, "reference NLL sums differing by more than 1e-5 (relative) between the paths"),
}


def path_run(
    model, tok, prompts, args, batch_size: int, shrinking: bool, decode_rows: int | None = None, packed: bool = True
) -> dict:
    """One generate_answers call: its answers, its time (mfu.clock) and its DecodeStats. `packed=False`:
    the loop with its linear layers left to torch's default (clo_utils.evaluation.packed_linear off)."""
    import contextlib
    from unittest import mock

    from benchmarks.mfu import clock
    from clo_utils.evaluation.decoding import DecodeStats
    from clo_utils.evaluation.evaluate import generate_answers

    stats = DecodeStats()
    out = {}
    unpacked = mock.patch("clo_utils.evaluation.packed_linear._ops_available", return_value=False)

    def call():
        with contextlib.nullcontext() if packed else unpacked:
            out["answers"] = generate_answers(
                model,
                tok,
                prompts,
                max_new_tokens=args.gen_tokens,
                batch_size=batch_size,
                progress=False,
                shrinking=shrinking,
                stats=stats,
                decode_rows=decode_rows,
            )

    out["seconds"] = clock(*timed(call))
    out["stats"] = stats
    return out


def useful_flops(costs, stats) -> float:
    """mfu.py's counting rule on a generation call: each row's prompt and fed-back tokens through the
    stack with causal attention, the LM head once per new token."""
    return sum(costs.sequence(p + n - 1, 0, train=False) + n * costs.head_forward for p, n in stats.rows)


def run(ctx: Context) -> None:
    from benchmarks.mfu import flop_costs, inference_peak_gemm

    args, results = ctx.args, ctx.results
    model, tok, _ = fresh_model(args.model, "attention")
    prompts = [s["prompt_tgt"] for s in ctx.seeds(args.gen_prompts)]
    source = "clo_utils.evaluation.evaluate.generate_answers"
    costs = flop_costs(model)
    for shrinking in (False, True):  # warm-up of both paths
        path_run(model, tok, prompts[:2], args, 2, shrinking)
    paths = {"generate": (False, True), "shrinking": (True, True), "unpacked": (True, False)}
    runs = {label: [] for label in paths}
    gemm = []
    for _ in range(args.gen_rounds):
        gemm.append(inference_peak_gemm(args, next(model.parameters()).dtype))
        for label, (shrinking, packed) in paths.items():
            runs[label].append(path_run(model, tok, prompts, args, args.gen_batch, shrinking, packed=packed))
    section = {"source": source, "prompts": len(prompts), "batch_size": args.gen_batch, "gemm": gemm}
    for label, rs in runs.items():
        s = rs[0]["stats"]
        flops = useful_flops(costs, s)
        secs = [r["seconds"] for r in rs]
        section[label] = {
            "seconds": secs,
            "computed_positions": s.computed,
            "real_positions": s.real,
            "padding_share": s.padding_share,
            "useful_flops": flops,
            "mfu": flops / median(secs) / median(gemm),
            "new_tokens": sum(n for _, n in s.rows),
        }
        print(
            f"  {label:9s}: {', '.join(f'{x:.1f}' for x in secs)} s; {s.computed} positions computed, "
            f"{s.real} real (padding {s.padding_share:.1%}); {section[label]['new_tokens']} new tokens; "
            f"MFU {section[label]['mfu']:.2f} of {median(gemm) / 1e9:.1f} GFLOP/s"
        )
    old, new = section["generate"], section["shrinking"]
    reference = runs["generate"][0]["answers"]
    every = [r["answers"] for rs in runs.values() for r in rs]
    differing = [i for i in range(len(prompts)) if any(answers[i] != reference[i] for answers in every)]
    section["differing_prompts"] = differing
    results.add(
        TARGETS,
        "generate_speedup_vs_generate",
        median(old["seconds"]) / median(new["seconds"]),
        f"{len(prompts)} prompts, batch {args.gen_batch}, {args.gen_tokens} new tokens at most: "
        f"{median(old['seconds']):.1f} s vs {median(new['seconds']):.1f} s (median of {args.gen_rounds}); "
        f"MFU {old['mfu']:.2f} -> {new['mfu']:.2f}, padding {old['padding_share']:.2f} -> {new['padding_share']:.2f}",
    )
    results.add(
        TARGETS,
        "generate_answers_differing",
        len(differing),
        f"of {len(prompts)} greedy answers, compared as text after every round of the three paths",
    )
    unpacked = section["unpacked"]
    results.add(
        TARGETS,
        "generate_speedup_packed_linear",
        median(unpacked["seconds"]) / median(new["seconds"]),
        f"the loop with torch's default linear layers / with oneDNN on packed weights: "
        f"{median(unpacked['seconds']):.1f} s vs {median(new['seconds']):.1f} s",
    )
    results.sections["generation"] = section

    t0 = time.perf_counter()
    one = path_run(model, tok, prompts, args, 1, True, decode_rows=1)
    synchronize()
    section["one_at_a_time"] = {"seconds": one["seconds"], "wall": time.perf_counter() - t0}
    results.add(
        TARGETS,
        "generate_batched_speedup",
        one["seconds"] / median(new["seconds"]),
        f"{len(prompts) / one['seconds']:.2f} vs {len(prompts) / median(new['seconds']):.2f} prompts/s, "
        f"batch {args.gen_batch}, the shrinking loop",
    )
    section["decode_step"] = ceiling = decode_step_ceiling(model, tok, args.gen_batch, steps=args.gen_tokens)
    results.add(
        TARGETS,
        "generate_decode_step_ceiling",
        ceiling["ceiling"],
        f"one decode step: {ceiling['ms_per_step_batch_1']:.0f} ms at batch 1, "
        f"{ceiling['ms_per_step_batched']:.0f} ms at batch {args.gen_batch}",
    )
    references = [s["response_tgt"] for s in ctx.seeds(args.gen_prompts)]
    section["with_reference_nll"] = direction = evaluation_comparison(model, tok, prompts, references, args)
    results.add(
        TARGETS,
        "evaluate_speedup_vs_earlier",
        median(direction["earlier"]["seconds"]) / median(direction["kit"]["seconds"]),
        f"{len(prompts)} prompts and references, batch {args.gen_batch}: "
        f"{median(direction['earlier']['seconds']):.1f} s vs {median(direction['kit']['seconds']):.1f} s; "
        f"answers differing: {direction['answers_differing']}",
    )
    results.add(
        TARGETS,
        "evaluate_nll_differing",
        direction["nll_differing"],
        f"of {len(prompts)} references; corpus NLL {direction['earlier']['nll']:.6f} vs {direction['kit']['nll']:.6f}",
    )
    if args.profile or results.status("generate_speedup_vs_generate") == "MISS":
        from benchmarks.harness import profile_call

        first = prompts[: args.gen_batch]
        section["profile_batched"] = profile_call(
            f"one batch of {len(first)} answers (shrinking loop)",
            lambda: path_run(model, tok, first, args, len(first), True),
        )


def decode_step_ceiling(model, tok, batch: int, prompt_tokens: int = 48, steps: int = 40) -> dict:
    """What batching can give at most here: B x (time of a decode step at batch 1) / (time of one at
    batch B), same prompt length, every row decoding all `steps` tokens (no padding, no early stop)."""
    import torch

    ids = tok("The cat sleeps on the warm chair. " * 8, add_special_tokens=False)["input_ids"][:prompt_tokens]

    def seconds_per_step(rows: int) -> float:
        inputs = torch.tensor([ids] * rows, device=model.device)
        with torch.inference_mode():
            t0 = time.perf_counter()
            model.generate(
                inputs,
                attention_mask=torch.ones_like(inputs),
                max_new_tokens=steps,
                min_new_tokens=steps,
                do_sample=False,
                pad_token_id=tok.pad_token_id or 0,
            )
            synchronize()
            return (time.perf_counter() - t0) / steps

    one, many = seconds_per_step(1), seconds_per_step(batch)
    return {
        "ms_per_step_batch_1": one * 1e3,
        "ms_per_step_batched": many * 1e3,
        "batch_size": batch,
        "ceiling": batch * one / many,
    }


def earlier_reference_scores(model, pairs, pad_id: int, batch_size: int) -> list[tuple[float, int]]:
    """The earlier reference pass: length-sorted batches of `batch_size` rows, each padded to its longest
    row and forwarded at once (no padding bound), the LM head on the reference positions."""
    import torch

    from clo_utils.evaluation.decoding import _prefill_scored
    from clo_utils.evaluation.generation import _length_sorted_batches

    scores = [(0.0, 0)] * len(pairs)
    with torch.inference_mode():
        for batch in _length_sorted_batches([len(p) + len(r) for p, r in pairs], batch_size):
            _, _, sums, counts = _prefill_scored(
                model, [pairs[i][0] for i in batch], [pairs[i][1] for i in batch], pad_id, use_cache=False
            )
            for i, s, n in zip(batch, sums, counts):
                scores[i] = (s, n)
    return scores


def evaluation_comparison(model, tok, prompts, references, args) -> dict:
    """One evaluation direction both ways, alternating `gen_rounds` times: the earlier path (generate batch by
    batch, then earlier_reference_scores) and the kit's (the continuous loop scoring each reference in its
    prompt's prefill; evaluate.evaluate_direction's calls), answers and per-reference NLL compared."""
    from benchmarks.mfu import clock
    from clo_utils.evaluation.evaluate import generate_answers
    from clo_utils.evaluation.reference_nll import corpus_nll, pair_scores, prompt_completion_ids

    pairs = [prompt_completion_ids(tok, p, r) for p, r in zip(prompts, references)]
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    common = dict(max_new_tokens=args.gen_tokens, batch_size=args.gen_batch, progress=False)

    def earlier():
        answers = generate_answers(model, tok, prompts, shrinking=False, **common)
        return answers, earlier_reference_scores(model, pairs, pad_id, args.gen_batch)

    def kit():
        known: dict = {}
        answers = generate_answers(
            model, tok, prompts, reference_ids=[r for _, r in pairs], reference_scores=known, **common
        )
        return answers, pair_scores(model, pairs, pad_id, args.gen_batch, known=known)

    out: dict = {"earlier": {"seconds": []}, "kit": {"seconds": []}}
    found: dict = {}
    for _ in range(args.gen_rounds):
        for label, call in (("earlier", earlier), ("kit", kit)):
            out[label]["seconds"].append(
                clock(*timed(lambda label=label, call=call: found.__setitem__(label, call())))
            )
    (old_answers, old_scores), (new_answers, new_scores) = found["earlier"], found["kit"]
    out["earlier"]["nll"], out["kit"]["nll"] = corpus_nll(old_scores)[0], corpus_nll(new_scores)[0]
    out["answers_differing"] = sum(a != b for a, b in zip(old_answers, new_answers))
    out["nll_differing"] = sum(abs(a - b) > 1e-5 * abs(a) or n != m for (a, n), (b, m) in zip(old_scores, new_scores))
    out["reference_tokens"] = sum(n for _, n in new_scores)
    print(
        f"  answers + reference NLL: earlier {', '.join(f'{x:.1f}' for x in out['earlier']['seconds'])} s, "
        f"the kit {', '.join(f'{x:.1f}' for x in out['kit']['seconds'])} s; {out['answers_differing']} answers and "
        f"{out['nll_differing']} reference scores differing"
    )
    return out

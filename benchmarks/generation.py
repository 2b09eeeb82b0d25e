"""Generation throughput for evaluation (clo_utils.evaluation.evaluate.generate_answers), batched at the demo's
batch size vs one prompt at a time; beside it the ceiling of batching on this device (B x a decode
step at batch 1 / a step at batch B, equal lengths, no early stops).
"""

from __future__ import annotations

import time

from benchmarks.harness import Context, fresh_model, profile_call, synchronize

NAME = "generate"
TARGETS = {
    "generate_batched_speedup": (">=", 4.0, "generation: one-at-a-time time / batched time"),
    # B x a decode step at batch 1 / a step at batch B (equal lengths): the most batching can give here
    "generate_decode_step_ceiling": (None, None, "generation: batching's ceiling on this device"),
}


def run(ctx: Context) -> None:
    args, results = ctx.args, ctx.results
    model, tok, _ = fresh_model(args.model, "attention")
    prompts = [s["prompt_tgt"] for s in ctx.seeds(args.gen_prompts)]
    from clo_utils.evaluation.evaluate import generate_answers

    source = "clo_utils.evaluation.evaluate.generate_answers"

    def run(batch_size):
        return generate_answers(
            model, tok, prompts, max_new_tokens=args.gen_tokens, batch_size=batch_size, progress=False
        )

    run(len(prompts[:2]))  # warm-up
    timing = {}
    for label, batch_size in (("one_at_a_time", 1), ("batched", args.gen_batch)):
        t0 = time.perf_counter()
        answers = run(batch_size)
        synchronize()
        seconds = time.perf_counter() - t0
        new_tokens = sum(len(tok(a, add_special_tokens=False)["input_ids"]) for a in answers)
        timing[label] = {
            "seconds": seconds,
            "batch_size": batch_size,
            "prompts": len(prompts),
            "answer_tokens": new_tokens,
        }
    one, bat = timing["one_at_a_time"], timing["batched"]
    print(
        f"  {source}: {len(prompts)} prompts, max_new_tokens {args.gen_tokens}: "
        f"one at a time {one['seconds']:.1f} s "
        f"({one['answer_tokens']} answer tokens), batch {args.gen_batch}: {bat['seconds']:.1f} s "
        f"({bat['answer_tokens']} answer tokens)"
    )
    results.sections["generation"] = section = {"source": source, **timing}
    results.add(
        TARGETS,
        "generate_batched_speedup",
        one["seconds"] / bat["seconds"],
        f"{len(prompts) / one['seconds']:.2f} vs {len(prompts) / bat['seconds']:.2f} prompts/s, "
        f"batch {args.gen_batch}",
    )
    section["decode_step"] = ceiling = decode_step_ceiling(model, tok, args.gen_batch, steps=args.gen_tokens)
    results.add(
        TARGETS,
        "generate_decode_step_ceiling",
        ceiling["ceiling"],
        f"one decode step: {ceiling['ms_per_step_batch_1']:.0f} ms at batch 1, "
        f"{ceiling['ms_per_step_batched']:.0f} ms at batch {args.gen_batch}",
    )
    if args.profile or results.status("generate_batched_speedup") == "MISS":
        first = prompts[: args.gen_batch]
        section["profile_batched"] = profile_call(
            f"one batch of {len(first)} answers",
            lambda: generate_answers(
                model, tok, first, max_new_tokens=args.gen_tokens, batch_size=len(first), progress=False
            ),
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

"""Training step speed: a CLO step against TRL's DPOTrainer and SFTTrainer steps on the same seeds.

  clo_vs_dpo_live_step, clo_vs_dpo_precomputed_step: CLO step vs TRL DPOTrainer step, same
      cross-lingual pairs, same model, same seeds per step (CLO: B seeds = 2B triples = 4B sequences;
      DPO: 2B pairs = 4B sequences, both directions). CLO reads precomputed reference log-probs. DPO
      runs twice: with precompute_ref_log_probs=True (like for like: no reference forward in the step;
      the kit's SFT+DPO baseline uses this) and with a live reference model (TRL's default: one extra
      no-grad forward per step). The target (<= 0.75) is the comparison with the live reference; the
      like-for-like ratio is printed beside it and is expected near 1.
  clo_vs_sft_per_seed: CLO vs SFT (TRL SFTTrainer, both languages) seconds per seed at the same seed
      budget per step (CLO 4 sequences per seed, SFT 2; 2.0 is the arithmetic floor).

A step is Trainer.training_step (forward, loss, backward) + optimizer.step of the trainer each kit
entry point builds, on the same seeds for every method; the methods run interleaved round-robin so a
change of machine load hits all alike; the warm-up rounds are not counted. On CPU the ratios use
process CPU time (steadier on a shared machine), wall ratios are printed beside them; on GPU wall time.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

from benchmarks.harness import Context, fresh_model, median, quiet, timed, top_ops

NAME = "train"
TARGETS = {  # name -> (comparison, target, what)
    "clo_vs_dpo_live_step": ("<=", 0.75, "CLO step / DPO step (live reference), same seeds"),
    # like for like (neither runs a reference forward): expected near 1, so no target
    "clo_vs_dpo_precomputed_step": (None, None, "CLO step / DPO step (precomputed reference), like for like"),
    "clo_vs_sft_per_seed": ("<=", 2.2, "CLO s/seed / SFT s/seed (4 vs 2 sequences per seed)"),
}


METHODS = ("clo", "dpo_precomputed", "dpo_live", "sft")


def build_trainers(
    args, work: Path, seeds: list[dict], batch_seeds: int | None = None, methods: tuple[str, ...] = METHODS
) -> dict:
    """The trainers of `methods`, built by the kit's own configs, each with a function giving its batch for
    a list of seed indices, so every method trains on exactly the same seeds in a round."""
    from datasets import Dataset
    from trl import DPOTrainer, SFTTrainer

    from clo_utils.data import build_cross_lingual_pairs, build_sft_rows
    from clo_utils.train import CLOConfig, CLOTrainer, dpo_config, sft_config, tokenize_clo_pairs, training_profile

    B = batch_seeds or args.batch_seeds
    common = dict(
        learning_rate=1e-6,
        logging_steps=10_000,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        report_to="none",
        max_steps=10,
    )
    pairs = build_cross_lingual_pairs(seeds)
    rows = build_sft_rows(seeds, "both")
    trainers = {}

    if "clo" in methods:
        model, tok, report = fresh_model(args.model, "attention")
        examples, stats = tokenize_clo_pairs(pairs, tok, args.max_length)
        if stats["seeds_kept"] != len(seeds):
            raise RuntimeError(f"CLO tokenisation dropped seeds: {stats}; raise --max-length")
        cfg = CLOConfig(
            output_dir=str(work / "clo"),
            per_device_train_batch_size=B,
            max_length=args.max_length,
            ref_cache_dir=str(work / "ref"),
            **common,
            **training_profile(),
        )
        t0 = time.perf_counter()
        clo = CLOTrainer(model, cfg, examples, processing_class=tok)
        trainers["clo"] = {
            "trainer": clo,
            "sequences_per_seed": 4,
            "setup_seconds": time.perf_counter() - t0,
            "batch": lambda idx, t=clo: t.data_collator([t.train_dataset[i] for i in idx]),
            "note": "reference log-probs precomputed (cached on disk)",
        }

    for name, precompute in (("dpo_precomputed", True), ("dpo_live", False)):
        if name not in methods:
            continue
        model, tok, _ = fresh_model(args.model, "attention")
        cfg = dpo_config(
            str(work / name),
            beta=0.1,
            max_length=args.max_length,
            device="auto",
            per_device_train_batch_size=2 * B,
            precompute_ref_log_probs=precompute,
            **common,
        )
        data = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
        t0 = time.perf_counter()
        with quiet():
            dpo = DPOTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok)
        # pairs are in seed order, two per seed (en, tgt); TRL keeps the order
        trainers[name] = {
            "trainer": dpo,
            "sequences_per_seed": 4,
            "setup_seconds": time.perf_counter() - t0,
            "batch": lambda idx, t=dpo: t.data_collator(two_rows_per_seed(t, idx)),
            "note": "TRL DPOTrainer, "
            + ("precompute_ref_log_probs=True" if precompute else "live reference model (TRL default)"),
        }

    if "sft" in methods:
        model, tok, _ = fresh_model(args.model, "attention")
        cfg = sft_config(
            str(work / "sft"), max_length=args.max_length, device="auto", per_device_train_batch_size=2 * B, **common
        )
        data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
        t0 = time.perf_counter()
        with quiet():
            sft = SFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok)
        if len(sft.train_dataset) != len(rows):
            raise RuntimeError("TRL dropped SFT rows; raise --max-length")
        trainers["sft"] = {
            "trainer": sft,
            "sequences_per_seed": 2,
            "setup_seconds": time.perf_counter() - t0,
            "batch": lambda idx, t=sft: t.data_collator(two_rows_per_seed(t, idx)),
            "note": "TRL SFTTrainer, both languages (x_en->y_en, x_tgt->y_tgt), completion-only loss",
        }
    for entry in trainers.values():
        t = entry["trainer"]
        t.create_optimizer()
        t.current_gradient_accumulation_steps = 1  # set by the train loop; one micro-batch per step here
    return trainers


def two_rows_per_seed(trainer, idx: list[int]) -> list[dict]:
    """A TRL trainer's rows for the seeds `idx`: its dataset holds two rows per seed (en, tgt), in seed order."""
    return [trainer.train_dataset[2 * i + j] for i in idx for j in (0, 1)]


def one_step(trainer, batch) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one optimizer step: Trainer.training_step (forward, loss,
    backward, the guards) + optimizer.step + zero_grad."""

    def step():
        trainer.training_step(trainer.model, batch)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    return timed(step)


def run(ctx: Context) -> None:
    """Methods interleaved round-robin (CLO, DPO-precomputed, DPO-live, SFT, CLO, ...): each round
    trains every method on the same B seeds, so a change of machine load hits all of them alike.
    Round 0 is a warm-up (allocations, optimizer state) and is not counted."""
    args, work, results = ctx.args, ctx.work, ctx.results
    seeds = ctx.seeds(args.seeds)
    B = args.batch_seeds
    n_rounds = args.warmup + args.steps
    seeds = seeds[: min(len(seeds), n_rounds * B)]  # only what the rounds use: shorter reference passes
    trainers = build_trainers(args, work, seeds)
    rounds = [[(r * B + k) % len(seeds) for k in range(B)] for r in range(n_rounds)]
    times = {name: [] for name in trainers}
    for r, idx in enumerate(rounds):
        for name, entry in trainers.items():
            batch = entry["trainer"]._prepare_inputs(entry["batch"](idx))
            wall, cpu = one_step(entry["trainer"], batch)
            if r >= args.warmup:
                times[name].append((wall, cpu))
        print(
            f"  round {r}{' (warm-up)' if r < args.warmup else ''}, seeds {idx}: "
            + ", ".join(f"{n} {times[n][-1][0]:.1f}s" if r >= args.warmup else n for n in trainers),
            flush=True,
        )
    timings = {}
    for name, entry in trainers.items():
        walls, cpus = [w for w, _ in times[name]], [c for _, c in times[name]]
        timings[name] = {
            "note": entry["note"],
            "seeds_per_step": B,
            "sequences_per_step": entry["sequences_per_seed"] * B,
            "step_wall_seconds": walls,
            "step_cpu_seconds": cpus,
            "wall_seconds_per_seed": sum(walls) / len(walls) / B,
            "cpu_seconds_per_seed": sum(cpus) / len(cpus) / B,
            "setup_seconds": entry["setup_seconds"],
        }
        print(
            f"  {name:16s} {timings[name]['wall_seconds_per_seed']:6.2f} s/seed wall, "
            f"{timings[name]['cpu_seconds_per_seed']:6.2f} s/seed CPU   ({entry['note']}; setup "
            f"{entry['setup_seconds']:.0f} s)"
        )
    results.sections["training"] = timings
    # On a CPU shared with other jobs, process CPU time is the steadier measure; on a GPU, wall time.
    import torch

    key = "wall_seconds_per_seed" if torch.cuda.is_available() else "cpu_seconds_per_seed"
    other = "cpu_seconds_per_seed" if key == "wall_seconds_per_seed" else "wall_seconds_per_seed"
    results.sections["training_measure"] = key

    def ratio(a, b, measure):
        # median over rounds of the per-round ratio: each pairs two steps taken seconds apart
        i = 0 if measure.startswith("wall") else 1
        return median([x[i] / y[i] for x, y in zip(times[a], times[b])])

    for rname, other_name in (
        ("clo_vs_dpo_live_step", "dpo_live"),
        ("clo_vs_dpo_precomputed_step", "dpo_precomputed"),
        ("clo_vs_sft_per_seed", "sft"),
    ):
        value, alt = ratio("clo", other_name, key), ratio("clo", other_name, other)
        results.add(
            TARGETS,
            rname,
            value,
            f"CLO {timings['clo'][key]:.2f} vs {other_name} "
            f"{timings[other_name][key]:.2f} {key.split('_')[0]}-s/seed; median of "
            f"per-round ratios ({other.split('_')[0]}: {alt:.2f})",
        )
    if args.profile or any(
        results.status(n) == "MISS"
        for n in ("clo_vs_dpo_live_step", "clo_vs_dpo_precomputed_step", "clo_vs_sft_per_seed")
    ):
        timings["clo"]["profile"] = profile_clo_step(trainers["clo"]["trainer"], trainers["clo"]["batch"](rounds[0]))
    trainers.clear()
    gc.collect()


def profile_clo_step(trainer, batch) -> dict:
    """One more CLO step under torch.profiler: where the time goes (top ops by self CPU time, and the
    share inside clo_utils.losses.sequence_logps, the per-row log-softmax loop)."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    import clo_utils.train as train_module

    original = train_module.sequence_logps

    def traced(*a, **k):
        with record_function("clo.sequence_logps"):
            return original(*a, **k)

    batch = trainer._prepare_inputs(batch)
    model = trainer.model
    model.train()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    train_module.sequence_logps = traced
    try:
        with profile(activities=activities, record_shapes=False) as prof:
            with record_function("clo.forward+loss"):
                loss = trainer.compute_loss(model, batch)
            with record_function("clo.backward"):
                loss.backward()
        model.zero_grad(set_to_none=True)
    finally:
        train_module.sequence_logps = original
    events = prof.key_averages()
    spans = {e.key: e.cpu_time_total for e in events if e.key.startswith("clo.")}
    out = {
        "total_self_cpu_ms": sum(e.self_cpu_time_total for e in events) / 1e3,
        "spans_ms": {k: v / 1e3 for k, v in spans.items()},
        "top_ops": top_ops(events, 8),
    }
    fwd = spans.get("clo.forward+loss", 0.0)
    bwd = spans.get("clo.backward", 0.0)
    logps = spans.get("clo.sequence_logps", 0.0)
    print(
        f"  profile of one CLO step: forward+loss {fwd / 1e3:.0f} ms (sequence_logps forward {logps / 1e3:.0f} ms = "
        f"{logps / max(fwd + bwd, 1):.0%} of the step), backward {bwd / 1e3:.0f} ms; top ops: "
        + ", ".join(f"{t['op']} {t['share']:.0%}" for t in out["top_ops"][:5])
    )
    return out

#!/usr/bin/env python
"""Side-by-side benchmarks of the kit (issue 6): ratios measured in ONE run, same process, same data.

    python benchmarks/bench.py [OUT.json] [--only train,memory,translate,generate,demo]

Every figure is a ratio of two things measured here, one after the other, on the same inputs, so it
holds on a noisy machine; the absolute times are printed beside it, with the device.

  (a) CLO training step vs TRL DPOTrainer step, same cross-lingual pairs, same model, same seeds per
      step (CLO: B seeds = 2B triples = 4B sequences; DPO: 2B pairs = 4B sequences, both directions).
      CLO reads precomputed reference log-probs. DPO is run twice: with precompute_ref_log_probs=True
      (like for like: no reference forward in the step; the kit's SFT+DPO baseline uses this) and
      with a live reference model (TRL's default: one extra no-grad forward per step). The issue's
      target (<= 0.75, "CLO uses precomputed reference log-probs") is the comparison with the live
      reference; the like-for-like ratio is printed beside it and is expected near 1.
  (b) CLO vs SFT (TRL SFTTrainer, both languages) seconds per seed at the same seed budget per step
      (CLO 4 sequences per seed, SFT 2; 2.0 is the arithmetic floor).
      (a) and (b): a step is Trainer.training_step (forward, loss, backward) + optimizer.step of the
      trainer each kit entry point builds, on the same seeds for every method; the methods run
      interleaved round-robin so a change of machine load hits all alike; one warm-up round is not
      counted. On CPU the ratios use process CPU time (steadier on a shared machine), wall ratios are
      printed beside them; on GPU wall time.
  (c) Peak training memory, attention-only vs full fine-tuning (and LoRA): each mode in a fresh
      subprocess so peaks do not mix. CPU: peak RSS above the process's RSS before the model was
      loaded (weights + gradients + optimizer state + activations: what torch.cuda.max_memory_allocated
      measures on a GPU), with glibc told to return freed blocks to the OS so RSS follows live
      tensors; the same runs with glibc's default heap are printed beside it, and what autograd keeps
      for backward in one forward, by kind. GPU: max_memory_allocated.
  (d) Translation throughput, batched vs one segment per backend call (Apertium; a tiny random
      M2M100 with the kit's 4 beams, and greedy beside it to show beam search's share), and a rerun
      with a warm cache, which must call the backend 0 times. A random model never emits EOS, so
      every row runs to its batch's length cap: the decoder positions computed are printed too.
  (e) Generation throughput for evaluation (clo_utils.evaluate.generate_answers), batched at the
      demo's batch size vs one prompt at a time; beside it the ceiling of batching on this device
      (B x a decode step at batch 1 / a step at batch B, equal lengths, no early stops).
  A missed throughput target prints a torch.profiler summary of one batched call (top ops).
  (f) End-to-end wall time of the embedded demo by stage, from runs/<recipe>/timings.json written by
      the pipeline runner (`make demo`), when present.

Settings are small so the whole script runs in under 15 minutes on 2 CPU cores: the embedded
SmolLM2-135M, the 8 shortest seeds of the packaged smoke set translated to Catalan with Apertium,
1 seed per step (4 sequences for CLO), 1 warm-up round then 3 timed rounds; 80 texts to translate;
the smoke set's 48 Catalan prompts to answer (40 new tokens, batch 25 as in the demo).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # runs from a checkout without an install too

MODEL_ID = "embedded:smollm2-135m-instruct"
LANG = "ca"
SECTIONS = ("train", "memory", "translate", "generate", "demo")
TARGETS = {  # name -> (comparison, target, what)
    "clo_vs_dpo_live_step": ("<=", 0.75, "CLO step / DPO step (live reference), same seeds"),
    # like for like (neither runs a reference forward): expected near 1, so no target
    "clo_vs_dpo_precomputed_step": (None, None, "CLO step / DPO step (precomputed reference), like for like"),
    "clo_vs_sft_per_seed": ("<=", 2.2, "CLO s/seed / SFT s/seed (4 vs 2 sequences per seed)"),
    "memory_attention_vs_full": ("<=", 0.7, "peak training memory, attention-only / full"),
    "memory_lora_vs_full": (None, None, "peak training memory, LoRA / full"),
    "memory_attention_vs_full_default_heap": (None, None, "the same with glibc's default heap"),
    "translate_apertium_speedup": (">=", 5.0, "Apertium: one-per-call time / batched time"),
    "translate_m2m100_speedup": (">=", 5.0, "tiny M2M100: one-per-call time / batched time"),
    # the same texts decoded greedily: shows how much of the gap is beam search's per-step cost
    "translate_m2m100_greedy_speedup": (None, None, "tiny M2M100, num_beams=1: one-per-call / batched"),
    "translate_warm_cache_calls": ("==", 0, "backend calls on a rerun with a warm cache"),
    "generate_batched_speedup": (">=", 4.0, "generation: one-at-a-time time / batched time"),
    # B x a decode step at batch 1 / a step at batch B (equal lengths): the most batching can give here
    "generate_decode_step_ceiling": (None, None, "generation: batching's ceiling on this device"),
}


# =========================================================================== helpers


def device_description() -> str:
    import torch

    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"CPU: {cpu}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()} "
            f"(torch {torch.__version__})")


def load_average() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def rss_mb() -> float:
    """Current resident set size of this process (Linux), MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def verdict(name: str, value) -> str:
    op, target, _ = TARGETS[name]
    if op is None or value is None:
        return "info"
    ok = {"<=": value <= target, ">=": value >= target, "==": value == target}[op]
    return "PASS" if ok else "MISS"


def fresh_model(mode: str = "attention"):
    from clo_utils.models import load_model_and_tokenizer, select_trainable

    model, tok = load_model_and_tokenizer(MODEL_ID, dtype="float32")
    model, report = select_trainable(model, mode)
    return model, tok, report


def bench_seeds(n: int, tok, work: Path) -> tuple[list[dict], str]:
    """The n shortest seeds of the packaged smoke set (prompt + response tokens), translated into
    Catalan with Apertium (the offline default). Without Apertium the target side is a copy of the
    English (timings only; said in the output)."""
    from clo_utils.data import load_english_sft, make_seed_row

    rows = load_english_sft("smoke")
    rows = sorted(rows, key=lambda r: (len(tok(r["prompt"] + r["response"])["input_ids"]), r["id"]))[:n]
    try:
        from clo_utils.translate import get_translator, translate

        translator = get_translator("apertium", LANG)
        texts = [r["prompt"] for r in rows] + [r["response"] for r in rows]
        out = translate(texts, LANG, backend=translator, cache=work / "seed_translations.sqlite", progress=False)
        label = translator.label
    except Exception as err:  # noqa: BLE001 - the timing sections still run without MT
        print(f"  ! Apertium unavailable ({err}); target side = English copy, timings only")
        out = [r["prompt"] for r in rows] + [r["response"] for r in rows]
        label = "none (English copy)"
    return [make_seed_row(r, LANG, p, q) for r, p, q in zip(rows, out[:n], out[n:])], label


# =========================================================================== (a) + (b) training steps


def build_trainers(args, work: Path, seeds: list[dict]) -> dict:
    """The four trainers, built by the kit's own configs, each with a function giving its batch for
    a list of seed indices, so every method trains on exactly the same seeds in a round."""
    from datasets import Dataset
    from trl import DPOTrainer, SFTTrainer

    from clo_utils.data import build_cross_lingual_pairs, build_sft_rows
    from clo_utils.train import CLOConfig, CLOTrainer, dpo_config, sft_config, tokenize_clo_pairs, training_profile

    common = dict(learning_rate=1e-6, logging_steps=10_000, save_strategy="no", disable_tqdm=True, seed=0,
                  report_to="none", max_steps=10)
    pairs = build_cross_lingual_pairs(seeds)
    rows = build_sft_rows(seeds, "both")
    trainers = {}

    model, tok, report = fresh_model("attention")
    examples, stats = tokenize_clo_pairs(pairs, tok, args.max_length)
    if stats["seeds_kept"] != len(seeds):
        raise RuntimeError(f"CLO tokenisation dropped seeds: {stats}; raise --max-length")
    cfg = CLOConfig(output_dir=str(work / "clo"), per_device_train_batch_size=args.batch_seeds,
                    max_length=args.max_length, ref_cache_dir=str(work / "ref"), **common, **training_profile())
    t0 = time.perf_counter()
    clo = CLOTrainer(model, cfg, examples, processing_class=tok)
    trainers["clo"] = {"trainer": clo, "sequences_per_seed": 4, "setup_seconds": time.perf_counter() - t0,
                       "batch": lambda idx, t=clo: t.data_collator([t.train_dataset[i] for i in idx]),
                       "note": "reference log-probs precomputed (cached on disk)"}

    for name, precompute in (("dpo_precomputed", True), ("dpo_live", False)):
        model, tok, _ = fresh_model("attention")
        cfg = dpo_config(str(work / name), beta=0.1, max_length=args.max_length, device="auto",
                         per_device_train_batch_size=2 * args.batch_seeds, precompute_ref_log_probs=precompute, **common)
        data = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
        t0 = time.perf_counter()
        with quiet():
            dpo = DPOTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok)
        # pairs are in seed order, two per seed (en, tgt); TRL keeps the order
        trainers[name] = {"trainer": dpo, "sequences_per_seed": 4, "setup_seconds": time.perf_counter() - t0,
                          "batch": lambda idx, t=dpo: t.data_collator([t.train_dataset[2 * i + j] for i in idx for j in (0, 1)]),
                          "note": "TRL DPOTrainer, " + ("precompute_ref_log_probs=True" if precompute
                                                        else "live reference model (TRL default)")}

    model, tok, _ = fresh_model("attention")
    cfg = sft_config(str(work / "sft"), max_length=args.max_length, device="auto",
                     per_device_train_batch_size=2 * args.batch_seeds, **common)
    data = Dataset.from_list([{"prompt": r["prompt"], "completion": r["completion"]} for r in rows])
    t0 = time.perf_counter()
    with quiet():
        sft = SFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok)
    if len(sft.train_dataset) != len(rows):
        raise RuntimeError("TRL dropped SFT rows; raise --max-length")
    trainers["sft"] = {"trainer": sft, "sequences_per_seed": 2, "setup_seconds": time.perf_counter() - t0,
                       "batch": lambda idx, t=sft: t.data_collator([t.train_dataset[2 * i + j] for i in idx for j in (0, 1)]),
                       "note": "TRL SFTTrainer, both languages (x_en->y_en, x_tgt->y_tgt), completion-only loss"}
    for entry in trainers.values():
        t = entry["trainer"]
        t.create_optimizer()
        t.current_gradient_accumulation_steps = 1  # set by the train loop; one micro-batch per step here
    return trainers


def one_step(trainer, batch) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one optimizer step: Trainer.training_step (forward, loss,
    backward, the guards) + optimizer.step + zero_grad."""
    import torch

    w0, c0 = time.perf_counter(), time.process_time()
    trainer.training_step(trainer.model, batch)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - w0, time.process_time() - c0


def bench_training(args, work: Path, seeds: list[dict], results: dict) -> None:
    """Methods interleaved round-robin (CLO, DPO-precomputed, DPO-live, SFT, CLO, ...): each round
    trains every method on the same B seeds, so a change of machine load hits all of them alike.
    Round 0 is a warm-up (allocations, optimizer state) and is not counted."""
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
        print(f"  round {r}{' (warm-up)' if r < args.warmup else ''}, seeds {idx}: " + ", ".join(
            f"{n} {times[n][-1][0]:.1f}s" if r >= args.warmup else n for n in trainers), flush=True)
    timings = {}
    for name, entry in trainers.items():
        walls, cpus = [w for w, _ in times[name]], [c for _, c in times[name]]
        timings[name] = {"note": entry["note"], "seeds_per_step": B, "sequences_per_step": entry["sequences_per_seed"] * B,
                         "step_wall_seconds": walls, "step_cpu_seconds": cpus,
                         "wall_seconds_per_seed": sum(walls) / len(walls) / B,
                         "cpu_seconds_per_seed": sum(cpus) / len(cpus) / B,
                         "setup_seconds": entry["setup_seconds"]}
        print(f"  {name:16s} {timings[name]['wall_seconds_per_seed']:6.2f} s/seed wall, "
              f"{timings[name]['cpu_seconds_per_seed']:6.2f} s/seed CPU   ({entry['note']}; setup "
              f"{entry['setup_seconds']:.0f} s)")
    results["training"] = timings
    # On a CPU shared with other jobs, process CPU time is the steadier measure; on a GPU, wall time.
    import torch

    key = "wall_seconds_per_seed" if torch.cuda.is_available() else "cpu_seconds_per_seed"
    other = "cpu_seconds_per_seed" if key == "wall_seconds_per_seed" else "wall_seconds_per_seed"
    results["training_measure"] = key

    def ratio(a, b, measure):
        # median over rounds of the per-round ratio: each pairs two steps taken seconds apart
        i = 0 if measure.startswith("wall") else 1
        per_round = sorted(x[i] / y[i] for x, y in zip(times[a], times[b]))
        mid = len(per_round) // 2
        return per_round[mid] if len(per_round) % 2 else (per_round[mid - 1] + per_round[mid]) / 2

    for rname, other_name in (("clo_vs_dpo_live_step", "dpo_live"), ("clo_vs_dpo_precomputed_step", "dpo_precomputed"),
                              ("clo_vs_sft_per_seed", "sft")):
        value, alt = ratio("clo", other_name, key), ratio("clo", other_name, other)
        add_ratio(results, rname, value, f"CLO {timings['clo'][key]:.2f} vs {other_name} {timings[other_name][key]:.2f} "
                                         f"{key.split('_')[0]}-s/seed; median of per-round ratios "
                                         f"({other.split('_')[0]}: {alt:.2f})")
    if args.profile or any(results["ratios"][n]["status"] == "MISS" for n in
                           ("clo_vs_dpo_live_step", "clo_vs_dpo_precomputed_step", "clo_vs_sft_per_seed")):
        timings["clo"]["profile"] = profile_clo_step(trainers["clo"]["trainer"], trainers["clo"]["batch"](rounds[0]))
    trainers.clear()
    gc.collect()


@contextlib.contextmanager
def quiet():
    """TRL prints dataset-preparation progress; keep the benchmark's output readable."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def fmt_list(xs) -> str:
    return "[" + ", ".join(f"{x:.2f}" for x in xs) + "]"


def top_ops(events, n: int = 5) -> list[dict]:
    """The n profiler ops with the most self CPU time, with their share of the total."""
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:n]
    return [{"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total}
            for e in top]


def profile_call(label: str, fn) -> list[dict]:
    """fn() once under torch.profiler (CPU ops): where a missed throughput target's time goes."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ops = top_ops(prof.key_averages(), 6)
    print(f"  profile of {label}: " + ", ".join(f"{t['op']} {t['share']:.0%}" for t in ops))
    return ops


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
    out = {"total_self_cpu_ms": sum(e.self_cpu_time_total for e in events) / 1e3,
           "spans_ms": {k: v / 1e3 for k, v in spans.items()}, "top_ops": top_ops(events, 8)}
    fwd = spans.get("clo.forward+loss", 0.0)
    bwd = spans.get("clo.backward", 0.0)
    logps = spans.get("clo.sequence_logps", 0.0)
    print(f"  profile of one CLO step: forward+loss {fwd / 1e3:.0f} ms (sequence_logps forward {logps / 1e3:.0f} ms = "
          f"{logps / max(fwd + bwd, 1):.0%} of the step), backward {bwd / 1e3:.0f} ms; top ops: "
          + ", ".join(f"{t['op']} {t['share']:.0%}" for t in out["top_ops"][:5]))
    return out


# =========================================================================== (c) memory


def memory_worker(mode: str, args) -> None:
    """Runs in a fresh subprocess: CLO training steps with one trainable set; prints one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
    before = rss_mb()
    from clo_utils.data import build_cross_lingual_pairs
    from clo_utils.train import CLOConfig, CLOTrainer, tokenize_clo_pairs, training_profile

    import_rss = rss_mb()
    seeds = json.loads(Path(args.seeds_file).read_text())
    model, tok, report = fresh_model(mode)
    loaded = rss_mb()
    examples, _ = tokenize_clo_pairs(build_cross_lingual_pairs(seeds), tok, args.max_length)
    cfg = CLOConfig(output_dir=str(Path(args.work) / f"mem-{mode}"), per_device_train_batch_size=args.batch_seeds,
                    max_length=args.max_length, ref_cache_dir=str(Path(args.work) / "ref"), max_steps=args.mem_steps,
                    learning_rate=1e-6, logging_steps=10_000, save_strategy="no", disable_tqdm=True, seed=0,
                    report_to="none", **training_profile())
    trainer = CLOTrainer(model, cfg, examples, processing_class=tok)
    trainer.train()
    out = {"mode": mode, "trainable_params": report["trainable_params"], "total_params": report["total_params"],
           "rss_start_mb": before, "rss_after_imports_mb": import_rss, "rss_after_model_mb": loaded,
           "peak_rss_mb": peak_rss_mb(), "reference_forward_batches": trainer.reference_forward_batches,
           "saved_for_backward_mb": saved_for_backward(trainer)}
    if cuda:
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["training_mb"] = out["cuda_max_allocated_mb"]
    else:
        out["training_mb"] = out["peak_rss_mb"] - import_rss  # above the interpreter + libraries
    print("MEMORY_RESULT " + json.dumps(out))


def saved_for_backward(trainer) -> dict:
    """MB that autograd keeps for backward in one CLO forward on the first batch, by kind: what
    attention-only training cannot drop (it still backpropagates through every layer). Weights
    are left out (they are memory already counted). After training, so the peak is not changed."""
    import torch

    model, cfg = trainer.model, trainer.model.config
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    sizes: dict[str, float] = {}
    seen: set[int] = set()

    def kind(t) -> str:
        if t.ndim >= 2 and t.shape[-1] == cfg.vocab_size:
            return "logits"
        if t.ndim == 4:
            return "attention (q, k, v per head)"
        if t.shape[-1] == getattr(cfg, "intermediate_size", -1):
            return "MLP intermediates"
        return "hidden states, norms, other"

    def keep(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights and ptr not in seen:
            seen.add(ptr)
            name = kind(t)
            sizes[name] = sizes.get(name, 0.0) + t.untyped_storage().nbytes() / 2**20
        return t

    batch = next(iter(trainer.get_train_dataloader()))
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        (logps, _), _ = trainer._response_logps(model, batch)
    del logps
    sizes["total"] = sum(sizes.values())
    sizes["batch"] = f"{tuple(batch['input_ids'].shape)} positions, {int(batch['attention_mask'].sum())} real tokens"
    return sizes


# glibc keeps freed blocks in its heap, so a process's peak RSS is its peak of live tensors plus
# whatever the heap kept: the same few GB in every mode, which pulls every ratio towards 1. With
# these, each allocation over 64 KB is its own mapping and goes back to the OS when freed, so peak
# RSS follows live bytes, as torch.cuda.max_memory_allocated does on a GPU (no effect off glibc).
RETURN_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def memory_workers(args, work: Path, seeds_file: Path, heap_env: dict) -> dict:
    """One fresh process per mode, run side by side (a peak is per process, so they do not mix)."""
    env = {k: v for k, v in os.environ.items() if k not in RETURN_FREED_MEMORY}
    env.update(heap_env, TOKENIZERS_PARALLELISM="false")
    modes, procs = {}, {}
    for mode in ("attention", "full", "lora"):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_memory-worker", mode, "--seeds-file", str(seeds_file),
               "--work", str(work), "--threads", "1", "--batch-seeds", str(args.mem_batch_seeds),
               "--max-length", str(args.max_length), "--mem-steps", str(args.mem_steps)]
        procs[mode] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for mode, proc in procs.items():
        stdout, stderr = proc.communicate()
        line = next((l for l in stdout.splitlines() if l.startswith("MEMORY_RESULT ")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"memory worker ({mode}) failed:\n{(stdout + stderr)[-3000:]}")
        modes[mode] = m = json.loads(line.split(" ", 1)[1])
        print(f"  {mode:9s}: training memory {m['training_mb']:.0f} MB (peak RSS {m['peak_rss_mb']:.0f} MB, after "
              f"imports {m['rss_after_imports_mb']:.0f} MB, after model load {m['rss_after_model_mb']:.0f} MB); "
              f"trainable {m['trainable_params'] / 1e6:.1f}M of {m['total_params'] / 1e6:.1f}M")
    return modes


def bench_memory(args, work: Path, seeds: list[dict], results: dict) -> None:
    import torch

    seeds_file = work / "seeds.json"
    seeds_file.write_text(json.dumps(seeds))
    glibc = platform.libc_ver()[0] == "glibc" and not torch.cuda.is_available()
    label = "freed memory returned to the OS" if glibc else "as allocated"
    print(f"  -- {label}:")
    modes = memory_workers(args, work, seeds_file, RETURN_FREED_MEMORY if glibc else {})
    results["memory"] = modes
    saved = modes["attention"]["saved_for_backward_mb"]
    print(f"  kept for backward in one CLO forward, attention-only ({saved['batch']}; weights not counted): "
          + ", ".join(f"{k} {v:.0f} MB" for k, v in saved.items() if k != "batch"))
    full = modes["full"]["training_mb"]
    add_ratio(results, "memory_attention_vs_full", modes["attention"]["training_mb"] / full,
              f"{modes['attention']['training_mb']:.0f} vs {full:.0f} MB ({label}); raw peak RSS ratio "
              f"{modes['attention']['peak_rss_mb'] / modes['full']['peak_rss_mb']:.2f}")
    add_ratio(results, "memory_lora_vs_full", modes["lora"]["training_mb"] / full,
              f"{modes['lora']['training_mb']:.0f} vs {full:.0f} MB")
    if glibc:  # the same runs with glibc's default heap: what `top` shows during training
        print("  -- glibc's default heap (freed blocks kept):")
        heap = memory_workers(args, work, seeds_file, {})
        results["memory_default_heap"] = heap
        add_ratio(results, "memory_attention_vs_full_default_heap",
                  heap["attention"]["training_mb"] / heap["full"]["training_mb"],
                  f"{heap['attention']['training_mb']:.0f} vs {heap['full']['training_mb']:.0f} MB")
    print(f"  ({args.mem_steps} CLO step(s) of {args.mem_batch_seeds} seeds per mode)")


# =========================================================================== (d) translation


def tiny_m2m100(out: Path) -> Path:
    """A tiny random M2M100 (real architecture and tokenizer classes, sentencepiece trained here)."""
    import io

    import sentencepiece as spm
    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration, M2M100Tokenizer

    corpus = ["The cat sleeps on the warm chair.", "Use the function to compute the sum.",
              "Hello world, how are you today?", "El gat dorm a la cadira.", "La funció calcula la suma."] * 20
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=buf, vocab_size=80, model_type="unigram",
                                   character_coverage=1.0, bos_id=-1, eos_id=-1, unk_id=0, pad_id=-1, minloglevel=2,
                                   hard_vocab_limit=False)
    (out / "sentencepiece.bpe.model").write_bytes(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for i in range(sp.get_piece_size()):
        vocab.setdefault(sp.id_to_piece(i), len(vocab))
    (out / "vocab.json").write_text(json.dumps(vocab))
    tok = M2M100Tokenizer(vocab_file=str(out / "vocab.json"), spm_file=str(out / "sentencepiece.bpe.model"))
    size = max(tok.lang_code_to_id.values()) + 1 + tok.num_madeup_words
    torch.manual_seed(0)
    config = M2M100Config(vocab_size=size, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                          decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                          max_position_embeddings=256, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                          decoder_start_token_id=2)
    M2M100ForConditionalGeneration(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def translation_texts(n: int) -> list[str]:
    """n distinct one-sentence English texts from the packaged smoke set."""
    from clo_utils.data import load_english_sft

    texts = []
    for row in load_english_sft("smoke"):
        for text in (row["prompt"], row["response"].split(". ")[0].rstrip(".") + "."):
            line = " ".join(text.split())
            if 3 <= len(line.split()) <= 30 and line not in texts:
                texts.append(line)
    return texts[:n]


def _counting(translator):
    calls = {"n": 0}
    original = translator.translate_batch

    def counted(segments):
        calls["n"] += 1
        return original(segments)

    translator.translate_batch = counted
    return calls


def _counting_decoder_tokens(translator) -> dict:
    """Wrap the loaded HF model's generate: decoder positions computed (rows x output length)."""
    model = translator._load()[0]
    count = {"tokens": 0}
    original = model.generate

    def generate(*a, **k):
        out = original(*a, **k)
        count["tokens"] += out.shape[0] * out.shape[1]
        return out

    model.generate = generate
    return count


def bench_translation(args, work: Path, results: dict) -> None:
    from clo_utils.translate import get_translator, translate_with_stats

    texts = translation_texts(args.translate_texts)
    section = {"texts": len(texts)}
    backends = []
    try:
        backends.append(("apertium", get_translator("apertium", LANG), args.apertium_batch))
    except Exception as err:  # noqa: BLE001
        print(f"  ! Apertium unavailable: {err}")
        section["apertium_error"] = str(err)
    m2m_dir = tiny_m2m100(work / "tiny-m2m100")
    m2m = get_translator("m2m100", LANG, model=str(m2m_dir), device="cpu")  # the kit's defaults (4 beams)
    greedy = get_translator("m2m100", LANG, model=str(m2m_dir), device="cpu", num_beams=1)
    backends += [("m2m100", m2m, args.m2m100_batch or m2m.default_batch_size),
                 ("m2m100_greedy", greedy, args.m2m100_batch or greedy.default_batch_size)]
    warm_calls = []
    for name, translator, batch in backends:
        calls = _counting(translator)
        translate_with_stats(texts[:2], LANG, backend=translator, batch_size=2, progress=False)  # warm-up: load model
        decoded = _counting_decoder_tokens(translator) if name.startswith("m2m100") else None
        runs = {}
        for label, batch_size, cache in (("one_per_call", 1, None), ("batched", batch, work / f"{name}-cache.sqlite")):
            before = calls["n"]
            if decoded:
                decoded["tokens"] = 0
            t0 = time.perf_counter()
            out, stats = translate_with_stats(texts, LANG, backend=translator, batch_size=batch_size, cache=cache,
                                              progress=False)
            runs[label] = {"seconds": time.perf_counter() - t0, "backend_calls": calls["n"] - before,
                           "segments": stats.segments, "batch_size": batch_size}
            if decoded:
                runs[label]["decoder_tokens"] = decoded["tokens"]
        before = calls["n"]
        t0 = time.perf_counter()
        again, stats = translate_with_stats(texts, LANG, backend=translator, batch_size=batch,
                                            cache=work / f"{name}-cache.sqlite", progress=False)
        runs["warm_cache"] = {"seconds": time.perf_counter() - t0, "backend_calls": calls["n"] - before,
                              "translated": stats.translated, "cached": stats.cached, "same_output": again == out}
        warm_calls.append(runs["warm_cache"]["backend_calls"])
        section[name] = runs
        one, bat = runs["one_per_call"], runs["batched"]
        print(f"  {name}: {one['segments']} segments one per call {one['seconds']:.2f} s ({one['backend_calls']} calls), "
              f"batched {bat['seconds']:.2f} s ({bat['backend_calls']} calls of <= {batch}); warm-cache rerun "
              f"{runs['warm_cache']['seconds']:.3f} s, {runs['warm_cache']['backend_calls']} backend calls")
        if decoded:  # a random model never emits EOS: every row runs to its batch's length cap
            print(f"    decoder positions computed (output rows x length, beams not counted): one per call "
                  f"{one['decoder_tokens']}, batched {bat['decoder_tokens']}")
        ratio = f"translate_{name}_speedup"
        add_ratio(results, ratio, one["seconds"] / bat["seconds"],
                  f"{one['segments'] / one['seconds']:.1f} vs {bat['segments'] / bat['seconds']:.1f} segments/s, "
                  f"batch {batch}")
        if decoded and (args.profile or results["ratios"][ratio]["status"] == "MISS"):
            first = translator.batch_order(texts)[:batch]
            runs["profile_batched"] = profile_call(f"one {name} batch of {len(first)}",
                                                   lambda: translator.translate_batch(first))
    results["translation"] = section
    add_ratio(results, "translate_warm_cache_calls", max(warm_calls),
              "per backend: " + ", ".join(f"{n} {c}" for (n, _, _), c in zip(backends, warm_calls)))


# =========================================================================== (e) generation


def bench_generation(args, seeds: list[dict], results: dict) -> None:
    model, tok, _ = fresh_model("attention")
    prompts = [s["prompt_tgt"] for s in seeds][: args.gen_prompts]
    from clo_utils.evaluate import generate_answers

    source = "clo_utils.evaluate.generate_answers"

    def run(batch_size):
        return generate_answers(model, tok, prompts, max_new_tokens=args.gen_tokens, batch_size=batch_size,
                                progress=False)

    run(len(prompts[:2]))  # warm-up
    timing = {}
    for label, batch_size in (("one_at_a_time", 1), ("batched", args.gen_batch)):
        t0 = time.perf_counter()
        answers = run(batch_size)
        seconds = time.perf_counter() - t0
        new_tokens = sum(len(tok(a, add_special_tokens=False)["input_ids"]) for a in answers)
        timing[label] = {"seconds": seconds, "batch_size": batch_size, "prompts": len(prompts),
                         "answer_tokens": new_tokens}
    one, bat = timing["one_at_a_time"], timing["batched"]
    print(f"  {source}: {len(prompts)} prompts, max_new_tokens {args.gen_tokens}: one at a time {one['seconds']:.1f} s "
          f"({one['answer_tokens']} answer tokens), batch {args.gen_batch}: {bat['seconds']:.1f} s "
          f"({bat['answer_tokens']} answer tokens)")
    results["generation"] = {"source": source, **timing}
    add_ratio(results, "generate_batched_speedup", one["seconds"] / bat["seconds"],
              f"{len(prompts) / one['seconds']:.2f} vs {len(prompts) / bat['seconds']:.2f} prompts/s, "
              f"batch {args.gen_batch}")
    results["generation"]["decode_step"] = ceiling = decode_step_ceiling(model, tok, args.gen_batch, steps=args.gen_tokens)
    add_ratio(results, "generate_decode_step_ceiling", ceiling["ceiling"],
              f"one decode step: {ceiling['ms_per_step_batch_1']:.0f} ms at batch 1, "
              f"{ceiling['ms_per_step_batched']:.0f} ms at batch {args.gen_batch}")
    if args.profile or results["ratios"]["generate_batched_speedup"]["status"] == "MISS":
        first = prompts[: args.gen_batch]
        results["generation"]["profile_batched"] = profile_call(
            f"one batch of {len(first)} answers", lambda: generate_answers(
                model, tok, first, max_new_tokens=args.gen_tokens, batch_size=len(first), progress=False))


def decode_step_ceiling(model, tok, batch: int, prompt_tokens: int = 48, steps: int = 40) -> dict:
    """What batching can give at most here: B x (time of a decode step at batch 1) / (time of one at
    batch B), same prompt length, every row decoding all `steps` tokens (no padding, no early stop)."""
    import torch

    ids = tok("The cat sleeps on the warm chair. " * 8, add_special_tokens=False)["input_ids"][:prompt_tokens]

    def seconds_per_step(rows: int) -> float:
        inputs = torch.tensor([ids] * rows)
        with torch.inference_mode():
            t0 = time.perf_counter()
            model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=steps,
                           min_new_tokens=steps, do_sample=False, pad_token_id=tok.pad_token_id or 0)
            return (time.perf_counter() - t0) / steps

    one, many = seconds_per_step(1), seconds_per_step(batch)
    return {"ms_per_step_batch_1": one * 1e3, "ms_per_step_batched": many * 1e3, "batch_size": batch,
            "ceiling": batch * one / many}


# =========================================================================== (f) demo timings


def bench_demo(args, results: dict) -> None:
    path = REPO / "runs" / args.recipe / "timings.json"
    if not path.exists():
        print(f"  {path.relative_to(REPO)} is absent: run `make demo` (the pipeline runner writes it)")
        results["demo"] = {"path": str(path), "present": False}
        return
    data = json.loads(path.read_text())
    stages = data.get("stages", [])
    for s in stages:
        print(f"  {s.get('lang', ''):4s} {s.get('stage', '?'):34s} {s.get('status', ''):12s} {s.get('seconds', 0):8.1f} s")
    stage_sum = data.get("stage_seconds", data.get("total_seconds", sum(s.get("seconds", 0) for s in stages)))
    print(f"  stage times add up to {stage_sum:.0f} s ({stage_sum / 60:.1f} min; languages run side by side)")
    if "wall_seconds" in data:
        print(f"  wall time {data['wall_seconds']:.0f} s ({data['wall_seconds'] / 60:.1f} min) over "
              f"{len(data.get('invocations', []))} invocation(s)")
    results["demo"] = {"path": str(path), "present": True, **data}


# =========================================================================== main


def add_ratio(results: dict, name: str, value, detail: str) -> None:
    op, target, what = TARGETS[name]
    results["ratios"][name] = {"value": value, "target": target, "op": op, "status": verdict(name, value),
                               "what": what, "detail": detail}


def print_table(results: dict) -> None:
    print("\n" + "=" * 118)
    print(f"device: {results['device']}; load average at start {results['load_average_start']}, "
          f"end {results['load_average_end']}")
    print(f"{'measurement':32s} {'value':>8s} {'target':>8s} {'status':>6s}  detail")
    for name, r in results["ratios"].items():
        value = r["value"]
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        target = "" if r["op"] is None else f"{r['op']} {r['target']}"
        print(f"{name:32s} {shown:>8s} {target:>8s} {r['status']:>6s}  {r['detail']}")
    for name, err in results.get("errors", {}).items():
        print(f"{name:32s} {'-':>8s} {'':>8s} {'ERROR':>6s}  {err}")
    print(f"total {results['seconds']:.0f} s")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", nargs="?", default=str(REPO / "runs" / "bench.json"), help="JSON results (default runs/bench.json)")
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections among {SECTIONS}")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seeds", type=int, default=8, help="seeds in the training benchmarks")
    p.add_argument("--batch-seeds", type=int, default=1, help="seeds per training step (CLO 4x sequences)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="timed training rounds after the warm-up")
    p.add_argument("--max-length", type=int, default=320)
    p.add_argument("--mem-batch-seeds", type=int, default=4, help="seeds per step in the memory workers")
    p.add_argument("--mem-steps", type=int, default=2, help="CLO steps per memory worker (Adam state exists from step 1)")
    p.add_argument("--profile", action="store_true", help="profile one CLO step, translation and generation batch "
                   "(done anyway for a missed target)")
    # A real job translates thousands of segments, so its length-sorted batches are homogeneous;
    # 80 texts give several batches instead of one that spans every length.
    p.add_argument("--translate-texts", type=int, default=80)
    p.add_argument("--apertium-batch", type=int, default=200)
    p.add_argument("--m2m100-batch", type=int, default=None, help="default: the translator's own batch size (16)")
    p.add_argument("--gen-prompts", type=int, default=48, help="target-language prompts (48: the whole smoke set)")
    p.add_argument("--gen-batch", type=int, default=25, help="the demo's evaluate.batch_size")
    p.add_argument("--gen-tokens", type=int, default=40, help="the demo's evaluate.max_new_tokens")
    p.add_argument("--recipe", default="demo", help="runs/<recipe>/timings.json for the demo timings")
    p.add_argument("--_memory-worker", dest="memory_worker", help=argparse.SUPPRESS)
    p.add_argument("--seeds-file", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("KINETO_LOG_LEVEL", "99")  # torch.profiler's start/stop lines would break the table
    sys.stdout.reconfigure(line_buffering=True)  # progress lines in order when piped to a file
    import logging
    import warnings

    import torch

    torch.set_num_threads(args.threads)
    if args.memory_worker:
        memory_worker(args.memory_worker, args)
        return 0
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    import datasets

    datasets.disable_progress_bars()
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"--only: unknown sections {sorted(unknown)}; known: {SECTIONS}")
    start = time.perf_counter()
    results = {"device": device_description(), "load_average_start": load_average(), "model": MODEL_ID,
               "settings": {k: v for k, v in vars(args).items() if k not in ("memory_worker", "seeds_file", "work")},
               "ratios": {}, "errors": {}}
    print(f"device: {results['device']}; load average {results['load_average_start']}")
    with tempfile.TemporaryDirectory(prefix="clo-bench-") as tmp:
        work = Path(tmp)
        seeds = None
        if {"train", "memory", "generate"} & set(only):
            from clo_utils.models import load_tokenizer

            seeds, label = bench_seeds(max(args.seeds, args.gen_prompts), load_tokenizer(MODEL_ID), work)
            results["data"] = {"seeds": min(len(seeds), args.seeds), "generation_prompts": min(len(seeds), args.gen_prompts),
                               "translator": label, "source": "clo_utils/assets/smoke_sft.jsonl"}
            print(f"data: {results['data']['seeds']} training seeds (shortest of the smoke set), "
                  f"{results['data']['generation_prompts']} generation prompts, en -> {LANG} with {label}")
        for section, fn in (("train", lambda: bench_training(args, work, seeds[: args.seeds], results)),
                            ("memory", lambda: bench_memory(args, work, seeds[: args.seeds], results)),
                            ("translate", lambda: bench_translation(args, work, results)),
                            ("generate", lambda: bench_generation(args, seeds[: args.gen_prompts], results)),
                            ("demo", lambda: bench_demo(args, results))):
            if section not in only:
                continue
            print(f"\n[{section}]")
            t0 = time.perf_counter()
            try:
                fn()
            except Exception as err:  # noqa: BLE001 - one broken section must not hide the others
                results["errors"][section] = f"{type(err).__name__}: {err}"
                print(f"  ERROR: {type(err).__name__}: {err}")
            print(f"  ({time.perf_counter() - t0:.0f} s)")
    results["load_average_end"] = load_average()
    results["seconds"] = time.perf_counter() - start
    print_table(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    print(f"results: {out}")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

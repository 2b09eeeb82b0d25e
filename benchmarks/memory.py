"""Peak training memory: attention-only vs full fine-tuning (and LoRA), CLO steps.

Each mode runs in a fresh worker process so peaks do not mix. CPU: peak RSS above the process's RSS
after its imports (weights + gradients + optimizer state + activations: what
torch.cuda.max_memory_allocated measures on a GPU), with glibc told to return freed blocks to the
OS so RSS follows live tensors; the same runs with glibc's default heap are printed beside it, and
what autograd keeps for backward in one forward, by kind. GPU: torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from benchmarks.harness import Context, fresh_model, peak_rss_mb, rss_mb, run_workers, worker_result

NAME = "memory"
TARGETS = {
    "memory_attention_vs_full": ("<=", 0.7, "peak training memory, attention-only / full"),
    "memory_lora_vs_full": (None, None, "peak training memory, LoRA / full"),
    "memory_attention_vs_full_default_heap": (None, None, "the same with glibc's default heap"),
}
MODES = ("attention", "full", "lora")


def worker(mode: str, args) -> None:
    """Runs in a fresh process: CLO training steps with one trainable set; prints one result line."""
    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
    before = rss_mb()
    from clo_utils.data import build_cross_lingual_pairs
    from clo_utils.train import CLOConfig, CLOTrainer, tokenize_clo_pairs, training_profile

    import_rss = rss_mb()
    seeds = json.loads(Path(args.seeds_file).read_text())
    model, tok, report = fresh_model(args.model, mode)
    loaded = rss_mb()
    examples, _ = tokenize_clo_pairs(build_cross_lingual_pairs(seeds), tok, args.max_length)
    cfg = CLOConfig(
        output_dir=str(Path(args.work) / f"mem-{mode}"),
        per_device_train_batch_size=args.mem_batch_seeds,
        max_length=args.max_length,
        ref_cache_dir=str(Path(args.work) / "ref"),
        max_steps=args.mem_steps,
        learning_rate=1e-6,
        logging_steps=10_000,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        report_to="none",
        **training_profile(),
    )
    trainer = CLOTrainer(model, cfg, examples, processing_class=tok)
    trainer.train()
    out = {
        "mode": mode,
        "trainable_params": report["trainable_params"],
        "total_params": report["total_params"],
        "rss_start_mb": before,
        "rss_after_imports_mb": import_rss,
        "rss_after_model_mb": loaded,
        "peak_rss_mb": peak_rss_mb(),
        "reference_forward_batches": trainer.reference_forward_batches,
        "saved_for_backward_mb": saved_for_backward(trainer),
    }
    if cuda:
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["training_mb"] = out["cuda_max_allocated_mb"]
    else:
        out["training_mb"] = out["peak_rss_mb"] - import_rss  # above the interpreter + libraries
    worker_result(out)


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
    real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else batch["input_ids"].numel()  # packed
    sizes["batch"] = f"{tuple(batch['input_ids'].shape)} positions, {real} real tokens"
    return sizes


# glibc keeps freed blocks in its heap, so a process's peak RSS is its peak of live tensors plus
# whatever the heap kept: the same few GB in every mode, which pulls every ratio towards 1. With
# these, each allocation over 64 KB is its own mapping and goes back to the OS when freed, so peak
# RSS follows live bytes, as torch.cuda.max_memory_allocated does on a GPU (no effect off glibc).
RETURN_FREED_MEMORY = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def memory_workers(args, work: Path, seeds_file: Path, heap_env: dict) -> dict:
    """One fresh process per mode, run side by side."""
    env = {k: v for k, v in os.environ.items() if k not in RETURN_FREED_MEMORY}
    env.update(heap_env, TOKENIZERS_PARALLELISM="false")
    jobs = {
        mode: [
            mode,
            "--seeds-file",
            str(seeds_file),
            "--work",
            str(work),
            "--threads",
            "1",
            "--model",
            args.model,
            "--mem-batch-seeds",
            str(args.mem_batch_seeds),
            "--max-length",
            str(args.max_length),
            "--mem-steps",
            str(args.mem_steps),
        ]
        for mode in MODES
    }
    modes = run_workers(NAME, jobs, env)
    for mode, m in modes.items():
        print(
            f"  {mode:9s}: training memory {m['training_mb']:.0f} MB (peak RSS {m['peak_rss_mb']:.0f} MB, after "
            f"imports {m['rss_after_imports_mb']:.0f} MB, after model load {m['rss_after_model_mb']:.0f} MB); "
            f"trainable {m['trainable_params'] / 1e6:.1f}M of {m['total_params'] / 1e6:.1f}M"
        )
    return modes


def run(ctx: Context) -> None:
    import torch

    args, work, results = ctx.args, ctx.work, ctx.results
    seeds_file = work / "seeds.json"
    seeds_file.write_text(json.dumps(ctx.seeds(args.seeds)))
    glibc = platform.libc_ver()[0] == "glibc" and not torch.cuda.is_available()
    label = "freed memory returned to the OS" if glibc else "as allocated"
    print(f"  -- {label}:")
    modes = memory_workers(args, work, seeds_file, RETURN_FREED_MEMORY if glibc else {})
    results.sections["memory"] = modes
    saved = modes["attention"]["saved_for_backward_mb"]
    print(
        f"  kept for backward in one CLO forward, attention-only ({saved['batch']}; weights not counted): "
        + ", ".join(f"{k} {v:.0f} MB" for k, v in saved.items() if k != "batch")
    )
    full = modes["full"]["training_mb"]
    results.add(
        TARGETS,
        "memory_attention_vs_full",
        modes["attention"]["training_mb"] / full,
        f"{modes['attention']['training_mb']:.0f} vs {full:.0f} MB ({label}); raw peak RSS ratio "
        f"{modes['attention']['peak_rss_mb'] / modes['full']['peak_rss_mb']:.2f}",
    )
    results.add(
        TARGETS,
        "memory_lora_vs_full",
        modes["lora"]["training_mb"] / full,
        f"{modes['lora']['training_mb']:.0f} vs {full:.0f} MB",
    )
    if glibc:  # the same runs with glibc's default heap: what `top` shows during training
        print("  -- glibc's default heap (freed blocks kept):")
        heap = memory_workers(args, work, seeds_file, {})
        results.sections["memory_default_heap"] = heap
        results.add(
            TARGETS,
            "memory_attention_vs_full_default_heap",
            heap["attention"]["training_mb"] / heap["full"]["training_mb"],
            f"{heap['attention']['training_mb']:.0f} vs {heap['full']['training_mb']:.0f} MB",
        )
    print(f"  ({args.mem_steps} CLO step(s) of {args.mem_batch_seeds} seeds per mode)")

#!/usr/bin/env python
"""Benchmarks of the kit: ratios measured in ONE run, same process, same data, printed against their goals.

    python benchmarks/bench.py [OUT.json] [--only train,memory,translate,generate,mfu,padding,end_to_end]
    python -m benchmarks ...   (the same)

One module per measured thing, over a shared harness (benchmarks/harness.py):

  train       CLO step vs TRL DPO and SFT steps, same seeds (steps.py)
  memory      peak training memory, attention-only vs full vs LoRA, one process per mode (memory.py)
  translate   translation batched vs one segment per call, warm cache (translation.py)
  generate    generation: the shrinking loop vs transformers' generate, batched vs one at a time (generation.py)
  mfu         model-FLOP utilisation against a GEMM measured in the same run (mfu.py)
  padding     share of computed positions that are padding, per stage (padding.py)
  end_to_end  a pipeline run's stage times, compute vs waiting (end_to_end.py)

Settings are small so the whole script runs in minutes on 2 CPU cores: the embedded SmolLM2-135M, the
shortest seeds of the packaged smoke set translated to Catalan with Apertium. It runs unchanged on
CUDA (bf16 training matmuls, torch.cuda.max_memory_allocated for memory).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # runs from a checkout without an install too

from benchmarks import end_to_end, generation, harness, memory, mfu, padding, steps, translation  # noqa: E402

SECTIONS = {m.NAME: m for m in (steps, memory, translation, generation, mfu, padding, end_to_end)}
ALIASES = {"demo": "end_to_end"}
WORKERS = {memory.NAME: memory.worker}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "out",
        nargs="?",
        default=str(harness.REPO / "runs" / "bench.json"),
        help="JSON results (default runs/bench.json)",
    )
    p.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections among {tuple(SECTIONS)}")
    p.add_argument("--model", default=harness.MODEL_ID, help="model under test (hub id, folder or embedded: id)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seeds", type=int, default=8, help="seeds in the training-step benchmarks")
    p.add_argument("--batch-seeds", type=int, default=1, help="seeds per training step (CLO 4x sequences)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="timed training rounds after the warm-up")
    p.add_argument("--max-length", type=int, default=320)
    p.add_argument("--mem-batch-seeds", type=int, default=4, help="seeds per step in the memory workers")
    p.add_argument(
        "--mem-steps", type=int, default=2, help="CLO steps per memory worker (Adam state exists from step 1)"
    )
    p.add_argument("--mfu-batch-seeds", type=int, default=4, help="seeds per step in the mfu section (the demo's)")
    p.add_argument("--gemm-size", type=int, default=None, help="N of the N^3 GEMM (default 1024 CPU, 8192 GPU)")
    p.add_argument("--padding-seeds", type=int, default=48, help="seeds in the padding section (48: the smoke set)")
    p.add_argument("--padding-batch-seeds", type=int, default=4, help="seeds per CLO batch (the demo's batch_seeds)")
    p.add_argument("--profile", action="store_true", help="profile one call per section (done anyway for a miss)")
    # A real job translates thousands of segments, so its length-sorted batches are homogeneous;
    # 80 texts give several batches instead of one that spans every length.
    p.add_argument("--translate-texts", type=int, default=80)
    p.add_argument("--apertium-batch", type=int, default=200)
    p.add_argument("--m2m100-batch", type=int, default=None, help="default: the translator's own batch size (16)")
    p.add_argument("--gen-prompts", type=int, default=48, help="target-language prompts (48: the whole smoke set)")
    p.add_argument("--gen-batch", type=int, default=25, help="prompts per generation batch (the demo uses 60)")
    p.add_argument("--gen-tokens", type=int, default=40, help="the demo's evaluate.max_new_tokens")
    p.add_argument("--gen-rounds", type=int, default=2, help="timed runs of each generation path, alternating")
    p.add_argument("--recipe", default="demo", help="end_to_end: runs/<recipe> (default demo)")
    p.add_argument(
        "--run-dir", default=None, help="end_to_end: a run folder holding timings.json (overrides --recipe)"
    )
    p.add_argument("--_worker", dest="worker", nargs=2, metavar=("SECTION", "ARG"), help=argparse.SUPPRESS)
    p.add_argument("--seeds-file", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.gemm_size is None:
        import torch

        args.gemm_size = 8192 if torch.cuda.is_available() else 1024
    return args


def quiet_libraries() -> None:
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("KINETO_LOG_LEVEL", "99")  # torch.profiler's start/stop lines would break the table
    sys.stdout.reconfigure(line_buffering=True)  # progress lines in order when piped to a file
    import torch

    torch.set_num_threads(args.threads)
    if args.worker:
        section, arg = args.worker
        WORKERS[section](arg, args)
        return 0
    quiet_libraries()
    only = [ALIASES.get(s.strip(), s.strip()) for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"--only: unknown sections {sorted(unknown)}; known: {tuple(SECTIONS)}")
    start = time.perf_counter()
    results = harness.Results(
        device=harness.device_description(),
        load_average_start=harness.load_average(),
        model=args.model,
        settings={k: v for k, v in vars(args).items() if k not in ("worker", "seeds_file", "work")},
    )
    print(f"device: {results.device}; load average {results.load_average_start}")
    with tempfile.TemporaryDirectory(prefix="clo-bench-") as tmp:
        ctx = harness.Context(args, Path(tmp), results)
        for name, module in SECTIONS.items():
            if name not in only:
                continue
            print(f"\n[{name}]")
            t0 = time.perf_counter()
            try:
                module.run(ctx)
            except Exception as err:  # noqa: BLE001 - one broken section must not hide the others
                results.errors[name] = f"{type(err).__name__}: {err}"
                print(f"  ERROR: {type(err).__name__}: {err}")
            print(f"  ({time.perf_counter() - t0:.0f} s; load average {harness.load_average()})")
    results.load_average_end = harness.load_average()
    results.seconds = time.perf_counter() - start
    harness.print_table(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results.to_json(), indent=1, default=str))
    print(f"results: {out}")
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())

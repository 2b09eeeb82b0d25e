"""What every benchmark section shares: the device and load line, timing, profiling, worker
processes, the model and seeds under test, and the result table.

Every figure is a ratio of two things measured in the same run, one after the other, on the same
inputs, so it holds on a noisy machine; the absolute numbers are printed beside it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # runs from a checkout without an install too

BENCH_SCRIPT = Path(__file__).resolve().parent / "bench.py"
MODEL_ID = "embedded:smollm2-135m-instruct"
LANG = "ca"


# --------------------------------------------------------------------------- device and load


def cuda() -> bool:
    import torch

    return torch.cuda.is_available()


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
    return (
        f"CPU: {cpu}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()} "
        f"(torch {torch.__version__})"
    )


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


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of fn(), the device synchronised before the clock stops."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    synchronize()
    return time.perf_counter() - w0, time.process_time() - c0


def median(xs):
    xs = sorted(xs)
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


# --------------------------------------------------------------------------- output


@contextlib.contextmanager
def quiet():
    """TRL prints dataset-preparation progress; keep the benchmark's output readable."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def top_ops(events, n: int = 5) -> list[dict]:
    """The n profiler ops with the most self CPU time, with their share of the total."""
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:n]
    return [
        {"op": e.key, "self_cpu_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total} for e in top
    ]


def profile_call(label: str, fn) -> list[dict]:
    """fn() once under torch.profiler (CPU ops): where a missed throughput target's time goes."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    ops = top_ops(prof.key_averages(), 6)
    print(f"  profile of {label}: " + ", ".join(f"{t['op']} {t['share']:.0%}" for t in ops))
    return ops


@dataclass
class Results:
    """Everything a run measured: ratios against their targets, each section's details, errors."""

    device: str
    load_average_start: str
    model: str
    settings: dict
    ratios: dict = field(default_factory=dict)
    sections: dict = field(default_factory=dict)
    errors: dict = field(default_factory=dict)
    load_average_end: str = ""
    seconds: float = 0.0

    def add(self, targets: dict, name: str, value, detail: str) -> None:
        """Record `value` for the figure `name` of a section's `targets` ({name: (op, target, what)})."""
        op, target, what = targets[name]
        self.ratios[name] = {
            "value": value,
            "target": target,
            "op": op,
            "status": verdict(op, target, value),
            "what": what,
            "detail": detail,
        }

    def status(self, name: str) -> str | None:
        return self.ratios.get(name, {}).get("status")

    def to_json(self) -> dict:
        return dict(self.__dict__)


def verdict(op: str | None, target, value) -> str:
    if op is None or value is None:
        return "info"
    ok = {"<=": value <= target, ">=": value >= target, "==": value == target}[op]
    return "PASS" if ok else "MISS"


def print_table(results: Results) -> None:
    print("\n" + "=" * 118)
    print(
        f"device: {results.device}; load average at start {results.load_average_start}, end {results.load_average_end}"
    )
    print(f"{'measurement':34s} {'value':>8s} {'target':>8s} {'status':>6s}  detail")
    for name, r in results.ratios.items():
        value = r["value"]
        shown = f"{value:.2f}" if isinstance(value, float) else str(value)
        target = "" if r["op"] is None else f"{r['op']} {r['target']}"
        print(f"{name:34s} {shown:>8s} {target:>8s} {r['status']:>6s}  {r['detail']}")
    for name, err in results.errors.items():
        print(f"{name:34s} {'-':>8s} {'':>8s} {'ERROR':>6s}  {err}")
    print(f"total {results.seconds:.0f} s")


# --------------------------------------------------------------------------- model and data under test


def fresh_model(model_id: str, mode: str = "attention"):
    """(model, tokenizer, trainable report): bf16 weights on a GPU, fp32 on a CPU, the trainable set chosen."""
    from clo_utils.models import load_model_and_tokenizer, select_trainable

    model, tok = load_model_and_tokenizer(model_id, dtype="float32")
    model, report = select_trainable(model, mode)
    if cuda():
        model.to("cuda")
    return model, tok, report


def bench_seeds(n: int, tok, work: Path) -> tuple[list[dict], str]:
    """The n shortest seeds of the packaged smoke set (prompt + response tokens), translated into
    Catalan with Apertium (the offline default). Without Apertium the target side is a copy of the
    English (timings only; said in the output)."""
    from clo_utils.data import make_seed_row
    from clo_utils.translation.sources import load_english_sft

    rows = load_english_sft("smoke")
    rows = sorted(rows, key=lambda r: (len(tok(r["prompt"] + r["response"])["input_ids"]), r["id"]))[:n]
    try:
        from clo_utils.translation.translate import get_translator, translate

        translator = get_translator("apertium", LANG)
        texts = [r["prompt"] for r in rows] + [r["response"] for r in rows]
        out = translate(texts, LANG, backend=translator, cache=work / "seed_translations.sqlite", progress=False)
        label = translator.label
    except Exception as err:  # noqa: BLE001 - the timing sections still run without MT
        print(f"  ! Apertium unavailable ({err}); target side = English copy, timings only")
        out = [r["prompt"] for r in rows] + [r["response"] for r in rows]
        label = "none (English copy)"
    return [make_seed_row(r, LANG, p, q) for r, p, q in zip(rows, out[:n], out[n:])], label


@dataclass
class Context:
    """What a section gets: the parsed arguments, a scratch folder, the results, the seeds (loaded once)."""

    args: object
    work: Path
    results: Results
    _seeds: list[dict] | None = None

    def seeds(self, n: int | None = None) -> list[dict]:
        if self._seeds is None:
            from clo_utils.models import load_tokenizer

            want = max(self.args.seeds, self.args.gen_prompts, self.args.padding_seeds)
            self._seeds, label = bench_seeds(want, load_tokenizer(self.args.model), self.work)
            self.results.sections["data"] = {
                "seeds": len(self._seeds),
                "translator": label,
                "source": "clo_utils/assets/smoke_sft.jsonl",
            }
            print(f"  data: {len(self._seeds)} seeds (shortest of the smoke set), en -> {LANG} with {label}")
        return self._seeds if n is None else self._seeds[:n]


# --------------------------------------------------------------------------- worker processes


def run_workers(worker: str, jobs: dict[str, list[str]], env: dict | None = None) -> dict[str, dict]:
    """Run `bench.py --_worker WORKER ARGS` once per job, side by side, each in a fresh process (a
    peak is per process, so they do not mix); each prints one `BENCH_RESULT {json}` line."""
    procs = {
        name: subprocess.Popen(
            [sys.executable, str(BENCH_SCRIPT), "--_worker", worker, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for name, argv in jobs.items()
    }
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate()
        line = next((x for x in stdout.splitlines() if x.startswith("BENCH_RESULT ")), None)
        if proc.returncode != 0 or line is None:
            raise RuntimeError(f"{worker} worker ({name}) failed:\n{(stdout + stderr)[-3000:]}")
        out[name] = json.loads(line.split(" ", 1)[1])
    return out


def worker_result(obj: dict) -> None:
    print("BENCH_RESULT " + json.dumps(obj, default=str), flush=True)

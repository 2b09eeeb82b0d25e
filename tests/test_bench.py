"""The benchmark script runs (README: `make bench`) and its translation section measures what it says."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_translation_section_counts_backend_calls_and_decoder_positions(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench.py"), str(out), "--only", "translate",
                           "--translate-texts", "4", "--m2m100-batch", "4", "--threads", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    results = json.loads(out.read_text())
    ratios = results["ratios"]
    assert ratios["translate_warm_cache_calls"]["value"] == 0  # a warm cache never calls a backend
    for name in ("m2m100", "m2m100_greedy"):
        runs = results["translation"][name]
        assert runs["one_per_call"]["backend_calls"] == 4 and runs["batched"]["backend_calls"] == 1
        assert runs["warm_cache"]["same_output"] and runs["warm_cache"]["cached"] == 4
        # a random model runs every row to the cap: one batch computes at least what 4 calls do
        assert runs["batched"]["decoder_tokens"] >= runs["one_per_call"]["decoder_tokens"] > 0
        assert ratios[f"translate_{name}_speedup"]["value"] > 0
    assert "USDT" not in proc.stdout + proc.stderr  # profiler chatter stays out of the table

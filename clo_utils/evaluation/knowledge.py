"""Knowledge benchmarks (optional extra): lm-evaluation-harness on a trained model folder.

The paper checks that CLO keeps what the model knows (docs/method.md §6): MMMLU (human-translated
MMLU) per target language and English MMLU, plus BELEBELE reading comprehension. This module maps
each language to lm-evaluation-harness task names and returns one accuracy per task, the
metrics.json "knowledge" block.

Task names are those of lm_eval 0.4.13 (`pip install "lm-eval==0.4.13"`, the `knowledge`
extra): MMMLU is `mmmlu_<locale>` (openai/MMMLU), Global-MMLU is `global_mmlu_<code>` (CohereLabs'
culturally re-annotated translation, which adds nothing new for de/zh but is an alternative source),
BELEBELE is `belebele_<flores code>`. All of them download their data from the Hugging Face hub on
first use: offline they fail, and `run_knowledge` says so. Scores are zero-shot log-likelihood
accuracies ("acc,none") unless num_fewshot is set; the paper's shot count is not recovered [open].
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from ..common.runfiles import read_json

log = logging.getLogger(__name__)

# lang -> {benchmark: lm_eval task or group name}. English is the retention check.
KNOWLEDGE_TASKS: dict[str, dict[str, str]] = {
    "en": {"mmlu": "mmlu", "global_mmlu": "global_mmlu_en", "belebele": "belebele_eng_Latn"},
    # The paper's six.
    "zh": {"mmmlu": "mmmlu_zh_cn", "global_mmlu": "global_mmlu_zh", "belebele": "belebele_zho_Hans"},
    "de": {"mmmlu": "mmmlu_de_de", "global_mmlu": "global_mmlu_de", "belebele": "belebele_deu_Latn"},
    "ko": {"mmmlu": "mmmlu_ko_kr", "global_mmlu": "global_mmlu_ko", "belebele": "belebele_kor_Hang"},
    "id": {"mmmlu": "mmmlu_id_id", "global_mmlu": "global_mmlu_id", "belebele": "belebele_ind_Latn"},
    "sw": {"mmmlu": "mmmlu_sw_ke", "global_mmlu": "global_mmlu_sw", "belebele": "belebele_swh_Latn"},
    "yo": {"mmmlu": "mmmlu_yo_ng", "global_mmlu": "global_mmlu_yo", "belebele": "belebele_yor_Latn"},
    # Offline-demo languages: what exists for them.
    "es": {"mmmlu": "mmmlu_es_la", "global_mmlu": "global_mmlu_es", "belebele": "belebele_spa_Latn"},
    "ca": {"belebele": "belebele_cat_Latn"},
    "hr": {"belebele": "belebele_hrv_Latn"},
}
DEFAULT_BENCHMARKS = ("mmmlu", "mmlu", "belebele")  # the paper's set; "global_mmlu" on request
LM_EVAL_PIN = "lm-eval==0.4.13"


def knowledge_tasks(
    lang: str, benchmarks: Sequence[str] = DEFAULT_BENCHMARKS, include_english: bool = True
) -> list[str]:
    """lm_eval task names for `lang` (and English, for retention) among `benchmarks`."""
    if lang not in KNOWLEDGE_TASKS:
        raise ValueError(f"no knowledge tasks mapped for {lang!r}; known: {sorted(KNOWLEDGE_TASKS)}")
    langs = [lang] + (["en"] if include_english and lang != "en" else [])
    return [KNOWLEDGE_TASKS[l][b] for l in langs for b in benchmarks if b in KNOWLEDGE_TASKS[l]]


def lm_eval_available() -> str | None:
    """The installed lm_eval version, or None."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("lm_eval")
    except PackageNotFoundError:
        return None


def model_path_for_run(run_dir: str | os.PathLike, base_model_id: str) -> str:
    """What lm_eval loads for a run folder: its model/, or for base-0 the base model (an embedded id
    becomes its converted local folder, which lm_eval can read)."""
    run_dir = Path(run_dir)
    if (run_dir / "model").exists():
        return str(run_dir / "model")
    if run_dir.name != "base-0":
        raise FileNotFoundError(f"{run_dir}: no model/ folder (and not a base-0 folder)")
    from ..models import EMBEDDED_MODELS, embedded_model_dir

    return str(embedded_model_dir(base_model_id)) if base_model_id in EMBEDDED_MODELS else base_model_id


def _model_args(model_dir: Path, dtype: str, device: str, batch_size: int) -> dict:
    """lm_eval's HF model arguments for a run's model/ folder (full weights or a peft adapter)."""
    args = {"dtype": dtype, "device": device, "batch_size": batch_size}
    adapter = model_dir / "adapter_config.json"
    if adapter.exists():  # LoRA run: the base model plus the adapter
        base = read_json(adapter)["base_model_name_or_path"]
        return {**args, "pretrained": base, "peft": str(model_dir), "tokenizer": str(model_dir)}
    return {**args, "pretrained": str(model_dir)}


def accuracy_by_task(results: dict, tasks: Sequence[str], metric: str = "acc,none") -> dict[str, float]:
    """{task: accuracy} from lm_eval results; groups (mmlu, mmmlu_xx) come from results["groups"]."""
    found = {**results.get("results", {}), **results.get("groups", {})}
    scores = {}
    for task in tasks:
        value = (found.get(task) or {}).get(metric)
        if value is None:
            log.warning("lm_eval returned no %s for %s", metric, task)
        else:
            scores[task] = float(value)
    return scores


def run_knowledge(
    model_dir: str | os.PathLike,
    tasks: Sequence[str],
    include_path: str | os.PathLike | None = None,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    dtype: str = "float32",
    seed: int = 0,
    include_defaults: bool = True,
) -> dict:
    """Run lm-evaluation-harness tasks on a model folder; returns {"scores": {task: acc},
    "seconds", "lm_eval", "limit", "num_fewshot"}; the "knowledge" block is its "scores".

    include_path: a folder of extra task YAMLs (a local task such as the test's).
    limit: at most this many documents per task (a fraction: that share), for quick looks.
    include_defaults: also index lm_eval's built-in tasks (many thousands: slow to index); False when
    every task comes from include_path.
    """
    version = lm_eval_available()
    if version is None:
        raise ImportError(f'knowledge benchmarks need lm-evaluation-harness: pip install "{LM_EVAL_PIN}"')
    import lm_eval
    from lm_eval.tasks import TaskManager

    start = time.perf_counter()
    task_manager = TaskManager(
        include_path=str(include_path) if include_path else None, include_defaults=include_defaults
    )
    unknown = [t for t in tasks if t not in task_manager.all_tasks]
    if unknown:
        raise ValueError(f"lm_eval {version} knows no task {unknown}; see KNOWLEDGE_TASKS")
    try:
        results = lm_eval.simple_evaluate(
            model="hf",
            model_args=_model_args(Path(model_dir), dtype, device, batch_size),
            tasks=list(tasks),
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=task_manager,
            log_samples=False,
            bootstrap_iters=0,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    except (ConnectionError, OSError) as err:
        # Hub tasks download their data on first use; offline this is where they stop.
        raise RuntimeError(
            f"lm_eval could not load a task's data or the model ({err}); the MMLU/MMMLU/"
            "BELEBELE tasks download from the Hugging Face hub, which this machine may "
            "not reach"
        ) from err
    return {
        "scores": accuracy_by_task(results, tasks),
        "seconds": round(time.perf_counter() - start, 3),
        "lm_eval": version,
        "limit": limit,
        "num_fewshot": num_fewshot,
    }

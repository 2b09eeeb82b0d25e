"""The evaluation driver: one model on the held-out seeds, and run folders.

Evaluates one run folder on the held-out seeds (docs/run-layout.md): loads the run's model,
answers every held-out prompt in both directions (target-language prompts and English prompts)
through clo_utils.evaluation.generation (batched, cached on disk per batch), scores the answers with the pure
metrics of clo_utils.evaluation.metrics (one outcome per prompt and the shares over all prompts, chrF++), adds the
token-mean NLL (nats/token) of the reference answers under the model (the least noisy continuous
metric on small models; clo_utils.evaluation.reference_nll, the generated prompts scored in the same prefill
as their answers), and writes answers.jsonl and metrics.json through clo_utils.common.runfiles.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ..common.cache import DiskCache, cache_key, default_cache_dir, open_cache  # noqa: F401  (re-exported)
from ..common.runfiles import (  # noqa: F401  (the run-file helpers are re-exported for notebooks and the judge)
    read_answers,
    read_json,
    read_jsonl,
    read_metrics,
    read_train,
    update_metrics,
    write_answers,
)
from ..common.text import (  # noqa: F401  (re-exported)
    chat_messages,
    check_language_id,
    count_words,
    detect_languages,
    identify_languages,
    normalized_tokens,
)
from ..models import CHATML_TURN_END, end_of_turn_token_ids  # noqa: F401  (re-exported)
from .generation import (  # noqa: F401  (re-exported: clo_utils.evaluation.evaluate.generate_answers and the cache names)
    GENERATION_KEY_VERSION,
    GENERATIONS_FILE,
    GenerationCache,
    _decoding_settings,
    _eos_token_ids,
    _length_sorted_batches,
    _token_ids,
    _until_eos,
    chat_prompt_text,
    generate_answers,
    open_generation_cache,
    weights_fingerprint,
)
from .metrics import (  # noqa: F401  (re-exported: clo_utils.evaluation.evaluate is the documented import path)
    DIRECTIONS,
    chrf,
    default_language_id,
    distinct_trigram_ratio,
    is_echo,
    outcome_report,
)
from .outcomes import SCORING_VERSION
from .reference_nll import corpus_nll, pair_scores, prompt_completion_ids, reference_nll  # noqa: F401  (re-exported)
from .rescore import rescore_run  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- one model, held-out seeds


def load_eval_seeds(data_dir: str | Path, max_prompts: int | None = None) -> list[dict]:
    """The first `max_prompts` held-out seeds of `data_dir/seeds_eval.jsonl` (file order)."""
    path = Path(data_dir) / "seeds_eval.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no held-out seeds; run 01_translate_data for this language first")
    rows = read_jsonl(path)
    return rows[:max_prompts] if max_prompts else rows


def evaluate_direction(
    model,
    tokenizer,
    prompts: list[str],
    references: list[str],
    expected_lang: str,
    other_lang: str,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    min_words: int = 5,
    system_prompt: str | None = None,
    progress: bool = True,
    cache: GenerationCache | None = None,
    language_id: str = "lingua",
) -> tuple[dict, list[str]]:
    """Metrics of one direction (the metrics.json "eval" entry) and the answers, in prompt order."""
    start = time.perf_counter()
    pairs = [prompt_completion_ids(tokenizer, p, r, system_prompt) for p, r in zip(prompts, references)]
    scored_in_prefill: dict[int, tuple[float, int]] = {}  # reference NLL of the prompts generated now
    answers = generate_answers(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        system_prompt=system_prompt,
        progress=progress,
        cache=cache,
        reference_ids=[reference for _, reference in pairs],
        reference_scores=scored_in_prefill,
    )
    run_lang = other_lang if expected_lang == "en" else expected_lang
    metrics = outcome_report(
        prompts, answers, expected_lang, run_lang=run_lang, language_id=language_id, min_words=min_words
    )
    metrics["chrf"] = chrf(answers, references)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    scores = pair_scores(model, pairs, pad_id, batch_size, cache=cache, known=scored_in_prefill)
    metrics["nll"], metrics["ppl"] = corpus_nll(scores)
    metrics["seconds"] = round(time.perf_counter() - start, 3)
    return metrics, answers


def evaluate_model(model, tokenizer, seeds: list[dict], lang: str, **options) -> tuple[dict, list[dict]]:
    """The "eval" block ({"tgt": ..., "en": ...}) for held-out seeds, and one answer row per
    (direction, prompt): {"direction", "id", "prompt", "answer", "reference"}. `options` are
    evaluate_direction's (max_new_tokens, batch_size, min_words, system_prompt, progress, cache, language_id)."""
    sides = {"tgt": ("prompt_tgt", "response_tgt", lang, "en"), "en": ("prompt_en", "response_en", "en", lang)}
    block, rows = {}, []
    for direction in DIRECTIONS:
        prompt_field, reference_field, expected, other = sides[direction]
        prompts = [s[prompt_field] for s in seeds]
        references = [s[reference_field] for s in seeds]
        block[direction], answers = evaluate_direction(
            model, tokenizer, prompts, references, expected, other, **options
        )
        rows += [
            {"direction": direction, "id": s["id"], "prompt": p, "answer": a, "reference": r}
            for s, p, a, r in zip(seeds, prompts, answers, references)
        ]
    return block, rows


# --------------------------------------------------------------------------- run folders


def load_run_model(
    run_dir: str | Path,
    base_model_id: str,
    dtype: str = "float32",
    chat_template: str | None = None,
    inference: bool = False,
):
    """(model, tokenizer, model_id) for a run folder: its model/ (full weights or a peft adapter),
    or `base_model_id` for the untouched model's folder base-0. Trained runs saved their tokenizer
    with its template; `chat_template` ("chatml" for a base model) serves base-0. `inference`: the
    model is for generation, so dtype "auto" is fp16 on a GPU without bf16 (models.resolve_dtype),
    and it goes to the GPU when there is one."""
    from ..models import load_model_and_tokenizer

    run_dir = Path(run_dir)
    model_dir = run_dir / "model"
    if (model_dir / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        from ..models import load_tokenizer, resolve_dtype

        model = AutoPeftModelForCausalLM.from_pretrained(model_dir, dtype=resolve_dtype(dtype, inference))
        model, tokenizer, model_id = model.merge_and_unload(), load_tokenizer(str(model_dir)), str(model_dir)
    elif model_dir.exists():
        model, tokenizer = load_model_and_tokenizer(str(model_dir), dtype=dtype, inference=inference)
        model_id = str(model_dir)
    elif run_dir.name == "base-0":
        model, tokenizer = load_model_and_tokenizer(
            base_model_id, dtype=dtype, chat_template=chat_template, inference=inference
        )
        model_id = base_model_id
    else:
        raise FileNotFoundError(f"{run_dir}: no model/ folder (and not a base-0 folder); train this run first")
    if inference and torch.cuda.is_available():
        model = model.to("cuda")
    return model, tokenizer, model_id


def run_blocks(
    run_dir: str | Path, language: str, base_model_id: str, data_dir: str | Path | None = None
) -> tuple[dict, dict | None]:
    """The metrics.json "run" and "train" blocks, from the run's train.json (docs/run-layout.md);
    base-0 gets method "base", n_seeds 0 and train None."""
    run_dir = Path(run_dir)
    manifest_path = Path(data_dir) / "manifest.json" if data_dir else None
    manifest = read_json(manifest_path) if manifest_path and manifest_path.exists() else None
    translator = (manifest or {}).get("translator")
    if isinstance(translator, dict):  # the same label runs.run_info records for trained runs
        translator = translator.get("label") or translator.get("backend")
    recipe = run_dir.parent.parent.name  # runs/<recipe>/<lang>/<run>
    trained = read_train(run_dir)
    if trained is None:
        if run_dir.name != "base-0":
            raise FileNotFoundError(f"{run_dir}/train.json is missing: every trained run writes one")
        run = {
            "recipe": recipe,
            "lang": language,
            "method": "base",
            "n_seeds": 0,
            "model_id": base_model_id,
            "trainable": None,
            "nll_on": None,
            "translator": translator,
        }
        train = None
    else:
        run = {"recipe": recipe, "lang": language, **trained.get("run", {})}
        train = {"history": trained.get("history", []), **trained.get("summary", {})}
    from ..models import model_label, run_labels

    run.setdefault("model_id", base_model_id)
    run.setdefault("translator", translator)
    run.setdefault("model_label", model_label(run["model_id"]))
    run.setdefault("labels", run_labels(run["model_id"], manifest or {}, run.get("n_seeds", 0)))
    return run, train


def evaluate_run(
    run_dir: str | Path,
    data_dir: str | Path,
    language: str,
    base_model_id: str = "embedded:smollm2-135m-instruct",
    max_prompts: int | None = None,
    max_new_tokens: int = 256,
    batch_size: int = 8,
    min_words: int = 5,
    system_prompt: str | None = None,
    dtype: str = "float32",
    chat_template: str | None = None,
    progress: bool = True,
    generation_cache_dir: str | os.PathLike | None = None,
    language_id: str | None = None,
) -> dict:
    """Evaluate one run folder on the held-out seeds: writes answers.jsonl and metrics.json and
    returns the metrics.

    metrics.json gets "run", "train", "eval" and "eval_settings" (decoding settings, beside "eval"
    because readers take eval's keys as directions). An existing "knowledge" block is kept; an
    existing "judge" block is removed: it judged the answers this call replaces. Answers are cached
    per batch in `generation_cache_dir` (None or "": the kit's cache folder); eval_settings records
    the weights' fingerprint and how many batches came from the cache. `language_id` is the detector
    (lingua | fasttext; None: the kit's default for the language, `metrics.default_language_id`).
    """
    language_id = check_language_id(language_id or default_language_id(language))
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seeds = load_eval_seeds(data_dir, max_prompts)
    run, train = run_blocks(run_dir, language, base_model_id, data_dir)
    model, tokenizer, model_id = load_run_model(
        run_dir, base_model_id, dtype=dtype, chat_template=chat_template, inference=True
    )
    log.info("evaluating %s (%s) on %d held-out seeds", run_dir.name, model_id, len(seeds))
    with open_generation_cache(generation_cache_dir or None, model) as cache:
        block, rows = evaluate_model(
            model,
            tokenizer,
            seeds,
            language,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            min_words=min_words,
            system_prompt=system_prompt,
            progress=progress,
            cache=cache,
            language_id=language_id,
        )
    log.info(
        "%s: %d generation batches, %d of them from the cache", run_dir.name, cache.hits + cache.misses, cache.hits
    )
    # Beside "eval", not inside it: readers iterate eval's keys as directions.
    settings = {
        "n_seeds_eval": len(seeds),
        "max_new_tokens": max_new_tokens,
        "min_words": min_words,
        "language_id": language_id,
        "scoring": SCORING_VERSION,
        "system_prompt": system_prompt,
        "decoding": "greedy",
        "dtype": dtype,
        "model": model_id,
        "weights_fingerprint": cache.model_key,
        "generation_batches": {"total": cache.hits + cache.misses, "from_cache": cache.hits},
    }
    write_answers(run_dir, rows)
    return update_metrics(
        run_dir, {"run": run, "train": train, "eval": block, "eval_settings": settings}, drop=("judge",)
    )


# --------------------------------------------------------------------------- tables

METRIC_COLUMNS = (
    "n_prompts",
    "target",
    "other_language",
    "no_answer",
    "other_en",
    "other_near",
    "other_rest",
    "echo",
    "repetition",
    "line_pass",
    "n_line_judged",
    "line_pass_all",
    "chrf",
    "nll",
    "ppl",
    "seconds",
)


def metrics_table(run_dirs: Sequence[str | Path]):
    """One row per (run, direction) with every eval metric (a pandas DataFrame)."""
    import pandas as pd

    rows = []
    for run_dir in map(Path, run_dirs):
        metrics = read_metrics(run_dir) if (run_dir / "metrics.json").exists() else {}
        for direction in DIRECTIONS:
            scores = metrics.get("eval", {}).get(direction)
            if scores:
                rows.append(
                    {"run": run_dir.name, "direction": direction, **{k: scores.get(k) for k in METRIC_COLUMNS}}
                )
    return pd.DataFrame(rows, columns=["run", "direction", *METRIC_COLUMNS])


def side_by_side(run_dirs: Sequence[str | Path], direction: str = "tgt", n_examples: int = 3):
    """The paper's Figure 1: the first `n_examples` prompts with every run's answer beside them."""
    import pandas as pd

    answers = {Path(d).name: {r["id"]: r for r in read_answers(d) if r["direction"] == direction} for d in run_dirs}
    first = next(iter(answers.values()), {})
    ids = [i for i in first if all(i in by_id for by_id in answers.values())][:n_examples]
    rows = [
        {"id": i, "prompt": first[i]["prompt"], **{run: by_id[i]["answer"] for run, by_id in answers.items()}}
        for i in ids
    ]
    return pd.DataFrame(rows)

"""Evaluation: generation, language fidelity, chrF++, held-out reference NLL, and run folders.

What CLO optimises is *which language* a model answers in, so the headline metric here is
language fidelity: the share of answers written in the prompt's language (clo-method.md §6; the
paper reports no such metric). Language ID is unreliable on short or degenerate answers, so every
fidelity number comes with the shares that explain it (`fidelity_report`):

  fidelity        share of countable answers (>= min_words words) identified as the expected language
  wrong_language  share of countable answers identified as the other language of the pair
  too_short       share of all answers with fewer than min_words words (not countable)
  echo            share of all answers that start by copying the prompt (see `is_echo`)
  repetition      share of answers with >= 3 word trigrams whose distinct-trigram ratio is < 0.5

Language ID uses lingua restricted to two languages, {English, target}: with all 75 languages
loaded lingua confuses close pairs (Indonesian/Malay, Catalan/Spanish/Occitan) and the question
asked is only "English or the target?". lingua may also decline to decide; such answers count in
neither fidelity nor wrong_language, so the two can sum to less than 1.

Reference scores on held-out seeds: corpus chrF++ (sacrebleu, 0-100 scale) of each answer against
the reference answer in the same language, and the token-mean NLL (nats/token) of the reference
answers under the model (the least noisy continuous metric on small models).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Sequence

import torch

from .languages import get_language
from .models import CHATML_TURN_END

log = logging.getLogger(__name__)

DIRECTIONS = ("tgt", "en")  # target prompts -> target references; English prompts -> English references
ECHO_PREFIX_WORDS = 8       # how many opening prompt words an echo must copy (fewer if the prompt is shorter)
ECHO_MIN_PROMPT_WORDS = 3   # shorter prompts are never called echoed: restating "Hi" is not copying
ECHO_MAX_LEAD_IN = 3        # the copy may start after a short lead-in ("Question:", "Sure!")
REPETITION_THRESHOLD = 0.5  # distinct/total word trigrams below this = degenerate, looping text


# --------------------------------------------------------------------------- chat prompts

def chat_messages(prompt: str, system_prompt: str | None = None) -> list[dict]:
    """One user turn; None keeps the chat template's own default system prompt (recorded per run)."""
    messages = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    return messages + [{"role": "user", "content": prompt}]


def chat_prompt_text(tokenizer, prompt: str, system_prompt: str | None = None) -> str:
    """The prompt as the model sees it, ending where the assistant's answer begins."""
    return tokenizer.apply_chat_template(chat_messages(prompt, system_prompt), tokenize=False,
                                         add_generation_prompt=True)


def _token_ids(tokenizer, text: str) -> list[int]:
    # The chat template already writes any BOS it wants; adding special tokens would double it.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a turn: the tokenizer's EOS plus the model's generation config's."""
    ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    configured = getattr(model.generation_config, "eos_token_id", None)
    if configured is not None:
        ids += configured if isinstance(configured, (list, tuple)) else [configured]
    return list(dict.fromkeys(ids))


# --------------------------------------------------------------------------- generation

def _until_eos(token_ids: list[int], eos_ids: Sequence[int]) -> list[int]:
    """The answer's tokens before its first end-of-turn token (and the padding after it); an EOS
    that the tokenizer does not mark as special would otherwise be decoded into the text."""
    for position, token in enumerate(token_ids):
        if token in eos_ids:
            return token_ids[:position]
    return token_ids


def _length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first: memory trouble shows early)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


def generate_answers(model, tokenizer, prompts: list[str], max_new_tokens: int = 256, batch_size: int = 8,
                     system_prompt: str | None = None, do_sample: bool = False, temperature: float = 0.7,
                     top_p: float = 0.9, seed: int = 0, progress: bool = True) -> list[str]:
    """Answers to `prompts` through the chat template, in the order of `prompts`.

    Greedy by default (reproducible, and the same for every model compared); sampling when
    `do_sample`, seeded once with `seed` (sampled answers then depend on the batch composition).
    Batches are built from length-sorted prompts with left padding, so little compute goes to
    padding; generation stops at EOS (the tokenizer's and the model's) or after max_new_tokens.
    """
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not prompts:
        return []
    eos_ids = _eos_token_ids(model, tokenizer)
    if not eos_ids:
        raise ValueError("neither the tokenizer nor the model's generation config names an EOS token: "
                         "answers would never stop; set tokenizer.eos_token")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    # A fresh config: the comparison must not depend on each checkpoint's own sampling defaults.
    sampling = {"temperature": temperature, "top_p": top_p} if do_sample else {}
    # A ChatML turn end that is text, not a token (a base model given the kit's ChatML template),
    # stops generation as a string; the answer is cut there below.
    turn_end_is_text = CHATML_TURN_END in (tokenizer.chat_template or "") and \
        tokenizer.convert_tokens_to_ids(CHATML_TURN_END) in (None, tokenizer.unk_token_id)
    stops = {"stop_strings": [CHATML_TURN_END]} if turn_end_is_text else {}
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad_id,
                              eos_token_id=eos_ids, **stops, **sampling)
    encoded = [_token_ids(tokenizer, chat_prompt_text(tokenizer, p, system_prompt)) for p in prompts]
    answers: list[str | None] = [None] * len(prompts)
    if do_sample:
        torch.manual_seed(seed)
    was_training, saved_side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"  # decoder-only models continue from the right edge
    try:
        with torch.inference_mode(), tqdm(total=len(prompts), desc="generating", unit="answer",
                                          disable=not progress) as bar:
            for batch in _length_sorted_batches([len(e) for e in encoded], batch_size):
                inputs = tokenizer.pad({"input_ids": [encoded[i] for i in batch]}, padding=True,
                                       return_tensors="pt").to(model.device)
                output = model.generate(**inputs, generation_config=config, tokenizer=tokenizer)
                new_tokens = [_until_eos(row, eos_ids) for row in output[:, inputs["input_ids"].shape[1]:].tolist()]
                for i, text in zip(batch, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                    answers[i] = (text.split(CHATML_TURN_END, 1)[0] if turn_end_is_text else text).strip()
                bar.update(len(batch))
    finally:
        tokenizer.padding_side = saved_side
        model.train(was_training)
    return answers  # type: ignore[return-value]


# --------------------------------------------------------------------------- words

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_COMBINING = "\u0300-\u036f"  # tone marks written as separate code points (Yoruba "ọ̀") stay in their word
# One token per Han/kana character (those scripts write no spaces; a character is about a word),
# otherwise a run of letters/digits. Apostrophes and hyphens split words: consistent across answers.
_TOKEN = re.compile(rf"[{_CJK}]|(?:[^\W_{_CJK}]|[{_COMBINING}])+")


def normalized_tokens(text: str) -> list[str]:
    """Case-folded word tokens (numbers included), punctuation dropped."""
    return _TOKEN.findall(text.casefold())


def count_words(text: str) -> int:
    """Words that carry language evidence: tokens with at least one letter ("2019" does not count)."""
    return sum(any(ch.isalpha() for ch in token) for token in normalized_tokens(text))


# --------------------------------------------------------------------------- language ID

@functools.lru_cache(maxsize=None)
def _detector(lingua_names: frozenset[str]):
    """A lingua detector for exactly these languages; built once per pair (building costs ~0.1 s)."""
    from lingua import Language, LanguageDetectorBuilder

    return LanguageDetectorBuilder.from_languages(*(getattr(Language, n) for n in sorted(lingua_names))).build()


def _language_pair(expected_lang: str, other_lang: str | None) -> tuple[str, str]:
    if other_lang is None:
        if expected_lang == "en":
            raise ValueError("for English prompts pass other_lang= (the run's target language): the "
                             "detector is restricted to {English, target}")
        other_lang = "en"
    if other_lang == expected_lang:
        raise ValueError(f"expected_lang and other_lang must differ, both are {expected_lang!r}")
    get_language(expected_lang), get_language(other_lang)  # clear errors for unknown codes
    return expected_lang, other_lang


def detect_languages(texts: Sequence[str], expected_lang: str, other_lang: str | None = None) -> list[str | None]:
    """The language code lingua picks for each text among {expected, other}; None when it cannot tell."""
    expected_lang, other_lang = _language_pair(expected_lang, other_lang)
    by_lingua = {get_language(c).lingua: c for c in (expected_lang, other_lang)}
    detector = _detector(frozenset(by_lingua))
    found = detector.detect_languages_in_parallel_of(list(texts)) if texts else []
    return [None if lang is None else by_lingua[lang.name] for lang in found]


def language_fidelity(texts: Sequence[str], expected_lang: str, min_words: int = 5,
                      other_lang: str | None = None) -> float:
    """Share of countable texts (>= min_words words) identified as `expected_lang`.

    The detector is restricted to {expected_lang, other_lang}; other_lang defaults to English for a
    target language and must be given (the run's target) when expected_lang is "en".
    NaN when no text is countable.
    """
    countable = [t for t in texts if count_words(t) >= min_words]
    if not countable:
        return math.nan
    found = detect_languages(countable, expected_lang, other_lang)
    return sum(code == expected_lang for code in found) / len(countable)


# --------------------------------------------------------------------------- degenerate answers

def is_echo(prompt: str, answer: str) -> bool:
    """The answer starts by copying the prompt.

    Precisely: with P the prompt's normalised tokens and k = min(len(P), 8), the answer's
    normalised tokens contain P[:k] as a contiguous run starting at one of its first four
    positions (a lead-in of up to three words, such as "Question:" or "Sure!", is allowed).
    Prompts of fewer than three tokens are never called echoed.
    """
    prompt_tokens, answer_tokens = normalized_tokens(prompt), normalized_tokens(answer)
    k = min(len(prompt_tokens), ECHO_PREFIX_WORDS)
    if k < ECHO_MIN_PROMPT_WORDS:
        return False
    head = prompt_tokens[:k]
    return any(answer_tokens[start: start + k] == head for start in range(ECHO_MAX_LEAD_IN + 1))


def distinct_trigram_ratio(text: str) -> float | None:
    """Distinct / total word trigrams; None when the text has fewer than three trigrams."""
    tokens = normalized_tokens(text)
    trigrams = list(zip(tokens, tokens[1:], tokens[2:]))
    if len(trigrams) < 3:
        return None
    return len(set(trigrams)) / len(trigrams)


def _share(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def fidelity_report(prompts: Sequence[str], answers: Sequence[str], expected_lang: str, min_words: int = 5,
                    other_lang: str | None = None) -> dict:
    """Fidelity with the shares that explain it (see the module docstring for each definition).

    Keys: n_prompts, fidelity, too_short, wrong_language, echo, repetition. A share whose
    denominator is empty is None (JSON null), never NaN.
    """
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
    countable = [a for a in answers if count_words(a) >= min_words]
    found = detect_languages(countable, expected_lang, other_lang)
    ratios = [r for r in map(distinct_trigram_ratio, answers) if r is not None]
    return {
        "n_prompts": len(prompts),
        "fidelity": _share([code == expected_lang for code in found]),
        "too_short": _share([count_words(a) < min_words for a in answers]),
        "wrong_language": _share([code not in (expected_lang, None) for code in found]),
        "echo": _share([is_echo(p, a) for p, a in zip(prompts, answers)]),
        "repetition": _share([r < REPETITION_THRESHOLD for r in ratios]),
    }


# --------------------------------------------------------------------------- reference scores

def chrf(answers: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF++ (sacrebleu CHRF with word_order=2), 0-100, one reference per answer."""
    from sacrebleu.metrics import CHRF

    if len(answers) != len(references):
        raise ValueError(f"{len(answers)} answers but {len(references)} references")
    return CHRF(word_order=2).corpus_score(list(answers), [list(references)]).score


def prompt_completion_ids(tokenizer, prompt: str, reference: str,
                          system_prompt: str | None = None) -> tuple[list[int], list[int]]:
    """(prompt ids, reference-answer ids) as the chat template lays out the whole conversation.

    The answer part is the rendered assistant turn up to and including its end-of-turn token (the
    template's trailing newline is dropped): the model is scored on answering and then stopping,
    as it was trained. Prompt and answer are tokenised separately so the boundary is exact.
    """
    prompt_text = chat_prompt_text(tokenizer, prompt, system_prompt)
    messages = chat_messages(prompt, system_prompt) + [{"role": "assistant", "content": reference}]
    full_text = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ValueError("the chat template renders the prompt differently with and without the answer; "
                         "cannot separate the reference tokens")
    return _token_ids(tokenizer, prompt_text), _token_ids(tokenizer, full_text[len(prompt_text):].rstrip("\n"))


def reference_nll(model, tokenizer, prompts: Sequence[str], references: Sequence[str],
                  system_prompt: str | None = None, batch_size: int = 4) -> tuple[float, float]:
    """(token-mean NLL in nats, perplexity) of the reference answers given their prompts.

    The mean runs over every reference token of the whole set (long answers weigh more, as in a
    corpus perplexity); prompt tokens are masked; log-probabilities are computed in fp32.
    """
    if len(prompts) != len(references):
        raise ValueError(f"{len(prompts)} prompts but {len(references)} references")
    pairs = [prompt_completion_ids(tokenizer, p, r, system_prompt) for p, r in zip(prompts, references)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    total_nll, total_tokens = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for batch in _length_sorted_batches([len(p) + len(c) for p, c in pairs], batch_size):
                seqs = [pairs[i][0] + pairs[i][1] for i in batch]
                width = max(map(len, seqs))
                input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
                attention = torch.zeros((len(seqs), width), dtype=torch.long)
                scored = torch.zeros((len(seqs), width), dtype=torch.bool)  # positions holding answer tokens
                for row, i in enumerate(batch):
                    n_prompt, n_all = len(pairs[i][0]), len(seqs[row])
                    input_ids[row, :n_all] = torch.tensor(seqs[row])
                    attention[row, :n_all] = 1
                    scored[row, n_prompt:n_all] = True
                logits = model(input_ids=input_ids.to(model.device),
                               attention_mask=attention.to(model.device)).logits
                # Position t predicts token t+1: score the logits just before each answer token.
                target_mask = scored[:, 1:].to(logits.device)
                selected = logits[:, :-1][target_mask].float()
                targets = input_ids[:, 1:].to(logits.device)[target_mask]
                total_nll += torch.nn.functional.cross_entropy(selected, targets, reduction="sum").item()
                total_tokens += int(target_mask.sum())
    finally:
        model.train(was_training)
    if total_tokens == 0:
        raise ValueError("no reference tokens to score")
    nll = total_nll / total_tokens
    return nll, math.exp(nll)


# --------------------------------------------------------------------------- one model, held-out seeds

def load_eval_seeds(data_dir: str | Path, max_prompts: int | None = None) -> list[dict]:
    """The first `max_prompts` held-out seeds of `data_dir/seeds_eval.jsonl` (file order)."""
    path = Path(data_dir) / "seeds_eval.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no held-out seeds; run 01_translate_data for this language first")
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows[:max_prompts] if max_prompts else rows


def evaluate_direction(model, tokenizer, prompts: list[str], references: list[str], expected_lang: str,
                       other_lang: str, max_new_tokens: int = 256, batch_size: int = 8, min_words: int = 5,
                       system_prompt: str | None = None, progress: bool = True) -> tuple[dict, list[str]]:
    """Metrics of one direction (the metrics.json "eval" entry) and the answers, in prompt order."""
    start = time.perf_counter()
    answers = generate_answers(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                               system_prompt=system_prompt, progress=progress)
    metrics = fidelity_report(prompts, answers, expected_lang, min_words=min_words, other_lang=other_lang)
    metrics["chrf"] = chrf(answers, references)
    metrics["nll"], metrics["ppl"] = reference_nll(model, tokenizer, prompts, references,
                                                   system_prompt=system_prompt, batch_size=batch_size)
    metrics["seconds"] = round(time.perf_counter() - start, 3)
    return metrics, answers


def evaluate_model(model, tokenizer, seeds: list[dict], lang: str, max_new_tokens: int = 256, batch_size: int = 8,
                   min_words: int = 5, system_prompt: str | None = None,
                   progress: bool = True) -> tuple[dict, list[dict]]:
    """The "eval" block ({"tgt": ..., "en": ...}) for held-out seeds, and one answer row per
    (direction, prompt): {"direction", "id", "prompt", "answer", "reference"}."""
    sides = {"tgt": ("prompt_tgt", "response_tgt", lang, "en"), "en": ("prompt_en", "response_en", "en", lang)}
    block, rows = {}, []
    for direction in DIRECTIONS:
        prompt_field, reference_field, expected, other = sides[direction]
        prompts = [s[prompt_field] for s in seeds]
        references = [s[reference_field] for s in seeds]
        block[direction], answers = evaluate_direction(
            model, tokenizer, prompts, references, expected, other, max_new_tokens=max_new_tokens,
            batch_size=batch_size, min_words=min_words, system_prompt=system_prompt, progress=progress)
        rows += [{"direction": direction, "id": s["id"], "prompt": p, "answer": a, "reference": r}
                 for s, p, a, r in zip(seeds, prompts, answers, references)]
    return block, rows


# --------------------------------------------------------------------------- run folders

def load_run_model(run_dir: str | Path, base_model_id: str, dtype: str = "float32", chat_template: str | None = None):
    """(model, tokenizer, model_id) for a run folder: its model/ (full weights or a peft adapter),
    or `base_model_id` for the untouched model's folder base-0. Trained runs saved their tokenizer
    with its template; `chat_template` ("chatml" for a base model) serves base-0."""
    from .models import load_model_and_tokenizer

    run_dir = Path(run_dir)
    model_dir = run_dir / "model"
    if (model_dir / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        from .models import load_tokenizer, resolve_dtype

        model = AutoPeftModelForCausalLM.from_pretrained(model_dir, dtype=resolve_dtype(dtype))
        return model.merge_and_unload(), load_tokenizer(str(model_dir)), str(model_dir)
    if model_dir.exists():
        model, tokenizer = load_model_and_tokenizer(str(model_dir), dtype=dtype)
        return model, tokenizer, str(model_dir)
    if run_dir.name == "base-0":
        model, tokenizer = load_model_and_tokenizer(base_model_id, dtype=dtype, chat_template=chat_template)
        return model, tokenizer, base_model_id
    raise FileNotFoundError(f"{run_dir}: no model/ folder (and not a base-0 folder); train this run first")


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def run_blocks(run_dir: str | Path, language: str, base_model_id: str,
               data_dir: str | Path | None = None) -> tuple[dict, dict | None]:
    """The metrics.json "run" and "train" blocks, from the run's train.json (docs/run-layout.md);
    base-0 gets method "base", n_seeds 0 and train None."""
    run_dir = Path(run_dir)
    manifest = _read_json(Path(data_dir) / "manifest.json") if data_dir else None
    translator = (manifest or {}).get("translator")
    if isinstance(translator, dict):  # the same label runs.run_info records for trained runs
        translator = translator.get("label") or translator.get("backend")
    recipe = run_dir.parent.parent.name  # runs/<recipe>/<lang>/<run>
    trained = _read_json(run_dir / "train.json")
    if trained is None:
        if run_dir.name != "base-0":
            raise FileNotFoundError(f"{run_dir}/train.json is missing: every trained run writes one")
        run = {"recipe": recipe, "lang": language, "method": "base", "n_seeds": 0, "model_id": base_model_id,
               "trainable": None, "nll_on": None, "translator": translator}
        train = None
    else:
        run = {"recipe": recipe, "lang": language, **trained.get("run", {})}
        train = {"history": trained.get("history", []), **trained.get("summary", {})}
    from .models import model_label
    from .runs import run_labels

    run.setdefault("model_id", base_model_id)
    run.setdefault("translator", translator)
    run.setdefault("model_label", model_label(run["model_id"]))
    run.setdefault("labels", run_labels(run["model_id"], manifest or {}, run.get("n_seeds", 0)))
    return run, train


def update_metrics(run_dir: str | Path, blocks: dict, drop: Sequence[str] = ()) -> dict:
    """Merge top-level blocks into run_dir/metrics.json (other blocks are kept, those named in
    `drop` removed); returns the result."""
    path = Path(run_dir) / "metrics.json"
    metrics = {k: v for k, v in (_read_json(path) or {}).items() if k not in drop}
    metrics.update(blocks)
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(metrics, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)  # atomic: readers never see half a file
    return metrics


def write_answers(run_dir: str | Path, rows: list[dict]) -> Path:
    path = Path(run_dir) / "answers.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return path


def read_answers(run_dir: str | Path) -> list[dict]:
    with open(Path(run_dir) / "answers.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def evaluate_run(run_dir: str | Path, data_dir: str | Path, language: str,
                 base_model_id: str = "embedded:smollm2-135m-instruct", max_prompts: int | None = None,
                 max_new_tokens: int = 256, batch_size: int = 8, min_words: int = 5,
                 system_prompt: str | None = None, dtype: str = "float32", chat_template: str | None = None,
                 progress: bool = True) -> dict:
    """Evaluate one run folder on the held-out seeds: writes answers.jsonl and metrics.json and
    returns the metrics.

    metrics.json gets "run", "train", "eval" and "eval_settings" (decoding settings, beside "eval"
    because readers take eval's keys as directions). An existing "knowledge" block is kept; an
    existing "judge" block is removed: it judged the answers this call replaces.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    seeds = load_eval_seeds(data_dir, max_prompts)
    run, train = run_blocks(run_dir, language, base_model_id, data_dir)
    model, tokenizer, model_id = load_run_model(run_dir, base_model_id, dtype=dtype, chat_template=chat_template)
    log.info("evaluating %s (%s) on %d held-out seeds", run_dir.name, model_id, len(seeds))
    block, rows = evaluate_model(model, tokenizer, seeds, language, max_new_tokens=max_new_tokens,
                                 batch_size=batch_size, min_words=min_words, system_prompt=system_prompt,
                                 progress=progress)
    # Beside "eval", not inside it: readers iterate eval's keys as directions.
    settings = {"n_seeds_eval": len(seeds), "max_new_tokens": max_new_tokens, "min_words": min_words,
                "system_prompt": system_prompt, "decoding": "greedy", "dtype": dtype, "model": model_id}
    write_answers(run_dir, rows)
    return update_metrics(run_dir, {"run": run, "train": train, "eval": block, "eval_settings": settings},
                          drop=("judge",))


# --------------------------------------------------------------------------- tables

METRIC_COLUMNS = ("n_prompts", "fidelity", "too_short", "wrong_language", "echo", "repetition",
                  "chrf", "nll", "ppl", "seconds")


def metrics_table(run_dirs: Sequence[str | Path]):
    """One row per (run, direction) with every eval metric (a pandas DataFrame)."""
    import pandas as pd

    rows = []
    for run_dir in map(Path, run_dirs):
        metrics = _read_json(run_dir / "metrics.json") or {}
        for direction in DIRECTIONS:
            scores = metrics.get("eval", {}).get(direction)
            if scores:
                rows.append({"run": run_dir.name, "direction": direction,
                             **{k: scores.get(k) for k in METRIC_COLUMNS}})
    return pd.DataFrame(rows, columns=["run", "direction", *METRIC_COLUMNS])


def side_by_side(run_dirs: Sequence[str | Path], direction: str = "tgt", n_examples: int = 3):
    """The paper's Figure 1: the first `n_examples` prompts with every run's answer beside them."""
    import pandas as pd

    answers = {Path(d).name: {r["id"]: r for r in read_answers(d) if r["direction"] == direction} for d in run_dirs}
    first = next(iter(answers.values()), {})
    ids = [i for i in first if all(i in by_id for by_id in answers.values())][:n_examples]
    rows = [{"id": i, "prompt": first[i]["prompt"], **{run: by_id[i]["answer"] for run, by_id in answers.items()}}
            for i in ids]
    return pd.DataFrame(rows)

"""Pairwise LLM-judge win rates, the paper's main metric (docs/method.md §6).

A judge model sees one question and two answers and names the better one. Each pair is judged in
both orders (candidate as A, then as B), which removes the judge's position bias; the pair's score
is the mean of its two judgements (win 1, tie 0.5, loss 0), so a judge that always says "A" gives
exactly 0.5. The prompt follows the pairwise prompt of MT-Bench (Zheng et al., 2023, "Judging
LLM-as-a-Judge with MT-Bench and Chatbot Arena") and AlpacaEval's instruction to ignore answer
order and length, and adds the requirement CLO is about: an answer not written in the question's
language fails the user.

Back-ends: any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, TGI, llama.cpp server)
through httpx, or a local Hugging Face chat model. Replies are cached on disk (DiskCache), keyed by
(judge, prompt version, question, answer A, answer B, order); the API key is read from an
environment variable whose *name* is the parameter, and is never logged, cached, returned or put
in an exception message.
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import httpx

from ..common.cache import DiskCache, cache_key, default_cache_dir, open_cache
from ..common.languages import get_language
from ..common.runfiles import read_answers, update_metrics
from .metrics import DIRECTIONS

log = logging.getLogger(__name__)

PROMPT_VERSION = "clo-judge-v1"  # part of every cache key: a changed prompt never reuses old verdicts
DEFAULT_API_KEY_ENV = "CLO_JUDGE_API_KEY"
VERDICTS = ("A", "B", "tie")

JUDGE_SYSTEM_PROMPT = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI "
    "assistants to the user question displayed below. You should choose the assistant that follows the "
    "user's instructions and answers the user's question better. Consider helpfulness, relevance, "
    "accuracy, depth and fluency. Avoid any position biases and ensure that the order in which the "
    "responses were presented does not influence your decision. Do not allow the length of the responses "
    "to influence your evaluation, and do not favor certain names of the assistants. Be as objective as "
    "possible. After a short explanation, output your final verdict by strictly following this format: "
    '"[[A]]" if assistant A is better, "[[B]]" if assistant B is better, and "[[tie]]" for a tie.'
)

JUDGE_USER_TEMPLATE = (
    "The user wrote the question in {language}. A good response is written in {language}: a response "
    "in another language fails the user however good its content (code, names and quotations the "
    "question asks for are fine). Prefer a response in {language} over one in another language; judge "
    "responses in the same language on their quality.\n\n"
    "[User Question]\n{question}\n\n"
    "[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]\n\n"
    "Remember: explain briefly, then end with exactly one of [[A]], [[B]] or [[tie]]."
)


class JudgeError(RuntimeError):
    """The judge back-end failed (after retries); the message never holds the API key."""


class Judge(Protocol):
    name: str  # identifies the judge model in cache keys and reports

    def complete_many(self, user_messages: list[str], system_prompt: str) -> list[str]:
        """One raw reply per user message."""


def judge_user_message(question: str, answer_a: str, answer_b: str, lang: str) -> str:
    return JUDGE_USER_TEMPLATE.format(
        language=get_language(lang).name, question=question, answer_a=answer_a, answer_b=answer_b
    )


# A bracketed verdict as the prompt asks ([[A]], [[B]], [[tie]]; MT-Bench's [[C]] also means tie),
# else "Verdict: A"-style lines; the last one in the reply wins (the reasoning comes first).
_BRACKETED = re.compile(r"\[\[\s*(A|B|C|tie)\s*\]\]", re.IGNORECASE)
_LABELLED = re.compile(r"verdict\s*(?:is)?\s*[:：]?\s*\**\s*\[?\s*(?:assistant\s+)?(A|B|tie)\b", re.IGNORECASE)
_BARE = re.compile(r"^\W*(A|B|tie)\W*$", re.IGNORECASE)


def parse_verdict(reply: str | None) -> str | None:
    """ "A", "B" or "tie" from a judge reply; None when the reply names no verdict (malformed)."""
    if not reply:
        return None
    found = _BRACKETED.findall(reply) or _LABELLED.findall(reply) or _BARE.findall(reply.strip())
    if not found:
        return None
    verdict = found[-1].upper()
    return "tie" if verdict in ("C", "TIE") else verdict


# --------------------------------------------------------------------------- OpenAI-compatible HTTP


class OpenAIChatJudge:
    """Any OpenAI-compatible /chat/completions endpoint, called with httpx.

    base_url: e.g. "https://api.openai.com/v1" or "http://localhost:8000/v1" (vLLM, TGI).
    api_key_env: NAME of the environment variable holding the key; an unset variable sends no
    Authorization header (local servers need none). The key is read when a request is made and
    kept only in that request's header.
    Retries 429, 5xx and connection errors with exponential backoff (honouring Retry-After).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = DEFAULT_API_KEY_ENV,
        temperature: float = 0.0,
        max_tokens: int = 512,
        timeout: float = 120.0,
        max_retries: int = 5,
        backoff_seconds: float = 1.0,
        concurrency: int = 4,
    ):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.temperature, self.max_tokens = temperature, max_tokens
        self.max_retries, self.backoff_seconds, self.concurrency = max_retries, backoff_seconds, concurrency
        self.name = f"openai:{base_url.rstrip('/')}:{model}"
        self._client = httpx.Client(timeout=timeout)
        if not os.environ.get(api_key_env):
            log.warning("environment variable %s is not set: calling %s without an API key", api_key_env, self.url)

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _redact(self, text: str) -> str:
        key = os.environ.get(self.api_key_env)
        return text.replace(key, "***") if key else text

    def _wait(self, attempt: int, response: httpx.Response | None) -> float:
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after and retry_after.replace(".", "", 1).isdigit():
            return min(float(retry_after), 60.0)
        return self.backoff_seconds * 2**attempt * (1 + 0.25 * random.random())  # jitter: no herd

    def complete(self, user_message: str, system_prompt: str) -> str:
        """The reply text of one chat completion; JudgeError when the endpoint keeps failing."""
        body = {
            "model": self.model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "messages": [{"role": "system", "content": system_prompt}, {"role": "user", "content": user_message}],
        }
        problem = ""
        for attempt in range(self.max_retries + 1):
            response = None
            try:
                response = self._client.post(self.url, json=body, headers=self._headers())
            except httpx.TransportError as err:
                problem = f"{type(err).__name__}: {self._redact(str(err))}"
            else:
                if response.status_code == 200:
                    return self._reply_text(response)
                problem = f"HTTP {response.status_code}: {self._redact(response.text[:300])}"
                if response.status_code != 429 and response.status_code < 500:
                    break  # 4xx other than 429 will not get better by retrying (bad key, bad model name)
            if attempt < self.max_retries:
                wait = self._wait(attempt, response)
                log.warning(
                    "judge request to %s failed (%s); retry %d/%d in %.1fs",
                    self.url,
                    problem,
                    attempt + 1,
                    self.max_retries,
                    wait,
                )
                time.sleep(wait)
        raise JudgeError(f"judge endpoint {self.url} (model {self.model!r}) failed: {problem}")

    def _reply_text(self, response: httpx.Response) -> str:
        # A reply without the expected shape is a malformed verdict (counted), not a crash.
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            log.warning("judge reply from %s has no choices[0].message.content", self.url)
            return ""
        # Redacted before it is cached or parsed: a debugging proxy may echo the request headers.
        return self._redact(content) if isinstance(content, str) else ""

    def complete_many(self, user_messages: list[str], system_prompt: str) -> list[str]:
        if self.concurrency <= 1 or len(user_messages) <= 1:
            return [self.complete(m, system_prompt) for m in user_messages]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(lambda m: self.complete(m, system_prompt), user_messages))

    def close(self) -> None:
        self._client.close()


# --------------------------------------------------------------------------- local Hugging Face model


class HFChatJudge:
    """A local chat model as judge (greedy decoding through its chat template)."""

    def __init__(
        self,
        model_id: str | None = None,
        model=None,
        tokenizer=None,
        dtype: str = "auto",
        max_new_tokens: int = 256,
        batch_size: int = 4,
        device: str | None = None,
    ):
        if model is None:
            if model_id is None:
                raise ValueError("HFChatJudge needs model_id, or model and tokenizer")
            from ..models import load_model_and_tokenizer

            model, tokenizer = load_model_and_tokenizer(model_id, dtype=dtype, device=device)
        elif tokenizer is None:
            raise ValueError("HFChatJudge: pass the tokenizer with the model")
        self.model, self.tokenizer = model, tokenizer
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size
        self.name = f"hf:{model_id or getattr(model.config, '_name_or_path', type(model).__name__)}"

    def complete_many(self, user_messages: list[str], system_prompt: str) -> list[str]:
        from .generation import generate_answers

        return generate_answers(
            self.model,
            self.tokenizer,
            user_messages,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size,
            system_prompt=system_prompt,
            progress=False,
        )


def make_judge(
    backend: str, model: str, base_url: str | None = None, api_key_env: str = DEFAULT_API_KEY_ENV, **options
) -> Judge:
    """ "openai" (OpenAI-compatible endpoint at base_url) or "hf" (local model id or folder)."""
    if backend == "openai":
        if not base_url:
            raise ValueError("judge backend 'openai' needs base_url (e.g. https://api.openai.com/v1)")
        return OpenAIChatJudge(base_url, model, api_key_env=api_key_env, **options)
    if backend == "hf":
        return HFChatJudge(model, **options)
    raise ValueError(f"judge backend must be 'openai' or 'hf', got {backend!r}")


# --------------------------------------------------------------------------- win rates


def judge_replies(
    judge: Judge,
    jobs: list[tuple[str, str, str, str]],
    lang: str,
    cache: DiskCache | str | os.PathLike | None = None,
    chunk_size: int = 32,
    progress: bool = True,
) -> list[str]:
    """Raw replies for (question, answer A, answer B, order) jobs; cached replies are not requested.

    Replies are cached a chunk at a time, so a run stopped by a failing endpoint keeps what it got.
    """
    from tqdm.auto import tqdm

    with open_cache(cache, "judge.sqlite") as store:
        keys = [cache_key(PROMPT_VERSION, judge.name, lang, q, a, b, order) for q, a, b, order in jobs]
        replies = store.get_many(keys) if store is not None else {}
        first_job = {}
        for i, key in enumerate(keys):
            first_job.setdefault(key, i)
        todo = [i for key, i in first_job.items() if key not in replies]  # each distinct job once
        if todo:
            log.info("judging %d comparisons with %s (%d cached)", len(todo), judge.name, len(jobs) - len(todo))
        for start in tqdm(range(0, len(todo), chunk_size), desc="judging", disable=not (progress and todo)):
            chunk = todo[start : start + chunk_size]
            messages = [judge_user_message(jobs[i][0], jobs[i][1], jobs[i][2], lang) for i in chunk]
            fresh = dict(zip((keys[i] for i in chunk), judge.complete_many(messages, JUDGE_SYSTEM_PROMPT)))
            if store is not None:
                store.put_many(fresh)
            replies.update(fresh)
        return [replies[k] for k in keys]


def _score(verdict: str, candidate_is: str) -> float:
    return 0.5 if verdict == "tie" else float(verdict == candidate_is)


def win_rate(
    judge: Judge,
    questions: Sequence[str],
    candidate: Sequence[str],
    baseline: Sequence[str],
    lang: str,
    cache: DiskCache | str | os.PathLike | None = None,
) -> dict:
    """Win rate of `candidate` answers over `baseline` answers to the same questions.

    Each pair is judged twice (candidate as A, then as B). A pair's score is the mean of its two
    judgements (win 1, tie 0.5, loss 0); it counts as a win above 0.5, a loss below, a tie at 0.5.
    A pair with a malformed reply in either order is not scored (scoring one order alone would
    bring the position bias back). Returns {"win_rate", "n", "wins", "ties", "losses",
    "n_malformed"}: n scored pairs, n_malformed malformed replies; win_rate is None when n is 0.
    """
    if not len(questions) == len(candidate) == len(baseline):
        raise ValueError(
            f"{len(questions)} questions, {len(candidate)} candidate and {len(baseline)} baseline "
            "answers: expected the same number of each"
        )
    jobs = []
    for q, c, b in zip(questions, candidate, baseline):
        jobs += [(q, c, b, "candidate-first"), (q, b, c, "baseline-first")]
    verdicts = [parse_verdict(r) for r in judge_replies(judge, jobs, lang, cache)]
    scores = []
    for first, second in zip(verdicts[0::2], verdicts[1::2]):
        if first is not None and second is not None:
            scores.append((_score(first, "A") + _score(second, "B")) / 2)
    return {
        "win_rate": sum(scores) / len(scores) if scores else None,
        "n": len(scores),
        "wins": sum(s > 0.5 for s in scores),
        "ties": sum(s == 0.5 for s in scores),
        "losses": sum(s < 0.5 for s in scores),
        "n_malformed": sum(v is None for v in verdicts),
    }


def default_judge_cache() -> Path:
    return default_cache_dir() / "judge.sqlite"


def judge_run(
    run_dir: str | os.PathLike,
    baseline_dir: str | os.PathLike,
    judge: Judge,
    lang: str,
    cache: DiskCache | str | os.PathLike | None = None,
) -> dict:
    """The metrics.json "judge" block of one run against a baseline run, from both runs'
    answers.jsonl (matched by direction and prompt id), written into the run's metrics.json."""
    run_dir, baseline_dir = Path(run_dir), Path(baseline_dir)
    ours = {(r["direction"], r["id"]): r for r in read_answers(run_dir)}
    theirs = {(r["direction"], r["id"]): r for r in read_answers(baseline_dir)}
    block = {}
    for direction in DIRECTIONS:
        keys = [k for k in ours if k[0] == direction and k in theirs]
        if not keys:
            continue
        result = win_rate(
            judge,
            [ours[k]["prompt"] for k in keys],
            [ours[k]["answer"] for k in keys],
            [theirs[k]["answer"] for k in keys],
            lang if direction == "tgt" else "en",
            cache=default_judge_cache() if cache is None else cache,
        )
        block[direction] = {"vs": baseline_dir.name, **result, "judge": judge.name}
    update_metrics(run_dir, {"judge": block})
    return block


def judge_runs(
    run_dirs: Sequence[str | os.PathLike],
    baseline: str,
    judge: Judge,
    lang: str,
    cache: DiskCache | str | os.PathLike | None = None,
) -> dict[str, dict]:
    """judge_run for every run folder against the sibling folder named `baseline` (it need not be
    in run_dirs: the batch runner evaluates one run at a time). Runs are skipped, with the reason
    logged, when they are the baseline or when the baseline has no answers.jsonl yet."""
    blocks = {}
    for run_dir in map(Path, run_dirs):
        baseline_dir = run_dir.parent / baseline
        if run_dir.resolve() == baseline_dir.resolve():
            continue
        if not (baseline_dir / "answers.jsonl").exists():
            log.warning(
                "%s not judged: the baseline %s has no answers.jsonl (evaluate it first)", run_dir.name, baseline_dir
            )
            continue
        blocks[run_dir.name] = judge_run(run_dir, baseline_dir, judge, lang, cache=cache)
    return blocks

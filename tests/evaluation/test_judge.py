"""clo_utils.evaluation.judge against a real chat-completions server on 127.0.0.1 (http.server in a thread):
order swapping, ties, caching, malformed replies, retries, and the API key never leaking."""

from __future__ import annotations

import json
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from clo_utils.common.cache import DiskCache
from clo_utils.evaluation import judge as jd

API_KEY_ENV = "CLO_TEST_JUDGE_KEY"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


ANSWER = re.compile(r"\[The Start of Assistant (A|B)'s Answer\]\n(.*?)\n\[The End of Assistant \1's Answer\]", re.S)


def answers_in(user_message: str) -> dict[str, str]:
    return dict(ANSWER.findall(user_message))


def prefer_marked_answer(user_message: str) -> str:
    """A deterministic 'judge': the answer containing GOOD wins; neither or both: a tie."""
    answers = answers_in(user_message)
    a, b = ("GOOD" in answers["A"]), ("GOOD" in answers["B"])
    verdict = "A" if a and not b else "B" if b and not a else "tie"
    return f"Assistant {verdict} is more helpful and answers in the right language.\n\n[[{verdict}]]"


class LoopbackServer:
    """Serves `self.httpd` (set by the subclass) on 127.0.0.1 in a thread for the `with` block."""

    httpd: ThreadingHTTPServer

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class ChatCompletionsServer(LoopbackServer):
    """A small OpenAI-compatible server: POST /v1/chat/completions answers with rule(user message).

    It checks the Authorization header against `api_key` (401 otherwise), counts requests, and can
    fail the first `fail_first` requests with `fail_status` (to exercise retries)."""

    def __init__(
        self, rule: Callable[[str], str], api_key: str | None = None, fail_first: int = 0, fail_status: int = 503
    ):
        self.rule, self.api_key = rule, api_key
        self.fail_first, self.fail_status = fail_first, fail_status
        self.requests = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, status: int, payload: dict) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests += 1
                    failing = server.requests <= server.fail_first
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                if server.api_key is not None and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    return self._send(401, {"error": {"message": "Incorrect API key provided"}})
                if failing:
                    return self._send(server.fail_status, {"error": {"message": "try again"}})
                assert body["messages"][0]["role"] == "system" and body["temperature"] == 0.0
                reply = server.rule(body["messages"][-1]["content"])
                return self._send(
                    200,
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "model": body["model"],
                        "choices": [
                            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": reply}}
                        ],
                    },
                )

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"


QUESTIONS = ["Quina és la capital de França?", "Escriu un poema curt sobre el mar.", "Com estàs?"]
CANDIDATE = ["GOOD: La capital de França és París.", "GOOD: El mar és blau.", "Estic bé."]
BASELINE = ["The capital of France is Paris.", "The sea is blue.", "GOOD: Estic bé, gràcies."]


@pytest.fixture
def api_key(monkeypatch):
    key = "sk-test-" + os.urandom(12).hex()
    monkeypatch.setenv(API_KEY_ENV, key)
    return key


def http_judge(server: ChatCompletionsServer, **options) -> jd.OpenAIChatJudge:
    return jd.OpenAIChatJudge(server.base_url, "test-judge", api_key_env=API_KEY_ENV, backoff_seconds=0.01, **options)


def test_always_a_judge_gives_one_half(api_key, tmp_path):
    with ChatCompletionsServer(lambda _: "Both are fine, but [[A]]", api_key=api_key) as server:
        result = jd.win_rate(http_judge(server), QUESTIONS, CANDIDATE, BASELINE, "ca", cache=tmp_path)
    assert result == {"win_rate": 0.5, "n": 3, "wins": 0, "ties": 3, "losses": 0, "n_malformed": 0}
    assert server.requests == 6  # both orders of every pair


def test_win_rate_follows_the_judge_in_both_orders(api_key, tmp_path):
    with ChatCompletionsServer(prefer_marked_answer, api_key=api_key) as server:
        result = jd.win_rate(http_judge(server), QUESTIONS, CANDIDATE, BASELINE, "ca", cache=tmp_path)
    assert result == {"win_rate": 2 / 3, "n": 3, "wins": 2, "ties": 0, "losses": 1, "n_malformed": 0}


def test_ties_count_half(api_key, tmp_path):
    with ChatCompletionsServer(lambda _: "Equally good. [[tie]]", api_key=api_key) as server:
        result = jd.win_rate(http_judge(server), QUESTIONS, CANDIDATE, BASELINE, "ca", cache=tmp_path)
    assert result["win_rate"] == 0.5 and result["ties"] == 3

    # one win and one tie across the two orders: the pair scores 0.75 and counts as a win
    def win_then_tie(message: str) -> str:
        return "[[A]]" if answers_in(message)["A"].startswith("GOOD") else "[[tie]]"

    with ChatCompletionsServer(win_then_tie, api_key=api_key) as server:
        result = jd.win_rate(
            http_judge(server), QUESTIONS[:1], CANDIDATE[:1], BASELINE[:1], "ca", cache=tmp_path / "2"
        )
    assert result == {"win_rate": 0.75, "n": 1, "wins": 1, "ties": 0, "losses": 0, "n_malformed": 0}


def test_second_run_is_served_from_the_cache(api_key, tmp_path):
    cache = tmp_path / "judge.sqlite"
    with ChatCompletionsServer(prefer_marked_answer, api_key=api_key) as server:
        first = jd.win_rate(http_judge(server), QUESTIONS, CANDIDATE, BASELINE, "ca", cache=cache)
        assert server.requests == 6
        second = jd.win_rate(http_judge(server), QUESTIONS, CANDIDATE, BASELINE, "ca", cache=cache)
        assert server.requests == 6  # no new HTTP call
        assert second == first
        # a different judge model is a different cache entry
        jd.win_rate(
            jd.OpenAIChatJudge(server.base_url, "other-judge", api_key_env=API_KEY_ENV),
            QUESTIONS,
            CANDIDATE,
            BASELINE,
            "ca",
            cache=cache,
        )
        assert server.requests == 12
    assert len(DiskCache(cache)) == 12


def test_malformed_replies_are_counted_not_fatal(api_key, tmp_path):
    def sometimes_silent(message: str) -> str:
        # no verdict whenever the baseline's first answer is in position A
        return (
            "I cannot decide between these."
            if answers_in(message)["A"] == BASELINE[0]
            else prefer_marked_answer(message)
        )

    with ChatCompletionsServer(sometimes_silent, api_key=api_key) as server:
        result = jd.win_rate(http_judge(server), QUESTIONS, CANDIDATE, BASELINE, "ca", cache=tmp_path)
    # the first pair lost one order: it is not scored on the other order alone
    assert result == {"win_rate": 0.5, "n": 2, "wins": 1, "ties": 0, "losses": 1, "n_malformed": 1}
    with ChatCompletionsServer(lambda _: "", api_key=api_key) as server:
        result = jd.win_rate(http_judge(server), QUESTIONS, CANDIDATE, BASELINE, "ca", cache=tmp_path / "empty")
    assert result == {"win_rate": None, "n": 0, "wins": 0, "ties": 0, "losses": 0, "n_malformed": 6}


def test_retries_on_429_and_5xx(api_key, tmp_path):
    for status in (429, 503):
        with ChatCompletionsServer(prefer_marked_answer, api_key=api_key, fail_first=2, fail_status=status) as server:
            result = jd.win_rate(
                http_judge(server, concurrency=1),
                QUESTIONS[:1],
                CANDIDATE[:1],
                BASELINE[:1],
                "ca",
                cache=tmp_path / str(status),
            )
        assert result["n"] == 1 and server.requests == 4  # two failures, then both orders answered


@pytest.mark.parametrize("fail_status", [401, 500])
def test_the_api_key_never_leaks(api_key, tmp_path, caplog, fail_status):
    caplog.set_level(logging.DEBUG)
    cache = tmp_path / "cache" / "judge.sqlite"
    with ChatCompletionsServer(prefer_marked_answer, api_key=api_key) as server:
        judge = http_judge(server)
        result = jd.win_rate(judge, QUESTIONS, CANDIDATE, BASELINE, "ca", cache=cache)
        assert result["n"] == 3  # the server accepted the key
    assert api_key not in repr(result) and api_key not in repr(vars(judge))
    # failures: a rejected key (401, not retried) and a server that keeps failing (500, retried)
    rejects = "wrong-key" if fail_status == 401 else api_key
    with ChatCompletionsServer(
        prefer_marked_answer, api_key=rejects, fail_first=99, fail_status=fail_status
    ) as server:
        with pytest.raises(jd.JudgeError) as failure:
            jd.win_rate(
                http_judge(server, max_retries=2, concurrency=1), ["new question"], ["a"], ["b"], "ca", cache=cache
            )
        assert server.requests == (1 if fail_status == 401 else 3)  # 401 is not retried; 500 is, twice
    assert str(fail_status) in str(failure.value)
    assert api_key not in str(failure.value) and api_key not in repr(failure.value)
    assert api_key not in caplog.text
    files = list((tmp_path / "cache").iterdir())
    assert files and all(api_key.encode() not in f.read_bytes() for f in files)


def test_server_rejects_requests_without_the_key(monkeypatch, tmp_path):
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    with ChatCompletionsServer(prefer_marked_answer, api_key="sk-required") as server:
        with pytest.raises(jd.JudgeError, match="401"):
            jd.win_rate(http_judge(server), QUESTIONS[:1], CANDIDATE[:1], BASELINE[:1], "ca", cache=tmp_path)


@pytest.mark.parametrize(
    "reply, verdict",
    [
        ("[[A]]", "A"),
        ("Explanation... [[B]]", "B"),
        ("[[tie]]", "tie"),
        ("[[C]]", "tie"),
        ("[[ a ]]", "A"),
        ("First I thought [[A]], but on reflection [[B]]", "B"),
        ("Verdict: B", "B"),
        ("Final verdict: tie", "tie"),
        ("verdict: Assistant A", "A"),
        ("B", "B"),
        ("**A**", "A"),
        ("I cannot decide.", None),
        ("", None),
        (None, None),
        ("Assistant A is better.", None),
    ],
)
def test_parse_verdict(reply, verdict):
    assert jd.parse_verdict(reply) == verdict


def test_judge_prompt_requires_the_question_language():
    message = jd.judge_user_message("Habari?", "Nzuri.", "Fine.", "sw")
    assert message.count("Swahili") >= 3 and "[The Start of Assistant A's Answer]\nNzuri." in message
    assert "position" in jd.JUDGE_SYSTEM_PROMPT and "[[tie]]" in jd.JUDGE_SYSTEM_PROMPT


def cached_replies(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [json.loads(value) for (value,) in db.execute("SELECT value FROM kv")]


def test_local_hf_judge_runs_and_counts_its_malformed_replies(tmp_path, monkeypatch):
    from test_evaluate import tiny_chat_model, tiny_chat_tokenizer

    tokenizer = tiny_chat_tokenizer()
    judge = jd.HFChatJudge(model=tiny_chat_model(tokenizer), tokenizer=tokenizer, max_new_tokens=6, batch_size=2)
    calls = []
    generate = judge.complete_many
    monkeypatch.setattr(
        judge, "complete_many", lambda messages, system: calls.append(len(messages)) or generate(messages, system)
    )
    cache = tmp_path / "judge.sqlite"
    first = jd.win_rate(judge, QUESTIONS[:1], CANDIDATE[:1], BASELINE[:1], "ca", cache=cache)
    replies = cached_replies(cache)
    assert calls == [2] and len(replies) == 2 and any(replies)
    # a random model names no verdict: its replies count as malformed, nothing crashes
    assert first["n_malformed"] == sum(jd.parse_verdict(r) is None for r in replies)
    assert first["n"] + first["n_malformed"] <= 2
    assert jd.win_rate(judge, QUESTIONS[:1], CANDIDATE[:1], BASELINE[:1], "ca", cache=cache) == first
    assert calls == [2]  # the second run generated nothing


def test_judge_run_writes_the_judge_block(api_key, tmp_path):
    from clo_utils.evaluation.evaluate import write_answers

    def answers(marked: bool):
        return [
            {"direction": d, "id": f"s{i}", "prompt": q, "answer": ("GOOD " if marked else "") + q, "reference": ""}
            for d in ("tgt", "en")
            for i, q in enumerate(QUESTIONS)
        ]

    for name, marked in (("clo-3", True), ("sft-3", False)):
        (tmp_path / name).mkdir()
        write_answers(tmp_path / name, answers(marked))
    (tmp_path / "clo-3" / "metrics.json").write_text(json.dumps({"eval": {"tgt": {"fidelity": 1.0}}}))
    with ChatCompletionsServer(prefer_marked_answer, api_key=api_key) as server:
        block = jd.judge_run(tmp_path / "clo-3", tmp_path / "sft-3", http_judge(server), "ca", cache=tmp_path / "c")
    metrics = json.loads((tmp_path / "clo-3" / "metrics.json").read_text())
    assert metrics["eval"] == {"tgt": {"fidelity": 1.0}} and metrics["judge"] == block
    for direction in ("tgt", "en"):
        assert block[direction]["vs"] == "sft-3" and block[direction]["win_rate"] == 1.0 and block[direction]["n"] == 3
    assert api_key not in (tmp_path / "clo-3" / "metrics.json").read_text()


def test_judge_runs_uses_the_sibling_baseline_and_skips_what_it_cannot_judge(api_key, tmp_path, caplog):
    from clo_utils.evaluation.evaluate import write_answers

    for name in ("clo-3", "sft-3"):
        (tmp_path / name).mkdir()
        write_answers(
            tmp_path / name,
            [
                {
                    "direction": "tgt",
                    "id": "s0",
                    "prompt": QUESTIONS[0],
                    "answer": CANDIDATE[0] if name == "clo-3" else BASELINE[0],
                    "reference": "",
                }
            ],
        )
    with ChatCompletionsServer(prefer_marked_answer, api_key=api_key) as server:
        judge = http_judge(server)
        blocks = jd.judge_runs([tmp_path / "clo-3"], "sft-3", judge, "ca", cache=tmp_path / "c")  # baseline not listed
        assert blocks["clo-3"]["tgt"]["win_rate"] == 1.0 and server.requests == 2
        assert (
            jd.judge_runs([tmp_path / "clo-3", tmp_path / "sft-3"], "sft-9", judge, "ca", cache=tmp_path / "c") == {}
        )
        assert jd.judge_runs([tmp_path / "sft-3"], "sft-3", judge, "ca", cache=tmp_path / "c") == {}
    assert "the baseline" in caplog.text and "sft-9" in caplog.text

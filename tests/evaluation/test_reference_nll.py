"""clo_utils.evaluation.reference_nll: the NLL of reference answers equals a hand loop (one unpadded
sequence at a time, float64) however the rows are chunked, scored in the decoding loop's prefill it leaves
every greedy answer unchanged, and an evaluation rerun reads every score from the cache."""

from __future__ import annotations

import pytest
import torch

from clo_utils.evaluation import continuous, decoding, reference_nll
from clo_utils.evaluation.decoding import DecodeStats, greedy_answers, greedy_stream
from clo_utils.evaluation.evaluate import evaluate_direction
from clo_utils.evaluation.generation import open_generation_cache
from clo_utils.evaluation.reference_nll import forward_scores, pair_scores
from tests.tiny_models import make_model, make_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT_LENGTHS = [3, 29, 5, 17, 9, 28, 4, 12, 21, 6]
REFERENCE_LENGTHS = [1, 14, 25, 3, 8, 2, 19, 6, 11, 30]  # a one-token reference: only the turn end


def _model(arch: str, **overrides):
    tok = make_tokenizer()
    attention = overrides.pop("attn_implementation", None)
    model = make_model(arch, vocab_size=len(tok), **{"initializer_range": 0.3, **overrides}).eval()
    if attention:
        model.set_attn_implementation(attention)
    return model, tok


def _ids(vocab: int, lengths, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, vocab, (n,), generator=g).tolist() for n in lengths]


def _hand_scores(model, prompts, references) -> list[tuple[float, int]]:
    """Each prompt + reference alone, no padding, log-softmax in float64."""
    scores = []
    with torch.inference_mode():
        for prompt, reference in zip(prompts, references):
            ids = torch.tensor([prompt + reference])
            logits = model(ids).logits[0].double()
            logps = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
            scores.append((-float(logps.gather(-1, torch.tensor(reference)[:, None]).sum()), len(reference)))
    return scores


def _assert_close(got, expected):
    assert [n for _, n in got] == [n for _, n in expected]
    assert [s for s, _ in got] == pytest.approx([s for s, _ in expected], rel=1e-5)


@pytest.mark.parametrize(
    "arch, overrides",
    [("llama", {}), ("llama", {"attn_implementation": "sdpa"}), ("qwen2", {})],
)
def test_scoring_in_the_prefill_keeps_every_answer_and_gives_the_hand_nll(arch, overrides):
    model, tok = _model(arch, **overrides)
    prompts = _ids(len(tok), PROMPT_LENGTHS, seed=0)
    references = _ids(len(tok), REFERENCE_LENGTHS, seed=1)
    eos = [tok.pad_token_id, 7]
    expected = greedy_answers(model, prompts, eos, tok.pad_token_id, 12)
    assert len({len(a) for a in expected}) > 1  # rows stop at different steps
    hand = _hand_scores(model, prompts, references)
    for rows in (128, 3, 1):  # one decode batch; refilled as rows finish; one prompt after the other
        scores: dict[int, tuple[float, int]] = {}
        stats = DecodeStats()
        answers = dict(
            greedy_stream(
                model,
                prompts,
                eos,
                tok.pad_token_id,
                12,
                max_rows=rows,
                stats=stats,
                references=references,
                scores=scores,
            )
        )
        assert [answers[i] for i in range(len(prompts))] == expected
        _assert_close([scores[i] for i in range(len(prompts))], hand)
        # prompt, reference and fed-back tokens are real; the rest of what was computed is padding
        assert stats.real == sum(map(len, prompts)) + sum(map(len, references)) + sum(n - 1 for _, n in stats.rows)
        assert 0 <= stats.padding_share <= 0.5


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("batch_size", [None, 3, 1])
def test_forward_scores_equal_the_hand_loop_however_rows_are_chunked(arch, batch_size, monkeypatch):
    model, tok = _model(arch, **({"sliding_window": 16, "initializer_range": 0.02} if arch == "gemma3" else {}))
    prompts = _ids(len(tok), PROMPT_LENGTHS, seed=2)
    references = _ids(len(tok), REFERENCE_LENGTHS, seed=3)
    forwards = []
    scored = decoding._prefill_scored
    monkeypatch.setattr(
        reference_nll, "_prefill_scored", lambda m, p, *a, **k: forwards.append(len(p)) or scored(m, p, *a, **k)
    )
    got = forward_scores(model, list(zip(prompts, references)), tok.pad_token_id, batch_size)
    _assert_close(got, _hand_scores(model, prompts, references))
    assert max(forwards) <= (batch_size or len(prompts)) and sum(forwards) == len(prompts)
    monkeypatch.setattr(continuous, "PREFILL_POSITIONS_CPU", 40)  # a smaller cap: more forwards, the same scores
    _assert_close(forward_scores(model, list(zip(prompts, references)), tok.pad_token_id, batch_size), got)


def test_a_sliding_window_model_scores_apart_and_answers_unchanged():
    model, tok = _model("gemma3", sliding_window=16, initializer_range=0.02)
    assert not continuous.supported(model)
    prompts = _ids(len(tok), PROMPT_LENGTHS, seed=4)
    references = _ids(len(tok), REFERENCE_LENGTHS, seed=5)
    eos = [tok.pad_token_id]
    scores: dict[int, tuple[float, int]] = {}
    answers = dict(greedy_stream(model, prompts, eos, tok.pad_token_id, 8, references=references, scores=scores))
    assert [answers[i] for i in range(len(prompts))] == greedy_answers(model, prompts, eos, tok.pad_token_id, 8)
    assert scores == {}  # the shrinking loop scores nothing: pair_scores forwards these apart


# A long prompt, a one-word one, neighbouring languages and an empty prompt (the template's turn markers only).
PROMPTS = [
    "Quina és la capital de França? Respon en una frase, si us plau, i digues també on és.",
    "Hola",
    "¿Cuál es la capital de Francia?",
    "Write a short poem about the sea.",
    "Quala es la capitala de França?",
    "",
]
REFERENCES = ["Paris.", "Hello! How can I help?", "París.", "The sea is wide and blue, and so are you.", "", "Yes."]


def test_evaluation_scores_each_prompt_once_and_a_rerun_reads_the_cache(tmp_path, monkeypatch):
    model, tok = _model("llama")
    calls = {"forward_scores": 0, "scored_rows": 0}
    forward, scored = reference_nll.forward_scores, decoding._prefill_scored

    def counting_forward(model, pairs, *args):
        calls["forward_scores"] += len(pairs)
        return forward(model, pairs, *args)

    def counting_prefill(model, prompts, *args, **kwargs):
        calls["scored_rows"] += len(prompts)
        return scored(model, prompts, *args, **kwargs)

    monkeypatch.setattr(reference_nll, "forward_scores", counting_forward)
    monkeypatch.setattr(decoding, "_prefill_scored", counting_prefill)
    monkeypatch.setattr(continuous, "_prefill_scored", counting_prefill)
    monkeypatch.setattr(reference_nll, "_prefill_scored", counting_prefill)
    options = dict(max_new_tokens=6, batch_size=4, progress=False, min_words=1)
    plain, plain_answers = evaluate_direction(model, tok, PROMPTS, REFERENCES, "en", "ca", **options)
    assert calls == {"forward_scores": 0, "scored_rows": len(PROMPTS)}  # each prompt forwarded once, in the prefill
    expected_nll = reference_nll.reference_nll(model, tok, PROMPTS, REFERENCES)[0]
    assert plain["nll"] == pytest.approx(expected_nll, rel=1e-6)
    calls.update(forward_scores=0, scored_rows=0)
    with open_generation_cache(tmp_path, model) as cache:  # generated now: scored in the prefill, no pass apart
        first, answers = evaluate_direction(model, tok, PROMPTS, REFERENCES, "en", "ca", cache=cache, **options)
        assert (cache.hits, cache.misses) == (0, 2)
    assert answers == plain_answers and first["nll"] == pytest.approx(expected_nll, rel=1e-6)
    assert calls == {"forward_scores": 0, "scored_rows": len(PROMPTS)}
    calls.update(forward_scores=0, scored_rows=0)
    with open_generation_cache(tmp_path, model) as cache:  # a rerun: answers and scores from the cache
        again, answers = evaluate_direction(model, tok, PROMPTS, REFERENCES, "en", "ca", cache=cache, **options)
        assert (cache.hits, cache.misses) == (2, 0)
    assert answers == plain_answers and again["nll"] == first["nll"]
    assert calls == {"forward_scores": 0, "scored_rows": 0}
    # other weights: a different fingerprint, nothing reused
    with torch.no_grad():
        model.lm_head.weight.mul_(1.5)
    with open_generation_cache(tmp_path, model) as cache:
        changed, _ = evaluate_direction(model, tok, PROMPTS, REFERENCES, "en", "ca", cache=cache, **options)
        assert cache.hits == 0
    assert changed["nll"] != pytest.approx(first["nll"], rel=1e-3)


def test_pair_scores_name_what_is_wrong():
    model, tok = _model("llama")
    with pytest.raises(ValueError, match="at least one token"):
        pair_scores(model, [([5, 6], [])], tok.pad_token_id)
    with pytest.raises(ValueError, match="2 prompts but 1 references"):
        reference_nll.reference_nll(model, tok, ["a", "b"], ["c"])
    with pytest.raises(ValueError, match="no reference tokens"):
        reference_nll.corpus_nll([])

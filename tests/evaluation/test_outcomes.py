"""clo_utils.evaluation.outcomes: one outcome per prompt on hand-written answers with the hard cases
(echoes, empty answers, loops, a neighbouring language), the shares over all prompts, and the
constructed example where dropping echoes from a run's own denominator flatters it."""

from __future__ import annotations

import pytest

from clo_utils.common.text import normalized_tokens
from clo_utils.evaluation import metrics, outcomes

CA = "La biblioteca del poble obre cada dia a les nou del matí i tanca a les vuit del vespre."
ES = "La biblioteca del pueblo abre todos los días a las nueve de la mañana y cierra a las ocho de la tarde."
EN = "The village library opens every day at nine in the morning and closes at eight in the evening."
PROMPT = "Explica'm quan obre la biblioteca del poble i quan tanca."
LANGUAGE_IDS = ("lingua", "fasttext")


def kinds(answers, prompt=PROMPT, lang="ca", language_id="lingua"):
    found = outcomes.answer_outcomes([prompt] * len(answers), answers, lang, language_id=language_id)
    return [(o.kind, o.language, o.reason) for o in found]


def test_echoed_prefix_is_cut_before_language_id():
    # Three or more of the prompt's opening words, possibly after a short lead-in.
    n_prompt = len(normalized_tokens(PROMPT))  # 11: "Explica'm" is two tokens
    assert outcomes.echoed_prefix(PROMPT, PROMPT + " " + EN) == (n_prompt, len(PROMPT) - 1)  # up to "tanca"
    assert outcomes.echoed_prefix(PROMPT, "Pregunta: " + PROMPT)[0] == n_prompt
    assert outcomes.echoed_prefix(PROMPT, "Explica'm quan obre " + EN)[0] == 4
    assert outcomes.echoed_prefix(PROMPT, "Explica'm " + EN) == (0, 0)  # two words copied: no echo
    assert outcomes.answer_text(PROMPT, PROMPT + " " + EN) == ". " + EN  # the copy ends at its last word


@pytest.mark.parametrize("language_id", LANGUAGE_IDS)
def test_copied_prompt_then_english_is_other_language_and_the_copy_alone_is_no_answer(language_id):
    assert kinds([PROMPT + "\n" + EN, PROMPT], language_id=language_id) == [
        ("other", "en", None),
        ("no_answer", None, "short"),
    ]


@pytest.mark.parametrize("language_id", LANGUAGE_IDS)
def test_spanish_answer_to_a_catalan_prompt_is_other_language_spanish(language_id):
    found = outcomes.answer_outcomes([PROMPT], [ES], "ca", language_id=language_id)
    assert [(o.kind, o.language) for o in found] == [("other", "es")]
    shares = outcomes.outcome_shares(found, "ca", "ca")
    assert shares["other_near"] == 1.0 and shares["other_en"] == 0.0 and shares["other_languages"] == {"es": 1}
    # The restricted {Catalan, English} detector this replaces calls the same answer Catalan.
    from clo_utils.common.text import detect_languages

    assert detect_languages([ES], "ca") == ["ca"]


def test_loops_empty_and_short_answers_are_no_answer():
    loop = "No, no, no, no, no, no, no, no, no, no, no, no, no, no, no, no."
    phrase_loop = "Sí, és clar. Sí, és clar. Sí, és clar. Sí, és clar. Sí, és clar."
    assert kinds([loop, phrase_loop, "", "   ", "Sí, és clar."], lang="es") == [
        ("no_answer", None, "loop"),
        ("no_answer", None, "loop"),
        ("no_answer", None, "empty"),
        ("no_answer", None, "empty"),
        ("no_answer", None, "short"),
    ]
    assert kinds([CA]) == [("target", "ca", None)]


def test_a_long_phrase_repeated_to_the_end_is_a_loop():
    # Five distinct words, so only the repeated tail catches it; the last copy is cut short.
    tech = "The first human technology is " * 7 + "the first"
    # An answer, then one phrase repeated for more than half of it: a loop.
    fish = "Sharks are not mammals. Sharks are fish. " + "They are fish. " * 7
    assert outcomes.repeated_tail_words(tech) == 37
    assert [outcomes.no_answer_reason("p", text) for text in (tech, fish)] == ["loop", "loop"]
    # Repetition short of half the answer, or fewer than three copies, is an answer.
    listing = "Red, blue, green and yellow are primary colours in painting, then " + "red, blue, " * 3
    twice = "El temps a Barcelona és bo. El temps a Barcelona és bo. Fa sol i calor tot l'estiu."
    assert [outcomes.no_answer_reason("p", text) for text in (listing, twice)] == [None, None]
    assert outcomes.repeated_tail_words("") == 0
    assert outcomes.repeated_tail_words("a b c d") == 0


@pytest.mark.parametrize("language_id", LANGUAGE_IDS)
def test_the_three_shares_sum_to_one_over_all_prompts(language_id):
    answers = [CA, ES, EN, PROMPT, "", "No, no, no, no, no, no, no.", PROMPT + " " + CA, "Hola."]
    report = metrics.outcome_report([PROMPT] * len(answers), answers, "ca", language_id=language_id)
    assert report["n_prompts"] == 8
    assert report["target"] + report["other_language"] + report["no_answer"] == pytest.approx(1.0)
    assert report["other_en"] + report["other_near"] + report["other_rest"] == pytest.approx(report["other_language"])
    assert report["target"] == pytest.approx(2 / 8) and report["no_answer"] == pytest.approx(4 / 8)
    assert sum(report["no_answer_reasons"].values()) == 4
    english = metrics.outcome_report([PROMPT] * 3, [EN, CA, ES], "en", run_lang="ca", language_id=language_id)
    # On English prompts the run's target language and its neighbours form the "near" group.
    assert (english["target"], english["other_near"], english["other_en"]) == pytest.approx((1 / 3, 2 / 3, 0.0))


def test_constructed_example_counted_over_all_prompts_gives_minus_0_17():
    # 100 prompts. SFT answers all of them, 80 in Catalan and 20 in English. Method X echoes 30
    # prompts (the copy alone) and answers 63 of the other 70 in Catalan, 7 in English.
    prompts = [f"Pregunta número {i}: explica'm quan obre la biblioteca del poble." for i in range(100)]
    sft = [CA] * 80 + [EN] * 20
    x = prompts[:30] + [CA] * 63 + [EN] * 7
    sft_flags = metrics.answer_flags(prompts, sft, "ca")
    x_flags = metrics.answer_flags(prompts, x, "ca")
    headline = metrics.paired_bootstrap(x_flags["target"], sft_flags["target"], n_resamples=4000)
    assert headline["difference"] == pytest.approx(-0.17) and headline["n_prompts"] == 100
    assert headline["high"] < 0  # X is worse, and the interval says so
    assert metrics.share(x_flags["no_answer"]) == 0.30
    # Leaving X's echoes out of X's own denominator would have called it better: 63/70 - 80/100 = +0.10.
    flattering = metrics.share(x_flags["answered_target"]) - metrics.share(sft_flags["answered_target"])
    assert flattering == pytest.approx(0.10)


def test_detector_accuracy_counts_confusions():
    result = outcomes.detector_accuracy({"ca": [CA, ES, "Hola."], "es": [ES]})
    assert result["ca"] == {"n": 2, "accuracy": 0.5, "confused_with": {"es": 1}}
    assert result["es"]["accuracy"] == 1.0

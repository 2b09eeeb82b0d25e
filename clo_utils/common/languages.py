"""Language registry: one ISO 639-1 code -> every name the kit's tools use for it.

The paper's six target languages (zh, de, ko, id, sw, yo: two per resource level) plus the
languages the offline demo can translate into with Debian's Apertium (ca, es, eo, hr).

Which English -> X Apertium pairs Debian ships (checked with `apt-cache search apertium`, Debian 12 bookworm):
  apertium-eng-cat  eng-cat (+ valencia / iec2017 variants)   -> ca  (lingua: CATALAN)
  apertium-eng-spa  eng-spa                                    -> es  (lingua: SPANISH)
  apertium-eo-en    en-eo                                      -> eo  (lingua: ESPERANTO)
  apertium-hbs-eng  eng-hbs_HR (also _BS, _SR)                 -> hr  (lingua: CROATIAN)
  apertium-en-gl    en-gl                                      -> left out: lingua has no Galician
                                                                  model, so the quality filter and the
                                                                  fidelity metric could not judge it.
The _BS / _SR variants of eng-hbs are left out too: their output is near-identical to _HR, and
lingua's Serbian model does not recognise Latin-script Serbian (it answers English).
apertium-eu-en, apertium-isl-eng and apertium-mkd-eng translate only INTO English.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Language:
    code: str  # ISO 639-1, the kit's key
    name: str  # English name, for prompts and plots
    m2m100: str | None  # M2M100 language code (None: not covered by M2M100)
    nllb: str | None  # NLLB-200 / FLORES-200 code
    apertium: str | None  # Debian Apertium mode English -> this language (None: no pair)
    lingua: str  # lingua.Language member name, for language ID
    resource: str | None  # "high" | "medium" | "low" as the paper groups its six; None elsewhere
    script: str  # ISO 15924 script
    char_ratio: tuple[float, float] = (0.5, 2.2)  # plausible len(translation)/len(English) in characters
    apertium_package: str | None = None  # Debian package that provides `apertium` mode (install hint)


LANGUAGES: dict[str, Language] = {
    lang.code: lang
    for lang in [
        Language("en", "English", "en", "eng_Latn", None, "ENGLISH", "high", "Latn"),
        # The paper's six.
        Language("zh", "Chinese", "zh", "zho_Hans", None, "CHINESE", "high", "Hans", (0.1, 1.2)),
        Language("de", "German", "de", "deu_Latn", None, "GERMAN", "high", "Latn"),
        Language("ko", "Korean", "ko", "kor_Hang", None, "KOREAN", "medium", "Hang", (0.15, 1.4)),
        Language("id", "Indonesian", "id", "ind_Latn", None, "INDONESIAN", "medium", "Latn"),
        Language("sw", "Swahili", "sw", "swh_Latn", None, "SWAHILI", "low", "Latn"),
        Language("yo", "Yoruba", "yo", "yor_Latn", None, "YORUBA", "low", "Latn"),
        # Offline demo languages (Apertium pairs packaged in Debian); not in the paper.
        Language(
            "ca", "Catalan", "ca", "cat_Latn", "eng-cat", "CATALAN", None, "Latn", apertium_package="apertium-eng-cat"
        ),
        Language(
            "es", "Spanish", "es", "spa_Latn", "eng-spa", "SPANISH", None, "Latn", apertium_package="apertium-eng-spa"
        ),
        Language(
            "eo", "Esperanto", None, "epo_Latn", "en-eo", "ESPERANTO", None, "Latn", apertium_package="apertium-eo-en"
        ),
        Language(
            "hr",
            "Croatian",
            "hr",
            "hrv_Latn",
            "eng-hbs_HR",
            "CROATIAN",
            None,
            "Latn",
            apertium_package="apertium-hbs-eng",
        ),
    ]
}

PAPER_LANGUAGES = ("zh", "de", "ko", "id", "sw", "yo")


def get_language(code: str) -> Language:
    """The registry entry for `code`; an unknown code is a clear error listing the known ones."""
    try:
        return LANGUAGES[code]
    except KeyError:
        known = ", ".join(f"{c} ({l.name})" for c, l in LANGUAGES.items())
        raise ValueError(f"unknown language code {code!r}; known codes: {known}") from None


def apertium_languages() -> dict[str, Language]:
    """The registry entries that have an English -> X Apertium mode."""
    return {code: lang for code, lang in LANGUAGES.items() if lang.apertium}

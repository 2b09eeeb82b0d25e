"""Structure-preserving segmentation: what of a text goes to a translator, and what is kept verbatim.

A text is cut into pieces (`split_for_translation`); list markers, headings, blank lines, fenced
code blocks, inline `code` and URLs are kept verbatim and only the prose between them is
translated. A translation must hand back every protected span (inline code, URL) of its segment
(`spans_survived`); where one does not, the segment is translated again piece by piece around the
spans (`around_spans`), so code is never translated.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

_FENCE = re.compile(r"^[ \t]*(```|~~~)")
# Markdown line prefixes kept out of the translation: bullets, numbered items, headings, quotes
# (repeated for nesting, e.g. "> - ").
_LINE_PREFIX = re.compile(r"^[ \t]*(?:(?:[-*+•]|\d{1,3}[.)]|#{1,6}|>)[ \t]+)*")
# Inline code (single or double backticks) and URLs: never translated.
PROTECTED = re.compile(
    r"``[^`\n]+?``|`[^`\n]+`"
    r"|(?:https?://|www\.)[^\s<>()\[\]`\"']*[^\s<>()\[\]`\"'.,;:!?]"
)
_LETTER = re.compile(r"[^\W\d_]")
# A sentence ends with . ! ? followed by space and an upper-case letter, digit or opening quote.
_SENTENCE_BREAK = re.compile(r"(?<=[.!?])[ \t]+(?=[\"'“(\[]?[A-Z0-9])")


@dataclass(frozen=True)
class Piece:
    """A slice of a text: `translate` pieces go to the backend, the others are kept verbatim."""

    text: str
    translate: bool


def protected_spans(text: str) -> list[str]:
    """Inline code and URLs in `text`, in order."""
    return [m.group(0) for m in PROTECTED.finditer(text)]


def _has_prose(text: str) -> bool:
    """True when letters remain outside code and URLs (otherwise there is nothing to translate)."""
    return bool(_LETTER.search(PROTECTED.sub(" ", text)))


def _sentence_breaks(text: str) -> list[tuple[int, int]]:
    """(start, end) of the whitespace between sentences, never inside a protected span."""
    spans = [m.span() for m in PROTECTED.finditer(text)]
    return [m.span() for m in _SENTENCE_BREAK.finditer(text) if not any(s < m.start() < e for s, e in spans)]


def _text_pieces(text: str, split_sentences: bool) -> list[Piece]:
    """Leading/trailing whitespace verbatim; the core as one segment or one per sentence."""
    core = text.strip()
    if not core or not _has_prose(core):
        return [Piece(text, False)]
    lead = text[: len(text) - len(text.lstrip())]
    trail = text[len(text.rstrip()) :]
    pieces = [Piece(lead, False)]
    start = 0
    for s, e in _sentence_breaks(core) if split_sentences else []:
        sentence = core[start:s]
        pieces += [Piece(sentence, _has_prose(sentence)), Piece(core[s:e], False)]
        start = e
    last = core[start:]
    pieces += [Piece(last, _has_prose(last)), Piece(trail, False)]
    return pieces


def _line_pieces(line: str, split_sentences: bool) -> list[Piece]:
    if line.lstrip().startswith("|"):  # a Markdown table row: translate cell by cell
        return [
            p
            for cell in re.split(r"(\|)", line)
            for p in ([Piece(cell, False)] if cell == "|" else _text_pieces(cell, split_sentences))
        ]
    prefix = _LINE_PREFIX.match(line).group(0)
    return [Piece(prefix, False)] + _text_pieces(line[len(prefix) :], split_sentences)


def _merge_literals(pieces: Iterable[Piece]) -> list[Piece]:
    merged: list[Piece] = []
    for p in pieces:
        if not p.text:
            continue
        if merged and not p.translate and not merged[-1].translate:
            merged[-1] = Piece(merged[-1].text + p.text, False)
        else:
            merged.append(p)
    return merged


def split_for_translation(text: str, split_sentences: bool = False) -> list[Piece]:
    """Cut `text` into verbatim and translatable pieces; "".join(p.text for p in pieces) == text.

    Kept verbatim: line breaks and blank lines, list markers ("- ", "* ", "1. "), heading and
    quote markers, fenced code blocks (``` or ~~~, fences included; an unclosed fence protects
    the rest of the text), lines without letters, Markdown table pipes. Inline code and URLs stay
    inside their segment, and the translation engine checks that they come back unchanged.
    `split_sentences` cuts paragraphs into sentences (for neural MT trained on sentences).
    """
    pieces: list[Piece] = []
    in_fence = False
    for line in re.split(r"(?<=\n)", text):
        body, newline = (line[:-1], "\n") if line.endswith("\n") else (line, "")
        if _FENCE.match(body):
            in_fence = not in_fence
            pieces.append(Piece(line, False))
        elif in_fence:
            pieces.append(Piece(line, False))
        else:
            pieces += _line_pieces(body, split_sentences) + [Piece(newline, False)]
    return _merge_literals(pieces)


def spans_survived(source: str, translation: str) -> bool:
    return Counter(protected_spans(source)) == Counter(protected_spans(translation))


def around_spans(segment: str) -> list[Piece]:
    """The segment cut at its protected spans: prose pieces to translate, spans verbatim."""
    pieces, pos = [], 0
    for m in PROTECTED.finditer(segment):
        pieces += _text_pieces(segment[pos : m.start()], False) + [Piece(m.group(0), False)]
        pos = m.end()
    pieces += _text_pieces(segment[pos:], False)
    return _merge_literals(pieces)


def tidy(text: str) -> str:
    """One line, single spaces: a segment is one line of the source, so its translation is too."""
    return " ".join(text.split())

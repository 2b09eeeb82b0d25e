"""The translator interface and the rule-based backend.

A Translator turns English segments into one target language (`translate_batch`); its `model`
string is part of the translation cache key. Apertium, Debian's rule-based MT, runs as a
subprocess and is the offline default; the neural backends are in clo_utils.translation.neural_translators.
"""

from __future__ import annotations

import abc
import html
import logging
import re
import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from ..common.languages import Language, apertium_languages, get_language
from .segments import PROTECTED, protected_spans, tidy

log = logging.getLogger(__name__)

SOURCE_LANG = "en"


class TranslatorError(RuntimeError):
    """A backend cannot run (missing program, model or language code)."""


class Translator(abc.ABC):
    """English -> one target language. Subclasses implement `translate_batch`."""

    name: str = "base"
    default_batch_size: int = 32
    split_sentences: bool = False  # neural MT models are trained on sentences

    def __init__(self, target_lang: str):
        self.lang: Language = get_language(target_lang)
        if self.lang.code == SOURCE_LANG:
            raise ValueError("target language is English; the kit translates from English")

    @property
    @abc.abstractmethod
    def model(self) -> str:
        """Identity of the model or mode plus output-affecting options: part of the cache key."""

    @property
    def label(self) -> str:
        return f"{self.name}:{self.model}"

    @abc.abstractmethod
    def translate_batch(self, segments: list[str]) -> list[str | None]:
        """One translation per segment (None: failed; it is not cached and is retried next run)."""

    def batch_order(self, segments: list[str]) -> list[str]:
        """Order in which segments are batched (HF models: longest first, less padding)."""
        return segments

    def describe(self) -> dict:
        """What the manifest records about this translator."""
        return {"backend": self.name, "model": self.model, "label": self.label, "target": self.lang.code}


_P_BLOCK = re.compile(r'<p id="s(\d+)">(.*?)</p>', re.DOTALL)
_PLACEHOLDER = re.compile(r"<!--c(\d+)-->")


def _apertium_html(segments: Sequence[str]) -> str:
    """One <p id="sN"> block per segment. Block tags are sentence boundaries for Apertium's HTML
    deformatter, so words never move between segments (with plain text or `-f line` they can move
    across line breaks), and the ids let the output be split back with certainty. Protected spans
    become HTML comments, which Apertium treats as blanks: they keep their place and, unlike inline
    placeholders such as <span>, do not disturb agreement or capitalisation."""
    blocks = []
    for i, seg in enumerate(segments):
        parts, pos = [], 0
        for j, m in enumerate(PROTECTED.finditer(seg)):
            parts += [html.escape(seg[pos : m.start()], quote=False), f"<!--c{j}-->"]
            pos = m.end()
        parts.append(html.escape(seg[pos:], quote=False))
        blocks.append(f'<p id="s{i}">{"".join(parts)}</p>\n')
    return "".join(blocks)


def _restore_spans(translated: str, source: str) -> str:
    """Unescape Apertium's HTML and put the protected spans back in place of their comments.
    Spans go in last, so code such as `<div>` or `&amp;` is never unescaped or stripped."""
    spans = protected_spans(source)
    text = re.sub(r"<(?!!--c\d+-->)[^>]*>", "", translated)  # any tag but our placeholders
    out = []
    for i, part in enumerate(_PLACEHOLDER.split(text)):  # text, index, text, index, ..., text
        if i % 2 == 0:
            out.append(html.unescape(part))
        elif int(part) < len(spans):  # an unknown index cannot come from us; drop it
            out.append(spans[int(part)])
    return tidy("".join(out))


def parse_apertium_html(output: str, segments: Sequence[str]) -> list[str] | None:
    """The translations from Apertium's HTML output, or None unless it splits into exactly one block
    per segment, in order, with nothing outside the blocks."""
    blocks = _P_BLOCK.findall(output)
    if [int(i) for i, _ in blocks] != list(range(len(segments))) or _P_BLOCK.sub("", output).strip():
        return None
    return [_restore_spans(text, seg) for (_, text), seg in zip(blocks, segments)]


def apertium_install_hint(lang: Language, mode: str) -> str:
    package = lang.apertium_package or f"apertium-{mode.split('_')[0]}"
    return f"sudo apt-get install apertium {package}"


class ApertiumTranslator(Translator):
    """Debian's Apertium (`apertium -u -f html <mode>`), many segments per process call.

    Each call pays a fixed start-up (the pipeline loads its transducers), so a batch of segments
    goes through one call; `n_procs` calls run in parallel. A batch whose output does not split
    back into exactly one block per segment is redone one segment per call.

    Apertium's part-of-speech tagger keeps some state across sentences within one process call
    (null-flush mode does not reset it), so a segment's translation can depend on earlier segments
    in its batch (rarely; more often for eng-spa than for eng-cat).
    Words never move between segments (the block ids check that), translations are deterministic
    for a given batch, and the cache freezes them; batch_size=1 gives strictly independent
    segments at a much higher cost.
    """

    name = "apertium"
    default_batch_size = 200

    def __init__(
        self,
        target_lang: str,
        model: str | None = None,
        n_procs: int = 1,
        timeout: float = 600.0,
        executable: str = "apertium",
    ):
        super().__init__(target_lang)
        self.mode = model or self.lang.apertium
        if not self.mode:
            known = ", ".join(f"{c} ({l.apertium})" for c, l in apertium_languages().items())
            raise TranslatorError(
                f"no Apertium pair English -> {self.lang.name} ({self.lang.code}) in the "
                f"registry; languages with one: {known}. Use backend='m2m100' or 'nllb'."
            )
        if n_procs < 1:
            raise ValueError(f"n_procs must be >= 1, got {n_procs}")
        self.n_procs = n_procs
        self.timeout = timeout
        self.executable = executable
        self._check_installed()
        self.calls = 0  # process calls made, for benchmarks

    @property
    def model(self) -> str:
        return self.mode

    @property
    def label(self) -> str:
        return f"apertium:{self.mode} (Apertium rule-based MT)"

    def _check_installed(self) -> None:
        hint = apertium_install_hint(self.lang, self.mode)
        if shutil.which(self.executable) is None:
            raise TranslatorError(
                f"Apertium is not installed (no {self.executable!r} on PATH). Install it with: {hint}"
            )
        listed = subprocess.run([self.executable, "-l"], capture_output=True, text=True, timeout=60)
        if self.mode not in listed.stdout.split():
            raise TranslatorError(
                f"the Apertium mode {self.mode!r} (English -> {self.lang.name}) is not "
                f"installed. Install it with: {hint}"
            )

    def _run(self, document: str) -> str:
        self.calls += 1
        done = subprocess.run(
            [self.executable, "-u", "-f", "html", self.mode],
            input=document,
            capture_output=True,
            text=True,
            timeout=self.timeout,
        )
        if done.returncode != 0:
            raise TranslatorError(f"apertium {self.mode} failed (exit {done.returncode}): {done.stderr.strip()[:500]}")
        return done.stdout

    def _translate_chunk(self, segments: list[str]) -> list[str | None]:
        parsed = parse_apertium_html(self._run(_apertium_html(segments)), segments)
        if parsed is not None:
            return parsed
        log.warning(
            "apertium: a batch of %d segments did not split back one-to-one; redoing it one segment per call",
            len(segments),
        )
        return [self._translate_one(seg) for seg in segments]

    def _translate_one(self, segment: str) -> str | None:
        parsed = parse_apertium_html(self._run(_apertium_html([segment])), [segment])
        if parsed is None:
            log.warning("apertium: could not read back the translation of %r", segment[:80])
            return None
        return parsed[0]

    def translate_batch(self, segments: list[str]) -> list[str | None]:
        if self.n_procs == 1 or len(segments) < 2 * self.n_procs:
            return self._translate_chunk(segments)
        size = -(-len(segments) // self.n_procs)
        chunks = [segments[i : i + size] for i in range(0, len(segments), size)]
        with ThreadPoolExecutor(len(chunks)) as pool:  # the work happens in the subprocesses
            return [t for part in pool.map(self._translate_chunk, chunks) for t in part]

    def describe(self) -> dict:
        return {
            **super().describe(),
            "apertium_version": apertium_version(self.executable),
            "package": self.lang.apertium_package,
            "package_version": debian_package_version(self.lang.apertium_package),
        }


def apertium_version(executable: str = "apertium") -> str | None:
    try:
        return subprocess.run([executable, "-V"], capture_output=True, text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def debian_package_version(package: str | None) -> str | None:
    if not package or shutil.which("dpkg-query") is None:
        return None
    done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    return done.stdout.strip() or None

"""Markdown for REPORT.md: numbers, cells, tables and quotes, with one mark for a missing value."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

MISSING = "—"


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def format_number(value: Any, digits: int) -> str:
    return MISSING if is_missing(value) else f"{float(value):.{digits}f}"


def markdown_cell(text: Any, limit: int | None = None) -> str:
    """One table cell: pipes escaped, newlines as <br>, optionally cut to `limit` characters."""
    text = MISSING if is_missing(text) else str(text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r\n", "\n").replace("\n", "<br>")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def blockquote(text: str) -> str:
    return "\n".join(f"> {line}" if line else ">" for line in text.splitlines() or [""])


def unique_in_order(values: Any) -> list[Any]:
    seen: list[Any] = []
    for value in values:
        if not is_missing(value) and value not in seen:
            seen.append(value)
    return seen

"""Plain-text and Markdown tables for every report (``explain_step``, ``diagnose``, ``check_gradients``, the CLI).

A report is a list of blocks, each rendered either as aligned plain text (``.text()``) or as Markdown
(``.markdown()``), so that both forms say the same thing:

- :class:`Table`: a header, a rule and rows; numeric columns are right-aligned;
- :class:`Pairs`: ``key  value`` lines;
- :class:`Line`: a sentence, optionally followed by a formula (``text: formula``); wrapped in plain text.

The number formatters (``number``, ``vector``, ``small_number``, ``percent``) are shared for the same reason:
one number prints the same way in every report.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import List, Optional, Union

import numpy as np

WRAP = 110  # plain-text lines longer than this wrap, continuation lines indented by two spaces


# --------------------------------------------------------------------------------------------------------
# Numbers
# --------------------------------------------------------------------------------------------------------


def number(value, decimals: int) -> str:
    """A number with a fixed number of decimals; a value that rounds to zero prints without a minus sign.

    ``None`` prints as an empty cell; NaN and infinities as ``nan``, ``inf``, ``-inf``.
    """
    if value is None:
        return ""
    value = float(value)
    if not np.isfinite(value):
        return str(value)
    text = f"{value:.{decimals}f}"
    if text.startswith("-") and float(text) == 0.0:
        text = text[1:]
    return text


def vector(values, decimals: int) -> str:
    """``[v0, v1, ...]`` with :func:`number` for each entry."""
    return "[" + ", ".join(number(v, decimals) for v in values) + "]"


def small_number(value, decimals: int) -> str:
    """Fixed decimals, or scientific notation for a nonzero value too small to show that way (losses)."""
    value = float(value)
    if value != 0.0 and np.isfinite(value) and abs(value) < 0.5 * 10.0 ** (-decimals):
        return f"{value:.{max(decimals - 1, 1)}e}"
    return number(value, decimals)


def percent(value: Optional[float]) -> str:
    """A relative change with its sign (``-12.34%``); ``None`` when there was nothing to compare with."""
    if value is None:
        return "n/a (the loss before was 0)"
    return f"{value:+.2f}%"


# --------------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------------


def table(headers, rows, numeric, indent="  ") -> List[str]:
    """Aligned plain-text lines: the headers, a rule of dashes, one line per row (trailing spaces cut).

    ``numeric[c]`` right-aligns column ``c``; the others are left-aligned.
    """
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]

    def line(cells):
        return (
            indent + "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(cells, widths, numeric))
        ).rstrip()

    return [line(headers), indent + "  ".join("-" * w for w in widths)] + [line(r) for r in rows]


def markdown_escape(text: str) -> str:
    """``text`` with Markdown's special characters backslash-escaped."""
    for ch in "\\*_<>[]|":
        text = text.replace(ch, "\\" + ch)
    return text


def markdown_code(value: str) -> str:
    """Formulas and vectors in Markdown read best (and survive ``*``, ``_``) as inline code."""
    if any(ch in value for ch in "[]*_=^"):
        return "`" + value.replace("`", "'") + "`"
    return value


@dataclass
class Table:
    """A table of strings; ``numeric[c]`` right-aligns column ``c``."""

    headers: List[str]
    rows: List[List[str]]
    numeric: List[bool]

    def text(self, indent: str = "  ") -> List[str]:
        return table(self.headers, self.rows, self.numeric, indent)

    def markdown(self) -> List[str]:
        def escape(cell):
            return cell.replace("|", "\\|")

        out = ["| " + " | ".join(escape(h) for h in self.headers) + " |"]
        out.append("| " + " | ".join("---:" if n else "---" for n in self.numeric) + " |")
        out.extend("| " + " | ".join(escape(c) for c in row) + " |" for row in self.rows)
        return out


@dataclass
class Pairs:
    """Key-value lines (``key   value``), the keys padded to one width."""

    items: List[tuple]

    def text(self, indent: str = "") -> List[str]:
        width = max(len(k) for k, _ in self.items)
        return [(indent + k.ljust(width) + "  " + v).rstrip() for k, v in self.items]

    def markdown(self) -> List[str]:
        return [f"- **{k}**: {markdown_code(v)}" for k, v in self.items]


@dataclass
class Line:
    """A sentence, optionally followed by a formula (``text: formula``); long lines wrap in plain text."""

    text_value: str
    formula: str = ""

    def text(self) -> List[str]:
        if self.text_value and self.formula:
            whole = f"{self.text_value}: {self.formula}"
        else:
            whole = self.text_value or self.formula
        if len(whole) <= WRAP:
            return [whole]
        return textwrap.wrap(whole, WRAP, subsequent_indent="  ", break_long_words=False, break_on_hyphens=False)

    def markdown(self) -> List[str]:
        parts = []
        if self.text_value:
            parts.append(markdown_escape(self.text_value))
        if self.formula:
            parts.append("`" + self.formula.replace("`", "'") + "`")
        return [": ".join(parts)] if parts else []


Block = Union[Table, Pairs, Line]


def render_text(title: str, sections) -> str:
    """A titled report as plain text: each ``(heading, blocks)`` of ``sections`` under an underlined heading.

    Tables and key-value blocks are followed by a blank line; trailing blank lines of a section are cut.
    """
    lines = [title, "=" * len(title)]
    for heading, blocks in sections:
        lines += ["", heading, "-" * len(heading)]
        for block in blocks:
            lines += block.text()
            if not isinstance(block, Line):
                lines.append("")
        while lines and lines[-1] == "":
            lines.pop()
    return "\n".join(lines) + "\n"


def render_markdown(title: str, sections) -> str:
    """The same report as Markdown: ``## title``, ``### heading`` per section, one blank line between blocks."""
    lines = ["## " + title]
    for heading, blocks in sections:
        lines += ["", "### " + heading, ""]
        for block in blocks:
            lines += block.markdown()
            lines.append("")
        while lines and lines[-1] == "":
            lines.pop()
    collapsed = [line for k, line in enumerate(lines) if line or (k and lines[k - 1])]
    return "\n".join(collapsed) + "\n"

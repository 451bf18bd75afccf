"""Plain-text tables for the reports (``diagnose``, ``check_gradients``): aligned columns, a rule."""

from __future__ import annotations

from typing import List


def table(headers, rows, numeric, indent="  ") -> List[str]:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]

    def line(cells):
        return (
            indent + "  ".join(c.rjust(w) if n else c.ljust(w) for c, w, n in zip(cells, widths, numeric))
        ).rstrip()

    return [line(headers), indent + "  ".join("-" * w for w in widths)] + [line(r) for r in rows]

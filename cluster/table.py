"""The one table printer: aligned plain text for files and pipes, a rich table on a terminal, long tables cut in
the middle with a line that says where the whole one is."""

from __future__ import annotations

from typing import Optional, Sequence, TextIO


def text(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Aligned plain text, one line per row, header first (what files keep)."""
    cells = [list(columns), *[list(r) for r in rows]]
    widths = [max(len(str(c[i])) for c in cells) for i in range(len(columns))]
    return "".join("  ".join(str(c[i]).ljust(widths[i]) for i in range(len(columns))).rstrip() + "\n"
                   for c in cells)


def show(columns: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO, *, title: Optional[str] = None,
         head: Optional[int] = None, tail: int = 0, whole: Optional[str] = None) -> None:
    """Print the table to `out`. With `head`, a table longer than head + tail rows shows its first `head` and
    last `tail` rows and says how many more there are (and that `whole` holds them all)."""
    shown = list(rows)
    cut = head is not None and len(rows) > head + tail
    if cut:
        shown = list(rows[:head]) + ([*rows[len(rows) - tail:]] if tail else [])
    if out.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(*columns, title=title)
        for i, row in enumerate(shown):
            if cut and i == head:
                table.add_row(*["..."] * len(columns))
            table.add_row(*map(str, row))
        Console(file=out, highlight=False).print(table)
    else:
        lines = text(columns, shown).splitlines()
        if cut:
            lines.insert(1 + int(head or 0), "...")
        out.write("\n".join(lines) + "\n")
    if cut:
        more = len(rows) - len(shown)
        out.write(f"({more} more not shown" + (f"; all {len(rows)} in {whole})\n" if whole else ")\n"))

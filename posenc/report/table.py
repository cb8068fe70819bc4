"""A neutral table and its two renderers: markdown (report.md, `posenc tables`) and the
terminal (rich). Every report section is built once as a `Table` and rendered by these."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Table:
    """What a section shows, independent of where.

    ``title``: the terminal table's title (markdown shows ``lead`` instead, a sentence
    before the table); ``caption``: the terminal caption; ``columns`` and ``align`` ("l" or
    "r", one per column); ``rows`` of cell texts; ``notes``: paragraphs after the table
    (markdown only); ``markup``: rich markup per cell (terminal only, e.g. a red count),
    falling back to the plain cell; ``compact``: the terminal table without outer and
    doubled padding.
    """

    title: str
    columns: list[str]
    align: list[str]
    rows: list[list[str]] = field(default_factory=list)
    lead: str | None = None
    caption: str | None = None
    notes: list[str] = field(default_factory=list)
    markup: dict[tuple[int, int], str] = field(default_factory=dict)
    compact: bool = False  # terminal: no outer padding, collapsed padding (wide tables)

    def __post_init__(self) -> None:
        if len(self.align) != len(self.columns) or set(self.align) - {"l", "r"}:
            raise ValueError(f"align must give 'l' or 'r' for each of {self.columns}")


def md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(table: Table) -> list[str]:
    """The lead sentence, the table and its notes, each paragraph followed by a blank line."""
    lines = [table.lead, ""] if table.lead else []
    lines.append("| " + " | ".join(table.columns) + " |")
    lines.append("|" + "|".join("---" if a == "l" else "--:" for a in table.align) + "|")
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in table.rows]
    for note in table.notes:
        lines += ["", note]
    return [*lines, ""]


def terminal(table: Table):
    """A rich table: the title, the caption, and the columns aligned as given."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table as RichTable

    out = RichTable(
        title=table.title,
        caption=table.caption,
        box=box.SIMPLE_HEAD,
        pad_edge=not table.compact,
        collapse_padding=table.compact,
    )
    for i, (name, align) in enumerate(zip(table.columns, table.align, strict=True)):
        out.add_column(name, justify="left" if align == "l" else "right", no_wrap=i == 0)
    for r, row in enumerate(table.rows):
        out.add_row(*(table.markup.get((r, c), escape(cell)) for c, cell in enumerate(row)))
    return out

"""Renders the report's `Section` tree as Markdown, with each plot linked as plots/NAME.png."""

from __future__ import annotations

from seqsense.report import tables as tb


def _text(s: str) -> str:
    """Text that no Markdown renderer reads as an HTML tag or entity."""
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cell(s: str) -> str:
    """Text safe inside a Markdown table cell: pipes escaped, newlines flattened."""
    return _text(s).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def table_md(t: tb.Table) -> str:
    """A Table as a GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(_cell(h) for h in t.header) + " |", "|" + "|".join("---" for _ in t.header) + "|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in t.rows]
    return "\n".join(lines)


def figure_md(f: tb.Figure, plots_dir: str = "plots") -> str:
    """A Figure as a Markdown image link to plots_dir/NAME.png, captioned."""
    cap = _text(f.caption)
    alt = cap.replace("[", "(").replace("]", ")")
    return f"![{alt}]({plots_dir}/{f.name}.png)\n\n*{cap}*"


def _blocks(blocks: list, level: int) -> list[str]:
    out = []
    for b in blocks:
        if isinstance(b, str):
            out.append(_text(b))
        elif isinstance(b, list):
            out.append("\n".join(f"- {_text(str(i))}" for i in b))
        elif isinstance(b, tb.Table):
            out.append(table_md(b) if b.rows else tb.DASH)
        elif isinstance(b, tb.Figure):
            out.append(figure_md(b))
        elif isinstance(b, tb.Section):
            out.append("#" * min(level + 1, 6) + " " + _text(b.title))
            out += _blocks(b.blocks, level + 1)
    return out


def render_markdown(title: str, meta: str, sections: list[tb.Section]) -> str:
    """The whole document: title, meta line and every section."""
    parts = [f"# {_text(title)}", _text(meta)]
    for s in sections:
        parts.append(f"## {_text(s.title)}")
        parts += _blocks(s.blocks, 2)
    return "\n\n".join(parts) + "\n"

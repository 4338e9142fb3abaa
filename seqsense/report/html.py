"""Renders the report's `Section` tree as one self-contained HTML page.

Self-contained means it opens offline: the CSS is inline, every plot is a base64 `data:` PNG, and
there is no script, web font or external link. Every text is escaped with `html.escape`.
"""

from __future__ import annotations

import base64
import html

from seqsense.report import tables as tb

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1150px;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.8em; }
h3 { font-size: 1.05em; margin-top: 1.4em; }
.meta { color: #555; font-size: 0.92em; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-size: 0.86em; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } tr:nth-child(even) td { background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.v-needs { color: #b34700; font-weight: 600; } .v-enough { color: #127a5c; font-weight: 600; } .v-unclear { color: #666; }
.v-error { color: #b00020; }
figure { margin: 0.8em 0 1.4em; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
.scroll { overflow-x: auto; }
.toc { font-size: 0.9em; columns: 2; } a { color: #1f5fa8; }
"""

_VERDICT_CLASS = {
    tb.NEEDS: "v-needs", tb.SHORT_VERDICT[tb.NEEDS]: "v-needs", "supported": "v-needs",
    tb.ENOUGH: "v-enough", tb.SHORT_VERDICT[tb.ENOUGH]: "v-enough", "refuted": "v-enough",
    tb.UNCLEAR: "v-unclear", "depends": "v-unclear",
}


def _cell_class(s: str) -> str:
    if s in _VERDICT_CLASS:
        return _VERDICT_CLASS[s]
    if s.startswith("depends"):
        return "v-unclear"
    if "error" in s:
        return "v-error"
    stripped = s.replace(",", "").replace("%", "").replace("+", "").replace("-", "").replace(".", "").replace(" ", "")
    return "num" if stripped.isdigit() or s == tb.DASH else ""


def table_html(t: tb.Table) -> str:
    """A Table as an HTML <table> in a horizontally scrolling box."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in t.header)
    body = []
    for row in t.rows:
        cells = []
        for c in row:
            cls = _cell_class(c)
            attr = f' class="{cls}"' if cls else ""
            cells.append(f"<td{attr}>{html.escape(c)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def figure_html(f: tb.Figure) -> str:
    """A Figure as an <img> with its PNG inlined as a data: URI, and its caption."""
    data = base64.b64encode(f.png).decode("ascii")
    cap = html.escape(f.caption)
    return f'<figure><img src="data:image/png;base64,{data}" alt="{cap}"><figcaption>{cap}</figcaption></figure>'


def _blocks(blocks: list, level: int) -> list[str]:
    out = []
    for b in blocks:
        if isinstance(b, str):
            out.append(f"<p>{html.escape(b)}</p>")
        elif isinstance(b, list):
            out.append("<ul>" + "".join(f"<li>{html.escape(str(i))}</li>" for i in b) + "</ul>")
        elif isinstance(b, tb.Table):
            out.append(table_html(b) if b.rows else f"<p>{tb.DASH}</p>")
        elif isinstance(b, tb.Figure):
            out.append(figure_html(b))
        elif isinstance(b, tb.Section):
            h = min(level + 1, 6)
            out.append(f"<h{h}>{html.escape(b.title)}</h{h}>")
            out += _blocks(b.blocks, level + 1)
    return out


def render_html(title: str, meta: str, sections: list[tb.Section]) -> str:
    """The whole page: title, meta line and every section."""
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>",
        f"<h1>{html.escape(title)}</h1>", f'<p class="meta">{html.escape(meta)}</p>',
    ]
    toc = "".join(f'<li><a href="#s{i}">{html.escape(s.title)}</a></li>' for i, s in enumerate(sections, 1))
    parts.append(f'<nav><ul class="toc">{toc}</ul></nav>')
    for i, s in enumerate(sections, 1):
        parts.append(f'<h2 id="s{i}">{html.escape(s.title)}</h2>')
        parts += _blocks(s.blocks, 2)
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)

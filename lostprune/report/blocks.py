"""The report's building blocks (paragraphs, tables, images) and their Markdown and HTML
renderings, shared by every section of the report."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Image:
    path: str
    caption: str


Block = str | Table | Image  # a str is a paragraph; "# " / "## " prefixes make headings


def pm(summary, percent: bool = True) -> str:
    """mean ± std of a SeedSummary (in percent unless told), the mean alone for one seed."""
    if summary is None:
        return "–"
    scale = 100 if percent else 1
    return (
        f"{scale * summary.mean:.1f} ± {scale * summary.std:.1f}"
        if len(summary.values) > 1
        else f"{scale * summary.mean:.1f}"
    )


def rel(path: Path, out: Path) -> str:
    """A figure's path relative to the report folder, as the report links it."""
    return str(path.relative_to(out))


# --------------------------------------------------------------------------- renderers
def to_markdown(blocks: list[Block]) -> str:
    lines = []
    for block in blocks:
        if isinstance(block, Table):
            lines.append("| " + " | ".join(block.header) + " |")
            lines.append("|" + "---|" * len(block.header))
            lines += ["| " + " | ".join(row) + " |" for row in block.rows]
        elif isinstance(block, Image):
            lines.append(f"![{block.caption}]({block.path})\n\n*{block.caption}*")
        elif block.startswith("#"):
            lines.append(block)
        else:
            lines.append(f"- {block[2:]}" if block.startswith("* ") else block)
        lines.append("")
    return "\n".join(lines)


def _inline(text: str) -> str:
    """Markdown's **bold** and `code` in HTML; everything else escaped."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def to_html(blocks: list[Block], title: str) -> str:
    body = []
    for block in blocks:
        if isinstance(block, Table):
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block.header)
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in block.rows
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(block, Image):
            body.append(
                f'<figure><img src="{html.escape(block.path)}" alt="{html.escape(block.caption)}">'
                f"<figcaption>{html.escape(block.caption)}</figcaption></figure>"
            )
        elif block.startswith("## "):
            body.append(f"<h2>{_inline(block[3:])}</h2>")
        elif block.startswith("# "):
            body.append(f"<h1>{_inline(block[2:])}</h1>")
        elif block.startswith("* "):
            body.append(f"<ul><li>{_inline(block[2:])}</li></ul>")
        else:
            body.append(f"<p>{_inline(block)}</p>")
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;"
        "padding:4px 8px;text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}"
        "img{max-width:100%}figcaption{color:#555;font-size:13px}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )

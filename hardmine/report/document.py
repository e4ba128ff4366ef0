"""A small document model rendered twice: as Markdown (images as relative links to PNG files) and
as one self-contained HTML file (the same images embedded as base64 data URIs, inline CSS, no
scripts and no external resources), so the HTML can be mailed or archived on its own.

Text is plain; `code` in backticks is the only inline markup, in both renderings.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str


@dataclass
class BulletList:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]


@dataclass
class Figure:
    """An image file (PNG), referred to relative to the report's folder, with its caption and a
    short `alt` text (what it is, for readers that cannot see it)."""

    path: Path
    caption: str
    alt: str


@dataclass
class Gallery:
    """Figures side by side (HTML) or one after another (Markdown)."""

    figures: list[Figure]


@dataclass
class Code:
    text: str
    language: str = ""


@dataclass
class Details:
    """A collapsible block (HTML `<details>`, also rendered by GitHub's Markdown)."""

    summary: str
    blocks: list[Block] = field(default_factory=list)


Block = Heading | Paragraph | BulletList | Table | Figure | Gallery | Code | Details

_CODE_SPAN = re.compile(r"`([^`]+)`")

_CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #1f2328; line-height: 1.45; }
h1 { border-bottom: 1px solid #d0d7de; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 14px; }
th, td { border: 1px solid #d0d7de; padding: 4px 9px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f6f8fa; }
code { background: #f6f8fa; padding: .1em .3em; border-radius: 4px; font-size: 90%; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: 13px; border-radius: 6px; }
pre code { background: none; padding: 0; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #d0d7de; }
figcaption { font-size: 13px; color: #57606a; margin-top: .3em; }
.gallery { display: flex; flex-wrap: wrap; gap: 16px; }
.gallery figure { width: 340px; margin: 0; }
details { margin: .5em 0; }
summary { cursor: pointer; }
"""


def _html_inline(text: str) -> str:
    """Escape `text`; backticked spans become <code>."""
    parts = _CODE_SPAN.split(text)
    return "".join(
        f"<code>{html.escape(part)}</code>" if i % 2 else html.escape(part) for i, part in enumerate(parts)
    )


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_fence(text: str) -> str:
    """A fence longer than any backtick run in `text`."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def to_markdown(title: str, blocks: Sequence[Block]) -> str:
    """The document as GitHub-flavoured Markdown; figure paths as given (relative links)."""
    out = [f"# {title}", ""]
    for block in blocks:
        out.extend(_md_block(block))
    return "\n".join(out).rstrip() + "\n"


def _md_block(block: Block) -> list[str]:
    if isinstance(block, Heading):
        return [f"{'#' * block.level} {block.text}", ""]
    if isinstance(block, Paragraph):
        return [block.text, ""]
    if isinstance(block, BulletList):
        return [*(f"- {item}" for item in block.items), ""]
    if isinstance(block, Table):
        lines = [
            "| " + " | ".join(_md_cell(h) for h in block.header) + " |",
            "| " + " | ".join("---" if i == 0 else "---:" for i in range(len(block.header))) + " |",
        ]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
        return [*lines, ""]
    if isinstance(block, Figure):
        return [f"![{_md_cell(block.alt)}]({block.path.as_posix()})", "", f"*{block.caption}*", ""]
    if isinstance(block, Gallery):
        return [line for figure in block.figures for line in _md_block(figure)]
    if isinstance(block, Code):
        fence = _md_fence(block.text)
        return [f"{fence}{block.language}", block.text.rstrip("\n"), fence, ""]
    if isinstance(block, Details):
        inner = [line for b in block.blocks for line in _md_block(b)]
        return ["<details>", f"<summary>{html.escape(block.summary)}</summary>", "", *inner, "</details>", ""]
    raise TypeError(f"unknown block {block!r}")


def _data_uri(path: Path) -> str:
    kind = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}[path.suffix.lower()]
    return f"data:{kind};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def to_html(title: str, blocks: Sequence[Block], root: Path) -> str:
    """The document as one self-contained HTML page; figures are read from `root / figure.path`
    and embedded as data URIs."""
    body = "\n".join(_html_block(block, root) for block in blocks)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{body}\n</body>\n</html>\n"
    )


def _html_figure(figure: Figure, root: Path) -> str:
    return (
        f'<figure><img src="{_data_uri(root / figure.path)}" alt="{html.escape(figure.alt)}">'
        f"<figcaption>{_html_inline(figure.caption)}</figcaption></figure>"
    )


def _html_block(block: Block, root: Path) -> str:
    if isinstance(block, Heading):
        return f"<h{block.level}>{_html_inline(block.text)}</h{block.level}>"
    if isinstance(block, Paragraph):
        return f"<p>{_html_inline(block.text)}</p>"
    if isinstance(block, BulletList):
        return "<ul>" + "".join(f"<li>{_html_inline(item)}</li>" for item in block.items) + "</ul>"
    if isinstance(block, Table):
        head = "".join(f"<th>{_html_inline(h)}</th>" for h in block.header)
        rows = "".join(
            "<tr>" + "".join(f"<td>{_html_inline(c)}</td>" for c in row) + "</tr>" for row in block.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    if isinstance(block, Figure):
        return _html_figure(block, root)
    if isinstance(block, Gallery):
        return '<div class="gallery">' + "".join(_html_figure(f, root) for f in block.figures) + "</div>"
    if isinstance(block, Code):
        return f"<pre><code>{html.escape(block.text.rstrip())}</code></pre>"
    if isinstance(block, Details):
        inner = "\n".join(_html_block(b, root) for b in block.blocks)
        return f"<details><summary>{html.escape(block.summary)}</summary>\n{inner}\n</details>"
    raise TypeError(f"unknown block {block!r}")


def write_report(
    title: str, blocks: Sequence[Block], folder: Path, name: str = "report"
) -> tuple[Path, Path]:
    """Write `folder/name.md` and `folder/name.html` (figure paths relative to `folder`)."""
    md = folder / f"{name}.md"
    md.write_text(to_markdown(title, blocks))
    page = folder / f"{name}.html"
    page.write_text(to_html(title, blocks, folder))
    return md, page

"""The comparison's plots are written as PNGs with one panel per family, and the report document
renders to Markdown (relative image links) and self-contained HTML (embedded images, escaped text)."""

import base64
import re

import numpy as np
from PIL import Image

from hardmine.report.document import (
    BulletList,
    Code,
    Details,
    Figure,
    Gallery,
    Heading,
    Paragraph,
    Table,
    to_html,
    to_markdown,
    write_report,
)
from hardmine.report.plots import (
    Bar,
    Curve,
    method_colors,
    plot_ap_bars,
    plot_fg_share,
    plot_loss_curves,
    plot_pr_curves,
    smooth,
)


def curves() -> list[Curve]:
    x = np.arange(10, 110, 10)
    return [
        Curve("random", "two-stage", x, np.linspace(2.0, 0.5, 10)),
        Curve("ohem", "two-stage", x, np.linspace(1.5, 0.4, 10), spread=np.full(10, 0.1)),
        Curve("focal", "one-stage", x, np.linspace(1.0, 0.1, 10)),
    ]


def test_every_plot_is_a_png_with_one_panel_per_family(tmp_path):
    colors = method_colors(["random", "ohem", "focal"])
    assert len(set(colors.values())) == 3
    shares = [Curve(c.label, c.family, c.x, np.clip(c.y / 3, 0, 1)) for c in curves()]
    recall = np.linspace(0, 1, 101)
    pr = [Curve(c.label, c.family, recall, 1 - recall * 0.5) for c in curves()]
    bars = [
        Bar("random", "two-stage", 0.15, 0.01),
        Bar("ohem", "two-stage", None, None),
        Bar("focal", "one-stage", 0.01, None),
    ]
    paths = [
        plot_loss_curves(curves(), colors, tmp_path / "loss.png"),
        plot_fg_share(shares, colors, tmp_path / "share.png"),
        plot_pr_curves(pr, colors, tmp_path / "pr.png"),
        plot_ap_bars(bars, colors, tmp_path / "ap.png"),
    ]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width == 1000 and len(image.getcolors(1 << 20)) > 50


def test_smoothing_is_a_debiased_moving_average():
    assert smooth(np.array([2.0, 2.0, 2.0])).tolist() == [2.0, 2.0, 2.0]
    out = smooth(np.array([0.0, 10.0]), weight=0.5)
    assert out[0] == 0.0 and 0.0 < out[1] < 10.0


def tiny_png(path):
    Image.new("RGB", (4, 3), (200, 10, 10)).save(path)
    return path


def test_markdown_links_images_and_html_embeds_them(tmp_path):
    (tmp_path / "plots").mkdir()
    tiny_png(tmp_path / "plots" / "a.png")
    blocks = [
        Heading("Results"),
        Paragraph("a <b> & `code|pipe`"),
        Table(["method", "AP"], [["x|y", "1.0"]]),
        Figure(tmp_path.joinpath("plots/a.png").relative_to(tmp_path), "caption `c`", alt="a plot"),
        Gallery([Figure(tmp_path.joinpath("plots/a.png").relative_to(tmp_path), "g", alt="g")]),
        BulletList(["one", "two"]),
        Details("more", [Code("print('```')", "python")]),
    ]
    md = to_markdown("T", blocks)
    assert md.startswith("# T\n") and "![a plot](plots/a.png)" in md and "| x\\|y | 1.0 |" in md
    assert "````python\nprint('```')\n````" in md  # the fence outgrows the code's backticks
    page = to_html("T", blocks, tmp_path)
    assert "a &lt;b&gt; &amp; <code>code|pipe</code>" in page
    sources = re.findall(r'src="([^"]+)"', page)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert base64.b64decode(sources[0].split(",", 1)[1]) == (tmp_path / "plots" / "a.png").read_bytes()
    assert "<details><summary>more</summary>" in page and "<script" not in page
    md_path, html_path = write_report("T", blocks, tmp_path)
    assert md_path.read_text() == md and html_path.read_text() == page

"""The comparison's plots, drawn with matplotlib (Agg backend, no display) to PNG files.

Each plot has one panel per detector family (their losses and heads differ, so they are not drawn
on one axis) and gives every method the same colour in every plot (`method_colors`). Inputs are
plain arrays; reading the runs' logs and averaging over seeds is the caller's job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: render to files only, never open a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402

Color = tuple[float, float, float, float]

#: Figure width in inches and resolution: about 1000 px wide, a few tens of kB per PNG.
WIDTH_IN, HEIGHT_IN, DPI = 10.0, 3.6, 100
#: Weight of the past in the exponential moving average of the loss curves (TensorBoard's 0.6-0.9).
SMOOTHING = 0.8


@dataclass
class Curve:
    """One method's line in one plot: `y` at `x` (averaged over seeds), optional `spread` (std
    over seeds, drawn as a band), in the panel of its `family`."""

    label: str
    family: str
    x: np.ndarray
    y: np.ndarray
    spread: np.ndarray | None = None


@dataclass
class Bar:
    """One method's bar: `mean` with `std` error bar (None: a single seed, no bar), or no value."""

    label: str
    family: str
    mean: float | None
    std: float | None


def method_colors(names: Sequence[str]) -> dict[str, Color]:
    """A distinct colour per method name (matplotlib's tab10, then tab20), in the given order."""
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def smooth(y: np.ndarray, weight: float = SMOOTHING) -> np.ndarray:
    """Exponential moving average, debiased at the start (as TensorBoard's smoothing)."""
    out = np.empty(len(y), dtype=float)
    avg, norm = 0.0, 0.0
    for i, value in enumerate(np.asarray(y, dtype=float)):
        avg = weight * avg + (1 - weight) * value
        norm = weight * norm + (1 - weight)
        out[i] = avg / norm
    return out


def _panels(families: Sequence[str]) -> tuple[Figure, list[Axes]]:
    fig, axes = plt.subplots(1, len(families), figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI, squeeze=False)
    return fig, list(axes[0])


def _families(items: Sequence[Curve] | Sequence[Bar]) -> list[str]:
    return list(dict.fromkeys(item.family for item in items))


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def _plain_log_labels(ax: Axes) -> None:
    """Log-axis labels as plain numbers ("0.5", "2", not "5 x 10^-1"); the minor ticks get labels
    too when the axis spans less than a decade (else there would be at most one label)."""
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    low, high = ax.get_ylim()
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain if high < 10 * low else NullFormatter())


def _line_plot(
    curves: Sequence[Curve],
    colors: dict[str, Color],
    path: Path,
    xlabel: str,
    ylabel: str,
    smoothed: bool = False,
    log_y: bool = False,
    ylim: tuple[float, float] | None = None,
    markers: bool = False,
) -> Path:
    families = _families(curves)
    fig, axes = _panels(families)
    for ax, family in zip(axes, families):
        for c in (c for c in curves if c.family == family):
            color = colors[c.label]
            y = smooth(c.y) if smoothed else c.y
            if smoothed:
                ax.plot(c.x, c.y, color=color, alpha=0.2, linewidth=0.8)
            ax.plot(c.x, y, color=color, label=c.label, linewidth=1.6, marker="o" if markers else None)
            if c.spread is not None:
                ax.fill_between(c.x, y - c.spread, y + c.spread, color=color, alpha=0.15, linewidth=0)
        ax.set_title(family)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if log_y:
            ax.set_yscale("log")
            _plain_log_labels(ax)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_loss_curves(curves: Sequence[Curve], colors: dict[str, Color], path: Path) -> Path:
    """Total training loss against iteration (log scale): raw faintly, smoothed (`smooth`) solid."""
    return _line_plot(curves, colors, path, "iteration", "training loss", smoothed=True, log_y=True)


def plot_fg_share(curves: Sequence[Curve], colors: dict[str, Color], path: Path) -> Path:
    """Foreground share of the main head's classification loss against iteration, in [0, 1]."""
    return _line_plot(
        curves, colors, path, "iteration", "fg share of the cls loss", smoothed=True, ylim=(0.0, 1.0)
    )


def plot_pr_curves(curves: Sequence[Curve], colors: dict[str, Color], path: Path) -> Path:
    """Precision against recall at IoU 0.5 (COCO's interpolated curve, mean over classes)."""
    return _line_plot(curves, colors, path, "recall", "precision (IoU 0.5)", ylim=(0.0, 1.02))


def plot_ap_curves(curves: Sequence[Curve], colors: dict[str, Color], path: Path, metric: str = "AP") -> Path:
    """`metric` (AP, or mIoU for segmentation) on the validation set (in percent) against the
    iteration it was evaluated at."""
    return _line_plot(curves, colors, path, "iteration", f"{metric} (%)", markers=True)


def plot_ap_bars(bars: Sequence[Bar], colors: dict[str, Color], path: Path, metric: str = "AP") -> Path:
    """`metric` (in percent) per method as bars with ±1 std error bars over seeds; the value is
    printed above each bar, "n/a" for a method without one (all seeds failed)."""
    families = _families(bars)
    fig, axes = _panels(families)
    for ax, family in zip(axes, families):
        members = [b for b in bars if b.family == family]
        x = np.arange(len(members))
        means = [100 * b.mean if b.mean is not None else 0.0 for b in members]
        errors = [100 * b.std if b.std is not None else 0.0 for b in members]
        ax.bar(
            x,
            means,
            yerr=errors if any(b.std is not None for b in members) else None,
            capsize=4,
            color=[colors[b.label] for b in members],
            error_kw={"elinewidth": 1.2},
        )
        for xi, b, m, e in zip(x, members, means, errors):
            ax.text(xi, m + e, "n/a" if b.mean is None else f"{m:.1f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(x, [b.label for b in members], rotation=15, ha="right", fontsize=8)
        ax.set_title(family)
        ax.set_ylabel(f"{metric} (%)")
        ax.set_ylim(0, max([m + e for m, e in zip(means, errors)] + [1.0]) * 1.2)
        ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)

"""Plots of the statistics as PNG bytes (matplotlib).

Figures are built with `matplotlib.figure.Figure` directly, not pyplot: no global figure state,
no GUI backend, safe inside a Dask worker thread or a notebook. Each plot is skipped when there
is nothing to draw (an empty subset, a run without manifests).
"""
from __future__ import annotations

import io
from collections import Counter

import numpy as np
from matplotlib.figure import Figure

from .model import Histogram, StatsResult, SubsetStats
from .render import cell

DPI = 100


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def _share(h: Histogram) -> np.ndarray:
    total = h.total
    return np.asarray(h.counts, dtype=float) * (100.0 / total) if total else np.zeros(len(h.counts))


def _bin_labels(edges: list[float]) -> list[str]:
    e = [int(x) for x in edges]
    return [f"{a}–{b}" for a, b in zip(e, e[1:-1])] + [f"{e[-2]}+"]


def _line_histogram(rows: list[SubsetStats], name: str, xlabel: str, title: str) -> bytes | None:
    rows = [s for s in rows if s.histograms.get(name) and s.histograms[name].total]
    if not rows:
        return None
    fig = Figure(figsize=(7, 3.6), layout="constrained")
    ax = fig.subplots()
    for s in rows:
        h = s.histograms[name]
        ax.stairs(_share(h), h.edges, label=f"{cell('subset', s.subset)} ({h.total:,})", linewidth=1.6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("share of pairs (%)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return _png(fig)


def _sizes(rows: list[SubsetStats]) -> bytes | None:
    rows = [s for s in rows if s.histograms.get("width") and s.histograms["width"].total]
    if not rows:
        return None
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, name in zip(axes, ("width", "height")):
        edges = rows[0].histograms[name].edges
        x = np.arange(len(edges) - 1)
        w = 0.8 / len(rows)
        for i, s in enumerate(rows):
            ax.bar(x + (i - (len(rows) - 1) / 2) * w, _share(s.histograms[name]), width=w, label=cell("subset", s.subset))
        ax.set_xticks(x, _bin_labels(list(edges)), rotation=45, ha="right", fontsize="small")
        ax.set_xlabel(f"{name.upper()} (pixels)")
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_ylabel("share of pairs (%)")
    axes[0].legend(fontsize="small")
    fig.suptitle("Image sizes")
    return _png(fig)


def _top_bars(pairs: list[tuple[str, int]], title: str, xlabel: str) -> bytes:
    fig = Figure(figsize=(7, 0.6 + 0.28 * len(pairs)), layout="constrained")
    ax = fig.subplots()
    labels = [p[0] for p in pairs][::-1]
    ax.barh(labels, [p[1] for p in pairs][::-1])
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.tick_params(axis="y", labelsize="small")
    ax.grid(alpha=0.3, axis="x")
    return _png(fig)


def _funnel(result: StatsResult) -> bytes | None:
    stages = [f for f in result.funnel if f.kept or f.drops]
    if not stages:
        return None
    subsets = [s.subset for s in result.subsets]
    reasons: Counter = Counter()
    for f in stages:
        for subset_drops in f.drops.values():
            for r, n in subset_drops.items():
                reasons[f"{f.stage}: {r}"] += n
    fig = Figure(figsize=(12, max(3.6, 0.6 + 0.28 * len(reasons))), layout="constrained")
    ax_out, ax_drop = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1]})
    x = np.arange(len(stages))
    w = 0.8 / max(len(subsets), 1)
    for i, s in enumerate(subsets):
        ax_out.bar(x + (i - (len(subsets) - 1) / 2) * w, [f.kept.get(s, 0) for f in stages], width=w,
                   label=cell("subset", s))
    ax_out.set_xticks(x, [f.stage for f in stages])
    ax_out.set_ylabel("pairs out")
    ax_out.set_title("Pairs out of each stage")
    ax_out.legend(fontsize="small")
    ax_out.grid(alpha=0.3, axis="y")
    if reasons:
        items = reasons.most_common()[::-1]
        ax_drop.barh([k for k, _ in items], [v for _, v in items])
        ax_drop.set_xlabel("pairs dropped (all subsets)")
        ax_drop.tick_params(axis="y", labelsize="small")
        ax_drop.grid(alpha=0.3, axis="x")
    ax_drop.set_title("Drop reasons")
    return _png(fig)


def make_plots(result: StatsResult) -> dict[str, bytes]:
    """name -> PNG bytes, in the order the report shows them."""
    rows = result.subsets + result.others
    plots: dict[str, bytes | None] = {
        "similarity": _line_histogram(rows, "similarity", "image-text similarity (cosine)", "Similarity"),
        "text_length": _line_histogram(rows, "text_length", "TEXT length (characters)", "Text length"),
        "sizes": _sizes(rows),
    }
    for s in result.all_rows():
        if len(s.languages) > 1 and s.subset != "total":
            plots[f"languages_{s.subset}"] = _top_bars(s.languages, f"Top languages: {cell('subset', s.subset)}", "pairs")
    top = result.total or (result.subsets[0] if len(result.subsets) == 1 else None)
    if top is not None and top.domains:
        plots["domains"] = _top_bars(top.domains, f"Top domains: {cell('subset', top.subset)}", "pairs")
    plots["funnel"] = _funnel(result)
    return {k: v for k, v in plots.items() if v is not None}


PLOT_ORDER: tuple[str, ...] = ("similarity", "text_length", "sizes", "languages_", "domains", "funnel")
"""The order `make_plots` returns its plots in (prefixes), for re-reading them from `stats/plots/`."""


def plot_order(names: list[str], subsets: list[str] | None = None) -> list[str]:
    """`names` (saved plot names) in the order the report shows them: `make_plots`' order, the
    language plots in the order of `subsets` (the table's rows); unknown names last, by name."""
    position = {f"languages_{s}": i for i, s in enumerate(subsets or [])}

    def rank(name: str) -> tuple[int, int, str]:
        for i, p in enumerate(PLOT_ORDER):
            if name == p or (p.endswith("_") and name.startswith(p)):
                return i, position.get(name, len(position)), name
        return len(PLOT_ORDER), 0, name

    return sorted(names, key=rank)


def _ema(values: np.ndarray, span: int) -> np.ndarray:
    """Exponential moving average (the smoothing TensorBoard shows), bias-corrected at the start."""
    alpha = 2.0 / (span + 1)
    out = np.empty_like(values)
    acc, weight = 0.0, 0.0
    for i, v in enumerate(values):
        acc = (1 - alpha) * acc + alpha * v
        weight = (1 - alpha) * weight + alpha
        out[i] = acc / weight
    return out


def loss_curve(runs: dict[str, tuple[list[float], list[float]]]) -> bytes | None:
    """Training loss against step, one line per training run (name -> (steps, losses)): the
    logged values faint, their moving average on top when there are enough points to smooth.
    A log scale when the loss spans more than a factor of ten."""
    runs = {k: v for k, v in runs.items() if len(v[0])}
    if not runs:
        return None
    fig = Figure(figsize=(7, 3.6), layout="constrained")
    ax = fig.subplots()
    lows, highs = [], []
    for i, (name, (steps, losses)) in enumerate(runs.items()):
        x, y = np.asarray(steps, dtype=float), np.asarray(losses, dtype=float)
        colour = f"C{i % 10}"
        if len(y) >= 20:
            ax.plot(x, y, color=colour, alpha=0.3, linewidth=0.8)
            ax.plot(x, _ema(y, max(5, len(y) // 20)), color=colour, linewidth=1.8, label=f"{name} (smoothed)")
        else:
            ax.plot(x, y, color=colour, linewidth=1.6, marker="o", markersize=3, label=name)
        finite = y[np.isfinite(y)]
        if len(finite):
            lows.append(finite.min())
            highs.append(finite.max())
    if lows and min(lows) > 0 and max(highs) / min(lows) > 10:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return _png(fig)

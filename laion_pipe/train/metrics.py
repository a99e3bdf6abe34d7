"""metrics.jsonl (one JSON object per logged step) and the loss-curve plot.

A resumed run first cuts the log back to the checkpoint's step: lines a killed run wrote after
its last checkpoint describe steps that are trained again, and must not appear twice.
"""
from __future__ import annotations

import json
from pathlib import Path

from .. import fsio

METRICS = "metrics.jsonl"


def read_metrics(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line cut by a kill mid-write
            continue
    return rows


def truncate_metrics(path: str | Path, step: int) -> None:
    """Keep the lines of steps <= `step` (rewritten atomically)."""
    rows = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    fsio.write_bytes_atomic(str(path), "".join(json.dumps(r) + "\n" for r in rows).encode())


class MetricsLog:
    """Appends one line per logged step, flushed at once (the file is read while training runs)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")


def plot_loss(metrics_path: str | Path, out_png: str | Path) -> str | None:
    """loss.png: the logged loss per step (and its running mean when there are many points)."""
    rows = [r for r in read_metrics(metrics_path) if "loss" in r and "step" in r]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    steps = np.array([r["step"] for r in rows])
    loss = np.array([r["loss"] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, loss, lw=1, alpha=0.5 if len(rows) > 20 else 1.0, label="loss")
    if len(rows) > 20:
        k = max(5, len(rows) // 20)
        smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, lw=2, label=f"mean of {k}")
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    with fsio.atomic_open(str(out_png), "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return str(out_png)

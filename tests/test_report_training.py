"""`render_report`: the report re-rendered from what the stages saved, with a "Training and
evaluation" section exactly when `RUN/train/*/metrics.jsonl` or `RUN/eval/*/metrics.json` exist.

No Dask and no model here: the statistics are a hand-made `StatsResult` saved as the stats stage
saves it, the training log, metrics and grid are small files written the way the train and
evaluate stages write them (the shared interface of issue 12).
"""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_report_gallery import _Page

from laion_pipe import fsio
from laion_pipe.stats.model import Counts, FunnelStage, Histogram, StatsResult, SubsetStats
from laion_pipe.stats.plots import make_plots
from laion_pipe.stats.report import GRID_MAX_BYTES, GRID_MAX_WIDTH, embed_grid, render_report


def _result() -> StatsResult:
    sim = Histogram([0.0, 0.25, 0.5], [3, 4])
    rows = [
        SubsetStats("en", Counts(count=7), {"similarity": sim}, languages=[("en", 6), ("de", 1)]),
        SubsetStats("multi", Counts(count=5), {"similarity": sim}, languages=[("fr", 3), ("de", 2)]),
    ]
    other = SubsetStats("laion-high-resolution", Counts(count=2), {"similarity": sim}, languages=[("en", 1), ("fr", 1)])
    funnel = [FunnelStage("select", done=1, kept={"en": 7, "multi": 5}, drops={"en": {"low_similarity": 2}})]
    return StatsResult(source="run", subsets=rows, others=[other], funnel=funnel)


def _stats_run(root: Path) -> tuple[Path, list[str]]:
    """`stats/stats.json` and `stats/plots/*.png` as the stats stage writes them."""
    result = _result()
    fsio.write_json_atomic(str(root / "stats" / "stats.json"), result.to_dict())
    plots = make_plots(result)
    for name, png in plots.items():
        fsio.write_bytes_atomic(str(root / "stats" / "plots" / f"{name}.png"), png)
    return root, list(plots)


def _page(path: str) -> _Page:
    page = _Page()
    page.feed(Path(path).read_text(encoding="utf-8"))
    page.close()
    return page


def _image(uri: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def _write_training(root: Path) -> None:
    log = root / "train" / "demo-curated" / "metrics.jsonl"
    log.parent.mkdir(parents=True)
    lines = [json.dumps({"step": s, "loss": 1.0 / (1 + 0.1 * s), "lr": 1e-3, "samples_per_s": 60.0 + s % 3,
                         "data_wait_fraction": 0.05, "epoch": s // 20}) for s in range(0, 50, 2)]
    lines.insert(5, '{"step": 9, "loss": 0.5')  # half a line, as a crash leaves it
    lines.insert(7, '{"loss": 0.4}')  # no step
    log.write_text("\n".join(lines) + "\n")
    other = root / "train" / "demo-all" / "metrics.jsonl"
    other.parent.mkdir(parents=True)
    other.write_text("".join(json.dumps({"step": s, "loss": 1.2 - 0.01 * s}) + "\n" for s in (40, 0, 20)))


GRID = Image.fromarray(np.tile(np.arange(0, 240, 15, dtype=np.uint8), (48, 8)).reshape(48, 128, 1).repeat(3, axis=2))


def _write_eval(root: Path) -> bytes:
    folder = root / "eval" / "demo-curated"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({
        "clip_score": 0.2213, "retrieval_top1": 0.34375, "retrieval_chance": 0.03125, "fd_clip": 12.5,
        "fd_clip_interval": [10.25, 14.75], "kid_clip": 0.0125, "n_images": 128, "n_real": 64, "n_prompts": 32,
        "seeds": [0, 1, 2, 3],
        "sampler": "ddim", "steps": 25, "guidance_scale": 5.0, "model": "train/demo-curated/final"}))
    buf = io.BytesIO()
    GRID.save(buf, format="PNG")
    (folder / "grid.png").write_bytes(buf.getvalue())
    return buf.getvalue()


def test_no_training_outputs_no_section(tmp_path):
    root, plot_names = _stats_run(tmp_path / "run")
    path = render_report(str(root))
    assert path == fsio.join(str(root), "stats", "report.html")
    page = _page(path)
    assert "training" not in page.ids and "training-table" not in page.tables and "eval-table" not in page.tables
    assert "Training and evaluation" not in Path(path).read_text()
    assert "stats-table" in page.ids and len(page.loads) == len(plot_names)


def test_saved_plots_keep_the_stats_stage_order(tmp_path):
    root, plot_names = _stats_run(tmp_path / "run")
    assert plot_names.index("languages_multi") < plot_names.index("languages_laion-high-resolution")  # not by name
    html = Path(render_report(str(root))).read_text()
    positions = [html.index(f'alt="{name}"') for name in plot_names]
    assert positions == sorted(positions)


def test_training_and_evaluation_section(tmp_path):
    root, plot_names = _stats_run(tmp_path / "run")
    _write_training(root)
    grid_png = _write_eval(root)
    page = _page(render_report(str(root)))
    assert {"training", "training-table", "eval-table", "stats-table"} <= page.ids
    train = page.tables["training-table"]
    assert train[0][:4] == ["Training run", "Steps logged", "Last step", "Last loss"]
    # runs by name; steps sorted; the two bad lines skipped and said so
    assert train[1] == ["demo-all", "3", "40", "0.8000", "0.8000", "n/a", "n/a", "n/a"]
    assert train[2] == ["demo-curated", "25", "48", f"{1 / 5.8:.4f}", f"{1 / 5.8:.4f}", "61.0", "5.0%", "2"]
    html = (root / "stats" / "report.html").read_text()
    assert "train/demo-curated/metrics.jsonl: 2 unreadable line(s) skipped" in html
    ev = page.tables["eval-table"]
    assert ev[0] == ["Model", "CLIP score", "Retrieval top-1 (chance)", "FD-CLIP [95% interval]", "KID [95% interval]",
                     "Images: generated / real", "Prompts", "Sampler", "Steps", "Guidance", "Seeds"]
    # KID without an interval shows the value alone; the chance level sits next to retrieval
    assert ev[1] == ["demo-curated", "0.2213", "0.344 (0.031)", "12.5000 [10.2500, 14.7500]", "0.01250", "128 / 64",
                     "32", "ddim", "25", "5", "4 (0…3)"]
    assert "FD-CLIP: Fréchet distance" in html and "not FID" in html
    # the loss curve and the grid are embedded images: the grid as saved, pixel for pixel
    plots = {"data:image/png;base64," + base64.b64encode((root / "stats" / "plots" / f"{n}.png").read_bytes()).decode()
             for n in plot_names}
    extra = [src for src in page.loads if src not in plots]  # the loss curve, then the grid
    assert len(extra) == 2 and all(src.startswith("data:image/png;base64,") for src in extra)
    loss = _image(extra[0])
    assert loss.format == "PNG" and loss.width > 300
    assert base64.b64decode(extra[1].split(",", 1)[1]) == grid_png
    assert page.links and all(h.startswith("#") and h[1:] in page.ids for h in page.links)
    # evaluate reruns render_report: the same page again
    before = html
    render_report(str(root))
    assert (root / "stats" / "report.html").read_text() == before


def test_report_before_any_statistics(tmp_path):
    root = tmp_path / "run"
    _write_eval(root)
    page = _page(render_report(str(root)))
    assert "eval-table" in page.tables and "stats-table" not in page.ids
    assert "No statistics yet" in (root / "stats" / "report.html").read_text()


def test_broken_eval_metrics_are_a_note(tmp_path):
    root, _ = _stats_run(tmp_path / "run")
    (root / "eval" / "bad").mkdir(parents=True)
    (root / "eval" / "bad" / "metrics.json").write_text("{not json")
    html = Path(render_report(str(root))).read_text()
    assert "eval/bad/metrics.json unreadable" in html


def test_a_large_grid_is_re_encoded_smaller():
    rng = np.random.default_rng(0)
    big = Image.fromarray(rng.integers(0, 256, (900, 1800, 3), dtype=np.uint8))
    buf = io.BytesIO()
    big.save(buf, format="PNG", compress_level=1)
    assert len(buf.getvalue()) > GRID_MAX_BYTES
    uri = embed_grid(buf.getvalue())
    assert uri is not None and uri.startswith("data:image/jpeg;base64,")
    img = _image(uri)
    assert img.width == GRID_MAX_WIDTH and img.height == 640
    assert embed_grid(b"x" * (GRID_MAX_BYTES + 1)) is None


@pytest.mark.parametrize("metrics", [{"clip_score": None, "seeds": 7, "guidance": 3.5}, {}])
def test_missing_metrics_show_as_n_a(tmp_path, metrics):
    root, _ = _stats_run(tmp_path / "run")
    (root / "eval" / "m").mkdir(parents=True)
    (root / "eval" / "m" / "metrics.json").write_text(json.dumps(metrics))
    row = _page(render_report(str(root))).tables["eval-table"][1]
    assert row[0] == "m" and row[1] == "n/a"
    if metrics:
        assert row[9] == "3.5" and row[10] == "7"

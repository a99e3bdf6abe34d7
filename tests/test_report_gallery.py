"""The report's gallery: every pair it shows belongs to its group, and the report stays one small,
self-contained file.

The run is built cheaply and for real: download shards and scores written by hand (tests/shards.py,
the helpers of test_select), then the real select stage cuts the dataset and the real stats stage
(`laion_pipe.stages.stats.run`, which ends with the gallery) writes `stats/`. The checks then go
back to the stage's own outputs: a kept pair must be a row of its folder's parquet with the same
caption and scores, a removed pair must be one select's recipe codes drop for that very reason,
failing that bound and passing the ones checked before it, and its thumbnail must be its image.
"""
from __future__ import annotations

import base64
import io
import subprocess
import sys
import tarfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_select import read_dataset, run_all, write_scored

from laion_pipe.config import workflow_from_dict
from laion_pipe.pipeline import save_workflow
from laion_pipe.recipes import CHECK_ORDER, resolve_recipes, score_columns
from laion_pipe.stages import select
from laion_pipe.stages import stats as stats_stage
from laion_pipe.stats.gallery import (SCORE_REASONS, SCORES, Gallery, Group, Sample, build_gallery, load_gallery,
                                      thumbnail)
from laion_pipe.stats.report import render_html

SELECT = {
    "similarity": {"en": 0.3, "multi": 0.25, "nolang": 0.25},
    "max_punsafe": 0.5,
    "max_pwatermark": 0.8,
    "min_aesthetic": 5.0,
    "samples_per_shard": 4,  # several dataset shards per folder
    "recipes": {"strict-aesthetic": {"subsets": ["en"], "min_aesthetic": 6.0, "greater_than": ["aesthetic"]}},
}
PER_GROUP = 3
EVIL = "<img src=x onerror=alert(1)> a red <b>circle</b>"
COLOURS = ["red", "green", "blue", "yellow", "black", "white"]


def _rows(n: int, seed: int) -> list[dict]:
    """n pairs whose scores put them in every group: kept, and each score-based drop reason
    (some pairs fail several bounds: only the first counts), plus NaN scores."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        kind = i % 7
        r = {"text": f"pair {seed}-{i}: a {COLOURS[i % 6]} circle", "sim": float(rng.uniform(0.32, 0.45)),
             "punsafe": float(rng.uniform(0, 0.3)), "pwatermark": float(rng.uniform(0, 0.5)),
             "aesthetic": float(rng.uniform(5.2, 7.5)), "colour": COLOURS[i % 6]}
        if kind == 1:
            r["sim"] = float(rng.uniform(-0.1, 0.25))
            r["punsafe"] = 0.9  # fails two bounds: low_similarity comes first
        elif kind == 2:
            r["punsafe"] = float(rng.uniform(0.5, 1.0))
        elif kind == 3:
            r["pwatermark"] = float(rng.uniform(0.8, 1.0))
            r["aesthetic"] = 2.0  # fails two bounds: watermark comes first
        elif kind == 4:
            r["aesthetic"] = float(rng.uniform(2.0, 4.99))
        elif kind == 5 and i % 2:
            r["sim"] = float("nan")  # a missing score fails its bound
        rows.append(r)
    rows[0]["text"] = EVIL  # kind 0: kept, its caption must be shown as text
    return rows


def _wf(**stats):
    return workflow_from_dict({"runner": {"progress": False}, "select": SELECT, "stats": {"gallery": PER_GROUP, **stats}})


def _build(root: Path) -> Path:
    write_scored(root, "en", 0, _rows(21, 0))
    write_scored(root, "en", 1, _rows(14, 1))
    write_scored(root, "multi", 0, _rows(14, 2))
    run_all(root, _wf())
    save_workflow(str(root), _wf())
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory, dask_client) -> Path:
    root = _build(tmp_path_factory.mktemp("gallery") / "run")
    rep = stats_stage.run(str(root), _wf(), dask_client)
    assert (rep.done, rep.failed) == (1, [])
    return root


class _Page(HTMLParser):
    """Gallery figures (data attributes, thumbnail, caption, rule), every URL the page would load,
    every link, and the ids of sections."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: list[dict] = []
        self.loads: list[str] = []
        self.links: list[str] = []
        self.ids: set[str] = set()
        self.scripts = 0
        self.tables: dict[str, list[list[str]]] = {}
        self._fig: dict | None = None
        self._text: list[str] | None = None
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "figure":
            self._fig = {k[5:]: v for k, v in a.items() if k.startswith("data-")} | {"thumb": None, "cap": "", "rule": ""}
        elif tag == "img":
            self.loads.append(a.get("src", ""))
            if self._fig is not None:
                self._fig["thumb"] = a.get("src")
        elif tag == "div" and self._fig is not None and a.get("class") in ("cap", "rule"):
            self._text = []
            self._fig["_into"] = a["class"]
        elif tag in ("link", "script", "iframe", "source", "video", "audio", "object", "embed"):
            self.scripts += tag == "script"
            if a.get("src") or a.get("href") or a.get("data"):
                self.loads.append(a.get("src") or a.get("href") or a.get("data"))
        elif tag == "a":
            self.links.append(a.get("href", ""))
        elif tag == "table":
            self._table = a.get("id") or f"table-{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag == "div" and self._text is not None and self._fig is not None:
            self._fig[self._fig.pop("_into")] = "".join(self._text).strip()
            self._text = None
        elif tag == "figure" and self._fig is not None:
            self.figures.append(self._fig)
            self._fig = None
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def _page(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def _decode(uri: str) -> Image.Image:
    assert uri.startswith("data:image/"), uri[:40]
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")


def _tar_image(tar: Path, key: str) -> Image.Image:
    with tarfile.open(tar) as tf:
        name = next(n for n in tf.getnames() if n.split(".", 1)[0] == key and n.endswith((".jpg", ".png", ".webp")))
        return Image.open(io.BytesIO(tf.extractfile(name).read())).convert("RGB")


def _same_picture(thumb: Image.Image, original: Image.Image) -> bool:
    small = original.resize(thumb.size, Image.Resampling.BILINEAR)
    return float(np.abs(np.asarray(thumb, float) - np.asarray(small, float)).mean()) < 12


# --- the gallery's pairs belong to their groups ---------------------------------------------------


def test_kept_pairs_are_rows_of_their_folder(run):
    g = load_gallery(str(run))
    assert g is not None and [grp.name for grp in g.kept] == ["en", "multi", "strict-aesthetic"]
    for grp in g.kept:
        table, members = read_dataset(run, grp.name)
        rows = {r["key"]: r for r in table.to_pylist()}
        assert grp.candidates == len(rows) and grp.shards_total == len(list((run / "dataset" / grp.name).glob("*.parquet")))
        assert len(grp.samples) == PER_GROUP < len(rows)
        for s in grp.samples:
            row = rows[s.key]
            assert (s.caption, s.subset, s.width, s.height) == (row["TEXT"], row["subset"], row["WIDTH"], row["HEIGHT"])
            for name in ("similarity", "punsafe", "pwatermark", "aesthetic"):
                assert s.scores[name] == pytest.approx(row[name], abs=1e-6)
            assert s.source.startswith(f"dataset/{grp.name}/") and (run / s.source).is_file()
            assert _same_picture(_decode(s.thumb), _tar_image(run / s.source, s.key))


def test_removed_pairs_fail_their_bound_and_pass_the_earlier_ones(run):
    wf = _wf()
    recipes = {r.name: r for r in resolve_recipes(wf.select)}
    scored = {}
    for shard in select.input_shards(str(run)):
        table = select.scored_rows(shard)
        cols = score_columns(table)
        for i, key in enumerate(table.column("key").to_pylist()):
            scored[(shard.subset, key)] = ({k: v[i] for k, v in cols.items()}, table.slice(i, 1), shard)
    g = load_gallery(str(run))
    assert [grp.name for grp in g.removed] == list(SCORE_REASONS)
    for grp in g.removed:
        # every scored pair some recipe drops for this reason is a candidate, each once
        expected = set()
        for (subset, key), (_, row, shard) in scored.items():
            if any(subset in r.subsets and r.reasons(subset, score_columns(row))[0] == CHECK_ORDER.index(grp.name) + 1
                   for r in recipes.values()):
                expected.add((subset, key))
        assert grp.candidates == len(expected) > PER_GROUP, grp.name
        assert len(grp.samples) == PER_GROUP
        for s in grp.samples:
            assert (s.subset, s.key) in expected
            cols, row, shard = scored[(s.subset, s.key)]
            recipe = recipes[s.recipe]
            assert recipe.reasons(s.subset, score_columns(row))[0] == CHECK_ORDER.index(grp.name) + 1
            value = cols[s.score]
            assert s.score == SCORE_REASONS[grp.name]
            if s.score == "similarity":
                assert s.bound == dict(recipe.min_similarity)[s.subset]
                assert np.isnan(value) or value < s.bound
            elif s.score in ("punsafe", "pwatermark"):
                assert value >= s.bound
            else:
                assert value < s.bound or (s.strict and value <= s.bound)
            earlier = CHECK_ORDER[: CHECK_ORDER.index(grp.name)]
            if "low_similarity" in earlier:
                assert cols["similarity"] >= dict(recipe.min_similarity)[s.subset]
            if "unsafe" in earlier and recipe.max_punsafe is not None:
                assert cols["punsafe"] < recipe.max_punsafe
            if "watermark" in earlier and recipe.max_pwatermark is not None:
                assert cols["pwatermark"] < recipe.max_pwatermark
            # not in the folder of the recipe that removed it, and the thumbnail is its image
            kept_uids = set(read_dataset(run, s.recipe)[0].column("uid").to_pylist())
            assert row.column("uid")[0].as_py() not in kept_uids
            assert s.source == f"images/{s.subset}/{shard.shard}.tar"
            assert _same_picture(_decode(s.thumb), _tar_image(run / s.source, s.key))
    rules = [s.rule for grp in g.removed for s in grp.samples]
    assert any("<" in r for r in rules) and any("≥" in r for r in rules)


def test_report_shows_the_gallery_it_saved(run):
    g = load_gallery(str(run))
    page = _page(run / "stats" / "report.html")
    shown = [(f["group"], f["key"], f["subset"]) for f in page.figures]
    saved = [(f"{grp.kind}:{grp.name}", s.key, s.subset) for grp in g.groups() for s in grp.samples]
    assert shown == saved and len(shown) == PER_GROUP * (len(g.kept) + len(g.removed))
    by_key = {(f"{grp.kind}:{grp.name}", s.subset, s.key): s for grp in g.groups() for s in grp.samples}
    for f in page.figures:
        s = by_key[(f["group"], f["subset"], f["key"])]  # input keys repeat across subsets
        assert f["thumb"] == s.thumb and f["cap"] == s.caption and f["rule"] == s.rule
        assert f.get("recipe", "") == s.recipe
    assert {"gallery", "gallery-kept-en", "gallery-removed-unsafe"} <= page.ids


def test_gallery_is_deterministic_and_not_the_first_pairs(run):
    g1, g2 = build_gallery(str(run), _wf()), build_gallery(str(run), _wf())
    assert g1.to_dict() == g2.to_dict()
    en = next(grp for grp in g1.kept if grp.name == "en")
    first = sorted(read_dataset(run, "en")[0].column("key").to_pylist())[:PER_GROUP]
    assert sorted(s.key for s in en.samples) != first  # a spread sample, not the head of shard 0


# --- self-contained, small, escaped ---------------------------------------------------------------

THUMB_MAX_BYTES = 8 * 1024
"""The bound per embedded thumbnail (base64 data URI). Measured on the demo's report: 60
thumbnails of 96 px at JPEG quality 80 take 2.0 KB on average and 7.2 KB at most (a picture of
pure noise, the worst case for JPEG); these flat test pictures about 1 KB. So the gallery adds
well under 8 KB per shown pair plus a little markup: with the defaults (6 pairs for each of the
3 subsets, 4 presets and 4 drop reasons) about 0.1-0.5 MB, next to 0.3 MB of plots."""


def test_report_is_self_contained_small_and_escaped(run):
    html = (run / "stats" / "report.html").read_text(encoding="utf-8")
    page = _page(run / "stats" / "report.html")
    assert page.scripts == 0
    assert all(src.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for src in page.loads)
    assert all(href.startswith("#") and href[1:] in page.ids for href in page.links) and page.links
    assert "http://" not in html.replace("http://127.0.0.1/", "") and "url(" not in html and "@import" not in html
    thumbs = [f["thumb"] for f in page.figures]
    assert all(len(t) <= THUMB_MAX_BYTES for t in thumbs)
    assert all(max(_decode(t).size) <= 96 for t in thumbs)
    plots = sum(len(src) for src in page.loads) - sum(len(t) for t in thumbs)
    assert len(html.encode()) < plots + len(thumbs) * THUMB_MAX_BYTES + 64 * 1024


def test_captions_are_text_not_markup():
    smp = Sample(key="k", subset="en", caption=EVIL, scores=dict.fromkeys(SCORES, 0.5), width=64, height=64,
                 source="dataset/en/00000.tar", thumb=None, recipe="<b>r</b>", score="similarity", bound=0.6)
    g = Gallery(per_group=1, thumb_px=96, scan_shards=1, kept=[Group("kept", "<i>x</i>", [smp], 1, 1, 1)])
    html = render_html(None, {}, gallery=g)
    page = _Page()
    page.feed(html)
    assert page.scripts == 0 and page.loads == []  # no image: "image unreadable" is shown instead
    assert page.figures[0]["cap"] == EVIL and page.figures[0]["recipe"] == "<b>r</b>"
    assert "<img src=x" not in html and "<b>circle" not in html and "image unreadable" in html


def test_gallery_zero_leaves_it_out(tmp_path, dask_client):
    root = _build(tmp_path / "run")
    assert stats_stage.run(str(root), _wf(), dask_client).done == 1
    assert (root / "stats" / "gallery.json").is_file() and _page(root / "stats" / "report.html").figures
    assert stats_stage.run(str(root), _wf(gallery=0), dask_client).done == 1  # a stats setting: the stage reruns
    page = _page(root / "stats" / "report.html")
    assert not (root / "stats" / "gallery.json").exists()
    assert page.figures == [] and "gallery" not in page.ids and "stats-table" in page.ids


def test_unreadable_images_are_counted_not_fatal(tmp_path):
    root = _build(tmp_path / "run")
    for tar in (root / "dataset" / "en").glob("*.tar"):
        tar.write_bytes(b"not a tar at all" * 100)
    (root / "images" / "multi" / "00000.tar").write_bytes(b"\0" * 10)
    g = build_gallery(str(root), _wf())
    en = next(grp for grp in g.kept if grp.name == "en")
    assert len(en.samples) == PER_GROUP and all(s.thumb is None for s in en.samples)
    assert g.skipped.get("missing_image", 0) + g.skipped.get("unreadable_shard", 0) >= PER_GROUP
    assert thumbnail(b"GIF89a broken", 96) is None


# --- the command a user runs ----------------------------------------------------------------------


@pytest.mark.slow
def test_stats_command_writes_the_gallery_with_the_runs_thresholds(tmp_path):
    root = _build(tmp_path / "run")
    r = subprocess.run([sys.executable, "-m", "laion_pipe", "stats", str(root)], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    g = load_gallery(str(root))
    low = next(grp for grp in g.removed if grp.name == "low_similarity")
    assert {s.bound for s in low.samples if s.recipe in ("en", "multi")} <= {0.3, 0.25}  # the saved workflow's
    unsafe = next(grp for grp in g.removed if grp.name == "unsafe")
    assert unsafe.samples and all(s.bound == 0.5 for s in unsafe.samples)
    assert len(_page(root / "stats" / "report.html").figures) == PER_GROUP * (len(g.kept) + len(g.removed))

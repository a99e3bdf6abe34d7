"""One self-contained `report.html`: the tables and the plots (base64 PNG), the gallery of kept
and removed pairs (base64 JPEG thumbnails) and, once a model was trained and evaluated, its loss
curve, metrics and grid of generated images, in a single file with inline CSS and no script,
font or image from the network, so it opens anywhere, offline.

The template autoescapes, so URLs, domains, captions and labels from crawled data cannot inject
markup.

`render_report(out)` re-renders `RUN/stats/report.html` from what the stages saved (`stats.json`,
`plots/*.png`, `gallery.json`, `RUN/train/*/metrics.jsonl`, `RUN/eval/*/metrics.json` and
`grid.png`), so the stats stage and the evaluate stage produce the same page without recomputing
any statistic.
"""
from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass, field
from typing import Any

import jinja2
import orjson
from PIL import Image

from .. import __version__, fsio
from ..schema import STAGE_DIRS
from .gallery import SCORE_REASONS, SCORES, Gallery, load_gallery, write_gallery
from .model import TABLE_KEYS, StatsResult
from .render import FUNNEL_HEADERS, HEADERS, cell, definitions, display_rows, funnel_rows, funnel_status

TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Dataset statistics: {{ source }}</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       color: #1a1a1a; background: #ffffff; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; }
th { background: #eef2f7; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: bold; background: #f7f7f7; }
ul.defs { color: #444; font-size: 0.9em; }
.plot { margin: 1em 0; } .plot img { max-width: 100%; border: 1px solid #eee; }
.tops { display: flex; flex-wrap: wrap; gap: 2em; align-items: flex-start; }
.note { color: #8a5a00; }
nav { font-size: 0.92em; } nav a { margin-right: 1em; }
p.meta { color: #555; font-size: 0.88em; margin: 0.2em 0 0.6em; }
h3 { font-size: 1.05em; margin: 1.4em 0 0.2em; }
.gallery { display: flex; flex-wrap: wrap; gap: 0.9em; }
figure.pair { margin: 0; width: 160px; font-size: 0.78em; }
figure.pair .thumb { width: 160px; height: 112px; display: flex; align-items: center; justify-content: center;
                     background: #f3f4f6; border: 1px solid #e3e3e3; }
figure.pair .thumb img { max-width: 100%; max-height: 100%; }
figure.pair .noimg { color: #888; }
figure.pair .cap { margin: 0.3em 0 0.2em; overflow: hidden; display: -webkit-box; -webkit-line-clamp: 3;
                   -webkit-box-orient: vertical; }
dl.sc { display: grid; grid-template-columns: auto 1fr; column-gap: 0.6em; margin: 0; color: #444;
        font-variant-numeric: tabular-nums; }
dl.sc dt { color: #777; } dl.sc dd { margin: 0; text-align: right; }
dl.sc .hit { color: #b00020; font-weight: 600; }
.rule { color: #b00020; font-weight: 600; margin-top: 0.2em; }
.origin { color: #777; }
.grid img { max-width: 100%; border: 1px solid #eee; image-rendering: pixelated; }
</style>
</head>
<body>
<h1>Dataset statistics</h1>
<p>{% if has_stats %}Source: <code>{{ source }}</code> &middot; {% endif %}laion_pipe {{ version }}</p>
{% if gallery or training or evals or training_notes %}<nav>{% if has_stats %}<a href="#stats-table">Table</a>{% endif %}
{%- if funnel %}<a href="#funnel">Funnel</a>{% endif %}
{%- if gallery %}<a href="#gallery">Gallery</a>{% endif %}
{%- if training or evals or training_notes %}<a href="#training">Training and evaluation</a>{% endif %}
{%- if plots %}<a href="#plots">Plots</a>{% endif %}</nav>{% endif %}
{% if has_stats %}
<h2>Pairs per subset</h2>
<table id="stats-table">
<thead><tr>{% for h in headers %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in main_rows %}<tr{% if row.total %} class="total"{% endif %}>{% for c in row.cells %}<td{% if not loop.first %} class="num"{% endif %}>{{ c }}</td>{% endfor %}</tr>
{% endfor %}</tbody>
</table>
<ul class="defs">{% for d in definitions %}<li>{{ d }}</li>{% endfor %}</ul>

{% if other_rows %}
<h2>Other selections (not in the total)</h2>
<table id="others-table">
<thead><tr>{% for h in headers %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in other_rows %}<tr>{% for c in row %}<td{% if not loop.first %} class="num"{% endif %}>{{ c }}</td>{% endfor %}</tr>
{% endfor %}</tbody>
</table>
{% endif %}

{% if funnel %}
<h2 id="funnel">Funnel</h2>
<p>Pairs in = pairs out + pairs dropped with a reason, per stage and subset;
"(before subset)" counts pairs dropped before their language was known.</p>
<table id="funnel-table">
<thead><tr>{% for h in funnel_headers %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in funnel %}<tr>{% for c in row %}<td{% if 2 <= loop.index0 <= 4 %} class="num"{% endif %}>{{ c }}</td>{% endfor %}</tr>
{% endfor %}</tbody>
</table>
{% for line in funnel_status %}<p class="note">{{ line }}</p>{% endfor %}
{% endif %}
{% else %}
<p class="note">No statistics yet: run <code>laion-pipe stats</code> on this run directory.</p>
{% endif %}

{% if gallery %}
<h2 id="gallery">Gallery</h2>
<p>What the filters kept and what they removed: up to {{ gallery.per_group }} pairs per group, a fixed sample
(a seeded hash of each key) from up to {{ gallery.scan }} shards of the group. A removed pair is shown under the
first bound it failed, in select's order (similarity, size, punsafe, pwatermark, aesthetic), with the recipe
whose bound removed it; the score that removed it is in red.</p>
<p class="meta">{% for g in gallery.groups %}<a href="#{{ g.anchor }}">{{ g.title }}</a>{% if not loop.last %} &middot; {% endif %}{% endfor %}</p>
{% for line in gallery.skipped %}<p class="note">{{ line }}</p>{% endfor %}
{% for g in gallery.groups %}
<h3 id="{{ g.anchor }}">{{ g.title }}</h3>
{% if g.meta %}<p class="meta">{{ g.meta }}</p>{% endif %}
{% if g.note %}<p class="note">{{ g.note }}</p>{% endif %}
{% if g.samples %}<div class="gallery">
{% for p in g.samples %}<figure class="pair" data-group="{{ g.kind }}:{{ g.name }}" data-key="{{ p.key }}" data-subset="{{ p.subset }}"{% if p.recipe %} data-recipe="{{ p.recipe }}"{% endif %}>
<div class="thumb">{% if p.thumb %}<img src="{{ p.thumb }}" alt="{{ p.alt }}" title="{{ p.caption }}">{% else %}<span class="noimg">image unreadable</span>{% endif %}</div>
<figcaption><div class="cap" title="{{ p.caption }}">{{ p.caption }}</div>
<dl class="sc">{% for name, value, hit in p.scores %}<dt{% if hit %} class="hit"{% endif %}>{{ name }}</dt><dd{% if hit %} class="hit"{% endif %}>{{ value }}</dd>{% endfor %}</dl>
{% if p.rule %}<div class="rule">{{ p.rule }}</div>{% endif %}
<div class="origin">{{ p.origin }}</div></figcaption></figure>
{% endfor %}</div>{% endif %}
{% endfor %}
{% endif %}

{% if training or evals or training_notes %}
<h2 id="training">Training and evaluation</h2>
{% for line in training_notes %}<p class="note">{{ line }}</p>{% endfor %}
{% if training %}
<table id="training-table">
<thead><tr>{% for h in training_headers %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in training %}<tr>{% for c in row %}<td{% if not loop.first %} class="num"{% endif %}>{{ c }}</td>{% endfor %}</tr>
{% endfor %}</tbody>
</table>
{% if loss_plot %}<div class="plot"><img alt="training loss" src="{{ loss_plot }}"></div>{% endif %}
{% endif %}
{% if evals %}
<table id="eval-table">
<thead><tr>{% for h in eval_headers %}<th>{{ h }}</th>{% endfor %}</tr></thead>
<tbody>
{% for e in evals %}<tr>{% for c in e.cells %}<td{% if not loop.first and loop.index0 < 5 %} class="num"{% endif %}>{{ c }}</td>{% endfor %}</tr>
{% endfor %}</tbody>
</table>
<ul class="defs">{% for d in eval_definitions %}<li>{{ d }}</li>{% endfor %}</ul>
{% for e in evals %}{% if e.grid %}<h3>Generated images: {{ e.name }}</h3>
<p class="meta">{{ e.meta }}</p>
<div class="grid"><img alt="generated images of {{ e.name }} with their prompts" src="{{ e.grid }}"></div>
{% endif %}{% endfor %}
{% endif %}
{% endif %}

{% if tops %}
<h2>Top languages and domains</h2>
<div class="tops">
{% for t in tops %}<table>
<caption>{{ t.title }}</caption>
<thead><tr><th>{{ t.what }}</th><th>Pairs</th></tr></thead>
<tbody>{% for name, n in t.entries %}<tr><td>{{ name }}</td><td class="num">{{ n }}</td></tr>{% endfor %}</tbody>
</table>
{% endfor %}</div>
{% endif %}

{% if plots %}
<h2 id="plots">Plots</h2>
{% for name, src in plots %}<div class="plot"><img alt="{{ name }}" src="{{ src }}"></div>
{% endfor %}
{% endif %}

</body>
</html>
"""

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)


def data_uri(png: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(png).decode("ascii")


# --- gallery view ---------------------------------------------------------------------------------

REASON_TITLES = {
    "low_similarity": "Removed: low similarity",
    "unsafe": "Removed: unsafe (punsafe)",
    "watermark": "Removed: watermark (pwatermark)",
    "low_aesthetic": "Removed: low aesthetic score",
}


def _score(name: str, v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.2f}" if name == "aesthetic" else f"{v:.3f}"


def _gallery_view(g: Gallery) -> dict:
    """The gallery as the template shows it: titles, counts, formatted scores, the failed rule."""
    groups = []
    for grp in g.groups():
        if grp.kind == "kept":
            title = f"Kept: {cell('subset', grp.name)}"
            what = "pairs of the folder"
        else:
            title = REASON_TITLES.get(grp.name, f"Removed: {grp.name}")
            what = "pairs it removed"
        meta = "" if grp.note and not grp.samples else (
            f"{len(grp.samples)} shown of {grp.candidates:,} {what} · {grp.shards_scanned:,} of "
            f"{grp.shards_total:,} shards read")
        samples = []
        for smp in grp.samples:
            hit = SCORE_REASONS.get(grp.name) if grp.kind == "removed" else None
            size = f"{smp.width}×{smp.height}" if smp.width and smp.height else ""
            origin = " · ".join(x for x in (cell("subset", smp.subset), smp.key, size) if x)
            if smp.recipe:
                origin = f"{origin} · by {smp.recipe}"
            samples.append({
                "key": smp.key, "subset": smp.subset, "recipe": smp.recipe, "thumb": smp.thumb,
                "caption": smp.caption, "alt": smp.caption[:120],
                "scores": [(k, _score(k, smp.scores.get(k)), k == hit) for k in SCORES],
                "rule": smp.rule, "origin": origin,
            })
        groups.append({"kind": grp.kind, "name": grp.name, "anchor": f"gallery-{grp.kind}-{grp.name}",
                       "title": title, "meta": meta, "note": grp.note, "samples": samples})
    skipped = [f"{n:,} {what.replace('_', ' ')} skipped" for what, n in g.skipped.items()]
    return {"per_group": g.per_group, "scan": g.scan_shards, "groups": groups, "skipped": skipped}


# --- training and evaluation ----------------------------------------------------------------------

TRAIN_DIR, EVAL_DIR = "train", "eval"
"""`RUN/train/{name}/` (the train stage) and `RUN/eval/{model}/` (the evaluate stage)."""

TRAINING_HEADERS = ["Training run", "Steps logged", "Last step", "Last loss", "Min loss", "Samples/s (mean)",
                    "Data wait (mean)", "Epoch"]
EVAL_HEADERS = ["Model", "CLIP score", "Retrieval top-1 (chance)", "FD-CLIP [95% interval]", "KID [95% interval]",
                "Images: generated / real", "Prompts", "Sampler", "Steps", "Guidance", "Seeds"]
EVAL_DEFINITIONS = [
    "CLIP score: mean cosine similarity between each generated image and its prompt, with the run's scoring CLIP "
    "(higher is better).",
    "Retrieval top-1: share of generated images whose own prompt the CLIP ranks first among all evaluation prompts "
    "(higher is better); chance: what a model ignoring its prompt gets at best, the most frequent prompt's share.",
    "FD-CLIP: Fréchet distance between the CLIP image embeddings of generated and held-out real images "
    "(lower is better; not FID, which uses Inception features); biased upwards when there are fewer images than "
    "embedding dimensions, so compare it only at equal counts, with its bootstrap interval.",
    "KID: unbiased squared MMD (cubic polynomial kernel) between the same embeddings; about 0 when both sets come "
    "from one distribution, at any sample size.",
]
GRID_MAX_BYTES = 768 * 1024
"""An evaluation grid above this is re-encoded (JPEG, at most GRID_MAX_WIDTH wide) before embedding:
a 512-px model's grid would otherwise make the report tens of megabytes."""
GRID_MAX_WIDTH = 1280


@dataclass
class TrainLog:
    """`RUN/train/{name}/metrics.jsonl`: one JSON object per logged step."""

    name: str
    points: list[dict] = field(default_factory=list)
    bad_lines: int = 0

    def series(self) -> tuple[list[float], list[float]]:
        pts = [p for p in self.points if _num(p.get("loss")) is not None]
        return [float(p["step"]) for p in pts], [float(p["loss"]) for p in pts]

    def cells(self) -> list[str]:
        def mean(k: str) -> float | None:
            v = [x for x in (_num(p.get(k)) for p in self.points) if x is not None]
            return sum(v) / len(v) if v else None

        steps, losses = self.series()
        last = self.points[-1] if self.points else {}
        wait = mean("data_wait_fraction")
        return [
            self.name,
            f"{len(self.points):,}",
            _fmt(last.get("step"), "{:,.0f}"),
            _fmt(losses[-1] if losses else None, "{:.4f}"),
            _fmt(min(losses) if losses else None, "{:.4f}"),
            _fmt(mean("samples_per_s"), "{:,.1f}"),
            "n/a" if wait is None else f"{100 * wait:.1f}%",
            _fmt(last.get("epoch"), "{}"),
        ]


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return None if math.isnan(v) or math.isinf(v) else float(v)


def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    try:
        return spec.format(v)
    except (ValueError, TypeError):
        return str(v)


def _subdirs_with(out: str, top: str, name: str) -> list[tuple[str, str]]:
    """(folder name, path) of every `RUN/{top}/*/{name}`, by folder name."""
    found = []
    for path in fsio.glob(fsio.join(out, top, "*", name)):
        found.append((path.rpartition("/")[0].rpartition("/")[2], path))
    return sorted(found)


def read_training(out: str) -> list[TrainLog]:
    """Every training run's logged steps; lines that are not a JSON object with a numeric step
    are counted, not fatal (a log cut by a crash ends in half a line)."""
    logs = []
    for name, path in _subdirs_with(out, TRAIN_DIR, "metrics.jsonl"):
        log = TrainLog(name)
        fs, p = fsio.fs_and_path(path)
        with fs.open(p, "rb") as f:
            for line in f.read().splitlines():
                if not line.strip():
                    continue
                try:
                    obj = orjson.loads(line)
                except orjson.JSONDecodeError:
                    log.bad_lines += 1
                    continue
                if isinstance(obj, dict) and _num(obj.get("step")) is not None:
                    log.points.append(obj)
                else:
                    log.bad_lines += 1
        log.points.sort(key=lambda o: o["step"])
        logs.append(log)
    return logs


def embed_grid(data: bytes) -> str | None:
    """An evaluation grid as a data URI: as saved when small, else re-encoded smaller."""
    if len(data) <= GRID_MAX_BYTES:
        return data_uri(data)
    try:
        with Image.open(io.BytesIO(data)) as im:
            rgb = im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    if rgb.width > GRID_MAX_WIDTH:
        rgb = rgb.resize((GRID_MAX_WIDTH, max(1, round(rgb.height * GRID_MAX_WIDTH / rgb.width))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=85, optimize=True)
    return data_uri(buf.getvalue(), "image/jpeg")


def read_evals(out: str) -> tuple[list[dict], list[str]]:
    """Every evaluated model's metrics row and grid; unreadable files give a note, not an error."""
    evals, notes = [], []
    for name, path in _subdirs_with(out, EVAL_DIR, "metrics.json"):
        try:
            m = fsio.read_json(path)
        except (OSError, orjson.JSONDecodeError) as e:
            notes.append(f"eval/{name}/metrics.json unreadable: {e}")
            continue
        if not isinstance(m, dict):
            notes.append(f"eval/{name}/metrics.json is not a JSON object")
            continue
        grid_path = fsio.join(path.rpartition("/")[0], "grid.png")
        grid = None
        if fsio.exists(grid_path):
            fs, p = fsio.fs_and_path(grid_path)
            with fs.open(p, "rb") as f:
                grid = embed_grid(f.read())
        seeds = m.get("seeds")
        seeds_text = (f"{len(seeds)} ({seeds[0]}…{seeds[-1]})" if isinstance(seeds, list) and len(seeds) > 1
                      else _fmt(seeds[0] if isinstance(seeds, list) and seeds else seeds, "{}"))
        guidance = m.get("guidance_scale", m.get("guidance"))
        chance = _num(m.get("retrieval_chance"))
        retrieval = _fmt(_num(m.get("retrieval_top1")), "{:.3f}") + (f" ({chance:.3f})" if chance is not None else "")
        cells = [name, _fmt(_num(m.get("clip_score")), "{:.4f}"), retrieval,
                 _with_interval(m, "fd_clip", "{:.4f}"), _with_interval(m, "kid_clip", "{:.5f}"),
                 f"{_fmt(m.get('n_images'), '{:,}')} / {_fmt(m.get('n_real'), '{:,}')}",
                 _fmt(m.get("n_prompts"), "{:,}"), _fmt(m.get("sampler"), "{}"),
                 _fmt(m.get("steps"), "{}"), _fmt(guidance, "{:g}"), seeds_text]
        model = m.get("model") or m.get("model_path") or ""
        meta = f"model {model}" if model else ""
        evals.append({"name": name, "cells": cells, "grid": grid, "meta": meta})
        if m.get("training_data_note"):
            notes.append(f"eval/{name}: {m['training_data_note']}")
    return evals, notes


def _with_interval(m: dict, key: str, fmt: str) -> str:
    value, interval = _num(m.get(key)), m.get(f"{key}_interval")
    text = _fmt(value, fmt)
    if value is not None and isinstance(interval, list) and len(interval) == 2:
        text += " [" + ", ".join(fmt.format(v) for v in interval) + "]"
    return text


# --- the page -------------------------------------------------------------------------------------


def render_html(result: StatsResult | None, plots: dict[str, bytes], *, gallery: Gallery | None = None,
                training: list[TrainLog] | None = None, evals: list[dict] | None = None,
                notes: list[str] | None = None) -> str:
    """The report as one HTML string: tables, definitions, funnel, gallery, top lists, embedded
    plots and, when given, the training and evaluation section."""
    training = training or []
    ctx: dict[str, Any] = {
        "version": __version__, "has_stats": result is not None, "plots": [(n, data_uri(png)) for n, png in plots.items()],
        "gallery": _gallery_view(gallery) if gallery is not None else None,
        "training": [t.cells() for t in training], "training_headers": TRAINING_HEADERS,
        "training_notes": [f"train/{t.name}/metrics.jsonl: {t.bad_lines} unreadable line(s) skipped"
                           for t in training if t.bad_lines] + list(notes or []),
        "evals": evals or [], "eval_headers": EVAL_HEADERS, "eval_definitions": EVAL_DEFINITIONS,
        "loss_plot": None,
        "source": "", "headers": [], "main_rows": [], "other_rows": [], "definitions": [], "funnel": [],
        "funnel_headers": FUNNEL_HEADERS, "funnel_status": [], "tops": [],
    }
    if training:
        from .plots import loss_curve

        png = loss_curve({t.name: t.series() for t in training})
        ctx["loss_plot"] = data_uri(png) if png else None
    if result is not None:
        main = result.main_rows()
        tops = []
        for s in result.all_rows():
            label = display_rows([s])[0][0]
            if s.languages:
                tops.append({"title": f"Top languages: {label}", "what": "Language",
                             "entries": [(k, f"{n:,}") for k, n in s.languages]})
        for s in result.all_rows():
            label = display_rows([s])[0][0]
            if s.domains:
                tops.append({"title": f"Top domains: {label}", "what": "Domain",
                             "entries": [(k, f"{n:,}") for k, n in s.domains]})
        ctx.update(
            source=result.source,
            headers=[HEADERS[k] for k in TABLE_KEYS],
            main_rows=[{"cells": cells, "total": s is result.total} for s, cells in zip(main, display_rows(main))],
            other_rows=display_rows(result.others),
            definitions=definitions(result),
            funnel=funnel_rows(result.funnel),
            funnel_status=funnel_status(result.funnel),
            tops=tops,
        )
    return _ENV.from_string(TEMPLATE).render(**ctx)


def _saved_plots(stats_dir: str, result: StatsResult | None) -> dict[str, bytes]:
    """The PNGs the stats stage saved under `stats/plots/`, in the report's order."""
    from .plots import plot_order

    paths = {p.rpartition("/")[2][: -len(".png")]: p for p in fsio.glob(fsio.join(stats_dir, "plots", "*.png"))}
    subsets = [s.subset for s in result.all_rows()] if result is not None else []
    out = {}
    for name in plot_order(list(paths), subsets):
        fs, p = fsio.fs_and_path(paths[name])
        with fs.open(p, "rb") as f:
            out[name] = f.read()
    return out


def render_report(out: str) -> str:
    """Re-render `RUN/stats/report.html` from what the stages saved: the statistics
    (`stats/stats.json`, `stats/plots/`), the gallery (`stats/gallery.json`) and whatever
    `RUN/train/*/metrics.jsonl`, `RUN/eval/*/metrics.json` and `grid.png` exist. Recomputes no
    statistic, so any stage that adds outputs (evaluate) can call it; returns the report's path."""
    stats_dir = fsio.join(out, STAGE_DIRS["stats"])
    stats_json = fsio.join(stats_dir, "stats.json")
    result = StatsResult.from_dict(fsio.read_json(stats_json)) if fsio.exists(stats_json) else None  # type: ignore[arg-type]
    evals, notes = read_evals(out)
    html = render_html(result, _saved_plots(stats_dir, result), gallery=load_gallery(out), training=read_training(out),
                       evals=evals, notes=notes)
    path = fsio.join(stats_dir, "report.html")
    fsio.write_bytes_atomic(path, html.encode())
    return path


def finish_report(out: str, wf: Any) -> list[str]:
    """The stats stage's last step: write the gallery (`stats/gallery.json`, or remove it when
    `stats.gallery` is 0) and re-render report.html with it and any training/evaluation outputs.
    Returns the files written besides report.html, relative to `stats/`."""
    written = write_gallery(out, wf)
    render_report(out)
    return written

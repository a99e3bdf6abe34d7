"""One self-contained `report.html`: the tables and the plots (base64 PNG) in a single file, with
inline CSS and no script, font or image from the network, so it opens anywhere, offline.

The template autoescapes, so URLs, domains and labels from crawled data cannot inject markup.
"""
from __future__ import annotations

import base64

import jinja2

from .. import __version__
from .model import TABLE_KEYS, StatsResult
from .render import FUNNEL_HEADERS, HEADERS, definitions, display_rows, funnel_rows, funnel_status

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
</style>
</head>
<body>
<h1>Dataset statistics</h1>
<p>Source: <code>{{ source }}</code> &middot; laion_pipe {{ version }}</p>

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
<h2>Funnel</h2>
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
<h2>Plots</h2>
{% for name, src in plots %}<div class="plot"><img alt="{{ name }}" src="{{ src }}"></div>
{% endfor %}
{% endif %}
</body>
</html>
"""

_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_html(result: StatsResult, plots: dict[str, bytes]) -> str:
    """The report as one HTML string (tables, definitions, funnel, top lists, embedded plots)."""
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
    return _ENV.from_string(TEMPLATE).render(
        source=result.source,
        version=__version__,
        headers=[HEADERS[k] for k in TABLE_KEYS],
        main_rows=[{"cells": cells, "total": s is result.total} for s, cells in zip(main, display_rows(main))],
        other_rows=display_rows(result.others),
        definitions=definitions(result),
        funnel=funnel_rows(result.funnel),
        funnel_headers=FUNNEL_HEADERS,
        funnel_status=funnel_status(result.funnel),
        tops=tops,
        plots=[(name, data_uri(png)) for name, png in plots.items()],
    )

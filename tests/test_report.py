"""report.html: one self-contained file that holds every table value, the funnel and the plots.

Read back with an HTML parser (not string search), so a value only counts when it is in a cell
of the right table. When Debian's chromium is installed the page is also rendered headless and
the screenshot must not be blank.
"""
from __future__ import annotations

import base64
import io
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from laion_pipe.config.stats import StatsConfig
from laion_pipe.stages.stats import write_outputs
from laion_pipe.stats import compute
from laion_pipe.stats.model import Counts, StatsResult, SubsetStats
from laion_pipe.stats.report import render_html
from test_stats import DISPLAYED, build_run


class _Page(HTMLParser):
    """Collects the rows of every table (by id), the text of list items, and every URL the page
    would load (img src, link href, script src)."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.bullets: list[str] = []
        self.loads: list[str] = []
        self.scripts = 0
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._li: list[str] | None = None
        self._anon = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._anon += 1
            self._table = a.get("id") or f"table-{self._anon}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "li":
            self._li = []
        elif tag == "img":
            self.loads.append(a.get("src", ""))
        elif tag in ("link", "script", "iframe", "source", "video", "audio"):
            self.scripts += tag == "script"
            if a.get("src") or a.get("href"):
                self.loads.append(a.get("src") or a.get("href"))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "li" and self._li is not None:
            self.bullets.append("".join(self._li).strip())
            self._li = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._li is not None:
            self._li.append(data)


@pytest.fixture(scope="module")
def report(tmp_path_factory, dask_client) -> Path:
    run = build_run(tmp_path_factory.mktemp("report") / "run")
    result = compute(str(run), StatsConfig(), dask_client)
    out = run / "stats"
    write_outputs(result, str(out), StatsConfig())
    return out / "report.html"


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    return page


def test_report_holds_every_table_value(report):
    page = _parse(report)
    main = page.tables["stats-table"]
    assert main[0] == ["Subset", "Pairs", "W,H ≥ 256", "W,H ≥ 512", "W,H ≥ 1024", "% NSFW", "% watermark",
                       "Avg text length"]
    assert main[1:] == [DISPLAYED[s] for s in ("en", "multi", "nolang", "total")]
    assert page.tables["others-table"][1:] == [DISPLAYED["laion2B-en"]]
    defs = " ".join(page.bullets)
    assert "WIDTH >= n and HEIGHT >= n" in defs and "punsafe > 0.5" in defs and "pwatermark > 0.8" in defs


def test_report_holds_funnel_and_top_lists(report):
    page = _parse(report)
    funnel = page.tables["funnel-table"]
    assert ["extract", "(before subset)", "7", "n/a", "7", "no_alt 5, bad_url 2"] in funnel
    assert ["select", "EN", "9", "5", "4", "low_similarity 3, unsafe 1"] in funnel
    tops = [rows for name, rows in page.tables.items() if name.startswith("table-")]
    assert [["Language", "Pairs"], ["de", "2"], ["fr", "1"]] in tops
    assert any(rows[1] == ["example.com", "4"] for rows in tops)  # top domain of the total


def test_report_is_self_contained(report):
    page = _parse(report)
    assert page.scripts == 0
    assert len(page.loads) == 6  # the six plots, all embedded
    for src in page.loads:
        assert src.startswith("data:image/png;base64,"), src[:60]
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert img.format == "PNG" and img.width > 200 and img.height > 100
    html = report.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html and "url(" not in html and "@import" not in html


def test_crawled_text_is_escaped():
    evil = SubsetStats(subset="<script>alert(1)</script>", counts=Counts(count=1), domains=[("<b>x</b>", 1)])
    html = render_html(StatsResult(source="<img src=x>", subsets=[evil]), {})
    page = _Page()
    page.feed(html)
    assert page.scripts == 0 and page.loads == []
    assert page.tables["stats-table"][1][0] == "<script>alert(1)</script>"  # shown as text


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.slow
@pytest.mark.skipif(_chromium() is None, reason="Debian's chromium is not installed")
def test_report_renders_in_headless_chromium(report, tmp_path):
    shot = tmp_path / "shot.png"
    subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1200,1600",
         f"--screenshot={shot}", report.as_uri()],
        check=True, timeout=120, capture_output=True,
    )
    img = Image.open(shot).convert("L")
    lo, hi = img.getextrema()
    assert hi - lo > 100  # text and plots on the white page, not a blank render
    dark = sum(img.histogram()[:128])
    assert dark > 0.002 * img.width * img.height

"""The table as text: Markdown, CSV, a rich terminal table, and the definitions stated under it.

Every renderer formats values through `cell`, so the terminal, the Markdown file, the report and
the notebook show the very same strings (and a test can look each one up in the report).
"""
from __future__ import annotations

import csv
import io

from rich.console import Console
from rich.table import Table

from ..schema import ANY_SUBSET
from .model import TABLE_KEYS, FunnelStage, StatsResult, SubsetStats

HEADERS: dict[str, str] = {
    "subset": "Subset",
    "count": "Pairs",
    "gt256": "W,H ≥ 256",
    "gt512": "W,H ≥ 512",
    "gt1024": "W,H ≥ 1024",
    "nsfw_pct": "% NSFW",
    "watermark_pct": "% watermark",
    "avg_text_len": "Avg text length",
}
NA = "n/a"


def cell(key: str, value) -> str:
    """One table value as displayed: integers with thousands separators, percentages and the
    average length with two decimals, a missing score as "n/a"."""
    if value is None:
        return NA
    if key == "subset":
        return str(value).upper() if str(value) in ("en", "multi", "nolang", "total") else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.2f}"


def display_rows(rows: list[SubsetStats]) -> list[list[str]]:
    """The displayed cells of each row, formatted from the unrounded values."""
    return [[cell(k, v) for k, v in s.row(ndigits=None).items()] for s in rows]


def definitions(result: StatsResult) -> list[str]:
    """The definitions stated under the table (LAION's, with this run's thresholds)."""
    lines = [
        "Pairs: rows of the metadata parquet (one image-text pair each).",
        "W,H ≥ n: pairs with WIDTH >= n and HEIGHT >= n (the definition of LAION's statistics script).",
        f"% NSFW: pairs with punsafe > {result.nsfw_threshold:g}, as a percentage of the pairs that have a punsafe value.",
        f"% watermark: pairs with pwatermark > {result.watermark_threshold:g}, as a percentage of the pairs that "
        "have a pwatermark value.",
        "Avg text length: mean length of TEXT in characters (Unicode code points) over pairs with a TEXT.",
    ]
    if result.total is not None:
        lines.append("TOTAL: EN + MULTI + NOLANG, computed from their summed counts.")
    if result.others:
        lines.append("Other selections of dataset/ are listed separately and are not part of the total.")
    if result.swap_wh:
        lines.append("WIDTH and HEIGHT were swapped on reading (LAION's legacy metadata files have them swapped).")
    return lines


def markdown_table(rows: list[SubsetStats]) -> str:
    head = "| " + " | ".join(HEADERS[k] for k in TABLE_KEYS) + " |"
    sep = "|" + "|".join(["---"] + ["---:"] * (len(TABLE_KEYS) - 1)) + "|"
    body = ["| " + " | ".join(r) + " |" for r in display_rows(rows)]
    return "\n".join([head, sep, *body])


def funnel_rows(funnel: list[FunnelStage]) -> list[list[str]]:
    """Stage, subset, pairs in, pairs out, dropped, top drop reasons (all of them, most first)."""
    rows = []
    for f in funnel:
        for subset in f.subsets():
            reasons = ", ".join(f"{r} {n:,}" for r, n in f.drops.get(subset, {}).items())
            out = NA if subset == ANY_SUBSET else f"{f.kept.get(subset, 0):,}"
            label = "(before subset)" if subset == ANY_SUBSET else cell("subset", subset)
            rows.append([f.stage, label, f"{f.pairs_in(subset):,}", out, f"{f.dropped(subset):,}", reasons])
    return rows


FUNNEL_HEADERS = ["Stage", "Subset", "Pairs in", "Pairs out", "Dropped", "Drop reasons"]


def funnel_status(funnel: list[FunnelStage]) -> list[str]:
    """A line per stage that is not complete (its numbers only cover finished partitions), then
    which scores came from a URL list and which were computed, when any came from a list."""
    lines = [f"{f.stage}: partitions {f.done} done, {f.failed} failed, {f.pending} pending (counts cover the done ones)"
             for f in funnel if f.failed or f.pending]
    return lines + score_sources(funnel)


def score_sources(funnel: list[FunnelStage]) -> list[str]:
    """'similarity: published by the URL list for N pairs, computed for M' for each score the
    run took from a list (`score.published`); nothing when every score was computed."""
    counts = next((f.counts for f in funnel if f.stage == "score"), {})
    lines = []
    for name in sorted({k.partition(".")[2] for k in counts if k.startswith("published.")}):
        pub, comp = counts.get(f"published.{name}", 0), counts.get(f"computed.{name}", 0)
        lines.append(f"{name}: published by the URL list for {pub:,} pairs, computed for {comp:,}")
    return lines


def to_markdown(result: StatsResult) -> str:
    parts = [f"# Dataset statistics\n\nSource: `{result.source}`\n", markdown_table(result.main_rows()), ""]
    parts += [f"- {d}" for d in definitions(result)]
    if result.others:
        parts += ["", "## Other selections (not in the total)", "", markdown_table(result.others)]
    if result.funnel:
        parts += ["", "## Funnel", "", "| " + " | ".join(FUNNEL_HEADERS) + " |",
                  "|---|---|---:|---:|---:|---|"]
        parts += ["| " + " | ".join(r) + " |" for r in funnel_rows(result.funnel)]
        parts += [""] + [f"- {line}" for line in funnel_status(result.funnel)]
    for s in result.all_rows():
        if s.languages:
            parts += ["", f"## Top languages: {cell('subset', s.subset)}", "", "| Language | Pairs |", "|---|---:|"]
            parts += [f"| {lang} | {n:,} |" for lang, n in s.languages]
    for s in result.all_rows():
        if s.domains:
            parts += ["", f"## Top domains: {cell('subset', s.subset)}", "", "| Domain | Pairs |", "|---|---:|"]
            parts += [f"| {d} | {n:,} |" for d, n in s.domains]
    return "\n".join(parts).rstrip() + "\n"


def to_csv(result: StatsResult) -> str:
    """The table (main rows, then other selections) with the JSON keys as header, raw numbers."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(TABLE_KEYS), lineterminator="\n")
    w.writeheader()
    for row in result.to_json():
        w.writerow({k: "" if v is None else v for k, v in row.items()})
    return buf.getvalue()


def _rich_table(title: str, rows: list[SubsetStats], total_last: bool) -> Table:
    t = Table(title=title, title_justify="left")
    shown = display_rows(rows)
    for k in TABLE_KEYS:
        if k == "subset":  # labels such as laion2B-multi are never cut
            t.add_column(HEADERS[k], no_wrap=True, min_width=max([len(r[0]) for r in shown] + [6]))
        else:
            t.add_column(HEADERS[k], justify="right", overflow="fold")
    for i, r in enumerate(shown):
        t.add_row(*r, end_section=total_last and i == len(shown) - 2)
    return t


def print_table(result: StatsResult, console: Console | None = None) -> None:
    """The terminal view: LAION's table, its definitions, other selections, the funnel."""
    console = console or Console()
    console.print(_rich_table(f"Statistics of {result.source}", result.main_rows(), result.total is not None))
    for d in definitions(result):
        console.print(f"  {d}", style="dim", highlight=False)
    if result.others:
        console.print(_rich_table("Other selections (not in the total)", result.others, False))
    if result.funnel:
        t = Table(title="Funnel", title_justify="left")
        for h in FUNNEL_HEADERS:
            t.add_column(h, justify="right" if h.startswith(("Pairs", "Dropped")) else "left")
        for r in funnel_rows(result.funnel):
            t.add_row(*r)
        console.print(t)
        for line in funnel_status(result.funnel):
            console.print(f"  {line}", style="yellow", highlight=False)


def table_frame(rows: list[SubsetStats]):
    """The table as a pandas DataFrame of displayed strings, indexed by subset (notebook view)."""
    import pandas as pd

    shown = display_rows(rows)
    return pd.DataFrame([r[1:] for r in shown], index=pd.Index([r[0] for r in shown], name=HEADERS["subset"]),
                        columns=[HEADERS[k] for k in TABLE_KEYS[1:]])


def funnel_frame(funnel: list[FunnelStage]):
    """The funnel as a pandas DataFrame (notebook view)."""
    import pandas as pd

    return pd.DataFrame(funnel_rows(funnel), columns=FUNNEL_HEADERS)

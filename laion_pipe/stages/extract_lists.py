"""extract for URL lists: one range of a list (`crawl/urllist.py`) -> the three subset parquets,
exactly as for a WAT file (same columns, same partition layout, same drop reasons for URLs).

What differs from crawl pages, and why:
- Columns are img2dataset's options (`extract.lists.url_col`, `caption_col`; defaults find
  `URL`/`url` and `TEXT`/`caption`/`txt`/`text`). A named column a list lacks is a usage error
  naming the columns it has, raised when the run is planned (exit 2), before any work.
- A published list was cleaned by its publisher: by default a caption arrives as the list wrote
  it, whitespace collapsed (`extract.lists.clean_text: true` applies LAION's alt-text cleaning;
  its own `min_text_chars`, `min_words`, `max_text_chars`). URLs go through the same rules as a
  page's image links (http(s) with a host, length, excluded extensions), parsed as a browser
  would request them.
- The list's own values count before any download: a language column (`LANGUAGE`) gives the
  language and subset instead of language detection (`extract.lists.language` for a list of one
  language), and `extract.lists.bounds` on its published columns drop pairs with counted reasons
  (`published_*`), so only wanted URLs are fetched.
- A list's `uid` is the pair's uid (DataComp), and its `page_url` the pair's page; every other
  column travels with the pair as the `source` JSON (`extra_columns.py`), the ones a run keeps
  named by `extract.lists.save_additional_columns` (default: all).
- A URL the list repeats is left to the global dedup (no `duplicate_in_file` here): which copy
  survives then depends on the rows, never on where the list has them, so a list and the crawl
  files it was made from give the same dataset.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from .. import extra_columns
from ..config import ConfigError
from ..config.extract import Bound
from ..crawl import listread, urllist
from ..crawl.listread import as_text
from ..crawl.urllist import ListLayout, Range
from ..rules import PairRules, clean_text, resolve_url
from ..runner import Outcome, Partition
from ..schema import pair_uid

URL_NAMES = ("URL", "url")
CAPTION_NAMES = ("TEXT", "caption", "txt", "text")
LANGUAGE_NAMES = ("LANGUAGE", "language")
UID_NAME = "uid"
PAGE_NAME = "page_url"
NOLANG_CODES = frozenset({"", "nolang", "und", "unknown", "zxx", "none", "null"})
"""Language values that mean no language was found: such pairs are NOLANG, as LAION split them."""


@dataclass(frozen=True)
class ListColumns:
    """Which of a list's columns is what (see the module docstring)."""

    url: str
    caption: str | None
    language: str | None
    uid: str | None
    page: str | None
    extras: tuple[str, ...]  # carried columns the list's header/schema names
    carried: dict[str, str]  # list column -> name it travels under
    jsonl_rest: bool  # JSON lines: keys beyond the sampled columns travel too
    bounds: tuple[Bound, ...]

    def wanted(self) -> list[str]:
        """The columns to read."""
        named = [self.url, self.caption, self.language, self.uid, self.page, *self.extras, *(b.column for b in self.bounds)]
        return list(dict.fromkeys(c for c in named if c))


def _first(names: tuple[str, ...], columns: tuple[str, ...]) -> str | None:
    return next((n for n in names if n in columns), None)


def resolve_columns(layout: ListLayout, wf: Any) -> ListColumns:
    """The columns of one list, or a ConfigError (exit 2) naming the file and its columns."""
    cfg = wf.extract.lists
    cols = layout.columns
    listed = ", ".join(cols) if cols else "none"

    def need(option: str, name: str) -> str:
        if name not in cols:
            where = " in its first lines" if layout.format == "jsonl" else ""
            raise ConfigError(f"{option}: {layout.path} ({layout.describe()}) has no column {name!r}{where}; its columns: {listed}")
        return name

    url = need("extract.lists.url_col", cfg.url_col) if cfg.url_col else _first(URL_NAMES, cols)
    if url is None:
        raise ConfigError(f"extract.lists.url_col: {layout.path} ({layout.describe()}) has no URL or url column; "
                          f"its columns: {listed}; name the column of image URLs with extract.lists.url_col")
    caption = need("extract.lists.caption_col", cfg.caption_col) if cfg.caption_col else _first(CAPTION_NAMES, cols)
    language = need("extract.lists.language_col", cfg.language_col) if cfg.language_col else (
        None if cfg.language else _first(LANGUAGE_NAMES, cols))
    uid = UID_NAME if UID_NAME in cols and UID_NAME != url else None
    page = PAGE_NAME if PAGE_NAME in cols and PAGE_NAME != url else None
    consumed = {c for c in (url, caption, language, uid, page) if c}
    if cfg.save_additional_columns is None:
        extras = tuple(c for c in cols if c not in consumed)
    else:
        extras = tuple(need("extract.lists.save_additional_columns", c) for c in cfg.save_additional_columns if c not in consumed)
    bounds = tuple(cfg.parsed_bounds())
    for b in bounds:
        need(f"extract.lists.bounds ({b})", b.column)
    carried = extra_columns.carried_names([c for c in cols if c not in consumed])
    for score, column in (wf.score.published or {}).items():
        if column not in extras:
            raise ConfigError(f"score.published.{score}: {layout.path} carries no column {column!r} "
                              f"(its carried columns: {', '.join(extras) or 'none'}; see extract.lists.save_additional_columns)")
    return ListColumns(url, caption, language, uid, page, extras, carried,
                       layout.format == "jsonl" and cfg.save_additional_columns is None, bounds)


# --- bounds ---------------------------------------------------------------------------------------


def bound_reason(column: str) -> str:
    """The drop reason of a bound on a published column, by what the column holds."""
    c = column.lower()
    if "similarity" in c:
        return "published_similarity"
    if c in ("punsafe", "nsfw") or "nsfw" in c or "unsafe" in c:
        return "published_unsafe"
    if "watermark" in c:
        return "published_watermark"
    if "aesthetic" in c:
        return "published_aesthetic"
    if c in ("width", "height", "original_width", "original_height"):
        return "published_size"
    if c in ("language", "lang"):
        return "published_language"
    return "published_bound"


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        f = float(v)
    elif isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            return None
    else:
        return None
    return None if math.isnan(f) else f


_OPS = {
    ">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
}


def passes(bound: Bound, v: Any) -> bool:
    """Whether a value passes a bound; a missing value (or text where a number is wanted) fails."""
    if v is None:
        return False
    op = _OPS[bound.op]
    if isinstance(bound.value, float):
        x = _number(v)
        return x is not None and op(x, bound.value)
    return op(str(as_text(v)).strip(), bound.value)


# --- one range ------------------------------------------------------------------------------------


def subset_of(code: str | None, english: tuple[str, ...]) -> str:
    """LAION's split from a published language code."""
    c = (code or "").strip().lower()
    if c in NOLANG_CODES:
        return "nolang"
    return "en" if c in english else "multi"


class _Pairs:
    """Kept pairs of a batch, as columns, waiting to be written."""

    def __init__(self) -> None:
        self.uids: list[str] = []
        self.urls: list[str] = []
        self.texts: list[str] = []
        self.pages: list[str | None] = []
        self.langs: list[str | None] = []
        self.sources: list[str | None] = []

    def __len__(self) -> int:
        return len(self.urls)


def _flush(p: _Pairs, lid, english: tuple[str, ...], write) -> None:
    """Give the pairs their language (published, or detected) and write them."""
    if not len(p):
        return
    if lid is not None:
        langs, scores, subsets = lid.classify(p.texts)
        score_arr = pa.array(scores, pa.float32())
    else:
        langs = [None if v is None else str(v).strip() for v in p.langs]
        known: dict[str | None, str] = {}  # a list has few distinct codes
        subsets = [known[v] if v in known else known.setdefault(v, subset_of(v, english)) for v in langs]
        score_arr = pa.nulls(len(p), pa.float32())
    write({
        "uid": p.uids, "url": p.urls, "text": p.texts, "page_url": p.pages, "language": langs,
        "language_score": score_arr, "subset": subsets, "license": [None] * len(p), "source": p.sources,
    })


def process(part: Partition, out: str, wf: Any, outcome: Outcome, write, lid_factory) -> None:
    """Extract one range of a URL list: `write(columns)` receives each batch of kept pairs in
    CANDIDATE_SCHEMA's columns; `lid_factory()` gives the language ID when the list has no
    language. Counts, drops and bad rows go to `outcome`."""
    cfg, lc = wf.extract, wf.extract.lists
    path = part.inputs[0]
    layout = urllist.describe(path)
    if layout is None:
        raise ValueError(f"{path} is no longer a URL list (it changed since the run was planned)")
    cols = resolve_columns(layout, wf)
    rng = Range(*part.param("range"))
    rules = PairRules.from_config(cfg)
    english = tuple(cfg.language.english)
    constant = lc.language.strip() if lc.language else None
    lid = lid_factory() if (cols.language is None and constant is None) else None
    counts = outcome.counts
    drops: Counter = Counter()
    bound_counts: Counter = Counter()
    min_chars, min_words, max_chars = lc.min_text_chars, lc.min_words, lc.max_text_chars
    extras = [(c, cols.carried[c]) for c in cols.extras]
    bounds = [(b, bound_reason(b.column), str(b)) for b in cols.bounds]
    jsonl_types: dict[str, set] = defaultdict(set)
    pairs = _Pairs()
    listread.invalid_utf8(reset=True)
    for batch in listread.read(path, layout, rng, cols.wanted(), cfg.batch_pairs):
        for bad in batch.bad:
            outcome.error(bad.kind, bad.message, bad.offset)
        n = batch.n
        counts["list_rows"] += n
        c = batch.columns
        urls = c[cols.url]
        caps = c[cols.caption] if cols.caption else None
        langs = c[cols.language] if cols.language else None
        uids = c[cols.uid] if cols.uid else None
        pages = c[cols.page] if cols.page else None
        extra_cols = [(name, c[col]) for col, name in extras]
        for i in range(n):
            if bounds:
                failed = next(((reason, label) for b, reason, label in bounds if not passes(b, c[b.column][i])), None)
                if failed is not None:
                    drops[failed[0]] += 1
                    bound_counts[failed[1]] += 1
                    continue
            src = urls[i]
            if type(src) is not str:
                src = as_text(src)
            if not isinstance(src, str) or not src.strip():
                drops["bad_url"] += 1
                continue
            url, why = resolve_url(src, None, rules)
            if why is not None:
                drops[why] += 1
                continue
            raw = caps[i] if caps is not None else ""
            if type(raw) is not str:
                raw = as_text(raw)
                raw = "" if raw is None else raw if isinstance(raw, str) else str(raw)
            text = clean_text(raw, max_chars or 10**9) if lc.clean_text else " ".join(raw.split())
            if max_chars and len(text) > max_chars:
                text = text[:max_chars].rstrip()
            if len(text) < min_chars:
                drops["text_too_short"] += 1
                continue
            if min_words and len(text.split()) < min_words:
                drops["too_few_words"] += 1
                continue
            page = as_text(pages[i]) if pages is not None else None
            page = page if isinstance(page, str) and page else None
            uid = as_text(uids[i]) if uids is not None else None
            uid = str(uid) if uid is not None and str(uid) != "" else pair_uid(page or "", url, text)
            row = {name: values[i] for name, values in extra_cols}
            if cols.jsonl_rest and batch.extra is not None:
                row.update((cols.carried.get(k) or extra_columns.carried_names([k])[k], v) for k, v in batch.extra[i].items())
            if layout.format == "jsonl":
                for k, v in row.items():
                    jsonl_types[k].add(extra_columns.value_type(v))
            pairs.uids.append(uid)
            pairs.urls.append(url)
            pairs.texts.append(text)
            pairs.pages.append(page)
            pairs.langs.append(constant if constant is not None else (as_text(langs[i]) if langs is not None else None))
            pairs.sources.append(extra_columns.encode(row) if row else None)
            if len(pairs) >= cfg.batch_pairs:
                _flush(pairs, lid, english, write)
                pairs = _Pairs()
    _flush(pairs, lid, english, write)

    for reason, k in drops.items():
        outcome.drop(reason, n=k)
    for label, k in bound_counts.items():
        counts[f"bound[{label}]"] += k
    bad_utf8 = listread.invalid_utf8(reset=True)
    if bad_utf8:
        outcome.error("invalid_utf8", f"{bad_utf8} invalid UTF-8 sequence(s) replaced by U+FFFD")
    schema = _carried_schema(layout, cols, jsonl_types)
    outcome.details = {
        "list": {"format": layout.describe(), "url": cols.url, "caption": cols.caption,
                 "language": cols.language or (f"= {constant}" if constant else "detected"),
                 "uid": cols.uid, "page_url": cols.page, "range": list(rng.as_param()),
                 "carried": {f.name: str(f.type) for f in schema}},
        **({extra_columns.INFO_KEY: extra_columns.schema_info(schema)} if len(schema) else {}),
    }


def _carried_schema(layout: ListLayout, cols: ListColumns, jsonl_types: dict[str, set]) -> pa.Schema:
    """The types of the carried columns, as they travel (extra_columns.json_type)."""
    if layout.format == "jsonl":
        names = [cols.carried[c] for c in cols.extras] + [k for k in jsonl_types if k not in cols.carried.values()]
        return pa.schema([pa.field(n, extra_columns.merge_types(jsonl_types.get(n, ()))) for n in dict.fromkeys(names)])
    source = urllist.arrow_schema(layout)
    return pa.schema([pa.field(cols.carried[c], extra_columns.json_type(source.field(c).type)) for c in cols.extras])


def plan_list(path: str, layout: ListLayout, wf: Any) -> list[Range]:
    """The ranges of one list (its columns checked first: a ConfigError before any work)."""
    resolve_columns(layout, wf)
    lc = wf.extract.lists
    return urllist.ranges(layout, lc.partition_rows, lc.partition_bytes)


"""extract: WAT/WARC files and URL lists -> candidates/{en,multi,nolang}/part-NNNNN.parquet.

One partition per input file, named part-NNNNN in input order; a URL list that is cut into
several (`extract.lists.partition_rows` / `partition_bytes`: row groups of a parquet file, byte
ranges of a text file) gives part-NNNNN-MMMMM. Whether a file is a crawl file or a URL list, and
which kind, is read from its content (`crawl/urllist.py`); lists are extracted by
`extract_lists.py`, into the same files.

A crawl file is streamed page by page; each `<img>` with an alt text goes through LAION's rules
(`rules.py`), every drop counted with its reason; kept pairs are buffered `extract.batch_pairs`
at a time, language-identified in one batch (`lang.py`) and appended as a row group to the
subset's parquet. Memory is bounded by one batch plus the in-file dedup set, whatever the file's
size.

Bad records are noted in the manifest with their byte offset and skipped; only a file that
cannot be opened or holds no WARC record at all (and is no URL list) fails the partition.
"""
from __future__ import annotations

from collections import defaultdict
from contextlib import ExitStack
from functools import lru_cache

import mmh3
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import fsio, runner
from ..crawl import urllist
from ..crawl.paths import resolve_inputs
from ..crawl.reader import iter_pages
from ..crawl.stream import ReadError
from ..lang import LanguageID
from ..rules import PairRules, clean_text, page_base, resolve_url, text_reason
from ..runner import Outcome, Partition, StageReport
from ..schema import CANDIDATE_SCHEMA, STAGE_DIRS, SUBSETS, pair_uid  # noqa: F401 - pair_uid: extract's uid, also for lists

NAME = "extract"
VERSION = 2  # 2: NFD text whose mojibake shows once normalized is repaired as ftfy does
"""Bump when a change of this stage's code changes its output, so done partitions are redone."""
LIST_VERSION = 1
"""The same, for partitions of URL lists (`extract_lists.py`)."""

_IMMUTABLE = "/crawl-data/CC-MAIN-"
_CACHE_SIZE = 50_000  # entries of the cleaning cache; with _CACHE_TEXT_CHARS, at most ~50 MB
_CACHE_TEXT_CHARS = 256


def output_path(key: str, subset: str) -> str:
    """Path of a partition's output, relative to the run directory."""
    return f"{STAGE_DIRS[NAME]}/{subset}/{key}.parquet"


def _config_identity(wf) -> dict:
    """The settings that change a crawl file's output (not where inputs are listed, nor batch
    sizes, nor how URL lists are read)."""
    cfg = wf.extract
    ident = cfg.model_dump(exclude={"max_files", "crawl_base_url", "batch_pairs", "lists"})
    if cfg.language.model_path:
        try:
            ident["language_model"] = fsio.fingerprint_of(cfg.language.model_path)
        except Exception as e:  # noqa: BLE001 - a missing model fails the partitions, with its error
            ident["language_model"] = f"unavailable: {type(e).__name__}"
    return ident


def _list_identity(wf) -> dict:
    """The settings that change a URL list's output: the URL rules, in-file dedup, language ID
    and `extract.lists` (its partition sizes are in each partition's range instead)."""
    ident = _config_identity(wf)
    for k in ("min_text_chars", "min_words", "max_text_chars", "oversized_text_chars", "max_record_bytes"):
        ident.pop(k, None)  # crawl alt-text rules and record limits
    ident["lists"] = wf.extract.lists.model_dump(exclude={"partition_rows", "partition_bytes"})
    return ident


def _file_identity(path: str) -> str:
    if _IMMUTABLE in path:
        return "common-crawl-file"  # Common Crawl never rewrites a published file; skip a HEAD per file
    try:
        return fsio.fingerprint_of(path)
    except Exception as e:  # noqa: BLE001 - an unreadable input becomes a failed partition, not a crash
        return f"unavailable: {type(e).__name__}: {e}"


def _inputs(wf) -> list[tuple[str, urllist.ListLayout | None, list[urllist.Range]]]:
    """(path, URL list layout or None for a crawl file, the list's ranges) of every input file.
    A list's columns are checked here: a named column it lacks is a ConfigError."""
    from . import extract_lists

    found = []
    for path in resolve_inputs(wf.inputs, wf.extract.max_files, wf.extract.crawl_base_url):
        layout = urllist.describe(path)
        found.append((path, layout, extract_lists.plan_list(path, layout, wf) if layout is not None else []))
    return found


def check(wf) -> int:
    """Resolve the inputs before any work (no cluster, no run directory yet): an unreadable
    crawl listing, a glob that matches nothing or a URL list without a named column raises
    `ConfigError`, which the CLI reports in one line with exit code 2. Returns the number of
    partitions `plan` will make, so a local cluster need not start more workers than there are
    tasks. What is read here (a crawl listing, a list's header) is not read again by `plan`."""
    return sum(max(1, len(ranges)) for _, _, ranges in _inputs(wf))


def plan(out: str, wf) -> list[Partition]:
    """One partition per crawl file, keyed part-NNNNN in input order; a URL list gives one per
    range (part-NNNNN, or part-NNNNN-MMMMM when it has several)."""
    cfg, list_cfg = _config_identity(wf), None
    parts = []
    for i, (path, layout, ranges) in enumerate(_inputs(wf)):
        if layout is None:
            fp = runner.fingerprint(VERSION, path, _file_identity(path), cfg)
            parts.append(Partition(key=f"part-{i:05d}", inputs=(path,), fingerprint=fp))
            continue
        list_cfg = list_cfg or _list_identity(wf)
        ident = _file_identity(path)
        for j, rng in enumerate(ranges):
            fp = runner.fingerprint(LIST_VERSION, path, ident, rng.as_param(), list_cfg)
            key = f"part-{i:05d}" if len(ranges) == 1 else f"part-{i:05d}-{j:05d}"
            parts.append(Partition(key=key, inputs=(path,), fingerprint=fp, params=(("range", rng.as_param()),)))
    return parts


@lru_cache(maxsize=4)
def _language_id(model_path: str | None, threshold: float, english: tuple[str, ...]) -> LanguageID:
    """One LanguageID per worker process and setting: its cache of recent texts' languages
    (site furniture, captions reused across pages) serves every file the worker extracts."""
    return LanguageID(model_path=model_path, threshold=threshold, english=english)


class _Batch:
    """Kept pairs waiting for language ID, as columns."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.texts: list[str] = []
        self.pages: list[str] = []
        self.licenses: list[str | None] = []

    def __len__(self) -> int:
        return len(self.urls)

    def appenders(self):
        """The columns' bound `append`s: the per-pair loop calls them without attribute lookups."""
        return self.urls.append, self.texts.append, self.pages.append, self.licenses.append


def _flush(batch: _Batch, lid: LanguageID, writers: dict[str, pq.ParquetWriter], outcome: Outcome) -> None:
    """Language-identify a batch and append each subset's rows to its parquet."""
    n = len(batch)
    if not n:
        return
    langs, scores, subsets = lid.classify(batch.texts)
    table = pa.table(
        {
            "uid": [pair_uid(p, u, t) for p, u, t in zip(batch.pages, batch.urls, batch.texts)],
            "url": batch.urls,
            "text": batch.texts,
            "page_url": batch.pages,
            "language": langs,
            "language_score": pa.array(scores, pa.float32()),
            "subset": subsets,
            "license": batch.licenses,
            "source": pa.nulls(n, pa.string()),
        },
        schema=CANDIDATE_SCHEMA,
    )
    write_subsets(table, writers, outcome)


def write_subsets(table: pa.Table, writers: dict[str, pq.ParquetWriter], outcome: Outcome) -> None:
    """Append each subset's rows of `table` (CANDIDATE_SCHEMA) to its parquet."""
    column = table.column("subset")
    for subset in SUBSETS:
        part = table.filter(pc.equal(column, subset))
        if part.num_rows:
            writers[subset].write_table(part)
            outcome.kept[subset] += part.num_rows


def _process_list(part: Partition, out: str, wf) -> Outcome:
    """One range of a URL list into the three subset parquets (`extract_lists.py`)."""
    from . import extract_lists

    cfg = wf.extract
    outcome = Outcome(max_errors=wf.runner.max_errors_kept)
    rel = {s: output_path(part.key, s) for s in SUBSETS}
    with ExitStack() as stack:
        writers: dict[str, pq.ParquetWriter] = {}
        for s in SUBSETS:
            f = stack.enter_context(fsio.atomic_open(fsio.join(out, rel[s])))
            writers[s] = stack.enter_context(pq.ParquetWriter(f, CANDIDATE_SCHEMA, compression="zstd"))

        def write(columns: dict) -> None:
            write_subsets(pa.table(columns, schema=CANDIDATE_SCHEMA), writers, outcome)

        def lid():
            return _language_id(cfg.language.model_path, cfg.language.threshold, tuple(cfg.language.english))

        extract_lists.process(part, out, wf, outcome, write, lid)
    outcome.counts["pairs"] = sum(outcome.kept.values())
    outcome.outputs = [rel[s] for s in SUBSETS]
    return outcome


def process(part: Partition, out: str, wf) -> Outcome:
    """Extract one file's pairs into the three subset parquets (always all three, maybe empty)."""
    if part.param("range") is not None:
        return _process_list(part, out, wf)
    cfg = wf.extract
    rules = PairRules.from_config(cfg)
    lid = _language_id(cfg.language.model_path, cfg.language.threshold, tuple(cfg.language.english))
    outcome = Outcome(max_errors=wf.runner.max_errors_kept)
    counts = outcome.counts
    path = part.inputs[0]
    rel = {s: output_path(part.key, s) for s in SUBSETS}
    dedup = cfg.dedup_in_file
    seen: set[int] = set()
    drops: dict[str, int] = defaultdict(int)
    oversized = cfg.oversized_text_chars
    max_chars = rules.max_text_chars
    hash64 = mmh3.hash64
    cleaned: dict[str, str] = {}  # raw alt -> clean text: site furniture repeats on every page
    min_chars, min_words, batch_pairs = rules.min_text_chars, rules.min_words, cfg.batch_pairs

    with ExitStack() as stack:
        writers: dict[str, pq.ParquetWriter] = {}
        for s in SUBSETS:
            f = stack.enter_context(fsio.atomic_open(fsio.join(out, rel[s])))
            writers[s] = stack.enter_context(pq.ParquetWriter(f, CANDIDATE_SCHEMA, compression="zstd"))
        batch = _Batch()
        add_url, add_text, add_page, add_license = batch.appenders()
        for item in iter_pages(path, counts, cfg.max_record_bytes):
            if isinstance(item, ReadError):
                outcome.error(item.kind, item.message, item.offset)
                continue
            for kind, message in item.warnings:
                outcome.error(kind, message, item.offset)
            page_url, license = item.page_url, item.license
            base = page_base(page_url, item.base)
            counts["images"] += len(item.images)
            for src, alt in item.images:
                if alt is None:
                    drops["no_alt"] += 1
                    continue
                url, reason = resolve_url(src, base, rules)
                if reason is not None:
                    drops[reason] += 1
                    continue
                if len(alt) > oversized:
                    outcome.error("oversized_text", f"alt text of {len(alt)} characters, truncated", item.offset)
                text = cleaned.get(alt)
                if text is None:
                    text = clean_text(alt, max_chars)
                    if len(alt) <= _CACHE_TEXT_CHARS:  # repeats are short; a huge alt must not stay in memory
                        if len(cleaned) >= _CACHE_SIZE:
                            cleaned.clear()
                        cleaned[alt] = text
                if len(text) < min_chars or (min_words and len(text.split()) < min_words):
                    drops[text_reason(text, rules)] += 1
                    continue
                if dedup:
                    h = hash64(f"{url}\x00{text}")[0]
                    if h in seen:
                        drops["duplicate_in_file"] += 1
                        continue
                    seen.add(h)
                add_url(url)
                add_text(text)
                add_page(page_url)
                add_license(license)
                if len(batch.urls) >= batch_pairs:
                    _flush(batch, lid, writers, outcome)
                    batch = _Batch()
                    add_url, add_text, add_page, add_license = batch.appenders()
        _flush(batch, lid, writers, outcome)

    for reason, n in drops.items():
        outcome.drop(reason, n=n)
    counts["pairs"] = sum(outcome.kept.values())
    outcome.outputs = [rel[s] for s in SUBSETS]
    return outcome


def run(out: str, wf, client) -> StageReport:
    return runner.run_stage(NAME, plan(out, wf), process, out, wf, client)

"""extract: WAT/WARC files -> candidates/{en,multi,nolang}/part-NNNNN.parquet, one per file.

One partition per input file. The file is streamed page by page; each `<img>` with an alt text
goes through LAION's rules (`rules.py`), every drop counted with its reason; kept pairs are
buffered `extract.batch_pairs` at a time, language-identified in one batch (`lang.py`) and
appended as a row group to the subset's parquet. Memory is bounded by one batch plus the
in-file dedup set, whatever the file's size.

Bad records are noted in the manifest with their byte offset and skipped; only a file that
cannot be opened or holds no WARC record at all fails the partition.
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
from ..crawl.paths import resolve_inputs
from ..crawl.reader import iter_pages
from ..crawl.stream import ReadError
from ..lang import LanguageID
from ..rules import PairRules, clean_text, page_base, resolve_url, text_reason
from ..runner import Outcome, Partition, StageReport
from ..schema import CANDIDATE_SCHEMA, STAGE_DIRS, SUBSETS

NAME = "extract"
VERSION = 2  # 2: NFD text whose mojibake shows once normalized is repaired as ftfy does
"""Bump when a change of this stage's code changes its output, so done partitions are redone."""

_IMMUTABLE = "/crawl-data/CC-MAIN-"
_CACHE_SIZE = 50_000  # entries of the cleaning cache; with _CACHE_TEXT_CHARS, at most ~50 MB
_CACHE_TEXT_CHARS = 256


def output_path(key: str, subset: str) -> str:
    """Path of a partition's output, relative to the run directory."""
    return f"{STAGE_DIRS[NAME]}/{subset}/{key}.parquet"


def pair_uid(page_url: str, url: str, text: str) -> str:
    """A stable id for a pair on a page: reruns and other machines give the same uid."""
    return format(mmh3.hash128(f"{page_url}\x00{url}\x00{text}", signed=False), "032x")


def _config_identity(wf) -> dict:
    """The settings that change extract's output (not where inputs are listed, nor batch sizes)."""
    cfg = wf.extract
    ident = cfg.model_dump(exclude={"max_files", "crawl_base_url", "batch_pairs"})
    if cfg.language.model_path:
        try:
            ident["language_model"] = fsio.fingerprint_of(cfg.language.model_path)
        except Exception as e:  # noqa: BLE001 - a missing model fails the partitions, with its error
            ident["language_model"] = f"unavailable: {type(e).__name__}"
    return ident


def _file_identity(path: str) -> str:
    if _IMMUTABLE in path:
        return "common-crawl-file"  # Common Crawl never rewrites a published file; skip a HEAD per file
    try:
        return fsio.fingerprint_of(path)
    except Exception as e:  # noqa: BLE001 - an unreadable input becomes a failed partition, not a crash
        return f"unavailable: {type(e).__name__}: {e}"


def check(wf) -> int:
    """Resolve the inputs before any work (no cluster, no run directory yet): an unreadable
    crawl listing or a glob that matches nothing raises `ConfigError`, which the CLI reports in
    one line with exit code 2. Returns the number of partitions `plan` will make (one per
    file), so a local cluster need not start more workers than there are tasks. A crawl
    listing read here is not read again by `plan`."""
    return len(resolve_inputs(wf.inputs, wf.extract.max_files, wf.extract.crawl_base_url))


def plan(out: str, wf) -> list[Partition]:
    """One partition per input file, keyed part-NNNNN in input order."""
    files = resolve_inputs(wf.inputs, wf.extract.max_files, wf.extract.crawl_base_url)
    cfg = _config_identity(wf)
    return [
        Partition(
            key=f"part-{i:05d}",
            inputs=(path,),
            fingerprint=runner.fingerprint(VERSION, path, _file_identity(path), cfg),
        )
        for i, path in enumerate(files)
    ]


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
        },
        schema=CANDIDATE_SCHEMA,
    )
    column = table.column("subset")
    for subset in SUBSETS:
        part = table.filter(pc.equal(column, subset))
        if part.num_rows:
            writers[subset].write_table(part)
            outcome.kept[subset] += part.num_rows


def process(part: Partition, out: str, wf) -> Outcome:
    """Extract one file's pairs into the three subset parquets (always all three, maybe empty)."""
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

"""URL lists as inputs (issue 20): every format, compression and fsspec scheme, told apart by
content; img2dataset's column options and their errors; captions as the list wrote them; a list's
language column and its bounds; its other columns carried with each pair; lists cut into
partitions at record boundaries. The expected pairs are written out by hand from the rows the
tests write, never computed by the code under test."""
from __future__ import annotations

import csv
import gzip
import io
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from laion_pipe import extra_columns
from laion_pipe.config import ConfigError, workflow_from_dict
from laion_pipe.crawl import listread, urllist
from laion_pipe.runner import write_manifest
from laion_pipe.schema import SUBSETS
from laion_pipe.stages import extract
from s3_stub import moto_s3
from servers import serve_folder

REPO = Path(__file__).resolve().parents[1]

# Captions as a list would hold them: a tab, a line break, emoji, surrounding and repeated spaces.
ROWS = [
    {"URL": "http://img.example/a.jpg", "TEXT": "A red\tbicycle  leaning on a wall", "SAMPLE_ID": 1, "similarity": 0.31,
     "LANGUAGE": "en"},
    {"URL": "https://Img.Example:443/b c.jpg", "TEXT": "  Ein rotes Fahrrad\nan einer Wand ", "SAMPLE_ID": 2, "similarity": 0.29,
     "LANGUAGE": "de"},
    {"URL": "http://img.example/c.jpg", "TEXT": "🚲 sunset ride 🌅", "SAMPLE_ID": 3, "similarity": 0.35, "LANGUAGE": "en"},
    {"URL": "javascript:void(0)", "TEXT": "not an image link", "SAMPLE_ID": 4, "similarity": 0.5, "LANGUAGE": "en"},
    {"URL": "http://img.example/anim.gif", "TEXT": "an animation", "SAMPLE_ID": 5, "similarity": 0.5, "LANGUAGE": "en"},
]
EXPECTED = [  # (url as a browser requests it, caption whitespace-collapsed, subset) of the kept pairs
    ("http://img.example/a.jpg", "A red bicycle leaning on a wall", "en"),
    ("https://img.example/b%20c.jpg", "Ein rotes Fahrrad an einer Wand", "multi"),
    ("http://img.example/c.jpg", "🚲 sunset ride 🌅", "en"),
]
INVALID = b"caf\xe9 au lait"  # latin-1 bytes in a UTF-8 list
INVALID_AS = "caf\ufffd au lait"


def wf_of(*overrides: str):
    return workflow_from_dict({"runner": {"progress": False, "retries": 0}}, list(overrides))


def _csv_bytes(rows: list[dict], delimiter: str, header: bool = True, invalid: bool = True) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    if header:
        w.writerow(list(rows[0]))
    for r in rows:
        w.writerow([r[k] for k in rows[0]])
    data = buf.getvalue().encode()
    if invalid:
        data += f"http://img.example/d.jpg{delimiter}".encode() + INVALID + f"{delimiter}6{delimiter}0.4{delimiter}fr\n".encode()
    return data


def write_list(folder: Path, fmt: str, gz: bool = False, name: str | None = None) -> Path:
    """ROWS (plus one caption of invalid UTF-8) in a format; the file name says nothing of it."""
    if fmt == "parquet":  # the caption column is binary: a string column cannot hold invalid UTF-8
        rows = [{**r, "TEXT": r["TEXT"].encode()} for r in ROWS]
        rows.append({"URL": "http://img.example/d.jpg", "TEXT": INVALID, "SAMPLE_ID": 6, "similarity": 0.4, "LANGUAGE": "fr"})
        table = pa.Table.from_pylist(rows)
        buf = io.BytesIO()
        pq.write_table(table, buf, row_group_size=2)
        data = buf.getvalue()
    elif fmt in ("csv", "tsv"):
        data = _csv_bytes(ROWS, "," if fmt == "csv" else "\t")
    elif fmt == "jsonl":
        data = b"".join(orjson.dumps(r) + b"\n" for r in ROWS)
        data += b'{"URL": "http://img.example/d.jpg", "TEXT": "' + INVALID + b'", "SAMPLE_ID": 6, "similarity": 0.4, "LANGUAGE": "fr"}\n'
    else:  # text: one URL a line
        data = "".join(r["URL"] + "\n" for r in ROWS).encode() + b"http://img.example/d.jpg\n"
    if gz:
        data = gzip.compress(data)
    path = folder / (name or f"list-{fmt}{'-gz' if gz else ''}.data")
    path.write_bytes(data)
    return path


def run_extract(out: Path, inputs: list[str], *overrides: str) -> tuple[list[dict], list[dict]]:
    """extract's plan and partitions, in this process; (candidate rows in key order, manifests)."""
    wf = wf_of(*overrides).model_copy(update={"inputs": inputs})
    rows, manifests = [], []
    for part in extract.plan(str(out), wf):
        outcome = extract.process(part, str(out), wf)
        manifests.append(write_manifest(str(out), "extract", part.key, fingerprint=part.fingerprint, inputs=part.inputs,
                                        outcome=outcome))
        for subset in SUBSETS:
            rows += pq.read_table(out / extract.output_path(part.key, subset)).to_pylist()
    return rows, manifests


def console_command() -> str:
    """The installed `laion-pipe` script, beside this interpreter (as tests/test_cli.py finds it):
    the command a user types, not `python -m`."""
    folders = [Path(sysconfig.get_path("scripts")), Path(sys.executable).parent]
    script = next((f / "laion-pipe" for f in folders if (f / "laion-pipe").is_file()), None)
    assert script is not None, f"no laion-pipe script in {folders}"
    return str(script)


def pairs(rows: list[dict]) -> list[tuple[str, str, str]]:
    return sorted((r["url"], r["text"], r["subset"]) for r in rows)


# --- formats ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, gz", [("parquet", False)] + [(f, gz) for f in ("csv", "tsv", "jsonl", "text") for gz in (False, True)])
def test_each_format_is_told_from_its_content_and_gives_the_pairs(tmp_path, fmt, gz):
    """(A parquet file compresses inside itself: gzip around one is no format img2dataset reads either.)"""
    path = write_list(tmp_path, fmt, gz)
    layout = urllist.describe(str(path))
    assert layout is not None and (layout.format, layout.gzip) == (fmt, gz)
    rows, (manifest,) = run_extract(tmp_path / "run", [str(path)])
    if fmt == "text":  # no captions: the URLs alone, language unknown
        assert sorted(r["url"] for r in rows) == sorted([u for u, _, _ in EXPECTED] + ["http://img.example/d.jpg"])
        assert {r["text"] for r in rows} == {""} and {r["subset"] for r in rows} == {"nolang"}
    else:
        assert pairs(rows) == sorted(EXPECTED + [("http://img.example/d.jpg", INVALID_AS, "multi")])
        assert {r["language"] for r in rows} == {"en", "de", "fr"} and all(r["language_score"] is None for r in rows)
        carried = {int(orjson.loads(r["source"])["SAMPLE_ID"]) for r in rows}  # text in CSV/TSV, a number elsewhere
        assert carried == {1, 2, 3, 6}, "the list's own columns travel with each pair"
        assert [e["kind"] for e in manifest["errors"]] == ["invalid_utf8"]
    assert manifest["drops"]["*"] == {"javascript_url": 1, "excluded_extension": 1}
    assert manifest["counts"]["list_rows"] == 6


def test_files_that_are_no_list_are_left_to_the_warc_reader_with_a_clear_error(tmp_path):
    (tmp_path / "notes.txt").write_text("hello world\nthis is prose, not a list\n")
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 10)
    for name in ("notes.txt", "blob.bin"):
        assert urllist.describe(str(tmp_path / name)) is None
    wf = wf_of().model_copy(update={"inputs": [str(tmp_path / "notes.txt")]})
    (part,) = extract.plan(str(tmp_path / "run"), wf)
    with pytest.raises(ValueError, match="not a URL list either.*parquet, CSV, TSV, JSON lines"):
        extract.process(part, str(tmp_path / "run"), wf)


def test_crawl_files_are_not_opened_to_be_told_apart(monkeypatch):
    monkeypatch.setattr(urllist, "_describe", lambda *a: pytest.fail("a crawl file must not be sniffed"))
    for path in ("s3://commoncrawl/crawl-data/CC-MAIN-2023-14/segments/x/wat/y.warc.wat.gz", "/data/a.warc.gz",
                 "/data/b.wat", "https://mirror.example/c.arc.gz"):
        assert urllist.describe(path) is None


def test_headerless_tsv_like_cc3m_and_cc12m(tmp_path):
    cc12m = tmp_path / "cc12m.tsv"
    cc12m.write_text("http://img.example/1.jpg\tA <PERSON> smiling at the camera\nhttp://img.example/2.jpg\ta \"quoted\" word\n")
    cc3m = tmp_path / "cc3m.tsv"
    cc3m.write_text("a dog runs on the beach\thttp://img.example/3.jpg\n")
    assert urllist.describe(str(cc12m)).columns == ("url", "caption") and not urllist.describe(str(cc12m)).header
    assert urllist.describe(str(cc3m)).columns == ("caption", "url")
    rows, _ = run_extract(tmp_path / "run", [str(cc12m), str(cc3m)], "extract.lists.language=en")
    assert pairs(rows) == [("http://img.example/1.jpg", "A <PERSON> smiling at the camera", "en"),
                           ("http://img.example/2.jpg", 'a "quoted" word', "en"),
                           ("http://img.example/3.jpg", "a dog runs on the beach", "en")]


def test_a_single_url_column_with_a_header(tmp_path):
    p = tmp_path / "urls.csv"
    p.write_text("url\nhttp://img.example/1.jpg\nhttp://img.example/2.jpg\n")
    assert urllist.describe(str(p)).columns == ("url",)
    rows, _ = run_extract(tmp_path / "run", [str(p)])
    assert sorted(r["url"] for r in rows) == ["http://img.example/1.jpg", "http://img.example/2.jpg"]


# --- columns --------------------------------------------------------------------------------------


def test_column_options_name_the_columns_and_a_missing_one_lists_what_the_file_has(tmp_path):
    p = tmp_path / "custom.csv"
    p.write_text("image_url,alt,ID\nhttp://img.example/1.jpg,a cat on a mat,7\n")
    with pytest.raises(ConfigError, match=r"has no URL or url column; its columns: image_url, alt, ID"):
        run_extract(tmp_path / "run", [str(p)])
    with pytest.raises(ConfigError, match=r"extract\.lists\.caption_col: .*custom\.csv .*has no column 'caption'; "
                                          r"its columns: image_url, alt, ID"):
        run_extract(tmp_path / "run", [str(p)], "extract.lists.url_col=image_url", "extract.lists.caption_col=caption")
    rows, _ = run_extract(tmp_path / "run", [str(p)], "extract.lists.url_col=image_url", "extract.lists.caption_col=alt",
                          "extract.lists.language=en")
    assert pairs(rows) == [("http://img.example/1.jpg", "a cat on a mat", "en")]
    assert orjson.loads(rows[0]["source"]) == {"ID": "7"}, "a CSV's columns are text, as written"
    with pytest.raises(ConfigError, match=r"save_additional_columns: .* has no column 'LICENSE'"):
        run_extract(tmp_path / "run", [str(p)], "extract.lists.url_col=image_url", "extract.lists.save_additional_columns=[LICENSE]")
    rows, _ = run_extract(tmp_path / "run2", [str(p)], "extract.lists.url_col=image_url", "extract.lists.caption_col=alt",
                          "extract.lists.save_additional_columns=[]")
    assert rows[0]["source"] is None and rows[0]["text"] == "a cat on a mat"


def test_extract_check_reports_column_errors_before_any_work(tmp_path):
    p = tmp_path / "custom.csv"
    p.write_text("image_url,alt\nhttp://img.example/1.jpg,a cat on a mat\n")
    wf = wf_of("extract.lists.url_col=nope").model_copy(update={"inputs": [str(p)]})
    with pytest.raises(ConfigError, match="its columns: image_url, alt"):
        extract.check(wf)
    wf = wf_of("extract.lists.url_col=image_url", "extract.lists.partition_bytes=10").model_copy(update={"inputs": [str(p)]})
    assert extract.check(wf) == len(extract.plan(str(tmp_path / "run"), wf)) == 1  # one record: one partition


def test_cli_as_a_user_types_it(tmp_path):
    """`laion-pipe extract LIST --out DIR` (mixed with a WAT file), and a wrong column: exit 2 naming the columns."""
    from laion_pipe.demo.watgen import Page, write_wat

    lst = tmp_path / "laion.parquet"
    pq.write_table(pa.table({"URL": ["http://img.example/1.jpg", "http://img.example/2.jpg"],
                             "TEXT": ["a red circle on a blue background", "a green square on white"],
                             "punsafe": [0.01, 0.9]}), lst)
    wat = tmp_path / "pages.warc.wat.gz"
    write_wat([Page("https://site.example/p.html", (("http://img.example/3.jpg", "a blue star in the night sky"),))], str(wat))
    out = tmp_path / "run"
    cmd = [console_command(), "extract", str(lst), str(wat), "--out", str(out), "--no-progress",
           "--set", "cluster.n_workers=1", "--set", "extract.lists.bounds=['punsafe < 0.1']"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    got = pairs([row for p in (out / "candidates").glob("*/*.parquet") for row in pq.read_table(p).to_pylist()])
    assert [(u, t) for u, t, _ in got] == [("http://img.example/1.jpg", "a red circle on a blue background"),
                                           ("http://img.example/3.jpg", "a blue star in the night sky")]
    assert "published_unsafe 1" in " ".join(r.stderr.split())
    bad = subprocess.run([*cmd[:7], "--set", "extract.lists.caption_col=caption"], capture_output=True, text=True,
                         timeout=300, cwd=REPO)
    msg = " ".join(bad.stderr.split())
    assert bad.returncode == 2 and "has no column 'caption'" in msg and "its columns: URL, TEXT, punsafe" in msg, msg


# --- the list's own values ------------------------------------------------------------------------


def test_language_column_gives_the_subset_and_a_constant_language_too(tmp_path):
    p = tmp_path / "langs.jsonl"
    p.write_text("".join(json.dumps({"url": f"http://img.example/{i}.jpg", "caption": "une photo", "LANGUAGE": lang}) + "\n"
                         for i, lang in enumerate(["en", "DE", "nolang", None, "fr"])))
    rows, _ = run_extract(tmp_path / "run", [str(p)])
    by_url = {r["url"]: (r["language"], r["subset"]) for r in rows}
    assert [by_url[f"http://img.example/{i}.jpg"] for i in range(5)] == [
        ("en", "en"), ("DE", "multi"), ("nolang", "nolang"), (None, "nolang"), ("fr", "multi")]
    rows, _ = run_extract(tmp_path / "run2", [str(p)], "extract.lists.language=en", "extract.lists.language_col=null")
    assert {(r["language"], r["subset"]) for r in rows} == {("en", "en")}
    # not the language then: the column travels like any other, renamed since LANGUAGE is a dataset column
    assert sorted(str(orjson.loads(r["source"])["source_LANGUAGE"]) for r in rows) == ["DE", "None", "en", "fr", "nolang"]


def test_bounds_on_published_columns_drop_pairs_before_download(tmp_path):
    """LAION-Aesthetics 6+'s bounds: each failing pair counted under the first bound it fails."""
    rows = [  # aesthetic, punsafe, similarity, WIDTH -> expected fate
        (6.5, 0.01, 0.35, 600, "kept"),
        (5.9, 0.01, 0.35, 600, "published_aesthetic"),
        (7.0, 0.20, 0.35, 600, "published_unsafe"),
        (6.0, 0.05, 0.25, 600, "published_similarity"),
        (6.1, 0.05, 0.31, 500, "published_size"),
        (None, 0.05, 0.31, 900, "published_aesthetic"),  # a missing value fails its bound
        (6.0, 0.0999, 0.30, 512, "kept"),  # every bound exactly at its edge
    ]
    table = pa.table({"URL": [f"http://img.example/{i}.jpg" for i in range(len(rows))], "TEXT": ["a photo"] * len(rows),
                      "aesthetic": [r[0] for r in rows], "punsafe": [r[1] for r in rows],
                      "similarity": [r[2] for r in rows], "WIDTH": [r[3] for r in rows]})
    pq.write_table(table, tmp_path / "aesthetics.parquet")
    (tmp_path / "aesthetics.csv").write_text(table.to_pandas().to_csv(index=False))  # the same, as text values
    bounds = "extract.lists.bounds=['aesthetic >= 6', 'punsafe < 0.1', 'similarity >= 0.3', 'WIDTH >= 512']"
    for name in ("aesthetics.parquet", "aesthetics.csv"):
        got, (m,) = run_extract(tmp_path / f"run-{name}", [str(tmp_path / name)], bounds, "extract.lists.language=en")
        assert sorted(r["url"] for r in got) == ["http://img.example/0.jpg", "http://img.example/6.jpg"], name
        assert m["drops"]["*"] == {"published_aesthetic": 2, "published_unsafe": 1, "published_similarity": 1,
                                   "published_size": 1}, name
        assert m["counts"]["bound[aesthetic >= 6]"] == 2 and m["counts"]["bound[WIDTH >= 512]"] == 1


def test_captions_arrive_as_written_unless_cleaning_is_asked_for(tmp_path):
    p = tmp_path / "messy.csv"
    p.write_text('url,caption\nhttp://img.example/1.jpg,"caf\u00c3\u00a9 &amp; cr\u00e8me\u200b  "\n'
                 'http://img.example/2.jpg,abc\n')
    rows, _ = run_extract(tmp_path / "run", [str(p)], "extract.lists.language=en")
    assert pairs(rows)[0][1] == "caf\u00c3\u00a9 &amp; cr\u00e8me\u200b", "whitespace aside, as the list wrote it"
    rows, (m,) = run_extract(tmp_path / "run2", [str(p)], "extract.lists.language=en", "extract.lists.clean_text=true",
                             "extract.lists.min_text_chars=5")
    assert [r["text"] for r in rows] == ["café & crème"] and m["drops"]["*"] == {"text_too_short": 1}


def test_a_list_repeating_urls_keeps_one_at_dedup(tmp_path, dask_client):
    from laion_pipe.pipeline import run_stages

    from laion_pipe.stats.funnel import compute_funnel

    p = tmp_path / "repeats.csv"
    p.write_text("url,caption,NSFW\n" + "".join(f"http://img.example/{i % 3}.jpg,caption number {i},UNLIKELY\n" for i in range(9))
                 + "http://img.example/9.jpg,an unsafe one,NSFW\n")
    wf = wf_of("extract.lists.language=en", "extract.lists.bounds=['NSFW != NSFW']").model_copy(update={"inputs": [str(p)]})
    out = tmp_path / "run"
    reports = run_stages(wf, str(out), ["extract", "dedup"], dask_client)
    assert reports[0].kept == {"en": 9}, "extract leaves repeats to the global dedup"
    assert reports[1].kept == {"en": 3} and reports[1].drops == {"en": {"duplicate_url": 6}}
    funnel = {f.stage: f for f in compute_funnel(str(out), dask_client)}
    assert funnel["extract"].drops == {"*": {"published_unsafe": 1}}, "the pre-download bound is in the funnel"
    assert funnel["dedup"].drops == {"en": {"duplicate_url": 6}}
    unique = [r for f in sorted((out / "unique" / "en").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert sorted(r["url"] for r in unique) == [f"http://img.example/{i}.jpg" for i in range(3)]


# --- carried columns ------------------------------------------------------------------------------


def test_carried_names_never_take_ours():
    names = extra_columns.carried_names(["SAMPLE_ID", "similarity", "hash", "punsafe", "WIDTH", "key", "status", "sha256",
                                         "original_width", "LICENSE", "source_hash", "face_bboxes"])
    assert names == {"SAMPLE_ID": "SAMPLE_ID", "similarity": "source_similarity", "hash": "source_source_hash",
                     "punsafe": "source_punsafe", "WIDTH": "source_WIDTH", "key": "source_key", "status": "source_status",
                     "sha256": "source_sha256", "original_width": "source_original_width", "LICENSE": "LICENSE",
                     "source_hash": "source_hash", "face_bboxes": "face_bboxes"}


def test_carried_types_follow_the_list(tmp_path):
    import datetime as dt
    import decimal

    table = pa.table({
        "url": ["http://img.example/1.jpg", "http://img.example/2.jpg"], "caption": ["one photo", "two photos"],
        "uid": ["3f2a9c", "77bd01"], "n": pa.array([1, None], pa.int32()), "score": pa.array([0.5, 0.25], pa.float32()),
        "flag": [True, False], "face_bboxes": [[[0.1, 0.2, 0.3, 0.4]], []],
        "when": [dt.datetime(2023, 4, 1, 12, 0), None], "price": pa.array([decimal.Decimal("1.50"), None], pa.decimal128(5, 2)),
        "raw": pa.array([b"\x00\xff", b"ok"], pa.binary()), "hash": pa.array([-5, 7], pa.int64()),
    })
    pq.write_table(table, tmp_path / "typed.parquet")
    rows, (m,) = run_extract(tmp_path / "run", [str(tmp_path / "typed.parquet")], "extract.lists.language=en")
    by_uid = {r["uid"]: orjson.loads(r["source"]) for r in rows}
    assert set(by_uid) == {"3f2a9c", "77bd01"}, "a list's uid is the pair's uid (DataComp)"
    assert by_uid["3f2a9c"] == {"n": 1, "score": 0.5, "flag": True, "face_bboxes": [[0.1, 0.2, 0.3, 0.4]],
                                "when": "2023-04-01T12:00:00", "price": "1.50", "raw": "\x00\ufffd", "source_hash": -5}
    schema = extra_columns.schema_from_info(m["details"]["source_schema"])
    assert {f.name: str(f.type) for f in schema} == {
        "n": "int64", "score": "float", "flag": "bool", "face_bboxes": "list<item: list<item: double>>", "when": "string",
        "price": "string", "raw": "string", "source_hash": "int64"}
    typed = extra_columns.append_columns(pa.table({"k": [0, 1]}), [by_uid["3f2a9c"], by_uid["77bd01"]], schema)
    assert typed.column("face_bboxes").to_pylist() == [[[0.1, 0.2, 0.3, 0.4]], []]
    assert typed.column("n").to_pylist() == [1, None] and typed.schema.field("score").type == pa.float32()


def test_merged_types_across_lists():
    m = extra_columns.merge_schemas([pa.schema([("a", pa.int64()), ("b", pa.string()), ("c", pa.null())]),
                                     pa.schema([("a", pa.float64()), ("b", pa.int64()), ("c", pa.bool_()), ("d", pa.int64())])])
    assert [(f.name, str(f.type)) for f in m] == [("a", "double"), ("b", "string"), ("c", "bool"), ("d", "int64")]
    assert extra_columns.column(["1.5", "x", 3, None], pa.float64()).to_pylist() == [1.5, None, 3.0, None]


# --- partitions -----------------------------------------------------------------------------------


def test_a_parquet_list_is_partitioned_by_row_groups(tmp_path):
    n = 50
    pq.write_table(pa.table({"url": [f"http://img.example/{i}.jpg" for i in range(n)], "caption": [f"photo {i}" for i in range(n)]}),
                   tmp_path / "big.parquet", row_group_size=7)
    wf = wf_of("extract.lists.partition_rows=20", "extract.lists.language=en").model_copy(update={"inputs": [str(tmp_path / "big.parquet")]})
    parts = extract.plan(str(tmp_path / "run"), wf)
    # 8 row groups of 7, 7, 7, 7, 7, 7, 7, 1 rows: runs of whole groups up to 20 rows
    assert [p.key for p in parts] == ["part-00000-00000", "part-00000-00001", "part-00000-00002", "part-00000-00003"]
    assert [p.param("range")[:2] for p in parts] == [(0, 2), (2, 4), (4, 6), (6, 8)]
    rows, _ = run_extract(tmp_path / "run", [str(tmp_path / "big.parquet")], "extract.lists.partition_rows=20", "extract.lists.language=en")
    assert sorted(r["url"] for r in rows) == sorted(f"http://img.example/{i}.jpg" for i in range(n))


@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "text"])
def test_a_text_list_is_cut_at_record_boundaries_and_every_row_is_read_once(tmp_path, fmt):
    """Small byte ranges over captions with quoted line breaks, delimiters and quotes."""
    n = 300
    rows = [{"url": f"http://img.example/{i}.jpg", "caption": f"line one of {i}\nline two, with \"quotes\"\tand a tab" if i % 3 == 0
             else f"caption {i}"} for i in range(n)]
    path = tmp_path / f"list.{fmt}"
    if fmt in ("csv", "tsv"):
        path.write_bytes(_csv_bytes(rows, "," if fmt == "csv" else "\t", invalid=False))
    elif fmt == "jsonl":
        path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    else:
        path.write_text("".join(r["url"] + "\n" for r in rows))
    sets = ["extract.lists.partition_bytes=700", "extract.lists.language=en"]
    wf = wf_of(*sets).model_copy(update={"inputs": [str(path)]})
    parts = extract.plan(str(tmp_path / "run"), wf)
    assert len(parts) > 10
    got, manifests = run_extract(tmp_path / "run", [str(path)], *sets)
    assert sorted(r["url"] for r in got) == sorted(r["url"] for r in rows), "every row once, none split or doubled"
    if fmt != "text":
        want = {r["url"]: " ".join(r["caption"].split()) for r in rows}
        assert all(r["text"] == want[r["url"]] for r in got)
    assert not any(m["errors"] for m in manifests)


def test_a_range_ending_inside_a_quoted_field_fails_loudly(tmp_path):
    data = b'url,caption\nhttp://img.example/1.jpg,"first line\nfake,second"\nhttp://img.example/2.jpg,plain\n'
    p = tmp_path / "tricky.csv"
    p.write_bytes(data)
    layout = urllist.describe(str(p))
    inside = data.index(b"fake")  # a line start that parses as a record of two fields, inside quotes
    cols = ["url", "caption"]
    with pytest.raises(listread.BoundaryError, match="fell inside a quoted field.*partition_bytes: 0"):
        list(listread.read(str(p), layout, urllist.Range(0, inside, False), cols, 100))
    (batch,) = list(listread.read(str(p), layout, urllist.Range(0, inside, True), cols, 100))
    assert batch.n == 0 and batch.bad[0].kind == "truncated_record"  # at a file's real end: one bad record
    whole = list(listread.read(str(p), layout, urllist.Range(0, None, True), cols, 100))
    assert whole[0].columns["caption"] == ["first line\nfake,second", "plain"]


# --- fsspec schemes -------------------------------------------------------------------------------


@pytest.fixture
def http_root(tmp_path):
    with serve_folder(tmp_path) as base:
        yield tmp_path, base


def test_lists_over_http(http_root):
    """`https://` inputs read through fsspec's HTTP filesystem (plain HTTP on 127.0.0.1 here);
    this server answers no range requests, so a text list is read as one partition."""
    root, base = http_root
    for fmt, gz in (("parquet", False), ("csv", True), ("jsonl", False)):
        write_list(root, fmt, gz, name=f"{fmt}.data")
        rows, _ = run_extract(root / f"run-{fmt}", [f"{base}/{fmt}.data"], "extract.lists.partition_bytes=100")
        assert pairs(rows) == sorted(EXPECTED + [("http://img.example/d.jpg", INVALID_AS, "multi")]), fmt


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_s3("lists") as endpoint:
        yield endpoint


def test_lists_on_s3_with_globs_and_byte_ranges(s3_endpoint, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(anon=False)
    for fmt, gz in (("parquet", False), ("tsv", False), ("jsonl", True)):
        fs.pipe(f"lists/in/{fmt}.data", write_list(tmp_path, fmt, gz).read_bytes())
    rows, manifests = run_extract(tmp_path / "run", ["s3://lists/in/*.data"], "extract.lists.partition_bytes=150")
    assert len(manifests) > 3, "the TSV on S3 is read in byte ranges"
    assert pairs(rows) == sorted((EXPECTED + [("http://img.example/d.jpg", INVALID_AS, "multi")]) * 3)


# --- the shipped workflows ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["relaion2b-en", "cc12m", "datacomp"])
def test_shipped_list_workflows_read_lists_of_their_shape(tmp_path, name):
    """Each workflow on a two-row list with its source's columns (as their cards describe them)."""
    from laion_pipe.config import load_workflow

    urls = ["http://img.example/1.jpg", "http://img.example/2.jpg"]
    if name == "relaion2b-en":
        path = tmp_path / "part-00000.parquet"
        pq.write_table(pa.table({"url": urls, "caption": ["a cat", "a dog"], "similarity": [0.31, 0.33],
                                 "hash": pa.array([11, 12], pa.int64()), "punsafe": [0.01, 0.02], "pwatermark": [0.1, 0.2],
                                 "original_width": [800, 900], "original_height": [600, 700], "key": ["000000000", "000000001"],
                                 "status": ["success"] * 2, "sha256": ["ab", "cd"]}), path)
    elif name == "cc12m":
        path = tmp_path / "cc12m.tsv"
        path.write_text(f"{urls[0]}\ta cat on a <PERSON>'s lap\n{urls[1]}\ta dog\n")
    else:
        path = tmp_path / "0000.parquet"
        pq.write_table(pa.table({"uid": ["00000c7d0e8d4c2b9e7d0b5f6f9a1e2d", "00001f2e3d4c5b6a79881726354453627"],
                                 "url": urls, "text": ["a cat", "a dog"], "original_width": [640, 512],
                                 "original_height": [480, 512], "clip_b32_similarity_score": [0.3, 0.25],
                                 "clip_l14_similarity_score": [0.28, 0.2], "face_bboxes": [[[0.1, 0.1, 0.2, 0.2]], []],
                                 "sha256": ["ab", "cd"]}), path)
    wf = load_workflow(REPO / "workflows" / f"{name}.yaml", [f"inputs=[{path}]", "runner.progress=false"])
    rows, (m,) = run_extract(tmp_path / "run", list(wf.inputs), *[f"extract.lists.{k}={json.dumps(v)}" for k, v in
                                                                   wf.extract.lists.model_dump().items()])
    assert sorted(r["url"] for r in rows) == urls
    carried = [orjson.loads(r["source"]) if r["source"] else None for r in rows]
    if name == "relaion2b-en":
        assert {r["subset"] for r in rows} == {"en"} and carried[0]["source_hash"] in (11, 12)
        assert set(carried[0]) == {"source_similarity", "source_hash", "source_punsafe", "source_pwatermark",
                                   "source_original_width", "source_original_height", "source_key", "source_status", "source_sha256"}
    elif name == "cc12m":
        assert sorted(r["text"] for r in rows) == ["a cat on a <PERSON>'s lap", "a dog"] and carried == [None, None]
        assert {r["subset"] for r in rows} == {"en"}
    else:
        assert sorted(r["uid"] for r in rows) == ["00000c7d0e8d4c2b9e7d0b5f6f9a1e2d", "00001f2e3d4c5b6a79881726354453627"]
        assert "face_bboxes" in carried[0] and "source_sha256" in carried[0]

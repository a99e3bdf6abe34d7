"""Blocklist loading and matching (laion_pipe.blocklists), without Dask."""
from __future__ import annotations

import gzip
import hashlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from laion_pipe import blocklists as bl


@pytest.mark.parametrize(
    "entry, expected",
    [
        ("Example.COM.", "example.com"),
        ("*.example.com", "example.com"),
        (".example.com", "example.com"),
        ("https://user@Example.com:8080/path?q", "example.com"),
        ("bücher.de", "xn--bcher-kva.de"),
        ("  ", None),
    ],
)
def test_normalize_domain(entry, expected):
    assert bl.normalize_domain(entry) == expected


def test_url_hosts():
    urls = pa.array(["HTTP://User:pw@Ex.COM:80/x", "https://b.org?x", "https://c.net.", "//nohost/x", "data:x", "http://[::1]/a"])
    assert bl.url_hosts(urls).to_pylist() == ["ex.com", "b.org", "c.net", "", "", "[::1]"]


def test_domain_mask_blocks_domain_and_subdomains_only(tmp_path):
    f = tmp_path / "d.txt.gz"
    f.write_bytes(gzip.compress(b"# comment\nblocked.net\nbucher.example  # trailing words are ignored\nb\xc3\xbccher.de\n"))
    domains = bl.load_domains([str(f)])
    assert domains == {"blocked.net", "bucher.example", "xn--bcher-kva.de"}
    urls = pa.array([
        "http://blocked.net/a", "https://cdn.img.blocked.net/b", "http://notblocked.net/c", "http://blocked.net.evil.com/d",
        "http://bücher.de/e", "http://www.xn--bcher-kva.de/f", "http://ok.com/blocked.net", "mailto:x@blocked.net",
    ])
    assert bl.domain_mask(urls, domains).tolist() == [True, True, False, False, True, True, False, False]
    assert bl.domain_mask(urls, frozenset()).tolist() == [False] * 8


def test_url_hash_lists_by_algorithm(tmp_path):
    urls = ["http://a.com/1.jpg", "http://b.com/2.jpg", "http://c.com/3.jpg", "http://d.com/4.jpg"]
    f = tmp_path / "h.csv"
    f.write_text(
        "# Re-LAION style removal list\n"
        + hashlib.md5(urls[0].encode()).hexdigest() + "\n"
        + hashlib.sha1(urls[1].encode()).hexdigest().upper() + ",extra,fields\n"
        + hashlib.sha256(urls[2].encode()).hexdigest() + "\n"
    )
    hashes = bl.load_url_hashes([str(f)])
    assert len(hashes) == 3 and set(hashes.digests) == {"md5", "sha1", "sha256"}
    assert bl.url_hash_mask(pa.array(urls), hashes).tolist() == [True, True, True, False]


def test_malformed_hash_line_is_an_error(tmp_path):
    f = tmp_path / "h.txt"
    f.write_text("abc123\n")
    with pytest.raises(ValueError, match="h.txt:1"):
        bl.load_url_hashes([str(f)])


def test_iter_curated_parquet_and_text(tmp_path):
    p = tmp_path / "laion.parquet"
    pq.write_table(pa.table({"URL": ["u1", None, "u3"], "TEXT": ["t1", "t2", None], "similarity": [0.3, 0.3, 0.3]}), p)
    got = pa.concat_tables(bl.iter_curated(str(p), with_text=False, batch_rows=2))
    assert got.column_names == ["url"] and got["url"].to_pylist() == ["u1", "u3"]
    got = pa.concat_tables(bl.iter_curated(str(p), with_text=True))
    assert got.to_pylist() == [{"url": "u1", "text": "t1"}]

    t = tmp_path / "urls.txt"
    t.write_text("# earlier run\nhttp://a/1\n\nhttp://a/2\n")
    assert pa.concat_tables(bl.iter_curated(str(t), with_text=False))["url"].to_pylist() == ["http://a/1", "http://a/2"]
    with pytest.raises(ValueError, match="url_text"):
        list(bl.iter_curated(str(t), with_text=True))

    nourl = tmp_path / "x.parquet"
    pq.write_table(pa.table({"link": ["a"]}), nourl)
    with pytest.raises(ValueError, match="url or URL column"):
        list(bl.iter_curated(str(nourl), with_text=False))


def test_curated_mask_on_pairs():
    keys = bl.pair_keys(pa.array(["u1", "u1", "u2"]), pa.array(["a", "b", "a"]))
    cur = bl.pair_keys(pa.array(["u1", "u2"]), pa.array(["b", "x"]))
    assert bl.curated_mask(keys, cur).tolist() == [False, True, False]
    assert bl.curated_mask(pa.array(["u1"]), pa.array([], pa.string())).tolist() == [False]

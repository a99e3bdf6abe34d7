"""Blocklist loading and matching (laion_pipe.blocklists), without Dask."""
from __future__ import annotations

import gzip
import hashlib

import numpy as np
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
    f.write_bytes(gzip.compress(b"# comment\nblocked.net\nbucher.example  # trailing words are ignored\nb\xc3\xbccher.de\n"
                                b"*.Wild.ORG.\nhttps://user@Url.example:8080/x\n\n"))
    domains = bl.load_domains([str(f)])
    assert len(domains) == 5
    assert [d in domains for d in ("blocked.net", "bucher.example", "xn--bcher-kva.de", "wild.org", "url.example")] == [True] * 5
    assert [d in domains for d in ("net", "notblocked.net", "bücher.de", "example")] == [False] * 4
    urls = pa.array([
        "http://blocked.net/a", "https://cdn.img.blocked.net/b", "http://notblocked.net/c", "http://blocked.net.evil.com/d",
        "http://bücher.de/e", "http://www.xn--bcher-kva.de/f", "http://ok.com/blocked.net", "mailto:x@blocked.net",
    ])
    assert bl.domain_mask(urls, domains).tolist() == [True, True, False, False, True, True, False, False]
    assert bl.domain_mask(urls, bl.DomainList.of([])).tolist() == [False] * 8


def test_domain_list_lookups_agree_with_a_python_set():
    """Many random names against a list of many: the 128-bit hash lookup gives a Python set's answers."""
    import random

    rnd = random.Random(4)
    listed = {f"h{rnd.randrange(10**6)}.example{rnd.randrange(50)}.com" for _ in range(20_000)}
    probes = [f"h{rnd.randrange(10**6)}.example{rnd.randrange(50)}.com" for _ in range(20_000)] + sorted(listed)[:500]
    got = bl.DomainList.of(listed).contains(probes)
    assert got.tolist() == [p in listed for p in probes] and got.sum() >= 500


def _digests_by_algo(path, **kw) -> dict:
    found: dict = {}
    for block in bl.iter_digests(str(path), **kw):
        for algo, d in block.items():
            found.setdefault(algo, []).append(d)
    return {a: np.concatenate(v) for a, v in found.items()}


def test_url_hash_lists_by_algorithm(tmp_path):
    urls = ["http://a.com/1.jpg", "http://b.com/2.jpg", "http://c.com/3.jpg", "http://d.com/4.jpg"]
    f = tmp_path / "h.csv"
    f.write_text(
        "# Re-LAION style removal list\n"
        + hashlib.md5(urls[0].encode()).hexdigest() + "\n"
        + hashlib.sha1(urls[1].encode()).hexdigest().upper() + ",extra,fields\n\n"
        + "  " + hashlib.sha256(urls[2].encode()).hexdigest() + "\t# trailing comment\n"
    )
    found = _digests_by_algo(f)
    assert {a: len(d) for a, d in found.items()} == {"md5": 1, "sha1": 1, "sha256": 1}
    for i, algo in enumerate(("md5", "sha1", "sha256")):
        hits = bl.SortedDigests(found[algo]).contains(bl.url_digests(urls, algo))
        assert hits.tolist() == [j == i for j in range(4)]


def test_hex_digests_match_hashlib_across_blocks(tmp_path):
    """Vectorised hex parsing, block by block, against hashlib's own hex digests."""
    import random

    rnd = random.Random(1)
    urls = [f"https://x{rnd.randrange(10**9)}.example/{i}.jpg" for i in range(3000)]
    lines = [hashlib.sha256(u.encode()).hexdigest() for u in urls]
    lines = [ln.upper() if i % 3 == 0 else ln for i, ln in enumerate(lines)]
    (tmp_path / "h.txt").write_text("\n".join(lines) + "\n")
    got = _digests_by_algo(tmp_path / "h.txt", block_bytes=4096)["sha256"]
    assert [bytes(row) for row in got] == [hashlib.sha256(u.encode()).digest() for u in urls]
    assert (bl.url_digests(urls, "sha256") == got).all()
    prefix = bl.digest_prefix(got)
    assert prefix.tolist() == [int.from_bytes(hashlib.sha256(u.encode()).digest()[:8], "big") for u in urls]


def test_malformed_hash_line_is_an_error_with_its_line(tmp_path):
    f = tmp_path / "h.txt"
    f.write_text("abc123\n")
    with pytest.raises(ValueError, match="h.txt:1"):
        bl.check_digests(str(f))
    good = hashlib.md5(b"x").hexdigest()
    f.write_text("# list\n" + (good + "\n") * 5000 + "\n" + good[:-1] + "g\n" + good + "\n")
    bl.check_digests(str(f), head_bytes=1024)  # the head is fine: the task that streams it finds line 5003
    with pytest.raises(ValueError, match=r"h.txt:5003: '.*g' is not a hex"):
        list(bl.iter_digests(str(f), block_bytes=2048))


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

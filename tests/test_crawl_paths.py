"""Inputs to file lists: globs, directories, URLs, and crawl ids read from a `wat.paths.gz`
served by a local stand-in for Common Crawl (a directory, then a loopback HTTP server)."""
from __future__ import annotations

import contextlib
import gzip
import http.server
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from laion_pipe.config import ConfigError, workflow_from_dict
from laion_pipe.crawl.paths import crawl_files, is_crawl_id, listing_url, resolve_inputs
from laion_pipe.demo.watgen import Page, write_wat
from laion_pipe.stages import extract
from servers import serve_folder

CRAWL = "CC-MAIN-2023-14"


def _fake_crawl(root: Path, n_files: int = 5, with_files: bool = False) -> list[str]:
    """A Common Crawl layout under `root`: the listing, and (optionally) the WAT files it names."""
    rels = [f"crawl-data/{CRAWL}/segments/1679296943471.{i}/wat/CC-MAIN-2023-{i:05d}.warc.wat.gz" for i in range(n_files)]
    listing = root / "crawl-data" / CRAWL / "wat.paths.gz"
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_bytes(gzip.compress(("\n".join(rels) + "\n").encode()))
    if with_files:
        for i, rel in enumerate(rels):
            page = Page(f"https://site{i}.example/p.html", [(f"/img/{i}.jpg", f"a photo of mountain number {i}")])
            write_wat([page], str(root / rel))
    return rels


def test_crawl_id_pattern():
    assert is_crawl_id("CC-MAIN-2023-14") and is_crawl_id("CC-MAIN-2014-35")
    assert not is_crawl_id("CC-MAIN-2023") and not is_crawl_id("cc-main-2023-14") and not is_crawl_id("x/CC-MAIN-2023-14")
    assert listing_url(CRAWL) == f"https://data.commoncrawl.org/crawl-data/{CRAWL}/wat.paths.gz"
    assert listing_url(CRAWL, "s3://commoncrawl/") == f"s3://commoncrawl/crawl-data/{CRAWL}/wat.paths.gz"


def test_crawl_files_from_a_local_mirror(tmp_path):
    rels = _fake_crawl(tmp_path)
    assert crawl_files(CRAWL, str(tmp_path), max_files=3) == [f"{tmp_path}/{r}" for r in rels[:3]]
    assert len(crawl_files(CRAWL, str(tmp_path))) == 5
    with pytest.raises(ConfigError, match="not a crawl id"):
        crawl_files("CC-MAIN-2023", str(tmp_path))
    missing = f"{tmp_path}/crawl-data/CC-MAIN-2019-01/wat.paths.gz"
    with pytest.raises(ConfigError, match=f"CC-MAIN-2019-01: cannot read .*{missing}: no such file"):
        crawl_files("CC-MAIN-2019-01", str(tmp_path))


def test_crawl_id_over_http_then_extract_streams_the_files(tmp_path, dask_client):
    root = tmp_path / "mirror"
    rels = _fake_crawl(root, n_files=4, with_files=True)
    with serve_folder(root) as base:
        files = resolve_inputs([CRAWL], max_files=2, base=base)
        assert files == [f"{base}/{r}" for r in rels[:2]]
        wf = workflow_from_dict({"inputs": [CRAWL], "runner": {"progress": False},
                                 "extract": {"max_files": 2, "crawl_base_url": base}})
        out = tmp_path / "run"
        report = extract.run(str(out), wf, dask_client)
    assert report.complete and report.done == 2
    assert report.kept["en"] == 2


def test_resolve_inputs_globs_dirs_and_order(tmp_path, monkeypatch):
    d = tmp_path / "in"
    d.mkdir()
    for name in ["b.wat.gz", "a.wat.gz", "c.warc.gz", ".hidden"]:
        (d / name).write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    got = resolve_inputs(["in/*.wat.gz", str(d / "c.warc.gz"), "in", "in/a.wat.gz"])
    assert got == [str(d / "a.wat.gz"), str(d / "b.wat.gz"), str(d / "c.warc.gz")]  # each file once, in order
    assert resolve_inputs(["in/missing.wat"]) == [str(d / "missing.wat")]  # found out when read
    assert resolve_inputs(["s3://bucket/x.wat.gz"]) == ["s3://bucket/x.wat.gz"]
    with pytest.raises(ConfigError, match="no file matches"):
        resolve_inputs(["in/*.nothing"])


# ----------------------------------------------------------------------------------------------
# A crawl id on a machine that cannot reach Common Crawl: one line naming the URL and the cause


@contextlib.contextmanager
def _status_server(status: int):
    """A loopback server answering every request with `status`."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _unreachable(kind: str):
    """(base URL, the cause the error must name) for each way Common Crawl can be out of reach.
    The DNS case uses a `.invalid` name (RFC 6761): only the local resolver is asked."""
    if kind in ("404", "500"):
        with _status_server(int(kind)) as base:
            yield base, f"HTTP {kind}"
    elif kind == "refused":
        port = _closed_port()
        yield f"http://127.0.0.1:{port}", f"connection refused by 127.0.0.1:{port}"
    else:
        yield "https://data.commoncrawl.invalid", "DNS lookup of data.commoncrawl.invalid failed"


@pytest.mark.parametrize("kind", ["404", "500", "refused", "dns"])
def test_unreachable_listing_is_a_config_error_naming_url_and_cause(kind):
    with _unreachable(kind) as (base, cause):
        with pytest.raises(ConfigError) as err:
            resolve_inputs([CRAWL], max_files=1, base=base)
    message = str(err.value)
    assert listing_url(CRAWL, base) in message and cause in message
    assert "\n" not in message and len(message) < 300


def _cli(*args: str) -> list[str]:
    """The command as a user runs it (`python -m laion_pipe` once the package has a __main__)."""
    import importlib.util

    module = "laion_pipe" if importlib.util.find_spec("laion_pipe.__main__") else "laion_pipe.cli"
    return [sys.executable, "-m", module, *args]


def _run_cli_against(kind: str, out: Path) -> tuple[subprocess.CompletedProcess, str, str]:
    with _unreachable(kind) as (base, cause):
        proc = subprocess.run(
            _cli("extract", CRAWL, "--max-files", "1", "--out", str(out), "--no-progress",
                 "--set", f"extract.crawl_base_url={base}"),
            capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "400"},
        )
    return proc, base, cause


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["404", "refused", "dns"])
def test_cli_crawl_id_unreachable_exits_2_with_one_line(kind, tmp_path):
    proc, base, cause = _run_cli_against(kind, tmp_path / "run")
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 3 and "Traceback" not in proc.stderr, proc.stderr
    assert listing_url(CRAWL, base) in proc.stderr and cause in proc.stderr


def test_cli_crawl_id_unreachable_makes_no_run_directory(tmp_path):
    out = tmp_path / "run"
    proc, _, _ = _run_cli_against("dns", out)
    assert proc.returncode == 2, proc.stderr
    assert not out.exists(), f"a run directory was made before the inputs were known: {sorted(out.rglob('*'))}"


def test_extract_check_resolves_inputs_before_any_work(tmp_path):
    rels = _fake_crawl(tmp_path / "mirror", n_files=5)
    wf = workflow_from_dict({"inputs": [CRAWL], "extract": {"max_files": 3, "crawl_base_url": str(tmp_path / "mirror")}})
    assert extract.check(wf) == 3 and len(rels) == 5
    with _unreachable("refused") as (base, cause):
        wf = workflow_from_dict({"inputs": [CRAWL], "extract": {"crawl_base_url": base}})
        with pytest.raises(ConfigError, match=cause):
            extract.check(wf)

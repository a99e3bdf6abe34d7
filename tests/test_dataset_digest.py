"""The demo world's dataset, pinned: every recipe's keys, image and caption bytes and LAION
columns, compared with a digest stored in `tests/data/demo_dataset_digest.json`.

Refactors of the pipeline must leave the dataset byte-identical; this test says so, or names the
first sample that differs. The digest covers, per `dataset/{recipe}/` sample: its key, the sha256
of its image member and of its `.txt` member, and the sha256 of its parquet row's LAION-5B columns
plus ours (`aesthetic, uid, subset`; floats rounded to 4 decimals, so that a CPU whose BLAS sums in
another order still agrees). It leaves out the `.json` member's bytes on purpose: that member
gains img2dataset's keys (issue 11) without the dataset changing.

The world's image server listens on a fixed port (URLs are hashed into `uid`, `hash` and the dedup
order, so every key depends on them). When a change is meant to alter the dataset, regenerate the
digest with `python tests/test_dataset_digest.py --regenerate` and say why in the commit.
"""
from __future__ import annotations

import hashlib
import json
import math
import socket
import sys
import tarfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

DIGEST = Path(__file__).parent / "data" / "demo_dataset_digest.json"
PORT = 18471
"""The image server's port: fixed, below Linux's ephemeral range, so other tests' servers (port 0)
never take it."""
SPEC = {"n_pages": 12, "images_per_page": 6, "n_wat_files": 3, "seed": 7}
OVERRIDES = ["dedup.rows_per_part=12", "select.samples_per_shard=20", "runner.progress=false"]
ROW_COLUMNS = ("URL", "TEXT", "WIDTH", "HEIGHT", "similarity", "hash", "punsafe", "pwatermark", "LANGUAGE",
               "aesthetic", "uid", "subset")


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:20]


def _canonical(value):
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 4)
    return value


def dataset_digest(out: Path) -> dict:
    """{recipe: {key: "image-ext:sha txt-sha row-sha"}} over `out/dataset/*/`."""
    found: dict[str, dict[str, list[str]]] = {}
    for tar in sorted((out / "dataset").glob("*/*.tar")):
        recipe = found.setdefault(tar.parent.name, {})
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                key, _, ext = m.name.partition(".")
                entry = recipe.setdefault(key, ["", "", "no parquet row"])
                data = tf.extractfile(m).read()
                if ext == "txt":
                    entry[1] = _sha(data)
                elif ext != "json":
                    entry[0] = f"{ext}:{_sha(data)}"
    for pqf in sorted((out / "dataset").glob("*/*.parquet")):
        recipe = found.setdefault(pqf.parent.name, {})
        for row in pq.read_table(pqf).to_pylist():
            entry = recipe.setdefault(row["key"], ["", "", ""])
            laion = json.dumps({c: _canonical(row[c]) for c in ROW_COLUMNS}, sort_keys=True)
            entry[2] = _sha(laion.encode()) if entry[2] in ("", "no parquet row") else "repeated key"
    return {name: {key: " ".join(entry) for key, entry in recipe.items()} for name, recipe in found.items()}


def _wait_for_port(port: int, timeout: float = 60.0) -> None:
    """Another run of this test may hold the port: wait for it rather than fail at once."""
    t0 = time.time()
    while True:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return
            except OSError:
                if time.time() - t0 > timeout:
                    raise RuntimeError(f"127.0.0.1:{port} stays busy: the digest needs this fixed port") from None
        time.sleep(0.5)


def run_demo_world(out: Path, client) -> dict:
    """The demo workflow on a small demo world (fixed seed, fixed port); returns its digest."""
    from laion_pipe.demo.imageserver import ImageServer
    from laion_pipe.demo.run import demo_workflow
    from laion_pipe.demo.world import WorldSpec, build_world
    from laion_pipe.pipeline import PIPELINE_STAGES, run_stages

    _wait_for_port(PORT)
    server = ImageServer(port=PORT).start()
    try:
        world = build_world(out / "world", WorldSpec(**SPEC), server=server)
        wf = demo_workflow(world.wat_paths, str(out), OVERRIDES)
        reports = run_stages(wf, str(out), PIPELINE_STAGES, client)
    finally:
        server.stop()
    failed = {r.stage: r.failed for r in reports if r.failed}
    assert not failed, failed
    return dataset_digest(out)


def assert_same_digest(got: dict, want: dict) -> None:
    """Same recipes, same keys, same entries; the message names the first difference."""
    assert sorted(got) == sorted(want), f"recipes differ: {sorted(got)} != {sorted(want)}"
    for recipe in sorted(want):
        g, w = got[recipe], want[recipe]
        assert sorted(g) == sorted(w), f"{recipe}: keys differ: only here {sorted(set(g) - set(w))[:5]}, missing {sorted(set(w) - set(g))[:5]}"
        for key in sorted(w):
            for what, a, b in zip(("image", "caption", "parquet row"), g[key].split(" "), w[key].split(" ")):
                assert a == b, f"{recipe}/{key}: the {what} differs ({a} != {b})"


@pytest.mark.slow
def test_demo_dataset_is_unchanged(tmp_path, dask_client):
    want = json.loads(DIGEST.read_text())
    got = run_demo_world(tmp_path / "run", dask_client)
    assert sum(len(v) for v in got.values()) > 50, "the small demo world must yield a real dataset"
    assert_same_digest(got, want["recipes"])


def _regenerate() -> None:
    import tempfile

    from distributed import Client, LocalCluster

    with tempfile.TemporaryDirectory() as tmp, LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                                            dashboard_address=":0") as cluster, Client(cluster) as client:
        digest = run_demo_world(Path(tmp) / "run", client)
    DIGEST.parent.mkdir(exist_ok=True)
    DIGEST.write_text(json.dumps({"spec": SPEC, "overrides": OVERRIDES, "port": PORT, "recipes": digest},
                                 indent=1, sort_keys=True) + "\n")
    print(f"wrote {DIGEST}: {sum(len(v) for v in digest.values())} samples in {len(digest)} recipes")


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        sys.exit("usage: python tests/test_dataset_digest.py --regenerate")
    _regenerate()

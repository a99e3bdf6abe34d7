"""Shard paths and reading a shard in key order (`laion_pipe/shards.py`): the layout every stage
and the training loader share."""
from __future__ import annotations

import io
import tarfile

import pytest

from laion_pipe import runner, shards
from laion_pipe.stages import dedup, download
from shards import record_done


def _tar(path, members: list[tuple[str, bytes]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))


def test_paths_are_the_documented_layout():
    assert shards.unique_part("en", 3) == "unique/en/part-00003.parquet" == dedup.part_path("en", 3)
    assert shards.image_shard("multi", "00012") == {
        "tar": "images/multi/00012.tar", "parquet": "images/multi/00012.parquet", "stats": "images/multi/00012_stats.json",
    } == download.shard_paths("multi", 12)  # fmt: skip
    assert shards.score_shard("en", "00001")["scores"] == "scores/en/00001.parquet"
    assert shards.score_shard("en", "00001")["img_emb"] == "scores/en/embeddings/img_emb/img_emb_00001.npy"
    assert shards.dataset_shard("laion2B-en", 7) == {"tar": "dataset/laion2B-en/00007.tar", "parquet": "dataset/laion2B-en/00007.parquet"}


def test_listings_are_the_current_plans_not_the_folders(tmp_path):
    """Readers list what each stage's current plan has done, never what lies in a folder: files
    an older plan left, a temporary file or a stray file are not inputs."""
    out = str(tmp_path)
    for rel in ("dataset/en/00001.tar", "dataset/en/00000.tar", "dataset/en/00000.parquet", "dataset/en/_recipe.json",
                "dataset/en/.tmp-abc-00002.tar", "dataset/en/00002.tar", "images/en/00004.tar", "images/en/00004.parquet",
                "images/en/00005.tar", "unique/nolang/part-00002.parquet", "unique/nolang/notes.parquet",
                "unique/nolang/part-00003.parquet"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    record_done(out, "select", "en-00000", ["dataset/en/00000.tar", "dataset/en/00000.parquet"])
    record_done(out, "select", "en-00001", ["dataset/en/00001.tar"])
    record_done(out, "download", "en-00004", ["images/en/00004.tar", "images/en/00004.parquet"])
    record_done(out, "dedup", "nolang-part-00002", ["unique/nolang/part-00002.parquet"])
    assert shards.dataset_tars(out, "en") == [f"{out}/dataset/en/00000.tar", f"{out}/dataset/en/00001.tar"]
    assert [i for i, _ in shards.dataset_files(out, "en")] == [0, 0, 1]
    assert [name for name, _ in shards.image_shards(out, "en")] == ["00004"] and shards.image_shards(out, "multi") == []
    assert [p[:3] for p in shards.unique_parts(out)] == [("nolang", 2, f"{out}/unique/nolang/part-00002.parquet")]
    assert shards.current_dataset_parquets(out) == {"en": [f"{out}/dataset/en/00000.parquet"]}
    # a partition done with another fingerprint than its plan's is not current
    m = runner.read_manifest(out, "download", "en-00004")
    runner.write_manifest(out, "download", "en-00004", fingerprint="other", inputs=[], outputs=m["outputs"])
    assert shards.image_shards(out, "en") == []
    # the stale files are what no planned partition claims (temporary files are clean's)
    assert runner.stale(out, "select").files == ["dataset/en/00002.tar", "dataset/en/_recipe.json"]
    assert runner.stale(out, "dedup").files == ["unique/nolang/notes.parquet", "unique/nolang/part-00003.parquet"]


def test_samples_come_in_key_order_whatever_the_tar_order(tmp_path):
    tar = tmp_path / "00000.tar"
    _tar(tar, [("b.jpg", b"B"), ("b.txt", b"bt"), ("a.png", b"A"), ("a.txt", b"at"), ("c.txt", b"no image")])
    samples = list(shards.iter_tar_samples(str(tar)))
    assert [s["__key__"] for s in samples] == ["a", "b", "c"]
    assert [shards.image_member(s) for s in samples] == [("png", b"A"), ("jpg", b"B"), None]


def test_truncated_tar_yields_complete_samples_then_raises(tmp_path):
    tar = tmp_path / "00000.tar"
    _tar(tar, [("a.jpg", b"A" * 600), ("b.jpg", b"B" * 5000)])
    data = tar.read_bytes()
    tar.write_bytes(data[: 512 + 1024 + 512 + 1000])  # a's header and data, b's header, part of b
    got = []
    with pytest.raises(tarfile.ReadError):
        for s in shards.iter_tar_samples(str(tar)):
            got.append(s["__key__"])
    assert got == ["a"]

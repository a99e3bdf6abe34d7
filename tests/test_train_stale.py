"""Training and evaluation under the run-directory rule: a training run whose dataset was rebuilt
is not skipped as done, and evaluate of a model trained on data that changed since says so.
(No training here: the bookkeeping is checked on recorded partitions.)"""
from __future__ import annotations

from pathlib import Path

from laion_pipe import runner
from laion_pipe.config import workflow_from_dict
from laion_pipe.evaluate.stage import training_data_note
from laion_pipe.train import stage as train_stage
from laion_pipe.train.loader_sources import resolve_source
from shards import record_done


def _shard(out: Path, name: str, index: int, payload: bytes) -> str:
    rel = f"dataset/{name}/{index:05d}.tar"
    (out / rel).parent.mkdir(parents=True, exist_ok=True)
    (out / rel).write_bytes(payload)
    record_done(out, "select", f"{name}-{index:05d}", [rel])
    return rel


def test_a_rebuilt_dataset_changes_the_training_fingerprint(tmp_path):
    out = tmp_path / "run"
    wf = workflow_from_dict({"train": {"name": "t", "model": "demo", "sources": ["en"]}})
    _shard(out, "en", 0, b"a" * 1024)
    _shard(out, "en", 1, b"b" * 1024)
    (out / "dataset" / "en" / "00007.tar").write_bytes(b"left by an older plan")
    found = {"en": resolve_source("en", str(out))}
    assert [Path(p).name for p in found["en"]] == ["00000.tar", "00001.tar"]  # the select plan's, not the folder's
    before = train_stage.fingerprint(wf, found, str(out))
    assert train_stage.fingerprint(wf, found, str(out)) == before
    # select redoes shard 1 (say, a blocklist was added upstream) and the tar's size and time stay
    # as they were: the partition's new fingerprint alone tells the training is not done any more
    runner.write_manifest(str(out), "select", "en-00001", fingerprint="rebuilt", inputs=[],
                          outcome=runner.Outcome(outputs=["dataset/en/00001.tar"]))
    runner.write_plan(str(out), "select", [runner.Partition("en-00000", (), runner.read_manifest(str(out), "select", "en-00000")["fingerprint"]),
                                           runner.Partition("en-00001", (), "rebuilt")])
    assert train_stage.fingerprint(wf, found, str(out)) != before


def test_evaluate_says_when_the_training_data_changed(tmp_path):
    out = tmp_path / "run"
    _shard(out, "en", 0, b"a" * 1024)
    shards = {"en": resolve_source("en", str(out))}
    upstream = train_stage.dataset_upstream(str(out), shards)
    assert [ref[1] for ref in upstream] == ["en-00000"]
    runner.write_plan(str(out), "train", [runner.Partition("t", (), "fp", upstream=upstream)])
    runner.write_manifest(str(out), "train", "t", fingerprint="fp", inputs=[])
    assert training_data_note(str(out), "t") is None
    _shard(out, "en", 0, b"c" * 2048)  # select redid the shard the model was trained on
    note = training_data_note(str(out), "t")
    assert note is not None and "train/t" in note and "changed" in note
    assert training_data_note(str(out), "never-trained") is None

"""The stage table and running stages by name: the `--stages` grammar, and a stage added later as
one row (not a Dask job, not in the funnel, run after select) plugging into `run`, its own
subcommand and `status` without touching anything else."""
from __future__ import annotations

import pytest

from laion_pipe import pipeline, schema
from laion_pipe.cli import main
from laion_pipe.config import ConfigError, workflow_from_dict
from laion_pipe.runner import Outcome, StageReport, is_done, write_manifest
from laion_pipe.stages import registry

CALLS: list[dict] = []


def toy_run(out: str, wf, client, steps: int | None = None) -> StageReport:
    """A stage the way training will be: no Dask partitions, its own bookkeeping."""
    CALLS.append({"out": out, "client": client, "steps": steps, "force": wf.runner.force})
    o = Outcome()
    o.counts["steps"] = steps or 1
    write_manifest(out, "toy", "all", fingerprint="fp", inputs=[], outcome=o)
    return StageReport(stage="toy", planned=1, done=1)


TOY = registry.Stage(
    name="toy", entry="test_pipeline:toy_run", out_dir="toy", curation=False, funnel=False, dask=False,
    help="a toy stage added as one row", description="Runs after the curation stages.",
    options=(registry.Option(("--steps",), type=int, metavar="N", kwarg="steps", help="how many steps"),),
)  # fmt: skip


@pytest.fixture
def with_toy(monkeypatch):
    monkeypatch.setattr(registry, "STAGE_TABLE", (*registry.STAGE_TABLE, TOY))
    CALLS.clear()
    yield
    CALLS.clear()


def test_names_say_what_they_mean():
    assert schema.PIPELINE == pipeline.PIPELINE_STAGES == ("extract", "dedup", "download", "score", "select", "index", "stats")
    assert schema.FUNNEL_STAGES == ("extract", "dedup", "download", "score", "select")
    assert schema.STAGE_DIRS["select"] == "dataset" and not hasattr(schema, "STAGES")  # one name per meaning
    assert [s.name for s in registry.STAGE_TABLE] == list(registry.ORDER)


@pytest.mark.parametrize(("spec", "stages"), [
    (None, ["extract", "dedup", "download", "score", "select", "index", "stats"]),
    ("dedup,extract", ["extract", "dedup"]),
    ("download:", ["download", "score", "select", "index", "stats"]),
    (":dedup", ["extract", "dedup"]),
    ("select:stats", ["select", "index", "stats"]),
])  # fmt: skip
def test_stages_grammar(spec, stages):
    assert pipeline.parse_stages(spec) == stages


@pytest.mark.parametrize("spec", ["nope", "extract,nope", "nope:", ":nope", "stats:extract"])
def test_unknown_stage_or_empty_range_is_a_config_error(spec):
    with pytest.raises(ConfigError, match="stage"):
        pipeline.parse_stages(spec)


def test_a_later_stage_is_one_row(with_toy, tmp_path, capsys):
    # `run` keeps its default; the new stage runs when named, alone or in a range
    assert pipeline.parse_stages(None) == list(schema.PIPELINE)
    assert pipeline.parse_stages("select:") == ["select", "index", "stats"]  # an open range never starts it
    assert pipeline.parse_stages("select:toy") == ["select", "index", "stats", "train", "evaluate", "toy"]
    assert pipeline.parse_stages("train:") == ["train", "evaluate", "toy"]  # a range from a non-curation stage keeps to its kind
    assert pipeline.parse_stages("toy") == ["toy"] and pipeline.parse_stages("toy:") == ["toy"]
    # run_stages hands it the client, which it may ignore
    wf = workflow_from_dict({"runner": {"progress": False}})
    (report,) = pipeline.run_stages(wf, str(tmp_path / "a"), ["toy"], client="a dask client", toy={"steps": 3})
    assert report.stage == "toy" and CALLS[-1] == {"out": str(tmp_path / "a"), "client": "a dask client", "steps": 3, "force": False}
    # its own subcommand, with its option and the common ones, starts no cluster for a non-Dask stage
    out = tmp_path / "b"
    assert main(["toy", "--out", str(out), "--steps", "5", "--force", "--no-progress"]) == 0
    assert CALLS[-1] == {"out": str(out), "client": None, "steps": 5, "force": True}
    assert is_done(str(out), "toy", "all", "fp") and (out / "_state" / "workflow.yaml").is_file()
    # status lists it with the others
    assert main(["status", str(out), "--json"]) == 0
    assert '"toy"' in capsys.readouterr().out

"""The `laion-pipe` command: help, config errors before work, extract + status end to end, stats
on a run directory and on LAION's files."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from laion_pipe.cli import build_parser, main
from laion_pipe.stages.registry import STAGE_TABLE

SUBCOMMANDS = ["run", "extract", "dedup", "download", "score", "select", "index", "stats", "demo", "clean", "status", "serve"]
ENV = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "COLUMNS": "120"}


def test_every_stage_of_the_table_has_a_subcommand():
    choices = build_parser()._subparsers._group_actions[0].choices
    assert set(SUBCOMMANDS) <= set(choices)
    assert {s.name for s in STAGE_TABLE} <= set(choices)


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_help_renders_as_a_user_runs_it(cmd):
    """`python -m laion_pipe CMD --help` in a fresh process: exit 0, and no `%%` (argparse
    %-formats help strings but not descriptions, so a description must say `%` plainly)."""
    r = subprocess.run([sys.executable, "-m", "laion_pipe", cmd, "--help"], capture_output=True, text=True, timeout=120, env=ENV)
    assert r.returncode == 0, r.stderr
    assert "%%" not in r.stdout and "usage: laion-pipe" in r.stdout
    if cmd == "stats":
        assert "% NSFW" in r.stdout.replace("\n", " ")


def test_stage_commands_import_no_torch():
    """Help and the CLI's startup stay cheap: the model code is imported by the stages that use it."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "laion_pipe", "extract", "--help"],
                       capture_output=True, text=True, timeout=120, env=ENV)
    assert r.returncode == 0, r.stderr
    imported = {line.rpartition("|")[2].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "laion_pipe.cli" in imported and "laion_pipe.stages.registry" in imported  # the check sees imports at all
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}


@pytest.mark.parametrize("cmd", SUBCOMMANDS)
def test_every_subcommand_has_help_for_every_option(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([cmd, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    sub = build_parser()._subparsers._group_actions[0].choices[cmd]
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{cmd} {action.option_strings} has no help"
            assert action.option_strings[-1] in text or action.option_strings[0] in text


def test_config_error_names_key_and_does_no_work(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["extract", "nothing.wat", "--out", str(out), "--set", "extract.min_txt_chars=3"])
    assert code == 2
    assert "extract.min_txt_chars: unknown key" in capsys.readouterr().err
    assert not out.exists()


def test_bad_workflow_file(tmp_path, capsys):
    wf = tmp_path / "w.yaml"
    wf.write_text("download:\n  timeout: -1\n")
    assert main(["run", str(wf), "--out", str(tmp_path / "r")]) == 2
    assert "download.timeout" in capsys.readouterr().err


def test_extract_then_status_on_real_sample(cc_samples, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["extract", str(cc_samples / "CC-MAIN-2014-35-excerpt.warc.wat.gz"), str(cc_samples / "CC-MAIN-2024-22-whirlwind.warc.wat.gz"),
            "--out", str(out), "--no-progress", "--set", "cluster.n_workers=1", "--set", "cluster.processes=false"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["status", str(out), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["extract"] == {"done": ["part-00000", "part-00001"], "failed": [], "pending": []}
    # the saved workflow lets the next command run with --out alone, and a rerun skips done work
    assert (out / "_state" / "workflow.yaml").exists()
    assert main(["extract", "--out", str(out), "--no-progress"]) == 0
    assert "2 skipped" in capsys.readouterr().err.replace("\n", " ")
    assert main(["extract", "--out", str(out), "--no-progress", "--force"]) == 0
    assert "2 done, 0 skipped" in capsys.readouterr().err.replace("\n", " ")
    assert "force: false" in (out / "_state" / "workflow.yaml").read_text()  # --force is not saved with the run
    # --set runner.force=true on the command line forces too (it was silently overwritten), once
    assert main(["extract", "--out", str(out), "--no-progress", "--set", "runner.force=true"]) == 0
    assert "2 done, 0 skipped" in capsys.readouterr().err.replace("\n", " ")
    assert main(["extract", "--out", str(out), "--no-progress"]) == 0
    assert "2 skipped" in capsys.readouterr().err.replace("\n", " ")


def test_unreadable_input_is_a_failed_partition_and_exit_1(tmp_path, capsys):
    bad = tmp_path / "missing-dir" / "nope.warc.wat.gz"
    good = tmp_path / "empty.wat"
    good.write_bytes(b"")
    out = tmp_path / "run"
    code = main(["extract", str(good), str(tmp_path / "*.wat"), "--out", str(out), "--no-progress",
                 "--set", "cluster.n_workers=1", "--set", "cluster.processes=false", "--set", "runner.retries=0"])
    assert code == 1  # an empty file is not a WAT: that partition fails, the run says incomplete
    assert "part-00000" in capsys.readouterr().err
    assert main(["status", str(out), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["extract"]["failed"] == ["part-00000"]
    # a path that does not exist at all is reported before work, not as a crash
    code = main(["extract", str(bad), "--out", str(tmp_path / "run2"), "--no-progress",
                 "--set", "cluster.n_workers=1", "--set", "cluster.processes=false"])
    err = capsys.readouterr().err
    assert code == 1 and "nope.warc.wat.gz" in err and "FileNotFoundError" in err


def test_console_script_is_installed():
    """The installed `laion-pipe` script itself (found beside this interpreter, not on PATH, which
    an environment that is not activated leaves out) runs the CLI."""
    (ep,) = entry_points(group="console_scripts", name="laion-pipe")
    assert ep.value == "laion_pipe.cli:main"
    folders = [Path(sysconfig.get_path("scripts")), Path(sys.executable).parent]
    script = next((f / "laion-pipe" for f in folders if (f / "laion-pipe").is_file()), None)
    assert script is not None, f"no laion-pipe script in {folders}"
    r = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60, env=ENV)
    assert r.returncode == 0 and "extract" in r.stdout and "usage: laion-pipe" in r.stdout


def test_stats_on_a_run_directory_uses_its_saved_workflow(tmp_path, capsys):
    from test_stats import EXPECTED, build_run

    from laion_pipe.config import workflow_from_dict
    from laion_pipe.pipeline import save_workflow

    run = build_run(tmp_path / "run")
    save_workflow(str(run), workflow_from_dict({"stats": {"plots": False}}))  # the defaults draw plots
    assert main(["stats", str(run), "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out) == list(EXPECTED.values())
    assert (run / "stats" / "report.html").is_file() and not (run / "stats" / "plots").exists()


def test_stats_on_many_files_and_on_a_quoted_glob(tmp_path, capsys):
    from test_stats import MULTI, _laion_file

    files = [str(_laion_file(tmp_path / "laion" / f"part-{i}.parquet", MULTI, swapped=False)) for i in range(2)]
    assert main(["stats", *files, "--subset", "multi", "--json"]) == 0  # what a shell makes of laion/*.parquet
    (row,) = json.loads(capsys.readouterr().out)
    assert row["subset"] == "multi" and row["count"] == 2 * len(MULTI)
    assert main(["stats", str(tmp_path / "laion" / "*.parquet"), "--subset", "multi", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["count"] == 2 * len(MULTI)
    assert main(["stats", str(tmp_path / "nothing" / "*.parquet")]) == 2


def _user_runs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "laion_pipe", *args], capture_output=True, text=True, timeout=120, env=ENV)


@pytest.mark.parametrize(("cmd", "looked_for"), [("dedup", "candidates/"), ("score", "images/"), ("select", "scores/")])
def test_a_stage_on_a_directory_where_its_input_stage_never_ran(tmp_path, cmd, looked_for):
    """Not "0 partitions" and exit 0: exit 2, what was looked for, and the mistyped directory is
    not created (nor an existing empty one filled with `_state/`)."""
    typo = tmp_path / "rnu"
    r = _user_runs(cmd, "--out", str(typo), "--no-progress")
    assert r.returncode == 2, r.stderr
    assert looked_for in r.stderr and "Traceback" not in r.stderr
    assert not typo.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _user_runs(cmd, "--out", str(empty)).returncode == 2 and list(empty.iterdir()) == []


def test_status_on_what_is_not_a_run_directory(tmp_path):
    r = _user_runs("status", str(tmp_path / "nowhere"))
    assert r.returncode == 2 and "not a run directory" in r.stderr and "does not exist" in r.stderr
    assert not (tmp_path / "nowhere").exists()
    r = _user_runs("status", str(tmp_path))
    assert r.returncode == 2 and "_state/" in r.stderr


@pytest.mark.parametrize("spec", ["bogus:", "select:extract"])
def test_run_with_a_bad_stages_range_is_a_usage_error(tmp_path, spec):
    wf = tmp_path / "wf.yaml"
    wf.write_text("name: t\n")
    r = _user_runs("run", str(wf), "--out", str(tmp_path / "run"), "--stages", spec)
    assert r.returncode == 2 and "error:" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("verbose", [False, True])
def test_a_failing_partition_prints_one_line_and_its_log_file(tmp_path, verbose):
    """Dask's `Compute Failed` traceback (once per attempt) stays off the terminal; the summary
    names `_state/logs/extract/KEY.log`, which holds the traceback. `--verbose` shows them."""
    (tmp_path / "empty.wat").write_bytes(b"")  # not a WAT file: its partition fails every attempt
    out = tmp_path / "run"
    r = _user_runs("extract", str(tmp_path / "empty.wat"), "--out", str(out), "--no-progress",
                   "--set", "cluster.n_workers=1", "--set", "runner.retries=1", *(["--verbose"] if verbose else []))
    assert r.returncode == 1, r.stderr
    log = out / "_state" / "logs" / "extract" / "part-00000.log"
    assert "Traceback (most recent call last)" in log.read_text()
    assert str(log) in r.stderr.replace("\n", "")
    assert ("Compute Failed" in r.stderr) == verbose
    assert json.loads((out / "_state" / "extract" / "part-00000.json").read_text())["log"] == "_state/logs/extract/part-00000.log"
    s = _user_runs("status", str(out))
    assert s.returncode == 1 and "logs" not in s.stdout.split("failed")[0] and str(log) in s.stdout.replace("\n", "")

"""The `laion-pipe` command: help, config errors before work, extract + status end to end."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from laion_pipe.cli import build_parser, main

SUBCOMMANDS = ["run", "extract", "dedup", "download", "score", "select", "stats", "demo", "status"]


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
    r = subprocess.run([sys.executable, "-m", "laion_pipe.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "extract" in r.stdout

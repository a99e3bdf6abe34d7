"""benchmarks/gpu_check.py: exits 0 saying so where there is no CUDA; the benchmark options it
passes exist; a benchmark's ratio is read, and one that runs too long is stopped."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_without_cuda_it_says_so_and_exits_0():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # no GPU visible, even on a machine that has one
    r = subprocess.run([sys.executable, str(SCRIPT)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "no CUDA device" in r.stdout
    assert "===" not in r.stdout  # no benchmark was started


def test_the_plan_passes_only_options_the_benchmarks_accept():
    r = subprocess.run([sys.executable, str(SCRIPT), "--print-plan"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    commands = [line.split() for line in r.stdout.splitlines() if line.strip()]
    assert [c[1] for c in commands] == ["benchmarks/bench_score.py", "benchmarks/bench_train.py"]
    for cmd in commands:
        script = REPO / cmd[1]
        if not script.exists():
            pytest.fail(f"{cmd[1]} does not exist")
        helptext = subprocess.run([sys.executable, str(script), "--help"], cwd=REPO, capture_output=True, text=True,
                                  timeout=120)
        assert helptext.returncode == 0, helptext.stderr
        for flag in (a for a in cmd[2:] if a.startswith("--")):
            assert re.search(rf"{re.escape(flag)}\b", helptext.stdout), f"{cmd[1]} has no option {flag}"
        assert "cuda" in " ".join(cmd)


def test_a_benchmarks_ratio_is_read_and_a_slow_one_is_stopped(tmp_path, capsys):
    gc = _module()
    fast = tmp_path / "fast.py"
    fast.write_text("print('model-only:  100.0 images/s')\nprint('stage:  95.0 images/s')\nprint('ratio: 0.950')\n")
    slow = tmp_path / "slow.py"
    slow.write_text("import time\nprint('starting', flush=True)\ntime.sleep(60)\nprint('ratio: 1.0')\n")
    broken = tmp_path / "broken.py"
    broken.write_text("raise SystemExit(3)\n")

    r = gc.run_check(gc.Check("fast", str(fast), (), timeout_s=60, baseline="x"))
    assert (r.rc, r.ratio) == (0, 0.95)
    assert "stage:  95.0 images/s" in gc.figures(r)

    r = gc.run_check(gc.Check("slow", str(slow), (), timeout_s=2, baseline="x"))
    assert r.rc is None and r.ratio is None and r.lines == ["starting"]
    assert r.seconds < 30

    r = gc.run_check(gc.Check("broken", str(broken), (), timeout_s=60, baseline="x"))
    assert r.rc == 3 and r.ratio is None
    assert "killed after 2s" in capsys.readouterr().out

"""The GPU check: the score and training benchmarks on CUDA in one command, under 5 minutes.

    python benchmarks/gpu_check.py [--train-precision bf16|fp16] [--print-plan]

No GPU is lent to the machines this project is built on, so everything device-specific (half
precision, pinned-memory transfers, the data feed keeping a fast device busy) is correct by
construction and tested on CPU only. When a GPU is lent, this runs in one go:

1. `benchmarks/bench_score.py` on `cuda`: the score stage (tar streaming, JPEG decoding, the
   models in fp16, parquet writing) against the same forward passes on pre-made tensors already
   on the GPU. Its ratio is stage images/s / model-only images/s.
2. `benchmarks/bench_train.py` on `cuda` with mixed precision (bf16 by default, fp16 on GPUs
   without bf16): training fed by the loader against the same model fed batches already in
   memory. Its ratio is loader-fed samples/s / in-memory samples/s.

Each runs as its own process with a time limit (sizes chosen so both fit in about 4 minutes on
one GPU, model loading included); their output is shown as it comes, then a summary with each
benchmark's figures and ratio. The last line is `ratio: X`, the lower of the two ratios: both
compare a data path against the model alone, and the weaker one is what would hold a GPU back.

On a machine without CUDA it says so and exits 0 (nothing to check there). It exits 1 when a
benchmark fails, times out or prints no ratio.
"""
from __future__ import annotations

import argparse
import os
import selectors
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass(frozen=True)
class Check:
    name: str
    script: str  # file name under benchmarks/
    args: tuple[str, ...]
    timeout_s: int
    baseline: str  # what the ratio compares against

    def argv(self) -> list[str]:
        return [sys.executable, str(HERE / self.script), *self.args]


def plan(train_precision: str) -> list[Check]:
    """The two benchmark runs, sized for one GPU and about 4 minutes together."""
    return [
        Check(
            "score",
            "bench_score.py",
            ("--device", "cuda", "--images", "2048", "--batch-size", "256", "--rounds", "2"),
            timeout_s=140,
            baseline="the same CLIP ViT-B-32 / NSFW / aesthetic / watermark forward passes on pre-made CUDA tensors (fp16)",
        ),
        Check(
            "train",
            "bench_train.py",
            # 4 workers: the benchmark writes 4 shards, and each DataLoader worker reads whole shards
            ("--device", "cuda", "--mixed-precision", train_precision, "--workers", "4", "--steps", "50",
             "--rounds", "3", "--samples", "2048"),
            timeout_s=130,
            baseline=f"the demo UNet's training steps on batches already in memory ({train_precision})",
        ),
    ]


@dataclass
class Result:
    check: Check
    rc: int | None
    seconds: float
    lines: list[str]

    @property
    def ratio(self) -> float | None:
        for line in reversed(self.lines):
            if line.startswith("ratio:"):
                try:
                    return float(line.split(":", 1)[1].split()[0])
                except (IndexError, ValueError):
                    return None
        return None


def run_check(check: Check) -> Result:
    """Run one benchmark, echoing its output line by line, killed at its time limit."""
    print(f"\n=== {check.name}: {shlex.join(['python', 'benchmarks/' + check.script, *check.args])} "
          f"(limit {check.timeout_s}s)", flush=True)
    t0 = time.perf_counter()
    lines: list[str] = []
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(check.argv(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = t0 + check.timeout_s
    sel = selectors.DefaultSelector()
    assert proc.stdout is not None
    sel.register(proc.stdout, selectors.EVENT_READ)
    rc: int | None = None
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            proc.kill()
            proc.wait()
            print(f"--- {check.name}: killed after {check.timeout_s}s", flush=True)
            break
        if sel.select(timeout=min(left, 1.0)):
            line = proc.stdout.readline()
            if not line:  # EOF: the process is ending
                rc = proc.wait()
                break
            line = line.rstrip("\n")
            lines.append(line)
            print(f"  {line}", flush=True)
    sel.close()
    return Result(check, rc, time.perf_counter() - t0, lines)


def figures(result: Result) -> list[str]:
    """The lines of a benchmark's output that carry its figures: rates, the CPU line, the ratio."""
    keys = ("/s", "ratio", "cpu s/image", "device", "samples", "cores", "GPU")
    return [ln.strip() for ln in result.lines if any(k in ln for k in keys) and not ln.lstrip().startswith(("File ", "Traceback"))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-precision", choices=("bf16", "fp16"), default=None,
                    help="mixed precision of the training benchmark (default: bf16 where the GPU supports it, else fp16)")
    ap.add_argument("--print-plan", action="store_true", help="print the benchmark commands and exit (no GPU needed)")
    args = ap.parse_args(argv)

    if args.print_plan:
        for c in plan(args.train_precision or "bf16"):
            print(shlex.join(["python", f"benchmarks/{c.script}", *c.args]))
        return 0

    import torch

    if not torch.cuda.is_available():
        print(f"no CUDA device on this machine (torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'}): "
              "nothing to check. Run benchmarks/gpu_check.py where a GPU is lent.")
        return 0

    props = torch.cuda.get_device_properties(0)
    bf16 = torch.cuda.is_bf16_supported()
    precision = args.train_precision or ("bf16" if bf16 else "fp16")
    print(f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor}, "
          f"{torch.cuda.device_count()} visible; torch {torch.__version__} (CUDA {torch.version.cuda}), bf16 "
          f"{'yes' if bf16 else 'no'}; {os.cpu_count()} CPU cores")

    t0 = time.perf_counter()
    results = [run_check(c) for c in plan(precision)]

    print(f"\n=== summary ({time.perf_counter() - t0:.0f}s)")
    ok = True
    for r in results:
        status = "ok" if r.rc == 0 and r.ratio is not None else ("timed out" if r.rc is None else f"failed (exit {r.rc})")
        ok = ok and status == "ok"
        ratio = f"{r.ratio:.3f}" if r.ratio is not None else "n/a"
        print(f"{r.check.name}: {status} in {r.seconds:.0f}s, ratio {ratio} (baseline: {r.check.baseline})")
        for ln in figures(r):
            print(f"  {ln}")
    ratios = [r.ratio for r in results if r.ratio is not None]
    if not ok or len(ratios) != len(results):
        print("ratio: n/a (a benchmark did not finish; see its output above)")
        return 1
    print(f"ratio: {min(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

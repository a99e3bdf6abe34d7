"""torchrun, with the root cause of a failed job written down for the training stage.

`python -m laion_pipe.train.elastic --root-cause FILE TORCHRUN_ARGS...` is torchrun
(`torch.distributed.run`'s own `main`). When a training process fails, torchrun stops the
others with SIGTERM and raises `ChildFailedError` with every process's failure: the one that
failed first, the ones it stopped, and ones that failed only because a peer vanished inside a
collective ("Connection closed by peer"). Its summary goes to the terminal as usual; this
writes the root cause to FILE as JSON (rank, exit code, signal, message, the worker's Python
traceback) so the stage records that, not the SIGTERM. The worker's traceback reaches torchrun
through the error file its `@record` decorator writes (torch.distributed.elastic's
TORCHELASTIC_ERROR_FILE).
"""
from __future__ import annotations

import json
import signal
import sys
from typing import Any

# Failures that are the consequence of another: torchrun's stop signal, and a collective whose
# peer died (gloo, NCCL, the c10d store).
_CONSEQUENCES = (
    "Connection closed by peer", "Connection reset by peer", "remote worker crashing", "DistBackendError",
    "DistNetworkError", "DistStoreError", "NCCL communicator was aborted", "Broken pipe",
)


def _message(failure: Any) -> str:
    m = failure.message
    return m.get("message", "") if isinstance(m, dict) else str(m)


def _traceback(failure: Any) -> str:
    data = failure.error_file_data.get("message")
    if isinstance(data, dict):
        return str(data.get("extraInfo", {}).get("py_callstack", ""))
    return ""


def is_consequence(exitcode: int, message: str) -> bool:
    """A failure caused by another process's: stopped by torchrun, or a peer gone mid-collective."""
    return exitcode == -signal.SIGTERM or any(s in message for s in _CONSEQUENCES)


def root_cause(failures: dict[int, Any], first: int) -> dict:
    """The failure to report, from torchrun's `ChildFailedError.failures` (global rank ->
    ProcessFailure): the earliest that is not a consequence of another (torchrun's timestamps
    are whole seconds, so a peer's "connection closed" can tie with or precede the root cause);
    torchrun's own first failure `first` when every failure looks like a consequence."""
    def info(rank: int) -> dict:
        f = failures[rank]
        sig = signal.Signals(-f.exitcode).name if f.exitcode < 0 and -f.exitcode in signal.valid_signals() else None
        return {"rank": rank, "local_rank": f.local_rank, "pid": f.pid, "exitcode": f.exitcode, "signal": sig,
                "message": _message(f), "traceback": _traceback(f)}

    order = sorted(failures, key=lambda r: (failures[r].timestamp, r != first))
    primary = [r for r in order if not is_consequence(failures[r].exitcode, _message(failures[r]))]
    return info(primary[0] if primary else first)


def describe(cause: dict) -> str:
    """One line for the stage's report: which rank failed and how."""
    if cause.get("traceback"):
        return f"rank {cause['rank']}: {cause['message']}"
    if cause.get("signal"):
        hint = " (the out-of-memory killer, or killed by hand)" if cause["signal"] == "SIGKILL" else ""
        return f"rank {cause['rank']}: killed by {cause['signal']}{hint}, pid {cause['pid']}"
    return f"rank {cause['rank']}: exited with code {cause['exitcode']} (its messages are above)"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] != "--root-cause":
        print("usage: python -m laion_pipe.train.elastic --root-cause FILE TORCHRUN_ARGS...", file=sys.stderr)
        return 2
    path, args = argv[1], argv[2:]
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(args)
    except ChildFailedError as e:
        first, _ = e.get_first_failure()
        with open(path, "w") as f:
            json.dump(root_cause(e.failures, first), f, indent=1)
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A kill point for the tests of what a killed training leaves behind.

`LAION_PIPE_KILL_AT=checkpoint:STEP:RANK` makes that rank SIGKILL itself inside the checkpoint of
STEP, after the shared files (accelerate's state, the UNet) and before its own state: the
half-written checkpoint a node failure or the OOM killer leaves. A test that tried to land an
outside SIGKILL in that window lost the race on a loaded machine (the rank writes its few files
in milliseconds). Unset, as in every real run, it does nothing."""
from __future__ import annotations

import os
import signal

ENV = "LAION_PIPE_KILL_AT"


def point(name: str, step: int, rank: int) -> None:
    """SIGKILL this process if `ENV` names this point (`name:step:rank`)."""
    if os.environ.get(ENV) == f"{name}:{step}:{rank}":
        os.kill(os.getpid(), signal.SIGKILL)

"""How stages run their partitions: the `runner:` section."""
from __future__ import annotations

from pydantic import Field

from .base import Section


class RunnerConfig(Section):
    retries: int = Field(2, ge=0, description="extra attempts for a partition that raised, before it is recorded as failed")
    progress: bool = Field(True, description="show a progress bar per stage")
    force: bool = Field(False, description="redo partitions even if their manifest says done (not saved with the run)")
    max_errors_kept: int = Field(100, ge=0, description="bad-record notes kept per partition manifest (all are counted)")

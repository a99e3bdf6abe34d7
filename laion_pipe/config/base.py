"""The strict base model every config section derives from."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section: unknown keys are errors (a typo must never be silently ignored),
    and assignments are validated too, so `--set` overrides get the same checks."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

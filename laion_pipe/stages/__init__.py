"""Pipeline stages: one module per stage, each with plan / process / run."""

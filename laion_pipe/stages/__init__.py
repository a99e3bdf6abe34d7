"""Pipeline stages: one module per stage, each with plan / process / run; `registry.py` is the
table of stages (order, output folders, what each takes part in, CLI help) that everything else
reads."""

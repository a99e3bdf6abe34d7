"""Training stage: the data feed, the loop, checkpoints and launchers.

- `loader.py` (+ `loader_*`, `buckets.py`): dataset shards -> batches (webdataset streaming).
- `feed.py`: the `train:` section as a LoaderSpec; each rank's epochs and data position.
- `models.py`: the two model families (SD v1 from_pretrained, the demo pixel-space UNet).
- `loop.py`: the one training loop (accelerate); `checkpoint.py`, `metrics.py` its files.
- `sampling.py`: `load_generator` / `Generator.generate` / `save_grid` (validation, evaluate).
- `stage.py`: `laion-pipe train` (`run`), `preflight.py` its checks, `holdout.py` holdout.json.
- `launch.py`: torchrun commands and SLURM/PBS job scripts; `worker.py` the per-process entry;
  `elastic.py` torchrun with the first failing process written down for the stage.
"""

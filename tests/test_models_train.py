"""The demo training script stays alive: a few steps of every model, then load them through the
package's loaders exactly as the demo workflow does."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from laion_pipe.models import DEMO_FILES, demo_models_config
from laion_pipe.models.aesthetic import load_aesthetic
from laion_pipe.models.clip import load_clip
from laion_pipe.models.demo import synth
from laion_pipe.models.demo.train import PARTS, Settings, train_all
from laion_pipe.models.nsfw import load_nsfw
from laion_pipe.models.watermark import load_watermark


@pytest.mark.slow
def test_brief_retrain_writes_loadable_models(tmp_path):
    report = train_all(Settings.quick(tmp_path))
    for name in DEMO_FILES.values():
        assert (tmp_path / name).is_file(), name
    assert set(report) >= {"clip", "nsfw", "aesthetic", "watermark", "bytes"}
    assert json.loads((tmp_path / "training.json").read_text())["clip"]["steps"] == 3

    cfg = demo_models_config(weights_dir=tmp_path)
    clip = load_clip(cfg.clip_en)
    s = synth.sample(np.random.default_rng(0), "fr")
    img = clip.encode_images(clip.preprocess(s.image).unsqueeze(0))
    assert clip.similarity(img, clip.encode_texts([s.caption])).shape == (1,)
    assert load_nsfw(cfg.nsfw, clip).score(img).shape == (1,)
    assert load_aesthetic(cfg.aesthetic, clip).score(img).shape == (1,)
    wm = load_watermark(cfg.watermark)
    assert wm.score(wm.preprocess(s.image).unsqueeze(0)).shape == (1,)

    # Token rows no demo caption uses are zeroed: they were never trained.
    from safetensors.torch import load_file

    emb = load_file(str(tmp_path / DEMO_FILES["clip"]))["token_embedding.weight"]
    assert emb.dtype == torch.float16
    used = (emb.abs().sum(dim=1) > 0).sum().item()
    assert 50 < used < 2000


def test_unknown_parts_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown parts"):
        train_all(Settings.quick(tmp_path), ("clip", "vae"))
    assert set(PARTS) == {"clip", "nsfw", "aesthetic", "watermark"}


@pytest.mark.slow
def test_script_runs_as_a_module(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "laion_pipe.models.demo.train", "--quick", "--out", str(tmp_path)]
        + ["--only", "clip,nsfw"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / DEMO_FILES["nsfw"]).is_file() and not (tmp_path / DEMO_FILES["watermark"]).exists()
    assert "done in" in out.stdout

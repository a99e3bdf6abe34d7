"""`laion-pipe models fetch` / `models check` (issue 18), typed as a user types them, against a
loopback HTTP server started here: a pinned sha256 refuses other bytes, the right one is cached
and recorded, and `check` then runs the models from the cache alone (server stopped), or says
which weights are missing (exit 2)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

from laion_pipe.models.weights import cache_path
from reference_models import ImprovedMLP
from servers import serve_folder

REPO = Path(__file__).parent.parent
DEMO = str(REPO / "workflows" / "demo.yaml")
ENV = {**os.environ, "COLUMNS": "200", "NO_ALBUMENTATIONS_UPDATE": "1"}


def laion_pipe(*args: str) -> subprocess.CompletedProcess:
    """The installed console command, as a user runs it."""
    folders = [Path(sysconfig.get_path("scripts")), Path(sys.executable).parent]
    script = next(f / "laion-pipe" for f in folders if (f / "laion-pipe").is_file())
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=300, env=ENV)


@pytest.mark.slow  # three commands, each importing torch and open_clip
def test_fetch_refuses_a_wrong_sha256_keeps_the_right_one_and_check_runs_offline(tmp_path, capfd):
    torch.manual_seed(5)
    head = ImprovedMLP(64).eval()  # the demo CLIP's embedding size, so the demo workflow can run it
    served = tmp_path / "www"
    served.mkdir()
    torch.save(head.state_dict(), served / "aesthetic.pth")
    right = hashlib.sha256((served / "aesthetic.pth").read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    with serve_folder(served) as base:
        url = f"{base}/aesthetic.pth"
        pinned = ["--cache-dir", str(cache), "--set", f"models.aesthetic.weights={url}"]
        # the refusal: the same command line through the CLI's main in this process (the fetch
        # and the check below are the console command)
        from laion_pipe.cli import main

        capfd.readouterr()
        rc = main(["models", "fetch", DEMO, *pinned, "--set", f"models.aesthetic.sha256={'0' * 64}"])
        out, stderr = capfd.readouterr()
        assert rc == 1, out + stderr
        err = " ".join(stderr.split())
        assert "refused" in err and f"sha256 {right} does not match the pinned {'0' * 64}" in err
        assert not cache_path(url, cache).exists() and not list(cache.rglob("*.pth"))

        r = laion_pipe("models", "fetch", DEMO, *pinned, "--set", f"models.aesthetic.sha256={right}")
        assert r.returncode == 0, r.stderr
        assert "downloaded" in r.stdout
        assert cache_path(url, cache).read_bytes() == (served / "aesthetic.pth").read_bytes()
        manifest = json.loads((cache / "manifest.json").read_text())["files"]
        assert manifest[url]["sha256"] == right and manifest[url]["bytes"] == (served / "aesthetic.pth").stat().st_size

    # The server is gone: check loads everything from the cache and prints what it computed.
    r = laion_pipe("models", "check", DEMO, *pinned, "--set", f"models.aesthetic.sha256={right}")
    assert r.returncode == 0, r.stderr
    printed = float(re.search(r"aesthetic (-?\d+\.\d+)", r.stdout).group(1))

    from laion_pipe.config import load_workflow
    from laion_pipe.models.clip import load_clip
    from laion_pipe.models.provision import check_picture

    image, _, _ = check_picture()
    clip = load_clip(load_workflow(DEMO).models.aesthetic.clip)
    with torch.no_grad():
        emb = clip.model.encode_image(clip.preprocess(image).unsqueeze(0)).numpy().astype(np.float64)
        expected = head(torch.from_numpy(emb / np.linalg.norm(emb, axis=-1, keepdims=True)).float()).item()
    assert printed == pytest.approx(expected, abs=1e-4)

    # A cached file whose bytes changed since it was fetched is named, not used.
    from laion_pipe.models.provision import main_check

    cache_path(url, cache).write_bytes(b"changed")
    wf = load_workflow(DEMO, [f"models.aesthetic.weights={url}"])
    assert main_check(wf, str(cache)) == 2


def test_models_help_renders_as_a_user_runs_it():
    r = laion_pipe("models", "--help")
    assert r.returncode == 0, r.stderr
    assert "usage: laion-pipe models" in r.stdout and "%%" not in r.stdout
    assert "{fetch,check}" in r.stdout and "--cache-dir" in r.stdout


def test_check_names_a_missing_weight_and_exits_2(tmp_path):
    missing = "http://127.0.0.1:9/clip_autokeras_nsfw_b32.zip"  # never contacted: check downloads nothing
    r = laion_pipe("models", "check", DEMO, "--cache-dir", str(tmp_path), "--set", f"models.nsfw.weights={missing}",
                   "--set", "models.aesthetic.weights=/nonexistent/sa_0_4_vit_l_14_linear.pth")
    assert r.returncode == 2, r.stderr
    err = " ".join(r.stderr.split())
    assert f"missing: {missing} (models.nsfw.weights)" in err
    assert "missing: /nonexistent/sa_0_4_vit_l_14_linear.pth (models.aesthetic.weights)" in err
    assert "2 weight file(s)" in err and "laion-pipe models fetch" in err


def test_fetch_gets_a_text_towers_tokenizer_files_and_the_checkpoint_of_a_tag(tmp_path, monkeypatch):
    """xlm-roberta-base-ViT-B-32 + laion5b_s13b_b90k needs its checkpoint (a Hub file of the tag) and
    the config and tokenizer files of its Hugging Face text tower; both come from $HF_ENDPOINT (a
    loopback stand-in here), optional tokenizer files the repo lacks are skipped."""
    from laion_pipe.config import load_workflow, workflow_from_dict
    from laion_pipe.models import provision

    www = tmp_path / "www"
    ckpt = www / "laion" / "CLIP-ViT-B-32-xlm-roberta-base-laion5B-s13B-b90k" / "resolve" / "main"
    ckpt.mkdir(parents=True)
    (ckpt / "open_clip_pytorch_model.bin").write_bytes(b"weights")
    tok = www / "xlm-roberta-base" / "resolve" / "main"
    tok.mkdir(parents=True)
    (tok / "config.json").write_text('{"model_type": "xlm-roberta"}')
    (tok / "tokenizer.json").write_text("{}")
    xlm = {"model": "xlm-roberta-base-ViT-B-32", "pretrained": "laion5b_s13b_b90k"}
    demo = load_workflow(DEMO).models  # local head files: nothing to download for them
    wf = workflow_from_dict({"models": {
        "clip_en": xlm, "clip_multi": xlm,
        "nsfw": {"clip": xlm, "weights": demo.nsfw.weights},
        "watermark": demo.watermark.model_dump(),
        "aesthetic": {"clip": xlm, "weights": demo.aesthetic.weights}}})
    cache = tmp_path / "cache"
    with serve_folder(www) as base:
        monkeypatch.setenv("HF_ENDPOINT", base)
        assert {(n.kind, n.location) for n in provision.needs(wf) if n.kind != "file"} == {
            ("clip", f"{base}/laion/CLIP-ViT-B-32-xlm-roberta-base-laion5B-s13B-b90k/resolve/main/open_clip_pytorch_model.bin"),
            ("hf-files", "xlm-roberta-base")}
        assert len(provision.missing(wf, cache)) == 2
        results = provision.fetch(wf, cache)
        assert {r.need.kind: r.status for r in results} == {"clip": "downloaded", "hf-files": "downloaded", "file": "local"}, \
            [(r.status, r.detail) for r in results]
        assert provision.missing(wf, cache) == []
    hf = cache / "hf" / "xlm-roberta-base"
    assert sorted(p.name for p in hf.iterdir()) == ["config.json", "tokenizer.json"]

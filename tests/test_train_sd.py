"""The Stable Diffusion v1 family through the real loading path: a tiny random-weight pipeline
saved with save_pretrained, fine-tuned by the stage, final/ reloaded with
StableDiffusionPipeline.from_pretrained and sampled."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from train_fixtures import same_image, tiny_sd_pipeline, train_workflow, write_dataset


@pytest.fixture(scope="module")
def sd_source(tmp_path_factory):
    return tiny_sd_pipeline(tmp_path_factory.mktemp("sd") / "tiny-sd")


def _run(run, **train):
    from laion_pipe.config import workflow_from_dict
    from laion_pipe.train.stage import run as run_stage

    wf = workflow_from_dict(train_workflow(run, **train))
    wf.runner.progress = False
    report = run_stage(str(run), wf)
    return wf, report


def _unet_state(path):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(str(path)).state_dict()


def test_sd_finetune_ema_snr_offset_accumulation(tmp_path, sd_source):
    from diffusers import StableDiffusionPipeline

    from laion_pipe.train.sampling import load_generator

    run = tmp_path / "run"
    write_dataset(run, n=16, shards=2)
    prompts = ["a red circle on a white background", "a blue square on a white background"]
    wf, report = _run(
        run, model="sd", pretrained=str(sd_source), max_steps=4, gradient_accumulation=2, ema=True, ema_decay=0.9,
        snr_gamma=5.0, noise_offset=0.1, gradient_checkpointing=True, lr_scheduler="cosine", lr_warmup_steps=2,
        validation_every=2, validation_prompts=prompts, validation_steps=2, holdout_fraction=0.2,
    )
    assert report.done == 1 and not report.failed, report.failed
    tdir = run / "train" / "t"
    for rel in ("final/model_index.json", "final/unet", "final/vae", "final/text_encoder", "final/tokenizer",
                "checkpoint-2/unet", "checkpoint-2/unet_ema", "checkpoint-4/optimizer.bin", "metrics.jsonl", "loss.png",
                "samples/step-000002.png", "samples/step-000004.png", "holdout.json"):
        assert (tdir / rel).exists(), rel
    rows = [json.loads(line) for line in (tdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert set(r) >= {"step", "loss", "lr", "samples_per_s", "data_wait_fraction", "epoch"}
        assert np.isfinite(r["loss"]) and r["samples_per_s"] > 0 and 0 <= r["data_wait_fraction"] <= 1
    assert rows[0]["lr"] < rows[1]["lr"] > rows[3]["lr"]  # warmup, then the cosine decay
    # 2 micro-batches of 4 per step
    assert report.counts["samples_seen"] == 4 * 2 * 4
    # final/ is the EMA of the trained UNet: neither the pretrained UNet nor the raw trained one
    before, final = _unet_state(sd_source / "unet"), _unet_state(tdir / "final" / "unet")
    raw = _unet_state(tdir / "checkpoint-4" / "unet")
    ema = _unet_state(tdir / "checkpoint-4" / "unet_ema")
    k = "conv_in.weight"
    assert not torch.equal(before[k], raw[k])
    assert torch.equal(final[k], ema[k]) and not torch.equal(final[k], raw[k])
    # final/ carries the frozen parts as they came (test_frozen_parts_stay_frozen_in_memory... checks training
    # itself, in memory)
    pipe = StableDiffusionPipeline.from_pretrained(str(tdir / "final"), safety_checker=None, requires_safety_checker=False)
    src = StableDiffusionPipeline.from_pretrained(str(sd_source), safety_checker=None, requires_safety_checker=False)
    for a, b in zip(pipe.vae.parameters(), src.vae.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(pipe.text_encoder.parameters(), src.text_encoder.parameters()):
        assert torch.equal(a, b)
    pipe.set_progress_bar_config(disable=True)
    img = pipe(prompts[0], height=16, width=16, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert img.size == (16, 16)
    # the sampling API: final/ and a checkpoint, same seeds -> same images
    gen = load_generator(str(tdir / "final"))
    a = gen.generate(prompts, [1, 2], steps=3, sampler="dpmsolver++")
    b = gen.generate(prompts[:1], [1], steps=3, sampler="dpmsolver++")
    assert same_image(a[0], b[0])  # an image does not depend on its batch (up to float rounding)
    assert not same_image(a[0], a[1], tol=20)
    ck = load_generator(str(tdir / "checkpoint-4")).generate(prompts[:1], [1], steps=3, sampler="dpmsolver++")
    assert same_image(ck[0], a[0])  # the checkpoint draws with its EMA weights, as final/
    held = json.loads((tdir / "holdout.json").read_text())
    assert held["fraction"] == 0.2 and held["keys"] and set(held["captions"]) == set(held["keys"])


def test_frozen_parts_stay_frozen_in_memory_and_only_the_unet_is_optimised(tmp_path, sd_source, monkeypatch):
    """The VAE and text encoder the loop trains with, compared in memory before and after training
    (not reloaded from the folder they came from, which could not show a change), and the
    optimiser's parameters compared with the UNet's."""
    import copy

    from laion_pipe.train import loop

    seen: dict = {}
    build = loop.build_components

    def recording_build(wf):
        comps = build(wf)
        seen["comps"] = comps
        seen["before"] = {name: copy.deepcopy(m.state_dict()) for name, m in (("vae", comps.vae), ("text", comps.text_encoder))}
        seen["unet_before"] = copy.deepcopy(comps.unet.state_dict())
        return comps

    class RecordingAdamW(torch.optim.AdamW):
        def __init__(self, params, *a, **kw):
            super().__init__(params, *a, **kw)
            seen["optimizer"] = self

    monkeypatch.setattr(loop, "build_components", recording_build)
    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    run = tmp_path / "run"
    write_dataset(run, n=16, shards=2)
    wf, report = _run(run, model="sd", pretrained=str(sd_source), max_steps=3, learning_rate=1e-2, ema=False)
    assert report.done == 1 and not report.failed, report.failed
    comps = seen["comps"]
    for name, module in (("vae", comps.vae), ("text", comps.text_encoder)):
        after = module.state_dict()
        assert after.keys() == seen["before"][name].keys()
        changed = [k for k, v in after.items() if not torch.equal(v, seen["before"][name][k])]
        assert not changed, f"{name}: {changed[:3]} changed in training"
        assert all(not p.requires_grad and p.grad is None for p in module.parameters())
    unet_after = comps.unet.state_dict()
    assert any(not torch.equal(v, seen["unet_before"][k]) for k, v in unet_after.items())  # the UNet did learn
    opt_params = {id(p) for g in seen["optimizer"].param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in comps.unet.parameters()}
    frozen = {id(p) for m in comps.frozen for p in m.parameters()}
    assert not opt_params & frozen


def test_sd_v_prediction_bf16_from_unet_config(tmp_path, sd_source):
    """Training the UNet from a config (not the pretrained weights), v-prediction, bf16 autocast
    on the CPU (the GPU path's mixed precision, unchanged)."""
    from diffusers import StableDiffusionPipeline

    cfg = json.loads((sd_source / "unet" / "config.json").read_text())
    unet_cfg = tmp_path / "unet.json"
    unet_cfg.write_text(json.dumps(cfg))
    run = tmp_path / "run"
    write_dataset(run, n=8, shards=1)
    wf, report = _run(run, model="sd", pretrained=str(sd_source), unet_config=str(unet_cfg), max_steps=2,
                      mixed_precision="bf16", prediction_type="v_prediction", checkpoint_every=100)
    assert report.done == 1, report.failed
    final = run / "train" / "t" / "final"
    pipe = StableDiffusionPipeline.from_pretrained(str(final), safety_checker=None, requires_safety_checker=False)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.unet.dtype == torch.float32  # weights stay fp32 under autocast
    assert json.loads((final / "laion_pipe_model.json").read_text())["prediction_type"] == "v_prediction"
    assert report.counts["steps"] == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (the CPU runs the same code above)")
def test_sd_on_cuda_fp16(tmp_path, sd_source):
    run = tmp_path / "run"
    write_dataset(run, n=8, shards=1)
    wf, report = _run(run, model="sd", pretrained=str(sd_source), max_steps=2, mixed_precision="fp16", device="auto")
    assert report.done == 1, report.failed
    summary = json.loads((run / "train" / "t" / "summary.json").read_text())
    assert summary["device"].startswith("cuda") and summary["mixed_precision"] == "fp16"

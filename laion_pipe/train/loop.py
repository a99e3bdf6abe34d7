"""The training loop: one loop for both model families, run by every process of a job.

It follows diffusers' `examples/text_to_image/train_text_to_image.py`: accelerate's
`Accelerator` places the modules, wraps the UNet in DDP when there are several processes, runs
mixed precision and gradient accumulation, and saves and restores optimizer, LR scheduler,
scaler and RNG states; the forward process and the loss come from the model's diffusers
scheduler (`add_noise`, `get_velocity`, `training_utils.compute_snr` for Min-SNR weighting), the
EMA is diffusers' `EMAModel`. What the loop adds is the run directory's bookkeeping:

- its own noise/timestep generator per rank (seeded from the seed and the rank, saved in every
  checkpoint), so the draws do not depend on what else touched torch's global RNG and a resumed
  run continues the same sequence as an uninterrupted one;
- the data position per rank (see `feed.py`), checkpoints written atomically (`checkpoint.py`),
  `metrics.jsonl`, validation grids, `final/`, and `summary.json` for the stage's manifest.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import checkpoint as ckpt
from . import faults
from .feed import epoch_batches, loader_spec
from .metrics import METRICS, MetricsLog, truncate_metrics
from .models import MODEL_INFO, Components, build_components

SUMMARY = "summary.json"
SEED_STRIDE = 1_000_003  # ranks' generator seeds: seed * stride + rank


def train_dir(out: str, wf) -> Path:
    return Path(out) / "train" / wf.train.name


def _weight_dtype(mixed_precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


def param_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's parameters (names and bytes): equal digests, equal weights."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _unwrap(accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP and torch.compile wrappers (what save_pretrained must see)."""
    return accelerator.unwrap_model(model, keep_torch_compile=False)


def _is_compiled(model: torch.nn.Module) -> bool:
    m = getattr(model, "module", model)  # under DDP
    return isinstance(model, torch._dynamo.eval_frame.OptimizedModule) or isinstance(m, torch._dynamo.eval_frame.OptimizedModule)


def _write_model_info(folder: Path, comps: Components) -> None:
    (folder / MODEL_INFO).write_text(json.dumps(comps.info, indent=1))


def diffusion_loss(comps: Components, unet: torch.nn.Module, batch: dict, gen: torch.Generator, cfg,
                   device: torch.device | str, weight_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One micro-batch's training loss, as diffusers' example computes it: encode (frozen), draw
    noise (plus offset noise) and timesteps from `gen`, noise the input with the scheduler, and
    compare the UNet's prediction with the scheduler's target (noise, or velocity)."""
    sched = comps.noise_scheduler
    pixels = batch["pixel_values"].to(device, dtype=weight_dtype, non_blocking=True)
    ids = batch["input_ids"].to(device, non_blocking=True)
    with torch.no_grad():
        x0 = comps.encode_pixels(pixels, gen).float()
        cond = comps.encode_text(ids)
    noise = torch.randn(x0.shape, generator=gen, device=device, dtype=x0.dtype)
    if cfg.noise_offset:
        noise = noise + cfg.noise_offset * torch.randn((x0.shape[0], x0.shape[1], 1, 1), generator=gen, device=device,
                                                       dtype=x0.dtype)
    timesteps = torch.randint(0, sched.config.num_train_timesteps, (x0.shape[0],), generator=gen, device=device).long()
    noisy = sched.add_noise(x0, noise, timesteps)
    target = sched.get_velocity(x0, noise, timesteps) if sched.config.prediction_type == "v_prediction" else noise
    pred = unet(noisy, timesteps, cond, return_dict=False)[0]
    return _loss(comps, pred, target, timesteps, cfg.snr_gamma)


def _loss(comps: Components, model_pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor,
          snr_gamma: float | None) -> torch.Tensor:
    """MSE, or Min-SNR-gamma weighted MSE (https://arxiv.org/abs/2303.09556) as diffusers'
    example computes it: weight min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v."""
    if snr_gamma is None:
        return F.mse_loss(model_pred.float(), target.float(), reduction="mean")
    from diffusers.training_utils import compute_snr

    snr = compute_snr(comps.noise_scheduler, timesteps)
    weights = torch.clamp(snr, max=snr_gamma)
    if comps.noise_scheduler.config.prediction_type == "v_prediction":
        weights = weights / (snr + 1)
    else:
        weights = weights / snr
    loss = F.mse_loss(model_pred.float(), target.float(), reduction="none")
    return (loss.mean(dim=list(range(1, loss.ndim))) * weights).mean()


class _Progress:
    """A rich progress bar on the main process, like the curation stages' bars."""

    def __init__(self, enabled: bool, total: int, done: int, name: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.prog = Progress(
            TextColumn(f"[bold]{'train':>8}[/bold]"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            disable=not enabled, transient=False,
        )
        self.task = self.prog.add_task(name, total=total, completed=done, note="")

    def __enter__(self) -> _Progress:
        self.prog.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.prog.__exit__(*exc)

    def update(self, step: int, note: str | None = None) -> None:
        kw = {"note": note} if note is not None else {}
        self.prog.update(self.task, completed=step, **kw)


def _register_hooks(accelerator, ema, comps: Components) -> None:
    """Save the UNet (and EMA) in diffusers' layout inside accelerate's checkpoint, and load them
    back from it, as diffusers' example does; the scheduler and model info make the folder
    loadable by `sampling.load_generator`."""
    from diffusers import UNet2DConditionModel

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            out = Path(output_dir)
            for model in models:
                _unwrap(accelerator, model).save_pretrained(out / "unet")
            if ema is not None:
                ema.save_pretrained(str(out / "unet_ema"))
            comps.noise_scheduler.save_pretrained(out / "scheduler")
            _write_model_info(out, comps)
        while weights:
            weights.pop()  # saved above, not again as accelerate's model.safetensors

    def load_hook(models, input_dir):
        if ema is not None:
            from diffusers.training_utils import EMAModel

            loaded = EMAModel.from_pretrained(os.path.join(input_dir, "unet_ema"), UNet2DConditionModel)
            ema.load_state_dict(loaded.state_dict())
            ema.to(accelerator.device)
            del loaded
        while models:
            model = models.pop()
            loaded = UNet2DConditionModel.from_pretrained(input_dir, subfolder="unet")
            _unwrap(accelerator, model).load_state_dict(loaded.state_dict())
            del loaded

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def _check_resumable(folder: Path, comps: Components) -> None:
    f = folder / MODEL_INFO
    if not f.is_file():
        return
    saved = json.loads(f.read_text())
    keys = ("family", "resolution", "pretrained", "text_encoder", "prediction_type")
    diff = [k for k in keys if saved.get(k) != comps.info.get(k)]
    if diff:
        raise ValueError(
            f"{folder} was trained with other settings ({', '.join(f'{k}: {saved.get(k)!r}' for k in diff)}); "
            "rerun with --force to start again, or change train.name"
        )


def _validate(accelerator, comps: Components, unet, ema, cfg, step: int, tdir: Path) -> None:
    from .sampling import Generator, save_grid

    model = _unwrap(accelerator, unet)
    if ema is not None:
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
    try:
        gen = Generator.from_components(comps, model, device=accelerator.device)
        prompts = list(cfg.validation_prompts)
        with accelerator.autocast():
            images = gen.generate(prompts, list(range(len(prompts))), guidance_scale=cfg.validation_guidance,
                                  steps=cfg.validation_steps, sampler=cfg.validation_sampler)
        save_grid(images, prompts, str(tdir / "samples" / f"step-{step:06d}.png"))
    finally:
        if ema is not None:
            ema.restore(model.parameters())


def _save_final(accelerator, comps: Components, unet, ema, tdir: Path) -> Path:
    """final/ in diffusers' layout (the EMA weights when EMA is on), renamed into place."""
    model = _unwrap(accelerator, unet)
    if ema is not None:
        ema.copy_to(model.parameters())
    tmp, dest = tdir / ".tmp-final", tdir / "final"
    shutil.rmtree(tmp, ignore_errors=True)
    if comps.family == "sd":
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(comps.info["pretrained"], unet=model)
        # the sampling scheduler must predict what the UNet was trained to predict
        pipe.scheduler.register_to_config(prediction_type=comps.info["prediction_type"])
        pipe.save_pretrained(tmp)
    else:
        model.save_pretrained(tmp / "unet")
        comps.noise_scheduler.save_pretrained(tmp / "scheduler")
    _write_model_info(tmp, comps)
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


def launched_world_size() -> int:
    """The number of processes the launcher (torchrun, srun, mpirun) started for this job."""
    for var in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        v = os.environ.get(var, "")
        if v.isdigit():
            return int(v)
    return 1


def use_cpu(device: str, world_size: int | None = None) -> bool:
    """accelerate's `cpu` flag for `train.device`.

    `cpu` is the CPU. `auto` is the GPU accelerate finds; on a machine without one it is also
    the CPU, but a job of several processes must then say so: told `cpu=False` under torchrun
    with no GPU, accelerate starts no process group and every process trains alone as "the main
    process" of a world of one, all of them writing the same checkpoint folders (issue 19)."""
    if device == "cpu":
        return True
    world = launched_world_size() if world_size is None else world_size
    return world > 1 and not torch.accelerator.is_available()


def _accelerator(cfg):
    from accelerate import Accelerator
    from accelerate.utils import DynamoBackend, TorchDynamoPlugin

    kw: dict[str, Any] = {}
    if cfg.torch_compile:
        kw["dynamo_plugin"] = TorchDynamoPlugin(backend=DynamoBackend(cfg.compile_backend.upper()))
    return Accelerator(
        gradient_accumulation_steps=cfg.gradient_accumulation,
        mixed_precision=cfg.mixed_precision,
        cpu=use_cpu(cfg.device),
        **kw,
    )


def check_world(num_processes: int, distributed_type: str) -> None:
    """Refuse to train when accelerate's world is not the one the launcher started: processes
    that do not know of each other each train the whole run and race on its folder."""
    launched = launched_world_size()
    if num_processes != launched:
        raise RuntimeError(
            f"the launcher started {launched} training processes but accelerate joined {num_processes} "
            f"({distributed_type}); on a machine whose accelerator accelerate cannot spread processes over, "
            "set train.device: cpu (gloo), or train.launch.processes_per_node: 1"
        )


def cpu_threads(configured: int | None) -> int:
    """Torch CPU threads for a training process: `train.threads` when set; else OMP_NUM_THREADS
    when the launcher set it (torchrun gives each process 1); else every core this process may
    run on. Not torch's current setting: a torch first imported while a Dask cluster was open took
    the nannies' OMP_NUM_THREADS=1 and would train the demo on one of two cores."""
    if configured:
        return configured
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def train(out: str, wf, *, progress: bool = True) -> dict:
    """Train the `train:` model on the run's data until `max_steps`, resuming from the newest
    checkpoint of `RUN/train/{name}/` when there is one. Every process of a job calls this;
    returns the summary (also written to summary.json by the main process)."""
    from accelerate.state import AcceleratorState

    torch.set_num_threads(cpu_threads(wf.train.threads))
    accelerator = _accelerator(wf.train)
    try:
        check_world(accelerator.num_processes, str(accelerator.distributed_type))
        return _train(accelerator, out, wf, progress=progress)
    finally:
        accelerator.end_training()
        if accelerator.num_processes == 1:
            # The state is a per-process singleton; forget it so the next in-process run (another
            # stage call, a test) may use other settings. accelerate's own tests reset it so.
            AcceleratorState._reset_state(reset_partial_state=True)


def _train(accelerator, out: str, wf, *, progress: bool) -> dict:
    from diffusers import UNet2DConditionModel
    from diffusers.optimization import get_scheduler

    cfg = wf.train
    tdir = train_dir(out, wf)
    rank, world = accelerator.process_index, accelerator.num_processes
    device = accelerator.device
    main = accelerator.is_main_process
    if main:
        tdir.mkdir(parents=True, exist_ok=True)
        ckpt.remove_partial(tdir)
    accelerator.wait_for_everyone()

    torch.manual_seed(cfg.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    comps = build_components(wf)
    unet = comps.unet
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    ema = None
    if cfg.ema:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, model_cls=UNet2DConditionModel, model_config=unet.config)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=cfg.learning_rate, betas=tuple(cfg.betas),
                                  weight_decay=cfg.weight_decay, eps=cfg.epsilon)
    # accelerate steps a prepared scheduler once per process per optimiser step (as diffusers' example counts)
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer=optimizer, num_warmup_steps=cfg.lr_warmup_steps * world,
                                 num_training_steps=cfg.max_steps * world)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    weight_dtype = _weight_dtype(accelerator.mixed_precision)
    for m in comps.frozen:
        m.to(device, dtype=weight_dtype)
    if ema is not None:
        ema.to(device)
    _register_hooks(accelerator, ema, comps)

    gen = torch.Generator(device=device).manual_seed(cfg.seed * SEED_STRIDE + rank)
    state = ckpt.RankState()
    resumed_from = None
    # the main process picks the checkpoint and tells the others: every rank resumes from the same
    # step even where a shared file system shows ranks different listings for a while
    found = _broadcast(accelerator, ckpt.latest(tdir) if main else None)
    if found is not None:
        step, folder = found
        _check_resumable(folder, comps)
        accelerator.load_state(str(folder))
        state, rng = ckpt.read_rank_state(folder, rank)
        gen.set_state(rng)
        resumed_from = step
        if main:
            truncate_metrics(tdir / METRICS, state.step)
    accelerator.wait_for_everyone()

    spec = loader_spec(wf, out)
    batches = epoch_batches(spec, state, rank=rank, world_size=world, tokenize=comps.tokenize)
    log = MetricsLog(tdir / METRICS) if main else None
    skipped: Counter = Counter()
    keys_seen: dict[int, list[str]] = {}
    window = {"loss": 0.0, "n": 0, "samples": 0, "wait": 0.0, "busy": 0.0}
    t_start = time.time()
    show = progress and main

    with _Progress(show, cfg.max_steps, state.step, cfg.name) as bar:
        while state.step < cfg.max_steps:
            t0 = time.perf_counter()
            batch = next(batches)
            t_got = time.perf_counter()
            skipped.update(batch.get("skipped", {}))
            n = len(batch["key"])
            state.samples_seen += n
            if cfg.record_keys:
                keys_seen.setdefault(state.epoch, []).extend(batch["key"])  # the feed counted this batch in state.epoch
            with accelerator.accumulate(unet):
                loss = diffusion_loss(comps, unet, batch, gen, cfg, device, weight_dtype)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(unet.parameters(), cfg.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            window["loss"] += loss.detach().float().item() / cfg.gradient_accumulation
            window["samples"] += n
            window["wait"] += t_got - t0
            window["busy"] += time.perf_counter() - t0
            if not accelerator.sync_gradients:
                continue
            state.step += 1
            window["n"] += 1
            if ema is not None:
                ema.step(unet.parameters())
            if state.step % cfg.log_every == 0 or state.step == cfg.max_steps:
                row = _log_row(accelerator, window, state, lr_scheduler.get_last_lr()[0])
                if log is not None:
                    log.write(row)
                bar.update(state.step, f"loss {row['loss']:.4f}  {row['samples_per_s']:.0f} samples/s")
                window = {"loss": 0.0, "n": 0, "samples": 0, "wait": 0.0, "busy": 0.0}
            else:
                bar.update(state.step)
            if state.step % cfg.checkpoint_every == 0 and state.step < cfg.max_steps:
                _checkpoint(accelerator, tdir, state, gen, rank, cfg.checkpoints_total_limit)
            if main and cfg.validation_every and cfg.validation_prompts and state.step % cfg.validation_every == 0:
                _validate(accelerator, comps, unet, ema, cfg, state.step, tdir)

    # The last step is always a checkpoint too: a kill after it loses nothing, and a later run
    # with a larger max_steps continues from it.
    if found is None or resumed_from != state.step:
        _checkpoint(accelerator, tdir, state, gen, rank, cfg.checkpoints_total_limit)
    skipped_all = _gather_counts(accelerator, skipped)
    seen = _gather_int(accelerator, state.samples_seen)
    if cfg.record_keys:
        _write_debug(tdir, rank, keys_seen, _unwrap(accelerator, unet), state)
    accelerator.wait_for_everyone()
    summary: dict = {}
    if main:
        if cfg.validation_prompts and cfg.validation_every and not (tdir / "samples" / f"step-{state.step:06d}.png").exists():
            _validate(accelerator, comps, unet, ema, cfg, state.step, tdir)
        final = _save_final(accelerator, comps, unet, ema, tdir)
        summary = {
            "steps": state.step,
            "samples_seen": seen,
            "skipped": dict(skipped_all),
            "resumed_from": resumed_from,
            "world_size": world,
            "device": str(device),
            "mixed_precision": accelerator.mixed_precision,
            "final": str(final),
            "seconds": round(time.time() - t_start, 3),
            "family": comps.family,
            "compiled": _is_compiled(unet),
            "unet_parameters": sum(p.numel() for p in _unwrap(accelerator, unet).parameters()),
        }
        (tdir / SUMMARY).write_text(json.dumps(summary, indent=1))
    accelerator.wait_for_everyone()
    return summary


def _log_row(accelerator, window: dict, state: ckpt.RankState, lr: float) -> dict:
    """One metrics.jsonl line: loss averaged over the window's steps and every rank; samples/s of
    the whole job; the fraction of the loop's time spent waiting for data (all ranks)."""
    t = torch.tensor([window["loss"], window["n"], window["samples"], window["wait"], window["busy"]],
                     dtype=torch.float64, device=accelerator.device)
    total = accelerator.reduce(t, reduction="sum")
    loss_sum, steps, samples, wait, busy = (float(v) for v in total.cpu())
    world = accelerator.num_processes
    per_rank_busy = busy / world
    return {
        "step": state.step,
        "loss": loss_sum / max(steps, 1),
        "lr": float(lr),
        "samples_per_s": samples / per_rank_busy if per_rank_busy > 0 else math.nan,
        "data_wait_fraction": wait / busy if busy > 0 else 0.0,
        "epoch": state.epoch,
        "time": time.time(),
    }


def _checkpoint(accelerator, tdir: Path, state: ckpt.RankState, gen: torch.Generator, rank: int,
                limit: int | None) -> None:
    """One checkpoint, written by every process into `.tmp-checkpoint-{step}/`: the main process
    writes what is shared (the UNet and EMA through the save hook, optimizer, LR scheduler and
    scaler through accelerate), every rank its own RNG states and data position. Only when all
    have written (a barrier) does the main process publish the folder and then prune old ones;
    nobody goes on before that is done (a second barrier), so no rank ever writes into a folder
    that was renamed or removed."""
    tmp = ckpt.tmp_dir(tdir, state.step)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    faults.point("checkpoint", state.step, rank)  # tests only (LAION_PIPE_KILL_AT)
    ckpt.write_rank_state(tmp, rank, state, gen)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        ckpt.publish(tmp, ckpt.final_dir(tdir, state.step), world_size=accelerator.num_processes)
        ckpt.prune(tdir, limit)
    accelerator.wait_for_everyone()


def _broadcast(accelerator, value: Any) -> Any:
    """The main process's `value` on every process."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([value])[0]


def _gather_counts(accelerator, counts: Counter) -> Counter:
    if accelerator.num_processes == 1:
        return counts
    from accelerate.utils import gather_object

    total: Counter = Counter()
    for c in gather_object([dict(counts)]):
        total.update(c)
    return total


def _gather_int(accelerator, value: int) -> int:
    t = torch.tensor([value], dtype=torch.int64, device=accelerator.device)
    return int(accelerator.reduce(t, reduction="sum").item())


def _write_debug(tdir: Path, rank: int, keys_seen: dict[int, list[str]], model: torch.nn.Module,
                 state: ckpt.RankState) -> None:
    d = tdir / "debug"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"rank-{rank}.json").write_text(json.dumps({
        "rank": rank,
        "keys": {str(e): k for e, k in sorted(keys_seen.items())},
        "param_digest": param_digest(model),
        "state": state.to_json(),
    }))

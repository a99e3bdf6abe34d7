"""Dask clusters from the workflow's `cluster:` section: local, an existing scheduler, SLURM/PBS
(dask-jobqueue) or Kubernetes (dask-kubernetes).

GPU workers are declared with the Dask resource `GPU`, so only tasks that ask for it (model
stages) are placed there; everything else runs anywhere.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import logging

import dask
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

from .config.cluster import ClusterConfig


def _gpu_resources(n: int) -> dict[str, float]:
    return {"GPU": float(n)} if n else {}


def model_task_resources(cfg: ClusterConfig, request_gpu: bool | None) -> dict[str, float] | None:
    """The Dask resources a model stage's task asks for (score, evaluate): {"GPU": 1} when the
    stage's `request_gpu` says so, or, when it is unset (None), when this cluster section
    declares GPUs on its workers. A task that asks for a GPU only runs on a worker that has one,
    so asking on a cluster without GPU workers would wait forever: hence the default."""
    want = request_gpu if request_gpu is not None else cfg.declared_gpus() > 0
    return {"GPU": 1} if want else None


def _jobqueue_kwargs(cfg: ClusterConfig) -> dict[str, Any]:
    jq = cfg.jobqueue
    kw: dict[str, Any] = dict(
        cores=jq.cores,
        memory=jq.memory,
        processes=jq.processes,
        walltime=jq.walltime,
        job_extra_directives=list(jq.job_extra_directives),
        job_script_prologue=[f"export {k}={v}" for k, v in _worker_env(cfg).items()] + list(jq.job_script_prologue),
        worker_extra_args=list(jq.worker_extra_args),
    )
    if jq.gpus_per_job:
        per_worker = max(1, jq.gpus_per_job // jq.processes)
        kw["worker_extra_args"] += ["--resources", f"GPU={per_worker}"]
    for name in ("queue", "account", "local_directory", "interface"):
        value = getattr(jq, name)
        if value is not None:
            kw[name] = value
    return kw


def worker_dask_config(cfg: ClusterConfig) -> dict[str, Any]:
    """The Dask settings this section gives the workers it starts (`cluster.profile_interval`)."""
    if cfg.profile_interval == "off":
        return {"distributed.worker.profile.enabled": False}
    return {"distributed.worker.profile.interval": cfg.profile_interval.replace(" ", "")}


def _worker_env(cfg: ClusterConfig) -> dict[str, str]:
    """`worker_dask_config` as the environment variables a batch job's or a pod's worker reads."""
    return {"DASK_" + key.upper().replace(".", "__").replace("-", "_"): str(value)
            for key, value in worker_dask_config(cfg).items()}


def make_cluster(cfg: ClusterConfig, max_tasks: int | None = None) -> Any | None:
    """Build the cluster object the config describes (None for `address`, which needs none).

    Kept apart from `open_client` so a SLURM/PBS job script or a Kubernetes spec can be
    inspected without a batch system (`laion-pipe run --dry-run`, and the tests). A local
    cluster without a set `n_workers` starts one worker per core, but no more than `max_tasks`
    (a worker process costs ~1 s of CPU to start: a one-file extract needs one)."""
    if cfg.kind == "local":
        n = cfg.n_workers or max(1, min((os.cpu_count() or 1) // cfg.threads_per_worker, max_tasks or 1 << 30))
        # each nanny hands its worker process the Dask config it was created under
        with dask.config.set(worker_dask_config(cfg)):
            return LocalCluster(
                n_workers=n,
                threads_per_worker=cfg.threads_per_worker,
                memory_limit=cfg.memory_limit,
                processes=cfg.processes,
                resources=_gpu_resources(cfg.gpus_per_worker) or None,
                dashboard_address=cfg.dashboard_address,
            )
    if cfg.kind == "address":
        return None
    if cfg.kind in ("slurm", "pbs"):
        from dask_jobqueue import PBSCluster, SLURMCluster

        cls = SLURMCluster if cfg.kind == "slurm" else PBSCluster
        kw = _jobqueue_kwargs(cfg)
        if cfg.kind == "pbs" and cfg.jobqueue.gpus_per_job:
            kw["resource_spec"] = f"select=1:ncpus={cfg.jobqueue.cores}:ngpus={cfg.jobqueue.gpus_per_job}:mem={cfg.jobqueue.memory}"
        return cls(**kw)
    if cfg.kind == "kubernetes":
        from dask_kubernetes.operator import KubeCluster

        return KubeCluster(custom_cluster_spec=kubernetes_spec(cfg), namespace=cfg.kubernetes.namespace)
    raise ValueError(f"cluster.kind: unknown kind {cfg.kind!r}")


def kubernetes_spec(cfg: ClusterConfig) -> dict:
    """The DaskCluster custom resource dask-kubernetes' operator would create."""
    from dask_kubernetes.operator import make_cluster_spec

    k = cfg.kubernetes
    resources = dict(k.resources)
    if k.gpus_per_worker:
        resources.setdefault("limits", {})["nvidia.com/gpu"] = str(k.gpus_per_worker)
    spec = make_cluster_spec(
        name=k.name,
        image=k.image,
        n_workers=k.n_workers,
        resources=resources or None,
        env={**_worker_env(cfg), **k.env},
        worker_command=["dask-worker"] if not k.gpus_per_worker else ["dask-worker", "--resources", f"GPU={k.gpus_per_worker}"],
    )
    if k.namespace:
        spec["metadata"]["namespace"] = k.namespace
    return spec


def job_script(cfg: ClusterConfig) -> str:
    """The batch script SLURM/PBS would run for one job, or the pod spec (YAML) for Kubernetes."""
    if cfg.kind in ("slurm", "pbs"):
        cluster = make_cluster(cfg)
        try:
            return cluster.job_script()
        finally:
            cluster.close()
    if cfg.kind == "kubernetes":
        import yaml

        class _NoAliases(yaml.SafeDumper):
            def ignore_aliases(self, data):  # a pod spec reads better spelled out
                return True

        return yaml.dump(kubernetes_spec(cfg), Dumper=_NoAliases, sort_keys=False)
    raise ValueError(f"cluster.kind {cfg.kind!r} has no job script")


class _DropComputeFailed(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Compute Failed")


class QuietTaskErrors(WorkerPlugin):
    """Keeps Dask's `Compute Failed` tracebacks (one per attempt) off the terminal: a failed
    partition's traceback goes to its manifest and `_state/logs/` (the runner writes them), and
    the stage's summary names that file. Installed on every worker, those that join later too;
    `--verbose` leaves it out."""

    name = "laion-pipe-quiet-task-errors"

    def __init__(self) -> None:
        self._filter = _DropComputeFailed()

    def setup(self, worker: Any) -> None:
        logging.getLogger("distributed.worker").addFilter(self._filter)

    def teardown(self, worker: Any) -> None:
        logging.getLogger("distributed.worker").removeFilter(self._filter)


def _quiet(client: Client, quiet_task_errors: bool) -> None:
    if quiet_task_errors:
        client.register_plugin(QuietTaskErrors(), name=QuietTaskErrors.name)


@contextlib.contextmanager
def open_client(cfg: ClusterConfig, max_tasks: int | None = None, *, quiet_task_errors: bool = True) -> Iterator[Client]:
    """A Dask client for the configured cluster, closed (with its cluster) on exit. `max_tasks`
    (the partitions of the work ahead, when known) caps a local cluster's default size. With
    `quiet_task_errors` (the default) workers do not log failed tasks' tracebacks
    (`QuietTaskErrors`)."""
    if cfg.kind == "address":
        if not cfg.address:
            raise ValueError("cluster.address: required when cluster.kind is 'address'")
        client = Client(cfg.address)
        try:
            _quiet(client, quiet_task_errors)
            yield client
        finally:
            if quiet_task_errors:  # a shared cluster outlives this run: leave its workers as they were
                with contextlib.suppress(Exception):
                    client.unregister_worker_plugin(QuietTaskErrors.name)
            client.close()
        return
    with _environ_restored():
        yield from _local_or_batch_client(cfg, max_tasks, quiet_task_errors)


@contextlib.contextmanager
def _environ_restored() -> Iterator[None]:
    """Give the driver its environment back when the cluster closes. Dask's nannies set
    `distributed.nanny.pre-spawn-environ` (OMP_NUM_THREADS=1, MKL_NUM_THREADS=1, ...) in this
    process's os.environ before spawning workers; left there, a torch imported afterwards (the
    demo's train stage, in this process) starts with one thread: 200 demo steps took 156 s
    instead of about 100 on 2 cores."""
    before = dict(os.environ)
    try:
        yield
    finally:
        for key in [k for k in os.environ if k not in before]:
            del os.environ[key]
        for key, value in before.items():
            if os.environ.get(key) != value:
                os.environ[key] = value


def _local_or_batch_client(cfg: ClusterConfig, max_tasks: int | None, quiet_task_errors: bool) -> Iterator[Client]:
    cluster = make_cluster(cfg, max_tasks)
    if cfg.kind in ("slurm", "pbs"):
        jq = cfg.jobqueue
        if jq.adaptive_maximum is None:
            cluster.scale(jobs=jq.jobs)
        else:
            cluster.adapt(minimum_jobs=jq.adaptive_minimum or 0, maximum_jobs=jq.adaptive_maximum)
    elif cfg.kind == "kubernetes" and cfg.kubernetes.adaptive_maximum is not None:
        cluster.adapt(minimum=cfg.kubernetes.adaptive_minimum or 0, maximum=cfg.kubernetes.adaptive_maximum)
    client = Client(cluster)
    try:
        _quiet(client, quiet_task_errors)
        yield client
    finally:
        client.close()
        cluster.close()

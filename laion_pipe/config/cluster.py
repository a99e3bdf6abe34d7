"""Where the Dask work runs: the `cluster:` section of a workflow."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from .base import Section


class JobqueueConfig(Section):
    """dask-jobqueue settings shared by SLURM and PBS (names follow dask-jobqueue)."""

    cores: int = Field(8, ge=1)
    memory: str = "32GB"
    processes: int = Field(1, ge=1)
    queue: str | None = None
    account: str | None = None
    walltime: str = "04:00:00"
    job_extra_directives: list[str] = []
    job_script_prologue: list[str] = []
    local_directory: str | None = None
    interface: str | None = None
    worker_extra_args: list[str] = []
    jobs: int = Field(1, ge=0, description="jobs started at once when adaptive is off")
    adaptive_minimum: int | None = Field(None, ge=0, description="adaptive scaling: minimum jobs")
    adaptive_maximum: int | None = Field(None, ge=1, description="adaptive scaling: maximum jobs")
    gpus_per_job: int = Field(0, ge=0, description="declares Dask resource GPU=n on each worker")


class KubernetesConfig(Section):
    """dask-kubernetes (operator) settings."""

    name: str = "laion-pipe"
    namespace: str | None = None
    image: str = "ghcr.io/dask/dask:latest"
    n_workers: int = Field(2, ge=0)
    resources: dict = {}
    env: dict[str, str] = {}
    gpus_per_worker: int = Field(0, ge=0)
    adaptive_minimum: int | None = Field(None, ge=0)
    adaptive_maximum: int | None = Field(None, ge=1)


class ClusterConfig(Section):
    kind: Literal["local", "address", "slurm", "pbs", "kubernetes"] = "local"
    # local
    n_workers: int | None = Field(None, ge=1, description="local workers; default: one per core")
    threads_per_worker: int = Field(1, ge=1)
    memory_limit: str = "2GB"
    processes: bool = True
    gpus_per_worker: int = Field(0, ge=0, description="Dask resource GPU declared on local workers")
    dashboard_address: str = Field(":0", description="where the local cluster's dashboard listens (\":8787\" pins the usual port; \":0\" a free one)")
    profile_interval: str = Field(
        "100ms",
        pattern=r"^(off|\d+(\.\d+)?\s*(ms|s))$",
        description="how often each worker samples its threads' stacks for the dashboard's Profile page (local, SLURM, PBS and "
        "Kubernetes workers this section starts); 'off' turns the sampling off. Dask's default, 10ms, costs a download worker "
        "about 2.5% of its CPU (0.07-0.09 ms per image); 100ms keeps the page's picture at a tenth of that",
    )
    # address
    address: str | None = None
    # jobqueue / kubernetes
    jobqueue: JobqueueConfig = JobqueueConfig()
    kubernetes: KubernetesConfig = KubernetesConfig()

    @field_validator("profile_interval")
    @classmethod
    def _interval_at_least_1ms(cls, v: str) -> str:
        # a worker's sampler is a periodic callback: 0 stops every worker from starting, and a
        # few microseconds would keep its event loop spinning
        from dask.utils import parse_timedelta  # the parser the workers will read it with

        if v != "off" and parse_timedelta(v) < 0.001:
            raise ValueError(f"{v!r} is under 1ms (use 'off' to turn the sampling off)")
        return v

    def declared_gpus(self) -> int:
        """GPUs this section declares on its workers or jobs (0 for an existing scheduler, whose
        workers declare their own resources)."""
        return {
            "local": self.gpus_per_worker,
            "slurm": self.jobqueue.gpus_per_job,
            "pbs": self.jobqueue.gpus_per_job,
            "kubernetes": self.kubernetes.gpus_per_worker,
        }.get(self.kind, 0)

"""Cluster kinds from the workflow: local runs here; SLURM/PBS/Kubernetes are checked through the
job script / pod spec they would submit (no batch system or Kubernetes API on this machine)."""
from __future__ import annotations

from pathlib import Path

import yaml

from laion_pipe.cluster import job_script, model_task_resources, open_client
from laion_pipe.config import load_workflow, workflow_from_dict

REPO = Path(__file__).resolve().parents[1]


def test_local_cluster_declares_gpu_resources():
    wf = workflow_from_dict({"cluster": {"n_workers": 1, "threads_per_worker": 1, "processes": False, "gpus_per_worker": 1}})
    with open_client(wf.cluster) as client:
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 1
        assert next(iter(workers.values()))["resources"] == {"GPU": 1.0}
        assert client.submit(lambda: 41 + 1, resources={"GPU": 1}).result() == 42


def test_workers_sample_their_stacks_at_the_configured_interval():
    """`cluster.profile_interval` reaches the worker processes a local cluster starts (Dask's own
    10ms default would be 10 here), and 'off' leaves them without the sampler."""
    def sampler(dask_worker):
        pc = dask_worker.periodic_callbacks.get("profile")
        return pc.callback_time if pc else None

    for setting, want in ((None, 100), ("250ms", 250), ("off", None)):
        cluster = {"n_workers": 1, "threads_per_worker": 1, "processes": True, "memory_limit": "1GB"}
        if setting:
            cluster["profile_interval"] = setting
        with open_client(workflow_from_dict({"cluster": cluster}).cluster) as client:
            assert list(client.run(sampler).values()) == [want], setting


def test_a_profile_interval_under_1ms_is_a_config_error():
    import pytest

    from laion_pipe.config import ConfigError

    for bad in ("0ms", "0s", "0.5ms", "fast", "10"):
        with pytest.raises(ConfigError, match="cluster.profile_interval"):
            workflow_from_dict({"cluster": {"profile_interval": bad}})


def test_batch_and_kubernetes_workers_get_the_profile_interval_in_their_environment():
    script = job_script(workflow_from_dict({"cluster": {"kind": "slurm"}}).cluster)
    assert "export DASK_DISTRIBUTED__WORKER__PROFILE__INTERVAL=100ms" in script.splitlines()
    wf = workflow_from_dict({"cluster": {"kind": "kubernetes", "profile_interval": "off", "kubernetes": {"env": {"A": "1"}}}})
    env = yaml.safe_load(job_script(wf.cluster))["spec"]["worker"]["spec"]["containers"][0]["env"]
    assert {e["name"]: e["value"] for e in env} == {"DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False", "A": "1"}
    import dask

    with dask.config.set({"distributed.worker.profile.enabled": True}):  # as a worker reads its environment
        assert dask.config.collect(env={"DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False"})["distributed"]["worker"]["profile"]["enabled"] is False


def test_model_tasks_ask_for_a_gpu_only_where_workers_have_one():
    """The policy score (and evaluate) tasks follow: a GPU request on a cluster without GPU
    workers would wait forever, so by default they ask only when the cluster declares GPUs."""
    def res(cluster: dict, request=None):
        return model_task_resources(workflow_from_dict({"cluster": cluster}).cluster, request)

    assert res({}) is None and res({"kind": "address", "address": "tcp://x:1"}) is None
    assert res({"gpus_per_worker": 1}) == {"GPU": 1}
    assert res({"kind": "slurm", "jobqueue": {"gpus_per_job": 2}}) == {"GPU": 1}
    assert res({"kind": "pbs", "jobqueue": {"gpus_per_job": 1}}) == {"GPU": 1}
    assert res({"kind": "kubernetes", "kubernetes": {"gpus_per_worker": 1}}) == {"GPU": 1}
    assert res({}, request=True) == {"GPU": 1}  # an existing scheduler's GPU workers: ask explicitly
    assert res({"gpus_per_worker": 1}, request=False) is None


def test_slurm_job_script_from_workflow():
    script = job_script(load_workflow(REPO / "workflows/slurm.yaml").cluster)
    assert "#SBATCH -p cpu" in script and "#SBATCH -A my-project" in script
    assert "#SBATCH --cpus-per-task=16" in script and "#SBATCH -t 08:00:00" in script
    assert "--nworkers 8" in script and "--local-directory /tmp" in script


def test_pbs_job_script_requests_gpus_and_declares_resource():
    script = job_script(load_workflow(REPO / "workflows/pbs.yaml").cluster)
    assert "#PBS -q gpu" in script and "ngpus=4" in script
    assert "--resources GPU=1" in script and "--nworkers 4" in script


def test_kubernetes_spec_from_workflow():
    spec = yaml.safe_load(job_script(load_workflow(REPO / "workflows/kubernetes.yaml").cluster))
    assert spec["kind"] == "DaskCluster" and spec["metadata"] == {"name": "laion-pipe", "namespace": "data"}
    worker = spec["spec"]["worker"]
    assert worker["replicas"] == 8
    container = worker["spec"]["containers"][0]
    assert container["image"] == "ghcr.io/my-org/laion-pipe:0.1.0"
    assert container["resources"]["limits"]["memory"] == "16Gi"


def test_kubernetes_gpu_workers_get_resource_and_limit():
    wf = workflow_from_dict({"cluster": {"kind": "kubernetes", "kubernetes": {"gpus_per_worker": 1}}})
    spec = yaml.safe_load(job_script(wf.cluster))
    container = spec["spec"]["worker"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["args"][:3] == ["dask-worker", "--resources", "GPU=1"]


def test_a_shared_cluster_gets_the_quiet_task_errors_plugin_only_while_the_run_uses_it():
    from distributed import LocalCluster

    from laion_pipe.cluster import QuietTaskErrors

    def plugins(client):
        return [n for names in client.run(lambda dask_worker: list(dask_worker.plugins)).values() for n in names]

    with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cluster:
        wf = workflow_from_dict({"cluster": {"kind": "address", "address": cluster.scheduler_address}})
        with open_client(wf.cluster) as client:
            assert QuietTaskErrors.name in plugins(client)
        with open_client(wf.cluster, quiet_task_errors=False) as client:
            assert QuietTaskErrors.name not in plugins(client)


def test_a_local_cluster_gives_the_driver_its_environment_back(monkeypatch):
    """Dask's nannies set OMP_NUM_THREADS=1 (and friends) in the driver's os.environ before
    spawning workers; a torch imported after the cluster closed (the demo trains in the driver)
    would start with one thread. open_client restores the environment on exit."""
    import os

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "7")
    before = dict(os.environ)
    wf = workflow_from_dict({"cluster": {"n_workers": 1, "threads_per_worker": 1, "processes": True}})
    with open_client(wf.cluster) as client:
        assert client.submit(os.environ.get, "OMP_NUM_THREADS").result() == "1"  # the workers keep Dask's setting
        assert os.environ.get("OMP_NUM_THREADS") == "1"  # what the nanny did to this process
    assert dict(os.environ) == before

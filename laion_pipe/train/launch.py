"""Starting the training processes: torchrun on this machine, or a SLURM / PBS job script.

Training is SPMD: one process per GPU, each running `python -m laion_pipe.train.worker`, started
by torchrun (`torch.distributed.run`, what `accelerate launch --multi_gpu` runs underneath), whose
environment (RANK, WORLD_SIZE, MASTER_ADDR, ...) accelerate's `Accelerator` reads. On a cluster
the job script starts one torchrun per node (srun / pbsdsh) with a c10d rendezvous on the first
node, so nodes find each other without a hand-written rank table.

The job script carries the whole workflow (a here-document written into the run directory at
the job's start), so the job runs exactly what was validated when the script was printed.
"""
from __future__ import annotations

import shlex
import sys

import yaml

WORKER = "laion_pipe.train.worker"


def job_workflow_path(out: str, name: str) -> str:
    return f"{out.rstrip('/')}/train/{name}/workflow.yaml"


def worker_args(out: str, workflow: str, *, prepared: bool = False, progress: bool = True) -> list[str]:
    args = ["-m", WORKER, "--out", out, "--workflow", workflow]
    if prepared:
        args.append("--prepared")
    if not progress:
        args.append("--no-progress")
    return args


def rendezvous_args(master_port: int | None) -> list[str]:
    """torchrun's rendezvous on this machine: `--standalone` (a c10d store on a free port, so
    two trainings on one machine never meet on 29500) unless `train.launch.master_port` names
    a port (torchrun's static rendezvous on 127.0.0.1)."""
    if master_port is None:
        return ["--standalone"]
    return ["--master-addr", "127.0.0.1", "--master-port", str(master_port)]


def local_command(wf, out: str, workflow: str, *, python: str | None = None, progress: bool = True,
                  root_cause: str | None = None, log_dir: str | None = None) -> list[str]:
    """torchrun on this machine: `processes_per_node` workers, the stage having prepared the run
    already. With `root_cause`, torchrun runs through `elastic.py`, which writes the first
    failure there; `log_dir` is torchrun's folder for the workers' error files."""
    L = wf.train.launch
    run = ["-m", "laion_pipe.train.elastic", "--root-cause", root_cause] if root_cause else ["-m", "torch.distributed.run"]
    logs = ["--log-dir", log_dir] if log_dir else []
    return [python or sys.executable, *run, *rendezvous_args(L.master_port), "--nnodes", "1",
            "--nproc_per_node", str(L.processes_per_node), *logs,
            *worker_args(out, workflow, prepared=True, progress=progress)]


def _master_port(L) -> str:
    """The job's rendezvous port: `train.launch.master_port`, else one the first node finds free
    when the job starts (the batch script runs there, and MASTER_ADDR is that node)."""
    if L.master_port is not None:
        return str(L.master_port)
    probe = 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'
    return f"$({shlex.quote(L.python)} -c {shlex.quote(probe)})"


def _torchrun_multinode(wf, out: str, workflow: str, nodes_var: str) -> str:
    L = wf.train.launch
    args = [L.python, "-m", "torch.distributed.run", "--nnodes", nodes_var, "--nproc_per_node", str(L.processes_per_node),
            "--rdzv_backend", "c10d", "--rdzv_endpoint", "$MASTER_ADDR:$MASTER_PORT", "--rdzv_id", "$JOB_ID",
            *worker_args(out, workflow, progress=False)]
    return " ".join(a if a.startswith("$") else shlex.quote(a) for a in args)


def _slurm_memory(memory: str) -> str:
    """sbatch wants 64G, not 64GB."""
    m = memory.strip().upper()
    return m[:-1] if m.endswith(("KB", "MB", "GB", "TB")) else m


def job_kind(wf) -> str | None:
    """slurm / pbs: train.launch.job, else the cluster section's kind when it is a batch system."""
    if wf.train.launch.job:
        return wf.train.launch.job
    return wf.cluster.kind if wf.cluster.kind in ("slurm", "pbs") else None


def _workflow_heredoc(wf, out: str, path: str) -> list[str]:
    data = wf.model_dump(mode="json")
    data["out"] = out
    data["runner"]["force"] = False
    text = yaml.safe_dump(data, sort_keys=False)
    folder = path.rpartition("/")[0]
    return [f"mkdir -p {shlex.quote(folder)}", f"cat > {shlex.quote(path)} <<'LAION_PIPE_WORKFLOW'", text.rstrip("\n"),
            "LAION_PIPE_WORKFLOW"]


def train_job_script(wf, out: str | None = None) -> str:
    """The batch job that trains the workflow's `train:` model on `train.launch.nodes` nodes of
    `processes_per_node` GPUs each (SLURM: sbatch; PBS: qsub). `laion-pipe run --dry-run`
    prints it."""
    out = out or wf.out
    if not out:
        raise ValueError("out: the job script needs the run directory (--out or `out:` in the workflow)")
    kind = job_kind(wf)
    if kind is None:
        raise ValueError("train.launch.job: no batch system (set train.launch.job: slurm or pbs, or cluster.kind)")
    L, jq = wf.train.launch, wf.cluster.jobqueue
    queue, account = L.queue or jq.queue, L.account or jq.account
    cpus = L.processes_per_node * L.cpus_per_process
    wpath = job_workflow_path(out, wf.train.name)
    if kind == "slurm":
        head = ["#!/bin/bash", f"#SBATCH --job-name={L.job_name}", f"#SBATCH --nodes={L.nodes}",
                "#SBATCH --ntasks-per-node=1", f"#SBATCH --gpus-per-node={L.processes_per_node}",
                f"#SBATCH --cpus-per-task={cpus}", f"#SBATCH --mem={_slurm_memory(L.memory)}", f"#SBATCH --time={L.walltime}"]
        head += [f"#SBATCH --partition={queue}"] if queue else []
        head += [f"#SBATCH --account={account}"] if account else []
        body = [*L.setup, 'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
                f"export MASTER_PORT={_master_port(L)}", "export JOB_ID=$SLURM_JOB_ID",
                *_workflow_heredoc(wf, out, wpath),
                f"srun --ntasks-per-node=1 {_torchrun_multinode(wf, out, wpath, '$SLURM_NNODES')}"]
    else:
        head = ["#!/bin/bash", f"#PBS -N {L.job_name}",
                f"#PBS -l select={L.nodes}:ncpus={cpus}:ngpus={L.processes_per_node}:mem={L.memory.lower()}",
                f"#PBS -l walltime={L.walltime}", "#PBS -j oe"]
        head += [f"#PBS -q {queue}"] if queue else []
        head += [f"#PBS -A {account}"] if account else []
        node_script = f"{out.rstrip('/')}/train/{wf.train.name}/pbs-node.sh"
        # pbsdsh -u runs one command per node of the job, in a bare environment: each node runs a
        # script written here with this job's values filled in (an unquoted here-document).
        body = ['cd "$PBS_O_WORKDIR"', *L.setup, 'export MASTER_ADDR=$(head -n 1 "$PBS_NODEFILE")',
                f"export MASTER_PORT={_master_port(L)}", 'export JOB_ID="$PBS_JOBID"', f"export NNODES={L.nodes}",
                *_workflow_heredoc(wf, out, wpath),
                f"cat > {shlex.quote(node_script)} <<LAION_PIPE_NODE", "#!/bin/bash", "set -euo pipefail",
                "cd $PBS_O_WORKDIR", *L.setup,
                _torchrun_multinode(wf, out, wpath, "$NNODES"), "LAION_PIPE_NODE",
                f"pbsdsh -u bash {shlex.quote(node_script)}"]
    return "\n".join(head + ["", "set -euo pipefail", *body]) + "\n"

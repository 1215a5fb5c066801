"""The TPU VM launcher: a prepared sweep in, ``gcloud`` commands that train it on a TPU VM out.

In: a sweep root prepared by ``moejax.sweep.launch.prepare`` (run directories with ``run.gin``, the
manifest) and a ``TpuVm`` (name, zone, project, accelerator type, runtime version). Out: the
commands, run in order through ``subprocess`` (or printed with ``--dry_run``):

1. optionally create the VM: ``gcloud compute tpus tpu-vm create`` or, with ``queued``,
   ``gcloud compute tpus queued-resources create`` then ``describe`` until the node is ACTIVE;
2. sync the code: a tarball of the repository (no .git, .venv, runs) and of the run configs,
   ``gcloud compute tpus tpu-vm scp ... --worker=all``, unpacked on every worker;
3. install: ``bash launch/setup.sh`` and the TPU build of JAX on every worker;
4. per run not done yet: ``gcloud compute tpus tpu-vm ssh NAME --worker=all --command='moejax
   train --gin_file=<run>/run.gin --workdir=<run>'``, the same command on every host (``moejax
   train`` initialises ``jax.distributed`` on a multi-host slice); each worker writes
   ``<run>/train.worker<N>.log``, copied back into the local run directory. A failed run is
   marked failed in the manifest and the next one starts; rerunning the sweep skips runs marked
   done and resumes the others from their checkpoints;
5. evaluate on worker 0 (``launch/eval_sweep.sh``) and copy ``points.jsonl`` back.

Every command is built by a pure function (tested against a fake ``gcloud`` on PATH). For a
multi-host slice the remote root must be storage every worker sees (a GCS FUSE or NFS mount):
checkpoints are written by all hosts.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import time
from typing import Callable, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CODE_EXCLUDES = (".git", ".venv", "runs", "__pycache__", ".pytest_cache")
WORKER_ID = ("$(curl -s -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/"
             "v1/instance/attributes/agent-worker-number 2>/dev/null || echo 0)")


@dataclasses.dataclass(frozen=True)
class TpuVm:
    """Where and how to run a sweep on a Cloud TPU VM.

    Attributes:
      name: TPU VM (node) name.
      zone: e.g. 'us-central2-b'.
      project: GCP project (None: gcloud's default).
      accelerator_type: e.g. 'v4-8', 'v5litepod-16' (used when creating).
      runtime_version: TPU software version, e.g. 'tpu-ubuntu2204-base' (used when creating).
      create: create the VM before syncing (False: it exists already).
      queued: create it through queued resources (waits until ACTIVE).
      remote_dir: the repository's directory on every worker.
      remote_root: the sweep root on the workers (None: <remote_dir>/<local root's name>); on a
        multi-host slice a mount every worker shares.
      install: the command that installs moejax on a worker, run in remote_dir.
      poll_seconds: interval between queued-resource state checks.
    """

    name: str
    zone: str
    project: str | None = None
    accelerator_type: str = "v4-8"
    runtime_version: str = "tpu-ubuntu2204-base"
    create: bool = False
    queued: bool = False
    remote_dir: str = "moejax"
    remote_root: str | None = None
    install: str = ("bash launch/setup.sh && .venv/bin/python -m pip install -q 'jax[tpu]' "
                    "-f https://storage.googleapis.com/jax-releases/libtpu_releases.html")
    poll_seconds: float = 30.0


def _where(vm: TpuVm) -> list[str]:
    return [f"--zone={vm.zone}"] + ([f"--project={vm.project}"] if vm.project else [])


def create_commands(vm: TpuVm) -> list[list[str]]:
    """Create the VM (directly, or as a queued resource; the wait is ``queued_state_command``)."""
    if vm.queued:
        return [["gcloud", "compute", "tpus", "queued-resources", "create", vm.name,
                 f"--node-id={vm.name}", f"--accelerator-type={vm.accelerator_type}",
                 f"--runtime-version={vm.runtime_version}", *_where(vm)]]
    return [["gcloud", "compute", "tpus", "tpu-vm", "create", vm.name,
             f"--accelerator-type={vm.accelerator_type}", f"--version={vm.runtime_version}",
             *_where(vm)]]


def queued_state_command(vm: TpuVm) -> list[str]:
    """Prints the queued resource's state (ACTIVE when the VM is ready)."""
    return ["gcloud", "compute", "tpus", "queued-resources", "describe", vm.name, *_where(vm),
            "--format=value(state.state)"]


def ssh_command(vm: TpuVm, command: str, worker: str = "all") -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", vm.name, *_where(vm),
            f"--worker={worker}", f"--command={command}"]


def scp_command(vm: TpuVm, source: str, destination: str, worker: str = "all") -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "scp", source, destination, *_where(vm),
            f"--worker={worker}"]


def remote_root(vm: TpuVm, root: str) -> str:
    """The sweep root on the workers, absolute or relative to the home directory."""
    return vm.remote_root or f"{vm.remote_dir}/{os.path.basename(os.path.abspath(root))}"


def _in_shell(path: str) -> str:
    """A remote path for a command line that may change directory: relative means under $HOME."""
    return path if path.startswith(("/", "~", "$")) else f"$HOME/{path}"


def sync_commands(vm: TpuVm, code_tarball: str, runs_tarball: str, root: str) -> list[list[str]]:
    """Copy the code and run configs to every worker, unpack them, install moejax."""
    code, runs = vm.remote_dir, remote_root(vm, root)
    unpack = (f"mkdir -p {code} {runs} && tar xzf moejax-code.tgz -C {code} "
              f"&& tar xzf moejax-runs.tgz -C {runs}")
    return [scp_command(vm, code_tarball, f"{vm.name}:moejax-code.tgz"),
            scp_command(vm, runs_tarball, f"{vm.name}:moejax-runs.tgz"),
            ssh_command(vm, unpack),
            ssh_command(vm, f"cd {code} && {vm.install}")]


def train_commands(vm: TpuVm, root: str, run: dict) -> list[list[str]]:
    """Train one run on every worker (logs per worker), then copy the logs into the local run,
    and from worker 0 (which writes them) its metrics, validation losses and loss curve, so the
    local report shows the run."""
    run_dir = f"{remote_root(vm, root)}/{run['run_id']}"
    here = _in_shell(run_dir)
    train = (f"cd {vm.remote_dir} && .venv/bin/moejax train --gin_file={here}/run.gin "
             f"--workdir={here} > {here}/train.worker{WORKER_ID}.log 2>&1")
    return [ssh_command(vm, train),
            scp_command(vm, f"{vm.name}:{run_dir}/train.worker*.log", run["dir"] + "/"),
            scp_command(vm, f"{vm.name}:{run_dir}/*.jsonl", run["dir"] + "/", worker="0"),
            scp_command(vm, f"{vm.name}:{run_dir}/loss_curve.png", run["dir"] + "/", worker="0")]


def evaluate_commands(vm: TpuVm, root: str, steps: str = "all") -> list[list[str]]:
    """Score the checkpoints ``steps`` names ('latest', 'all' or 'N,M': the grid's eval_steps)
    of every run on worker 0 and copy points.jsonl into the local root."""
    remote = remote_root(vm, root)
    return [ssh_command(vm, f"cd {vm.remote_dir} && bash launch/eval_sweep.sh {_in_shell(remote)} "
                            f"{_in_shell(remote)}/points.jsonl --steps={shlex.quote(steps)}",
                        worker="0"),
            scp_command(vm, f"{vm.name}:{remote}/points.jsonl", os.path.join(root, "points.jsonl"),
                        worker="0")]


def _tar(path: str, source: str, names: Sequence[str] | None = None) -> str:
    """A gzip tarball of ``source`` (only ``names`` under it if given), without CODE_EXCLUDES."""
    def keep(info: tarfile.TarInfo):
        parts = info.name.split("/")
        return None if any(p in CODE_EXCLUDES for p in parts) else info

    with tarfile.open(path, "w:gz") as tar:
        for name in names if names is not None else sorted(os.listdir(source)):
            tar.add(os.path.join(source, name), arcname=name, filter=keep)
    return path


def run_tpu_vm(root: str, manifest: dict, vm: TpuVm, *, eval_steps: str = "all",
               dry_run: bool = False,
               runner: Callable[[list[str]], int] = subprocess.call,
               save: Callable[[dict], None] = lambda manifest: None,
               log: Callable[[str], None] = print) -> dict:
    """Create (optionally), sync, install, train every run not done, evaluate the checkpoints
    ``eval_steps`` names; returns the manifest with each run's status. ``dry_run`` prints the
    commands and runs nothing."""
    def call(command: list[str]) -> int:
        log(shlex.join(command))
        return 0 if dry_run else runner(command)

    staging = tempfile.mkdtemp(prefix="moejax-tpu-")
    code_tarball = os.path.join(staging, "moejax-code.tgz")
    runs_tarball = os.path.join(staging, "moejax-runs.tgz")
    if dry_run:
        log(f"# {code_tarball} (the repository) and {runs_tarball} (the run configs) are made "
            "at run time and removed after the copy")
    else:
        _tar(code_tarball, REPO)
        _tar(runs_tarball, root, [os.path.join(r["run_id"], "run.gin") for r in manifest["runs"]])
    if vm.create:  # (the tarballs are made first: a broken checkout fails before any cost)
        for command in create_commands(vm):
            if call(command) != 0:
                raise RuntimeError(f"creating TPU VM {vm.name} failed: {shlex.join(command)}")
        if vm.queued:
            _wait_until_active(vm, call if dry_run else None, log)
    try:
        for command in sync_commands(vm, code_tarball, runs_tarball, root):
            if call(command) != 0:
                raise RuntimeError(f"syncing to TPU VM {vm.name} failed: {shlex.join(command)}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for index, run in enumerate(manifest["runs"], 1):
        if run["status"] == "done":
            log(f"[{index}/{len(manifest['runs'])}] {run['run_id']}: finished earlier, skipped")
            continue
        log(f"[{index}/{len(manifest['runs'])}] {run['run_id']}: training on {vm.name}")
        start = time.time()
        train, *fetch = train_commands(vm, root, run)
        exit_code = call(train)
        for command in fetch:  # logs of every worker; metrics and curve of a run that got far
            call(command)
        if dry_run:
            continue
        run["status"] = "done" if exit_code == 0 else "failed"
        run["seconds"] = round(time.time() - start, 1)
        if exit_code != 0:
            log(f"    failed (exit {exit_code}); see {run['dir']}/train.worker*.log")
        save(manifest)
    if dry_run or any(r["status"] == "done" for r in manifest["runs"]):
        for command in evaluate_commands(vm, root, eval_steps):
            call(command)
    return manifest


def _wait_until_active(vm: TpuVm, dry_call, log) -> None:
    """Poll the queued resource until ACTIVE (raises on FAILED or SUSPENDED)."""
    command = queued_state_command(vm)
    if dry_call is not None:
        dry_call(command)
        return
    while True:
        state = subprocess.run(command, capture_output=True, text=True).stdout.strip()
        log(f"    queued resource {vm.name}: {state or 'unknown'}")
        if state == "ACTIVE":
            return
        if state in ("FAILED", "SUSPENDED"):
            raise RuntimeError(f"queued resource {vm.name} is {state}")
        time.sleep(vm.poll_seconds)

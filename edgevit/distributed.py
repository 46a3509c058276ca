"""Multi-process training on torch.distributed: launched by torchrun, or by us through torchrun.

Processes started by ``torchrun`` (ours or the user's) find RANK/WORLD_SIZE in the environment;
``init()`` joins the group with gloo on CPU and nccl on GPUs (``edgevit.compute``). Each process takes its share of
every global batch and DistributedDataParallel averages the gradients, so N processes follow
the same optimisation as one process with the same global batch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from edgevit.errors import EdgeVitError


@dataclass(frozen=True)
class World:
    """This process's place in the group (rank 0 of 1 when not distributed)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """True on the process that writes files and prints progress."""
        return self.rank == 0


def launched() -> bool:
    """True when this process was started by torchrun with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(backend: str | None = None) -> World:
    """Join the process group if torchrun started us (idempotent): over ``backend`` (the training
    device's, ``Compute.distributed_backend``: nccl on GPUs, gloo on CPUs; gloo when not given).
    The world otherwise is 1 process."""
    if not launched():
        return World()
    if not dist.is_initialized():
        backend = backend or "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
        if backend == "gloo":
            cores = os.cpu_count() or 1
            local = int(os.environ.get("LOCAL_WORLD_SIZE", str(dist.get_world_size())))
            torch.set_num_threads(max(1, cores // local))
    return World(dist.get_rank(), dist.get_world_size())


def barrier() -> None:
    """Wait for every process (no-op when not distributed)."""
    if dist.is_initialized():
        dist.barrier()


def finish() -> None:
    """Leave the process group."""
    if dist.is_initialized():
        dist.destroy_process_group()


def run_under_torchrun(module_args: list[str], nproc: int) -> None:
    """Run ``python -m <module_args>`` as ``nproc`` processes under torchrun; raise if it fails."""
    if nproc < 1:
        raise EdgeVitError(f"--nproc must be at least 1, got {nproc}")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        *module_args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // nproc))}
    code = subprocess.run(cmd, env=env).returncode
    if code != 0:
        raise EdgeVitError(
            f"{nproc}-process run under torchrun failed (exit {code})", "see the worker errors printed above"
        )


def run_stage_under_torchrun(
    command: str, config: dict[str, Any], out_dir: Path, nproc: int, log_file: str, progress: bool
) -> dict[str, Any]:
    """Run ``edgevit <command> --config`` (distill, qat) as ``nproc`` processes under torchrun on
    ``config`` (written into ``out_dir`` meanwhile); return the log rank 0 wrote there."""
    from edgevit.fileio import atomic_write_json, ensure_dir

    ensure_dir(out_dir, "output directory")
    config_path = out_dir / f"{command}_config.json"
    atomic_write_json(config_path, config)
    args = ["edgevit.cli", command, "--config", str(config_path), "-o", str(out_dir)]
    run_under_torchrun(args if progress else [*args, "--quiet"], nproc)
    config_path.unlink()
    return dict(json.loads((out_dir / log_file).read_text()))

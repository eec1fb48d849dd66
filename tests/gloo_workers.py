"""Run a test's context-parallel scenario in CPU worker processes joined by gloo, and collect what each returns.

Every context-parallel test module needs the same scaffolding: a free port, one torch thread per worker, the
tests folder importable, ``torch.accelerator.device_count`` returning 1 (diffusers divides the rank by it to pick
a device), a gloo group, and a result file per rank. One copy lives here.

Teardown is where gloo is fragile on a loaded machine: a rank that tears its group down while the other still
talks to it, or torch's exit with gloo threads alive, aborts with "terminate called without an active
exception" after the work is done. So every rank waits at a barrier before destroying the group, results are
written atomically (a rank's file exists only when complete), and an abnormal exit *after* every rank wrote its
file is reported as a warning, not a failure: the scenario's numbers are what the tests check. An exit before
that still fails.
"""

from __future__ import annotations

import os
import socket
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _result_file(out_dir: Path, rank: int) -> Path:
    return out_dir / f"rank{rank}.pt"


def _entry(rank: int, scenario: Callable[..., dict[str, Any]], port: int, world: int, out_dir: str,
           args: tuple) -> None:
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).parent))
    torch.accelerator.device_count = lambda: 1
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results = scenario(rank, *args)
        final = _result_file(Path(out_dir), rank)
        partial = final.with_suffix(".partial")
        torch.save(results, partial)
        os.replace(partial, final)
        dist.barrier()  # no rank tears the group down while another still has collectives in flight
    finally:
        dist.destroy_process_group()


def run_on_gloo(scenario: Callable[..., dict[str, Any]], out_dir: Path, world: int = 2,
                args: tuple = ()) -> list[dict[str, Any]]:
    """``scenario(rank, *args)`` in ``world`` processes; the dict each returns, by rank.

    ``scenario`` must be a module-level function (it is pickled by name) and must return plain tensors
    (``.clone()`` any output of diffusers' functional collectives: it may still be gathering).
    """
    try:
        mp.spawn(_entry, args=(scenario, _free_port(), world, str(out_dir), args), nprocs=world, join=True)
    except mp.ProcessExitedException as error:
        if not all(_result_file(out_dir, r).exists() for r in range(world)):
            raise
        warnings.warn(f"a gloo worker exited abnormally after every rank saved its results ({error})", stacklevel=2)
    return [torch.load(_result_file(out_dir, r), weights_only=False) for r in range(world)]

"""Start torch.distributed ranks inside pytest (test_distributed.py, test_distributed_cuda.py).

spawn(fn, world, tmp_path, *args) runs fn(rank, world, *args) on `world` processes (spawn start
method, a file rendezvous under tmp_path) and fails the test on a rank's error or after `timeout`
seconds (the ranks still alive are terminated).

A rank that succeeded leaves with os._exit(0) right after destroy_process_group: torch's
ProcessGroupGloo worker thread can still be releasing its last work item (tensors with Python
references) when the interpreter finalizes, and then aborts the process ("terminate called
without an active exception" from PyEval_AcquireThread in ProcessGroupGloo::runLoop; about 1 run
in 13 of the two-rank CUDA-file worker on CPU before this). The crash is torch's teardown, after
the rank's work and its checks are done; pytorch/pytorch#179291 describes it."""

from __future__ import annotations

import os
import sys
import time
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def spawn(fn, world: int, tmp_path, *args, backend: str = "gloo", cuda: bool = False, timeout: float = 120):
    """cuda: every rank makes GPU 0 its device (two gloo ranks may share the one GPU)."""
    init = f"file://{tmp_path}/rdv"
    ctx = mp.start_processes(_entry, args=(fn, world, backend, cuda, init, args), nprocs=world, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.terminate()
            pytest.fail(f"{fn.__name__} on {world} {backend} ranks did not finish in {timeout} s")


def _entry(rank, fn, world, backend, cuda, init, args):
    torch.set_num_threads(1)
    if cuda:
        torch.cuda.set_device(0)
    dist.init_process_group(backend, init_method=init, rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
        dist.barrier()  # every rank done before any tears its gloo pairs down
    except Exception:
        raise RuntimeError(f"rank {rank}:\n{traceback.format_exc()}") from None
    finally:
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # success: skip interpreter finalization (see the module docstring)

r"""Data-parallel training on several processes of one machine, with :mod:`torch.distributed`.

:func:`launch` starts N processes, joins them in one process group (gloo on the CPU, NCCL on
CUDA, where process r uses GPU r) and runs a function in each. Inside such a group
:func:`pushforward.fit` trains with DistributedDataParallel: every process takes its shard of
each mini-batch, so that the *global* mini-batch is still ``batch_size`` and each process
computes ``batch_size / N`` examples of it; gradients are averaged by DDP; process 0 alone
writes checkpoints and shows progress. The same code runs under ``torchrun``, which sets the
group up through environment variables (:func:`init_from_environment`).

Outside a process group (or in a group of one) every helper here is the identity, so the
library code that calls them runs unchanged on one process.
"""

from __future__ import annotations

import multiprocessing.connection
import os
import pickle
import signal
import time
from collections.abc import Callable, Sequence
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["launch", "init_from_environment", "environment_world_size", "rank", "world_size", "is_distributed",
           "all_reduce_sum", "shard", "barrier", "backend_for", "local_device"]


def world_size() -> int:
    """The number of processes of the default process group, 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank in the default process group, 0 without one."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_distributed() -> bool:
    """True inside a process group of more than one process."""
    return world_size() > 1


def all_reduce_sum(t: Tensor, differentiable: bool = False) -> Tensor:
    """The sum of ``t`` over the processes (``t`` itself outside a process group).

    With ``differentiable=True`` the result carries gradients, and its backward pass sums the
    incoming gradients over the processes too (as SyncBatchNorm does), so that a statistic of
    the global batch back-propagates to every process's examples. The input is not modified.

    Shapes: any; the result has the shape, dtype and device of ``t`` (on NCCL, a CUDA tensor).
    """
    if not is_distributed():
        return t
    if differentiable:
        return _AllReduceSum.apply(t)
    t = t.clone()
    dist.all_reduce(t)
    return t


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes whose backward sums the gradients over them: the map y = sum_r t_r
    seen by process r has dL/dt_r = sum_r' dL_r'/dy. (torch.distributed.nn.functional.all_reduce
    does this but is deprecated in favour of a private module.)"""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        t = t.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


def shard(t: Tensor) -> Tensor:
    """This process's part of ``t`` along the first dimension.

    ``torch.tensor_split`` into ``world_size()`` consecutive parts whose sizes differ by at most
    one (the last parts may be empty when ``len(t) < world_size()``); ``t`` outside a group.
    """
    return torch.tensor_split(t, world_size())[rank()] if is_distributed() else t


def barrier() -> None:
    """Wait for every process of the group (nothing outside one)."""
    if is_distributed():
        dist.barrier()


def backend_for(device: str | torch.device) -> str:
    """The process-group backend for ``device``: "nccl" for CUDA, "gloo" for the CPU.

    Raises:
        ValueError: for another device type (MPS has no collective backend).
    """
    device = torch.device(device)
    if device.type == "cuda":
        return "nccl"
    if device.type == "cpu":
        return "gloo"
    raise ValueError(f"training on several processes needs --device cpu or cuda, not {device.type}")


def local_device(device: str | torch.device) -> torch.device:
    """The device this process trains on: ``device``, except that inside a CUDA process group
    process r (``LOCAL_RANK`` under torchrun) uses its own GPU, whatever index ``device`` names."""
    device = torch.device(device)
    if device.type == "cuda" and is_distributed():
        return torch.device("cuda", torch.cuda.current_device())
    return device


def environment_world_size() -> int:
    """``WORLD_SIZE`` as ``torchrun`` sets it, 1 when it is not set."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _setup(device: torch.device, local_rank: int, threads: int | None) -> None:
    torch.set_num_threads(threads or 1)
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)


def init_from_environment(device: str | torch.device = "cpu", threads: int | None = None) -> bool:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Does nothing (and returns False) outside torchrun, for a world of one process, or when a
    default group exists already; otherwise sets ``torch.set_num_threads(threads or 1)``, picks
    GPU ``LOCAL_RANK`` on CUDA, initialises the group with :func:`backend_for` and returns True
    (the caller then calls ``torch.distributed.destroy_process_group()`` at the end).

    Raises:
        ValueError: for a device type without a backend (see :func:`backend_for`).
    """
    if environment_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        return False
    device = torch.device(device)
    backend = backend_for(device)
    _setup(device, int(os.environ.get("LOCAL_RANK", "0")), threads)
    dist.init_process_group(backend)
    return True


def _worker(index: int, fn: Callable, args: Sequence, nproc: int, port: int, device: torch.device,
            threads: int | None, timeout: float, messages) -> None:
    _setup(device, index, threads)
    store = dist.TCPStore("127.0.0.1", port, is_master=False, timeout=timedelta(seconds=timeout))
    dist.init_process_group(backend_for(device), store=store, rank=index, world_size=nproc,
                            timeout=timedelta(seconds=timeout))
    try:
        value = fn(*args)
        if index == 0:
            # Plain pickle: torch's queue would pass tensors through shared memory that ends
            # with this process.
            messages.put(("result", pickle.dumps(value)))
    except Exception as e:
        try:
            messages.put(("error", pickle.dumps(e)))
        except Exception:  # an exception that does not pickle: the parent reports the traceback
            pass
        raise
    finally:
        dist.destroy_process_group()


def launch(fn: Callable, nproc: int, args: Sequence = (), *, device: str | torch.device = "cpu",
           threads: int | None = None, timeout: float = 1800.0):
    """Run ``fn(*args)`` in ``nproc`` new processes that form one process group; return what
    process 0's call returned.

    The processes are started with torch.multiprocessing ("spawn": ``fn`` and ``args`` must be
    picklable, ``fn`` defined at the top level of a module). They meet at a TCP store on a free
    localhost port that this process holds open; the backend is gloo on the CPU and NCCL on
    CUDA, where process r uses GPU r. Each sets ``torch.set_num_threads(threads or 1)``.

    Process 0's return value travels back pickled through a pipe: keep it small (a few MB).
    If a process raises, the others are stopped and its exception is raised here (the first one
    when several fail alike); ``timeout`` (seconds) bounds how long a collective waits for a
    process that is gone. On Ctrl-C the processes, which receive the same SIGINT from a terminal,
    get a few seconds to finish (process 0 of :func:`pushforward.fit` saves its checkpoint);
    those still running are then interrupted, and KeyboardInterrupt is raised here.

    Raises:
        ValueError: if ``nproc < 1``, the device has no backend, or CUDA has fewer than
            ``nproc`` GPUs; any exception that ``fn`` raises in a process.
        torch.multiprocessing.ProcessRaisedException, ProcessExitedException: when a process
            fails otherwise.
    """
    if nproc < 1:
        raise ValueError(f"the number of processes must be at least 1, got {nproc}")
    device = torch.device(device)
    backend_for(device)
    if device.type == "cuda" and nproc > torch.cuda.device_count():
        raise ValueError(f"{nproc} processes on cuda need {nproc} GPUs; this machine has {torch.cuda.device_count()}")
    context = torch.multiprocessing.get_context("spawn")
    messages = context.SimpleQueue()
    # Port 0: the operating system picks a free port; holding the store open keeps it ours.
    store = dist.TCPStore("127.0.0.1", 0, None, True, timedelta(seconds=timeout), wait_for_workers=False)
    processes = torch.multiprocessing.start_processes(
        _worker, args=(fn, tuple(args), nproc, store.port, device, threads, timeout, messages), nprocs=nproc,
        join=False, start_method="spawn")
    received: list = []

    def drain() -> None:
        while not messages.empty():
            received.append(messages.get())

    children = processes.processes
    try:
        while any(p.is_alive() for p in children) and not any(p.exitcode for p in children):
            multiprocessing.connection.wait([p.sentinel for p in children], timeout=0.2)
            drain()
        if any(p.exitcode for p in children):
            # Processes that fail alike (all check the same data) end by themselves: let them,
            # rather than have torch terminate them with a warning.
            deadline = time.monotonic() + 10
            for p in children:
                p.join(max(0.0, deadline - time.monotonic()))
        processes.join()  # raises for a failed process, after terminating those still running
    except KeyboardInterrupt:
        _stop(processes.processes)
        raise
    except Exception:
        drain()
        errors = [pickle.loads(m) for kind, m in received if kind == "error"]
        if errors:
            raise errors[0] from None
        raise
    drain()
    return next((pickle.loads(m) for kind, m in received if kind == "result"), None)


def _stop(processes, grace: float = 5.0, patience: float = 60.0) -> None:
    """After Ctrl-C: let the processes end, interrupt those that did not get the SIGINT, and
    terminate those still alive after ``patience`` seconds."""
    deadline = time.monotonic() + grace
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in processes:
        if p.is_alive():
            os.kill(p.pid, signal.SIGINT)
    deadline = time.monotonic() + patience
    for p in processes:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.terminate()

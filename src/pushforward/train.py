r"""Fitting a flow by maximum likelihood, and evaluating it.

:func:`fit` minimises the negative mean log-likelihood (nats per example) with Adam on
mini-batches, keeps the weights of the best validation log-likelihood, stops early, respects
a wall-clock budget, writes atomic checkpoints and resumes from them. Inside a
torch.distributed process group of several processes (:mod:`pushforward.distributed`) it trains
data-parallel with DistributedDataParallel, with the same result as one process.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from . import distributed
from .checks import check_arguments
from .core import Flow
from .transforms.continuous import recording

__all__ = ["fit", "FitResult", "log_likelihoods", "evaluate", "Evaluation", "save_atomic", "atomic_write"]

Data = Tensor | tuple[Tensor, Tensor]


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(file)`` on a temporary file in ``path``'s folder, then rename it over ``path``.

    A reader never sees a half-written file; a write that fails or is interrupted (a full disk,
    Ctrl-C) leaves the old file as it was and removes the temporary one.

    Raises:
        OSError: if the folder cannot be created or the file written (naming ``path``); whatever
            ``write`` raises.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600): give it the mode a plain open() would
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        cause = _os_error(error)
        if cause is not None and cause.filename is None:  # a failed write names no file: name it
            raise OSError(cause.errno, cause.strerror or str(cause), os.fspath(path)) from error
        raise


def _umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _os_error(error: BaseException | None) -> OSError | None:
    """The OSError behind ``error``: itself, or one it was raised from or while handling (torch.save
    reports a failed write, e.g. a full disk, as a RuntimeError raised while handling it)."""
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    return error


def save_atomic(obj: object, path: str | os.PathLike) -> None:
    """``torch.save`` of ``obj`` to ``path`` through :func:`atomic_write`.

    Raises:
        OSError: if the file cannot be written (the old one is kept, the temporary one removed).
    """
    atomic_write(path, lambda f: torch.save(obj, f))


_CHECKPOINT_KEYS = ("model", "optimizer", "best_model", "epoch", "history", "best_epoch", "best_valid")


def _read_checkpoint(checkpoint: str | os.PathLike, device: torch.device) -> dict:
    """The checkpoint that :func:`fit` wrote, with every key it needs to resume.

    Raises:
        ValueError: if the file cannot be read as a checkpoint or lacks a key (the message names it).
    """
    try:
        state = torch.load(checkpoint, map_location=device, weights_only=True)
    except Exception as error:  # torch raises several types for a damaged file
        raise ValueError(f"{os.fspath(checkpoint)} is corrupted ({type(error).__name__})") from None
    missing = [key for key in _CHECKPOINT_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise ValueError(f"{os.fspath(checkpoint)} is corrupted: it lacks {', '.join(missing)}")
    return state


def _split(data: Data) -> tuple[Tensor, Tensor | None]:
    return (data[0], data[1]) if isinstance(data, (tuple, list)) else (data, None)


def log_likelihoods(flow: Flow, data: Data, batch_size: int = 1000) -> Tensor:
    """Per-example log-likelihood in nats, computed in evaluation mode without gradients.

    Shapes: data x (N, *event) or (x, context (N, context_features)); returns (N,) on the CPU.
    """
    x, context = _split(data)
    param = next(flow.parameters(), None)
    device, dtype = (param.device, param.dtype) if param is not None else (x.device, x.dtype)
    was_training = flow.training
    flow.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            c = None if context is None else context[i : i + batch_size].to(device, dtype)
            out.append(flow.log_prob(x[i : i + batch_size].to(device, dtype), c).cpu())
    flow.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


@dataclass
class Evaluation:
    """Mean log-likelihood in nats per example with its standard error over ``n`` examples."""

    mean: float
    stderr: float
    n: int

    @classmethod
    def of(cls, values: Tensor) -> "Evaluation":
        """Mean and standard error of per-example ``values`` (N,); the standard error is NaN for N = 1.

        Raises:
            ValueError: if ``values`` is empty.
        """
        values = values.double()
        n = len(values)
        if n == 0:
            raise ValueError("no examples to evaluate: the data are empty")
        stderr = float(values.std() / math.sqrt(n)) if n > 1 else float("nan")
        return cls(float(values.mean()), stderr, n)


def evaluate(flow: Flow, data: Data, batch_size: int = 1000) -> Evaluation:
    """Mean test log-likelihood (nats per example) with its standard error.

    Shapes: data x (N, *event) or (x, context (N, context_features)), N >= 1.

    Raises:
        ValueError: if the data are empty.
    """
    return Evaluation.of(log_likelihoods(flow, data, batch_size))


class _LogLikelihoodSum(nn.Module):
    """Sum of log p(x) over a batch: the module that DistributedDataParallel wraps, so that its
    forward pass, which DDP needs to see, is the flow's ``log_prob``."""

    def __init__(self, flow: Flow):
        super().__init__()
        self.flow = flow

    def forward(self, x: Tensor, context: Tensor | None) -> Tensor:
        return self.flow.log_prob(x, context).sum()


def _agree(log_p: Tensor, over: bool, device: torch.device) -> tuple[float, bool]:
    """The mini-batch's summed log-likelihood and whether the time budget is spent, the same on
    every process: one all-reduce of the shards' sums and of process 0's clock reading."""
    if not distributed.is_distributed():
        return log_p.item(), over
    shared = torch.tensor([log_p.item(), float(over and distributed.rank() == 0)], dtype=torch.float64, device=device)
    total, over = distributed.all_reduce_sum(shared).tolist()
    return total, bool(over)


def _mean_log_likelihood(flow: Flow, data: Data, device: torch.device) -> float:
    """Mean log-likelihood (nats) of ``data``; in a process group each process evaluates its
    shard and the sums are all-reduced, so that every process gets the same number."""
    x, context = _split(data)
    part = distributed.shard(x) if context is None else (distributed.shard(x), distributed.shard(context))
    ll = log_likelihoods(flow, part)
    sums = torch.tensor([ll.double().sum().item(), len(ll)], dtype=torch.float64, device=device)
    total, count = distributed.all_reduce_sum(sums).tolist()
    return total / count


@dataclass
class FitResult:
    """What :func:`fit` did: the per-epoch ``history`` (train loss and validation
    log-likelihood in nats; for flows with continuous blocks also ``nfe_forward`` and
    ``nfe_backward``, the mean NFE per training step, and ``penalty``, the mean regulariser
    per example when one is weighted), the best epoch and its validation log-likelihood, why it stopped
    ("epochs", "early stopping", "time budget", "interrupted"), and the training seconds."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_valid: float = -math.inf
    stopped: str = ""
    seconds: float = 0.0


def fit(
    flow: Flow,
    train: Data,
    valid: Data | None = None,
    *,
    epochs: int = 100,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    schedule: str | None = None,
    clip_grad: float | None = None,
    patience: int | None = 10,
    max_minutes: float | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    progress: bool = True,
    verbose: bool = False,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    compile: bool = False,
    on_checkpoint: Callable[[], None] | None = None,
) -> FitResult:
    r"""Train ``flow`` by maximum likelihood: minimise -mean log p(x) (nats) with Adam.

    Continuous blocks (:class:`~pushforward.transforms.continuous.ContinuousFlow`) are watched
    through :func:`~pushforward.transforms.continuous.recording` around each step: the loss is
    mean(-log p(x) + penalty), with the regularisers they are asked to weight (Finlay et al.
    2020), and each epoch's history gets their mean number of function evaluations per step,
    forward and backward (of this process), shown in the progress bar as ``nfe=F+B``.

    After each epoch the validation log-likelihood is measured; the best weights are kept and
    restored at the end, and training stops after ``patience`` epochs without improvement.
    Ctrl-C saves a checkpoint (when ``checkpoint`` is given) and returns with
    ``stopped="interrupted"``; ``resume=True`` continues from that checkpoint.

    Data-parallel training: called in every process of a torch.distributed process group of N
    processes (e.g. by :func:`pushforward.distributed.launch` or ``torchrun``), with the same
    arguments and data, ``fit`` wraps the flow in DistributedDataParallel. Every mini-batch of
    ``batch_size`` examples is split into N shards of ``batch_size / N`` (the last, shorter
    batch into nearly equal ones), one per process; the loss is scaled so that DDP's averaged
    gradient is that of the mean over the whole mini-batch, and BatchNorm/ActNorm use the
    moments of the whole mini-batch (:mod:`pushforward.transforms.normalization`), so the
    result equals one process's up to floating-point rounding. The validation log-likelihood is
    computed on shards and all-reduced, and process 0's clock decides the time budget, so that
    every process takes the same decisions. Only process 0 writes ``checkpoint`` and shows
    progress; every process reads it on ``resume``. Each process trains on ``device``, except
    that on CUDA process r uses its own GPU (:func:`pushforward.distributed.local_device`).

    Shapes: train, valid: x (N, *event) or a pair (x, context (N, context_features)).

    Args:
        flow: the flow to train, in place (moved to ``device`` and ``dtype``).
        train, valid: the data; without ``valid`` the training loss decides the best weights.
        epochs: the largest number of passes over ``train``.
        batch_size, lr, weight_decay: mini-batch size, Adam's learning rate and weight decay.
        schedule: None or "cosine" (cosine decay of the learning rate over ``epochs``).
        clip_grad: largest gradient norm, or None.
        patience: epochs without validation improvement before stopping; None never stops.
        max_minutes: wall-clock budget for training, checked after every step.
        seed: seeds the order of the mini-batches (seed the flow itself with torch.manual_seed).
        dtype: float32 by default, float64 on request.
        device: where to train.
        progress: show a progress bar with the running loss.
        verbose: print one line per epoch (train loss, validation log-likelihood) to stderr.
        checkpoint: a file path; written atomically after every epoch and on Ctrl-C.
        resume: continue from ``checkpoint`` (model, optimiser, schedule, history, best weights).
        compile: run the log-likelihood through ``torch.compile`` (its first steps take seconds
            to minutes longer; the weights and checkpoints are the flow's own). On 2 CPU threads
            (``python -m benchmarks.compiled``) it made NSF coupling training 1.63x faster,
            autoregressive NSF 1.11x, and MAF 0.85x (slower): measure before choosing.
        on_checkpoint: called (by process 0) after each checkpoint is written, e.g. to publish
            a run folder once it can be resumed (:meth:`pushforward.runs.RunFolder.publish`).

    Raises:
        ValueError: for a number out of its range (epochs, batch_size, patience >= 1; lr,
            clip_grad, max_minutes > 0; weight_decay >= 0; each finite), an unknown ``schedule``, empty training or validation data, a loss that
            becomes NaN/inf, or a ``batch_size`` that the number of processes does not divide.
        FileNotFoundError: if ``resume`` is set and the checkpoint does not exist.
        ValueError: if ``resume`` is set and the checkpoint is corrupted or lacks a key.
    """
    check_arguments(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, clip_grad=clip_grad,
                    patience=patience, max_minutes=max_minutes)
    if schedule not in (None, "cosine"):
        raise ValueError(f"unknown schedule {schedule!r}; choose cosine or None")
    x_train, c_train = _split(train)
    if len(x_train) == 0:
        raise ValueError("the training data are empty")
    if valid is not None and len(_split(valid)[0]) == 0:
        raise ValueError("the validation data are empty; pass valid=None to select by the training loss")
    world, lead = distributed.world_size(), distributed.rank() == 0
    if batch_size < 1 or batch_size % world:
        raise ValueError(f"the batch size {batch_size} must be a positive multiple of the {world} processes "
                         f"(each process takes batch_size / {world} examples of every mini-batch)")
    device = distributed.local_device(device)
    flow.to(device=device, dtype=dtype)
    # The fused Adam step is about 20 % faster per MAF step on CPU (benchmarks/RESULTS.md).
    optimizer = torch.optim.Adam(flow.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs) if schedule == "cosine" else None
    result, best_state, start_epoch = FitResult(), copy.deepcopy(flow.state_dict()), 0
    if resume:
        if checkpoint is None or not Path(checkpoint).exists():
            raise FileNotFoundError(f"no checkpoint to resume from: {checkpoint}")
        state = _read_checkpoint(checkpoint, device)
        flow.load_state_dict(state["model"])
        try:
            optimizer.load_state_dict(state["optimizer"])
        except ValueError as error:  # e.g. one tensor per MADE layer, from before MADE's packed storage
            warnings.warn(f"resuming {checkpoint} with a fresh Adam state: the checkpoint's optimiser state does "
                          f"not match the flow's parameters ({error}); the weights and the history are resumed")
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        best_state, start_epoch = state["best_model"], state["epoch"]
        result.history, result.best_epoch, result.best_valid = state["history"], state["best_epoch"], state["best_valid"]

    # Built after a resume has loaded the weights; DDP broadcasts process 0's state to the others.
    model = _LogLikelihoodSum(flow)
    if world > 1:
        model = DistributedDataParallel(model)
    if compile:
        model = torch.compile(model)

    def save() -> None:
        if checkpoint is not None and lead:
            save_atomic({
                "model": flow.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler else None, "best_model": best_state,
                "epoch": len(result.history), "history": result.history,
                "best_epoch": result.best_epoch, "best_valid": result.best_valid,
            }, checkpoint)
            if on_checkpoint is not None:
                on_checkpoint()

    start = time.perf_counter()
    deadline = None if max_minutes is None else start + 60 * max_minutes
    steps = math.ceil(len(x_train) / batch_size)
    try:
        for epoch in range(start_epoch, epochs):
            g = torch.Generator().manual_seed(seed * 100_003 + epoch)
            order = torch.randperm(len(x_train), generator=g)
            flow.train()
            total, count = 0.0, 0
            nfe_forward = nfe_backward = solving_steps = 0
            penalty_total = 0.0
            bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{epochs}", disable=not (progress and lead), leave=False)
            for i in bar:
                idx = order[i * batch_size : (i + 1) * batch_size]
                mine = distributed.shard(idx)
                x = x_train[mine].to(device, dtype)
                c = None if c_train is None else c_train[mine].to(device, dtype)
                with recording() as record:  # continuous flows report their NFE and regularisers
                    log_p = model(x, c)
                penalty = record.penalty.sum() if record.kinetic else log_p.new_zeros(())
                # DDP averages the processes' gradients: scaled by world / len(idx), that average
                # is the gradient of the mean over the whole mini-batch, shards of any size.
                loss = (penalty - log_p) * (world / len(idx))
                total_log_p, over = _agree(log_p, deadline is not None and time.perf_counter() > deadline, device)
                step_loss = -total_log_p / len(idx)
                if not math.isfinite(step_loss):
                    raise ValueError(f"the loss became {step_loss} at epoch {epoch + 1}, step {i + 1}; "
                                     "try a smaller learning rate or gradient clipping")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clip_grad is not None:
                    torch.nn.utils.clip_grad_norm_(flow.parameters(), clip_grad)
                optimizer.step()
                total, count = total + step_loss * len(idx), count + len(idx)
                if record.solves:  # read after backward: the backward NFE is counted during it
                    nfe_forward, nfe_backward = nfe_forward + record.nfe_forward, nfe_backward + record.nfe_backward
                    solving_steps += 1
                    penalty_total += penalty.detach().item()
                    bar.set_postfix(loss=f"{total / count:.3f}", nfe=f"{record.nfe_forward}+{record.nfe_backward}")
                else:
                    bar.set_postfix(loss=f"{total / count:.3f}")
                if over:
                    result.stopped = "time budget"
                    break
            if scheduler is not None:
                scheduler.step()
            score = _mean_log_likelihood(flow, valid, device) if valid is not None else -total / count
            result.history.append({"epoch": epoch + 1, "train_loss": total / count, "valid_log_likelihood": score,
                                   "seconds": time.perf_counter() - start})
            if solving_steps:
                result.history[-1].update(nfe_forward=nfe_forward / solving_steps,
                                          nfe_backward=nfe_backward / solving_steps)
                if penalty_total:
                    result.history[-1]["penalty"] = penalty_total / count
            if verbose and lead:
                nfe = (f", NFE per step {nfe_forward / solving_steps:.0f} forward + {nfe_backward / solving_steps:.0f} "
                       "backward" if solving_steps else "")
                tqdm.write(f"epoch {epoch + 1}: train loss {total / count:.4f}, valid log-likelihood {score:.4f}{nfe}",
                           file=sys.stderr)
            if score > result.best_valid:
                result.best_epoch, result.best_valid = epoch + 1, score
                best_state = copy.deepcopy(flow.state_dict())
            save()
            if result.stopped:
                break
            if patience is not None and epoch + 1 - result.best_epoch >= patience:
                result.stopped = "early stopping"
                break
        else:
            result.stopped = "epochs"
    except KeyboardInterrupt:
        save()
        result.stopped = "interrupted"
        result.seconds = time.perf_counter() - start
        return result
    # Process 0's last checkpoint is on disk before any process returns (and may resume from it).
    distributed.barrier()
    flow.load_state_dict(best_state)
    flow.eval()
    result.seconds = time.perf_counter() - start
    return result

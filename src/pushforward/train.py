r"""Fitting a flow by maximum likelihood, and evaluating it.

:func:`fit` brings the loss (the negative log-likelihood of a mini-batch) to the training engine
(:mod:`pushforward.engine`), which minimises it (nats per example) with Adam on
mini-batches, keeps the weights of the best validation log-likelihood, stops early, respects
a wall-clock budget, writes atomic checkpoints and resumes from them. Inside a
torch.distributed process group of several processes (:mod:`pushforward.distributed`) it trains
data-parallel with DistributedDataParallel, with the same result as one process.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import distributed, engine
from .atomic import atomic_write, save_atomic
from .checks import check_arguments
from .core import Flow
from .engine import FitResult, Loss, Step, Validation, cosine_schedule, global_mean
from .transforms.continuous import recording

__all__ = ["fit", "FitResult", "log_likelihoods", "evaluate", "Evaluation", "save_atomic", "atomic_write"]

Data = Tensor | tuple[Tensor, Tensor]


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


def _mean_log_likelihood(flow: Flow, data: Data, device: torch.device) -> float:
    """Mean log-likelihood (nats) of ``data``; in a process group each process evaluates its
    shard and the sums are all-reduced, so that every process gets the same number."""
    x, context = _split(data)
    part = distributed.shard(x) if context is None else (distributed.shard(x), distributed.shard(context))
    ll = log_likelihoods(flow, part)
    return global_mean(ll.double().sum().item(), len(ll), device)


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
    tensorboard_dir: str | os.PathLike | None = None,
) -> FitResult:
    r"""Train ``flow`` by maximum likelihood: minimise -mean log p(x) (nats) with Adam.

    Continuous blocks (:class:`~pushforward.transforms.continuous.ContinuousFlow`) are watched
    through :func:`~pushforward.transforms.continuous.recording` around each step: the loss is
    mean(-log p(x) + penalty), with the regularisers they are asked to weight (Finlay et al.
    2020), and each epoch's history gets their mean number of function evaluations per step,
    forward and backward (of this process), shown in the progress bar as ``nfe=F+B``.

    After each epoch the validation log-likelihood is measured; the best weights are kept and
    restored at the end, and training stops after ``patience`` epochs without improvement.
    Ctrl-C saves a checkpoint (when ``checkpoint`` is given; the flow then keeps the weights it
    holds, otherwise the best weights are restored) and returns with ``stopped="interrupted"``;
    ``resume=True`` continues from that checkpoint. The loop is :func:`pushforward.engine.train`'s.

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
        tensorboard_dir: log TensorBoard scalars there (train loss, validation log-likelihood,
            learning rate, seconds, NFE; see :func:`pushforward.engine.train`); watch them with
            ``tensorboard --logdir DIR``.

    Raises:
        ValueError: for a number out of its range (epochs, batch_size, patience >= 1; lr,
            clip_grad, max_minutes > 0; weight_decay >= 0; each finite), an unknown ``schedule``, empty training or validation data, a loss that
            becomes NaN/inf, or a ``batch_size`` that the number of processes does not divide.
        FileNotFoundError: if ``resume`` is set and the checkpoint does not exist.
        ValueError: if ``resume`` is set and the checkpoint is corrupted or lacks a key.
    """
    check_arguments(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, clip_grad=clip_grad,
                    patience=patience, max_minutes=max_minutes)
    scheduler = cosine_schedule(schedule, epochs)
    x_train, c_train = _split(train)
    if len(x_train) == 0:
        raise ValueError("the training data are empty")
    if valid is not None and len(_split(valid)[0]) == 0:
        raise ValueError("the validation data are empty; pass valid=None to select by the training loss")
    world = distributed.world_size()
    if batch_size < 1 or batch_size % world:
        raise ValueError(f"the batch size {batch_size} must be a positive multiple of the {world} processes "
                         f"(each process takes batch_size / {world} examples of every mini-batch)")
    device = distributed.local_device(device)
    flow.to(device=device, dtype=dtype)

    def batches(epoch: int) -> tuple[Tensor, ...]:
        order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        return order.split(batch_size)

    def step(forward: Callable, idx: Tensor) -> Step:
        mine = distributed.shard(idx)
        x = x_train[mine].to(device, dtype)
        c = None if c_train is None else c_train[mine].to(device, dtype)
        with recording() as record:  # continuous flows report their NFE and regularisers
            log_p = forward(x, c)
        penalty = record.penalty.sum() if record.kinetic else log_p.new_zeros(())
        # DDP averages the processes' gradients: scaled by world / len(idx), that average is the
        # gradient of the mean over the whole mini-batch, shards of any size.
        return Step(loss=(penalty - log_p) * (world / len(idx)), total=-log_p.item(), count=len(idx),
                    sums={"penalty": penalty.item()} if record.kinetic else {}, record=record)

    validation = Validation(lambda entry: _mean_log_likelihood(flow, valid, device) if valid is not None
                            else -entry["train_loss"])
    return engine.train(flow, Loss(step, batches, forward=_LogLikelihoodSum(flow)), validation, epochs=epochs, lr=lr,
                        weight_decay=weight_decay, schedule=scheduler, clip_grad=clip_grad, patience=patience,
                        max_minutes=max_minutes, checkpoint=checkpoint, resume=resume, compile=compile,
                        progress=progress, verbose=verbose, tensorboard_dir=tensorboard_dir,
                        on_checkpoint=on_checkpoint)

r"""The training engine that every family's fit shares: a family brings a loss, the engine the rest.

:func:`train` runs epochs of mini-batch steps with Adam and owns the bookkeeping around them:
the running loss and the per-epoch history, the validation score, the best weights (restored
at the end), early stopping, a wall-clock budget, atomic checkpoints after every epoch and
resuming from them, Ctrl-C, a progress bar, TensorBoard scalars, the number of function
evaluations of continuous blocks, and data-parallel training in a torch.distributed process
group (DistributedDataParallel, one all-reduce of the loss and the clock per step, global
batch moments for ActNorm/BatchNorm, process 0 alone writing and printing).

A family describes one step in a :class:`Loss` and its validation figure in a
:class:`Validation`; :func:`pushforward.fit` (maximum likelihood), :func:`pushforward.vi.fit_vi`
(ELBO of a flow against a density) and :func:`pushforward.vae.fit_vae` are such callers.

    >>> import torch, pushforward as pf
    >>> from pushforward.engine import Loss, Step, train
    >>> flow = pf.MAF(2, transforms=1, hidden_features=(8,))
    >>> x = torch.randn(64, 2)
    >>> def step(forward, rows):
    ...     nll = -flow.log_prob(x[rows]).mean()
    ...     return Step(loss=nll, total=nll.item() * len(rows), count=len(rows))
    >>> loss = Loss(step, batches=lambda epoch: torch.arange(64).split(32))
    >>> result = train(flow, loss, epochs=2, lr=1e-3, progress=False)
    >>> [h["epoch"] for h in result.history], result.stopped
    ([1, 2], 'epochs')
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from . import distributed
from .atomic import save_atomic
from .transforms.continuous import SolverRecord
from .transforms.normalization import synchronised

__all__ = ["train", "Loss", "Step", "Validation", "FitResult", "cosine_schedule", "global_mean"]

Scheduler = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


@dataclass
class Step:
    """What a family's loss gives the engine for one mini-batch.

    Args:
        loss: the scalar tensor that is back-propagated (on several processes, this process's
            part, scaled so that DistributedDataParallel's average of the gradients is the
            gradient of the whole mini-batch's loss).
        total: the reported loss summed over this process's examples (the engine sums it over
            the processes); the epoch's ``train_loss`` is the sum of the totals over the sum
            of the counts.
        count: the number of examples of the whole mini-batch (every process's).
        sums: other figures summed over this process's examples, averaged like the loss.
        last: figures whose last value the epoch keeps (a warm-up's beta).
        record: the :class:`~pushforward.transforms.continuous.SolverRecord` of continuous
            blocks called by the step, if any: the engine reads their NFE after the backward pass.
    """

    loss: Tensor
    total: float
    count: int
    sums: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    record: SolverRecord | None = None


@dataclass
class Loss:
    """A family's training objective, one mini-batch at a time.

    Args:
        step: ``step(forward, batch) -> Step``; ``forward`` is the ``forward`` module as the
            engine runs it (wrapped by DistributedDataParallel on several processes and by
            torch.compile when asked): call it for the part of the loss that needs them.
        batches: ``batches(epoch)`` (0-based) -> the epoch's mini-batches, in order (anything
            ``step`` takes); called once at the start of each epoch.
        forward: the module ``step`` calls through ``forward`` (default: the trained model).
    """

    step: Callable[[Callable, Any], Step]
    batches: Callable[[int], Iterable]
    forward: nn.Module | None = None


@dataclass
class Validation:
    """The figure that picks the best weights and stops early, measured after every epoch.

    Args:
        score: ``score(entry)`` -> the figure, given the epoch's history entry so far (its
            ``train_loss`` among others); called with the model in eval mode.
        name: the history key of the figure, e.g. "valid_log_likelihood".
        maximize: True when higher is better.
    """

    score: Callable[[dict], float]
    name: str = "valid_log_likelihood"
    maximize: bool = True


@dataclass
class FitResult:
    """What a fit did: the per-epoch ``history`` (``epoch``, ``train_loss``, the validation
    figure, ``seconds`` since the start, the family's own figures, and for flows with
    continuous blocks ``nfe_forward`` and ``nfe_backward``, the mean NFE per training step),
    the best epoch and its validation figure, why it stopped ("epochs", "early stopping",
    "time budget", "interrupted"), the training seconds and the number of optimiser steps."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_valid: float = -math.inf
    stopped: str = ""
    seconds: float = 0.0
    steps: int = 0


def cosine_schedule(schedule: str | None, length: int) -> Scheduler | None:
    """The learning-rate schedule named ``schedule``: None, or "cosine", the cosine decay to 0
    over ``length`` scheduler steps (epochs or optimiser steps; Loshchilov & Hutter, SGDR, ICLR 2017).

    Raises:
        ValueError: for another name.
    """
    if schedule not in (None, "cosine"):
        raise ValueError(f"unknown schedule {schedule!r}; choose cosine or None")
    return None if schedule is None else functools.partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=length)


def global_mean(total: float, count: int, device: torch.device) -> float:
    """``total / count`` with both summed over the processes of a data-parallel group (each
    process gives the sum and the number of its shard's values), the same on every process."""
    sums = torch.tensor([total, count], dtype=torch.float64, device=device)
    total, count = distributed.all_reduce_sum(sums).tolist()
    return total / count


_CHECKPOINT_KEYS = ("model", "optimizer", "best_model", "epoch", "history", "best_epoch", "best_valid")


def _read_checkpoint(checkpoint: str | os.PathLike, device: torch.device) -> dict:
    """The checkpoint that :func:`train` wrote, with every key it needs to resume.

    Raises:
        FileNotFoundError: if it does not exist.
        ValueError: if the file cannot be read as a checkpoint or lacks a key (the message names it).
    """
    if not Path(checkpoint).exists():
        raise FileNotFoundError(f"no checkpoint to resume from: {checkpoint}")
    try:
        state = torch.load(checkpoint, map_location=device, weights_only=True)
    except Exception as error:  # torch raises several types for a damaged file
        raise ValueError(f"{os.fspath(checkpoint)} is corrupted ({type(error).__name__})") from None
    missing = [key for key in _CHECKPOINT_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise ValueError(f"{os.fspath(checkpoint)} is corrupted: it lacks {', '.join(missing)}")
    return state


class _Epoch:
    """The running sums of one epoch: the loss, the family's figures and the NFE."""

    def __init__(self):
        self.total, self.count, self.solves = 0.0, 0, 0
        self.sums: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.nfe = [0, 0]

    def add(self, step: Step, total: float) -> None:
        self.total, self.count = self.total + total, self.count + step.count
        for key, value in step.sums.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.last.update(step.last)
        if step.record is not None and step.record.solves:  # read after backward: it counts the backward NFE
            self.nfe = [self.nfe[0] + step.record.nfe_forward, self.nfe[1] + step.record.nfe_backward]
            self.solves += 1

    def postfix(self, step: Step) -> dict[str, str]:
        shown = {"loss": f"{self.total / self.count:.3f}", **{k: f"{v:.3g}" for k, v in step.last.items()}}
        if step.record is not None and step.record.solves:
            shown["nfe"] = f"{step.record.nfe_forward}+{step.record.nfe_backward}"
        return shown

    def entry(self, epoch: int) -> dict:
        entry = {"epoch": epoch, "train_loss": self.total / self.count,
                 **{k: v / self.count for k, v in self.sums.items()}, **self.last}
        if self.solves:
            entry.update(nfe_forward=self.nfe[0] / self.solves, nfe_backward=self.nfe[1] / self.solves)
        return entry


def _describe(entry: dict) -> str:
    """One line for an epoch: "epoch 3: train loss 1.2345, valid log-likelihood -1.3000, ..."."""
    figures = ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in entry.items() if k not in ("epoch", "seconds"))
    return f"epoch {entry['epoch']}: {figures}"


class _Engine:
    """The state of one :func:`train` call; see there."""

    def __init__(self, model: nn.Module, loss: Loss, validation: Validation | None, options: dict):
        self.model, self.loss, self.validation, self.o = model, loss, validation, options
        self.lead = distributed.rank() == 0
        self.device = next(model.parameters()).device
        self.optimizer = torch.optim.Adam(model.parameters(), lr=options["lr"], weight_decay=options["weight_decay"],
                                          fused=True)  # about 20 % faster per MAF step on CPU (benchmarks/RESULTS.md)
        schedule = options["schedule"]
        self.scheduler = schedule(self.optimizer) if schedule is not None else None
        maximize = validation is None or validation.maximize
        self.result = FitResult(best_valid=-math.inf if maximize else math.inf)
        self.best_state, self.start_epoch = copy.deepcopy(model.state_dict()), 0
        self.writer = None
        self.bar = None

    # --- checkpoints ---------------------------------------------------------------------
    def resume(self, checkpoint: str | os.PathLike) -> None:
        state = _read_checkpoint(checkpoint, self.device)
        self.model.load_state_dict(state["model"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as error:  # e.g. one tensor per MADE layer, from before MADE's packed storage
            warnings.warn(f"resuming {checkpoint} with a fresh Adam state: the checkpoint's optimiser state does "
                          f"not match the flow's parameters ({error}); the weights and the history are resumed")
        if self.scheduler is not None and state.get("scheduler"):
            self.scheduler.load_state_dict(state["scheduler"])
        r = self.result
        self.best_state, self.start_epoch = state["best_model"], state["epoch"]
        r.history, r.best_epoch, r.best_valid = state["history"], state["best_epoch"], state["best_valid"]
        r.steps = state.get("steps", 0)  # absent from checkpoints written before the engine

    def save(self) -> None:
        checkpoint, r = self.o["checkpoint"], self.result
        if checkpoint is None or not self.lead:
            return
        save_atomic({
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler else None, "best_model": self.best_state,
            "epoch": len(r.history), "history": r.history, "best_epoch": r.best_epoch, "best_valid": r.best_valid,
            "steps": r.steps,
        }, checkpoint)
        if self.o["on_checkpoint"] is not None:
            self.o["on_checkpoint"]()

    # --- the loop ------------------------------------------------------------------------
    def forward_module(self) -> Callable:
        """The module the steps call: DDP-wrapped on several processes (built after a resume, as
        DDP broadcasts process 0's state), compiled when asked."""
        module = self.loss.forward if self.loss.forward is not None else self.model
        if distributed.is_distributed():
            module = DistributedDataParallel(module)
        return torch.compile(module) if self.o["compile"] else module

    def run(self) -> FitResult:
        o, r = self.o, self.result
        forward = self.forward_module()
        self.start = time.perf_counter()
        self.deadline = None if o["max_minutes"] is None else self.start + 60 * o["max_minutes"]
        try:
            for epoch in range(self.start_epoch, o["epochs"]):
                self.epoch(forward, epoch)
                if r.stopped:
                    break
            else:
                r.stopped = "epochs"
        except KeyboardInterrupt:
            self.save()
            r.stopped = "interrupted"
            if o["checkpoint"] is not None:  # kept as saved, to resume; otherwise the best weights are restored
                return self.finish(restore=False)
        # Process 0's last checkpoint is on disk before any process returns (and may resume from it).
        distributed.barrier()
        return self.finish(restore=self.validation is not None)

    def finish(self, restore: bool) -> FitResult:
        if restore:
            self.model.load_state_dict(self.best_state)
        self.model.eval()
        self.result.seconds = time.perf_counter() - self.start
        return self.result

    def epoch(self, forward: Callable, epoch: int) -> None:
        self.model.train()
        batches = self.loss.batches(epoch)
        sums = _Epoch()
        bar = self.progress(epoch, batches)
        for i, batch in enumerate(batches):
            step = self.loss.step(forward, batch)
            over = self.step(step, sums, epoch, i)
            bar.update()
            bar.set_postfix(sums.postfix(step), refresh=False)
            if over:
                self.result.stopped = "time budget"
                break
        if self.o["progress_total"] is None:
            bar.close()
            self.bar = None
        if self.scheduler is not None and not self.o["schedule_per_step"]:
            self.scheduler.step()
        self.end_epoch(sums.entry(epoch + 1))

    def progress(self, epoch: int, batches: Iterable) -> tqdm:
        """A new bar for the epoch, or the run's bar when ``progress_total`` is given."""
        disable = not (self.o["progress"] and self.lead)
        if self.o["progress_total"] is None:
            total = len(batches) if isinstance(batches, Sized) else None
            self.bar = tqdm(total=total, desc=f"epoch {epoch + 1}/{self.o['epochs']}", disable=disable, leave=False,
                            file=sys.stderr)
        elif self.bar is None:
            self.bar = tqdm(total=self.o["progress_total"], initial=self.result.steps, desc=self.o["desc"],
                            disable=disable, leave=False, file=sys.stderr)
        return self.bar

    def step(self, step: Step, sums: _Epoch, epoch: int, i: int) -> bool:
        """Back-propagate and take the optimiser step; returns whether the time budget is spent."""
        over = self.deadline is not None and time.perf_counter() > self.deadline
        total, over = self.agree(step.total, over)
        value = total / step.count
        if not math.isfinite(value):
            raise ValueError(f"the loss became {value} at epoch {epoch + 1}, step {i + 1}; "
                             "try a smaller learning rate or gradient clipping")
        self.optimizer.zero_grad(set_to_none=True)
        step.loss.backward()
        if self.o["clip_grad"] is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.o["clip_grad"])
        self.optimizer.step()
        if self.scheduler is not None and self.o["schedule_per_step"]:
            self.scheduler.step()
        sums.add(step, total)
        self.result.steps += 1
        if self.writer is not None:
            self.writer.add_scalar("train_loss_step", value, self.result.steps)
        return over

    def agree(self, total: float, over: bool) -> tuple[float, bool]:
        """The mini-batch's summed loss and whether the time budget is spent, the same on every
        process: one all-reduce of the shards' sums and of process 0's clock reading."""
        if not distributed.is_distributed():
            return total, over
        shared = torch.tensor([total, float(over and self.lead)], dtype=torch.float64, device=self.device)
        total, over = distributed.all_reduce_sum(shared).tolist()
        return total, bool(over)

    def end_epoch(self, entry: dict) -> None:
        """Validate, record, keep the best weights, checkpoint, decide on early stopping."""
        r, v = self.result, self.validation
        if v is not None:
            self.model.eval()
            entry[v.name] = v.score(entry)
        entry["seconds"] = time.perf_counter() - self.start
        r.history.append(entry)
        self.log(entry)
        if v is not None and (entry[v.name] > r.best_valid if v.maximize else entry[v.name] < r.best_valid):
            r.best_epoch, r.best_valid = entry["epoch"], entry[v.name]
            self.best_state = copy.deepcopy(self.model.state_dict())
            if self.o["on_best"] is not None:
                self.o["on_best"](self.model)
        self.save()
        patience = self.o["patience"]
        if not r.stopped and v is not None and patience is not None and entry["epoch"] - r.best_epoch >= patience:
            r.stopped = "early stopping"

    def log(self, entry: dict) -> None:
        if self.o["verbose"] and self.lead:
            tqdm.write(_describe(entry), file=sys.stderr)
        if self.writer is not None:
            for key, value in entry.items():
                self.writer.add_scalar(key, value, self.result.steps)
            self.writer.add_scalar("lr", self.optimizer.param_groups[0]["lr"], self.result.steps)
            self.writer.flush()


def train(
    model: nn.Module,
    loss: Loss,
    validation: Validation | None = None,
    *,
    epochs: int,
    lr: float,
    weight_decay: float = 0.0,
    schedule: Scheduler | None = None,
    schedule_per_step: bool = False,
    clip_grad: float | None = None,
    patience: int | None = None,
    max_minutes: float | None = None,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = False,
    compile: bool = False,
    progress: bool = True,
    progress_total: int | None = None,
    desc: str = "",
    verbose: bool = False,
    tensorboard_dir: str | os.PathLike | None = None,
    on_checkpoint: Callable[[], None] | None = None,
    on_best: Callable[[nn.Module], None] | None = None,
) -> FitResult:
    r"""Train ``model`` in place on ``loss`` with Adam, for at most ``epochs`` epochs.

    Each epoch takes the mini-batches of ``loss.batches(epoch)`` in order; each step calls
    ``loss.step``, sums the reported loss over the processes (with process 0's reading of the
    clock, in one all-reduce), raises on a NaN/inf loss, back-propagates, clips the gradient
    norm to ``clip_grad`` and steps Adam (and the schedule, per epoch or per step). After an
    epoch, ``validation.score`` is measured in eval mode; the weights of the best score are kept
    (``on_best`` is called with the model), ``checkpoint`` is written atomically (by process 0,
    then ``on_checkpoint``), and training stops after ``patience`` epochs without improvement,
    once ``max_minutes`` are spent (checked at every step, the epoch then closed and validated),
    or on Ctrl-C. At the end the best weights are restored (with a ``validation``) and the
    model is left in eval mode; after Ctrl-C with a ``checkpoint`` the weights stay those at
    the interruption, which the checkpoint holds, and ``resume=True`` continues from it
    (model, optimiser, schedule, history, best weights; the epoch in progress is done again).

    In a torch.distributed process group of several processes every process calls ``train``
    with the same arguments; ``loss.forward`` is wrapped in DistributedDataParallel, and
    ActNorm/BatchNorm layers use the moments of the global batch
    (:func:`~pushforward.transforms.normalization.synchronised`); each ``step`` takes this
    process's shard (see :func:`pushforward.fit`). Only process 0 writes the checkpoint and
    TensorBoard events and shows progress.

    TensorBoard (``tensorboard_dir``, by process 0, ``torch.utils.tensorboard``; watch with
    ``tensorboard --logdir DIR``): ``train_loss_step`` at every step, and after every epoch each
    number of its history entry (``train_loss``, the validation figure, ``seconds``, ``nfe_forward``,
    ...) and ``lr``, all against the number of optimiser steps.

    Args:
        model: the trained module; its state dict is what checkpoints and best weights hold.
        loss: the family's step and mini-batches (:class:`Loss`).
        validation: the figure that selects the best weights (:class:`Validation`); None keeps
            the last weights and never stops early.
        epochs, lr, weight_decay, clip_grad, patience, max_minutes: as :func:`pushforward.fit`.
        schedule: a learning-rate scheduler factory (:func:`cosine_schedule`), stepped after every
            epoch, or after every optimiser step with ``schedule_per_step``.
        checkpoint, resume, compile, verbose, on_checkpoint: as :func:`pushforward.fit`.
        progress: show a progress bar: one per epoch, or one over the run of ``progress_total``
            steps (described by ``desc``).
        tensorboard_dir: write TensorBoard scalars there (None: none).
        on_best: called with the model whenever the validation figure improves.

    Raises:
        ValueError: if the loss becomes NaN/inf; if ``resume`` is set and the checkpoint is
            corrupted or lacks a key; whatever ``loss`` and ``validation`` raise.
        FileNotFoundError: if ``resume`` is set and the checkpoint does not exist.
    """
    options = dict(epochs=epochs, lr=lr, weight_decay=weight_decay, schedule=schedule,
                   schedule_per_step=schedule_per_step, clip_grad=clip_grad, patience=patience,
                   max_minutes=max_minutes, checkpoint=checkpoint, compile=compile, progress=progress,
                   progress_total=progress_total, desc=desc, verbose=verbose, on_checkpoint=on_checkpoint,
                   on_best=on_best)
    engine = _Engine(model, loss, validation, options)
    if resume:
        if checkpoint is None:
            raise FileNotFoundError("no checkpoint to resume from: None")
        engine.resume(checkpoint)
    sync = functools.partial(distributed.all_reduce_sum, differentiable=True) if distributed.is_distributed() else None
    with synchronised(model, sync), _summary_writer(tensorboard_dir if engine.lead else None,
                                                     engine.result.steps) as engine.writer:
        try:
            return engine.run()
        finally:
            if engine.bar is not None:
                engine.bar.close()


@contextlib.contextmanager
def _summary_writer(folder: str | os.PathLike | None, steps: int):
    """A SummaryWriter for ``folder`` (None: none) that a resumed run continues: the events after
    its ``steps`` (logged after the checkpoint, before the run was killed) are purged."""
    if folder is None:
        yield None
        return
    from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when asked

    writer = SummaryWriter(os.fspath(folder), purge_step=steps + 1 if steps else None)
    try:
        yield writer
    finally:
        writer.close()

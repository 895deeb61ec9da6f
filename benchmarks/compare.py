r"""Side-by-side benchmark of pushforward against zuko, nflows, normflows and torchflows.

    python -m benchmarks.compare                       # digits and the 2-D toy, all architectures
    python -m benchmarks.compare --quick               # a fast look: fewer steps and repetitions
    python -m benchmarks.compare --data mnist --arch maf --mnist-dir ../shared/data/mnist

For every data set and architecture (:data:`benchmarks.peers.ARCHITECTURES`), each installed
library builds the same flow (:mod:`benchmarks.peers`; parameter counts and unavoidable
differences are printed), from the same seed, on the same standardised data, with the same
batches in the same order, Adam, batch size and ``torch.set_num_threads``. Then, interleaved over
repetitions (the libraries' order rotates from one repetition to the next, so that none always
runs first or last) and within each repetition taken in turns -- ``--chunk`` training steps
(default 5) or one ``log_prob`` / ``sample`` call per library per turn, so that a slow spell of
a shared machine falls on every library alike:

- training throughput: examples/s of ``steps`` steps of forward + backward + Adam step on
  -mean log_prob;
- ``log_prob`` throughput: examples/s of ``log_prob`` on a fixed batch, no gradients;
- sampling throughput: examples/s of ``sample(n)``, no gradients;
- the dense-matmul bound: the time of only the matrix products that pushforward's training step
  must do (forward, weight gradients, input gradients but of the data-side first layer), timed with
  ``torch.mm`` at the same sizes; its GFLOP/s against the GFLOP/s that pushforward's step achieves
  with the same count of FLOPs.

After the repetitions every library has taken the same number of training steps on the same
batches; its test log-likelihood (mean ± standard error, nats per example) follows. Peak memory
is measured apart, in a fresh subprocess per (library, architecture, operation): the increase of
the process's peak resident set size over its value once the model, optimiser and data exist,
across two calls of the operation (for training, this includes Adam's state, the gradients and
the autograd graph). On Linux the peak (VmHWM) is first reset to the current RSS through
/proc/self/clear_refs, so the transient peak of the imports does not hide it; elsewhere
``getrusage`` ``ru_maxrss``. ``tracemalloc`` does not see torch's allocations. On CUDA, the
peak of ``torch.cuda.max_memory_allocated`` instead.

Ratios are pushforward / peer per repetition, printed as min–median–max: above 1 means
pushforward is faster (for throughput); for memory, below 1 means pushforward uses less.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor, nn

from .peers import ARCHITECTURES, LIBRARIES, Model, Spec, Unsupported, available, build, parameter_count

__all__ = ["Data", "load_data", "batch_plan", "chunks", "round_robin", "matmul_products", "dense_bound", "measure_memory",
           "benchmark", "report", "markdown", "main"]

T = TypeVar("T")

DEFAULT_MNIST_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"


# --- data ------------------------------------------------------------------------------------

@dataclass
class Data:
    """Standardised train and test splits; ``log_scale`` = sum log std, to return to the loader's space.

    log p_reference(x) = log p_standardised((x - mean) / std) - log_scale.
    """

    name: str
    train: Tensor
    test: Tensor
    log_scale: float
    levels: int | None = None

    @property
    def features(self) -> int:
        return self.train.shape[1]


def load_data(name: str, mnist_dir: str | Path | None = None, seed: int = 0, toy_size: int = 10_000) -> Data:
    """Load "toy" (the 2-D moons), any toy name, "digits" or "mnist", standardised by the train split.

    Raises:
        FileNotFoundError: for mnist without its files.
    """
    from pushforward.data import TOYS, load

    key = "moons" if name == "toy" else name
    if key in TOYS:
        data = load(key, seed=seed, n=toy_size)
    elif key == "mnist":
        data = load("mnist", mnist_dir if mnist_dir is not None else DEFAULT_MNIST_DIR)
    else:
        data = load(key, seed=seed)
    mean, std = data.train.mean(0), data.train.std(0).clamp(min=1e-6)
    return Data(key, (data.train - mean) / std, (data.test - mean) / std, float(std.log().sum()), data.levels)


def batch_plan(n: int, batch_size: int, steps: int, seed: int) -> list[Tensor]:
    """Index tensors of ``steps`` batches: shuffled epochs, the same plan for every library."""
    generator = torch.Generator().manual_seed(seed)
    plan: list[Tensor] = []
    while len(plan) < steps:
        order = torch.randperm(n, generator=generator)
        plan += [order[i : i + batch_size] for i in range(0, n - batch_size + 1, batch_size)] or [order]
    return plan[:steps]


# --- timing ----------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


@dataclass
class Runner:
    """One library's model with its optimiser and the shared batches; counts its training steps."""

    model: Model
    optimizer: torch.optim.Optimizer
    train: Tensor
    plan: list[Tensor]
    device: torch.device
    step: int = 0
    diverged_at: int | None = None

    def train_steps(self, k: int) -> float:
        """Seconds for the next ``k`` steps of forward + backward + Adam step."""
        self.model.module.train()

        def run() -> None:
            for _ in range(k):
                x = self.train[self.plan[self.step]]
                loss = -self.model.log_prob(x).mean()
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.step += 1
                if self.diverged_at is None and not torch.isfinite(loss.detach()):
                    self.diverged_at = self.step

        return _timed(run, self.device)

    def log_prob_time(self, x: Tensor, calls: int) -> float:
        self.model.module.eval()
        with torch.no_grad():
            return _timed(lambda: [self.model.log_prob(x) for _ in range(calls)], self.device)

    def sample_time(self, n: int, calls: int) -> float:
        self.model.module.eval()
        with torch.no_grad():
            return _timed(lambda: [self.model.sample(n) for _ in range(calls)], self.device)


def held_out_log_likelihood(model: Model, x: Tensor, batch: int = 1000) -> tuple[float, float]:
    """Mean and standard error (nats per example) of log_prob over ``x``; NaN if any is non-finite."""
    model.module.eval()
    with torch.no_grad():
        values = torch.cat([model.log_prob(x[i : i + batch]) for i in range(0, len(x), batch)]).double()
    if not bool(torch.isfinite(values).all()):
        return math.nan, math.nan
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


def grid_mass(model: Model, half_width: float = 6.0, points: int = 301) -> float:
    """Integral of exp(log_prob) over [-w, w]^2 (2-D only): about 1 if log_prob is a density of x."""
    g = torch.linspace(-half_width, half_width, points)
    grid = torch.cartesian_prod(g, g)
    model.module.eval()
    with torch.no_grad():
        density = torch.cat([model.log_prob(grid[i : i + 10_000]) for i in range(0, len(grid), 10_000)]).exp()
    return float(density.nan_to_num(0.0).sum() * (g[1] - g[0]) ** 2)


# --- the dense-matmul bound ------------------------------------------------------------------

def _layer_sizes(module: nn.Module) -> list[tuple[int, int]]:
    """(in, out) of each linear layer of a conditioner: an MLP (nn.Sequential) or a MADE; else []."""
    from pushforward.nn import MADE

    if isinstance(module, MADE):
        return [(weight.shape[1], weight.shape[0]) for weight, _ in module.dense()]
    if isinstance(module, nn.Sequential):
        return [(m.in_features, m.out_features) for m in module.children() if isinstance(m, nn.Linear)]
    return []


def matmul_products(flow: nn.Module, batch: int) -> list[tuple[int, int, int]]:
    r"""The (m, k, n) matrix products of one training step of a pushforward flow, dense.

    For each linear layer y = x W^T (in -> out) on a batch B: forward (B, in, out), weight
    gradient (out, B, in), input gradient (B, out, in) -- except for the first layer applied to
    the data in ``log_prob`` (the last layer's conditioner: its input is the data, which needs no
    gradient). Masked weights count as dense, as every library multiplies them.
    FLOPs = sum of 2 m k n.
    """
    conditioners = [sizes for m in flow.modules() if (sizes := _layer_sizes(m))]
    products: list[tuple[int, int, int]] = []
    for index, sizes in enumerate(conditioners):
        for position, (i, o) in enumerate(sizes):
            products += [(batch, i, o), (o, batch, i)]
            data_side_first = index == len(conditioners) - 1 and position == 0
            if not data_side_first:
                products.append((batch, o, i))
    return products


def dense_bound(products: Sequence[tuple[int, int, int]], device: torch.device,
                repeat: int = 3) -> Callable[[], float]:
    """A function that returns the seconds of ``repeat`` rounds of the products, by torch.mm into
    preallocated outputs (divide by ``repeat`` for one step)."""
    torch.manual_seed(0)
    operands = [(torch.randn(m, k, device=device), torch.randn(k, n, device=device),
                 torch.empty(m, n, device=device)) for m, k, n in products]

    def run() -> float:
        def rounds() -> None:
            for _ in range(repeat):
                for a, b, out in operands:
                    torch.mm(a, b, out=out)

        return _timed(rounds, device)

    return run


def flop_count(products: Sequence[tuple[int, int, int]]) -> int:
    return sum(2 * m * k * n for m, k, n in products)


# --- peak memory -----------------------------------------------------------------------------

@dataclass
class ProbeJob:
    """What a memory subprocess builds and runs (JSON on its command line)."""

    library: str
    spec: dict
    operation: str  # "train", "log_prob" or "sample"
    batch: int
    threads: int
    seed: int
    device: str = "cpu"


def _probe(job: ProbeJob) -> float:
    """Peak memory increase (MiB) of two calls of ``job.operation``, in this (fresh) process."""
    torch.set_num_threads(job.threads)
    device = torch.device(job.device)
    torch.manual_seed(job.seed)
    spec = Spec(**{**job.spec, "hidden": tuple(job.spec["hidden"])})
    model = build(job.library, spec)
    model.module.to(device)
    optimizer = torch.optim.Adam(model.module.parameters(), lr=1e-3)
    x = torch.randn(job.batch, spec.features, device=device)

    def once() -> None:
        if job.operation == "train":
            loss = -model.log_prob(x).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        else:
            with torch.no_grad():
                model.log_prob(x) if job.operation == "log_prob" else model.sample(job.batch)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        once(), once()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    base = _reset_peak_rss()
    once(), once()
    return (_peak_rss() - base) / 2**20


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (Linux), in bytes; None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> int:
    """Make the peak RSS start from here; returns the value it starts from (bytes).

    On Linux, glibc's free heap is first returned to the system (``malloc_trim``), then writing 5
    to /proc/self/clear_refs resets the peak (VmHWM) to the current RSS, so that the transient
    peak of importing torch and the peers does not hide the operation's.
    Elsewhere the peak so far (``ru_maxrss``) is the baseline.
    """
    gc.collect()
    _malloc_trim()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        hwm = _status_bytes("VmHWM")
        if hwm is not None:
            return hwm
    except OSError:
        pass
    return _peak_rss()


def _malloc_trim() -> None:
    """Return glibc's free heap to the system (Linux), so that memory freed by the imports is not
    silently reused by the operation without raising the RSS."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _peak_rss() -> int:
    hwm = _status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    unit = 1 if platform.system() == "Darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit


# glibc: serve every block above 64 KiB by mmap and return it at free, with no adaptive threshold,
# so that the RSS follows the live tensors (repeated probes then agree to about 0.2 MiB, not 5).
_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def measure_memory(job: ProbeJob, timeout: float = 600) -> float:
    """Run :func:`_probe` in a fresh ``python -m benchmarks.compare --probe`` subprocess; MiB or NaN."""
    command = [sys.executable, "-W", "ignore", "-m", "benchmarks.compare", "--probe", json.dumps(asdict(job))]
    root = Path(__file__).resolve().parents[1]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=root,
                              env={**os.environ, "OMP_NUM_THREADS": str(job.threads), **_MALLOC_ENV})
        return float(done.stdout.strip().splitlines()[-1])
    except (subprocess.TimeoutExpired, ValueError, IndexError):
        return math.nan


# --- the benchmark ---------------------------------------------------------------------------

@dataclass
class Result:
    """The measurements of one library on one (data set, architecture)."""

    library: str
    parameters: int  # free parameters (masked-out weights not counted)
    stored: int  # stored parameters
    notes: list[str]
    train: list[float] = field(default_factory=list)  # examples/s per repetition
    log_prob: list[float] = field(default_factory=list)
    sample: list[float] = field(default_factory=list)
    memory: dict[str, float] = field(default_factory=dict)  # MiB per operation
    test_ll: tuple[float, float] = (math.nan, math.nan)
    steps: int = 0
    diverged_at: int | None = None
    mass: float | None = None
    error: str | None = None


@dataclass
class Settings:
    """The options of one run (see ``--help``)."""

    libraries: list[str]
    threads: int
    repeats: int
    steps: int
    warmup: int
    batch: int
    lr: float
    seed: int
    log_prob_batch: int
    calls: int
    sample_size: int | None
    memory: bool
    device: str = "cpu"
    fused_adam: bool = False
    chunk: int = 5


def _sample_size(settings: Settings, spec: Spec) -> int:
    if settings.sample_size is not None:
        return settings.sample_size
    # autoregressive sampling takes D passes per layer: keep its time near that of the others
    return max(8, min(1000, 6400 // spec.features)) if spec.autoregressive else 1000


def chunks(steps: int, chunk: int) -> list[int]:
    """``steps`` cut into runs of at most ``chunk`` (all of it for chunk <= 0)."""
    chunk = chunk if chunk > 0 else steps
    return [min(chunk, steps - i) for i in range(0, steps, chunk)]


def round_robin(order: Sequence[str], measures: Sequence[Callable[[T], float]],
                runners: Mapping[str, T]) -> dict[str, float]:
    """Seconds per library (or setting), summed over ``measures`` taken in turn by every one of
    ``order``, ``runners`` giving what each measure is applied to.

    Each round gives every library the same measurement before the next one starts, so that a
    slow spell of the machine (seconds long on a shared host) falls on all of them alike.
    """
    total = dict.fromkeys(order, 0.0)
    for measure in measures:
        for library in order:
            total[library] += measure(runners[library])
    return total


def benchmark(data: Data, spec: Spec, settings: Settings, log: Callable[[str], None] = print) -> dict:
    """Measure every library of ``settings`` on ``data`` with architecture ``spec``.

    Returns a dict with the results per library (:class:`Result`), the dense-matmul bound and
    the settings; prints progress through ``log``.
    """
    device = torch.device(settings.device)
    train, test = data.train.to(device), data.test.to(device)
    total = settings.warmup + settings.repeats * settings.steps
    plan = [idx.to(device) for idx in batch_plan(len(train), settings.batch, total, settings.seed)]
    eval_x = train[torch.arange(settings.log_prob_batch, device=device) % len(train)]
    n_sample = _sample_size(settings, spec)
    runners: dict[str, Runner] = {}
    results: dict[str, Result] = {}
    for library in settings.libraries:
        torch.manual_seed(settings.seed)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = build(library, spec)
        except Unsupported as error:
            results[library] = Result(library, 0, 0, [], error=str(error))
            continue
        model.module.to(device)
        optimizer = torch.optim.Adam(model.module.parameters(), lr=settings.lr, fused=settings.fused_adam or None)
        runners[library] = Runner(model, optimizer, train, plan, device)
        results[library] = Result(library, parameter_count(model.module), parameter_count(model.module, stored=True),
                                    model.notes)

    bound = {}
    if "pushforward" in runners:
        products = matmul_products(runners["pushforward"].model.module, settings.batch)
        bound_run, bound_times = dense_bound(products, device), []
        bound = {"flops": flop_count(products), "products": len(products)}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for runner in runners.values():  # warm-up: allocator, lazy initialisation, caches
            runner.train_steps(settings.warmup)
            runner.log_prob_time(eval_x, 1)
            runner.sample_time(min(n_sample, 8), 1)
        names = list(runners)
        turns = chunks(settings.steps, settings.chunk)
        for rep in range(settings.repeats):
            order = names[rep % len(names):] + names[: rep % len(names)]
            train = round_robin(order, [lambda r, k=k: r.train_steps(k) for k in turns], runners)
            log_prob = round_robin(order, [lambda r: r.log_prob_time(eval_x, 1)] * settings.calls, runners)
            sample = round_robin(order, [lambda r: r.sample_time(n_sample, 1)] * settings.calls, runners)
            for library in order:
                result = results[library]
                result.train.append(settings.steps * settings.batch / train[library])
                result.log_prob.append(settings.calls * len(eval_x) / log_prob[library])
                result.sample.append(settings.calls * n_sample / sample[library])
            if bound:
                bound_times.append(bound_run() / 3)
            log(f"  repetition {rep + 1}/{settings.repeats} done")
        for library, runner in runners.items():
            result = results[library]
            result.steps, result.diverged_at = runner.step, runner.diverged_at
            result.test_ll = held_out_log_likelihood(runner.model, test)
            if data.features == 2 and device.type == "cpu":
                result.mass = grid_mass(runner.model)

    if settings.memory:
        for library in runners:
            for operation in ("train", "log_prob", "sample"):
                batch = settings.batch if operation == "train" else (
                    settings.log_prob_batch if operation == "log_prob" else n_sample)
                job = ProbeJob(library, asdict(spec), operation, batch, settings.threads, settings.seed,
                               settings.device)
                results[library].memory[operation] = measure_memory(job)
            log(f"  memory of {library} done")

    if bound:
        bound["seconds"] = bound_times
        bound["gflops_mm"] = [bound["flops"] / t / 1e9 for t in bound_times]
        ours = results["pushforward"].train
        # examples/s -> seconds per step of one batch, with the same FLOP count
        bound["gflops_ours"] = [bound["flops"] * v / settings.batch / 1e9 for v in ours]
        bound["examples_per_s"] = [settings.batch / t for t in bound_times]
    return {"data": data.name, "features": data.features, "log_scale": data.log_scale, "levels": data.levels,
            "spec": asdict(spec), "sample_size": n_sample, "results": {k: asdict(v) for k, v in results.items()},
            "bound": bound}


# --- report ----------------------------------------------------------------------------------

def _spread(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    return "–".join(fmt.format(v) for v in (min(values), statistics.median(values), max(values)))


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def report(run: dict, log: Callable[[str], None] = print) -> None:
    """Print one (data set, architecture) block: the table, ratios and the dense-matmul bound."""
    spec, results = run["spec"], run["results"]
    log(f"\n== {run['data']} ({run['features']}-d) · {spec['arch']} · {spec['transforms']} layers, "
        f"hidden {tuple(spec['hidden'])}" + (f", {spec['bins']} bins on ±{spec['bound']:g}" if spec["arch"].startswith("nsf") else ""))
    for name, r in results.items():
        if r["error"]:
            log(f"  {name}: not built: {r['error']}")
        else:
            log(f"  {name}: {r['parameters']:,} free parameters ({r.get('stored', r['parameters']):,} stored)" + "".join(f"\n      - {n}" for n in r["notes"]))
    ok = {k: r for k, r in results.items() if not r["error"]}
    header = f"  {'library':<12}{'train ex/s':>12}{'log_prob ex/s':>15}{'sample ex/s':>13}{'peak MiB t/l/s':>20}   test LL (nats)"
    log(header)
    for name, r in ok.items():
        memory = "/".join(f"{r['memory'].get(op, math.nan):.0f}" for op in ("train", "log_prob", "sample")) if r["memory"] else "-"
        ll, se = r["test_ll"]
        ll_text = f"{ll:.2f} ± {se:.2f}" if not math.isnan(ll) else "NaN"
        extra = f"  (diverged at step {r['diverged_at']})" if r["diverged_at"] else ""
        extra += f"  [grid mass {r['mass']:.3f}]" if r["mass"] is not None else ""
        log(f"  {name:<12}{_median(r['train']):>12,.0f}{_median(r['log_prob']):>15,.0f}{_median(r['sample']):>13,.0f}"
            f"{memory:>20}   {ll_text}{extra}")
    steps = {r["steps"] for r in ok.values()}
    log(f"  test LL after {'/'.join(map(str, sorted(steps)))} steps, in the standardised space; "
        f"in the loader's space LL - ({run['log_scale']:.2f})"
        + (f" (bits/dim there = -(LL - {run['log_scale']:.2f}) / ({run['features']} ln 2))" if run["levels"] else ""))
    if "pushforward" in ok and len(ok) > 1:
        ours = ok["pushforward"]
        log("  ratios pushforward / peer, min–median–max over repetitions (>1: pushforward faster; memory <1: less):")
        for name, r in ok.items():
            if name == "pushforward":
                continue
            ratio = {key: [a / b for a, b in zip(ours[key], r[key])] for key in ("train", "log_prob", "sample")}
            memory = " ".join(f"{op} {ours['memory'][op] / r['memory'][op]:.2f}" for op in ("train", "log_prob", "sample")
                              if r["memory"] and r["memory"].get(op, 0) > 0) or "-"
            d_ll = ours["test_ll"][0] - r["test_ll"][0]
            se = math.hypot(ours["test_ll"][1], r["test_ll"][1])
            log(f"    vs {name:<11} train {_spread(ratio['train'])}   log_prob {_spread(ratio['log_prob'])}   "
                f"sample {_spread(ratio['sample'])}   memory {memory}   ΔLL {d_ll:+.2f} (± {se:.2f})")
    bound = run["bound"]
    if bound and bound["products"]:
        log(f"  dense-matmul bound ({bound['products']} torch.mm products, {bound['flops'] / 1e9:.3f} GFLOP per step): "
            f"{_median(bound['examples_per_s']):,.0f} ex/s at {_spread(bound['gflops_mm'], '{:.1f}')} GFLOP/s")
        fraction = [a / b for a, b in zip(bound["gflops_ours"], bound["gflops_mm"])]
        log(f"  pushforward's training step: {_spread(bound['gflops_ours'], '{:.1f}')} GFLOP/s = "
            f"{_spread(fraction)} of torch.mm at the same sizes")
        for name, r in ok.items():
            if name != "pushforward":
                share = [v / e for v, e in zip(r["train"], bound["examples_per_s"])]
                log(f"    {name} reaches {_spread(share)} of the bound")


def markdown(runs: Sequence[dict]) -> str:
    """The ratio tables of a run in Markdown, one row per (data set, architecture, peer)."""
    lines = ["| data | model | peer | train | log_prob | sample | peak memory t/l/s | test LL: ours − peer (± SE) |",
             "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        results = {k: r for k, r in run["results"].items() if not r["error"]}
        ours = results.get("pushforward")
        if ours is None:
            continue
        for name, r in results.items():
            if name == "pushforward":
                continue
            ratio = {key: _spread([a / b for a, b in zip(ours[key], r[key])]) for key in ("train", "log_prob", "sample")}
            memory = "/".join(f"{ours['memory'][op] / r['memory'][op]:.2f}" if r["memory"].get(op) else "–"
                              for op in ("train", "log_prob", "sample")) if r["memory"] else "–"
            d_ll = ours["test_ll"][0] - r["test_ll"][0]
            se = math.hypot(ours["test_ll"][1], r["test_ll"][1])
            lines.append(f"| {run['data']} | {run['spec']['arch']} | {name} | {ratio['train']} | {ratio['log_prob']} | "
                         f"{ratio['sample']} | {memory} | {d_ll:+.2f} (± {se:.2f}) |")
    return "\n".join(lines) + "\n"


# --- command line ----------------------------------------------------------------------------

def _profile(data: Data, spec: Spec, settings: Settings, log: Callable[[str], None] = print) -> None:
    """torch.profiler table of pushforward's training step (self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(settings.seed)
    model = build("pushforward", spec)
    optimizer = torch.optim.Adam(model.module.parameters(), lr=settings.lr)
    runner = Runner(model, optimizer, data.train, batch_plan(len(data.train), settings.batch, 30, settings.seed),
                    torch.device("cpu"))
    runner.train_steps(5)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        runner.train_steps(20)
    log(f"\n== profile of pushforward's {spec.arch} training step on {data.name} (20 steps)")
    log(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="toy,digits",
                   help="comma-separated: toy (2-D moons) or a toy name, digits, mnist (default toy,digits)")
    p.add_argument("--arch", default=None,
                   help=f"comma-separated of {', '.join(ARCHITECTURES)} (default: all; maf only for mnist)")
    p.add_argument("--libraries", default=",".join(LIBRARIES), help="comma-separated (default: all installed)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved repetitions (default 5; --quick 2; 0: memory only)")
    p.add_argument("--steps", type=int, default=None, help="training steps per repetition (default 20; --quick 3)")
    p.add_argument("--chunk", type=int, default=5,
                   help="training steps a library takes before the next library's turn, within a repetition "
                        "(default 5; 0: all of them at once)")
    p.add_argument("--warmup", type=int, default=None, help="untimed training steps first (default 5; --quick 1)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--fused-adam", action="store_true",
                   help="Adam(fused=True) for every library (default: torch's default Adam)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--transforms", type=int, default=5)
    p.add_argument("--hidden", default=None, help="hidden sizes for every architecture, e.g. 64,64")
    p.add_argument("--bins", type=int, default=8)
    p.add_argument("--activation", choices=("tanh", "relu"), default="tanh",
                   help="the MADE's non-linearity in every library (maf, nsf-ar; torchflows' is always tanh)")
    p.add_argument("--bound", type=float, default=5.0)
    p.add_argument("--log-prob-batch", type=int, default=1000)
    p.add_argument("--calls", type=int, default=None, help="log_prob / sample calls per repetition (default 3; --quick 1)")
    p.add_argument("--sample-size", type=int, default=None,
                   help="samples per call (default 1000; autoregressive: 6400 / D, at least 8)")
    p.add_argument("--toy-size", type=int, default=10_000, help="training points of the toy")
    p.add_argument("--mnist-dir", default=None, help=f"folder of the MNIST files (default {DEFAULT_MNIST_DIR})")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--quick", action="store_true", help="fewer steps, repetitions and calls; no memory probes")
    p.add_argument("--profile", action="store_true", help="also print a torch.profiler table of our training step")
    p.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    p.add_argument("--json", default=None, help="also write all measurements to this file")
    p.add_argument("--markdown", default=None, help="also write the ratio table (Markdown) to this file")
    p.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None, log: Callable[[str], None] = print) -> list[dict]:
    args = _parser().parse_args(argv)
    if args.probe:
        print(f"{_probe(ProbeJob(**json.loads(args.probe))):.3f}")
        return []
    torch.set_num_threads(args.threads)
    quick = args.quick
    libraries = []
    for library in args.libraries.split(","):
        reason = available(library)
        if reason:
            log(f"skipping {library}: {reason}")
        else:
            libraries.append(library)
    settings = Settings(
        libraries=libraries, threads=args.threads,
        repeats=_pick(args.repeats, 2 if quick else 5), steps=_pick(args.steps, 3 if quick else 20),
        warmup=_pick(args.warmup, 1 if quick else 5), batch=args.batch_size, lr=args.lr,
        seed=args.seed, log_prob_batch=args.log_prob_batch, calls=_pick(args.calls, 1 if quick else 3),
        sample_size=args.sample_size, memory=not (args.no_memory or quick), device=args.device,
        fused_adam=args.fused_adam, chunk=args.chunk)
    hidden = tuple(int(h) for h in args.hidden.split(",")) if args.hidden else None
    versions = {name: _version(name) for name in ["torch", *libraries]}
    log(f"benchmarks.compare · {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC · "
        f"{platform.processor() or platform.machine()} · {os.cpu_count()} CPUs · load {_load()} · "
        f"threads {args.threads} · device {args.device}")
    log("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    log(f"batch {settings.batch}, {'fused ' if settings.fused_adam else ''}Adam lr {settings.lr}, seed {settings.seed}; {settings.repeats} repetitions of "
        f"{settings.steps} steps (in turns of {settings.chunk or settings.steps}) after {settings.warmup} warm-up steps; "
        f"{settings.calls} log_prob/sample call(s) per repetition, one at a time in turn; log_prob batch {settings.log_prob_batch}")
    runs = []
    for name in args.data.split(","):
        try:
            data = load_data(name, args.mnist_dir, args.seed, args.toy_size)
        except FileNotFoundError as error:
            log(f"skipping {name}: {error}")
            continue
        archs = args.arch.split(",") if args.arch else (["maf"] if name == "mnist" else list(ARCHITECTURES))
        for arch in archs:
            spec = Spec(arch, data.features, args.transforms, hidden, args.bins, args.bound, args.activation)
            log(f"\n{data.name} · {arch}: measuring {', '.join(libraries)}")
            run = benchmark(data, spec, settings, log)
            report(run, log)
            runs.append(run)
            if args.profile and arch == archs[0]:
                _profile(data, spec, settings, log)
    if args.markdown:
        Path(args.markdown).write_text(markdown(runs))
    if args.json:
        Path(args.json).write_text(json.dumps({"versions": versions, "settings": asdict(settings), "runs": runs},
                                              indent=1, default=str))
    return runs


def _pick(value: int | None, default: int) -> int:
    return default if value is None else value


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def _load() -> str:
    try:
        return "/".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "?"


if __name__ == "__main__":
    main()

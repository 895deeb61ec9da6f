r"""Residual flows side by side: pushforward's ResidualFlow against normflows' Residual, on digits.

    python -m benchmarks.residual                          # 8 blocks, Lipschitz MLPs 2 x 256, c = 0.9
    python -m benchmarks.residual --steps 60 --repeats 2   # a quick look
    python -m benchmarks.residual --pushforward-coefficient 0.95   # ours at normflows' realised norms

Both models are ``--transforms`` blocks z = x + g(x), applied data -> base in ``log_prob``, g an
MLP D -> hidden -> D with LipSwish activations and every linear layer's spectral norm capped
at c, ActNorm between blocks and a standard normal base; in training both estimate the log-det
by the Russian roulette (2 terms always, then a geometric number with p = 0.5) with the
Neumann-series gradient. They train with Adam at the same learning rate, on the same batches in
the same order, from the same seed and with the same thread count, in one process. Differences
that remain are the libraries' own and are printed: pushforward's spectral norms are certified
upper bounds within 2^-11 of the exact norm (normflows': a power iteration, a lower bound, advanced
by ``nf.utils.update_lipschitz(flow, 5)`` after each optimizer step as normflows' own tests do:
its layers never advance it in the forward pass, and without the call its effective norms grew
to 2.7-3.8 times c in 300 steps here, so its blocks were no contractions), its LipSwish beta is
learned per unit. The largest spectral norm of any effective weight after training is printed
for both, by ``torch.linalg.matrix_norm``: normflows' exceed c (0.94-0.97 for c = 0.9), so
``--pushforward-coefficient`` gives ours a c of its own for a comparison at equal realised bounds.

* **Throughput** (examples/s of forward + backward + Adam step): the libraries take ``--turn``
  steps each in turn, the order rotating, ``--repeats`` times; ratios ours / theirs per
  repetition, printed as min-median-max.
* **Test log-likelihood** (nats per example, standardised space, mean ± standard error) after the
  same number of steps, for both models by the exact log-det: the Jacobian of x -> z by autograd
  and ``slogdet``, so that no estimator's noise enters the comparison.
"""

from __future__ import annotations

import argparse
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import pushforward as pf

from .compare import batch_plan, load_data

LIBRARIES = ("pushforward", "normflows")
NORMFLOWS_ITERATIONS = 5  # normflows' LipschitzMLP default (max_lipschitz_iter)


@dataclass
class Model:
    """One library's residual flow: its module, log_prob for training and the map x -> z."""

    library: str
    module: nn.Module
    log_prob: Callable[[Tensor], Tensor]
    encode: Callable[[Tensor], Tensor]
    after_step: Callable[[], None]
    effective_weights: Callable[[], list[Tensor]]


def build(library: str, features: int, transforms: int, hidden: tuple[int, ...], coefficient: float) -> Model:
    if library == "pushforward":
        flow = pf.ResidualFlow(features, transforms=transforms, hidden_features=hidden, coefficient=coefficient)
        layers = [m for m in flow.modules() if isinstance(m, pf.nn.lipschitz.SpectralLinear)]
        return Model(library, flow, flow.log_prob, lambda x: flow.transform.inverse(x)[0], lambda: None,
                     lambda: [m.effective_weight() for m in layers])
    import normflows as nf

    layers: list[nn.Module] = []
    for i in range(transforms):
        if i > 0:
            layers.append(nf.flows.ActNorm((features,)))
        net = nf.nets.LipschitzMLP([features, *hidden, features], lipschitz_const=coefficient, init_zeros=True)
        layers.append(nf.flows.Residual(net, reduce_memory=True))
    flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(features, trainable=False), layers)
    linears = [m for m in flow.modules() if isinstance(m, nf.nets.lipschitz.InducedNormLinear)]
    # normflows' layers read stored singular vectors and never update them in the forward pass;
    # its documented use (and its own tests) advance the power iteration after each step
    return Model(library, flow, flow.log_prob, lambda x: flow.inverse(x),
                 lambda: nf.utils.update_lipschitz(flow, NORMFLOWS_ITERATIONS),
                 lambda: [m.compute_weight(update=False) for m in linears])


def exact_log_likelihood(model: Model, x: Tensor) -> tuple[float, float]:
    """Mean and standard error of log N(z) + log|det dz/dx| with the Jacobian by autograd."""
    model.module.eval()
    x = x.clone().requires_grad_()
    z = model.encode(x)
    rows = [torch.autograd.grad(z[:, j].sum(), x, retain_graph=True)[0] for j in range(x.shape[1])]
    ladj = torch.linalg.slogdet(torch.stack(rows, 1).double())[1]
    values = (pf.StandardNormal(x.shape[1]).log_prob(z.detach()).double() + ladj).detach()
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--transforms", type=int, default=8)
    p.add_argument("--hidden", type=lambda s: tuple(int(v) for v in s.split(",")), default=(256, 256))
    p.add_argument("--coefficient", type=float, default=0.9)
    p.add_argument("--pushforward-coefficient", type=float, default=None,
                   help="pushforward's c if not --coefficient: e.g. normflows' realised norm, whose power "
                        "iteration lets its effective norms exceed c")
    p.add_argument("--steps", type=int, default=100, help="training steps per repetition and library")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--turn", type=int, default=5, help="steps a library takes per turn")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(args.threads)
    data = load_data("digits", seed=args.seed)
    ours = args.coefficient if args.pushforward_coefficient is None else args.pushforward_coefficient
    coefficients = {"pushforward": ours, "normflows": args.coefficient}
    d = data.train.shape[1]
    models = {}
    for library in LIBRARIES:
        torch.manual_seed(args.seed)
        models[library] = build(library, d, args.transforms, args.hidden, coefficients[library])
        count = sum(q.numel() for q in models[library].module.parameters())
        print(f"{library}: {count:,} parameters")
    optimizers = {k: torch.optim.Adam(m.module.parameters(), lr=args.lr) for k, m in models.items()}
    plan = batch_plan(len(data.train), args.batch_size, args.steps * args.repeats + args.turn, args.seed)
    taken = {k: 0 for k in models}

    def steps(library: str, k: int) -> float:
        model, optimizer = models[library], optimizers[library]
        model.module.train()
        start = time.perf_counter()
        for _ in range(k):
            x = data.train[plan[taken[library]]]
            loss = -model.log_prob(x).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            model.after_step()
            taken[library] += 1
        return time.perf_counter() - start

    for library in LIBRARIES:  # warm-up (and the ActNorm initialisations), untimed
        steps(library, args.turn)
    throughput: dict[str, list[float]] = {k: [] for k in models}
    for r in range(args.repeats):
        order = LIBRARIES[r % 2:] + LIBRARIES[: r % 2]
        seconds = {k: 0.0 for k in models}
        for _ in range(args.steps // args.turn):
            for library in order:
                seconds[library] += steps(library, args.turn)
        for k in models:
            throughput[k].append(args.steps // args.turn * args.turn * args.batch_size / seconds[k])
    ratios = sorted(a / b for a, b in zip(throughput["pushforward"], throughput["normflows"]))
    print(f"\ndigits ({d}-d), {args.transforms} blocks, hidden {args.hidden}, c = {coefficients}, batch "
          f"{args.batch_size}, {args.threads} thread(s), {taken['pushforward']} steps each")
    for k in models:
        print(f"  {k}: training {sorted(throughput[k])[len(ratios) // 2]:,.0f} examples/s (median)")
    print(f"  ratio pushforward / normflows: {ratios[0]:.2f}-{ratios[len(ratios) // 2]:.2f}-{ratios[-1]:.2f}")
    result = {"throughput": throughput, "ratios": ratios, "steps": taken["pushforward"]}
    for k, model in models.items():
        with torch.no_grad():
            norms = [float(torch.linalg.matrix_norm(w, 2)) for w in model.effective_weights()]
        result[f"norms_{k}"] = norms
        print(f"  {k}: largest spectral norm of an effective weight {max(norms):.4f} (c = {coefficients[k]})")
    for k, model in models.items():
        mean, stderr = exact_log_likelihood(model, data.test)
        result[f"test_{k}"] = (mean, stderr)
        print(f"  {k}: test log-likelihood {mean:.2f} ± {stderr:.2f} nats (exact log-det, standardised space)")
    return result


if __name__ == "__main__":
    main()

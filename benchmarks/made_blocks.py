"""MADE storage and block products: pushforward's training throughput alone, per MADE layout.

    python -m benchmarks.made_blocks                                   # dense,1,auto on digits-sized MAF
    python -m benchmarks.made_blocks --features 784 --repeats 5        # MNIST-sized
    python -m benchmarks.made_blocks --settings 1,auto,2,4 --fused     # block plans, fused Adam

Builds MAF(5 layers) (or ``--arch nsf-ar``: autoregressive NSF, 8 bins), tanh MADEs (or
``--activation relu``), once per setting of
``--settings``, from the same seed (the same function):

- ``dense``: every MADE replaced by one ``nn.Linear`` with a mask buffer per layer, y =
  (W * M) x + b with the whole W stored and multiplied: the layout of the peer libraries and
  of pushforward before its packed storage;
- ``1``, ``2``, ... : pushforward's MADE with that many row runs per layer (one flat parameter
  per MADE, only the blocks a mask uses stored); ``1-4-1``: runs per layer, input layer first;
- ``auto``: pushforward's default (by the layer's size: see ``pushforward.nn.MaskedLinear``);
- a setting followed by ``+composed`` (e.g. ``auto+composed``): that layout with the affine map
  computed by composed autograd operations (:class:`ComposedAffineMap`, pushforward's before its
  one-node backward) instead of ``pushforward.transforms.AffineMap`` (maf only).

then times training steps (forward, backward, Adam step as ``benchmarks.compare`` does it, or
``--fused``; batch 128, random data), the settings in turns of ``--chunk`` steps within each
repetition and in a rotating order over the repetitions. Prints the median examples/s of each
and its ratio to the first setting.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import Tensor, nn

import pushforward as pf
from pushforward.nn import MADE, cat_context
from pushforward.transforms import AffineMap, MaskedAutoregressive
from pushforward.transforms.elementwise import InverseMap

from .compare import chunks, round_robin


class DenseMADE(nn.Module):
    """The function of a :class:`MADE` with one dense masked ``nn.Linear`` per layer."""

    def __init__(self, made: MADE):
        super().__init__()
        ones = copy.deepcopy(made)
        with torch.no_grad():
            ones.packed.fill_(1.0)  # its dense weights are then the masks
        self.features, self.params, self.context_features = made.features, made.params, made.context_features
        self.activation = made.activation
        self.linears = nn.ModuleList()
        for (weight, bias), (mask, _) in zip(made.dense(), ones.dense()):
            linear = nn.Linear(weight.shape[1], weight.shape[0], dtype=weight.dtype, device=weight.device)
            linear.weight.data.copy_(weight.detach())
            linear.bias.data.copy_(bias.detach())
            linear.register_buffer("mask", mask.detach().clone())
            self.linears.append(linear)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        h = cat_context(x, context, self.context_features, "MADE")
        for k, linear in enumerate(self.linears):
            h = nn.functional.linear(h, linear.weight * linear.mask, linear.bias)
            h = self.activation(h) if k + 1 < len(self.linears) else h
        return h.unflatten(-1, (self.features, self.params))


class ComposedAffineMap(AffineMap):
    """:class:`~pushforward.transforms.AffineMap` as composed autograd operations (the same function)."""

    def _unpack(self, h: Tensor) -> tuple[Tensor, Tensor]:
        shift, raw = h.unbind(-1)
        return shift, self.bound * torch.tanh(raw / self.bound)

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._unpack(h)
        return z * torch.exp(log_scale) + shift, log_scale

    def inverse(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._unpack(h)
        return (x - shift) * torch.exp(-log_scale), -log_scale


def build(arch: str, features: int, hidden: tuple[int, ...], setting: str,
          activation: type[nn.Module] = nn.Tanh) -> pf.Flow:
    """The flow of one setting (see the module docstring), from seed 0."""
    torch.manual_seed(0)
    if arch == "maf":
        flow = pf.MAF(features, transforms=5, hidden_features=hidden, activation=activation)
    else:
        flow = pf.NSF(features, transforms=5, hidden_features=hidden, bins=8, autoregressive=True,
                      activation=activation)
    return relayout(flow, setting)


def relayout(flow: pf.Flow, setting: str) -> pf.Flow:
    """``flow`` with each MADE stored as ``setting`` says (and its affine maps composed for a
    ``+composed`` setting), the same function; in place."""
    setting, composed = setting.removesuffix("+composed"), setting.endswith("+composed")
    for layer in flow.modules():
        if composed and isinstance(layer, InverseMap) and isinstance(layer.map, AffineMap):
            layer.map = ComposedAffineMap(layer.map.bound)
        if isinstance(layer, MaskedAutoregressive) and setting != "auto":
            made = layer.made
            if setting == "dense":
                layer.made = DenseMADE(made)
                continue
            hidden = [weight.shape[0] for weight, _ in made.dense()[:-1]]
            blocks = [int(b) for b in setting.split("-")] if "-" in setting else int(setting)
            layer.made = MADE(made.features, made.params, made.context_features, hidden, made.order,
                              type(made.activation), blocks=blocks).to(made.packed)
            layer.made.load_state_dict(_per_layer_state(made))
    return flow


def _per_layer_state(made: MADE) -> dict[str, Tensor]:
    """``made``'s weights in the per-layer state-dict format, which any layout loads."""
    state = {"order": made.order}
    for k, (weight, bias) in enumerate(made.dense()):
        state |= {f"network.{2 * k}.weight": weight.detach(), f"network.{2 * k}.bias": bias.detach()}
    return state


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the comparison; returns the median examples/s per setting."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=("maf", "nsf-ar"), default="maf")
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--hidden", default="512,512")
    parser.add_argument("--settings", default="dense,1,auto")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--chunk", type=int, default=5, help="steps per setting per turn (0: all steps at once)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--activation", choices=("tanh", "relu"), default="tanh",
                        help="the MADE's non-linearity (tanh: benchmarks.compare's default)")
    parser.add_argument("--fused", action="store_true", help="fused Adam (pushforward.fit's) instead of the default")
    args = parser.parse_args(argv)
    hidden = tuple(int(h) for h in args.hidden.split(","))
    settings = args.settings.split(",")
    torch.set_num_threads(args.threads)
    activation = nn.Tanh if args.activation == "tanh" else nn.ReLU
    flows = {s: build(args.arch, args.features, hidden, s, activation) for s in settings}
    optimizers = {s: torch.optim.Adam(f.parameters(), lr=1e-4, fused=args.fused or None) for s, f in flows.items()}
    turns = chunks(args.steps, args.chunk)
    x = torch.randn(max(*turns, 5), args.batch_size, args.features)  # every turn takes its batches from the first

    def seconds(setting: str, steps: int) -> float:
        flow, optimizer = flows[setting], optimizers[setting]
        start = time.perf_counter()
        for i in range(steps):
            loss = -flow.log_prob(x[i]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return time.perf_counter() - start

    rates: dict[str, list[float]] = {s: [] for s in settings}
    for s in settings:  # warm-up
        seconds(s, 5)
    for rep in range(args.repeats):
        order = settings[rep % len(settings):] + settings[: rep % len(settings)]
        total = round_robin(order, [lambda s, k=k: seconds(s, k) for k in turns], {s: s for s in settings})
        for s in order:
            rates[s].append(args.steps * args.batch_size / total[s])
    medians = {s: statistics.median(r) for s, r in rates.items()}
    for s in settings:
        ratios = [a / b for a, b in zip(rates[s], rates[settings[0]])]
        print(f"{args.arch} D={args.features} hidden={hidden} threads={args.threads} {s:>5}: {medians[s]:.0f} "
              f"examples/s ({medians[s] / medians[settings[0]]:.2f}x of {settings[0]}; per repetition "
              f"{min(ratios):.2f}-{max(ratios):.2f})")
    return medians


if __name__ == "__main__":
    main()

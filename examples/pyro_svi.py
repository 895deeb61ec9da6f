r"""Pyro SVI with a pushforward flow as the guide, on a model whose posterior is known.

Bayesian linear regression with a known noise: w ~ N(0, I_2), y_n ~ N(x_n . w, sigma^2) for
20 correlated inputs x_n; the posterior is N(m, S), S = (I + X^T X / sigma^2)^-1,
m = S X^T y / sigma^2, with a correlation of about -0.84 between w_1 and w_2. It fits the
guide by SVI (Trace_ELBO, 32 vectorised particles, Adam) with the flow guide (an IAF) and,
for comparison, Pyro's mean-field AutoDiagonalNormal guide, and prints for each the error of
the mean and of the covariance and KL(q || p) in nats (a Monte Carlo estimate over 20,000
draws of q; 0 is the exact posterior).

Run: ``PYTHONPATH=src python examples/pyro_svi.py``.
"""

from __future__ import annotations

import argparse

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoDiagonalNormal

import pushforward as pf
from pushforward.integrations.pyro import PyroFlow


def regression(n: int = 20, sigma: float = 0.5, seed: int = 0):
    """Inputs X (n, 2), outputs y (n,), the noise sigma and the exact posterior N(m, S)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 2, generator=g) @ torch.tensor([[1.0, 0.9], [0.0, 0.45]])
    y = X @ torch.tensor([1.0, -0.5]) + sigma * torch.randn(n, generator=g)
    S = torch.linalg.inv(torch.eye(2) + X.T @ X / sigma**2)
    return X, y, sigma, dist.MultivariateNormal(S @ X.T @ y / sigma**2, S)


def fit(model, guide, steps: int, seed: int) -> None:
    torch.manual_seed(seed)
    pyro.clear_param_store()
    elbo = pyro.infer.Trace_ELBO(num_particles=32, vectorize_particles=True, max_plate_nesting=1)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), elbo)
    for _ in range(steps):
        svi.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    X, y, sigma, posterior = regression()

    def model():
        w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))  # (*particles, 1, 2) when vectorised
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal((w * X).sum(-1), sigma), obs=y)

    flow = pf.IAF(2, transforms=2, hidden_features=(16,))

    def flow_guide():
        pyro.module("flow", flow)
        pyro.sample("w", PyroFlow(flow))

    mean_field = AutoDiagonalNormal(model)
    print(f"exact posterior: mean {posterior.mean.tolist()}, cov {posterior.covariance_matrix.tolist()}")
    print(f"{'guide':28s} {'|mean error|':>12s} {'|cov error|':>12s} {'KL(q||p) nats':>14s}")
    for label, guide in (("pushforward IAF (flow)", flow_guide), ("Pyro AutoDiagonalNormal", mean_field)):
        fit(model, guide, args.steps, args.seed)
        with torch.no_grad():
            if guide is flow_guide:
                draws, log_q = flow.sample_and_log_prob((20_000,))
            else:
                q = mean_field.get_posterior()
                draws = q.sample((20_000,))
                log_q = q.log_prob(draws)
        mean_error = float((draws.mean(0) - posterior.mean).norm())
        cov_error = float((torch.cov(draws.T) - posterior.covariance_matrix).norm())
        kl = float((log_q - posterior.log_prob(draws)).mean())
        print(f"{label:28s} {mean_error:12.4f} {cov_error:12.4f} {kl:14.4f}")


if __name__ == "__main__":
    main()

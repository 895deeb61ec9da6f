r"""NPE on sbi's Gaussian-linear task with pushforward's flows against sbi's own estimators.

The task (sbibm's ``gaussian_linear``, Lueckmann et al. 2021): theta ~ N(0, 0.1 I_10),
x | theta ~ N(theta, 0.1 I_10); the posterior is N(x / 2, 0.05 I_10). Every estimator is
trained by the same sbi ``NPE`` trainer on the same simulations, with the same batch size,
learning rate, validation split, seed and number of epochs (no early stop: ``stop_after_epochs``
equals ``--epochs``; sbi keeps the weights of the best validation epoch), and sbi's default
sizes: 5 layers, 10 spline bins, hidden_features=50, which sbi turns into 5 hidden layers of 50
per conditioner for zuko's flows; pushforward's conditioners get the same 5 x 50 (and, as
``pf.integrations.sbi.build`` gives them by default, tanh).

For each of ``--observations`` observations x_o drawn from the task, it reports
- C2ST: the cross-validated accuracy of a classifier telling ``--samples`` posterior samples
  of the estimator from as many of the true posterior (sbi's ``c2st``, a random forest;
  0.5 is perfect, 1.0 is disjoint), averaged over the observations;
- KL: E_p[log p(theta | x_o) - log q(theta | x_o)] over true posterior samples, in nats
  (0 is perfect; the log-probability of true posterior samples, less their true log-density).
Each estimator is run once per seed of ``--seeds`` (the simulations, the observations, the
initialisation and the training batches all change with the seed); the table gives the mean
and, after ±, the standard error of the mean over the seeds.

Run: ``PYTHONPATH=src python examples/sbi_gaussian_linear.py`` (defaults as in the README).
"""

from __future__ import annotations

import argparse
import time

import torch
from sbi.inference import NPE
from sbi.neural_nets import posterior_nn
from sbi.simulators.linear_gaussian import linear_gaussian, true_posterior_linear_gaussian_mvn_prior
from sbi.utils.metrics import c2st

import pushforward as pf

DIM = 10
SIZES = dict(hidden_features=50, num_transforms=5, num_bins=10)  # sbi's defaults for its flows
OURS = dict(hidden_features=(50,) * 5, transforms=5)  # as sbi builds zuko's: each conditioner 5 x 50


ACTIVATIONS = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}


def estimators(activation: str = "tanh") -> dict:
    """The density-estimator builders compared, by label; pushforward's conditioners with the
    non-linearity ``activation`` (a key of ``ACTIVATIONS``)."""
    ours = dict(OURS, activation=ACTIVATIONS[activation])
    return {
        "pushforward nsf": pf.integrations.sbi.build("nsf", bins=10, **ours),
        "pushforward nsf autoregressive": pf.integrations.sbi.build("nsf", bins=10, autoregressive=True, **ours),
        "pushforward maf": pf.integrations.sbi.build("maf", **ours),
        "sbi maf (nflows, NPE's default)": posterior_nn("maf", **SIZES),
        "sbi nsf (nflows)": posterior_nn("nsf", **SIZES),
        "sbi zuko_maf": posterior_nn("zuko_maf", **SIZES),
        "sbi zuko_nsf": posterior_nn("zuko_nsf", **SIZES),
    }


def task(simulations: int, observations: int, seed: int, dim: int = DIM):
    """The prior, the training simulations (theta, x), the observations x_o and their exact
    posteriors N(x_o / 2, 0.05 I), seeded."""
    torch.manual_seed(seed)
    zeros, cov = torch.zeros(dim), 0.1 * torch.eye(dim)
    prior = torch.distributions.MultivariateNormal(zeros, cov)
    theta = prior.sample((simulations,))
    x = linear_gaussian(theta, zeros, cov)
    x_o = linear_gaussian(prior.sample((observations,)), zeros, cov)
    true = [true_posterior_linear_gaussian_mvn_prior(x_o[i:i + 1], zeros, cov, zeros, cov) for i in range(observations)]
    return prior, theta, x, x_o, true


def evaluate(posterior, x_o: torch.Tensor, true: list, samples: int, seed: int) -> tuple[float, float]:
    """Mean C2ST accuracy and mean KL(p || q) in nats over the observations."""
    accuracies, kls = [], []
    for i, p in enumerate(true):
        torch.manual_seed(seed + i)
        reference = p.sample((samples,))
        ours = posterior.sample((samples,), x=x_o[i:i + 1], show_progress_bars=False)
        accuracies.append(float(c2st(ours, reference, seed=seed)))
        log_q = posterior.log_prob(reference, x=x_o[i:i + 1])
        kls.append(float((p.log_prob(reference) - log_q).mean()))
    return sum(accuracies) / len(accuracies), sum(kls) / len(kls)


def mean_se(values: list[float], digits: int) -> str:
    """"mean ± standard error of the mean" of ``values`` (the mean alone for one value)."""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    se = (sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values)) ** 0.5
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--simulations", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--observations", type=int, default=5)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, one run of every estimator each")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--activation", choices=sorted(ACTIVATIONS), default="tanh",
                        help="pushforward's conditioners (tanh: pf.integrations.sbi.build's default)")
    parser.add_argument("--only", default=None, help="comma-separated substrings of the estimator labels to run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    tasks = {seed: task(args.simulations, args.observations, seed) for seed in seeds}
    print(f"Gaussian-linear {DIM}-D, {args.simulations} simulations, {args.epochs} epochs, batch 200, lr 5e-4, "
          f"seeds {args.seeds}, {args.observations} observations x {args.samples} samples, "
          f"{args.threads} thread(s), torch {torch.__version__}")
    print(f"{'estimator':34s} {'C2ST':>13s} {'KL nats':>15s} {'train s':>8s} {'params':>7s}")
    for label, builder in estimators(args.activation).items():
        if args.only and not any(part in label for part in args.only.split(",")):
            continue
        accuracies, kls, seconds = [], [], []
        for seed, (prior, theta, x, x_o, true) in tasks.items():
            torch.manual_seed(seed)
            npe = NPE(prior, density_estimator=builder, show_progress_bars=False)
            start = time.perf_counter()
            estimator = npe.append_simulations(theta, x).train(max_num_epochs=args.epochs,
                                                               stop_after_epochs=args.epochs)
            seconds.append(time.perf_counter() - start)
            accuracy, kl = evaluate(npe.build_posterior(), x_o, true, args.samples, seed)
            accuracies.append(accuracy)
            kls.append(kl)
        params = sum(p.numel() for p in estimator.parameters())
        print(f"{label:34s} {mean_se(accuracies, 3):>13s} {mean_se(kls, 4):>15s} {sum(seconds) / len(seconds):8.1f} "
              f"{params:7d}", flush=True)


if __name__ == "__main__":
    main()

"""Embedding networks: every conditional preset reads its context through ``embedding=``, any
module from a raw context (an image, a set) to ``context_features``, trained jointly; one
context row broadcasts over many data rows; bad contexts and embeddings give one-line errors."""

import pytest
import torch
from torch import nn

import pushforward as pf
from pushforward.flows import PRESETS, preset_options

SMALL = {"transforms": 2, "hidden_features": (8,), "bins": 4}
CONDITIONAL = sorted(name for name in PRESETS if "context_features" in preset_options(name))


def build(name, features=2, context_features=3, **extra):
    options = {k: v for k, v in {**SMALL, **extra}.items() if k in preset_options(name)}
    return PRESETS[name](features, context_features, **options)


class SetEmbedding(nn.Module):
    """Deep Sets: a sum of per-element features, then an MLP (Zaheer et al. 2017), (*batch, M, d) -> (*batch, k)."""

    def __init__(self, d: int, k: int):
        super().__init__()
        self.phi = nn.Sequential(nn.Linear(d, 16), nn.ReLU())
        self.rho = nn.Linear(16, k)

    def forward(self, s):
        return self.rho(self.phi(s).sum(-2))


def image_embedding(k: int) -> nn.Module:
    """(N, 1, 8, 8) -> (N, k)."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, k))


@pytest.mark.parametrize("name", CONDITIONAL)
def test_every_conditional_preset_trains_its_embedding_jointly(name):
    torch.manual_seed(0)
    # perturbed: presets start at the identity, where the context has no effect yet
    flow = pf.testing.perturb(build(name, embedding=nn.Sequential(nn.Linear(5, 3), nn.Tanh())))
    x, c = torch.randn(6, 2), torch.randn(6, 5)
    (-flow.log_prob(x, c).mean()).backward()
    grads = [p.grad for p in flow.embedding.parameters()]
    assert all(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads), name
    assert any(p is flow.embedding[0].weight for p in flow.parameters())
    assert flow.sample((4,), c).shape == (4, 6, 2)


def test_images_as_context():
    torch.manual_seed(0)
    flow = pf.NSF(2, 3, transforms=2, hidden_features=(8,), embedding=image_embedding(3))
    images = torch.randn(5, 1, 8, 8)
    assert flow.log_prob(torch.randn(5, 2), images).shape == (5,)
    assert flow.sample((7,), images).shape == (7, 5, 2)
    x, log_p = flow.sample_and_log_prob((7,), images)
    torch.testing.assert_close(log_p, flow.log_prob(x, images), atol=1e-4, rtol=1e-4)


def test_sets_as_context_are_permutation_invariant():
    torch.manual_seed(0)
    flow = pf.MAF(2, 4, transforms=2, hidden_features=(8,), embedding=SetEmbedding(3, 4))
    sets = torch.randn(5, 10, 3)  # five sets of ten 3-D points
    x = torch.randn(5, 2)
    log_p = flow.log_prob(x, sets)
    torch.testing.assert_close(flow.log_prob(x, sets[:, torch.randperm(10)]), log_p)
    assert flow.sample((2,), sets).shape == (2, 5, 2)
    assert flow.as_distribution(sets).batch_shape == (5,)


@pytest.mark.parametrize("embedding", [None, nn.Linear(5, 3)], ids=["plain", "embedded"])
def test_one_context_row_broadcasts_over_many_data_rows(embedding):
    torch.manual_seed(0)
    flow = pf.testing.perturb(pf.MAF(2, 3, transforms=2, hidden_features=(8,), embedding=embedding))
    c = torch.randn(5 if embedding is not None else 3)
    x = torch.randn(9, 2)
    expected = flow.log_prob(x, c.expand(9, *c.shape))
    torch.testing.assert_close(flow.log_prob(x, c), expected)
    torch.testing.assert_close(flow.log_prob(x, c[None]), expected)
    torch.testing.assert_close(flow.as_distribution(c).log_prob(x), expected)


def test_bad_contexts_and_embeddings_give_one_line_errors():
    flow = pf.MAF(2, 3, transforms=1, hidden_features=(8,), embedding=nn.Linear(5, 3))
    with pytest.raises(ValueError, match=r"cannot take a context of shape \(4, 6\)") as error:
        flow.log_prob(torch.randn(4, 2), torch.randn(4, 6))
    assert "\n" not in str(error.value)
    wrong = pf.MAF(2, 3, transforms=1, hidden_features=(8,), embedding=nn.Linear(5, 4))
    with pytest.raises(ValueError, match=r"maps a context of shape \(4, 5\) to \(4, 4\).*\(\*batch, 3\)"):
        wrong.log_prob(torch.randn(4, 2), torch.randn(4, 5))
    with pytest.raises(ValueError, match="do not broadcast"):
        flow.log_prob(torch.randn(4, 2), torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"context has shape \(4, 4\), expected \(\*batch, 3\)"):
        pf.MAF(2, 3, transforms=1, hidden_features=(8,)).log_prob(torch.randn(4, 2), torch.randn(4, 4))
    with pytest.raises(ValueError, match="needs a conditional flow"):
        pf.MAF(2, transforms=1, embedding=nn.Linear(5, 3))

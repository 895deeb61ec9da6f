"""The core contract beyond the registry: event shapes through Chain, Inverse and Flow, data
types, temperature, encode/decode."""

import pytest
import torch

import pushforward as pf
from pushforward.core import Chain, Flow, Inverse, Transform


class Fold(Transform):
    """(*batch, 2n) -> (*batch, 2, n): a reshape that changes the number of event dimensions."""

    data_event_dims = 2

    def forward_shape(self, shape):
        return (2, shape[0] // 2)

    def inverse_shape(self, shape):
        return (shape[0] * shape[1],)

    def forward(self, z, context=None):
        return z.unflatten(-1, (2, -1)), z.new_zeros(z.shape[:-1])

    def inverse(self, x, context=None):
        return x.flatten(-2), x.new_zeros(x.shape[:-2])


def test_chain_and_inverse_compose_event_shapes():
    chain = Chain(pf.transforms.Affine(torch.tensor(1.0), torch.tensor(2.0)), Fold())
    assert (chain.event_dims, chain.data_event_dims) == (1, 2)
    assert chain.forward_shape((6,)) == (2, 3) and chain.inverse_shape((2, 3)) == (6,)
    inverse = Inverse(chain)
    assert (inverse.event_dims, inverse.data_event_dims) == (2, 1)
    assert inverse.forward_shape((2, 3)) == (6,)
    x, ladj = chain(torch.randn(4, 6))
    assert x.shape == (4, 2, 3) and ladj.shape == (4,)
    z, ladj_inv = chain.inverse(x)
    assert z.shape == (4, 6) and ladj_inv.shape == (4,)
    torch.testing.assert_close(ladj_inv, -ladj)


def test_chain_refuses_parts_whose_event_dimensions_do_not_meet():
    with pytest.raises(ValueError, match="outputs 2 event dimension"):
        Chain(Fold(), pf.transforms.Affine(torch.tensor(1.0), torch.tensor(2.0)))


def test_flow_checks_data_against_the_shape_its_transform_makes():
    flow = Flow(pf.StandardNormal(6), Fold())
    assert flow.event_shape == (2, 3)
    assert flow.log_prob(torch.randn(5, 2, 3)).shape == (5,)
    assert flow.sample((4,)).shape == (4, 2, 3)
    with pytest.raises(ValueError, match=r"expected \(\*batch, 2, 3\)"):
        flow.log_prob(torch.randn(5, 6))
    with pytest.raises(ValueError, match="event dimension"):
        Flow(pf.StandardNormal((2, 3)), Fold())


def test_data_of_another_float_type_is_refused_and_integers_are_cast():
    flow = pf.MAF(2, transforms=1, hidden_features=(8,))
    with pytest.raises(ValueError, match="float64.*float32"):
        flow.log_prob(torch.randn(3, 2, dtype=torch.float64))
    ints = torch.tensor([[1, 2], [0, -1]])
    torch.testing.assert_close(flow.log_prob(ints), flow.log_prob(ints.float()))


@pytest.mark.parametrize("base", [pf.StandardNormal(3), pf.DiagNormal(3)], ids=["standard", "diagonal"])
def test_temperature_scales_the_base_deviation_around_its_mean(base):
    with torch.no_grad():
        if isinstance(base, pf.DiagNormal):
            base.loc.fill_(2.0)
            base.log_scale.fill_(0.5)
    flow = Flow(base, Chain())
    torch.manual_seed(1)
    plain = flow.sample((1000,))
    torch.manual_seed(1)
    cold = flow.sample((1000,), temperature=0.5)
    mean = base.loc if isinstance(base, pf.DiagNormal) else torch.zeros(3)
    torch.testing.assert_close(cold - mean, 0.5 * (plain - mean))
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            flow.sample((2,), temperature=bad)


def test_decode_inverts_encode():
    flow = pf.testing.perturb(pf.RealNVP(4, transforms=2, hidden_features=(8,))).eval()
    x = torch.randn(5, 4)
    z = flow.encode(x)
    assert z.shape == (5, 4)
    torch.testing.assert_close(flow.decode(z), x, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="latent"):
        flow.decode(torch.randn(5, 3))

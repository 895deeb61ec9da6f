"""The contract every transform of the registry passes (DESIGN.md, 'Tests that every transform passes')."""

import copy
import io

import pytest
import torch

from pushforward import Flow, StandardNormal, testing
from pushforward.transforms import BatchNorm

EXAMPLES = list(testing.transform_examples())
IDS = [name for name, *_ in EXAMPLES]
BATCH_SHAPES = [(), (3,), (2, 3)]


def inputs(event_shape, context_features, batch_shape, device):
    z = torch.randn(*batch_shape, *event_shape, dtype=torch.float64, device=device)
    c = torch.randn(*batch_shape, context_features, dtype=torch.float64, device=device) if context_features else None
    return z, c


@pytest.fixture(params=EXAMPLES, ids=IDS)
def example(request, device):
    name, t, event_shape, context_features = request.param
    return name, copy.deepcopy(t).to(device), event_shape, context_features


@pytest.mark.parametrize("batch_shape", BATCH_SHAPES, ids=str)
def test_round_trip(example, batch_shape, device):
    _, t, event_shape, c = example
    testing.check_round_trip(t, *inputs(event_shape, c, batch_shape, device))


@pytest.mark.parametrize("batch_shape", BATCH_SHAPES, ids=str)
def test_shapes(example, batch_shape, device):
    _, t, event_shape, c = example
    z, context = inputs(event_shape, c, batch_shape, device)
    x, ladj = t(z, context)
    z2, ladj2 = t.inverse(x, context)
    assert x.shape == torch.Size(batch_shape) + t.forward_shape(event_shape)
    assert t.inverse_shape(x.shape[len(batch_shape):]) == tuple(event_shape)
    assert z2.shape == z.shape
    assert ladj.shape == ladj2.shape == torch.Size(batch_shape)
    assert x.dtype == ladj.dtype == torch.float64


def test_ladj_matches_autograd_jacobian(example, device):
    _, t, event_shape, c = example
    testing.check_ladj(t, *inputs(event_shape, c, (4,), device))


def test_forward_ladj_is_minus_inverse_ladj(example, device):
    _, t, event_shape, c = example
    testing.check_ladj_symmetry(t, *inputs(event_shape, c, (2, 3), device))


def test_log_prob_gradients_are_finite(example, device):
    _, t, event_shape, c = example
    t.train()
    flow = Flow(StandardNormal(event_shape).double(), t).to(device)
    z, context = inputs(event_shape, c, (8,), device)
    x = t(z, context)[0].detach().requires_grad_()
    flow.log_prob(x, context).mean().neg().backward()
    assert torch.isfinite(x.grad).all()
    for name, p in t.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"


def test_train_and_eval_agree(example, device):
    _, t, event_shape, c = example
    z, context = inputs(event_shape, c, (6,), device)
    x_eval, ladj_eval = t(z, context)
    t.train()
    x_train, ladj_train = t(z, context)
    torch.testing.assert_close(x_train, x_eval)
    torch.testing.assert_close(ladj_train, ladj_eval)
    if not any(isinstance(m, BatchNorm) for m in t.modules()):
        t.eval()
        z_eval, _ = t.inverse(x_eval, context)
        t.train()
        torch.testing.assert_close(t.inverse(x_eval, context)[0], z_eval)


def test_state_dict_round_trip(example, device):
    _, t, event_shape, c = example
    z, context = inputs(event_shape, c, (3,), device)
    buffer = io.BytesIO()
    torch.save(t.state_dict(), buffer)
    buffer.seek(0)
    clone = testing.perturb(copy.deepcopy(t), seed=123)
    clone.load_state_dict(torch.load(buffer, weights_only=True))
    for a, b in zip(t(z, context), clone(z, context)):
        torch.testing.assert_close(a, b)


def test_registry_names_are_unique_and_families():
    assert len(IDS) == len(set(IDS))
    families = {name.split("-")[0] for name in IDS}
    assert {"elementwise", "coupling", "autoregressive", "linear", "normalization"} <= families


# Users train in float32: the round trips and the ladj hold there too, to float32 tolerances.
# The ladj is compared with the float64 autograd Jacobian of the same (float32) parameters.
F32_ATOL = 2e-3


def test_round_trip_float32(example, device):
    _, t, event_shape, c = example
    z, context = inputs(event_shape, c, (3,), device)
    testing.check_round_trip(t.float(), z.float(), None if context is None else context.float(), atol=F32_ATOL)


def test_ladj_float32(example, device):
    _, t, event_shape, c = example
    z, context = inputs(event_shape, c, (3,), device)
    exact = copy.deepcopy(t.float()).double()
    context32 = None if context is None else context.float()
    x, ladj = t(z.float(), context32)
    _, ladj_inv = t.inverse(x, context32)
    torch.testing.assert_close(ladj.double(), exact(z.float().double(), context)[1], atol=F32_ATOL, rtol=F32_ATOL)
    torch.testing.assert_close(ladj_inv.double(), exact.inverse(x.double(), context)[1], atol=F32_ATOL,
                               rtol=F32_ATOL)


def test_a_flow_knows_whether_it_takes_a_context(example, device):
    """Every conditional transform of the registry makes a conditional flow; an unconditional
    flow refuses a context instead of ignoring it."""
    _, t, event_shape, c = example
    flow = Flow(StandardNormal(event_shape).double(), t).to(device)
    assert flow.context_features == c
    if not c:
        z, _ = inputs(event_shape, 0, (2,), device)
        x = t(z)[0]
        with pytest.raises(ValueError, match="takes no context"):
            flow.log_prob(x, torch.zeros(2, 3, dtype=torch.float64, device=device))
        with pytest.raises(ValueError, match="takes no context"):
            flow.sample((), torch.zeros(2, 3, dtype=torch.float64, device=device))


# Second derivatives are unavailable through these directions: backward with create_graph=True
# raises a clear error there instead of returning zeros (the fixed-point inverse of a residual
# block, the adjoint method).
FIRST_ORDER_ONLY = {("residual-lipswish", "inverse"), ("residual-elu", "inverse"), ("residual-conv", "inverse"),
                    ("residual-tanh-data-to-base", "forward"), ("continuous-adjoint-softplus", "inverse"),
                    ("continuous-adjoint-softplus", "forward")}


@pytest.mark.parametrize("direction", ["inverse", "forward"])
def test_first_and_second_derivatives(example, direction, device):
    """gradcheck and gradgradcheck in the input and along the parameters (hand-written autograd
    nodes must not drop second-order terms: gradient penalties, score matching, HVPs)."""
    name, t, event_shape, c = example
    z, context = inputs(event_shape, c, (1,), device)
    inverse = direction == "inverse"
    u = t(z, context)[0].detach() if inverse else z
    if (name.removesuffix("-context"), direction) in FIRST_ORDER_ONLY:
        with pytest.raises(RuntimeError, match="second derivatives are not available"):
            testing.check_derivatives(t, u, context, inverse)
    else:
        testing.check_derivatives(t, u, context, inverse)


@pytest.mark.parametrize("name, old", [("planar-tanh-context", "params"), ("sylvester-orthogonal", "params"),
                                       ("linear-householder", "params"), ("elementwise-affine-context", "parameters_")])
def test_checkpoints_from_before_the_conditioner_rename_load(name, old):
    """The per-layer parameters were the submodule ``params`` (``parameters_`` in Elementwise)
    in pushforward 0.1; state dicts with those keys still load."""
    t = dict((n, e) for n, e, *_ in EXAMPLES)[name]
    old_state = {k.replace("conditioner.", f"{old}."): v for k, v in t.state_dict().items()}
    assert any(k.startswith(f"{old}.") for k in old_state)
    fresh = copy.deepcopy(t)
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    fresh.load_state_dict(old_state)
    for (k, a), b in zip(t.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k

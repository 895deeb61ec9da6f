"""MADE and the masked autoregressive layer: autoregressive structure of their Jacobians.

Round trips, ladj and gradients of ``MaskedAutoregressive`` are in the registry contract
(tests/test_transforms.py); here the family-only checks: which outputs may depend on which
inputs, under any order, any depth, with and without context.
"""

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

import pushforward as pf
from pushforward.nn import MADE, SigmoidTanh, MaskedLinear
from pushforward.testing import perturb
from pushforward.transforms import AffineMap, MaskedAutoregressive, RQSpline


def orders(features: int) -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(features)
    out = [("natural", torch.arange(features)), ("reversed", torch.arange(features - 1, -1, -1))]
    out += [(f"random{i}", torch.randperm(features, generator=g)) for i in range(2)]
    return out


def made_cases():
    for features in (1, 2, 5):
        for name, order in orders(features):
            if features == 1 and name != "natural":
                continue
            for hidden in ((16,), (16, 12), (10, 16, 8)):
                for params in (1, 3):
                    for context_features in (0, 2):
                        yield pytest.param(features, order, hidden, params, context_features,
                                           id=f"D{features}-{name}-h{len(hidden)}-p{params}-c{context_features}")


def allowed(order: torch.Tensor) -> torch.Tensor:
    """allowed[i, j]: output i may depend on input j, i.e. order[j] < order[i]."""
    return order[None, :] < order[:, None]


def made_jacobians(made: MADE, features: int, context_features: int, n: int = 32):
    """Jacobians of MADE at n random points: d out / d x (n, D, P, D) and d out / d c (n, D, P, C).

    Examples do not interact, so the Jacobian of the batch sum gives every example's own.
    """
    g = torch.Generator().manual_seed(1)
    x = 2 * torch.randn(n, features, generator=g, dtype=torch.float64)
    c = torch.randn(n, context_features, generator=g, dtype=torch.float64)
    if not context_features:
        return jacobian(lambda x: made(x).sum(0), x).movedim(2, 0), None
    jx, jc = jacobian(lambda x, c: made(x, c).sum(0), (x, c))
    return jx.movedim(2, 0), jc.movedim(2, 0)


@pytest.mark.parametrize("features, order, hidden, params, context_features", made_cases())
def test_made_jacobian_is_strictly_triangular_under_the_order(features, order, hidden, params, context_features):
    mask = allowed(order)[:, None, :].expand(features, params, features)
    # ReLU: exact zeros from dead units must not hide anything; tanh: every weight path counts,
    # so the dependencies MADE is meant to create all show up
    for activation in (nn.ReLU, nn.Tanh):
        torch.manual_seed(0)
        made = perturb(MADE(features, params, context_features, hidden, order=order, activation=activation).double())
        jx, jc = made_jacobians(made, features, context_features)
        assert jx.shape == (32, features, params, features)
        nonzero = jx.ne(0).any(0)  # (D, P, D): depends on the input at some point
        forbidden = nonzero & ~mask
        assert not forbidden.any(), f"outputs depend on inputs they may not: {forbidden.nonzero().tolist()}"
        if activation is nn.Tanh:
            # each degree 1..D-1 has hidden units, so every allowed pair is connected
            missing = mask & ~nonzero
            assert not missing.any(), f"allowed dependencies never used: {missing.nonzero().tolist()}"
            if context_features:
                # the context reaches every output, also those of the first feature in the order
                reached = jc.ne(0).any(0).any(-1)
                assert reached.all(), f"outputs the context does not reach: {(~reached).nonzero().tolist()}"


@pytest.mark.parametrize("features", [1, 2, 5])
def test_made_starts_at_zero_output(features):
    made = MADE(features, 3, 2, (16, 16), order=torch.randperm(features)).double()
    out = made(torch.randn(4, features, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64))
    assert out.shape == (4, features, 3)
    assert torch.equal(out, torch.zeros_like(out))


def test_made_output_shape_with_batch_dims():
    made = perturb(MADE(4, 2, 3, (8,)).double())
    out = made(torch.randn(2, 5, 4, dtype=torch.float64), torch.randn(2, 5, 3, dtype=torch.float64))
    assert out.shape == (2, 5, 4, 2)


def test_made_order_given_as_list_equals_tensor():
    a = perturb(MADE(4, 2, 0, (8,), order=[2, 0, 3, 1]).double())
    b = MADE(4, 2, 0, (8,), order=torch.tensor([2, 0, 3, 1])).double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(a(x), b(x))
    assert a.order.tolist() == [2, 0, 3, 1]


@pytest.mark.parametrize("order", [[0, 0, 1], [1, 2, 3], [0, 1], [0, 1, 2, 3], [-1, 0, 1]],
                         ids=["repeated", "shifted", "short", "long", "negative"])
def test_made_invalid_order_raises(order):
    with pytest.raises(ValueError, match="permutation"):
        MADE(3, 2, order=order)


def test_made_needs_its_context():
    made = MADE(3, 2, context_features=2, hidden_features=(8,))
    with pytest.raises(ValueError, match="context"):
        made(torch.randn(4, 3))


# --- MaskedLinear and the packed storage: equal to the dense masked product ----------------

def staircases():
    degrees = torch.sort(1 + torch.arange(24) % 7).values
    features = torch.arange(1, 8)
    yield "hidden", degrees[:, None] >= degrees[None, :]
    yield "input-natural", degrees[:, None] >= features[None, :]
    yield "input-reversed", degrees[:, None] >= features.flip(0)[None, :]
    yield "output-reversed", features.flip(0).repeat_interleave(3)[:, None] > degrees[None, :]
    yield "no-staircase", torch.tensor([[1, 0, 1], [1, 1, 1], [0, 1, 0]]).bool()


def dense_reference(layer, mask, x):
    """y = x (W * M)^T + b with W and b from ``layer`` as leaves; returns y, W, b."""
    (weight, bias), = layer.dense()
    weight, bias = weight.detach().requires_grad_(), bias.detach().requires_grad_()
    return nn.functional.linear(x, weight * mask, bias), weight, bias


@pytest.mark.parametrize("name, mask", list(staircases()), ids=[n for n, _ in staircases()])
@pytest.mark.parametrize("blocks", [1, 2, 3, 5])
def test_masked_linear_equals_the_dense_masked_product(name, mask, blocks):
    layer = perturb(MaskedLinear(mask, blocks=blocks).double())  # the noise also hits masked-out entries
    x = torch.randn(2, 5, mask.shape[1], dtype=torch.float64, requires_grad=True)
    weights = torch.linspace(-1, 1, 2 * 5 * mask.shape[0], dtype=torch.float64).view(2, 5, -1)
    y = layer(x)
    (y * weights).sum().backward()
    x_grad, x.grad = x.grad.clone(), None
    reference, weight, bias = dense_reference(layer, mask, x)
    (reference * weights).sum().backward()
    assert weight.detach()[~mask].eq(0).all(), "masked-out entries are stored as zeros"
    torch.testing.assert_close(y, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x_grad, x.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.packed.grad, layer._layout.pack([weight.grad], [bias.grad]), rtol=1e-12, atol=1e-12)
    assert layer.packed.grad[layer.free == 0].eq(0).all(), "no gradient where the mask is zero"


def test_made_blocks_per_layer():
    made = perturb(MADE(64, 2, hidden_features=(512, 512), blocks=[2, 4, None]), scale=0.1)
    assert [len(layer.runs) for layer in made._layout.layers] == [2, 4, 2]
    reference = MADE(64, 2, hidden_features=(512, 512), blocks=1)
    state = {"order": made.order}
    for k, (weight, bias) in enumerate(made.dense()):
        state |= {f"network.{2 * k}.weight": weight.detach(), f"network.{2 * k}.bias": bias.detach()}
    reference.load_state_dict(state)
    x = torch.randn(3, 64)
    torch.testing.assert_close(made(x), reference(x))
    with pytest.raises(ValueError, match="blocks gives 2 layers"):
        MADE(64, 2, hidden_features=(512, 512), blocks=[2, 4])


def test_masked_linear_block_plans():
    def staircase(n):
        return torch.arange(n)[:, None] >= torch.arange(n)[None, :]

    assert MaskedLinear(torch.tensor([[1, 0, 1], [1, 1, 1]]), blocks=2).blocks == 1  # row 0: columns 0 and 2
    assert [MaskedLinear(staircase(n)).blocks for n in (64, 128, 256, 512, 1024)] == [1, 1, 2, 4, 4]
    wide = torch.arange(1024)[:, None] >= torch.arange(0, 1024, 16)[None, :]  # 64 inputs, 1024 outputs
    assert MaskedLinear(wide).blocks == 2
    narrow = torch.arange(0, 512, 4)[:, None] > torch.arange(512)[None, :]  # a MADE's output layer: 128 x 512
    assert MaskedLinear(narrow).blocks == 2 and MaskedLinear(narrow[:64]).blocks == 1
    layer = MaskedLinear(staircase(512), blocks=4)
    assert layer.packed.numel() == (128 * 128 + 128 * 256 + 128 * 384 + 128 * 512) + 512, "zero blocks not stored"
    with pytest.raises(ValueError, match="blocks"):
        MaskedLinear(staircase(4), blocks=0)


def test_masked_out_entries_stay_zero_through_training():
    mask = torch.sort(1 + torch.arange(24) % 7).values
    mask = mask[:, None] >= mask[None, :]
    layer = MaskedLinear(mask, blocks=3)
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.1, weight_decay=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        layer(torch.randn(8, 24)).square().sum().backward()
        optimizer.step()
    assert layer.packed.detach()[layer.free == 0].eq(0).all()
    assert layer.packed.detach()[layer.free == 1].ne(0).all()


def test_masked_linear_leaves_a_swapped_in_parameter_alone():
    """torch.func.functional_call with detached parameters (as the STL estimator of vi.py) must
    not write to them: their storage is the module's own."""
    mask = torch.tensor([[1, 0], [1, 1]]).bool()
    layer = MaskedLinear(mask)
    with torch.no_grad():
        layer.packed.add_(1.0)  # masked-out entry non-zero until the next forward pass
    swapped = layer.packed.detach()
    before, version = swapped.clone(), swapped._version
    x = torch.randn(3, 2)
    y = torch.func.functional_call(layer, {"packed": swapped}, (x,))
    assert swapped._version == version and torch.equal(swapped, before)
    torch.testing.assert_close(y, layer(x))


def test_made_saves_dense_masked_weights_whatever_its_blocks():
    """The saved format does not depend on the layout: one (weight, bias) per layer, dense and
    masked, loadable into a MADE whose layers are cut into other blocks."""
    made = perturb(MADE(64, 2, hidden_features=(512,), blocks=[2, 4]), scale=0.1)
    state = made.state_dict()
    assert sorted(state) == ["network.0.bias", "network.0.weight", "network.2.bias", "network.2.weight", "order"]
    assert state["network.0.weight"].shape == (512, 64) and state["network.2.weight"].shape == (128, 512)
    other = MADE(64, 2, hidden_features=(512,), blocks=1)
    other.load_state_dict(state)
    x = torch.randn(3, 64)
    torch.testing.assert_close(other(x), made(x))


def test_made_loads_a_file_of_packed_layout_version_1():
    """A state dict holding the ``packed`` vector, as pushforward 0.1 saved it (tests/data:
    a MADE whose output layer the version-1 rule cut into 2 blocks)."""
    old = torch.load(Path(__file__).parent / "data" / "made_packed_v1.pt", weights_only=True)
    assert "packed" in old["state_dict"]
    made = MADE(2, 64, hidden_features=(256,), activation=nn.Tanh)
    made.load_state_dict(old["state_dict"])
    torch.testing.assert_close(made(old["x"]), old["y"], rtol=0, atol=1e-6)
    assert "packed" not in made.state_dict()


def test_made_second_derivatives_are_exact():
    """gradgradcheck over the input and the packed weights (the issue's MAF example)."""
    made = perturb(MADE(3, 2, context_features=2, hidden_features=(8, 8), activation=nn.Tanh).double())
    x, c = torch.randn(4, 3, dtype=torch.float64, requires_grad=True), torch.randn(4, 2, dtype=torch.float64)
    packed = made.packed.detach().clone().requires_grad_()
    run = lambda x, p: torch.func.functional_call(made, {"packed": p}, (x, c))
    torch.autograd.gradcheck(run, (x, packed), fast_mode=True)
    torch.autograd.gradgradcheck(run, (x, packed), fast_mode=True)
    maf = pf.MAF(3, transforms=1, hidden_features=(8,)).double()
    torch.autograd.gradgradcheck(lambda v: maf.log_prob(v), (torch.randn(4, 3, dtype=torch.float64, requires_grad=True),))


def test_made_loads_a_state_dict_from_before_the_packed_storage():
    """Checkpoints with one (weight, bias, mask) per layer, as the MADE of nn.Linear layers wrote."""
    made = perturb(MADE(5, 2, context_features=1, hidden_features=(16, 12), order=[3, 0, 4, 1, 2]))
    old = {"order": made.order}
    for k, (weight, bias) in enumerate(made.dense()):
        mask = (weight != 0).float()
        old |= {f"network.{2 * k}.weight": weight.detach() + 5 * (1 - mask),  # junk where masked
                f"network.{2 * k}.bias": bias.detach(), f"network.{2 * k}.mask": mask}
    fresh = MADE(5, 2, context_features=1, hidden_features=(16, 12), order=[3, 0, 4, 1, 2])
    fresh.load_state_dict(old)
    x, c = torch.randn(4, 5), torch.randn(4, 1)
    torch.testing.assert_close(fresh(x, c), made(x, c))


# --- MaskedAutoregressive ------------------------------------------------------------------

def layer_cases():
    for features in (1, 2, 5):
        for name, order in orders(features):
            if features == 1 and name != "natural":
                continue
            for map_name, build in (("affine", AffineMap), ("spline", lambda: RQSpline(bins=4, bound=2.0))):
                for context_features in (0, 2):
                    yield pytest.param(features, order, build, context_features,
                                       id=f"D{features}-{name}-{map_name}-c{context_features}")


def build_layer(features, order, build, context_features):
    layer = MaskedAutoregressive(features, build(), context_features, (16, 16), order=order)
    return perturb(layer.double()).eval()


@pytest.mark.parametrize("features, order, build, context_features", layer_cases())
def test_masked_autoregressive_forward_inverts_inverse_exactly(features, order, build, context_features):
    layer = build_layer(features, order, build, context_features)
    g = torch.Generator().manual_seed(2)
    x = 1.5 * torch.randn(7, features, generator=g, dtype=torch.float64)
    c = torch.randn(7, context_features, generator=g, dtype=torch.float64) if context_features else None
    z, ladj_inv = layer.inverse(x, c)
    x2, ladj = layer(z, c)
    torch.testing.assert_close(x2, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(ladj, -ladj_inv, atol=1e-12, rtol=0)
    # and the map is not the identity (else the test above proves nothing)
    assert (z - x).abs().max() > 1e-2


@pytest.mark.parametrize("features, order, build, context_features", layer_cases())
def test_masked_autoregressive_jacobian_is_triangular_under_the_order(features, order, build, context_features):
    layer = build_layer(features, order, build, context_features)
    g = torch.Generator().manual_seed(3)
    structure = allowed(order) | torch.eye(features, dtype=torch.bool)
    u = 1.5 * torch.randn(16, features, generator=g, dtype=torch.float64)
    c = torch.randn(16, context_features, generator=g, dtype=torch.float64) if context_features else None
    for direction in (layer.inverse, layer.forward):
        # examples do not interact: the Jacobian of the batch sum holds every example's own
        jac = jacobian(lambda v: direction(v, c)[0].sum(0), u).movedim(1, 0)  # (n, D out, D in)
        assert (jac.diagonal(dim1=1, dim2=2) > 0).all(), "the element-wise maps are increasing"
        nonzero = jac.ne(0).any(0)
        forbidden = nonzero & ~structure
        assert not forbidden.any(), f"{direction.__name__}: forbidden dependencies {forbidden.nonzero().tolist()}"
        if features > 1:
            assert (nonzero & allowed(order)).any(), "no dependency between features at all"


def test_masked_autoregressive_forward_needs_all_passes():
    """Fewer than D passes leave the last feature in the order wrong: the D passes are needed,
    so the exact round trip above checks the pass count."""
    features = 5
    layer = build_layer(features, torch.arange(features), AffineMap, 0)
    x = torch.randn(3, features, dtype=torch.float64)
    z, _ = layer.inverse(x)
    guess = z
    for _ in range(features - 1):
        guess = layer.map.forward(z, layer.made(guess))[0]
    assert (guess - x).abs().max() > 1e-10
    guess = layer.map.forward(z, layer.made(guess))[0]
    torch.testing.assert_close(guess, x, atol=1e-12, rtol=0)


@pytest.mark.parametrize("activation", [nn.Tanh, SigmoidTanh], ids=["tanh", "sigmoid-tanh"])
def test_tanh_inside_made_matches_torch_tanh(activation):
    """The MADE computes tanh in place as tanh_, or as 2 sigmoid(2y) - 1 when asked for
    (SigmoidTanh): within 2e-7 in float32 either way, in the density's pass and in sampling."""
    from pushforward.nn import masked

    y = torch.linspace(-20, 20, 200_001)
    h, _ = masked._activate(activation(), y.clone())
    torch.testing.assert_close(h, torch.tanh(y), atol=2e-7, rtol=0)
    torch.testing.assert_close(activation()(y), torch.tanh(y), atol=2e-7, rtol=0)
    made = perturb(MADE(4, 2, hidden_features=(16,), activation=activation))  # the last layer starts at zero
    x = torch.randn(8, 4)
    (weight0, bias0), (weight1, bias1) = made.dense()
    reference = nn.functional.linear(torch.tanh(nn.functional.linear(x, weight0, bias0)), weight1, bias1)
    torch.testing.assert_close(made(x).flatten(-2), reference, atol=1e-6, rtol=1e-5)


def test_the_tanh_formula_is_the_users_choice_not_a_timing(monkeypatch):
    """Same seed, same numbers on any host: building and running a tanh MADE consults no clock,
    and sampling inverts the density's pass with the same formula (MADE.generate)."""
    import time

    import pushforward as pf

    def no_clock():
        raise AssertionError("a MADE consulted the clock")

    monkeypatch.setattr(time, "perf_counter", no_clock)
    for activation in (nn.Tanh, SigmoidTanh):
        torch.manual_seed(0)
        flow = perturb(pf.MAF(3, transforms=1, hidden_features=(8,), activation=activation)).eval()
        x = flow.sample((5,))
        torch.testing.assert_close(flow.transform(flow.transform.inverse(x)[0])[0], x, atol=1e-5, rtol=1e-5)


def test_cached_operand_views_follow_the_parameter():
    """The views of the flat parameter that the products use are remade when its storage
    changes (a dtype conversion), and a copy of the MADE computes with its own parameter."""
    import copy

    made = perturb(MADE(5, 2, hidden_features=(32, 32), activation=nn.Tanh))
    x = torch.randn(4, 5)

    def reference(m, inputs):
        h = inputs
        *hidden, (weight, bias) = m.dense()
        for w, b in hidden:
            h = torch.tanh(nn.functional.linear(h, w, b))
        return nn.functional.linear(h, weight, bias).unflatten(-1, (5, 2))

    made(x)
    made.double()
    torch.testing.assert_close(made(x.double()), reference(made, x.double()))
    twin = copy.deepcopy(made)
    with torch.no_grad():
        twin.packed.mul_(2)
    torch.testing.assert_close(made(x.double()), reference(made, x.double()))
    torch.testing.assert_close(twin(x.double()), reference(twin, x.double()))
    assert not torch.allclose(twin(x.double()), made(x.double()))


def test_a_trained_made_flow_deep_copies():
    """sbi deep-copies its best estimator: the cached views of the packed weights, made under
    no_grad and then stepped by the optimiser, must not travel with the copy."""
    import copy

    import pushforward as pf

    flow = pf.MAF(2, 3, transforms=1, hidden_features=(8,))
    x, c = torch.randn(4, 2), torch.randn(4, 3)
    with torch.no_grad():
        flow.log_prob(x, c)
    optimiser = torch.optim.Adam(flow.parameters())
    (-flow.log_prob(x, c).mean()).backward()
    optimiser.step()
    with torch.no_grad():
        flow.log_prob(x, c)
    clone = copy.deepcopy(flow)
    torch.testing.assert_close(clone.log_prob(x, c), flow.log_prob(x, c))

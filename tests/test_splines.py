"""Rational-quadratic splines: accuracy, knots, extreme parameters, and flows far outside the bound.

The registry contract (tests/test_transforms.py) already checks round trips, ladj against
autograd, shapes and gradients at random points, and the map contract
(tests/test_elementwise_maps.py) checks the spline, with each kind of raw parameters of the
registry (degenerate bins, extreme knot derivatives), for finite values, ladj and gradients at
and beyond the bound, exact identity tails, monotonicity, continuity at the bound and identity
at zero parameters. This file checks what is the spline's own: accuracy of the round trip
against its conditioning (float32 included), the knots, the closed form of one bin, and flows
fed data far outside the bound.
"""

import pytest
import torch

import pushforward as pf
from pushforward import testing
from pushforward.testing import perturb
from pushforward.transforms import (
    Elementwise,
    MaskedAutoregressive,
    RQSpline,
    rational_quadratic_spline,
    with_identity_tails,
)

RQ = testing.elementwise_map_examples()["rq-spline"]
BINS, BOUND = testing.MAP_BINS, testing.MAP_BOUND
PARAMS = 3 * BINS - 1
DTYPES = [torch.float32, torch.float64]
DTYPE_IDS = ["float32", "float64"]
# the raw parameters of the map contract: normal draws and bins or knot derivatives of extreme shape
KINDS = list(RQ.kinds)


def spline_params(kind: str) -> torch.Tensor:
    """Raw parameters (3 bins - 1,) in float64: widths, heights, interior derivatives."""
    return RQ.parameters(RQSpline(BINS, BOUND), kind, torch.float64)


def knots(spline: RQSpline, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return spline._spline(h)


def edge_points(dtype: torch.dtype) -> torch.Tensor:
    """-bound exactly, one ulp inside and outside it, then the same for +bound."""
    return testing.edge_points(torch.tensor([-BOUND, BOUND], dtype=dtype))


def apply(spline: RQSpline, x: torch.Tensor, h: torch.Tensor, inverse: bool):
    """Spline (or its inverse) at every point, with per-point parameters (*x.shape, params)."""
    hh = h.to(x.dtype).expand(*x.shape, PARAMS)
    return (spline.inverse if inverse else spline.forward)(x, hh)


def test_with_identity_tails_never_evaluates_the_spline_outside():
    seen = []

    def spline(u):
        seen.append(u.detach().clone())
        # NaN for |u| > 2.12: must leak neither into the values nor into the gradients
        r = 4.5 - u.square()
        return u + 0.1 * torch.log(r), torch.log(1 - 0.2 * u / r)

    x = torch.tensor([-1e30, -3.0, -2.0, 0.5, 2.0, 3.0, 1e30], dtype=torch.float64, requires_grad=True)
    y, ladj = with_identity_tails(x, 2.0, spline)
    assert seen and (seen[0].abs() <= 2.0).all()
    outside = x.detach().abs() > 2.0
    assert torch.equal(y[outside], x.detach()[outside])
    assert torch.equal(ladj[outside], torch.zeros_like(ladj[outside]))
    torch.testing.assert_close(y[3], 0.5 + 0.1 * torch.log(torch.tensor(4.25, dtype=torch.float64)))
    (gx,) = torch.autograd.grad(y[~outside].sum() + y[outside].sum(), x)
    assert torch.isfinite(gx).all()
    assert torch.equal(gx[outside], torch.ones_like(gx[outside]))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_zero_parameters_give_unit_derivatives_and_even_knots(dtype):
    """(That they give the identity is part of the map contract.)"""
    spline = RQSpline(BINS, BOUND)
    knots_x, knots_y, d = knots(spline, torch.zeros(PARAMS, dtype=dtype))
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(d, torch.ones_like(d), atol=tol, rtol=0)
    for k in (knots_x, knots_y):
        torch.testing.assert_close(k, torch.linspace(-BOUND, BOUND, BINS + 1, dtype=dtype), atol=tol, rtol=0)


def cases(*, directions=(False, True), kinds=KINDS, dtypes=DTYPE_IDS):
    """(dtype, kind, inverse) parameters."""
    for dtype, dtype_id in zip(DTYPES, DTYPE_IDS):
        if dtype_id not in dtypes:
            continue
        for kind in kinds:
            for inverse in directions:
                direction = "inverse" if inverse else "forward"
                yield pytest.param(dtype, kind, inverse, id=f"{dtype_id}-{kind}-{direction}")


def test_float32_inverse_is_accurate_where_it_is_well_conditioned():
    """With moderate knot derivatives (see the steep case below)."""
    check_float32_inverse_against_float64(raw_derivative=3.0)


@pytest.mark.parametrize("raw_derivative", [50.0, 1e3])
def test_float32_inverse_is_monotone_and_accurate_with_steep_knots(raw_derivative):
    check_float32_inverse_against_float64(raw_derivative)


def check_float32_inverse_against_float64(raw_derivative: float) -> None:
    """The float32 inverse is monotone and agrees with the float64 one to within its conditioning."""
    spline = RQSpline(BINS, BOUND)
    g = torch.Generator().manual_seed(0)
    h = torch.cat([torch.randn(2 * BINS, generator=g, dtype=torch.float64),
                   torch.full((BINS - 1,), raw_derivative, dtype=torch.float64)])
    x = torch.linspace(-BOUND, BOUND, 4001, dtype=torch.float32)
    z32, ladj32 = apply(spline, x, h, inverse=True)
    z64, ladj64 = apply(spline, x.double(), h, inverse=True)
    assert (z32.diff() >= 0).all(), f"float32 inverse decreases by {z32.diff().min().item():.3g}"
    # |dz/dx| times the rounding of x and of the knots, with a margin
    allowed = 16 * torch.finfo(torch.float32).eps * BOUND * (ladj64.exp() + 1)
    excess = ((z32.double() - z64).abs() / allowed).max().item()
    assert excess <= 1, f"float32 inverse off by {excess:.3g} times its conditioning"
    torch.testing.assert_close(ladj32.double(), ladj64, atol=1e-2, rtol=0)


@pytest.mark.parametrize("dtype, raw_derivative", [(torch.float32, 1e8), (torch.float32, 1e12),
                                                   (torch.float64, 1e18), (torch.float64, 1e30)],
                         ids=["float32-1e8", "float32-1e12", "float64-1e18", "float64-1e30"])
def test_inverse_gradients_are_finite_for_huge_derivatives(dtype, raw_derivative):
    # A conditioner fed data far beyond the bound (1e30 in float64) predicts parameters of
    # this size; see test_nsf_far_outside_the_bound.
    spline = RQSpline(BINS, BOUND)
    g = torch.Generator().manual_seed(0)
    h = torch.cat([torch.randn(2 * BINS, generator=g, dtype=torch.float64),
                   torch.full((BINS - 1,), raw_derivative, dtype=torch.float64)]).to(dtype)
    x = torch.linspace(-BOUND, BOUND, 401, dtype=dtype).requires_grad_()
    hh = h.expand(*x.shape, PARAMS).clone().requires_grad_()
    z, ladj = spline.inverse(x, hh)
    gx, gh = torch.autograd.grad(z.sum() + ladj.sum(), (x, hh))
    for name, t in [("z", z), ("ladj", ladj), ("dx", gx), ("dh", gh)]:
        assert torch.isfinite(t).all(), f"{name} is not finite"


def round_trip_cases():
    for dtype, dtype_id in zip(DTYPES, DTYPE_IDS):
        for kind in KINDS:
            yield pytest.param(dtype, kind, id=f"{dtype_id}-{kind}")


@pytest.mark.parametrize("dtype, kind", round_trip_cases())
def test_round_trip_is_accurate_to_its_conditioning(dtype, kind):
    """inverse(forward(z)) within a few ulps times |dz/dx|; forward(inverse(x)) within a few
    thousand ulps (the forward formula's own rounding in bins of extreme shape)."""
    spline = RQSpline(BINS, BOUND)
    h = spline_params(kind).to(dtype)
    knots_x, knots_y, _ = knots(spline, h)
    ulp = torch.finfo(dtype).eps * BOUND
    grid = torch.linspace(-BOUND, BOUND, 1001, dtype=dtype)
    z = torch.cat([grid, knots_x, edge_points(dtype)[[0, 1, 3, 4]]])
    x, ladj = apply(spline, z, h, inverse=False)
    z2, _ = apply(spline, x, h, inverse=True)
    excess = ((z2 - z).abs() / (8 * ulp * (1 + (-ladj).exp()))).max().item()
    assert excess <= 1, f"inverse(forward(z)) off by {excess:.3g} times its conditioning"
    x = torch.cat([grid, knots_y])
    x2, _ = apply(spline, apply(spline, x, h, inverse=True)[0], h, inverse=False)
    assert (x2 - x).abs().max() <= 2048 * ulp, (x2 - x).abs().max()


@pytest.mark.parametrize("dtype, kind", [(torch.float64, k) for k in ["random", "gentle", "zero", "one-wide-bin",
                                                                      "flat-knots"]]
                         + [(torch.float32, k) for k in ["gentle", "zero"]],
                         ids=lambda v: str(v).replace("torch.", ""))
def test_round_trip_including_knots(dtype, kind):
    """Absolute accuracy: float64 tight, float32 to 1e-4, with the ladj of the two directions opposite."""
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    spline = RQSpline(BINS, BOUND)
    h = spline_params(kind).to(dtype)
    knots_x, knots_y, _ = knots(spline, h)
    grid = torch.linspace(-BOUND, BOUND, 1001, dtype=dtype)
    z = torch.cat([grid, knots_x, edge_points(dtype)[[0, 1, 3, 4]]])
    x, ladj = apply(spline, z, h, inverse=False)
    z2, ladj2 = apply(spline, x, h, inverse=True)
    torch.testing.assert_close(z2, z, atol=tol, rtol=0)
    torch.testing.assert_close(ladj2, -ladj, atol=tol, rtol=0)
    x = torch.cat([grid, knots_y])
    z, _ = apply(spline, x, h, inverse=True)
    torch.testing.assert_close(apply(spline, z, h, inverse=False)[0], x, atol=tol, rtol=0)


@pytest.mark.parametrize("dtype, kind, inverse", cases())
def test_knots_are_interpolated_and_pinned_to_the_bound(dtype, kind, inverse):
    spline = RQSpline(BINS, BOUND)
    h = spline_params(kind).to(dtype)
    knots_x, knots_y, d = knots(spline, h)
    for k in (knots_x, knots_y):
        assert k[0].item() == -BOUND and k[-1].item() == BOUND
        assert (k.diff() >= 2 * BOUND * 1e-3 * (1 - 1e-4)).all()
    assert d[0].item() == 1.0 and d[-1].item() == 1.0 and (d >= 1e-3).all()
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    # the knots of the batch the spline is evaluated on: a knot of another call may lie an ulp
    # away (elementwise kernels round a row alone and rows in bulk differently), and a steep
    # bin multiplies that ulp by its derivative
    batch = [t.diagonal() for t in knots(spline, h.expand(BINS + 1, PARAMS))]  # knot j of row j
    source, target = (batch[1], batch[0]) if inverse else batch[:2]
    torch.testing.assert_close(apply(spline, source, h, inverse)[0], target, atol=tol, rtol=0)


@pytest.mark.parametrize("dtype, kind, inverse", cases(
    dtypes=("float64",), kinds=["random", "one-wide-bin", "alternating-bins", "steep-knots", "mixed-knots"]))
def test_ladj_is_the_log_derivative_at_knots_and_bound(dtype, kind, inverse):
    spline = RQSpline(BINS, BOUND)
    h = spline_params(kind)
    knots_x, knots_y, _ = knots(spline, h)
    x = torch.cat([knots_y if inverse else knots_x, edge_points(torch.float64),
                   torch.linspace(-BOUND, BOUND, 41, dtype=torch.float64)]).requires_grad_()
    y, ladj = apply(spline, x, h, inverse)
    (dydx,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(ladj, dydx.log(), atol=1e-7, rtol=1e-7)


def test_rational_quadratic_spline_matches_the_closed_form_in_one_bin():
    # One bin on [0, 1] x [0, 1] with d_0 = d_1 = 1 and s = 1 is the identity; with
    # d_0 = 2, d_1 = 1/2, y(1/2) = (1/4 + 2/4) / (1 + (2.5 - 2) / 4) = 0.75 / 1.125
    kx = torch.tensor([0.0, 1.0], dtype=torch.float64)
    d = torch.tensor([2.0, 0.5], dtype=torch.float64)
    x = torch.tensor([0.5], dtype=torch.float64)
    y, ladj = rational_quadratic_spline(x, kx.expand(1, 2), kx.expand(1, 2), d.expand(1, 2))
    torch.testing.assert_close(y, torch.tensor([0.75 / 1.125], dtype=torch.float64))
    # dy/dx = [0.5 * 0.25 + 2 * 0.25 + 2 * 0.25] / 1.125^2
    torch.testing.assert_close(ladj, torch.log(torch.tensor([1.125 / 1.125**2], dtype=torch.float64)))
    x2, ladj2 = rational_quadratic_spline(y, kx.expand(1, 2), kx.expand(1, 2), d.expand(1, 2), inverse=True)
    torch.testing.assert_close(x2, x)
    torch.testing.assert_close(ladj2, -ladj)


def test_rqspline_rejects_impossible_floors():
    with pytest.raises(ValueError):
        RQSpline(bins=10, min_width=0.1)
    with pytest.raises(ValueError):
        RQSpline(bins=0)
    with pytest.raises(ValueError):
        RQSpline(min_derivative=1.0)


# --- flows fed data far beyond the bound ---------------------------------------------------

def far_rows(dtype: torch.dtype, far: float) -> torch.Tensor:
    """Rows that mix coordinates inside the bound with coordinates far outside it."""
    rows = [[far, 0.5, -0.3], [0.5, far, 1.2], [-far, -0.3, 0.1], [0.2, -far, -1.9], [1.0, 0.4, far],
            [-0.7, 1.9, -far], [far, far, far], [-far, far, -far], [0.1, -0.2, 0.3]]
    return torch.tensor(rows, dtype=dtype)


def check_flow_finite(flow: pf.Flow, x: torch.Tensor, context: torch.Tensor | None = None) -> None:
    x = x.clone().requires_grad_()
    lp = flow.log_prob(x, context)
    assert torch.isfinite(lp).all(), lp
    names = ["x"] + [n for n, _ in flow.named_parameters()]
    grads = torch.autograd.grad(lp.sum(), [x, *flow.parameters()], allow_unused=True)
    bad = [n for n, g in zip(names, grads) if g is not None and not torch.isfinite(g).all()]
    assert not bad, f"non-finite gradients: {bad}"


FAR_CASES = [(torch.float32, 1e3), (torch.float64, 1e3), (torch.float64, 1e30)]
FAR_IDS = ["float32-1e3", "float64-1e3", "float64-1e30"]


@pytest.mark.parametrize("dtype, far", FAR_CASES, ids=FAR_IDS)
@pytest.mark.parametrize("context_features", [0, 2])
def test_elementwise_spline_flow_far_outside_the_bound(dtype, far, context_features):
    transform = Elementwise(RQSpline(BINS, BOUND), 3, context_features)
    flow = perturb(pf.Flow(pf.StandardNormal(3), transform).to(dtype), scale=3.0).eval()
    x = far_rows(dtype, far)
    context = torch.randn(len(x), context_features, dtype=dtype) if context_features else None
    check_flow_finite(flow, x, context)


def nsf_far_cases():
    for autoregressive in (False, True):
        for (dtype, far), i in zip(FAR_CASES, FAR_IDS):
            # 1e30 makes the conditioner predict knot derivatives ~1e30.
            yield pytest.param(autoregressive, dtype, far,
                               id=f"{'autoregressive' if autoregressive else 'coupling'}-{i}")


@pytest.mark.parametrize("autoregressive, dtype, far", nsf_far_cases())
def test_nsf_far_outside_the_bound(autoregressive, dtype, far):
    flow = pf.NSF(3, transforms=2, hidden_features=(16,), bins=BINS, bound=BOUND, autoregressive=autoregressive)
    flow = perturb(flow.to(dtype)).eval()
    check_flow_finite(flow, far_rows(dtype, far))


def test_autoregressive_spline_layer_far_outside_the_bound_in_both_directions():
    layer = perturb(MaskedAutoregressive(3, RQSpline(BINS, BOUND), 0, (16,)).double()).eval()
    u = far_rows(torch.float64, 1e3).requires_grad_()
    for direction in (layer.forward, layer.inverse):
        out, ladj = direction(u)
        assert torch.isfinite(out).all() and torch.isfinite(ladj).all()
        (g,) = torch.autograd.grad(out.sum() + ladj.sum(), u)
        assert torch.isfinite(g).all()
    # the far coordinates pass through the identity tails unchanged
    far = u.detach().abs() > BOUND
    x, _ = layer(u.detach())
    assert torch.equal(x[far], u.detach()[far])


def test_empty_batch():
    spline = RQSpline(BINS, BOUND)
    h = torch.zeros(0, 4, PARAMS)
    for method in (spline.forward, spline.inverse):
        y, ladj = method(torch.zeros(0, 4), h)
        assert y.shape == ladj.shape == (0, 4)


def test_bin_coordinates_clamp_without_cutting_the_gradient():
    """Rounding can put a bin coordinate just past a knot; the clamp keeps its derivative."""
    from pushforward.transforms.splines import _unit

    t = torch.tensor([-1e-7, 0.5, 1 + 1e-7], dtype=torch.float64, requires_grad=True)
    u = _unit(t)
    u.sum().backward()
    assert u.tolist() == [0.0, 0.5, 1.0]
    assert t.grad.tolist() == [1.0, 1.0, 1.0]

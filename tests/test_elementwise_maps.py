"""The map contract: every element-wise map of the registry (`testing.elementwise_map_examples`)
through the shared map checks of pushforward.testing, in float32 and float64, in both directions,
with each kind of raw parameters the registry names (scaled normal draws, and for the
rational-quadratic spline bins and knot derivatives of an extreme shape).

A failure names the map, the property, the dtype, the parameters and the direction. What only
one family has (closed forms, knots, Steffen slopes, numerical tolerances) stays in its own file.
"""

import pytest
import torch

import pushforward as pf
from pushforward import testing
from pushforward.transforms import ElementwiseMap
from pushforward.transforms.numerical import default_tolerance

EXAMPLES = testing.elementwise_map_examples()
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def cases(keep=lambda example, kind: True, kinds=True):
    """(name, dtype, kind, inverse) for every map the filter keeps (kind None when not ``kinds``)."""
    for name, example in EXAMPLES.items():
        for kind in example.kinds if kinds else (None,):
            if not keep(example, kind):
                continue
            for dtype_id, dtype in DTYPES.items():
                for inverse in (False, True):
                    parts = [name, dtype_id] + ([kind] if kinds else []) + ["inverse" if inverse else "forward"]
                    yield pytest.param(name, dtype, kind, inverse, id="-".join(parts))


def prepare(name, dtype, kind, inverse):
    example = EXAMPLES[name]
    m = example.make(dtype)
    h = example.parameters(m, kind, dtype)
    return example, m, h, example.knot_points(m, h, inverse)


@pytest.mark.parametrize("name, dtype, kind, inverse", cases())
def test_finite_at_and_beyond_the_bound(name, dtype, kind, inverse):
    example, m, h, knots = prepare(name, dtype, kind, inverse)
    # a bisection without tails brackets its root in ±1e8, whose image may not reach 1e3
    bisection = example.bound is None and example.numerical == ("inverse" if inverse else "forward")
    testing.check_map_finite(m, h, example.bound, inverse, knots, far=() if bisection else (1e3, 1e30))


@pytest.mark.parametrize("name, dtype, kind, inverse", cases())
def test_monotone(name, dtype, kind, inverse):
    example, m, h, knots = prepare(name, dtype, kind, inverse)
    numerical = example.numerical == ("inverse" if inverse else "forward")
    # a bisection over the whole line is slow: fewer points there
    grid = 201 if numerical and example.bound is None else 4001
    testing.check_monotone(m, h, example.bound, inverse, knots, default_tolerance(dtype) if numerical else 0.0, grid=grid)


@pytest.mark.parametrize("name, dtype, kind, inverse", cases(lambda e, k: e.tails == "identity"))
def test_identity_tails(name, dtype, kind, inverse):
    example, m, h, _ = prepare(name, dtype, kind, inverse)
    testing.check_identity_tails(m, h, example.bound, inverse)


@pytest.mark.parametrize("name, dtype, kind, inverse", cases(lambda e, k: e.tails == "linear"))
def test_linear_tails(name, dtype, kind, inverse):
    example, m, h, _ = prepare(name, dtype, kind, inverse)
    testing.check_linear_tails(m, h, example.bound, inverse)


@pytest.mark.parametrize("name, dtype, kind, inverse", cases(lambda e, k: e.bound is not None))
def test_continuous_at_the_bound(name, dtype, kind, inverse):
    example, m, h, _ = prepare(name, dtype, kind, inverse)
    testing.check_continuous_at_bound(m, h, example.bound, inverse)


@pytest.mark.parametrize("name, dtype, kind, inverse", cases(lambda e, k: e.smooth_at_bound and k not in e.rough_at_bound))
def test_slope_continuous_at_the_bound(name, dtype, kind, inverse):
    example, m, h, _ = prepare(name, dtype, kind, inverse)
    testing.check_slope_continuous_at_bound(m, h, example.bound, inverse)


@pytest.mark.parametrize("name, dtype, kind, inverse", cases(lambda e, k: e.identity_at_zero, kinds=False))
def test_zero_parameters_give_the_identity(name, dtype, kind, inverse):
    example = EXAMPLES[name]
    testing.check_identity_at_zero(example.make(dtype), dtype, example.bound, inverse)


def test_the_registry_holds_every_map_of_the_library():
    """A new element-wise map joins the contract with one registry entry; InverseMap wraps one."""
    library = {c for c in vars(pf.transforms).values() if isinstance(c, type) and issubclass(c, ElementwiseMap)}
    registered = {type(e.make(torch.float64)) for e in EXAMPLES.values()}
    assert library - {ElementwiseMap, pf.transforms.InverseMap} == registered


class BrokenMap(ElementwiseMap):
    """x = z + 0.1 inside [-2, 2] with h = 0 (so neither continuous at the bound nor the identity
    at zero), x = -z beyond 3 (not monotone), NaN beyond 1e20 and the identity elsewhere."""

    params = 1

    def forward(self, z, h):
        x = torch.where(z.abs() <= 2, z + 0.1 + h[..., 0], z)
        x = torch.where(z.abs() > 3, -z, x)
        x = torch.where(z.abs() > 1e20, torch.nan, x)
        ladj = torch.where((z.abs() <= 2) & (z > 0), 0.5, 0.0).to(z.dtype)
        return x, ladj

    inverse = forward


@pytest.mark.parametrize("check", [
    lambda m, h: testing.check_map_finite(m, h, 2.0),
    lambda m, h: testing.check_identity_tails(m, h, 2.0),
    lambda m, h: testing.check_linear_tails(m, h, 2.0),
    lambda m, h: testing.check_identity_at_zero(m, h.dtype, 2.0),
    lambda m, h: testing.check_monotone(m, h, 2.0),
    lambda m, h: testing.check_continuous_at_bound(m, h, 2.0),
    lambda m, h: testing.check_slope_continuous_at_bound(m, h, 2.0),
], ids=["finite", "identity-tails", "linear-tails", "identity-at-zero", "monotone", "continuous", "slope"])
def test_the_checks_catch_a_broken_map(check):
    with pytest.raises(AssertionError):
        check(BrokenMap(), torch.zeros(1, dtype=torch.float64))

"""The peaks space (deepdram.spaces.peaks.space) against independent truth.

Truth sources: MATLAB's `peaks` formula written out again here and evaluated by hand at a few
points; scipy.optimize.minimize for the global minimum (so the constant is found, not assumed);
central finite differences for the analytic gradient; the moments of the uniform distribution
and a Kolmogorov-Smirnov test for sampling; the box rule for validity.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from deepdram.errors import InputError
from deepdram.spaces import registry
from deepdram.spaces.peaks import space as peaks_module
from deepdram.spaces.peaks.space import PeaksSpace

SPACE = PeaksSpace()


def matlab_peaks(x: float, y: float) -> float:
    """MATLAB's peaks, scalar: 3(1-x)^2 e^{-x^2-(y+1)^2} - 10(x/5 - x^3 - y^5) e^{-x^2-y^2} - e^{-(x+1)^2-y^2}/3."""
    return (3.0 * (1.0 - x) ** 2 * math.exp(-(x**2) - (y + 1.0) ** 2)
            - 10.0 * (x / 5.0 - x**3 - y**5) * math.exp(-(x**2) - y**2)
            - math.exp(-((x + 1.0) ** 2) - y**2) / 3.0)


def z_of(points) -> np.ndarray:
    return SPACE.evaluate(np.asarray(points, float)).properties[:, 0]


# --- The oracle --------------------------------------------------------------------------------------


def test_columns_and_kind():
    assert SPACE.name == "peaks"
    assert SPACE.variables == ("x", "y") and SPACE.properties == ("z",) and SPACE.conditions == ()
    assert not SPACE.binary and SPACE.has_gradient


@pytest.mark.parametrize(
    "x, y, expected",
    [
        (0.0, 0.0, 8.0 / 3.0 * math.exp(-1.0)),  # 3 e^-1 - 0 - e^-1 / 3
        (1.0, 0.0, 8.0 * math.exp(-1.0) - math.exp(-4.0) / 3.0),  # 0 - 10 (0.2 - 1) e^-1 - e^-4 / 3
        (0.0, -1.0, 3.0 - 10.0 * math.exp(-1.0) - math.exp(-2.0) / 3.0),  # 3 - 10 (0 - 0 + 1) e^-1 - e^-2 / 3
        (-1.0, 0.0, 12.0 * math.exp(-2.0) - 8.0 * math.exp(-1.0) - 1.0 / 3.0),  # 3*4 e^-2 - 10 (-0.2 + 1) e^-1 - 1/3
    ],
)
def test_oracle_matches_hand_computed_values(x, y, expected):
    assert matlab_peaks(x, y) == pytest.approx(expected, rel=1e-14)
    assert z_of([[x, y]])[0] == pytest.approx(expected, rel=1e-12)


def test_oracle_matches_the_formula_at_random_points():
    pts = np.random.default_rng(4).uniform(-3, 3, size=(200, 2))
    ev = SPACE.evaluate(pts)
    assert ev.properties.shape == (200, 1) and ev.properties.dtype == np.float64 and ev.extras == {}
    np.testing.assert_allclose(ev.properties[:, 0], [matlab_peaks(*p) for p in pts], rtol=1e-12, atol=1e-14)


def test_global_minimum_is_found_by_scipy_not_assumed():
    """From a 3 x 3 grid of starts, L-BFGS-B on the formula above finds -6.5511 at (0.2283, -1.6255)."""
    from scipy.optimize import minimize

    starts = [(a, b) for a in (-2.0, 0.0, 2.0) for b in (-2.0, 0.0, 2.0)]
    runs = [minimize(lambda p: matlab_peaks(*p), s, method="L-BFGS-B", bounds=[(-3, 3), (-3, 3)],
                     options={"ftol": 1e-14, "gtol": 1e-10}) for s in starts]
    best = min(runs, key=lambda r: r.fun)
    assert best.fun == pytest.approx(peaks_module.GLOBAL_MINIMUM_VALUE, abs=1e-3)
    np.testing.assert_allclose(best.x, peaks_module.GLOBAL_MINIMUM, atol=1e-3)
    assert best.fun == pytest.approx(-6.5511, abs=1e-3)
    np.testing.assert_allclose(best.x, [0.2283, -1.6255], atol=1e-3)
    # global: no point of a fine grid over the box is lower
    g = np.linspace(-3, 3, 601)
    xx, yy = np.meshgrid(g, g)
    assert z_of(np.stack([xx.ravel(), yy.ravel()], axis=1)).min() >= best.fun - 1e-9
    # and the space's oracle agrees at the stated point
    assert z_of([peaks_module.GLOBAL_MINIMUM])[0] == pytest.approx(-6.5511, abs=1e-3)


def test_gradient_matches_central_differences():
    """Analytic d z / d(x, y) equals central differences (h = 1e-6) at 50 random points, 1e-6 relative."""
    pts = np.random.default_rng(9).uniform(-3, 3, size=(50, 2))
    z, grad = SPACE.gradient(pts)
    assert z.shape == (50, 1) and grad.shape == (50, 1, 2)
    np.testing.assert_allclose(z[:, 0], z_of(pts), rtol=1e-15)
    h = 1e-6
    fd = np.empty((50, 2))
    for k in range(2):
        step = np.zeros(2)
        step[k] = h
        fd[:, k] = [(matlab_peaks(*(p + step)) - matlab_peaks(*(p - step))) / (2 * h) for p in pts]
    g = grad[:, 0, :]
    rel = np.linalg.norm(g - fd, axis=1) / np.linalg.norm(fd, axis=1)
    assert rel.max() < 1e-6, rel.max()
    assert np.abs(g).max() > 1.0  # not a flat region: the comparison has teeth


# --- Sampling -------------------------------------------------------------------------------------------


def test_sampling_is_seeded_inside_the_box_and_uniform():
    from scipy import stats

    n = 20_000
    a = SPACE.sample(n, seed=3)
    assert a.shape == (n, 2) and a.dtype == np.float64
    assert np.all((a >= -3) & (a <= 3))
    assert SPACE.is_valid(a).all()
    np.testing.assert_array_equal(a, SPACE.sample(n, seed=3))
    assert not np.array_equal(a, SPACE.sample(n, seed=4))
    # uniform on [-3, 3]: mean 0 (s.e. 0.012), variance 3 (s.e. 0.019); tolerances > 4 s.e.
    np.testing.assert_allclose(a.mean(axis=0), 0.0, atol=0.05)
    np.testing.assert_allclose(a.var(axis=0), 3.0, atol=0.1)
    for k in range(2):
        assert stats.kstest(a[:, k], stats.uniform(loc=-3, scale=6).cdf).pvalue > 1e-3
    assert SPACE.sample(0, seed=1).shape == (0, 2)
    with pytest.raises(InputError, match="no sampling options"):
        SPACE.sample(5, seed=1, zg=3.0)


# --- Validity and checks -----------------------------------------------------------------------------


def test_validity_is_inside_the_box_and_finite():
    pts = np.array([[0, 0], [3, 3], [-3, -3], [3.0001, 0], [0, -3.5], [np.nan, 0], [0, np.inf], [-np.inf, 1]])
    np.testing.assert_array_equal(SPACE.is_valid(pts), [True, True, True, False, False, False, False, False])


def test_check_designs_names_row_and_column():
    pts = np.zeros((5, 2))
    pts[3, 1] = np.nan
    with pytest.raises(InputError) as info:
        SPACE.check_designs(pts)
    msg = str(info.value)
    assert "row 3" in msg and "column y" in msg and "finite" in msg
    pts = np.zeros((5, 2))
    pts[2, 0] = 3.5
    with pytest.raises(InputError, match=r"(?s)\brow 2\b.*x and y must lie in \[-3, 3\]"):
        SPACE.check_designs(pts)
    with pytest.raises(InputError, match=r"(?s)\brow 2\b.*\[-3, 3\]"):
        SPACE.evaluate(pts)
    np.testing.assert_array_equal(SPACE.check_designs(pts, require_valid=False), pts)
    with pytest.raises(InputError, match="2 entries"):
        SPACE.check_designs(np.zeros((2, 3)))


def test_no_conditions_and_no_extras():
    with pytest.raises(InputError, match="no conditions"):
        SPACE.evaluate(np.zeros((1, 2)), [[2, 2]])
    with pytest.raises(InputError, match="no oracle extras"):
        SPACE.evaluate(np.zeros((1, 2)), extras=("vm",))


# --- Symmetries, keys, registry ----------------------------------------------------------------------


def test_symmetry_free():
    (ident,) = SPACE.symmetries()
    assert ident.name == "identity"
    np.testing.assert_array_equal(ident.variables, [0, 1])
    np.testing.assert_array_equal(ident.properties, [0])
    assert len(ident.conditions) == 0
    for which in ("none", "mirrors", "all"):
        assert [s.name for s in SPACE.symmetry_set(which)] == ["identity"]
    # and peaks really has no mirror symmetry: z(-x, y) and z(x, -y) differ from z(x, y)
    pts = SPACE.sample(100, seed=0)
    assert np.abs(z_of(pts * [-1, 1]) - z_of(pts)).max() > 0.5
    assert np.abs(z_of(pts * [1, -1]) - z_of(pts)).max() > 0.5
    assert np.abs(z_of(pts[:, ::-1]) - z_of(pts)).max() > 0.5


def test_keys_dedupe_exact_repeats():
    a, b = [0.5, -1.25], [0.5, np.nextafter(-1.25, 0)]  # b differs from a in the last bit
    pts = np.array([a, b, a, [2.0, 2.0], b, [9.0, 0.0]])
    keys = SPACE.keys(pts)
    assert keys[0] == keys[2] and keys[1] == keys[4]
    assert len({k.tobytes() for k in keys}) == 4
    out, _, n_valid, n_distinct = SPACE.distinct_valid(pts)
    assert n_valid == 5 and n_distinct == 3  # (9, 0) is outside the box
    assert {tuple(p) for p in out.tolist()} == {tuple(a), tuple(b), (2.0, 2.0)}


def test_space_is_registered_and_unknown_names_are_refused():
    space = registry.get("peaks")
    assert isinstance(space, PeaksSpace)
    assert registry.get("peaks") is space
    assert "peaks" in registry.NAMES
    with pytest.raises(InputError) as info:
        registry.get("rosenbrock")
    msg = str(info.value)
    assert "'rosenbrock'" in msg
    for name in registry.NAMES:
        assert name in msg
    assert "lattice" in msg and "peaks" in msg

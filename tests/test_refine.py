"""Refined intermediate bounds (`tfgeom.verify.refine`) against each unit's exact range by a MILP written here
(SciPy's HiGHS, one binary per unstable earlier unit): never tighter than the exact range (sound), never looser
than the root's alpha-CROWN bounds, strictly tighter on some units, and equal to the exact range when every
earlier unstable unit is split (each sign pattern's beta-CROWN bound then reaches that pattern's LP, which is
exact: the network is linear on a pattern)."""
import keras
import numpy as np
import pytest
from scipy.optimize import Bounds, LinearConstraint, milp as scipy_milp

import tfgeom
from tfgeom.verify import bab, refine


@pytest.fixture(scope="module")
def problem():
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(16, activation="relu"), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(4)])
    gm = tfgeom.GeometryModel(model, bounds=(-1.0, 1.0))
    x = np.random.default_rng(5).uniform(-0.5, 0.5, 12).astype(np.float32)
    p = bab._Problem(gm, x, 0.08, int(gm.runtime.logits(x[None]).argmax()), 1.0)
    p.root()
    return p


def _exact_range(problem, target, unit):
    """`(min, max)` of pre-activation `unit` of node `target` over the input box: a big-M MILP on the root's
    (valid) bounds, one binary per unstable unit before `target`."""
    dense = [layer for layer in problem.gm.model.layers if isinstance(layer, keras.layers.Dense)]
    pres = list(problem.relus)  # pre-activation nodes, one per hidden Dense layer
    depth = pres.index(target)
    low, high = problem.input_set(1).low.numpy()[0], problem.input_set(1).high.numpy()[0]
    # variables: x, then per hidden layer before `target`: z (pre-activation), y (output), d (binaries)
    sizes = [len(low)] + [3 * dense[k].units for k in range(depth)]
    offsets = np.cumsum([0] + sizes)
    nv = offsets[-1]
    lo, hi = list(low), list(high)
    integrality = [0] * len(low)
    rows, lbs, ubs = [], [], []

    def row(entries, lb, ub):
        r = np.zeros(nv)
        for col, value in entries:
            r[col] += value
        rows.append(r)
        lbs.append(lb)
        ubs.append(ub)

    prev = list(range(len(low)))
    for k in range(depth):
        w, b = (np.asarray(v, np.float64) for v in dense[k].get_weights())
        l, u = (np.asarray(v, np.float64).reshape(-1) for v in problem.reference[pres[k]])
        m = w.shape[1]
        z, y, d = (offsets[k + 1] + i * m + np.arange(m) for i in range(3))
        lo += list(l - 1e-6) + [0.0] * m + [0.0] * m
        hi += list(u + 1e-6) + list(np.maximum(u, 0) + 1e-6) + [1.0] * m
        integrality += [0] * (2 * m) + [1] * m
        for j in range(m):
            row([(z[j], 1.0)] + [(prev[i], -w[i, j]) for i in range(w.shape[0])], b[j], b[j])  # z = W y + b
            if l[j] >= 0:
                row([(y[j], 1.0), (z[j], -1.0)], 0.0, 0.0)
            elif u[j] <= 0:
                row([(y[j], 1.0)], 0.0, 0.0)
            else:
                row([(y[j], 1.0), (z[j], -1.0)], 0.0, np.inf)  # y >= z
                row([(y[j], 1.0), (z[j], -1.0), (d[j], -l[j])], -np.inf, -l[j])  # y <= z - l (1 - d)
                row([(y[j], 1.0), (d[j], -u[j])], -np.inf, 0.0)  # y <= u d
        prev = list(y)
    w, b = (np.asarray(v, np.float64) for v in dense[depth].get_weights())
    c = np.zeros(nv)
    c[prev] = w[:, unit]
    constraints = LinearConstraint(np.array(rows), lbs, ubs)
    out = []
    for sign in (1.0, -1.0):
        res = scipy_milp(sign * c, constraints=constraints, bounds=Bounds(lo, hi), integrality=integrality,
                         options={"mip_rel_gap": 1e-9})
        assert res.status == 0
        out.append(sign * res.fun + b[unit])
    return tuple(out)


@pytest.mark.parametrize("which", [1, 2])
def test_refined_bounds_are_sound_and_tighter(problem, which):
    target = list(problem.relus)[which]
    l, u = (np.asarray(v).reshape(-1) for v in problem.reference[target])
    new_l, new_u = (np.asarray(v).reshape(-1) for v in
                    refine.refine_node(problem.graph, problem.input_set(1), problem.reference, target,
                                       refine.Settings(splits=3)))
    assert np.all(new_l >= l) and np.all(new_u <= u)  # never looser than the root's
    unstable = np.flatnonzero((l < 0) & (u > 0))
    assert len(unstable) >= 5
    for i in unstable:
        exact_min, exact_max = _exact_range(problem, target, i)
        tol = 1e-4 * max(1.0, abs(exact_min), abs(exact_max))
        assert new_l[i] <= exact_min + tol and new_u[i] >= exact_max - tol, (i, new_l[i], exact_min)
    gained = (u - l)[unstable].sum() - (new_u - new_l)[unstable].sum()
    assert gained > 0.05 * (u - l)[unstable].sum(), gained


def test_every_earlier_unit_split_gives_the_exact_range(problem):
    """On the second hidden layer with every unstable unit of the first split (all patterns), each bound is
    that pattern set's exact optimum, up to beta-CROWN's convergence."""
    first, target = list(problem.relus)[:2]
    fl, fu = problem.reference[first]
    earlier = int(((fl < 0) & (fu > 0)).sum())
    assert 3 <= earlier <= 10
    new_l, new_u = (np.asarray(v).reshape(-1) for v in
                    refine.refine_node(problem.graph, problem.input_set(1), problem.reference, target,
                                       refine.Settings(splits=earlier, iterations=200, screen=0)))
    l, u = (np.asarray(v).reshape(-1) for v in problem.reference[target])
    for i in np.flatnonzero((l < 0) & (u > 0)):
        exact_min, exact_max = _exact_range(problem, target, i)
        width = u[i] - l[i]
        assert exact_min - 0.02 * width <= new_l[i] <= exact_min + 1e-4 * max(1.0, abs(exact_min)), i
        assert exact_max - 1e-4 * max(1.0, abs(exact_max)) <= new_u[i] <= exact_max + 0.02 * width, i


def test_screening_changes_only_the_units_it_proves_stable(problem):
    """The first, cheaper pass (`Settings.screen`) only drops units from the full pass: the units it leaves
    unstable get the full pass's bounds, and the units it proves stable are stable by the full pass too."""
    target = list(problem.relus)[2]
    full, screened = ((np.asarray(v).reshape(-1) for v in
                       refine.refine_node(problem.graph, problem.input_set(1), problem.reference, target,
                                          refine.Settings(splits=6, screen=screen)))
                      for screen in (0, 2))
    (fl, fu), (sl, su) = full, screened
    l, u = (np.asarray(v).reshape(-1) for v in problem.reference[target])
    unstable = (l < 0) & (u > 0)
    proved = unstable & ((sl >= 0) | (su <= 0))
    assert proved.any() and (unstable & ~proved).any()
    assert np.all((fl[proved] >= 0) == (sl[proved] >= 0)) and np.all((fu[proved] <= 0) == (su[proved] <= 0))
    rest = unstable & ~proved
    np.testing.assert_allclose(sl[rest], fl[rest], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(su[rest], fu[rest], rtol=1e-4, atol=1e-4)

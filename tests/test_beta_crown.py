"""beta-CROWN's subdomain bounds: sound against the exact LP/MILP of each subdomain, never below CROWN's with
the same node bounds, and above it where the splits matter (the multipliers do something)."""
import keras
import numpy as np
import pytest

import tfgeom
from tfgeom.verify import bab, milp


@pytest.fixture(scope="module")
def mlp(digits):
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(16, activation="relu"), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(10)])
    model = tfgeom.zoo.train(model, digits.x_train, digits.y_train, epochs=8, batch_size=32, seed=3)
    return tfgeom.GeometryModel(model, bounds=(0.0, 1.0))


def _subdomains(problem, count, seed):
    """`count` random sign assignments of up to 6 of the root's unstable units (over both hidden layers)."""
    rng = np.random.default_rng(seed)
    unstable = [(n, k) for n in problem.relus
                for k in np.flatnonzero((problem.reference[n][0] < 0) & (problem.reference[n][1] > 0))]
    out = []
    for _ in range(count):
        split = {n: np.zeros(problem.graph.nodes[n].shape, np.int8) for n in problem.relus}
        for i in rng.choice(len(unstable), min(6, len(unstable)), replace=False):
            n, k = unstable[i]
            split[n].reshape(-1)[k] = rng.choice([-1, 1])
        out.append(problem.split(split))
    return out


def test_beta_bounds_are_sound_and_tighter_than_crown(mlp, digits):
    x = digits.x[:6]
    cls = mlp.runtime.logits(x).argmax(axis=1)
    helped, checked = 0, 0
    for i in range(len(x)):
        problem = bab._Problem(mlp, x[i], 0.06, cls[i], 1.0)
        problem.root()
        splits = _subdomains(problem, 8, i)
        with_beta = problem.bound(splits)
        problem.beta = None
        without = problem.bound(splits)
        lower, crown = with_beta[0], without[0]
        assert np.all(lower >= crown - 1e-6)  # the best iterate, CROWN's slopes included
        matrices = milp.affine_matrices(problem.graph)
        for j in range(len(splits)):
            per = [(np.asarray(l[j], np.float64), np.asarray(u[j], np.float64)) for l, u in with_beta[1]]
            program = milp.Program(problem.graph, matrices, per, problem.input_set(1), 0)
            for r, (coeffs, const) in enumerate(zip(problem.coeffs, problem.const)):
                value, status, _ = program.minimise(coeffs.astype(np.float64))
                if status in ("infeasible", "infeasible_inaccurate"):
                    break  # an empty subdomain: every bound holds on it
                assert status == "optimal"
                assert lower[j, r] <= value + const + 1e-4, (i, j, r)  # sound: below the subdomain's minimum
                checked += 1
            helped += int(np.any(lower[j] > crown[j] + 1e-3))
    assert checked >= 100 and helped >= 5, (checked, helped)


def test_fused_step_matches_the_step_in_stages(mlp, digits):
    """A batch bounded and branched in one compiled program gives the bounds, branching choices, corners and
    children's starting slopes and multipliers of the same step in stages (CROWN, beta-CROWN, then the
    branching rule's children on the host): from CROWN's slopes, then from the inherited ones."""
    x = digits.x[2:4]  # at this radius a third to a half of the subdomains stay open
    cls = mlp.runtime.logits(x).argmax(axis=1)
    for i in range(len(x)):
        problem = bab._Problem(mlp, x[i], 0.08, cls[i], 1.0)
        problem.root(batch=256)
        splits = _subdomains(problem, bab.MIN_PAD + 72, 10 + i)  # above MIN_PAD: padded to the batch size
        states = [None] * len(splits)
        for _ in range(2):
            fused, staged = problem.step(splits, states), problem._step_in_parts(splits, states, 3)
            np.testing.assert_allclose(fused.lower, staged.lower, atol=1e-5, rtol=1e-5)
            np.testing.assert_array_equal(fused.empty, staged.empty)
            np.testing.assert_array_equal(fused.corners, staged.corners)
            if staged.states[0] is not None:  # None: CROWN proved every subdomain, beta-CROWN did not run
                np.testing.assert_allclose(np.asarray(fused.states, np.float32),
                                           np.asarray(staged.states, np.float32), atol=2e-3)
            open_ = ~fused.empty & (fused.lower.min(axis=1) <= problem.guard)
            assert np.array_equal(fused.choices >= 0, open_ & (staged.choices >= 0))
            assert np.mean(fused.choices[open_] == staged.choices[open_]) >= 0.95  # ties may round apart
            for j in np.flatnonzero(fused.choices >= 0):  # each choice is an unstable unit of its subdomain
                lows = np.concatenate([fused.bounds(j)[n][0].reshape(-1) for n in problem.relus])
                highs = np.concatenate([fused.bounds(j)[n][1].reshape(-1) for n in problem.relus])
                assert lows[fused.choices[j]] < 0 < highs[fused.choices[j]]
            assert open_.sum() >= 10
            states = list(fused.states)

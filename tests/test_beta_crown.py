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

"""Input splitting on a two-input network: verdicts known by construction from a dense grid and a Lipschitz bound."""
import numpy as np
import pytest

import tfgeom
from tfgeom.verify import input_split, properties, vnnlib

GRID = 401  # points per side of the check grid over [-1, 1]^2


@pytest.fixture(scope="module")
def network():
    """`(gm, weights)`: a 2-16-16-3 ReLU MLP with fixed random weights (logits head)."""
    import keras

    g = np.random.default_rng(7)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(16, activation="relu"), keras.layers.Dense(3)])
    weights = []
    for layer in model.layers:
        w = g.normal(0, 1 / np.sqrt(layer.kernel.shape[0]), layer.kernel.shape).astype(np.float32)
        b = g.normal(0, 0.1, layer.bias.shape).astype(np.float32)
        layer.set_weights([w, b])
        weights.append((w, b))
    return tfgeom.GeometryModel(model, bounds=(-1.0, 1.0)), weights


def _forward(weights, x):
    for i, (w, b) in enumerate(weights):
        x = x @ w + b
        x = np.maximum(x, 0) if i < len(weights) - 1 else x
    return x


def _grid_min_and_slack(weights):
    """The grid minimum of `max(y0, y1)` and the most it can drop between grid points (Lipschitz bound times the
    largest distance to the grid): the true minimum over the square lies within that of the grid's."""
    t = np.linspace(-1, 1, GRID)
    x = np.stack(np.meshgrid(t, t), -1).reshape(-1, 2)
    y = _forward(weights, x)
    lipschitz = max(np.linalg.norm(weights[2][0][:, j]) for j in (0, 1)) * np.prod(
        [np.linalg.norm(w, 2) for w, _ in weights[:2]])
    return float(np.max(y[:, :2], axis=1).min()), lipschitz * (2 / (GRID - 1)) * np.sqrt(2) / 2


def _property(t):
    """Unsafe: `Y_0 <= t and Y_1 <= t` (one disjunct of two constraints) over [-1, 1]^2."""
    return vnnlib.parse(text=" ".join(
        ["(declare-const X_0 Real) (declare-const X_1 Real)"] + [f"(declare-const Y_{j} Real)" for j in range(3)]
        + [f"(assert (<= X_{i} 1.0)) (assert (>= X_{i} -1.0))" for i in range(2)]
        + [f"(assert (and (<= Y_0 {float(t)!r}) (<= Y_1 {float(t)!r})))"]))


def test_a_property_of_several_constraints_is_proved_below_the_true_minimum(network):
    """Thresholds below the grid minimum minus the Lipschitz slack are unsafe nowhere: unsat, by input
    splitting (the property has no single-row form, so ReLU splitting could not take it)."""
    gm, weights = network
    low, slack = _grid_min_and_slack(weights)
    for margin in (0.05, 0.3):
        prop = _property(low - slack - margin)
        assert prop.rows is None
        decision = properties.decide(gm, prop, timeout=60)
        assert (decision.verdict, decision.phase) == ("unsat", "input_split"), (margin, decision)


def test_a_property_just_above_the_minimum_gets_a_checked_counterexample(network):
    """A threshold just above the grid minimum is reached at the grid's minimiser: the search itself (no attack)
    ends with a counterexample whose outputs, by a NumPy forward pass, are unsafe."""
    gm, weights = network
    low, _ = _grid_min_and_slack(weights)
    prop = _property(low + 0.02)
    verdict = input_split.search(gm, prop, np.full(2, -1, np.float32), np.full(2, 1, np.float32), 60.0)
    assert verdict.verdict == "counterexample", verdict
    x = verdict.counterexample
    assert np.all(np.abs(x) <= 1) and np.max(_forward(weights, x[None])[0, :2]) <= low + 0.02 + 1e-5


def test_input_splitting_is_for_few_inputs_only():
    assert input_split.applies(5) and input_split.applies(input_split.MAX_INPUTS)
    assert not input_split.applies(input_split.MAX_INPUTS + 1) and not input_split.applies(784)


def test_a_disjunction_of_input_boxes_is_decided_box_by_box():
    """`Y_1 = 2 - 4|x_0|` against `Y_0 = 1`: unsafe exactly where `|x_0| <= 1/4`. Over the boxes `x_0` in
    [-1, -1/2] or [1/2, 1] it is unsat, though the smallest box holding both is unsafe at 0; with the second box
    moved to [1/5, 1] it is sat, the counterexample inside that box and unsafe by a NumPy forward pass."""
    import keras

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="relu"), keras.layers.Dense(2)])
    w1 = np.array([[1.0, -1.0], [0.0, 0.0]], np.float32)  # relu(x_0), relu(-x_0)
    w2 = np.array([[0.0, -4.0], [0.0, -4.0]], np.float32)
    model.layers[0].set_weights([w1, np.zeros(2, np.float32)])
    model.layers[1].set_weights([w2, np.array([1.0, 2.0], np.float32)])
    gm = tfgeom.GeometryModel(model, bounds=(-1.0, 1.0))

    def prop(second):
        return vnnlib.parse(text=" ".join(
            ["(declare-const X_0 Real) (declare-const X_1 Real) (declare-const Y_0 Real) (declare-const Y_1 Real)",
             "(assert (<= X_1 1.0)) (assert (>= X_1 -1.0))",
             f"(assert (or (and (<= X_0 -0.5) (>= X_0 -1.0)) (and (>= X_0 {second}) (<= X_0 1.0))))",
             "(assert (>= Y_1 Y_0))"]))

    assert properties.decide(gm, prop(0.5), timeout=30).verdict == "unsat"
    decision = properties.decide(gm, prop(0.2), timeout=30)
    assert decision.verdict == "sat"
    x = decision.counterexample
    assert 0.2 <= x[0] <= 1.0 and -1.0 <= x[1] <= 1.0
    y = np.maximum(x @ w1, 0) @ w2 + [1.0, 2.0]
    assert y[1] >= y[0], y


def test_clipping_keeps_every_unsafe_point_and_cuts_the_rest(network):
    """`clip` on boxes of the 2-16-16-3 net with CROWN's own bounds and input coefficients: every point of a
    dense grid of each box whose outputs are unsafe (NumPy forward pass) lies inside the cut box, and the cut
    boxes are smaller in total than the boxes (the test would pass for a clip that does nothing otherwise)."""
    import tensorflow as tf

    from tfgeom.verify import crown
    from tfgeom.verify.sets import LinfBall

    gm, weights = network
    threshold = _grid_min_and_slack(weights)[0] + 0.1
    prop = _property(threshold)
    coeffs, const, group = input_split._rows(gm, prop)
    g = np.random.default_rng(0)
    centre = g.uniform(-0.7, 0.7, (16, 2)).astype(np.float32)
    half = g.uniform(0.05, 0.3, (16, 2)).astype(np.float32)
    low, high = np.clip(centre - half, -1, 1), np.clip(centre + half, -1, 1)
    box = LinfBall(tf.constant((low + high) / 2), tf.constant(half.max(1)), tf.constant(low), tf.constant(high))
    bounds = crown.crown_bounds(gm.layer_graph, box)
    last = len(gm.layer_graph.nodes) - 1
    lower, coef = crown.backward(gm.layer_graph, last, tf.constant(np.repeat(coeffs[None], 16, 0)),
                                 tf.constant(np.repeat(const[None], 16, 0)), bounds[:last], box, coefficients=True)
    new_low, new_high, keep = input_split.clip(low, high, np.asarray(coef).reshape(16, 2, 2), np.asarray(lower),
                                               group, 0.0)
    t = np.linspace(0, 1, 101)
    kept = 0
    for i in range(16):
        x = np.clip(low[i] + np.stack(np.meshgrid(t, t), -1).reshape(-1, 2) * (high[i] - low[i]), low[i], high[i])
        unsafe = x[np.all(_forward(weights, x)[:, :2] <= threshold, axis=1)]
        assert keep[i] or not len(unsafe), i
        assert np.all(unsafe >= new_low[i]) and np.all(unsafe <= new_high[i]), i
        kept += bool(len(unsafe))
    area = np.prod(np.where(keep[:, None], new_high - new_low, 0), 1).sum()
    assert kept and area < 0.9 * np.prod(high - low, 1).sum(), (kept, area)


def test_split_partitions_each_box_and_sides_prefer_the_steep_wide_side():
    """`split` with three halvings (one side twice) gives 8 boxes per box, inside it, whose volumes add up to
    its own and which hold each random point of it exactly once; `sides` halves where coefficient times width is
    largest, halving that score before the next pick, and skips sides under 1/SPREAD of the widest."""
    g = np.random.default_rng(1)
    low = g.uniform(-1, 0, (3, 3))
    high = low + g.uniform(0.1, 1, (3, 3))
    picks = np.array([[0, 1, 0], [2, 2, 1], [1, 0, 2]])
    child_low, child_high = input_split.split(low, high, picks)
    assert child_low.shape == (24, 3)
    for b in range(3):
        lo, hi = child_low[8 * b:8 * b + 8], child_high[8 * b:8 * b + 8]
        assert np.all(lo >= low[b]) and np.all(hi <= high[b])
        np.testing.assert_allclose(np.prod(hi - lo, 1).sum(), np.prod(high[b] - low[b]))
        x = g.uniform(low[b], high[b], (500, 3))
        inside = np.all((x[:, None] >= lo) & (x[:, None] < hi), axis=2)
        assert np.all(inside.sum(1) == 1)
    extent = np.ones(3)
    box_low, box_high = np.zeros((1, 3)), np.array([[1.0, 0.5, 1.0 / (2 * input_split.SPREAD)]])
    coeffs = np.array([[1.0, 3.0, 1000.0]])  # scores 1, 1.5, ~7.8 but side 2 is too narrow
    assert input_split.sides(box_low, box_high, coeffs, 3, extent).tolist() == [[1, 0, 1]]


def test_whole_bounds_equal_crown_bounds_and_hold_on_samples(network):
    """`crown.whole_bounds` (every unit bounded, one program) gives `crown_bounds`' bounds on the units that it
    refines and bounds at least as tight elsewhere, and every node's bounds hold the values of 2,000 random points
    of each box (NumPy forward pass)."""
    import tensorflow as tf

    from tfgeom.verify import crown
    from tfgeom.verify.sets import LinfBall

    gm, weights = network
    graph = gm.layer_graph
    g = np.random.default_rng(2)
    centre = g.uniform(-0.7, 0.7, (8, 2)).astype(np.float32)
    half = g.uniform(0.05, 0.3, (8, 2)).astype(np.float32)
    low, high = np.clip(centre - half, -1, 1), np.clip(centre + half, -1, 1)
    box = LinfBall(tf.constant((low + high) / 2), tf.constant(half.max(1)), tf.constant(low), tf.constant(high))
    refined = {}
    reference = crown.crown_bounds(graph, box, refined=refined)
    whole = graph.program(("test_whole",), lambda s: crown.whole_bounds(graph, s), jit=True)(box)
    assert refined, "the network has unstable units over the boxes"
    for n, (l, u) in enumerate(whole):
        l, u, ref_l, ref_u = (np.asarray(v).reshape(8, -1) for v in (l, u, *reference[n]))
        assert np.all(l >= ref_l - 1e-5) and np.all(u <= ref_u + 1e-5), n
        if n in refined:
            idx = np.asarray(refined[n])
            np.testing.assert_allclose(l[:, idx], ref_l[:, idx], atol=1e-5)
            np.testing.assert_allclose(u[:, idx], ref_u[:, idx], atol=1e-5)
    x = g.uniform(low, high, (2000, 8, 2)).astype(np.float32)
    pre = [x @ weights[0][0] + weights[0][1]]
    pre.append(np.maximum(pre[0], 0) @ weights[1][0] + weights[1][1])
    for n, node in enumerate(graph.nodes[1:], 1):
        if getattr(node, "activation", None) is None:  # the dense layers' pre-activations
            values = pre.pop(0)
            assert np.all(values >= np.asarray(whole[n][0]) - 1e-5) and np.all(values <= np.asarray(whole[n][1]) + 1e-5)
    assert not pre, "both hidden layers' pre-activations were checked"


def test_optimised_row_slopes_raise_the_bound_and_stay_sound(network):
    """`alpha_crown.optimise_rows` (the rows' slopes optimised, node bounds fixed): every row's bound is at least
    CROWN's, higher on some, and below the row's value at 2,000 random points of each box; with the returned input
    coefficients, the linear bound `lower + coef . (x - argmin)` that `clip` cuts with is below the row at each
    point too."""
    import tensorflow as tf

    from tfgeom.verify import alpha_crown, crown
    from tfgeom.verify.sets import LinfBall

    gm, weights = network
    graph = gm.layer_graph
    last = len(graph.nodes) - 1
    coeffs, const, _ = input_split._rows(gm, _property(0.0))
    g = np.random.default_rng(3)
    centre = g.uniform(-0.6, 0.6, (8, 2)).astype(np.float32)
    half = g.uniform(0.2, 0.4, (8, 2)).astype(np.float32)
    low, high = np.clip(centre - half, -1, 1), np.clip(centre + half, -1, 1)
    box = LinfBall(tf.constant((low + high) / 2), tf.constant(half.max(1)), tf.constant(low), tf.constant(high))
    a, c = tf.constant(np.repeat(coeffs[None], 8, 0)), tf.constant(np.repeat(const[None], 8, 0))
    nodes = crown.whole_bounds(graph, box)[:last]
    plain, _, _ = alpha_crown.optimise_rows(graph, a, c, nodes, box, 0)
    lower, coef, first = (np.asarray(v) for v in alpha_crown.optimise_rows(graph, a, c, nodes, box, 5))
    plain = np.asarray(plain)
    assert np.all(lower >= plain - 1e-6) and np.any(lower > plain + 1e-3), (lower - plain)
    x = g.uniform(low, high, (2000, 8, 2)).astype(np.float32)
    hidden = _forward(weights[:2], x)  # the last hidden layer (`_forward` leaves the last map's output as it is)
    rows = np.maximum(hidden, 0) @ coeffs.T + const  # [2000, 8, S]
    argmin_value = np.minimum(coef * low[:, None], coef * high[:, None]).sum(-1)  # [8, S]
    linear = lower[None] + np.einsum("bsd,pbd->pbs", coef, x) - argmin_value[None]
    assert np.all(rows >= lower[None] - 1e-4)
    assert np.all(rows >= linear - 1e-4)
    assert first.shape == coef.shape

"""Interval bound propagation (IBP): a box `[l, u]` through every node of the graph.

An affine node maps centre `m` and radius `r` to `L(m) + c` and `|L|(r)`;
monotone activations and max-pooling map the ends (each operator's
`interval`, `tfgeom.verify.operators`).
"""


def interval_bounds(graph, input_set, refine=None):
    """IBP: `[(l, u)]` for every node. `refine(n, bounds) -> (l, u)` may tighten node `n`."""
    bounds = [(input_set.low, input_set.high)]
    for n, node in enumerate(graph.nodes[1:], 1):
        bounds.append(node.interval([bounds[i] for i in node.inputs]))
        if refine is not None:
            bounds[n] = refine(n, bounds)
    return bounds


def compiled_interval_bounds(graph, input_set):
    """`interval_bounds` as one compiled program per graph and input-set kind (no per-node Python overhead)."""
    return graph.program(("ibp", input_set.kind), lambda s: interval_bounds(graph, s))(input_set)

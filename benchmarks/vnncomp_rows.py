"""The rows branch and bound leaves on a VNN-COMP MLP instance: tfgeom's search vs an exact MILP solver (issue 25).

    python benchmarks/vnncomp_rows.py BENCHMARK_DIR NETWORK PROPERTY [--rows R,R] [--seconds S]

e.g. `python benchmarks/vnncomp_rows.py .../benchmarks/mnist_fc mnist-net_256x4 prop_9_0.05 --seconds 240`.

For one instance (files as `benchmarks/vnncomp.py` takes them, unpacked), the verifier's own steps up to the
search: alpha-CROWN at the root, then the refinement of every hidden layer's node bounds (`bab`'s, with no time
limit here). Then, for each row (default: the one with the lowest bound), on the same refined node bounds:

- tfgeom's branch and bound on that row alone for `--seconds` (the settings of `bab.verify`): its verdict,
  subdomains bounded, and the lowest bound still open;
- HiGHS on the exact MILP (`tfgeom.verify.milp.Program`: big-M, one binary per unstable unit), single-threaded:
  its root node alone (the LP with HiGHS' cutting planes), then a solve of `--seconds`: status and dual bound.

All bounds are of the row's value `A f(x) - c` (positive everywhere: the row is proved). The branch-and-bound
internals (`bab._Problem`) are used on purpose: this measures the search on one row, not a user path.
"""
import argparse
import pathlib
import time
import warnings

import numpy as np


def milp_bound(program, coeffs, const, seconds, nodes=None):
    """`(status, dual bound of the row, seconds)` of HiGHS on `min coeffs^T f` (+ `const`)."""
    import cvxpy as cp

    program.coeffs.value = coeffs.astype(np.float64)
    options = dict(mip_rel_gap=1e-6, time_limit=float(seconds), threads=1)
    if nodes is not None:
        options["mip_max_nodes"] = nodes
    start = time.perf_counter()
    with warnings.catch_warnings():  # cvxpy warns that a solve stopped by its time limit "may be inaccurate"
        warnings.simplefilter("ignore", UserWarning)
        program.problem.solve(solver=cp.HIGHS, **options)
    info = program.problem.solver_stats.extra_stats
    return program.problem.status, float(info.mip_dual_bound) + float(const), time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmark")
    parser.add_argument("network", help="the ONNX file's name without .onnx, e.g. mnist-net_256x4")
    parser.add_argument("property", help="the VNN-LIB file's name without .vnnlib, e.g. prop_9_0.05")
    parser.add_argument("--rows", default="", help="rows to run (default: the lowest after refinement)")
    parser.add_argument("--seconds", type=float, default=240.0)
    args = parser.parse_args()
    import tfgeom
    from tfgeom.runtime.backend import solver_output_silenced
    from tfgeom.verify import bab, beta_crown, milp, refine, vnnlib

    bench = pathlib.Path(args.benchmark)
    prop = vnnlib.parse(bench / "vnnlib" / f"{args.property}.vnnlib")
    gm = tfgeom.GeometryModel(str(bench / "onnx" / f"{args.network}.onnx"),
                              bounds=(float(prop.lower.min()), float(prop.upper.max())))
    low = prop.lower.reshape(gm.input_shape).astype(np.float32)
    high = prop.upper.reshape(gm.input_shape).astype(np.float32)
    problem = bab._Problem(gm, (low + high) / 2, float((high - low).max() / 2), 0, 1.0, (low, high), prop.rows)
    batch = bab.batch_size(problem, 1)
    root = problem.root(beta_crown.Settings(), True, batch)
    start = time.perf_counter()
    refined = np.maximum(root, problem.refine(refine.Settings(), np.inf))
    print(f"{args.network} {args.property}: root {np.round(root, 3)}")
    print(f"refined in {time.perf_counter() - start:.1f} s: {np.round(refined, 3)}")
    rows = [int(r) for r in args.rows.split(",")] if args.rows else [int(np.argmin(refined))]
    node_bounds = [(np.asarray(l)[0], np.asarray(u)[0]) for l, u in problem.reference]
    program = milp.Program(problem.graph, milp.affine_matrices(problem.graph), node_bounds, problem.input_set(1), 0)
    print(f"MILP: {program.binaries} binaries (unstable units after refinement)")
    print("| row | refined bound | tfgeom BaB: verdict, subdomains, lowest open bound | "
          "HiGHS root with cuts | HiGHS after the same time: status, dual bound |")
    print("|---|---|---|---|---|")
    for r in rows:
        verdict = bab._search(problem.restricted(r), time.perf_counter(), args.seconds, batch, 10**9, 3)
        with solver_output_silenced():
            _, at_root, root_seconds = milp_bound(program, problem.coeffs[r], problem.const[r], args.seconds, 1)
            status, dual, seconds = milp_bound(program, problem.coeffs[r], problem.const[r], args.seconds)
        print(f"| {r} | {refined[r]:.3f} | {verdict.verdict}, {verdict.domains:,}, {verdict.lower:.3f} "
              f"({verdict.seconds:.0f} s) | {at_root:.3f} ({root_seconds:.0f} s) | {status}, {dual:.3f} "
              f"({seconds:.0f} s) |", flush=True)


if __name__ == "__main__":
    main()

"""tfgeom on a VNN-COMP benchmark against the published per-instance results (issue 25).

    python benchmarks/vnncomp.py BENCHMARK_DIR RESULTS_DIR [--out DIR] [--only NAME] [--timeout-scale S]

BENCHMARK_DIR is one benchmark of https://github.com/ChristopherBrix/vnncomp2022_benchmarks
(`benchmarks/mnist_fc`, `benchmarks/oval21`, ...) with its `.gz` files unpacked (`gunzip -r onnx vnnlib`);
RESULTS_DIR holds the entrants' results of https://github.com/ChristopherBrix/vnncomp2022_results as
`RESULTS_DIR/<tool>/<benchmark>/results.csv` (the repository's own layout). Nothing is fetched at run time.

tfgeom runs every instance (or those whose model name contains `--only`) with the competition's timeouts
(times `--timeout-scale`) on this machine, through `tfgeom.report.vnncomp.run_benchmark` (resumable:
rerunning continues `OUT/results.csv`). Then, per network: instances, decided by tfgeom (sat + unsat), by
the winner (alpha_beta_crown), tfgeom's wrong verdicts (a sat or unsat contradicting any entrant's published
opposite verdict: a soundness failure to investigate, never to tune away), and time.
"""
import argparse
import collections
import csv
import pathlib
import sys
import tempfile

WINNER = "alpha_beta_crown"


def published(results_dir, benchmark):
    """`{(onnx name, vnnlib name): {tool: result}}` from every entrant's results.csv."""
    table = collections.defaultdict(dict)
    for path in sorted(pathlib.Path(results_dir).glob(f"*/{benchmark}/results.csv")):
        tool = path.parent.parent.name
        with open(path, newline="") as f:
            for row in csv.reader(f):
                if len(row) >= 5:
                    table[(pathlib.Path(row[1]).name, pathlib.Path(row[2]).name)][tool] = row[4].strip()
    return table


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("benchmark")
    parser.add_argument("results")
    parser.add_argument("--out", default=tempfile.mkdtemp(prefix="vnncomp-"))
    parser.add_argument("--only", default="", help="run only instances whose model file name contains this")
    parser.add_argument("--timeout-scale", type=float, default=1.0)
    args = parser.parse_args()
    bench = pathlib.Path(args.benchmark)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from tfgeom.report.vnncomp import read_instances, run_benchmark

    rows = [r for r in read_instances(bench / "instances.csv") if args.only in r[0].name]
    subset = out / "instances.csv"  # the selected instances, paths absolute
    subset.write_text("".join(f"{m.resolve()},{p.resolve()},{t}\n" for m, p, t in rows))
    results = out / "results.csv"

    def told(model, prop, answer):
        print(f"{model.name} {prop.name}: {answer.result} ({answer.phase or '-'}, {answer.seconds:.1f} s)",
              flush=True)

    run_benchmark(subset, results, resume=results.exists(), timeout_scale=args.timeout_scale, on_answer=told,
                  benchmark=bench.name)
    theirs = published(args.results, bench.name)
    ours = {}
    with open(results, newline="") as f:
        for r in csv.DictReader(f):
            ours[(pathlib.Path(r["onnx"]).name, pathlib.Path(r["vnnlib"]).name)] = (r["result"], float(r["run_time"]))
    per = collections.defaultdict(lambda: collections.Counter())
    wrong = []
    for key, (result, seconds) in ours.items():
        net = key[0]
        others = theirs.get(key, {})
        winner = others.get(WINNER, "missing")
        per[net]["instances"] += 1
        per[net]["tfgeom_decided"] += result in ("sat", "unsat")
        per[net]["tfgeom_sat"] += result == "sat"
        per[net]["tfgeom_unsat"] += result == "unsat"
        per[net]["winner_decided"] += winner in ("sat", "unsat")
        per[net]["tfgeom_seconds"] += seconds
        opposite = {"sat": "unsat", "unsat": "sat"}.get(result)
        if opposite and opposite in others.values():
            against = {t: v for t, v in others.items() if v == opposite}
            # our sat carries a counterexample checked by ONNX Runtime on the original file: it refutes a
            # published unsat; our unsat against a published sat is a soundness failure to investigate
            refuted = result == "sat"
            wrong.append((key, result, against, refuted))
            per[net]["refuted" if refuted else "wrong"] += 1
    print(f"\nbenchmark {bench.name}, timeouts x{args.timeout_scale:g}, this machine; winner = {WINNER} "
          "(its published results, on the competition's hardware)\n")
    print("| network | instances | tfgeom decided (sat / unsat) | winner decided | tfgeom wrong | published verdicts "
          "refuted by a checked counterexample | tfgeom time |")
    print("|---|---|---|---|---|---|---|")
    total = collections.Counter()
    for net, c in sorted(per.items()):
        total.update(c)
        print(f"| {net} | {c['instances']} | {c['tfgeom_decided']} ({c['tfgeom_sat']} / {c['tfgeom_unsat']}) | "
              f"{c['winner_decided']} | {c['wrong']} | {c['refuted']} | {c['tfgeom_seconds']:.0f} s |")
    print(f"| all | {total['instances']} | {total['tfgeom_decided']} ({total['tfgeom_sat']} / {total['tfgeom_unsat']}) "
          f"| {total['winner_decided']} | {total['wrong']} | {total['refuted']} | {total['tfgeom_seconds']:.0f} s |")
    for key, result, against, refuted in wrong:
        kind = "refuted (tfgeom's counterexample is checked)" if refuted else "WRONG: investigate"
        print(f"{kind}: {key}: tfgeom {result}, published {against}", file=sys.stderr)


if __name__ == "__main__":
    main()

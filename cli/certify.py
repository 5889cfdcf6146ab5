"""The certify command: certificates or certified radii per input, written as they finish, resumable."""
import pathlib
import time
from typing import Optional

import typer
from typing_extensions import Annotated

from tfgeom.analyses.summaries import summarize_certificates, summarize_radii
from tfgeom.cli.console import cli_errors, err_console, note, show
from tfgeom.cli.loading import load_data, load_model, make_executor, running
from tfgeom.cli.options import (BatchOpt, BoundsOpt, EpsUnits, ImageSizeOpt, Intermediate, JsonOpt, LimitOpt,
                                Logits, LogitsOpt, Method, ModelArg, Norm, RayAddressOpt, UnsafeOpt, WorkersOpt)


@cli_errors
def certify(
    model: ModelArg,
    data: Annotated[Optional[str], typer.Option("--data", "-d", help="Data: .npz/.npy file, folder of class "
                                                "folders of images, keras:NAME or a built-in name (not with "
                                                "--vnnlib).")] = None,
    image_size: ImageSizeOpt = None,
    eps: Annotated[float, typer.Option(min=0.0, help="Radius of the input balls, as a fraction of the input range "
                                       "(HIGH - LOW) unless --eps-units input; ignored with --radius.")] = 0.05,
    eps_units: Annotated[EpsUnits, typer.Option(help="fraction: eps is a fraction of the input range (0.01 on "
                                                "0..255 data is 2.55); input: eps is in input units.")] = (
        EpsUnits.fraction
    ),
    norm: Annotated[Norm, typer.Option(help="Norm of the balls.")] = Norm.linf,
    method: Annotated[Method, typer.Option(help="ibp (fast, loose), crown (tighter), alpha-crown (tighter still: optimised ReLU slopes) "
                                                "or milp (exact, small ReLU nets).")] = Method.crown,
    radius: Annotated[bool, typer.Option("--radius", help="Find each input's certified radius by bisection.")] = False,
    intermediate: Annotated[Intermediate, typer.Option(help="CROWN's neuron bounds: backward (tight) or forward (cheaper).")] = Intermediate.backward,
    time_limit: Annotated[float, typer.Option(min=0.0, help="bab: seconds per input before its verdict is 'unknown'.")] = 60.0,
    limit: LimitOpt = 100,
    out: Annotated[pathlib.Path, typer.Option(help="Per-input results, written as each input finishes (JSON lines).")] = (
        pathlib.Path("certify.jsonl")
    ),
    resume: Annotated[bool, typer.Option(help="Skip inputs an interrupted run already wrote to --out.")] = False,
    as_json: JsonOpt = False,
    batch_size: BatchOpt = 32,
    bounds: BoundsOpt = (0.0, 1.0),
    unsafe: UnsafeOpt = False,
    logits: LogitsOpt = Logits.auto,
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
    vnnlib: Annotated[Optional[pathlib.Path], typer.Option(
        help="Decide a VNN-LIB property instead (any input box, unsafe outputs as linear constraints): prints sat "
        "(with a counterexample), unsat, unknown or timeout.")] = None,
    timeout: Annotated[float, typer.Option(min=0.0, help="With --vnnlib: seconds for the whole decision.")] = 60.0,
    result: Annotated[Optional[pathlib.Path], typer.Option(help="With --vnnlib: write the result file (the "
                                                            "competition's format) here.")] = None,
):
    """Certify that every input within eps of each example keeps its label (or find the certified radius).

    Radii are fractions of the input range by default and are printed in both units. With --vnnlib, decide a
    VNN-LIB property on the network (ONNX models keep their own input layout) instead.
    """
    import numpy as np

    if vnnlib is not None:
        from tfgeom.cli.vnncomp import certify_property

        return certify_property(model, vnnlib, timeout, result)
    if data is None:
        from tfgeom.errors import InputError

        raise InputError("certify needs --data (the inputs to certify) or --vnnlib (a property to decide)")

    gm = load_model(model, bounds, unsafe, batch_size, data, logits=logits)
    from tfgeom.execution.lock import file_lock
    from tfgeom.execution.store import RecordLog, content_digest
    from tfgeom.report.certificates import certify_all
    from tfgeom.report.runner import file_digest

    dataset = load_data(data, gm, limit, image_size)
    x = dataset.x
    pred = gm.predict(x)
    y = pred if dataset.y is None else dataset.y
    span = gm.bounds[1] - gm.bounds[0]
    eps_input = eps * span if eps_units is EpsUnits.fraction else eps
    settings = {"eps_input_units": None if radius else eps_input, "norm": norm.value, "method": method.value,
                "radius": radius, "intermediate": intermediate.value,
                "time_limit": time_limit if method is Method.bab else None}
    identity = {"model_sha256": file_digest(model), "data": data, "data_sha256": content_digest(x, y), "limit": limit,
                "bounds": list(gm.bounds), **settings}
    with file_lock(out):  # one writer per --out: a second run is refused, not interleaved
        fields = ("radius_input_units", "converged") if radius else ("certified", "min_margin", "status")
        log = RecordLog(out, identity, resume, fields)
        todo = [i for i in range(len(x)) if i not in log.records]
        # CROWN and MILP cost seconds per input: go one at a time so progress and results come per input
        # (on Ray: one input per task, a few per worker between writes).
        executor = make_executor(workers, ray_address, shard_size=None if method is Method.ibp else 1)
        chunk = batch_size if method is Method.ibp else 1
        if executor is not None:
            chunk *= 4 * (workers or 2)
        start, done = time.perf_counter(), len(x) - len(todo)
        if done:
            note(f"resuming: {done} of {len(x)} inputs already in {out}")
        how = (eps_input, norm.value, method.value, radius, intermediate.value, time_limit)
        with running(executor):
            certify_all(gm, x, y, log, chunk, how, executor, _reporter(len(x), done, chunk, out))
        records = [log.records[i] for i in range(len(x))]
        correct = pred == y
        summary = {"method": method.value, "norm": norm.value, "input_range": list(gm.bounds)}
        if radius:
            summary.update(summarize_radii([rec["radius_input_units"] for rec in records], correct, span,
                                           [rec["converged"] for rec in records]))
            ratios = [rec["deepfool_norm_input_units"] / rec["radius_input_units"] for rec, ok in zip(records, correct)
                      if ok and rec.get("deepfool_norm_input_units") is not None and rec["radius_input_units"] > 0]
            norms = [rec["deepfool_norm_input_units"] for rec in records if rec.get("deepfool_norm_input_units") is not None]
            summary["median_deepfool_norm_input_units"] = float(np.median(norms)) if norms else None
            summary["median_deepfool_over_certified_radius"] = float(np.median(ratios)) if ratios else None
        else:
            summary.update(summarize_certificates(
                np.array([rec["certified"] for rec in records]), [rec["min_margin"] for rec in records], correct,
                eps_input, span, [rec["status"] for rec in records] if method is Method.milp else None))
            if method is Method.bab:
                verdicts = [rec["status"] for rec in records]
                summary.update({"counterexamples": verdicts.count("counterexample"), "unknown": verdicts.count("unknown")})
        summary["seconds"] = time.perf_counter() - start
        summary["out"] = str(out)
        show(summary, f"Certification of {dataset.name}", as_json)


def _reporter(total, done, chunk, out):
    """`finished(count, todo)` for `certify_all`: a line per chunk, and after the first an estimate of the rest."""
    start = time.perf_counter()

    def finished(count, todo):
        elapsed = time.perf_counter() - start
        if count <= chunk and todo > count:
            left = elapsed / count * (todo - count)
            note(f"first {count} input(s) took {elapsed:.1f} s; about {left:.0f} s more for the other "
                 f"{todo - count} (results go to {out} as they finish; Ctrl-C keeps them, --resume continues)")
        err_console.print(f"{done + count}/{total} inputs, {elapsed:.1f} s", highlight=False)

    return finished

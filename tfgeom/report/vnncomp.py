"""VNN-COMP instances in, the competition's results out: one property at a time, resumable.

`decide_file(model, vnnlib, timeout)` loads (and converts, for ONNX) a network,
reads a VNN-LIB property and decides it (`tfgeom.verify.properties.decide`); a
`sat` answer's counterexample is checked once more by ONNX Runtime on the
original `.onnx` file before it is reported (else the answer is `unknown`).

`run_benchmark(instances, out)` runs a benchmark folder's `instances.csv`
(rows `model,property,timeout`, paths relative to the file) and appends one row
per instance to `out` in the results format of the competition's repositories
(`benchmark,onnx,vnnlib,prepare_time,result,run_time`), with each `sat`
instance's counterexample next to it (`<model>_<property>.counterexample`, the
competition's format). Rows already in `out` are skipped with `resume`. An
instance whose network or property tfgeom cannot read gets the result `error`
(the reason in its `Answer`'s text) and the run goes on.
"""
import csv
import os
import pathlib
import time
from typing import NamedTuple

import numpy as np

from tfgeom.errors import InputError, ModelError
from tfgeom.execution.store import write_atomic

FIELDS = ("benchmark", "onnx", "vnnlib", "prepare_time", "result", "run_time")


class Answer(NamedTuple):
    """One instance's answer.

    Fields:
        result: `"sat"`, `"unsat"`, `"unknown"`, `"timeout"` or (`run_benchmark` only) `"error"`.
        text: the result file's text (`tfgeom.verify.vnnlib.result_text`).
        prepare_seconds: loading and converting the model, reading the property.
        seconds: deciding it.
        phase: which phase decided (`"attack"`, `"bounds"`, `"bab"`, `"input_split"` or `""`).
    """

    result: str
    text: str
    prepare_seconds: float
    seconds: float
    phase: str


def _onnx_agrees(path, x, prop):
    """Whether ONNX Runtime's outputs at `x` (ONNX layout) are unsafe too."""
    import onnxruntime

    from tfgeom.verify import vnnlib

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    shape = [1] + [int(d) for d in np.shape(x)]
    y = session.run(None, {inp.name: np.asarray(x, np.float32).reshape(shape)})[0]
    return bool(vnnlib.violated(prop, np.asarray(y).reshape(1, -1))[0]), y.reshape(-1)


def decide_file(model, vnnlib_path, timeout, cache=None):
    """Decide the property `vnnlib_path` on the network `model` (a path) within `timeout` seconds: an `Answer`.

    Args:
        cache: a dict reused across calls so that each network is loaded once. Defaults to `None`.
    """
    from tfgeom.model import GeometryModel
    from tfgeom.verify import properties, vnnlib

    start = time.perf_counter()
    prop = vnnlib.parse(vnnlib_path)
    cache = {} if cache is None else cache
    key = os.fspath(model)
    if key not in cache:
        low, high = float(prop.lower.min()), float(prop.upper.max())
        cache[key] = GeometryModel(key, bounds=(low, high if high > low else low + 1.0))
    gm = cache[key]
    if int(np.prod(gm.input_shape)) != len(prop.lower) or gm.num_classes != prop.outputs:
        raise InputError(f"{os.fspath(vnnlib_path)!r} declares {len(prop.lower)} inputs and {prop.outputs} outputs; "
                         f"the network {key!r} has {int(np.prod(gm.input_shape))} and {gm.num_classes}")
    prepared = time.perf_counter() - start
    decision = properties.decide(gm, prop, timeout=max(0.0, timeout - prepared))
    verdict, x, y = decision.verdict, decision.counterexample, decision.outputs
    if verdict == "sat" and key.endswith(".onnx"):
        agrees, y = _onnx_agrees(key, x, prop)
        if not agrees:  # our forward pass and ONNX Runtime's disagree at the boundary: do not claim it
            verdict = "unknown"
    return Answer(verdict, vnnlib.result_text(verdict, x, y), prepared, decision.seconds, decision.phase)


def read_instances(path):
    """`[(model, property, timeout)]` of an `instances.csv`, paths resolved against its folder."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise InputError(f"instances file {str(path)!r} does not exist; pass a benchmark's instances.csv")
    rows = []
    with open(path, newline="") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 3:
                raise InputError(f"{str(path)!r} line {n}: expected model,property,timeout; got {','.join(row)!r}")
            try:
                timeout = float(row[2])
            except ValueError:
                raise InputError(f"{str(path)!r} line {n}: timeout {row[2]!r} is not a number") from None
            model, prop = (path.parent / r.strip() for r in row[:2])
            for file in (model, prop):
                if not file.is_file():
                    raise InputError(f"{str(path)!r} line {n}: {str(file)!r} does not exist (unpack the "
                                     "benchmark's .gz files first: gunzip -r onnx vnnlib)")
            rows.append((model, prop, timeout))
    return rows


def _done(out):
    if not out.exists():
        return set()
    with open(out, newline="") as f:
        return {(r["onnx"], r["vnnlib"]) for r in csv.DictReader(f)}


def run_benchmark(instances, out, resume=False, timeout_scale=1.0, on_answer=None, benchmark=None):
    """Run every instance of `instances` (module docstring); returns `{result: count}` over the instances run.

    Args:
        instances: a benchmark's `instances.csv`.
        out: the results CSV (appended to; created with its header).
        resume: skip instances `out` already answers. Defaults to `False` (an existing `out` is refused).
        timeout_scale: multiply every instance's timeout (e.g. 0.1 for a quick pass). Defaults to `1.0`.
        on_answer: called with `(model, property, Answer)` after each instance.
        benchmark: the results' benchmark column. Defaults to `None`: the name of the folder of `instances`.
    """
    out = pathlib.Path(out)
    rows = read_instances(instances)
    if out.exists() and not resume:
        raise InputError(f"{str(out)!r} exists; pass --resume to continue it or choose another --out")
    done = _done(out) if resume else set()
    benchmark = benchmark or pathlib.Path(instances).resolve().parent.name
    counts, cache = {}, {}
    if not out.exists():
        write_atomic(out, ",".join(FIELDS) + "\n")
    for model, prop, timeout in rows:
        names = (os.fspath(model), os.fspath(prop))
        if names in done:
            continue
        try:
            answer = decide_file(model, prop, timeout * timeout_scale, cache)
        except (InputError, ModelError) as err:  # one instance tfgeom cannot read must not end the whole run
            answer = Answer("error", str(err), 0.0, 0.0, "")
        if answer.result == "sat":
            write_atomic(out.parent / f"{model.stem}_{prop.stem}.counterexample", answer.text)
        with open(out, "a", newline="") as f:
            csv.writer(f).writerow([benchmark, *names, f"{answer.prepare_seconds:.3f}", answer.result,
                                    f"{answer.seconds:.3f}"])
        counts[answer.result] = counts.get(answer.result, 0) + 1
        if on_answer is not None:
            on_answer(model, prop, answer)
    return counts

"""The VNN-COMP commands: one VNN-LIB property (`certify --vnnlib`) and a benchmark's instances (`vnncomp`)."""
import pathlib

import typer
from typing_extensions import Annotated

from tfgeom.cli.console import cli_errors, err_console, show
from tfgeom.cli.loading import check_paths, check_writable, load_tensorflow


def certify_property(model, vnnlib, timeout, out):
    """`tfgeom certify MODEL --vnnlib P`: decide the property, print the verdict, write the result file."""
    check_paths(model)
    if not pathlib.Path(vnnlib).is_file():
        from tfgeom.errors import InputError

        raise InputError(f"VNN-LIB file {str(vnnlib)!r} does not exist")
    if out is not None:
        check_writable(out)
    load_tensorflow()
    from tfgeom.execution.store import write_atomic
    from tfgeom.report.vnncomp import decide_file

    answer = decide_file(model, vnnlib, timeout)
    if out is not None:
        write_atomic(out, answer.text)
    err_console.print(f"{answer.result} (decided by {answer.phase or 'nothing'}; {answer.prepare_seconds:.1f} s to "
                      f"load, {answer.seconds:.1f} s to decide)", highlight=False, soft_wrap=True)
    print(answer.text, end="")  # the competition's result text on stdout


@cli_errors
def vnncomp(
    instances: Annotated[pathlib.Path, typer.Argument(help="A VNN-COMP benchmark's instances.csv (model,property,"
                                                           "timeout per line, paths relative to it).")],
    out: Annotated[pathlib.Path, typer.Option("--out", "-o", help="Results CSV in the competition's format; "
                                              "counterexamples are written next to it.")] = pathlib.Path(
        "results.csv"),
    resume: Annotated[bool, typer.Option(help="Skip the instances --out already answers.")] = False,
    timeout_scale: Annotated[float, typer.Option(min=0.0, help="Multiply every instance's timeout (e.g. 0.1 "
                                                  "for a quick pass).")] = 1.0,
):
    """Decide every instance of a VNN-COMP benchmark (ONNX networks, VNN-LIB properties), resumably."""
    check_writable(out)
    load_tensorflow()
    from tfgeom.report.vnncomp import run_benchmark

    def told(model, prop, answer):
        why = f": {answer.text}" if answer.result == "error" else ""
        err_console.print(f"{model.name} {prop.name}: {answer.result} ({answer.phase or '-'}, "
                          f"{answer.seconds:.1f} s){why}", highlight=False, soft_wrap=True)

    counts = run_benchmark(instances, out, resume=resume, timeout_scale=timeout_scale, on_answer=told)
    decided = counts.get("sat", 0) + counts.get("unsat", 0)
    show({"instances_run": sum(counts.values()), "decided": decided, **{k: counts.get(k, 0) for k in
          ("sat", "unsat", "unknown", "timeout", "error")}}, f"VNN-COMP results: {out}")

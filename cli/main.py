"""The `tfgeom` command line: parse, call the library, print.

Errors in the user's input print one line on stderr and exit with code 2;
`tfgeom --debug ...` shows the traceback instead. One module per command
group, wired here: `measure` (info, deepfool, curvature, hull, connect,
detect), `certify`, `vnncomp` (VNN-LIB properties and VNN-COMP benchmarks),
`report` (analyze, claims), `compare`, `demo`; `options`, `console`
and `loading` are what they share. Nothing here imports TensorFlow until a
command runs.
"""
import sys
from typing import List, Optional

import typer
import typer.core
from typing_extensions import Annotated

from tfgeom.cli import certify as certify_command
from tfgeom.cli import compare as compare_command
from tfgeom.cli import demo as demo_command
from tfgeom.cli import measure, report
from tfgeom.cli import vnncomp as vnncomp_command
from tfgeom.cli.console import INTERRUPTED, STATE, err_console
from tfgeom.cli.options import ANALYSES

__all__ = ["ANALYSES", "app", "main"]  # ANALYSES: the list `analyze --help` shows


class OneLineErrors(typer.core.TyperGroup):
    """Option and usage errors come out as one line like tfgeom's own (exit 2), not a boxed panel."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except typer.Abort:
            err_console.print(INTERRUPTED, highlight=False, soft_wrap=True)
            sys.exit(130)
        except Exception as err:
            # Click's (or Typer's vendored Click's) usage errors: matched by shape, so either works.
            if not (hasattr(err, "format_message") and hasattr(err, "exit_code")):
                raise
            if type(err).__name__ == "NoArgsIsHelpError":
                err.show()
                sys.exit(err.exit_code)
            ctx = getattr(err, "ctx", None)
            hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
            err_console.print(f"[bold red]error:[/] {err.format_message()}{hint}", highlight=False, soft_wrap=True)
            sys.exit(err.exit_code)
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Measure the geometry of a trained Keras classifier.",
)


def _print_version(value):
    if value:
        from tfgeom import __version__

        print(f"tfgeom {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors (implies --verbose).")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="Let TensorFlow's own log lines through.")] = False,
    imports: Annotated[Optional[List[str]], typer.Option(
        "--import", help="Module or .py file to import before loading the model, e.g. the one that registers "
        "your custom layers or subclassed model (repeatable).")] = None,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
):
    """Measure the geometry of a trained Keras classifier."""
    STATE["debug"] = debug
    STATE["imports"] = list(imports or [])
    from tfgeom.runtime import backend

    backend.set_verbose(debug or verbose)


for command in (measure.info, measure.deepfool, measure.curvature, measure.hull, measure.connect, measure.detect,
                certify_command.certify, vnncomp_command.vnncomp, report.analyze, compare_command.compare, report.claims,
                demo_command.demo):
    app.command()(command)


def main():
    """Console-script entry point."""
    app()

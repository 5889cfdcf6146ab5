"""The CLI's consoles, errors and progress: one line per error (exit 2), tables, notes, progress bars."""
import functools
import json
import time

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

INTERRUPTED = "interrupted; finished results are kept (rerun the same command with --resume to continue)"

out_console = Console()
err_console = Console(stderr=True)
STATE = {"debug": False, "imports": []}  # set by the app's callback: --debug, --import


def fail(message):
    err_console.print(f"[bold red]error:[/] {escape(str(message))}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _os_error(err):
    """One line for an operating-system error: what, on which file, and what to do."""
    import errno

    where = f" ({err.filename})" if err.filename else ""
    if err.errno == errno.ENOSPC:
        return f"no space left on the device{where}; free some space or write to another --out (--resume continues)"
    return f"{err.strerror or err}{where}"


def cli_errors(command):
    """Turn tfgeom's errors into one line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from tfgeom.errors import TfgeomError

        try:
            return command(*args, **kwargs)
        except (TfgeomError, OSError) as err:
            if STATE["debug"]:
                raise
            fail(str(err) if isinstance(err, TfgeomError) else _os_error(err))
        except KeyboardInterrupt:
            # caught here, inside the command: Typer would turn it into a silent exit 130
            if STATE["debug"]:
                raise
            err_console.print(INTERRUPTED, highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None

    return wrapper


class LineProgress:
    """Progress for logs and cluster jobs (stdout not a terminal): a line when a task starts, at each
    further 10% of it, and when it ends, with the time since the command started."""

    def __init__(self, console):
        self.console, self.start, self.shown = console, time.perf_counter(), {}

    def __call__(self, description, done, total):
        if description.startswith("section "):  # the rich bar has no use for these; a log does
            step = 10 if done >= total else 0
        else:
            step = 10 * done // total if total else 10
        if self.shown.get(description, -1) >= step:
            return
        self.shown[description] = step
        elapsed = time.perf_counter() - self.start
        what = "started" if done == 0 else ("done" if done >= total else f"{done}/{total}")
        self.console.print(f"[{elapsed:7.1f} s] {description}: {what}", highlight=False, soft_wrap=True)


def progress_bar():
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )


def progress_callback(progress):
    if progress.disable:
        return LineProgress(err_console)
    tasks = {}

    def update(description, done, total):
        if description.startswith("section "):
            return
        if description not in tasks:
            tasks[description] = progress.add_task(description, total=total)
        progress.update(tasks[description], completed=done)

    return update


def show(summary, title, as_json=False):
    """Print a flat summary as JSON or as a two-column rich table (lists only in JSON)."""
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    table = Table(title=escape(str(title)), show_header=False)  # titles and cells may hold user text: no markup
    for key, value in summary.items():
        if isinstance(value, list) and len(value) <= 8 and all(not isinstance(v, (list, dict)) for v in value):
            table.add_row(escape(str(key)), escape(", ".join(cell(v) for v in value)))
        elif not isinstance(value, (list, dict)):
            table.add_row(escape(str(key)), escape(cell(value)))
    out_console.print(table)


def cell(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def note(message):
    err_console.print(f"[yellow]note:[/] {escape(str(message))}", highlight=False, soft_wrap=True)

"""`tfgeom compare`: several models analysed on the same inputs, compared pairwise with paired intervals."""
import pathlib
from typing import List, Optional

import typer
from rich.table import Table
from typing_extensions import Annotated

from tfgeom.errors import InputError
from tfgeom.cli.console import cli_errors, out_console
from tfgeom.cli.loading import load_model
from tfgeom.cli.options import (BatchOpt, BoundsOpt, ConfigOpt, DataOpt, ImageSizeOpt, LimitOpt, Logits, LogitsOpt,
                                OnlyOpt, RayAddressOpt, ResumeOpt, SeedOpt, SetOpt, SplitOpt, TrainDataOpt,
                                UnsafeOpt, WorkersOpt)
from tfgeom.cli.report import analyze_into, prepare

COLOURS = {"holds": "green", "does not hold": "red", "inconclusive": "yellow"}


def model_names(models, names):
    """The names given with --names (comma-separated), else the files' stems (numbered where they clash)."""
    if names:
        given = [n.strip() for n in names.split(",")]
        if len(given) != len(models) or len(set(given)) != len(given) or not all(given):
            raise InputError(f"--names must give {len(models)} distinct names, one per model; got {names!r}")
        return given
    stems = [pathlib.Path(m).stem for m in models]
    return stems if len(set(stems)) == len(stems) else [f"{s}_{i}" for i, s in enumerate(stems)]


def show_comparison(comparison):
    """Per compared model: the comparison claims, then the paired measures."""
    from tfgeom.report.runner import interval_text

    for name in comparison.names[1:]:
        pair = comparison.pairs[name]
        table = Table(title=f"{name} against {comparison.names[0]}: comparison claims (robust vs other)")
        for column in ("claim", "estimate", "n", "verdict"):
            table.add_column(column)
        for c in pair["claims"]:
            est = interval_text({"value": c["estimate"], "low": c["low"], "high": c["high"]})
            table.add_row(c["key"], est, str(c["examples"]), f"[{COLOURS.get(c['verdict'], 'white')}]{c['verdict']}[/]")
        out_console.print(table)
        table = Table(title=f"{name} against {comparison.names[0]}: paired measures [95% interval]")
        for column in ("measure", "estimate", "n", "resampling"):
            table.add_column(column)
        for row in pair["rows"].values():
            table.add_row(row["label"], interval_text(row), str(row["n"]), "paired" if row["paired"] else "unpaired")
        out_console.print(table)


@cli_errors
def compare(
    models: Annotated[List[pathlib.Path], typer.Argument(help="Two or more model files (.keras, .h5, SavedModel "
                                                         "folder, .onnx); the first is the reference.")],
    data: DataOpt,
    names: Annotated[Optional[str], typer.Option(help="Comma-separated names of the models (default: their file "
                                                 "names), e.g. standard,robust.")] = None,
    image_size: ImageSizeOpt = None,
    train_data: TrainDataOpt = None,
    split: SplitOpt = True,
    out: Annotated[pathlib.Path, typer.Option("--out", "-o", help="Folder for compare.json/html and one report "
                                              "folder per model.")] = pathlib.Path("tfgeom-compare"),
    only: OnlyOpt = None,
    set_: SetOpt = None,
    config: ConfigOpt = None,
    limit: LimitOpt = 500,
    seed: SeedOpt = 0,
    resume: ResumeOpt = False,
    batch_size: BatchOpt = 128,
    bounds: BoundsOpt = (0.0, 1.0),
    unsafe: UnsafeOpt = False,
    logits: LogitsOpt = Logits.auto,
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
):
    """Analyse every model on the same inputs and compare each with the first: paired differences with bootstrap
    intervals over examples, the comparison claims, overlaid plots (compare.json, compare.html)."""
    from tfgeom.report.comparison import check_compatible
    from tfgeom.report.comparison import compare as run_comparison
    from tfgeom.report.runner import file_digest

    if len(models) < 2:
        raise InputError("compare needs at least two models")
    labels = model_names(models, names)
    gm, dataset, identity, settings, executor = prepare(models[0], data, image_size, train_data, split, only, set_,
                                                        config, limit, seed, batch_size, bounds, unsafe, logits,
                                                        workers, ray_address)
    loaded = [gm] + [load_model(m, bounds, unsafe, batch_size, data, logits=logits) for m in models[1:]]
    check_compatible(loaded, labels)  # before any analysis: same input shape and classes
    identities = {id(g): dict(identity, model_sha256=file_digest(m)) for g, m in zip(loaded, models)}

    def run(model, inputs, folder):
        return analyze_into(model, inputs, folder, only, seed, resume, identities[id(model)], settings, executor,
                            sections=False)

    comparison = run_comparison(loaded, dataset, out, labels, seed, run=run)
    show_comparison(comparison)
    print(f"comparison: {out / 'compare.html'} and {out / 'compare.json'}")

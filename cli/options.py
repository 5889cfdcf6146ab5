"""Options and choices shared by the commands (typed with `Annotated`, choices as enums)."""
import enum
import pathlib
from typing import List, Optional, Tuple

import typer
from typing_extensions import Annotated

from tfgeom.analyses import names as analysis_names  # finds the analyses' modules, imports none

ANALYSES = ", ".join(analysis_names())  # the registry's modules, found without importing them

class Norm(str, enum.Enum):
    l2 = "l2"
    linf = "linf"


ModelArg = Annotated[pathlib.Path, typer.Argument(
    help="Saved Keras model (.keras or .h5), or an ONNX classifier (.onnx; the extra tfgeom[onnx]).")]
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
OnlyOpt = Annotated[Optional[List[str]], typer.Option(
    help=f"Run only these analyses (repeatable or comma-separated): {ANALYSES}.")]
SeedOpt = Annotated[int, typer.Option(help="Seed for random choices.")]
ResumeOpt = Annotated[bool, typer.Option(
    help="Keep the sections an interrupted run already finished with the same settings.")]
ConfigOpt = Annotated[Optional[pathlib.Path], typer.Option(
    help="TOML file with a table per analysis ([curvature] points = 200); --set wins over it.")]


class Hvp(str, enum.Enum):
    auto = "auto"
    exact = "exact"
    finite_difference = "finite-difference"


class At(str, enum.Enum):
    boundary = "boundary"
    before = "0.8"


class Attack(str, enum.Enum):
    deepfool = "deepfool"
    deepfool_linf = "deepfool-linf"
    fgsm = "fgsm"
    pgd = "pgd"


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

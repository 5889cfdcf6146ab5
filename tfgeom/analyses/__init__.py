"""The registry of analyses that `tfgeom analyze` runs.

An analysis is a function `run(context) -> dict` registered under a name with
`@register(name, title)`. The dict is JSON-ready and may hold:

- `summary`: `{label: number or text}` shown first in the report;
- `tables`: `[{"title", "columns", "rows"}]`;
- `figures`: `[{"title", "file"}]`, PNG files written into `context.out_dir`;
- anything else under other keys (kept in `report.json`).

Later work adds analyses by registering more functions in their own modules.
"""
from typing import Callable, NamedTuple, Optional

import numpy as np


class Context(NamedTuple):
    """What an analysis gets.

    Fields:
        gm: the `GeometryModel`.
        data: the validated `Dataset` (already cut to `limit` examples).
        out_dir: folder for figures and arrays (a `pathlib.Path`).
        seed: seed for any randomness.
        progress: `progress(description, done, total)` or None.
    """

    gm: object
    data: object
    out_dir: object
    seed: int
    progress: Optional[Callable[[str, int, int], None]]


class Analysis(NamedTuple):
    """A registered analysis.

    Fields:
        name: the report key and the name `--only` takes.
        title: the section's heading.
        run: `run(context) -> dict`.
        intro: two or three sentences opening the section: what is measured,
            in which units, and how to read it.
    """

    name: str
    title: str
    run: Callable[[Context], dict]
    intro: str = ""


REGISTRY = {}


def register(name, title, intro=""):
    """Decorator adding `run(context) -> dict` to the registry under `name`."""

    def wrap(run):
        REGISTRY[name] = Analysis(name, title, run, " ".join(intro.split()))
        return run

    return wrap


def rng(context):
    """A NumPy generator seeded from the context."""
    return np.random.default_rng(context.seed)


# Importing a module registers its analyses; the order here is the report's order.
from tfgeom.analyses import deepfool  # noqa: E402,F401
from tfgeom.analyses import curvature  # noqa: E402,F401
from tfgeom.analyses import topology  # noqa: E402,F401
from tfgeom.analyses import feature_space  # noqa: E402,F401
from tfgeom.analyses import certification  # noqa: E402,F401

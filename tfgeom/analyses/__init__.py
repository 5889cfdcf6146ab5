"""The analyses `tfgeom analyze` runs: configured objects over a shared, memoised context.

An analysis is a small class, registered under its name with `@register`:

- `name`, `title`, `intro` (two or three sentences opening its report section);
- `Settings`: a `NamedTuple` of typed settings with defaults (changed with
  `--set name.key=value` or a TOML table `[name]`; see `tfgeom.analyses.settings`);
- `compute(context, settings) -> dict`: the measurements: `summary`
  (`{snake_case_key: value}`; display labels live in `tfgeom.report.labels`), other
  JSON-ready records, and under `data` whatever `present` needs that is not
  written to `report.json` (arrays, result tuples);
- `present(result, context, settings) -> dict`: what a reader sees, drawn
  from `compute`'s result only: `tables` (`[{"title", "columns", "rows"}]`)
  and `figures` (`[{"title", "file"}]`, PNGs in `context.out_dir`).

The `Context` computes shared work once per run: DeepFool L2 and Linf on the
analysed inputs (every analysis takes rows of them), predictions, features.
Each analysis lives in a module of this package named after it and
declares everything about itself there: its `position` in the report, its
settings, the display `labels` of its summary keys, the settings that
`scale` with the input size and those that count its `examples`. `REGISTRY` finds the modules (every module here
but the framework's own, `SUPPORT`) and imports them on first use, so that
importing this package stays cheap (no TensorFlow).
"""
import importlib
import pkgutil
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

SUPPORT = frozenset({"settings", "summaries", "plots"})  # modules of this package that are not analyses


def names():
    """The analyses' names (their modules'), found without importing them (sorted)."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.ispkg and m.name not in SUPPORT
                  and not m.name.startswith("_"))


class _Registry(Mapping):
    """`{name: analysis}` in report order (by `position`), filled by importing the modules on first use."""

    def __init__(self):
        self._analyses = {}
        self._loaded = False

    def add(self, analysis):
        self._analyses[analysis.name] = analysis

    def _load(self):
        if not self._loaded:
            for name in names():
                importlib.import_module(f"{__name__}.{name}")
            self._analyses = dict(sorted(self._analyses.items(), key=lambda item: item[1].position))
            self._loaded = True
        return self._analyses

    def __getitem__(self, name):
        return self._load()[name]

    def __iter__(self):
        return iter(self._load())

    def __len__(self):
        return len(self._load())


REGISTRY = _Registry()


class Analysis:
    """Base class of the analyses (see the module docstring)."""

    name = ""  # the report key, `--only` name and module name
    title = ""
    intro = ""
    position = 100  # place in the report (smaller first)
    CHOICES = {}  # allowed values of string settings
    labels = {}  # `{summary_key: display label}` of the keys its `compute` writes
    scaled = ()  # settings that scale with the input size (`tfgeom.analyses.settings.scaled`)
    examples = ()  # settings that count the examples its evidence has (`tfgeom.report.rounds` grows them)

    class Settings(NamedTuple):
        pass

    def check(self, settings):
        """Refuse settings the types alone cannot (raise `InputError` naming the key); called before any work."""

    def compute(self, context, settings):
        """The measurements (see the module docstring) for `context` with `settings`."""
        raise NotImplementedError

    def present(self, result, context, settings):
        """Tables and figures drawn from `compute`'s result. Defaults to none."""
        return {}


def register(cls):
    """Class decorator: instantiate the analysis and add it to `REGISTRY` under `cls.name`."""
    cls.intro = " ".join(cls.intro.split())
    REGISTRY.add(cls())
    return cls


class Context:
    """What an analysis gets: the model, the data, where to write, and shared work computed once.

    Args:
        gm: the `GeometryModel`.
        data: the validated `Dataset` (already cut to the examples analysed).
        out_dir: folder for figures and arrays (a `pathlib.Path`).
        seed: seed for any randomness.
        progress: `progress(description, done, total)` or None.
        executor: where per-example work runs (`tfgeom.execution.executor`); None: in this process.
    """

    def __init__(self, gm, data, out_dir, seed=0, progress=None, executor=None):
        self.gm = gm
        self.executor = executor
        self.data = data
        self.out_dir = out_dir
        self.seed = int(seed)
        self.progress = progress
        self._memo = {}
        self.seconds = {}  # {section: seconds} of the sections this report holds so far (set by the runner)

    def rng(self):
        """A NumPy generator seeded from the context (a fresh one per call: analyses are independent)."""
        return np.random.default_rng(self.seed)

    def tell(self, what, done, total):
        """Report progress if a callback was given."""
        if self.progress is not None:
            self.progress(what, done, total)

    def _once(self, key, compute):
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def deepfool(self, norm="l2", rows=slice(None)):
        """DeepFool (`"l2"` or `"linf"`) of the analysed inputs `data.x[rows]`: run once per norm for all inputs.

        Each input's attack is independent of the others in its batch, so rows
        of the whole run equal a run on those rows alone.
        """

        def run():
            def progress(done, total):
                self.tell(f"DeepFool {norm}", done, total)

            return self.gm.deepfool(self.data.x, norm=norm, progress=progress, executor=self.executor)

        return self._once(("deepfool", norm), run).rows(rows)

    def predictions(self):
        """`[N]` predicted labels of the analysed inputs."""
        return self._once("predictions", lambda: self.gm.runtime.predict(self.data.x))

    def labels(self):
        """`[N]` true labels where the data has them, else the predictions."""
        return self.predictions() if self.data.y is None else self.data.y

    def features(self):
        """`[N, D]` features of the analysed inputs (models with a feature split)."""
        return self._once("features", lambda: self.gm.features(self.data.x, executor=self.executor))

    def feature_space(self, max_train):
        """A `FeatureSpace` of the first `max_train` training points (built once per size)."""
        from tfgeom.features.feature_space import FeatureSpace

        return self._once(("feature_space", max_train),
                          lambda: FeatureSpace(self.gm, self.data.x_train[:max_train], self.data.y_train[:max_train]))


def image_like(x):
    """Whether inputs `[N, H, W, C]` can be drawn as images (1 or 3 channels)."""
    return x.ndim == 4 and x.shape[-1] in (1, 3)

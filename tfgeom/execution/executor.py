"""Executors: where the per-example work of an analysis runs.

Most of tfgeom's work splits by example: DeepFool of each input, curvature at
each boundary point, each connectivity pair, each certificate. A *stage* is
such a computation, declared by the module that defines it with `@stage(name)`
next to its function: `run(gm, start, **shard_and_params)` computes the rows
`start, start + 1, ...` of the caller's examples, and the executor merges the
shards' results in order (`concat`, or the stage's own `merge`). A core
function that takes `executor=` passes its stage's name to `run`; this module
runs what was declared and imports no domain module (a worker that does not
know a stage yet imports the module that declared it, `Stage.module`).

- `LocalExecutor` runs in this process (the default: the same calls as
  without an executor, no Ray import).
- `tfgeom.execution.ray.RayExecutor` runs shards on Ray actors, one model per
  actor.

Per-example inputs are cut into shards by `take`: arrays and lists by rows,
anything else by its own `rows(slice)` method; `length` counts examples by
`len`, or by an `examples` attribute where a result defines one (`None` for
results that hold rows for only some of the caller's examples, such as
`Curvatures`, which then do not count).

Both executors write each finished shard into a `ShardStore`
(`tfgeom.execution.store`, data-only files written atomically) when given
one, and read finished shards back instead of recomputing them, which is how
`tfgeom analyze --resume` continues an interrupted run.

Randomness inside a stage is derived from the seed and the example's index
(`example_rng`), never from the shard, so results do not depend on how the
work was split.
"""
import importlib
import os
from typing import Callable, NamedTuple

import numpy as np

from tfgeom.errors import InputError
from tfgeom.execution.store import ShardStore, digest


class Stage(NamedTuple):
    """A per-example computation.

    Fields:
        name: its unique name.
        module: the module that declared it (a worker imports it to find the stage).
        run: `run(gm, start, **shard_and_params) -> result` for one shard.
        merge: `merge([result, ...]) -> result` of the shards in order.
    """

    name: str
    module: str
    run: Callable
    merge: Callable


STAGES = {}


def stage(name, merge=None):
    """Decorator declaring `run` as the stage `name` (merge defaults to `concat`); returns `run` unchanged."""

    def register(run):
        if name in STAGES and STAGES[name].module != run.__module__:
            raise ValueError(f"stage {name!r} is declared twice ({STAGES[name].module}, {run.__module__})")
        STAGES[name] = Stage(name, run.__module__, run, merge or concat)
        return run

    return register


def lookup(name, module=None):
    """The stage `name`, importing `module` (the one that declared it) first if it is not known yet."""
    if name not in STAGES and module is not None:
        importlib.import_module(module)
    if name not in STAGES:
        raise InputError(f"no stage named {name!r}; stages: {sorted(STAGES)}")
    return STAGES[name]


def example_rng(seed, index):
    """The generator of example `index` under `seed` (the same whichever shard or worker runs it)."""
    return np.random.default_rng([int(seed), int(index)])


def per_example(value, n):
    """A scalar or `[n]` value as an `[n]` array (None stays None), so that it can be cut into shards."""
    return None if value is None else np.broadcast_to(np.asarray(value), (n,)).copy()


# -- splitting and merging -----------------------------------------------------


def take(value, rows):
    """Rows `rows` (a slice) of a per-example value: an array, a list, a result with `rows()`, or None."""
    if value is None:
        return None
    if hasattr(value, "rows"):
        return value.rows(rows)
    return value[rows]


def concat(results):
    """Results of consecutive shards joined along the example axis.

    Arrays and lists are concatenated; for a `NamedTuple` field by field, where
    fields that are not per-example (a norm name, a step) are taken from the
    first shard and `None` stays `None`.
    """
    first = results[0]
    if isinstance(first, np.ndarray):
        return np.concatenate(results)
    if isinstance(first, list):
        return [item for r in results for item in r]
    if isinstance(first, tuple) and hasattr(first, "_fields"):
        return type(first)(*[_join([getattr(r, f) for r in results]) for f in first._fields])
    raise TypeError(f"cannot merge results of type {type(first).__name__}")


def _join(values):
    if values[0] is None:
        return None
    if isinstance(values[0], np.ndarray) and values[0].ndim:
        return np.concatenate(values)
    if isinstance(values[0], list):
        return [item for v in values for item in v]
    return values[0]


def length(shard_inputs):
    """The number of examples of `{name: per-example value}` (all that count must agree)."""
    sizes = {name: _rows_of(v) for name, v in shard_inputs.items() if v is not None}
    sizes = {name: n for name, n in sizes.items() if n is not None}
    if not sizes or len(set(sizes.values())) != 1:
        raise InputError(f"per-example inputs must have the same number of rows; got {sizes}")
    return next(iter(sizes.values()))


def _rows_of(value):
    if hasattr(value, "examples"):
        return value.examples
    return len(value)


def plan(n, shard_size):
    """Slices covering `range(n)` in shards of `shard_size` examples."""
    return [slice(i, min(i + shard_size, n)) for i in range(0, n, max(1, int(shard_size)))]


# -- finished shards on disk ---------------------------------------------------


def shard_key(name, shard_inputs, params_digest, rows):
    """Digest of a shard's stage, inputs, parameters (their digest) and rows."""
    return digest({"stage": name, "inputs": shard_inputs, "params": params_digest, "rows": rows}).hexdigest()


# -- executors -------------------------------------------------------------------


class Executor:
    """Runs stages over shards of examples (see the module docstring).

    Args:
        shard_size: examples per shard. Defaults to `None`: chosen by the
            executor (all examples in one shard in process; about four shards
            per worker on Ray), rounded up to a multiple of the model's
            `batch_size` so that results equal one process's exactly.
        store: a `ShardStore` (or folder) for finished shards, or None.
    """

    def __init__(self, shard_size=None, store=None):
        self.shard_size = shard_size
        self.store = ShardStore(store) if isinstance(store, (str, os.PathLike)) else store
        self.computed = 0  # shards computed (not read back from the store) by this executor

    def default_shard_size(self, gm, n):
        return max(n, 1)

    def aligned(self, gm, size):
        """`size` rounded up to a multiple of the model's batch size.

        Compiled calls then see the same batches in a shard as in one process
        (float32 kernels round differently for different batch compositions,
        and Lanczos or bisection can amplify that), so results are identical.
        """
        batch = gm.batch_size
        return batch * max(1, -(-int(size) // batch))

    def map(self, gm, name, inputs, params=None, progress=None, keep=True):
        """Run stage `name` over the examples of `inputs` and merge the shards' results.

        Args:
            gm: the `GeometryModel` (the driver's; workers hold their own copy).
            name: a declared stage (`stage`).
            inputs: `{argument: per-example value}`; each is cut into shards (`take`).
            params: `{argument: value}` passed whole to every shard.
            progress: `progress(done_examples, total)` or None.
            keep: write finished shards to the store (if any). False for steps of an
                iteration (e.g. one Lanczos product), which are never resumed.
        """
        params = dict(params or {})
        store = self.store if keep else None
        n = length(inputs)
        if n == 0:
            return lookup(name).run(gm, 0, **inputs, **params)
        size = self.shard_size or self.aligned(gm, self.default_shard_size(gm, n))
        shards = plan(n, size)
        results, todo, keys = [None] * len(shards), [], {}
        fixed = digest(params).hexdigest() if store is not None else None
        for i, rows in enumerate(shards):
            shard = {k: take(v, rows) for k, v in inputs.items()}
            if store is not None:
                keys[i] = shard_key(name, shard, fixed, (rows.start, rows.stop))
                results[i] = store.load(name, rows, keys[i])
            if results[i] is None:
                todo.append((i, rows, shard))
        done = n - sum(shards[i].stop - shards[i].start for i, _, _ in todo)
        if progress is not None and done:
            progress(done, n)

        def finished(i, result):
            nonlocal done
            results[i] = result
            self.computed += 1
            if store is not None:
                store.save(name, shards[i], keys[i], result)
            done += shards[i].stop - shards[i].start
            if progress is not None:
                progress(done, n)

        self.run_shards(gm, name, todo, params, finished)
        return lookup(name).merge(results)

    def run_shards(self, gm, name, todo, params, finished):
        """Compute `todo` (`[(i, rows, shard)]`), calling `finished(i, result)` as each completes."""
        raise NotImplementedError

    def close(self):
        """Release workers (nothing in process)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class LocalExecutor(Executor):
    """Shards run one after the other in this process (one shard of all examples unless `shard_size` is set)."""

    def run_shards(self, gm, name, todo, params, finished):
        for i, rows, shard in todo:
            finished(i, lookup(name).run(gm, rows.start, **shard, **params))


def run(gm, name, inputs, params=None, executor=None, progress=None):
    """Stage `name` through `executor`, or directly in process when it is None (no shards, no store)."""
    if executor is None:
        return lookup(name).run(gm, 0, **inputs, **dict(params or {}))
    if not isinstance(executor, Executor):
        raise InputError("executor must be a tfgeom executor (LocalExecutor, RayExecutor); "
                         f"got {type(executor).__name__}")
    return executor.map(gm, name, inputs, params, progress)

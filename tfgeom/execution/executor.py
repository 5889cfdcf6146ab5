"""Executors: where the per-example work of an analysis runs.

Most of tfgeom's work splits by example: DeepFool of each input, curvature at
each boundary point, each connectivity pair, each certificate. A *stage* is
such a computation, registered here by name (`STAGES`) so that a worker
process can run it from the name alone: `run(gm, start, **shard)` computes the
rows `start, start + 1, ...` of the caller's examples, and the executor
concatenates the shards' results in order (`merge`).

- `LocalExecutor` runs in this process (the default: the same calls as
  without an executor, no Ray import).
- `tfgeom.execution.ray.RayExecutor` runs shards on Ray actors, one model per
  actor.

Both write each finished shard into a `ShardStore` when given one (atomic
writes), and read finished shards back instead of recomputing them, which is
how `tfgeom analyze --resume` continues an interrupted run.

Randomness inside a stage is derived from the seed and the example's index
(`example_rng`), never from the shard, so results do not depend on how the
work was split.
"""
import hashlib
import os
import pathlib
import pickle
from typing import Callable, NamedTuple

import numpy as np

from tfgeom.errors import InputError


class Stage(NamedTuple):
    """A per-example computation.

    Fields:
        run: `run(gm, start, **shard_and_params) -> result` for one shard.
        merge: `merge([result, ...]) -> result` of the shards in order.
    """

    run: Callable
    merge: Callable


STAGES = {}


def stage(name, merge=None):
    """Decorator registering `run` as the stage `name` (merge defaults to `concat`)."""

    def register(run):
        STAGES[name] = Stage(run, merge or concat)
        return run

    return register


def example_rng(seed, index):
    """The generator of example `index` under `seed` (the same whichever shard or worker runs it)."""
    return np.random.default_rng([int(seed), int(index)])


# -- splitting and merging -----------------------------------------------------


def take(value, rows):
    """Rows `rows` (a slice) of a per-example value: an array, a list, a result with `rows()`, or None.

    `Curvatures` keep the rows whose `index` falls in the slice, renumbered from its start.
    """
    from tfgeom.geometry.curvature import Curvatures

    if value is None:
        return None
    if isinstance(value, Curvatures):
        keep = (value.index >= rows.start) & (value.index < rows.stop)
        return value._replace(index=value.index[keep] - rows.start, values=value.values[keep],
                              directions=value.directions[keep], gradient_norm=value.gradient_norm[keep])
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
    """The number of examples of `{name: per-example value}` (all must agree)."""
    from tfgeom.geometry.curvature import Curvatures

    # Curvatures hold rows only for some inputs (their `index`): the other inputs give the count
    sizes = {name: _rows_of(v) for name, v in shard_inputs.items() if v is not None and not isinstance(v, Curvatures)}
    if not sizes or len(set(sizes.values())) != 1:
        raise InputError(f"per-example inputs must have the same number of rows; got {sizes}")
    return next(iter(sizes.values()))


def _rows_of(value):
    if hasattr(value, "x_adv"):
        return len(value.x_adv)
    return len(value)


def plan(n, shard_size):
    """Slices covering `range(n)` in shards of `shard_size` examples."""
    return [slice(i, min(i + shard_size, n)) for i in range(0, n, max(1, int(shard_size)))]


# -- finished shards on disk ---------------------------------------------------


def digest(value, h=None):
    """SHA-256 of a nested value of arrays, numbers, strings and tuples (identifies a shard's work)."""
    h = h or hashlib.sha256()
    if isinstance(value, np.ndarray):
        h.update(f"{value.dtype}{value.shape}".encode())
        h.update(np.ascontiguousarray(value).tobytes())
    elif isinstance(value, dict):
        for key in sorted(value):
            h.update(str(key).encode())
            digest(value[key], h)
    elif isinstance(value, (list, tuple)):
        h.update(f"{type(value).__name__}{len(value)}".encode())
        for v in value:
            digest(v, h)
    else:
        h.update(repr(value).encode())
    return h


class ShardStore:
    """Finished shards of stages in a folder: one pickle per shard, written atomically.

    A shard's file name holds the stage, its rows and a digest of its inputs
    and parameters, so a shard is reused only for the very same work.

    Args:
        folder: where the shard files go (created).
    """

    def __init__(self, folder):
        self.folder = pathlib.Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.written = 0  # shards written by this store (tests count recomputed shards with it)

    def path(self, name, rows, key):
        return self.folder / f"{name}-{rows.start:07d}-{rows.stop:07d}-{key[:16]}.pkl"

    def load(self, name, rows, key):
        """The stored result of this shard, or None."""
        path = self.path(name, rows, key)
        if not path.exists():
            return None
        with open(path, "rb") as f:
            return pickle.load(f)

    def save(self, name, rows, key, result):
        path = self.path(name, rows, key)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
        self.written += 1


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
            name: a key of `STAGES`.
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
            return STAGES[name].run(gm, 0, **inputs, **params)
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
        return STAGES[name].merge(results)

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
            finished(i, STAGES[name].run(gm, rows.start, **shard, **params))


def run(gm, name, inputs, params=None, executor=None, progress=None):
    """Stage `name` through `executor`, or directly in process when it is None (no shards, no store)."""
    if executor is None:
        return STAGES[name].run(gm, 0, **inputs, **dict(params or {}))
    if not isinstance(executor, Executor):
        raise InputError("executor must be a tfgeom executor (LocalExecutor, RayExecutor); "
                         f"got {type(executor).__name__}")
    return executor.map(gm, name, inputs, params, progress)


# -- the stages --------------------------------------------------------------------


@stage("features")
def _features(gm, start, x):
    return gm.runtime.features(x)


@stage("logits")
def _logits(gm, start, x):
    return gm.runtime.logits(x)


@stage("deepfool")
def _deepfool(gm, start, x, targets=None, **params):
    from tfgeom.geometry.deepfool import deepfool

    return deepfool(gm, x, targets=targets, **params)


@stage("attack")
def _attack(gm, start, x, name, eps, targets=None, **params):
    from tfgeom.geometry import attacks

    return getattr(attacks, name)(gm, x, eps, targets=targets, **params)


@stage("principal_curvatures")
def _curvatures(gm, start, x, attack=None, **params):
    from tfgeom.geometry.curvature import principal_curvatures

    result = principal_curvatures(gm, x, attack=attack, start=start, **params)
    return result._replace(index=result.index + start)


@stage("boundary_sections")
def _sections(gm, start, x, attack=None, curvatures=None, **params):
    from tfgeom.geometry.sections import boundary_sections

    return boundary_sections(gm, x, attack=attack, curvatures=curvatures, start=start, **params)


@stage("connect")
def _connect(gm, start, x1, x2, **params):
    from tfgeom.geometry.connectivity import connect

    return connect(gm, x1, x2, **params)


@stage("detection_scores")
def _detection_scores(gm, start, x, detector):
    from tfgeom.geometry.detection import CurvatureDetector

    return CurvatureDetector(gm, **detector).curvatures(x)  # directions travel with the configuration


@stage("certify")
def _certify(gm, start, x, eps, cls=None, **params):
    from tfgeom.verify.certification import certify

    return certify(gm, x, eps, cls=cls, **params)


@stage("certified_radius")
def _certified_radius(gm, start, x, cls=None, upper=None, lower=None, attack=None, **params):
    from tfgeom.verify.certification import certified_radius

    return certified_radius(gm, x, cls=cls, upper=upper, lower=lower, attack=attack, **params)


@stage("subspace_products", merge=sum)
def _subspace_products(gm, start, z, coeffs, normals, gnorms, v, hvp, step, chunk):
    from tfgeom.geometry.subspace import summed_products

    return summed_products(gm, z, coeffs, normals, gnorms, v, hvp, step, chunk)


@stage("hull_distance")
def _hull_distance(gm, start, query, points, **params):
    from tfgeom.features.hull import HullEngine

    return HullEngine(points, **params).distance(query)

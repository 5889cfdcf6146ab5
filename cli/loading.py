"""Reading what a command analyses: paths checked before TensorFlow, the model, the data, the executor."""
import contextlib
import os
import pathlib

from tfgeom.cli.console import STATE, note
from tfgeom.cli.options import Logits


def check_paths(model=None, data=None):
    """File and data-source errors, answered before TensorFlow is imported."""
    from tfgeom.runtime.data import check_source
    from tfgeom.runtime.loading import check_path

    if model is not None:
        check_path(model)
    if data is not None:
        check_source(data)


def check_writable(path):
    """Refuse an output file whose folder does not exist (before any work, not after it)."""
    if path is None:
        return
    from tfgeom.errors import InputError

    folder = pathlib.Path(path).resolve().parent
    if not folder.is_dir():
        raise InputError(f"cannot write {path}: folder {folder} does not exist; create it or choose another --out")
    if not os.access(folder, os.W_OK):
        raise InputError(f"cannot write {path}: folder {folder} is not writable; choose another --out")


def load_tensorflow():
    """Import TensorFlow quietly (unless --verbose) and the user's --import modules."""
    from tfgeom.runtime import backend
    from tfgeom.runtime.loading import import_user_code

    backend.load()
    import_user_code(STATE["imports"])


def load_model(model, bounds, unsafe, batch_size=128, data=None, logits=Logits.auto):
    """The GeometryModel of a file: paths checked, TensorFlow and user code imported, then the model loaded."""
    check_paths(model, data)
    load_tensorflow()
    from tfgeom.model import GeometryModel

    return GeometryModel(str(model), bounds=bounds, safe_mode=not unsafe, batch_size=batch_size,
                         logits=logits.value)


def make_executor(workers, ray_address, shard_size=None):
    """A RayExecutor when --workers or --ray-address is given, else None (in process)."""
    if workers is None and ray_address is None:
        return None
    cores = os.cpu_count() or 1
    if ray_address is None and workers > cores:
        note(f"--workers {workers} capped at this machine's {cores} cores (more workers than cores only compete; "
             "join a cluster with --ray-address for more)")
        workers = cores
    from tfgeom.execution.ray import RayExecutor

    return RayExecutor(workers=workers, address=ray_address, shard_size=shard_size, imports=STATE["imports"])


@contextlib.contextmanager
def running(executor):
    """Close the executor (its actors, and the Ray runtime it started) however the command ends."""
    try:
        yield executor
    finally:
        if executor is not None:
            executor.close()


def read_data(source, gm, image_size):
    from tfgeom.runtime import data as tdata

    shape = gm.input_shape
    size = image_size or (shape[:2] if len(shape) == 3 else None)
    return tdata.load(source, image_size=size, channels=shape[-1] if len(shape) == 3 else None)


def load_data(data, gm, limit, image_size=None, train_data=None, split=False, seed=0):
    """Read, split (when asked and needed), check and cut the data; notes on stderr say what was chosen."""
    from tfgeom.runtime import data as tdata

    dataset = read_data(data, gm, image_size)
    train = read_data(train_data, gm, image_size) if train_data else None
    dataset = tdata.with_training(dataset, train, split=split, seed=seed)
    if dataset.note:
        note(dataset.note)
    dataset = tdata.validate(dataset, gm)
    if limit is not None and limit > len(dataset.x):
        note(f"--limit {limit} is more than the {len(dataset.x)} examples in {data}; using all {len(dataset.x)}")
    if limit is not None:
        dataset = dataset._replace(
            x=dataset.x[:limit], y=None if dataset.y is None else dataset.y[:limit]
        )
    return dataset

"""`RayExecutor`: per-example stages on Ray actors, one model per actor.

Install with `pip install "tfgeom[ray]"`. The driver reads the model file
(or saves an in-memory model) once and puts its bytes in Ray's object store;
each actor builds its own `GeometryModel` from them with the driver's options
(`safe_mode` included), then runs shards of a stage by name
(`tfgeom.execution.executor.STAGES`). On a cluster with GPUs each actor takes one GPU
(Ray sets `CUDA_VISIBLE_DEVICES`; tfgeom turns memory growth on before
TensorFlow touches the device); otherwise each takes `cpus_per_worker` cores
and TensorFlow's thread pools are sized to them.

Shards are handed out dynamically (one in flight per actor, the next to
whichever finishes first), finished shards are passed to the executor's
`ShardStore` as they complete, and an actor that dies is restarted by Ray and
its shard retried (`max_restarts`, `max_task_retries`); if Ray gives up, the
shard goes to another actor.
"""
import math
import os

from tfgeom.errors import InputError
from tfgeom.execution.executor import Executor, lookup

INSTALL_HINT = 'distributed runs need Ray: pip install "tfgeom[ray]"'
SHARDS_PER_WORKER = 4  # enough to balance uneven shards, few enough that each takes seconds or more


def import_ray():
    """The `ray` module, or an `InputError` saying how to install it."""
    try:
        import ray
    except ImportError:
        raise InputError(INSTALL_HINT) from None
    return ray


class _Worker:
    """A Ray actor holding one `GeometryModel` (built from the driver's recipe)."""

    def __init__(self, recipe, threads, imports):
        if threads:  # before TensorFlow initialises its thread pools
            os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(threads))
            os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
        from tfgeom.runtime import backend
        from tfgeom.runtime.loading import import_user_code

        tf = backend.load()  # GPU memory growth is turned on here, before the device is used
        if threads:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(1)
            except RuntimeError:  # already initialised (the environment variables above still apply)
                pass
        import_user_code(imports)
        self.gm = _build(recipe)

    def run(self, name, module, start, shard, params):
        return lookup(name, module).run(self.gm, start, **shard, **params)

    def pid(self):
        return os.getpid()


def _probe(address, timeout=5.0):
    """Refuse in one line, within `timeout` seconds, an address `HOST:PORT` (or `ray://HOST:PORT`) where nothing
    listens (Ray itself retries for minutes); `auto` and other forms are left to Ray."""
    import socket

    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        raise InputError(f"no Ray cluster answers at {address} ({err.strerror or err}); start one with "
                         "`ray start --head` and pass its address, or use --workers N for a local runtime") from None


def _build(recipe):
    import tempfile

    from tfgeom.model import GeometryModel

    data, suffix, options = recipe
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model" + suffix)
        with open(path, "wb") as f:
            f.write(data)
        gm = GeometryModel(path, **options)
    gm.source = None  # the temporary file is gone; `recipe()` saves the model again if asked
    return gm


class RayExecutor(Executor):
    """Runs stages on Ray actors: a local Ray runtime with `workers` actors, or an existing cluster.

    Args:
        workers: actors to start. Defaults to `None`: one per GPU of the
            cluster, else one per `cpus_per_worker` cores.
        address: a Ray address (`"auto"`, `"ray://host:10001"`) to join.
            Defaults to `None`: start a local runtime (or use the one this
            process already started).
        cpus_per_worker: cores (and TensorFlow threads) per actor on CPU.
            Defaults to `1`.
        shard_size: examples per shard. Defaults to `None`: about four shards per actor.
        store: a `ShardStore` or folder for finished shards. Defaults to `None`.
        imports: modules or `.py` files with custom layers each actor imports
            before loading the model (as `tfgeom --import`). Defaults to `()`.
        max_retries: Ray restarts of a dead actor and retries of its task. Defaults to `3`.

    Example:
        >>> with RayExecutor(workers=2) as ex:  # doctest: +SKIP
        ...     result = gm.deepfool(x, executor=ex)
    """

    def __init__(self, workers=None, address=None, cpus_per_worker=1, shard_size=None, store=None, imports=(),
                 max_retries=3):
        super().__init__(shard_size, store)
        self.ray = import_ray()
        if workers is not None and int(workers) < 1:
            raise InputError(f"workers must be at least 1; got {workers}")
        self.requested = None if workers is None else int(workers)
        self.address = address
        self.cpus_per_worker = max(1, int(cpus_per_worker))
        self.imports = tuple(imports)
        self.max_retries = int(max_retries)
        self.actors = []
        self._recipe_of = None  # the GeometryModel the actors hold
        self._recipe_ref = None
        self._started = False

    # -- runtime and actors ---------------------------------------------------------

    def _init(self):
        ray = self.ray
        if ray.is_initialized():
            return
        if self.address is None:
            cpus = (self.requested or 1) * self.cpus_per_worker
            ray.init(num_cpus=max(cpus, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
            self._started = True
        else:
            _probe(self.address)
            ray.init(address=self.address, log_to_driver=False, configure_logging=False)

    def _plan_workers(self):
        resources = self.ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if self.requested:
            return self.requested, gpus > 0
        if gpus:
            return gpus, True
        return max(1, int(resources.get("CPU", 1)) // self.cpus_per_worker), False

    def _check_room(self, count, use_gpu):
        """Refuse actors the cluster cannot place now (Ray would wait for them forever)."""
        import time

        kind, need = ("GPU", count) if use_gpu else ("CPU", count * self.cpus_per_worker)
        deadline = time.monotonic() + 10.0  # actors just killed give their resources back asynchronously
        free = self.ray.available_resources()
        while free.get(kind, 0) < need and time.monotonic() < deadline:
            time.sleep(0.2)
            free = self.ray.available_resources()
        if free.get(kind, 0) < need:
            raise InputError(f"the Ray cluster has {free.get(kind, 0):g} free {kind}s and {count} workers need "
                             f"{need}; lower --workers (or cpus_per_worker) or free the cluster")

    def start(self, gm):
        """Start the actors with `gm`'s model (again only if a different model is asked for)."""
        if self.actors and self._recipe_of is gm:
            return
        self._init()
        self.close_actors()
        count, use_gpu = self._plan_workers()
        self._check_room(count, use_gpu)
        # kept referenced for the actors' lifetime: a restarted actor reads its constructor's arguments again
        self._recipe_ref = recipe = self.ray.put(gm.recipe())
        options = {"max_restarts": self.max_retries, "max_task_retries": self.max_retries}
        if use_gpu:
            options["num_gpus"] = 1
            threads = 0  # TensorFlow's defaults on a GPU worker
        else:
            options["num_cpus"] = self.cpus_per_worker
            threads = self.cpus_per_worker
        actor = self.ray.remote(**options)(_Worker)
        self.actors = [actor.remote(recipe, threads, self.imports) for _ in range(count)]
        self._recipe_of = gm

    @property
    def workers(self):
        """Number of actors (0 before the first stage)."""
        return len(self.actors)

    def default_shard_size(self, gm, n):
        return max(1, math.ceil(n / (SHARDS_PER_WORKER * max(1, len(self.actors) or self.requested or 1))))

    def map(self, gm, name, inputs, params=None, progress=None, keep=True):
        self.start(gm)
        return super().map(gm, name, inputs, params, progress, keep)

    def run_shards(self, gm, name, todo, params, finished):
        ray = self.ray
        params_ref = ray.put(params)  # large parameters (hull points, detector) go to the store once
        module = lookup(name).module  # the worker imports the module that declared the stage
        queue = list(todo)
        flight = {}  # object ref -> (actor index, task, attempts)

        def submit(a, task, attempts=0):
            i, rows, shard = task
            ref = self.actors[a].run.remote(name, module, rows.start, shard, params_ref)
            flight[ref] = (a, task, attempts)

        for a in range(min(len(self.actors), len(queue))):
            submit(a, queue.pop(0))
        while flight:
            ready, _ = ray.wait(list(flight), num_returns=1)
            ref = ready[0]
            a, task, attempts = flight.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError:
                if attempts >= self.max_retries:
                    raise
                # Ray gave up on the actor: hand the shard to another live one
                submit(self._other(a), task, attempts + 1)
                continue
            finished(task[0], result)
            if queue:
                submit(a, queue.pop(0))

    def _other(self, a):
        return (a + 1) % len(self.actors)

    def close_actors(self):
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        self._recipe_of = None

    def close(self):
        """Kill the actors, and shut down the Ray runtime if this executor started it."""
        self.close_actors()
        if self._started and self.ray.is_initialized():
            self.ray.shutdown()
            self._started = False

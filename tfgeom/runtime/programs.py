"""The runtime layer: a classifier's compiled programs, one program cache, batching.

Every analysis reaches the model through these public names: the logits and
feature functions (`logits_fn`, `features_fn`, uncompiled TensorFlow
functions to build programs from), compiled programs with fixed input
signatures (`program`), and NumPy helpers that run a compiled program over
batches (`logits`, `features`, `gradient`, `map`). Inputs reaching the
runtime are already validated: checking happens once, at the public boundary
(`GeometryModel` and the analysis functions' entry points).
"""
import numpy as np
import tensorflow as tf

from tfgeom.errors import ModelError
from tfgeom.runtime.validation import check_positive_int


class ProgramCache(dict):
    """Compiled programs by configuration key, each built once: tfgeom's one program cache.

    The runtime keeps one per model (`Runtime.programs`: logits, gradients,
    DeepFool, Lanczos...) and each `tfgeom.verify.graph.LayerGraph` one for its
    bound programs (IBP, CROWN passes, patches, alpha-CROWN, branch and
    bound); programs are freed with their owner. Keys name the configuration
    (`("lanczos", steps, k, hvp, step)`), never the data, so a program is
    traced once per configuration and reused for every batch.
    """

    def get_or_build(self, key, build):
        """The program under `key`, built by `build()` (returning the compiled program) the first time."""
        if key not in self:
            self[key] = build()
        return self[key]


class ProgramFunction:
    """A program's Python function as its own object, for `tf.function`: TensorFlow's retracing warning counts
    traces per function *code*, so the programs one closure builds (one per model, target node, row chunk,
    ...), each traced once or twice, would add up to a false "excessive retracing"; wrapped, each program is
    counted on its own."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        return self.fn(*args)


def expand_like(v, x):
    """`[S]` -> `[S, 1, ..., 1]` broadcastable against `x [S, ...]`."""
    return tf.reshape(v, tf.concat([tf.shape(v), tf.ones([tf.rank(x) - 1], tf.int32)], 0))


class Runtime:
    """Compiled programs of one classifier.

    Args:
        head: a `tfgeom.runtime.heads.Head` (logits function, feature split).
        input_shape: input shape without the batch dimension.
        batch_size: examples per compiled call unless a call says otherwise.

    Raises:
        ModelError: the logits are not `[batch, classes]` with at least 2 classes.
    """

    def __init__(self, head, input_shape, batch_size):
        self.head = head
        self.input_shape = tuple(input_shape)
        self.batch_size = check_positive_int("batch_size", batch_size)
        probe = head.logits_fn(tf.zeros([1, *self.input_shape]))
        if probe.shape.rank != 2 or probe.shape[1] < 2:
            raise ModelError(
                f"model output has shape {tuple(probe.shape)}; tfgeom needs a classifier with "
                "[batch, classes] output and at least 2 classes"
            )
        self.num_classes = int(probe.shape[1])
        self.programs = ProgramCache()  # owned here: freed with the model

    @property
    def logits_fn(self):
        """`[N, ...] -> [N, L]` pre-softmax scores (uncompiled; build programs from it)."""
        return self.head.logits_fn

    @property
    def features_fn(self):
        """`[N, ...] -> [N, D]` features at the split layer, or None."""
        return self.head.features_fn

    @property
    def input_dim(self):
        """`d`, the number of input components."""
        return int(np.prod(self.input_shape))

    def spec(self):
        """The `tf.TensorSpec` of a batch of inputs `[None, *input_shape]`."""
        return tf.TensorSpec([None, *self.input_shape], tf.float32)

    def program(self, key, build, input_signature):
        """A compiled program cached under `key` (one trace per configuration).

        Args:
            key: hashable name of the configuration.
            build: `() -> python function` building the program.
            input_signature: list of `tf.TensorSpec` (fixed: no retracing per batch size).
        """
        return self.programs.get_or_build(
            key, lambda: tf.function(ProgramFunction(build()), input_signature=input_signature))

    def batches(self, n, batch_size=None):
        """Slices covering `range(n)` in batches of `batch_size` (default: the runtime's)."""
        size = check_positive_int("batch_size", batch_size or self.batch_size)
        return [slice(i, min(i + size, n)) for i in range(0, n, size)]

    def map(self, program, arrays, batch_size=None, constants=()):
        """Run `program(*batch_of_arrays, *constants)` over batches; concatenate each output as NumPy.

        Returns a NumPy array (one output) or a tuple of arrays.
        """
        n = len(arrays[0])
        outs = []
        for s in self.batches(n, batch_size):
            out = program(*[tf.constant(a[s]) for a in arrays], *constants)
            outs.append([t.numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))])
        merged = tuple(np.concatenate(parts) for parts in zip(*outs))
        return merged[0] if len(merged) == 1 else merged

    # -- the basic programs ---------------------------------------------------

    def logits_program(self):
        """Compiled `x [N, ...] -> logits [N, L]`."""
        return self.program("logits", lambda: self.logits_fn, [self.spec()])

    def features_program(self):
        """Compiled `x [N, ...] -> features [N, D]`."""
        return self.program("features", lambda: self.features_fn, [self.spec()])

    def gradient_program(self):
        """Compiled `(x [N, ...], coeffs [N, L]) -> (logits [N, L], grad of sum_l coeffs f_l [N, ...])`."""

        def build():
            def gradient(x, coeffs):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    z = self.logits_fn(x)
                    objective = tf.reduce_sum(z * coeffs)
                return z, tape.gradient(objective, x)

            return gradient

        return self.program("gradient", build, [self.spec(), tf.TensorSpec([None, None], tf.float32)])

    def logits(self, x, batch_size=None):
        """Logits `[N, L]` of validated inputs `x [N, ...]`."""
        return self.map(self.logits_program(), [x], batch_size)

    def predict(self, x, batch_size=None):
        """Predicted labels `[N]` of validated inputs."""
        return self.logits(x, batch_size).argmax(axis=1).astype(np.int32)

    def agreement(self, x, batch_size=None):
        """Fraction of validated inputs whose score argmax equals the model's own prediction (1.0 when
        the scores are the model's output; below 1 when e.g. a final ReLU ties negative scores at 0)."""
        program = self.program("model_prediction", lambda: self.head.model_prediction, [self.spec()])
        own = self.map(program, [x], batch_size)
        return float(np.mean(own == self.predict(x, batch_size)))

    def features(self, x, batch_size=None):
        """Features `[N, D]` of validated inputs."""
        return self.map(self.features_program(), [x], batch_size)

    def gradient(self, x, coeffs, batch_size=None):
        """`(logits [N, L], gradient [N, ...])` of `sum_l coeffs[n, l] f_l(x_n)` for validated inputs."""
        return self.map(self.gradient_program(), [x, np.asarray(coeffs, np.float32)], batch_size)

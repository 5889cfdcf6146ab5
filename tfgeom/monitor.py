"""`GeometryMonitor`: decision-boundary geometry logged to TensorBoard while a model trains.

At the end of every `every`-th epoch the callback measures, on a fixed probe
set, and writes with `tf.summary` (scalars under `geometry/`, histograms of the
per-example values):

- `"deepfool"`: the median DeepFool L2 distance of the probe inputs;
- `"curvature"`: the `k` most positive and most negative principal curvatures
  of the boundary at the probe's DeepFool boundary points (their means over points);
- `"hull"`: the fraction of probe points inside the convex hull of reference
  (training) features;
- `"margins"`: the exact feature-space distance of each probe point to the
  boundary of its class region (closed form for an affine head).

The cost is the user's to set: probe size, `every`, `measures`, `curvature_k`.
The monitored model itself is read through a `GeometryModel` built once, so the
compiled programs are traced once and follow the weights as they train.
"""
import keras
import numpy as np
import tensorflow as tf

from tfgeom.errors import InputError
from tfgeom.features.feature_space import FeatureSpace, exact_regions
from tfgeom.runtime.validation import check_positive_int

MEASURES = ("deepfool", "curvature", "hull", "margins")


class GeometryMonitor(keras.callbacks.Callback):
    """Log boundary geometry on probe inputs to TensorBoard during `model.fit`.

    Args:
        x_probe: `[N, ...]` probe inputs (a few dozen: every measure scales with N).
        y_probe: `[N]` their labels (the hull and margin measures use the model's
            predictions; labels are logged as the probe's accuracy).
        every: measure every `every` epochs. Defaults to `1`.
        log_dir: TensorBoard log folder (a `geometry` writer is created inside).
        measures: any of `"deepfool"`, `"curvature"`, `"hull"`, `"margins"`.
            Defaults to all four.
        x_reference: `[M, ...]` training inputs whose features span the hull
            (`"hull"` needs them). Defaults to `None`.
        y_reference: `[M]` their labels. Defaults to `None`.
        bounds: valid input range. Defaults to `(0.0, 1.0)`.
        logits: as in `GeometryModel`. Defaults to `"auto"`.
        curvature_k: curvatures computed at each end of the spectrum. Defaults to `5`.
    """

    def __init__(self, x_probe, y_probe, every=1, log_dir="logs", measures=MEASURES, x_reference=None,
                 y_reference=None, bounds=(0.0, 1.0), logits="auto", curvature_k=5):
        super().__init__()
        unknown = sorted(set(measures) - set(MEASURES))
        if unknown:
            raise InputError(f"measures {unknown} are not among {list(MEASURES)}")
        if "hull" in measures and x_reference is None:
            raise InputError("measure 'hull' needs x_reference and y_reference (training inputs spanning the hull)")
        self.x_probe, self.y_probe = np.asarray(x_probe, np.float32), np.asarray(y_probe)
        self.x_reference, self.y_reference = x_reference, y_reference
        self.every = check_positive_int("every", every)
        self.curvature_k = check_positive_int("curvature_k", curvature_k)
        self.measures, self.bounds, self.logits = tuple(measures), bounds, logits
        self.writer = tf.summary.create_file_writer(str(log_dir) + "/geometry")
        self.history = []  # one dict of scalars per measured epoch (also what was logged)
        self._gm = None

    def _geometry_model(self):
        from tfgeom.model import GeometryModel

        if self._gm is None:
            self._gm = GeometryModel(self.model, bounds=self.bounds, logits=self.logits)
        if self._gm.model is not self.model:  # a float32 clone of a mixed-precision model: copy the weights
            self._gm.model.set_weights(self.model.get_weights())
        return self._gm

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        scalars, histograms = self.measure()
        with self.writer.as_default(step=epoch):
            for name, value in scalars.items():
                tf.summary.scalar(f"geometry/{name}", value)
            for name, values in histograms.items():
                tf.summary.histogram(f"geometry/{name}", values)
        self.writer.flush()
        self.history.append(dict(scalars, epoch=epoch))

    def measure(self):
        """`(scalars {name: float}, histograms {name: [N] array})` of the probe under the current weights."""
        gm = self._geometry_model()
        x = gm.check(self.x_probe)
        scalars = {"probe_accuracy": float(np.mean(gm.predict(x) == self.y_probe))}
        histograms = {}
        attack = None
        if "deepfool" in self.measures or "curvature" in self.measures:
            attack = gm.deepfool(x, norm="l2")
            norms = attack.norms[attack.success]
            scalars["deepfool_l2_median"] = float(np.median(norms)) if norms.size else float("nan")
            histograms["deepfool_l2"] = norms
        if "curvature" in self.measures:
            profile = gm.curvature_profile(x, k=self.curvature_k, attack=attack)
            scalars["curvature_most_positive"] = float(profile.mean_positive[-1])
            scalars["curvature_most_negative"] = float(profile.mean_negative[0])
            histograms["curvatures"] = profile.values.ravel()
        if "hull" in self.measures or "margins" in self.measures:
            self._feature_measures(gm, x, scalars, histograms)
        return scalars, histograms

    def _feature_measures(self, gm, x, scalars, histograms):
        z = gm.features(x).astype(np.float64)
        w, b = (v.astype(np.float64) for v in gm.head)
        if "margins" in self.measures:
            # exact distance in feature space to the nearest class boundary: min_j m_j / ||w_c - w_j||
            dist = exact_regions(z, w, b).distance
            histograms["feature_margin"] = dist
            scalars["feature_margin_median"] = float(np.median(dist))
        if "hull" in self.measures:
            space = FeatureSpace(gm, self.x_reference, self.y_reference)
            scalars["inside_training_hull"] = float(np.mean(space.in_hull(z)))

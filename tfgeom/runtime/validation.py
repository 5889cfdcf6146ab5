"""Validate arrays once, at the public boundary, with messages that say the fix."""
import numpy as np

from tfgeom.errors import InputError


def check_inputs(x, input_shape, bounds, name="x"):
    """Return `x` as float32 `[N, *input_shape]` or raise `InputError`.

    Accepts a missing trailing channel of size 1 (`[N, 28, 28]` for a model
    taking `[28, 28, 1]`). Refuses empty arrays, wrong shapes, NaN/Inf and
    values outside `bounds`.
    """
    try:
        x = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name} must be a numeric array; got {type(x).__name__} ({err})") from None
    expected = tuple(input_shape)
    if x.ndim == len(expected) and expected[-1] == 1 and x.shape[1:] == expected[:-1]:
        x = x[..., None]
    if x.ndim == len(expected) and x.shape == expected:
        raise InputError(
            f"{name} has shape {x.shape}, a single example; add a batch dimension ({name}[None])"
        )
    if x.shape[1:] != expected:
        raise InputError(
            f"{name} has shape {x.shape} but the model takes [N, {', '.join(map(str, expected))}]; "
            f"reshape the data to (N, {', '.join(map(str, expected))})"
        )
    if x.shape[0] == 0:
        raise InputError(f"{name} is empty (shape {x.shape}); pass at least one example")
    bad = ~np.isfinite(x)
    if bad.any():
        raise InputError(
            f"{name} contains {int(bad.sum())} NaN/Inf value(s) (first in example "
            f"{int(np.argwhere(bad)[0][0])}); clean or drop those examples"
        )
    low, high = bounds
    xmin, xmax = float(x.min()), float(x.max())
    if xmin < low or xmax > high:
        hint = " (scale by 1/255?)" if xmax > 1.5 and high <= 1.0 else ""
        raise InputError(
            f"{name} has values in [{xmin:g}, {xmax:g}], outside the model bounds [{low:g}, {high:g}]; "
            f"rescale the data{hint} or pass bounds=(low, high) (CLI: --bounds LOW HIGH)"
        )
    return x


def check_labels(y, num_classes, n, name="y"):
    """Return `y` as int32 `[n]` or raise `InputError`."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == num_classes and y.shape[0] == n:
        y = y.argmax(axis=1)  # one-hot labels
    if y.shape != (n,):
        raise InputError(f"{name} has shape {y.shape}; expected ({n},), one label per example")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise InputError(f"{name} contains non-integer labels; labels must be class indices")
    elif y.dtype.kind not in "iub":
        raise InputError(f"{name} has dtype {y.dtype}; labels must be integer class indices")
    y = y.astype(np.int64)
    out = (y < 0) | (y >= num_classes)
    if out.any():
        raise InputError(
            f"{name} has {int(out.sum())} label(s) outside [0, {num_classes}) (e.g. {int(y[out][0])}); "
            f"the model has {num_classes} classes"
        )
    return y.astype(np.int32)


def check_bounds(bounds):
    """Return `(low, high)` floats or raise `InputError`."""
    try:
        low, high = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise InputError(f"bounds must be a pair (low, high); got {bounds!r}") from None
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise InputError(f"bounds must be finite with low < high; got ({low}, {high})")
    return low, high


def check_choice(name, value, choices):
    """Normalise and check a string option."""
    if value in (2, 2.0, "2") and "l2" in choices:
        return "l2"
    if (value == np.inf or value in ("inf", "Linf")) and "linf" in choices:
        return "linf"
    value = str(value).lower()
    if value not in choices:
        raise InputError(f"{name}={value!r} is not one of {sorted(choices)}")
    return value


def check_positive_int(name, value, minimum=1):
    """Check an integer option is >= minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)

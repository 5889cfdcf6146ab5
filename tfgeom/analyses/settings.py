"""Typed settings of analyses: defaults declared once, changed by `name.key=value` or a TOML table.

An analysis declares its settings as a `NamedTuple` with a default for every
field; the default's type is the setting's type (`int`, `float`, `str`,
`bool`, or a tuple of numbers). Values given as text (`--set`) are parsed to
that type; values from TOML must already have it. Unknown names and keys and
bad values are refused with one line naming the key and what is allowed.
"""
import tomllib

from tfgeom.errors import InputError


def _describe(default):
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "an integer >= 0"
    if isinstance(default, float):
        return "a number >= 0"
    if isinstance(default, tuple):
        return "a comma-separated list of numbers >= 0"
    return "a string"


def _number(text, kind):
    value = kind(text) if not isinstance(text, str) else kind(text.strip())
    if value < 0:
        raise ValueError(value)
    return value


def coerce(key, default, value, choices=None):
    """`value` (text or TOML) converted to the type of `default`, or `InputError` naming `key`."""
    try:
        if isinstance(default, bool):
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            if isinstance(value, bool):
                return value
            raise ValueError(value)
        if isinstance(default, int):
            if isinstance(value, float) or isinstance(value, bool):
                raise ValueError(value)
            return _number(value, int)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError(value)
            return _number(value, float)
        if isinstance(default, tuple):
            items = value.split(",") if isinstance(value, str) else list(value)
            kind = type(default[0]) if default else float
            out = tuple(_number(v, kind) for v in items if not (isinstance(v, str) and not v.strip()))
            if not out:
                raise ValueError(value)
            return out
        value = str(value)
    except (TypeError, ValueError):
        raise InputError(f"{key} must be {_describe(default)}; got {value!r}") from None
    if choices and value not in choices:
        raise InputError(f"{key} must be one of {list(choices)}; got {value!r}")
    return value


def parse_assignments(assignments):
    """`["curvature.points=200", ...]` -> `{"curvature": {"points": "200"}}` (values stay text)."""
    out = {}
    for item in assignments or []:
        name, sep, value = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not sep or not dot or not section or not key:
            raise InputError(f"--set {item!r} must look like ANALYSIS.KEY=VALUE (e.g. curvature.points=200)")
        out.setdefault(section, {})[key.strip()] = value.strip()
    return out


def read_toml(path):
    """`{analysis: {key: value}}` from a TOML file with one table per analysis."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise InputError(f"config file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise InputError(f"config file {str(path)!r} is not valid TOML: {err}") from None
    bad = [k for k, v in data.items() if not isinstance(v, dict)]
    if bad:
        raise InputError(f"config file {str(path)!r}: {bad[0]!r} must be a table like [curvature] with key = value lines")
    return data


def resolve(analyses, overrides):
    """Each analysis' settings with `overrides` applied: `{name: Settings}`.

    Args:
        analyses: `{name: Analysis}` (each with a `Settings` NamedTuple class and optional `CHOICES`).
        overrides: `{name: {key: value}}` from `parse_assignments` and/or `read_toml`.
    """
    unknown = [name for name in overrides if name not in analyses]
    if unknown:
        raise InputError(f"unknown analysis {unknown[0]!r} in settings; analyses are {list(analyses)}")
    out = {}
    for name, analysis in analyses.items():
        defaults = analysis.Settings()
        given = overrides.get(name, {})
        fields = defaults._fields
        for key in given:
            if key not in fields:
                allowed = ", ".join(fields) if fields else "none"
                raise InputError(f"unknown setting {name}.{key}; {name} settings are: {allowed}")
        choices = getattr(analysis, "CHOICES", {})
        values = {k: coerce(f"{name}.{k}", getattr(defaults, k), v, choices.get(k)) for k, v in given.items()}
        for key, value in values.items():
            default = getattr(defaults, key)
            # a count (an int setting whose default is at least 1) of zero or less would run nothing, or crash later
            if isinstance(default, int) and not isinstance(default, bool) and default >= 1 and value < 1:
                raise InputError(f"{name}.{key} must be at least 1; got {value}")
        out[name] = defaults._replace(**values)
        analysis.check(out[name])
    return out


def merge(*layers):
    """Merge `{name: {key: value}}` dicts; later layers win key by key."""
    out = {}
    for layer in layers:
        for name, values in (layer or {}).items():
            out.setdefault(name, {}).update(values)
    return out


# Settings that count inputs whose cost grows with the input dimension d (Lanczos runs, bound propagation).
# Their defaults were chosen on 28x28 digits (d = 784); for larger inputs a default the user did not set
# is scaled by sqrt(784 / d) (at least MIN_SCALED): 100 curvature points become 50 at 32x32x3 and 7 at
# 224x224x3. The report lists every value changed this way. Each analysis names its own (`Analysis.scaled`).
REFERENCE_DIM = 784
MIN_SCALED = {"resolution": 21}  # a section coarser than 21x21 shows little; other sizes keep at least 2


def scale_defaults(effective, overrides, input_dim):
    """`(effective settings, {"name.key": sentence})`: unset per-input sizes scaled to the input dimension."""
    factor = (REFERENCE_DIM / input_dim) ** 0.5
    if factor >= 1:
        return effective, {}
    from tfgeom.analyses import REGISTRY

    changed = {}
    for name in effective:
        keys = REGISTRY[name].scaled if name in REGISTRY else ()
        given = (overrides or {}).get(name, {})
        updates = {}
        for key in keys:
            default = getattr(effective[name], key)
            if key in given:
                continue
            scaled = max(MIN_SCALED.get(key, 2), int(round(default * factor)))
            if scaled < default:
                updates[key] = scaled
                changed[f"{name}.{key}"] = (f"{default} -> {scaled} for inputs of dimension {input_dim} "
                                            f"(x sqrt(784 / d); set {name}.{key} to choose)")
        if updates:
            effective = dict(effective, **{name: effective[name]._replace(**updates)})
    return effective, changed

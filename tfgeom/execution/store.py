"""Finished work on disk, in formats that carry data only: how a long run resumes.

One module for every way tfgeom resumes:

- `ShardStore`: finished shards of stages (`tfgeom.execution.executor`), one
  `.npz` per shard (a JSON skeleton plus its arrays; `encode`/`decode`);
- `RecordLog`: per-item records as JSON lines under an identity header
  (`tfgeom certify`'s per-input log);
- `read_json`: a JSON file written for a run (`report.json`), checked against
  the identity of the run that resumes it.

Nothing read back executes code: arrays load with `allow_pickle=False`,
result types are rebuilt only from `NamedTuple` classes of tfgeom already
imported in this process (a file can name a type, never import a module),
and anything else is refused with one line naming the file and the fix.
Every file is written to a temporary name and renamed into place, so an
interruption leaves the previous version or the new one, never a torn file.
"""
import hashlib
import io
import json
import os
import pathlib
import sys
import zipfile

import numpy as np

from tfgeom.errors import InputError

FIX = "remove it or run without --resume"


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


def write_atomic(path, data):
    """Write `data` (bytes or str) to `path` through a temporary file and a rename."""
    path = pathlib.Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# -- data-only encoding of results ----------------------------------------------


def encode(value, arrays=None):
    """`(skeleton, arrays)`: a JSON-ready skeleton of `value` and its arrays by key.

    `value` may nest NumPy arrays and scalars, `NamedTuple`s, lists, tuples,
    dicts with string keys, strings, numbers, booleans and None.
    """
    arrays = {} if arrays is None else arrays
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            raise TypeError("arrays of Python objects are not stored")
        key = f"a{len(arrays)}"
        arrays[key] = value
        return {"array": key}, arrays
    if isinstance(value, np.generic):
        return encode(value.item(), arrays)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        kind = type(value)
        fields = {f: encode(getattr(value, f), arrays)[0] for f in value._fields}
        return {"record": f"{kind.__module__}:{kind.__qualname__}", "fields": fields}, arrays
    if isinstance(value, (list, tuple)):
        return {"list" if isinstance(value, list) else "tuple": [encode(v, arrays)[0] for v in value]}, arrays
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("dict keys must be strings")
        return {"dict": {k: encode(v, arrays)[0] for k, v in value.items()}}, arrays
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}, arrays
    raise TypeError(f"cannot store a value of type {type(value).__name__}")


def _record_type(name):
    """The NamedTuple class `module:qualname`, only if tfgeom already imported it (nothing is imported here)."""
    module, _, qualname = name.partition(":")
    if not module.startswith("tfgeom.") or module not in sys.modules:
        raise ValueError(f"unknown result type {name!r}")
    kind = sys.modules[module]
    for part in qualname.split("."):
        kind = getattr(kind, part, None)
    if not (isinstance(kind, type) and issubclass(kind, tuple) and hasattr(kind, "_fields")):
        raise ValueError(f"{name!r} is not a tfgeom result type")
    return kind


def decode(skeleton, arrays):
    """The value `encode` described (raises `ValueError` on anything it would not write)."""
    if not isinstance(skeleton, dict) or len(skeleton) not in (1, 2):
        raise ValueError("malformed entry")
    if "array" in skeleton:
        return arrays[skeleton["array"]]
    if "record" in skeleton:
        kind = _record_type(skeleton["record"])
        fields = skeleton["fields"]
        if set(fields) - set(kind._fields):
            raise ValueError(f"fields {sorted(set(fields) - set(kind._fields))} are not fields of {kind.__name__}")
        return kind(**{f: decode(v, arrays) for f, v in fields.items()})
    if "list" in skeleton:
        return [decode(v, arrays) for v in skeleton["list"]]
    if "tuple" in skeleton:
        return tuple(decode(v, arrays) for v in skeleton["tuple"])
    if "dict" in skeleton:
        return {str(k): decode(v, arrays) for k, v in skeleton["dict"].items()}
    if "value" in skeleton and (skeleton["value"] is None or isinstance(skeleton["value"], (bool, int, float, str))):
        return skeleton["value"]
    raise ValueError("malformed entry")


def save_npz(path, value):
    """Store `value` (see `encode`) as one `.npz`: its arrays and a `skeleton` entry of JSON text."""
    skeleton, arrays = encode(value)
    buffer = io.BytesIO()
    np.savez(buffer, skeleton=np.array(json.dumps(skeleton)), **arrays)
    write_atomic(path, buffer.getvalue())


def load_npz(path, fix=FIX):
    """The value stored by `save_npz`; anything else (a pickle, a torn or foreign file) is one clear line ending
    in `fix`."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            entries = {key: npz[key] for key in npz.files}
        skeleton = json.loads(str(entries.pop("skeleton")))
        return decode(skeleton, entries)
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, json.JSONDecodeError) as err:
        raise InputError(f"{path} is not a result file tfgeom wrote ({type(err).__name__}: {err}); {fix}") from None


class ShardStore:
    """Finished shards of stages in a folder: one data-only `.npz` per shard (see the module docstring).

    A shard's file name holds the stage, its rows and a digest of its inputs
    and parameters, so a shard is reused only for the very same work.

    Args:
        folder: where the shard files go (created).
    """

    SUFFIX = ".npz"

    def __init__(self, folder):
        self.folder = pathlib.Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.written = 0  # shards written by this store (tests count recomputed shards with it)

    def path(self, name, rows, key):
        return self.folder / f"{name}-{rows.start:07d}-{rows.stop:07d}-{key[:16]}{self.SUFFIX}"

    def load(self, name, rows, key):
        """The stored result of this shard, or None."""
        path = self.path(name, rows, key)
        # running without --resume would clear every finished shard; removing this one keeps the others
        return load_npz(path, "remove that file and rerun with --resume (the other finished shards are kept)") \
            if path.exists() else None

    def save(self, name, rows, key, result):
        save_npz(self.path(name, rows, key), result)
        self.written += 1


# -- JSON files and JSON lines under an identity ----------------------------------


def jsonable(value, finite=False):
    """`value` with NumPy scalars and arrays, tuples and paths turned into JSON types.

    Args:
        value: a nested value.
        finite: write non-finite floats as `null` (strict JSON, as `report.json`). Defaults to `False`.
    """
    if isinstance(value, dict):
        return {str(k): jsonable(v, finite) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, finite) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist(), finite)
    if isinstance(value, np.generic):
        value = value.item()
    if finite and isinstance(value, float) and not np.isfinite(value):
        return None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def content_digest(*arrays):
    """Hex SHA-256 of arrays' contents (None allowed): identifies the data a run analyses, not its path."""
    return digest([a if a is None else np.asarray(a) for a in arrays]).hexdigest()


def _mismatch(path, found, expected):
    """One line naming what differs between the identity in a file and the resuming run's."""
    found = found if isinstance(found, dict) else {}
    keys = sorted(k for k in set(found) | set(expected) if found.get(k) != expected.get(k))
    what = ", ".join(keys[:6]) or "its identity"
    return InputError(f"cannot resume: {path} was written for another run ({what} differ); "
                      "use a new --out or run without --resume")


def read_json(path, identity, kind="report"):
    """The JSON object in `path` written under `identity` (a resumed run's), else one clear line.

    Args:
        path: the file.
        identity: JSON-ready dict the file's `identity` entry must equal.
        kind: what the file is, for messages. Defaults to `"report"`.
    """
    try:
        found = json.loads(pathlib.Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"cannot resume: {path} is unreadable ({err}); {FIX}") from None
    if not isinstance(found, dict):
        raise InputError(f"cannot resume: {path} is not a tfgeom {kind}; {FIX}")
    expected = jsonable(identity, finite=True)
    if found.get("identity") != expected:
        raise _mismatch(path, found.get("identity"), expected)
    return found


class RecordLog:
    """An append-only JSON-lines file of per-item results under an identity header.

    The first line holds the run's identity (model digest, data, settings);
    every other line is one finished item with its `index`. A resumed run
    must have the same identity and skips the indices already written.

    Args:
        path: the `.jsonl` file.
        identity: JSON-ready dict identifying the run.
        resume: keep the items of an earlier run with the same identity.
            Defaults to `False`: start the file anew.
        fields: keys every record must have (a resumed file missing one is refused). Defaults to `()`.
    """

    def __init__(self, path, identity, resume=False, fields=()):
        self.path = pathlib.Path(path)
        self.fields = tuple(fields)
        self.identity = json.loads(json.dumps(jsonable(identity)))
        self.records = {}
        if resume and self.path.exists():
            self._read()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, json.dumps({"identity": self.identity}) + "\n")

    def _read(self):
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"cannot resume: {self.path} is unreadable ({err}); {FIX}") from None
        try:
            header = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError:
            header = None
        if not isinstance(header, dict) or "identity" not in header:
            raise InputError(f"cannot resume: {self.path} has no tfgeom header line; {FIX}")
        if header["identity"] != self.identity:
            raise _mismatch(self.path, header["identity"], self.identity)
        records = []
        for number, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):  # a last line cut by an interruption: keep the complete ones
                    break
                raise InputError(f"cannot resume: line {number} of {self.path} is not JSON; {FIX}") from None
            if not isinstance(record, dict) or not isinstance(record.get("index"), int):
                raise InputError(f"cannot resume: line {number} of {self.path} is not a record with an index; {FIX}")
            missing = [key for key in self.fields if key not in record]
            if missing:
                raise InputError(f"cannot resume: line {number} of {self.path} lacks {missing}; {FIX}")
            records.append(record)
        self.records = {r["index"]: r for r in records}
        # rewrite without a possibly truncated last line
        write_atomic(self.path, "\n".join(json.dumps(r) for r in [header, *self.records.values()]) + "\n")

    def append(self, records):
        """Write finished items (dicts with an `index`) and flush them to disk."""
        with open(self.path, "a", encoding="utf-8") as f:
            for r in records:
                r = jsonable(r)
                f.write(json.dumps(r) + "\n")
                self.records[int(r["index"])] = r
            f.flush()
            os.fsync(f.fileno())

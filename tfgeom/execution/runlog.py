"""Per-item results written as they finish (JSON lines), so a long run can stop and resume.

The first line holds the run's identity (model digest, data, settings); every
other line is one finished item with its `index`. A resumed run must have the
same identity and skips the indices already written.
"""
import json
import os
import pathlib

from tfgeom.errors import InputError


class ResultLog:
    """An append-only JSON-lines file of per-item results.

    Args:
        path: the `.jsonl` file.
        identity: JSON-ready dict identifying the run.
        resume: keep the items of an earlier run with the same identity.
            Defaults to `False`: start the file anew.
    """

    def __init__(self, path, identity, resume=False):
        self.path = pathlib.Path(path)
        self.identity = json.loads(json.dumps(identity))
        self.records = {}
        if resume and self.path.exists():
            self._read()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"identity": self.identity}) + "\n", encoding="utf-8")

    def _read(self):
        lines = self.path.read_text(encoding="utf-8").splitlines()
        try:
            header = json.loads(lines[0]) if lines else {}
            records = [json.loads(line) for line in lines[1:] if line.strip()]
        except json.JSONDecodeError:
            # a line cut by an interruption: keep the complete ones
            records = []
            for line in lines[1:]:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    break
        if header.get("identity") != self.identity:
            raise InputError(
                f"cannot resume: {self.path} was written for other model/data/settings; "
                "use another --out file or run without --resume"
            )
        self.records = {int(r["index"]): r for r in records}
        # rewrite without a possibly truncated last line
        self.path.write_text(
            "\n".join(json.dumps(r) for r in [header, *self.records.values()]) + "\n", encoding="utf-8"
        )

    def append(self, records):
        """Write finished items (dicts with an `index`) and flush them to disk."""
        with open(self.path, "a", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r) + "\n")
                self.records[int(r["index"])] = r
            f.flush()
            os.fsync(f.fileno())

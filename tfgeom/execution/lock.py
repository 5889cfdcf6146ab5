"""One writer per output: a lock file that the operating system releases when its process ends.

Two `tfgeom analyze` runs writing into one folder would overwrite each
other's report and shards, two `tfgeom certify` runs on one `--out` would
interleave their records. `folder_lock(out)` holds an exclusive `flock` on
`out/.tfgeom.lock` for the run, `file_lock(path)` one on `path.lock` beside
a file; a second run is refused with one line naming the process that
holds it. A run that dies (even by SIGKILL) releases the lock with its file
descriptors, so there is no stale lock to clean up.
"""
import contextlib
import os
import pathlib
import socket

from tfgeom.errors import InputError

LOCK_NAME = ".tfgeom.lock"


def folder_lock(folder):
    """Hold the folder's lock while the block runs; `InputError` if another run holds it."""
    return _lock(pathlib.Path(folder) / LOCK_NAME, f"{folder} is in use by another tfgeom run",
                 "or write to another --out folder")


def file_lock(path):
    """Hold the lock of output file `path` (the file `path.lock` beside it); `InputError` if another run holds it."""
    path = pathlib.Path(path)
    return _lock(path.with_name(path.name + ".lock"), f"{path} is being written by another tfgeom run",
                 "or write to another --out file")


@contextlib.contextmanager
def _lock(path, busy, other):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise InputError(f"{busy} ({holder}); wait for it to finish {other}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock

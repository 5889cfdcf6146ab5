"""Memory estimates checked before work starts, so a size option cannot take the machine down.

The budget is half of the memory available when the check runs, or
`TFGEOM_MEMORY_BUDGET_MIB` when set (a cluster job's limit is not what
`/proc/meminfo` says). Arrays above it are refused before work starts, or,
where an algorithm can stream (the pixel-space hull), processed in chunks.
"""
import os

from tfgeom.errors import InputError

FLOAT32 = 4
# Leave room for TensorFlow's own buffers and the rest of the process.
USABLE_FRACTION = 0.5


def available_memory():
    """Bytes of memory available to new allocations (`MemAvailable`, else total physical memory)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 34  # unknown platform: assume 16 GiB


def memory_budget():
    """Bytes an analysis may allocate: `TFGEOM_MEMORY_BUDGET_MIB` if set, else half of the available memory."""
    override = os.environ.get("TFGEOM_MEMORY_BUDGET_MIB")
    if override:
        try:
            return int(float(override) * 2**20)
        except ValueError:
            raise InputError(f"TFGEOM_MEMORY_BUDGET_MIB={override!r} is not a number of MiB") from None
    return int(USABLE_FRACTION * available_memory())


def _gib(nbytes):
    return f"{nbytes / 2**30:.1f} GiB"


def check_memory(what, nbytes, fix):
    """Raise `InputError` when `what` needs more than half of the available memory.

    Args:
        what: the work being sized, in the user's terms ("--pairs 100000").
        nbytes: the estimate in bytes.
        fix: what to do instead ("lower --pairs").
    """
    budget = memory_budget()
    if nbytes > budget:
        raise InputError(
            f"{what} needs about {_gib(nbytes)} of memory but only {_gib(budget)} can be used here; {fix}"
        )

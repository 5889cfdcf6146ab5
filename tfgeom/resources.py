"""Memory estimates checked before work starts, so a size option cannot take the machine down."""
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


def _gib(nbytes):
    return f"{nbytes / 2**30:.1f} GiB"


def check_memory(what, nbytes, fix):
    """Raise `InputError` when `what` needs more than half of the available memory.

    Args:
        what: the work being sized, in the user's terms ("--pairs 100000").
        nbytes: the estimate in bytes.
        fix: what to do instead ("lower --pairs").
    """
    budget = USABLE_FRACTION * available_memory()
    if nbytes > budget:
        raise InputError(
            f"{what} needs about {_gib(nbytes)} of memory but only {_gib(budget)} can be used here; {fix}"
        )

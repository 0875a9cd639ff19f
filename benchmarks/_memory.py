"""The peak resident set size of this process, for the benchmarks that measure memory.

Read from ``VmHWM`` in ``/proc/self/status`` on Linux: the high-water mark of this process's
own address space, which starts afresh at ``exec``. ``resource.getrusage(...).ru_maxrss`` does
not: a child started by ``subprocess`` inherits its parent's peak (Linux folds the forked
address space, a copy of the parent's, into the child's maximum before exec), so a small child
of a large parent reports the parent's size. ``ru_maxrss`` remains the fallback elsewhere.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path


def peak_rss_bytes() -> int:
    """The peak resident set size of this process, in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS: bytes; Linux: kB

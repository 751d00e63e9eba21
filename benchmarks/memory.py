"""Resident memory of this process, for the benchmarks (Linux and macOS)."""

from __future__ import annotations

import os
import resource
import sys


def peak_rss_gib() -> float:
    """Peak resident set size so far."""
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 2**20 if sys.platform != "darwin" else kib / 2**30


def minor_page_faults() -> int:
    """Minor page faults of this process so far: pages it touched for the first time since they were mapped."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def current_rss_gib() -> float:
    """Resident set size now (Linux /proc; elsewhere the peak so far)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
    except OSError:
        return peak_rss_gib()
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**30

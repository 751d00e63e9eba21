"""Where the memory of ``medsam2 segment`` goes, phase by phase (Linux with glibc 2.33 or later).

    python benchmarks/memory_breakdown.py [--slices 300] [--size 512] [--precision auto] [--json]

The same run as ``benchmarks/depth_memory.py`` (an int16 CT-like volume windowed to uint8, a box on the middle
slice, every slice tracked with ``--no-early-stop``, the real-size t512 network with random weights), in one
fresh process that samples itself every 50 ms and at the start and end of each phase: resident memory (RSS),
and glibc's heap counters (``mallinfo2``): the heap's size, the part of it in use, the part free (kept for
reuse, resident once touched, until trimmed) and the blocks served by their own ``mmap`` (large arrays).

Phases: ``imports`` (Python, torch, SimpleITK, numpy, the command's modules), ``read and window`` (the scan and
its uint8 window), ``load model`` (checkpoint read, network built, in fast mode its bfloat16 copy),
``prompt`` (the box slice), ``tracking`` (every tracked slice; its first and last slices are also given
alone), ``mask`` (the whole-volume mask from each slice's logits and its largest component) and ``write``
(the mask file written and read back). Each phase reports its peak RSS and the counters at that peak; the
report also says which phase held the peak of the whole run, and the minor page faults per tracked slice.

    python benchmarks/memory_breakdown.py --run-segment N segment ARGUMENTS...

measures any ``medsam2 segment`` command that tracks N slices the same way, in this process (its last output
line is the report): another volume or checkpoint, or only part of a volume (``--direction forward``).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List

REPOSITORY = Path(__file__).resolve().parents[1]
MIB = 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


class PhaseProbe:
    """Samples RSS and glibc's heap counters in a thread, labelled with the phase the run is in."""

    def __init__(self) -> None:
        self._mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
        self._mallinfo2.restype = _MallInfo2
        self.phase = "imports"
        self.peaks: Dict[str, dict] = {}
        self.order: List[str] = []
        self._running = True
        self._thread = threading.Thread(target=self._sample_every, args=(0.05,), daemon=True)
        self._thread.start()

    def sample(self) -> None:
        heap = self._mallinfo2()
        with open("/proc/self/statm") as statm:
            rss = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        phase = self.phase
        if phase not in self.peaks:
            self.order.append(phase)
        if rss >= self.peaks.get(phase, {}).get("rss_mib", -1) * MIB:
            self.peaks[phase] = {"rss_mib": round(rss / MIB, 1), "heap_mib": round(heap.arena / MIB, 1),
                                 "heap_in_use_mib": round(heap.uordblks / MIB, 1),
                                 "heap_free_mib": round(heap.fordblks / MIB, 1),
                                 "mmapped_blocks_mib": round(heap.hblkhd / MIB, 1)}

    def enter(self, phase: str) -> None:
        self.sample()  # the end of the phase before
        self.phase = phase
        self.sample()

    def stop(self) -> None:
        self.sample()
        self._running = False
        self._thread.join()

    def _sample_every(self, seconds: float) -> None:
        while self._running:
            self.sample()
            time.sleep(seconds)


def run_segment(planned: int, arguments: List[str]) -> dict:
    """Run ``medsam2 segment`` with ``arguments``, which track ``planned`` slices, in this process under a
    :class:`PhaseProbe`."""
    probe = PhaseProbe()
    sys.path.insert(0, str(REPOSITORY))
    from MedSAM2Lib.apps import cli, volume_io
    from MedSAM2Lib.inference import session

    def entering(owner, name: str, phase: str) -> None:
        original = getattr(owner, name)

        def wrapped(*args, **kwargs):
            probe.enter(phase)
            return original(*args, **kwargs)

        setattr(owner, name, wrapped)

    entering(volume_io, "read_scan", "read and window")
    entering(cli, "build_predictor", "load model")
    entering(session.Session, "add_prompt", "prompt")
    entering(session.Session, "mask", "mask")
    entering(volume_io, "write_mask", "write")
    tracked = session.Session._tracked
    counts = {"slices": 0}

    def tracked_slice(self, *args, **kwargs):
        counts["slices"] += 1
        if counts["slices"] in (1, 2, planned):
            probe.enter({1: "first tracked slice", 2: "tracking"}.get(counts["slices"], "last tracked slice"))
        if counts["slices"] in (1, planned):  # page faults of every tracked slice but the first and the last
            counts.setdefault("faults", []).append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
        return tracked(self, *args, **kwargs)

    session.Session._tracked = tracked_slice
    code = cli.main(arguments)
    probe.stop()
    if code != 0:
        raise SystemExit(f"medsam2 segment failed with exit code {code}")
    if counts["slices"] != planned:
        raise SystemExit(f"{counts['slices']} slices were tracked instead of {planned}")
    first, last = counts["faults"]
    phases = {phase: probe.peaks[phase] for phase in probe.order}
    peak_phase = max(phases, key=lambda phase: phases[phase]["rss_mib"])
    return {"peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
            "peak_phase": peak_phase, "tracked_slices": counts["slices"],
            "minor_page_faults_per_tracked_slice": round((last - first) / (planned - 1)),
            "phases": phases}


def main() -> None:
    if sys.argv[1:2] == ["--run-segment"]:  # the measured process
        print(json.dumps(run_segment(int(sys.argv[2]), sys.argv[3:])))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(REPOSITORY))
    from benchmarks.depth_memory import random_checkpoint, segment_arguments

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        arguments = segment_arguments(folder, random_checkpoint(folder), args.slices, args.size, args.precision)
        command = [sys.executable, __file__, "--run-segment", str(args.slices - 1), *arguments]
        result = subprocess.run(command, capture_output=True, text=True, cwd=REPOSITORY,
                                env={"PYTHONPATH": str(REPOSITORY), "PATH": "/usr/bin:/bin"})
    if result.returncode != 0:
        raise SystemExit(f"measurement failed:\n{result.stderr}")
    report = {"volume": [args.slices, args.size, args.size], "precision": args.precision,
              **json.loads(result.stdout.strip().splitlines()[-1])}
    print(json.dumps(report, indent=1 if args.json else None))


if __name__ == "__main__":
    main()

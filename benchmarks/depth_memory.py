"""Peak memory of a whole propagation against the volume's depth: ``medsam2 segment`` on int16 CT-like
volumes of several depths, tracking every slice (``--no-early-stop``) with the real-size network (t512,
random weights: the same memory as the real ones).

    python benchmarks/depth_memory.py [--slices 100 300] [--size 512] [--precision auto] [--json]

Target (issue 19): 300 x 512 x 512 at most 1.0 GiB peak RSS on CPU in both precisions (``--precision float32``
and ``bfloat16``). The peak comes while tracking (``benchmarks/memory_breakdown.py`` tells the phases apart),
when the only volume-sized array is the uint8 stack (1 byte a voxel: the int16 scan goes once windowed, the
mask comes after tracking); memory that grows with depth beyond it is per-slice tracking state and the heap
around it. The report gives both per slice.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import List

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.windowing_memory import SEGMENT, ct_like, peak_mib  # noqa: E402


def random_checkpoint(folder: Path) -> Path:
    """The t512 network with random weights (seed 0) saved in ``folder``."""
    import torch

    from MedSAM2Lib.model import MedSAM2
    from MedSAM2Lib.model.config import MEDSAM2_T512

    torch.manual_seed(0)
    path = folder / "random_t512.pt"
    torch.save({"model": MedSAM2(MEDSAM2_T512).state_dict()}, path)
    return path


def segment_arguments(folder: Path, checkpoint: Path, slices: int, size: int, precision: str) -> List[str]:
    """``medsam2 segment`` arguments for an int16 CT-like (slices, size, size) volume, written to ``folder``: a box
    on the middle slice, every slice tracked."""
    np.savez(folder / "ct.npz", imgs=ct_like(slices, size))
    return ["segment", str(folder / "ct.npz"), "-o", str(folder / "mask.npz"), "--window", "-160", "240",
            "--slice", str(slices // 2), "--box", *(str(round(f * size)) for f in (0.4, 0.4, 0.6, 0.6)),
            "--checkpoint", str(checkpoint), "--device", "cpu", "--precision", precision, "--no-early-stop"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, nargs="+", default=[100, 300])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = {"size": args.size, "precision": args.precision, "runs": []}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        checkpoint = random_checkpoint(folder)
        for slices in args.slices:
            arguments = segment_arguments(folder, checkpoint, slices, args.size, args.precision)
            started = time.perf_counter()
            peak = peak_mib(SEGMENT, *arguments)
            report["runs"].append({"volume": [slices, args.size, args.size], "peak_rss_gib": round(peak / 1024, 3),
                                   "seconds": round(time.perf_counter() - started, 1)})
    runs = report["runs"]
    if len(runs) > 1:
        extra = (runs[-1]["peak_rss_gib"] - runs[0]["peak_rss_gib"]) * 1024
        depth = runs[-1]["volume"][0] - runs[0]["volume"][0]
        report["peak_growth_mib_per_slice"] = round(extra / depth, 3)
        report["stack_mib_per_slice"] = round(args.size**2 / 2**20, 3)
    print(json.dumps(report, indent=1 if args.json else None))


if __name__ == "__main__":
    main()

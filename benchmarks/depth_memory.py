"""Peak memory of a whole propagation against the volume's depth: ``medsam2 segment`` on int16 CT-like
volumes of several depths, tracking every slice (``--no-early-stop``) with the real-size network (t512,
random weights: the same memory as the real ones).

    python benchmarks/depth_memory.py [--slices 100 300] [--size 512] [--precision auto] [--json]

Target (issue 11): 300 x 512 x 512 under 1.2 GiB peak RSS on CPU. Memory that grows with depth beyond the
volume's own arrays (the int16 scan, its uint8 window, the uint8 mask: 4 bytes a voxel) would be per-slice
state that is not flat; the report gives both per slice.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.windowing_memory import SEGMENT, ct_like, peak_mib  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, nargs="+", default=[100, 300])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import torch

    from MedSAM2Lib.model import MedSAM2
    from MedSAM2Lib.model.config import MEDSAM2_T512

    report = {"size": args.size, "precision": args.precision, "runs": []}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        torch.manual_seed(0)
        torch.save({"model": MedSAM2(MEDSAM2_T512).state_dict()}, folder / "random_t512.pt")
        for slices in args.slices:
            np.savez(folder / "ct.npz", imgs=ct_like(slices, args.size))
            middle, size = slices // 2, args.size
            started = time.perf_counter()
            peak = peak_mib(SEGMENT, "segment", str(folder / "ct.npz"), "-o", str(folder / "mask.npz"),
                            "--window", "-160", "240", "--slice", str(middle),
                            "--box", *(str(round(f * size)) for f in (0.4, 0.4, 0.6, 0.6)),
                            "--checkpoint", str(folder / "random_t512.pt"), "--device", "cpu",
                            "--precision", args.precision, "--no-early-stop")
            report["runs"].append({"volume": [slices, size, size], "peak_rss_gib": round(peak / 1024, 3),
                                   "seconds": round(time.perf_counter() - started, 1)})
    runs = report["runs"]
    if len(runs) > 1:
        extra = (runs[-1]["peak_rss_gib"] - runs[0]["peak_rss_gib"]) * 1024
        depth = runs[-1]["volume"][0] - runs[0]["volume"][0]
        report["peak_growth_mib_per_slice"] = round(extra / depth, 3)
        report["volume_arrays_mib_per_slice"] = round(4 * args.size**2 / 2**20, 3)
    print(json.dumps(report, indent=1 if args.json else None))


if __name__ == "__main__":
    main()

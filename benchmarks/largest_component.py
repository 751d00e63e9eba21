"""Largest 3D component of a large mask: time and memory beyond the mask.

    python benchmarks/largest_component.py [--slices 300] [--size 512] [--json]

The mask is what random weights produce on a large volume: one body covering most of it (about 66 M of the
78.6 M voxels of 300 x 512 x 512), pierced by holes and surrounded by specks (many small components). It is
built slice by slice so that building it does not raise the peak RSS above the mask itself; the extra memory
reported is the peak RSS during the call minus the RSS before it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from MedSAM2Lib.inference.connected_components import largest_component  # noqa: E402
from benchmarks.memory import current_rss_gib, peak_rss_gib  # noqa: E402


def large_mask(slices: int, size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    mask = np.zeros((slices, size, size), dtype=np.uint8)
    y, x = np.ogrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    for z, depth in enumerate(np.linspace(-1, 1, slices)):
        body = x**2 + y**2 + 0.3 * depth**2 < 1.3
        specks = rng.random((size, size)) < 0.03
        mask[z] = body ^ specks
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args()
    mask = large_mask(args.slices, args.size)
    before = current_rss_gib()
    started = time.perf_counter()
    kept = largest_component(mask)
    figures = {
        "shape": list(mask.shape),
        "mask_voxels": int(np.count_nonzero(mask)),
        "kept_voxels": int(np.count_nonzero(kept)),
        "seconds": round(time.perf_counter() - started, 2),
        "extra_peak_rss_gib": round(peak_rss_gib() - before, 3),
    }
    if args.json:
        print(json.dumps(figures))
    else:
        for name, value in figures.items():
            print(f"{name:20s} {value}")


if __name__ == "__main__":
    main()

"""Propagation speed and memory of the real-size model (t512) with random weights.

    python benchmarks/propagation.py [--slices 64] [--size 512] [--device cpu] [--threads N]

A synthetic (slices, size, size) uint8 volume, a box on the middle slice, both directions. Prints seconds
per tracked slice, image-encoder calls and time, total time and peak resident memory. Random weights give
the same amount of work as the real ones.

For comparison, the official code on a 2-core machine in float32: 0.80-0.84 s per tracked slice (encoder
0.42 s), 53.9 s in all, 66 encoder calls, 1.42 GiB peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from MedSAM2Lib.model.config import MEDSAM2_T512  # noqa: E402
from MedSAM2Lib.model import MedSAM2  # noqa: E402
from MedSAM2Lib.inference.predictor import VolumePredictor, select_device  # noqa: E402


def synthetic_volume(slices: int, size: int) -> np.ndarray:
    """Smooth background, noise and a bright ellipsoid in the middle."""
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(np.linspace(-1, 1, slices), np.linspace(-1, 1, size), np.linspace(-1, 1, size),
                          indexing="ij")
    volume = 60 + 40 * (x + y) + rng.normal(0, 8, z.shape)
    volume[(x / 0.3) ** 2 + (y / 0.25) ** 2 + (z / 0.6) ** 2 < 1] += 90
    return np.clip(volume, 0, 255).astype(np.uint8)


def peak_rss_gib() -> float:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 2**20 if sys.platform != "darwin" else kib / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    device = select_device(args.device)
    model = MedSAM2(MEDSAM2_T512).to(device).eval()
    volume = synthetic_volume(args.slices, args.size)
    key = args.slices // 2
    box = [0.35 * args.size, 0.38 * args.size, 0.65 * args.size, 0.62 * args.size]
    predictor = VolumePredictor(model)

    encoder_seconds = 0.0
    encode = predictor._encode

    def timed_encode(*encode_args):
        nonlocal encoder_seconds
        started = time.perf_counter()
        features = encode(*encode_args)
        if device.type == "cuda":
            torch.cuda.synchronize()
        encoder_seconds += time.perf_counter() - started
        return features

    predictor._encode = timed_encode
    started = time.perf_counter()
    first_slice_done = None
    for result in predictor.propagate(volume, key, box, "both"):
        if first_slice_done is None:
            first_slice_done = time.perf_counter()
    total = time.perf_counter() - started
    tracked = args.slices - 1
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"volume {volume.shape}, box on slice {key}, both directions")
    print(f"prompted slice:          {first_slice_done - started:.2f} s")
    print(f"per tracked slice:       {(total - (first_slice_done - started)) / tracked:.3f} s ({tracked} slices)")
    print(f"image encoder calls:     {predictor.encoder_calls} ({encoder_seconds / predictor.encoder_calls:.3f} s each)")
    print(f"total:                   {total:.1f} s")
    print(f"peak RSS:                {peak_rss_gib():.2f} GiB")


if __name__ == "__main__":
    main()

"""Batch throughput (scans per hour) against the number of Ray workers on this machine, and a projection for
N GPU workers.

    python benchmarks/batch_scaling.py [--model t512|tiny] [--scans 6] [--slices 8] [--size 256]
                                       [--gpu-slices-per-second 200]

Synthetic scans (the propagation benchmark's volume), one box per scan on its middle slice, both directions.
Three runs of the same batch, each into a fresh output folder: the single-process batch with 1 PyTorch thread
(what a worker with 1 CPU gets), then ``--ray`` with 1 and with 2 workers of 1 CPU each, on one local Ray
(loopback only).
A Ray run's wall time includes starting its workers (a Python with PyTorch and the model each), as a job's
does; its steady rate is the workers' scans over their busy time. t512 is the real-size model with random
weights: the same amount of work as the real ones.

The projection for N GPU workers is arithmetic, not a measurement: N x 3600 / (per-scan time outside the
model, measured here + tracked slices / an assumed GPU rate), assuming workers scale linearly (independent
scans; the shared file system and the one driver keep up).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from propagation import synthetic_volume  # noqa: E402  (benchmarks/ is this script's folder)

from MedSAM2Lib.apps.batch import BatchRunner, ScanReport, read_prompt_table  # noqa: E402
from MedSAM2Lib.apps.ray_batch import RayBatchRunner, RayOptions, start_local_ray  # noqa: E402
from MedSAM2Lib.inference.predictor import VolumePredictor  # noqa: E402
from MedSAM2Lib.model import MedSAM2  # noqa: E402
from MedSAM2Lib.model.checkpoint import load_model  # noqa: E402
from MedSAM2Lib.model.config import MEDSAM2_T512, load_config  # noqa: E402

TESTING_DATA = Path(__file__).resolve().parents[1] / "Testing" / "Data"


class PredictorFactory:
    """Loads the benchmark's model into a VolumePredictor (pickled to each Ray worker)."""

    def __init__(self, checkpoint: Path, config_path: Optional[Path] = None) -> None:
        self.checkpoint, self.config_path = checkpoint, config_path

    def __call__(self) -> VolumePredictor:
        config = load_config(self.config_path) if self.config_path else MEDSAM2_T512
        return VolumePredictor(load_model(self.checkpoint, config))


def model_factory(name: str, folder: Path) -> PredictorFactory:
    if name == "tiny":
        return PredictorFactory(TESTING_DATA / "medsam2_tiny_random_seed0.pt", TESTING_DATA / "medsam2_tiny_test.yaml")
    torch.manual_seed(0)
    checkpoint = folder / "t512_random_seed0.pt"
    torch.save({"model": MedSAM2(MEDSAM2_T512).state_dict()}, checkpoint)
    return PredictorFactory(checkpoint)


def write_scans(folder: Path, scans: int, slices: int, size: int) -> Path:
    """``scans`` copies of the synthetic volume and a table with one box per scan on its middle slice."""
    images = folder / "images"
    images.mkdir()
    volume = synthetic_volume(slices, size)
    box = [round(0.35 * size), round(0.38 * size), round(0.65 * size), round(0.62 * size)]
    rows = ["image,slice,x0,y0,x1,y1"]
    for number in range(scans):
        np.savez(images / f"scan{number:03d}.npz", imgs=volume)
        rows.append(f"scan{number:03d}.npz,{slices // 2},{','.join(map(str, box))}")
    (folder / "prompts.csv").write_text("\n".join(rows) + "\n")
    return images


def timed_run(runner: BatchRunner, prompts) -> tuple:
    reports: List[ScanReport] = []
    runner.on_scan = reports.append
    started = time.perf_counter()
    runner.run(prompts)
    wall = time.perf_counter() - started
    failed = [outcome for outcome in runner.outcomes if outcome.status != "ok"]
    if failed:
        raise SystemExit(f"benchmark run failed: {failed[0].message}")
    return wall, reports


def report_line(label: str, scans: int, wall: float, reports: List[ScanReport], workers: int) -> float:
    """Print one run's rates; return its mean seconds per scan (inside the worker)."""
    per_scan = sum(report.seconds for report in reports) / len(reports)
    steady = workers * 3600 / per_scan
    print(f"{label:<28} {wall:8.1f} s {scans * 3600 / wall:10.0f} scans/h   steady {steady:7.0f} scans/h   "
          f"{per_scan:6.2f} s/scan")
    return per_scan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["t512", "tiny"], default="t512")
    parser.add_argument("--scans", type=int, default=6)
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--gpu-slices-per-second", type=float, default=200.0,
                        help="assumed GPU rate for the projection (not measured here; default 200)")
    args = parser.parse_args()

    print(f"{os.cpu_count()} CPU cores; load average {os.getloadavg()[0]:.1f} at the start. This machine is shared "
          "with other engineers' jobs right now: absolute times are noisy, compare the runs of this one.")
    print(f"model {args.model} (random weights), {args.scans} scans of {args.slices} x {args.size} x {args.size}, "
          f"one box each, both directions")
    with tempfile.TemporaryDirectory(prefix="batch-scaling-") as temp:
        folder = Path(temp)
        factory = model_factory(args.model, folder)
        images = write_scans(folder, args.scans, args.slices, args.size)
        prompts, _ = read_prompt_table(folder / "prompts.csv", images)

        print(f"{'run':<28} {'wall':>10} {'rate':>16}   {'(workers x 3600 / s per scan)':>29}")
        torch.set_num_threads(1)  # as a worker with 1 CPU: the difference is Ray's
        wall, reports = timed_run(BatchRunner(factory, images, folder / "single"), prompts)
        single = report_line("one process, 1 thread", args.scans, wall, reports, 1)

        start_local_ray(num_cpus=os.cpu_count(), _temp_dir=tempfile.mkdtemp(prefix="ray", dir=temp))
        per_scan = {}
        for workers in (1, 2):
            runner = RayBatchRunner(factory, images, folder / f"ray{workers}", options=RayOptions(workers=workers),
                                    on_note=lambda line: None)
            wall, reports = timed_run(runner, prompts)
            per_scan[workers] = report_line(f"Ray, {workers} worker(s) x 1 CPU", args.scans, wall, reports, workers)
        import ray

        ray.shutdown()
        print(f"2 workers against 1: {per_scan[1] / per_scan[2] * 2:.2f}x the steady rate "
              f"(2.00x would be perfect scaling); one process took {single:.2f} s/scan. "
              f"Load average {os.getloadavg()[0]:.1f} at the end.")

        outside_model = sum(report.seconds - sum(outcome.seconds for outcome in report.outcomes)
                            for report in reports) / len(reports)
        tracked = args.slices  # the box's slice and every other slice, once each
        gpu_scan = outside_model + tracked / args.gpu_slices_per_second
        print(f"\nPROJECTION (arithmetic, not measured), for scans like these: per scan {outside_model:.3f} s outside "
              f"the model (reading, windowing, composing, writing; measured here) + {tracked} slices / "
              f"{args.gpu_slices_per_second:g} slices/s (an assumed GPU rate) = {gpu_scan:.3f} s on one GPU worker; "
              f"linear in workers:")
        for workers in (1, 4, 8, 32):
            print(f"  {workers:>3} GPU workers: {workers * 3600 / gpu_scan:>10,.0f} scans/h   "
                  f"({workers:>3} CPU workers at this machine's {per_scan[1]:.2f} s/scan: "
                  f"{workers * 3600 / per_scan[1]:>8,.0f} scans/h)")


if __name__ == "__main__":
    main()

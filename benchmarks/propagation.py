"""Propagation speed and memory of the real-size models with random weights.

    python benchmarks/propagation.py [--model NAME [NAME ...]] [--slices 64] [--size 512]
                                     [--precision auto|float32|bfloat16] [--early-stop N | --no-early-stop]
                                     [--object-slices K] [--threads N] [--json]

--model takes names of the model catalogue (``medsam2 models``; default ``latest``): each is measured with random
weights of its architecture (the MedSAM2 models share SAM 2.1 Hiera-T; ``efficient-tiny`` and
``efficient-small`` are EfficientTAM-Ti and -S), one after the other in the same run, reported side by side.

A synthetic (slices, size, size) uint8 volume with a bright ellipsoid (the object) centred on the middle slice,
a box on the middle slice, both directions. Random weights give the same amount of work as the real ones.

Measured, all in one run so that ratios hold on a shared machine:
- the warm-up an application runs once when it loads the model (``VolumePredictor.warm_up``: the first call
  of each compute kernel sets it up), then the preview: box -> mask on the key slice with the model loaded and
  the slice not yet encoded (the median of three, each on a fresh cache); then again with its features cached
  (that preview must not run the memory encoder: ``preview_cached_memory_encoder_calls``);
- a full propagation reusing the preview's cache: seconds per tracked slice, minor page faults per tracked
  slice, image-encoder calls, total;
- in bfloat16 mode without early stop, the same in float32 (exact mode), the speed-up per tracked slice and
  the masks' agreement (Dice and differing voxels of the union of all slices);
- with early stop: the same propagation with early stop, against the full one. Random weights see no object,
  so both runs use :class:`ExtentObjectScoreDouble`, a TEST DOUBLE of the model whose object score follows
  the synthetic object's true extent; the saving is mechanical, and that is what it shows.
- peak RSS of the process.

For comparison, the official code on a 2-core machine in float32: 0.80-0.84 s per tracked slice (encoder
0.42 s), 53.9 s in all for 64 slices, 66 encoder calls, 1.42 GiB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from MedSAM2Lib.inference.early_stop import DEFAULT_ABSENT_SLICES  # noqa: E402
from MedSAM2Lib.inference.predictor import FeatureCache, VolumePredictor, select_device  # noqa: E402
from MedSAM2Lib.inference.preprocessing import normalise  # noqa: E402
from MedSAM2Lib.model import MedSAM2  # noqa: E402
from MedSAM2Lib.model.config import (EFFICIENTTAM_S_512, EFFICIENTTAM_TI_512, MEDSAM2_T512,  # noqa: E402
                                     MedSAM2Config)
from MedSAM2Lib.model_catalogue import (EFFICIENTTAM_S, EFFICIENTTAM_TI, HIERA_T, MODEL_NAMES,  # noqa: E402
                                        catalogue_model)

ARCHITECTURE_CONFIGS = {HIERA_T: MEDSAM2_T512, EFFICIENTTAM_TI: EFFICIENTTAM_TI_512, EFFICIENTTAM_S: EFFICIENTTAM_S_512}
from MedSAM2Lib.model.medsam2 import NO_OBJECT_LOGIT, ImageFeatures, SliceOutput  # noqa: E402
from MedSAM2Lib.model.precision import PRECISIONS, resolve_precision  # noqa: E402
from benchmarks.memory import minor_page_faults, peak_rss_gib  # noqa: E402

BACKGROUND, OBJECT = 60, 150  # grey values at the volume's centre without and with the object


def synthetic_volume(slices: int, size: int, object_slices: Optional[int]) -> np.ndarray:
    """Smooth background, noise and a bright ellipsoid in the middle spanning ``object_slices`` slices (default
    60% of the depth). Built slice by slice: no float copy of the volume."""
    rng = np.random.default_rng(0)
    y, x = np.ogrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    half_depth = (object_slices if object_slices else 0.6 * slices) / 2
    volume = np.empty((slices, size, size), dtype=np.uint8)
    for z in range(slices):
        depth = (z - (slices - 1) / 2) / half_depth
        image = BACKGROUND + 40 * (x + y) + rng.normal(0, 8, (size, size))
        image[(x / 0.3) ** 2 + (y / 0.25) ** 2 + depth**2 < 1] += OBJECT - BACKGROUND
        volume[z] = np.clip(image, 0, 255)
    return volume


class ExtentObjectScoreDouble(MedSAM2):
    """TEST DOUBLE for MedSAM2's object-score head (benchmark only): the whole real network runs, so the cost
    per slice is real, but a tracked slice's object score is +10 where the slice's centre shows the synthetic
    object and -10 elsewhere, with the output made consistent with it (no mask and the no-object pointer where
    absent). Random weights see no object; this stand-in follows the object's true extent."""

    _threshold = float(normalise(np.full((1, 1), (BACKGROUND + OBJECT) // 2, np.uint8))[0, 0, 0])

    def encode_image(self, image: torch.Tensor) -> ImageFeatures:
        features = super().encode_image(image)
        side = image.shape[-1]
        centre = image[0, 0, side // 2 - 8 : side // 2 + 8, side // 2 - 8 : side // 2 + 8]
        features.object_present = bool(centre.mean() > self._threshold)  # remembered with the features
        return features

    def segment(self, features, points=None, mask_logits=None, memory=None) -> SliceOutput:
        output = super().segment(features, points, mask_logits, memory)
        if points is not None or memory is None:  # a prompted slice keeps the model's own score
            return output
        present = features.object_present
        return SliceOutput(
            output.low_res_logits if present else torch.full_like(output.low_res_logits, NO_OBJECT_LOGIT),
            output.obj_ptr if present else self.no_obj_ptr.expand_as(output.obj_ptr),
            torch.full_like(output.object_score_logits, 10.0 if present else -10.0),
            output.iou_scores,
            output.candidates,
        )


class Counter:
    """Counts forward calls of a module."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        module.register_forward_hook(self._count)

    def _count(self, *_) -> None:
        self.calls += 1


def measure(model: MedSAM2, volume: np.ndarray, precision: str, early_stop: Optional[int]) -> Dict:
    """Preview, cached preview, then a propagation through the same cache."""
    key = volume.shape[0] // 2
    size = volume.shape[1]
    box = [0.35 * size, 0.38 * size, 0.65 * size, 0.62 * size]
    # The double marks the features of each encoder call, so it needs one slice per call.
    one_by_one = isinstance(model, ExtentObjectScoreDouble)
    predictor = VolumePredictor(model, precision=precision, early_stop=early_stop,
                                encode_batch=1 if one_by_one else None)
    memory_encoder = Counter(predictor.model.memory_encoder)
    cache = FeatureCache(volume)

    started = time.perf_counter()
    predictor.warm_up()
    warm_up = time.perf_counter() - started

    # Box -> mask on a slice not yet encoded, three times (fresh caches, the last one kept for the propagation).
    previews = []
    for preview_cache in (FeatureCache(volume), FeatureCache(volume), cache):
        predictor.encoder_calls = 0  # so that encoder_calls counts the kept preview's and the propagation's
        started = time.perf_counter()
        predictor.segment_slice(volume, key, box, cache=preview_cache)
        previews.append(round(time.perf_counter() - started, 3))
    memory_encoder.calls = 0
    started = time.perf_counter()
    predictor.segment_slice(volume, key, box, cache=cache)
    preview_cached = time.perf_counter() - started
    preview_memory_encoder_calls = memory_encoder.calls

    mask = np.zeros(volume.shape, dtype=bool)
    computed, stops = [], []
    started, started_cpu = time.perf_counter(), time.process_time()
    key_done = key_done_cpu = None
    for result in predictor.propagate(volume, key, box, "both", cache=cache):
        if key_done is None:
            key_done, key_done_cpu = time.perf_counter(), time.process_time()
            faults_before = minor_page_faults()
        mask[result.index] = result.mask
        computed.append(result.index)
        if result.stop is not None:
            stops.append(str(result.stop))
    total, total_cpu = time.perf_counter() - started, time.process_time() - started_cpu
    faults = minor_page_faults() - faults_before
    tracked = predictor.encoder_calls - 1  # the preview encoded the key slice; each other slice once
    return {
        "precision": str(predictor.dtype).replace("torch.", ""),
        "warm_up_s": round(warm_up, 3),
        "preview_s": float(np.median(previews)),
        "preview_runs_s": previews,
        "preview_cached_s": round(preview_cached, 3),
        "preview_cached_memory_encoder_calls": preview_memory_encoder_calls,
        "tracked_slices": tracked,
        "per_tracked_slice_s": round((total - (key_done - started)) / max(tracked, 1), 3),
        # CPU seconds of all threads: less disturbed than wall time when other processes share the cores.
        "per_tracked_slice_cpu_s": round((total_cpu - (key_done_cpu - started_cpu)) / max(tracked, 1), 3),
        # Fresh pages the process touched (see MedSAM2Lib/inference/cpu_memory.py).
        "minor_page_faults_per_tracked_slice": round(faults / max(tracked, 1)),
        "encoder_calls": predictor.encoder_calls,
        "total_s": round(total, 1),
        "stops": stops,
        "_mask": mask,
        "_computed": computed,
    }


def agreement(fast: np.ndarray, exact: np.ndarray) -> Dict:
    both = np.count_nonzero(fast & exact)
    total = np.count_nonzero(fast) + np.count_nonzero(exact)
    return {
        "dice_fast_vs_exact": round(2 * both / total, 5) if total else 1.0,
        "differing_voxels": int(np.count_nonzero(fast ^ exact)),
        "exact_voxels": int(np.count_nonzero(exact)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--object-slices", type=int, default=None, help="object extent in slices (default 60%%)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto")
    parser.add_argument("--threads", type=int, default=None)
    stop = parser.add_mutually_exclusive_group()
    stop.add_argument("--early-stop", type=int, default=None, metavar="N",
                      help=f"also measure early stop after N slices without the object (default {DEFAULT_ABSENT_SLICES})")
    stop.add_argument("--no-early-stop", action="store_true", help="measure full propagation only")
    parser.add_argument("--model", nargs="+", choices=MODEL_NAMES, default=["latest"],
                        help="catalogue models whose architectures to measure, in this order (default: latest)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    early_stop = None if args.no_early_stop else (args.early_stop or DEFAULT_ABSENT_SLICES)

    device = select_device(args.device)
    volume = synthetic_volume(args.slices, args.size, args.object_slices)
    report = {
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "volume": list(volume.shape),
        "object_slices": args.object_slices or round(0.6 * args.slices),
        "object_score": "test double following the object's extent" if early_stop else "model",
    }
    models = {}
    for name in args.model:
        architecture = catalogue_model(name).architecture
        models[name] = {"architecture": architecture,
                        **measure_model(ARCHITECTURE_CONFIGS[architecture], volume, args.precision, early_stop, device)}
    if len(models) == 1:
        report.update(next(iter(models.values())))
    else:
        report["seconds_per_tracked_slice"] = {name: model["runs"]["full"]["per_tracked_slice_s"]
                                               for name, model in models.items()}
        report["models"] = models
    report["peak_rss_gib"] = round(peak_rss_gib(), 3)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for name, value in report.items():
            print(f"{name:40s} {value}")


def measure_model(config: MedSAM2Config, volume: np.ndarray, precision: str, early_stop: Optional[int],
                  device: torch.device) -> Dict:
    """The runs of one architecture (random weights, seed 0): full propagation, exact mode beside a fast one,
    early stop."""
    torch.manual_seed(0)
    # The double differs from the real model only in the object score; without early stop it is not needed.
    model = (ExtentObjectScoreDouble if early_stop else MedSAM2)(config).to(device).eval()
    report: Dict = {}
    runs = {"full": measure(model, volume, precision, None)}
    # Fast against exact mode on the real model's masks: measured without early stop (its double alters them).
    if resolve_precision(precision, device) != torch.float32 and not early_stop:
        runs["exact"] = measure(model, volume, "float32", None)
        for clock in ("", "_cpu"):
            report[f"fast_speedup_per_tracked_slice{clock}"] = round(
                runs["exact"][f"per_tracked_slice{clock}_s"] / runs["full"][f"per_tracked_slice{clock}_s"], 2
            )
        report.update(agreement(runs["full"]["_mask"], runs["exact"]["_mask"]))
    if early_stop:
        runs["early_stop"] = measure(model, volume, precision, early_stop)
        report["early_stop_slices"] = early_stop
        report["early_stop_time_saving"] = round(runs["full"]["total_s"] / runs["early_stop"]["total_s"], 2)
        computed = runs["early_stop"]["_computed"]
        report["early_stop_masks_equal_full_on_computed_slices"] = bool(
            np.array_equal(runs["full"]["_mask"][computed], runs["early_stop"]["_mask"][computed])
        )
    for run in runs.values():
        del run["_mask"], run["_computed"]
    report["runs"] = runs
    return report


if __name__ == "__main__":
    main()

"""Make the video parity fixtures (Testing/Data/video/) with the OFFICIAL MedSAM2 video script.

Not run by the tests: it needs the official code, which the project does not depend on. Run it with a Python
that has torch, hydra-core, iopath, tqdm, numpy and Pillow, from a folder holding the official repository's
``sam2/`` package and ``medsam2_infer_video.py`` (bowang-lab/MedSAM2 at 332f30d), with this folder's
``medsam2_tiny_test.yaml`` copied into ``sam2/configs/``:

    cd OFFICIAL && PYTHONPATH=. python /path/to/Testing/Data/make_video_fixtures.py /path/to/Testing/Data

It writes a synthetic clip of 12 RGB JPEG frames with two objects (their paths cross), the first frame's palette
PNG of both objects, and, for each of the script's two ways (``vos_inference``: both objects in one state, the
non-overlap rule at output; ``vos_separate_inference_per_object``: one state per object, merged afterwards), the
palette PNGs the official function wrote and each object's mask logits at frame size before the non-overlap rule
(recorded by wrapping the predictor's ``propagate_in_video`` and ``_apply_non_overlapping_constraints``; the
functions themselves are called unchanged).

The model is the tiny test model with two tensors scaled by 5 (:data:`VIDEO_VARIANT`): with its random weights
as they are, the memory carries almost nothing of the prompt mask, both objects' tracked logits agree to about
1e-4 of their range, and which object wins a pixel would be decided by rounding. Scaled by 5, the memory
encoder's mask path and output make the objects' logits differ (median gap 0.3-2% of the range). Scaled by 10
or more, the tracking amplifies the bfloat16 rounding of the memory: the official code itself, run with both
objects in one batch and then one at a time, differs by more than 1e-4 of the range after a few frames.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import medsam2_infer_video as official
from sam2.build_sam import build_sam2_video_predictor

FRAMES, HEIGHT, WIDTH = 12, 72, 96
CLIP = "clip"  # the official functions take a folder of videos and a video name
VIDEO_VARIANT = {"memory_encoder.mask_downsampler.encoder.12.weight": 5.0, "memory_encoder.out_proj.weight": 5.0}


def video_variant(checkpoint: Path, destination: Path) -> Path:
    """The tiny checkpoint with the tensors of VIDEO_VARIANT multiplied by their factors."""
    state_dict = torch.load(checkpoint, weights_only=True)["model"]
    for key, factor in VIDEO_VARIANT.items():
        state_dict[key] = state_dict[key] * factor
    torch.save({"model": state_dict}, destination)
    return destination
PALETTE = [0, 0, 0, 230, 25, 75, 60, 180, 75] + [0] * (256 * 3 - 9)  # our own palette: black, red, green


def synthetic_clip(seed: int = 0):
    """(FRAMES, H, W, 3) uint8 frames and (FRAMES, H, W) uint8 labels: a bright disc moving right and a dark
    square moving left on a textured background, overlapping in the middle frames."""
    rng = np.random.default_rng(seed)
    rows, columns = np.mgrid[0:HEIGHT, 0:WIDTH]
    background = 90 + 25 * np.sin(columns / 9.0)[..., None] + 15 * np.cos(rows / 7.0)[..., None]
    frames, labels = [], []
    for t in range(FRAMES):
        image = background + rng.normal(0, 6, (HEIGHT, WIDTH, 3))
        label = np.zeros((HEIGHT, WIDTH), np.uint8)
        square = (np.abs(rows - 40) <= 11) & (np.abs(columns - (70 - 4 * t)) <= 11)
        disc = (rows - 30) ** 2 + (columns - (18 + 5 * t)) ** 2 <= 12 ** 2
        image[square] = [40, 60, 150]
        image[disc] = [235, 200, 120]
        label[square] = 2
        label[disc] = 1  # the disc is in front
        frames.append(np.clip(image, 0, 255).astype(np.uint8))
        labels.append(label)
    return np.stack(frames), np.stack(labels)


def recorded(predictor, log):
    """``predictor`` whose ``propagate_in_video`` also appends to ``log`` what it yields, with each object's mask
    logits at frame size as they were before the non-overlap rule (its input, recorded on the way)."""
    constrain, propagate = predictor._apply_non_overlapping_constraints, predictor.propagate_in_video
    before = []

    def constrain_and_record(masks):
        before.append(masks.float().cpu().numpy().copy())
        return constrain(masks)

    def propagate_and_record(*args, **kwargs):
        for frame_idx, obj_ids, masks in propagate(*args, **kwargs):
            log.append((frame_idx, list(obj_ids), before[-1]))
            yield frame_idx, obj_ids, masks

    predictor._apply_non_overlapping_constraints = constrain_and_record
    predictor.propagate_in_video = propagate_and_record
    return predictor


def main(data: Path) -> None:
    torch.set_num_threads(1)
    out = data / "video"
    if out.exists():
        shutil.rmtree(out)
    frames, labels = synthetic_clip()
    frame_dir, mask_dir = out / "frames" / CLIP, out / "masks" / CLIP
    frame_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    names = [f"{t:05d}" for t in range(FRAMES)]
    for name, frame in zip(names, frames):
        Image.fromarray(frame).save(frame_dir / f"{name}.jpg", quality=95)
    first = Image.fromarray(labels[0], mode="P")
    first.putpalette(PALETTE)
    first.save(mask_dir / f"{names[0]}.png")
    decoded = np.stack([np.asarray(Image.open(frame_dir / f"{name}.jpg").convert("RGB")) for name in names])

    arrays = {"decoded_frames": decoded, "labels": labels}
    meta = {"torch": torch.__version__, "numpy": np.__version__, "threads": torch.get_num_threads(),
            "frames": names, "variant": VIDEO_VARIANT}
    checkpoint = video_variant(data / "medsam2_tiny_random_seed0.pt", out / "variant.pt")
    for mode, function in (("joint", official.vos_inference),
                           ("separate", official.vos_separate_inference_per_object)):
        log = []
        predictor = recorded(build_sam2_video_predictor(
            "configs/medsam2_tiny_test.yaml", str(checkpoint), device="cpu", apply_postprocessing=False,
            hydra_overrides_extra=["++model.non_overlap_masks=true"]), log)
        kwargs = {"save_palette_png": True} if mode == "joint" else {}
        function(predictor=predictor, base_video_dir=str(out / "frames"), input_mask_dir=str(out / "masks"),
                 output_mask_dir=str(out / f"expected_{mode}"), video_name=CLIP, score_thresh=0.0, **kwargs)
        arrays[f"{mode}_frames"] = np.array([frame for frame, _, _ in log], np.int32)
        arrays[f"{mode}_object_ids"] = np.array([ids for _, ids, _ in log], np.int32)
        arrays[f"{mode}_logits"] = np.stack([masks[:, 0] for _, _, masks in log])  # (yields, objects, H, W)
        margin = float(np.abs(arrays[f"{mode}_logits"]).min())
        meta[f"{mode}_smallest_abs_logit"] = margin
        meta[f"{mode}_fraction_within_1e-3_of_0"] = float(np.mean(np.abs(arrays[f"{mode}_logits"]) < 1e-3))
    checkpoint.unlink()
    np.savez_compressed(out / "reference.npz", meta_json=np.array(json.dumps(meta)), **arrays)
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())

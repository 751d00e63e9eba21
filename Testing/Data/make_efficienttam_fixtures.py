"""Make the EfficientTAM (Efficient MedSAM2) parity fixtures with the OFFICIAL code; see README.md here.

Runs outside this project's environment, in a virtual environment holding the official
``efficient_track_anything`` package of bowang-lab/MedSAM2 (``--official`` names the folder above it) with
hydra-core, omegaconf, Pillow, tqdm and scipy. Writes into this folder:

- ``efficienttam_tiny_random_seed5.pt``: random weights (seed 5) of ``efficienttam_tiny_test.yaml``;
- ``expected_efficienttam_tiny_fillholes.npz``: the one-box CT pipeline, both directions;
- ``session_efficienttam_{mask_on_key,two_boxes}.npz``: two interactive-session scenarios;
- ``state_dict_efficienttam_{ti,s}.json``: key -> shape of the real ``ti`` and ``s`` models.

The keys of each file are those of the Hiera fixtures (``../../shared/fixtures/medsam2`` READMEs).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
CONFIG = "efficienttam_tiny_test.yaml"
SEED = 5  # seeds 0-6 tried: this one gives masks closest to half of each slice
CHECKPOINT = HERE / f"efficienttam_tiny_random_seed{SEED}.pt"
KEYFRAME_BOX = [108, 73, 179, 128]
# Added to the object-score head's last bias: with plain random weights the object score is negative on
# every slice, and every mask would be the "no object" one.
OBJECT_SCORE_BIAS = 4.0


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Every parameter random, so that each one affects the output (the official init leaves many at 0 or 1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() >= 2:
                fan_in = parameter[0].numel()
                values = torch.randn(parameter.shape, generator=generator) / fan_in**0.5
            elif name.endswith("weight"):  # norms' scales and layer scales
                values = 1.0 + 0.1 * torch.randn(parameter.shape, generator=generator)
            else:
                values = 0.1 * torch.randn(parameter.shape, generator=generator)
            parameter.copy_(values)
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += OBJECT_SCORE_BIAS


def connected_components_8(mask: torch.Tensor):
    """What the official CUDA extension returns, on CPU: (N,1,H,W) labels of 8-connected components of a
    binary mask (0 = background) and the area of each pixel's component."""
    from scipy import ndimage

    labels = np.zeros(mask.shape, dtype=np.int32)
    areas = np.zeros(mask.shape, dtype=np.int32)
    for n in range(mask.shape[0]):
        labelled, _ = ndimage.label(mask[n, 0].cpu().numpy(), structure=np.ones((3, 3)))
        sizes = np.bincount(labelled.ravel())
        sizes[0] = 0
        labels[n, 0], areas[n, 0] = labelled, sizes[labelled]
    return torch.from_numpy(labels), torch.from_numpy(areas)


def largest_component(union: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    labelled, count = ndimage.label(union, structure=np.ones((3, 3, 3)))
    if count == 0:
        return union.copy()
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return (labelled == sizes.argmax()).astype(np.uint8)


def preprocess(volume: np.ndarray) -> torch.Tensor:
    """The official CT script's preprocessing: RGB, Pillow resize to 512 (bicubic), ImageNet normalisation."""
    from PIL import Image

    resized = np.stack([np.array(Image.fromarray(s).convert("RGB").resize((512, 512))).transpose(2, 0, 1)
                        for s in volume]).astype(np.float64)
    images = torch.from_numpy(resized / 255.0)
    images -= torch.tensor((0.485, 0.456, 0.406), dtype=torch.float32)[:, None, None]
    images /= torch.tensor((0.229, 0.224, 0.225), dtype=torch.float32)[:, None, None]
    return images


def state_outputs(state):
    """{slice: output} of object 1 in a tracking state, conditioning and tracked slices together."""
    outputs = dict(state["output_dict_per_obj"][0]["non_cond_frame_outputs"])
    outputs.update(state["output_dict_per_obj"][0]["cond_frame_outputs"])
    return outputs


def ct_pipeline(predictor, images, volume, key_slice, box):
    """Box on the key slice, propagate forward; reset; box again, propagate in reverse (the official CT script)."""
    height, width = volume.shape[1:]
    result, union = {}, np.zeros(volume.shape, dtype=np.uint8)
    meta = {"min_abs_object_score": np.inf, "lowres_within_1e-3_of_0": 0, "lowres_total": 0}
    for prefix, reverse in (("fwd", False), ("rev", True)):
        state = predictor.init_state(images, height, width)
        predictor.add_new_points_or_box(state, frame_idx=key_slice, obj_id=1, box=np.array(box, dtype=np.float32))
        order = []
        for frame, _, logits in predictor.propagate_in_video(state, start_frame_idx=key_slice, reverse=reverse):
            order.append(frame)
            union[frame] |= (logits[0, 0] > 0).numpy().astype(np.uint8)
        outputs = state_outputs(state)
        frames = sorted(outputs)
        result[f"{prefix}_frame_idx"] = np.array(order, dtype=np.int64)
        result[f"{prefix}_state_frames"] = np.array(frames, dtype=np.int64)
        result[f"{prefix}_lowres_logits"] = np.stack([outputs[f]["pred_masks"][0, 0].numpy() for f in frames])
        result[f"{prefix}_object_score_logits"] = np.array(
            [float(outputs[f]["object_score_logits"]) for f in frames], dtype=np.float32)
        result[f"{prefix}_obj_ptr"] = np.stack([outputs[f]["obj_ptr"][0].numpy() for f in frames])
        update_margins(meta, result[f"{prefix}_lowres_logits"], result[f"{prefix}_object_score_logits"])
        predictor.reset_state(state)
    result["seg_union"], result["seg_final"] = union, largest_component(union)
    return result, meta


def update_margins(meta, lowres: np.ndarray, scores: np.ndarray) -> None:
    meta["min_abs_object_score"] = float(min(meta["min_abs_object_score"], np.abs(scores).min()))
    meta["lowres_within_1e-3_of_0"] += int((np.abs(lowres) < 1e-3).sum())
    meta["lowres_total"] += int(lowres.size)


def session(predictor, images, volume, calls):
    """Each direction in its own tracking state, given ``calls`` (the sessions/README.md format)."""
    height, width = volume.shape[1:]
    result, unions = {}, {}
    meta = {"min_abs_object_score": np.inf, "lowres_within_1e-3_of_0": 0, "lowres_total": 0}
    for prefix, reverse in (("fwd", False), ("rev", True)):
        state = predictor.init_state(images, height, width)
        union = np.zeros(volume.shape, dtype=np.uint8)
        for number, call in enumerate(calls[prefix]):
            key = f"{prefix}_call{number}"
            if call["call"] == "add_new_points_or_box":
                _, _, logits = predictor.add_new_points_or_box(
                    state, frame_idx=call["slice"], obj_id=1, box=np.array(call["box"], dtype=np.float32),
                    clear_old_points=call["clear_old_points"])
                result[f"{key}_logits"] = logits[0, 0].numpy()
            elif call["call"] == "add_new_mask":
                _, _, logits = predictor.add_new_mask(state, frame_idx=call["slice"], obj_id=1,
                                                      mask=volume_mask(call))
                result[f"{key}_logits"] = logits[0, 0].numpy()
            else:
                union[:] = 0
                frames = []
                for frame, _, logits in predictor.propagate_in_video(state, reverse=reverse):
                    frames.append(frame)
                    union[frame] = (logits[0, 0] > 0).numpy()
                outputs = state_outputs(state)
                result[f"{key}_frames"] = np.array(frames, dtype=np.int32)
                result[f"{key}_lowres_logits"] = np.stack([outputs[f]["pred_masks"][0, 0].numpy() for f in frames])
                result[f"{key}_object_scores"] = np.array(
                    [float(outputs[f]["object_score_logits"]) for f in frames], dtype=np.float32)
                update_margins(meta, result[f"{key}_lowres_logits"], result[f"{key}_object_scores"])
        unions[prefix] = union
        predictor.reset_state(state)
    union = unions["fwd"] | unions["rev"]
    result["seg_union"], result["seg_final"] = union, largest_component(union)
    result["calls_json"] = np.array(json.dumps(calls))
    return result, meta


GTS: dict = {}


def volume_mask(call) -> np.ndarray:
    return GTS["gts"][call["slice"]] > 0


def scenarios():
    box_calls = [{"call": "add_new_points_or_box", "slice": s, "clear_old_points": True, "box": KEYFRAME_BOX}
                 for s in (8, 16)]
    mask_calls = [{"call": "add_new_mask", "slice": 12}]
    return {
        "two_boxes": {p: box_calls + [{"call": "propagate_in_video", "reverse": p == "rev"}] for p in ("fwd", "rev")},
        "mask_on_key": {p: mask_calls + [{"call": "propagate_in_video", "reverse": p == "rev"}]
                        for p in ("fwd", "rev")},
    }


def key_shapes(build, config: str) -> dict:
    model = build(config, None, device="cpu")
    return {key: list(value.shape) for key, value in model.state_dict().items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, required=True, help="folder holding efficient_track_anything/")
    parser.add_argument("--volume", type=Path, required=True, help="shared/fixtures/medsam2/input_volume.npz")
    args = parser.parse_args()
    torch.set_num_threads(2)  # as the Hiera fixtures: float sums on a CPU depend on the thread count
    sys.path.insert(0, str(args.official))
    shutil.copy(HERE / CONFIG, args.official / "efficient_track_anything" / "configs" / CONFIG)
    import efficient_track_anything.utils.misc as misc
    from efficient_track_anything.build_efficienttam import build_efficienttam_video_predictor_npz as build

    for name in ("ti", "s"):
        shapes = key_shapes(build, f"configs/efficienttam_{name}_512x512.yaml")
        (HERE / f"state_dict_efficienttam_{name}.json").write_text(json.dumps(shapes, indent=0) + "\n")

    model = build(f"configs/{CONFIG}", None, device="cpu")
    randomise(model, seed=SEED)
    torch.save({"model": model.state_dict()}, CHECKPOINT)
    predictor = build(f"configs/{CONFIG}", str(CHECKPOINT), device="cpu")

    content = np.load(args.volume)
    volume, key_slice, box = content["imgs"], int(content["key_slice"]), [float(v) for v in content["box"]]
    GTS["gts"] = content["gts"]
    images = preprocess(volume)
    margins = {}
    # Hole filling as on a GPU (the official CUDA extension's 8-connected components, computed on the CPU).
    # Without it the official code skips the step with a warning; with these weights no hole of at most 8
    # pixels arises, and that run gave the same arrays (checked when these files were made).
    misc.get_connected_components = connected_components_8
    with torch.inference_mode():
        result, margins["ct_pipeline"] = ct_pipeline(predictor, images, volume, key_slice, box)
        np.savez_compressed(HERE / "expected_efficienttam_tiny_fillholes.npz", **result)
        for name, calls in scenarios().items():
            result, margins[name] = session(predictor, images, volume, calls)
            for call in calls["fwd"]:
                if call["call"] == "add_new_mask":
                    result[f"mask_{call['slice']}"] = volume_mask(call)
            np.savez_compressed(HERE / f"session_efficienttam_{name}.npz", **result)
    print(json.dumps(margins, indent=1))


if __name__ == "__main__":
    main()

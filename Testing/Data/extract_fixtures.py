"""Copy the arrays our tests compare from the shared MedSAM2 parity fixtures into Testing/Data.

Usage: python Testing/Data/extract_fixtures.py [FIXTURE_DIR]   (default: ../shared/fixtures/medsam2)

Only what the tests read is kept, so that a plain clone can run them:
- the tiny checkpoint unchanged, and the tensors in which the fallback/absent checkpoints differ from it;
- per fixture set: yield order, the 128x128 low-resolution logits of every yielded slice (the reference's
  yielded logits are exactly their bilinear resize to the slice size, which the tests recompute), object
  scores, object pointers and the final masks;
- the resized slices and the key-slice image-encoder intermediates;
- the key/shape listings of the real (t512) and tiny state_dicts;
- per interactive-session scenario (sessions/): the official calls, the yield order, low-resolution logits and
  object scores of each propagate call, the masks given as prompts, and the final masks. Dropped, after
  checking that nothing is lost: the slice-size logits each add call returned where they are exactly the
  bilinear resize of that slice's low-resolution logits in the next propagate call.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
SETS = {
    "tiny_fillholes": ("tiny/expected_tiny_fillholes.npz", "tiny/medsam2_tiny_random_seed0.pt"),
    "tiny_nofill": ("tiny/expected_tiny_nofill.npz", "tiny/medsam2_tiny_random_seed0.pt"),
    "tiny_fallback_fillholes": ("tiny_fallback/expected_tiny_fallback_fillholes.npz",
                                "tiny_fallback/medsam2_tiny_fallback_seed0.pt"),
    "tiny_fallback_nofill": ("tiny_fallback/expected_tiny_fallback_nofill.npz",
                             "tiny_fallback/medsam2_tiny_fallback_seed0.pt"),
    "tiny_absent_nofill": ("tiny_absent/expected_tiny_absent_nofill.npz", "tiny_absent/medsam2_tiny_absent_seed0.pt"),
}
BASE_CHECKPOINT = "tiny/medsam2_tiny_random_seed0.pt"
EXPECTED_KEYS = ["fwd_frame_idx", "rev_frame_idx", "fwd_state_frames", "rev_state_frames", "fwd_lowres_logits",
                 "rev_lowres_logits", "fwd_object_score_logits", "rev_object_score_logits", "fwd_obj_ptr",
                 "rev_obj_ptr", "seg_union", "seg_final"]
SESSIONS = ["box_and_points", "points_only", "two_boxes", "mask_on_key", "correct_tracked_with_points",
            "correct_tracked_with_mask"]
INTERMEDIATE_KEYS = ["image_input", "trunk_0", "trunk_1", "trunk_2", "trunk_3", "neck_fpn_0", "neck_fpn_1",
                     "neck_fpn_2", "neck_pos_2"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(fixtures: Path) -> None:
    shutil.copyfile(fixtures / BASE_CHECKPOINT, HERE / "medsam2_tiny_random_seed0.pt")
    shutil.copyfile(fixtures / "configs/medsam2_tiny_test.yaml", HERE / "medsam2_tiny_test.yaml")
    for listing in ("state_dict_t512.json", "state_dict_tiny.json"):
        shutil.copyfile(fixtures / listing, HERE / listing)
    volume = np.load(fixtures / "input_volume.npz")
    np.savez_compressed(HERE / "input_volume.npz", imgs=volume["imgs"], key_slice=volume["key_slice"],
                        box=volume["box"])

    base = torch.load(fixtures / BASE_CHECKPOINT, weights_only=True)["model"]
    deltas = {}
    for name in ("tiny_fallback", "tiny_absent"):
        variant = torch.load(fixtures / SETS[f"{name}_nofill"][1], weights_only=True)["model"]
        for key, tensor in variant.items():
            if not torch.equal(tensor, base[key]):
                deltas[f"{name}/{key}"] = tensor.numpy()
    np.savez_compressed(HERE / "checkpoint_variants.npz", **deltas)

    for name, (expected, _) in SETS.items():
        reference = np.load(fixtures / expected)
        np.savez_compressed(HERE / f"expected_{name}.npz", **{key: reference[key] for key in EXPECTED_KEYS})
    np.savez_compressed(HERE / "resized_u8.npz",
                        resized_u8=np.load(fixtures / SETS["tiny_fillholes"][0])["resized_u8"])
    intermediates = np.load(fixtures / "tiny/intermediates_tiny_keyslice.npz")
    np.savez_compressed(HERE / "intermediates_tiny_keyslice.npz",
                        **{key: intermediates[key] for key in INTERMEDIATE_KEYS})

    for name in SESSIONS:
        extract_session(fixtures, name)

    sources = dict.fromkeys([BASE_CHECKPOINT, "configs/medsam2_tiny_test.yaml", "input_volume.npz",
                             "tiny/intermediates_tiny_keyslice.npz", "state_dict_t512.json", "state_dict_tiny.json"]
                            + sorted({p for pair in SETS.values() for p in pair})
                            + [f"sessions/{name}.npz" for name in SESSIONS])
    with open(HERE / "SOURCES.sha256", "w") as listing:
        for source in sources:
            listing.write(f"{sha256(fixtures / source)}  {source}\n")


def extract_session(fixtures: Path, name: str) -> None:
    reference = np.load(fixtures / "sessions" / f"{name}.npz")
    gts = np.load(fixtures / "input_volume.npz")["gts"]
    calls = json.loads(str(reference["calls_json"]))
    kept = {"calls_json": reference["calls_json"], "seg_union": reference["seg_union"],
            "seg_final": reference["seg_final"]}
    for direction, direction_calls in calls.items():
        for i, call in enumerate(direction_calls):
            prefix = f"{direction}_call{i}"
            if call["call"] == "propagate_in_video":
                for key in ("frames", "lowres_logits", "object_scores"):
                    kept[f"{prefix}_{key}"] = reference[f"{prefix}_{key}"]
                continue
            if "mask" in call:
                kept[f"mask_{call['slice']}"] = gts[call["slice"]].astype(bool)
            # The returned logits are the bilinear resize of the slice's low-res logits in the next propagation.
            following = next(j for j in range(i + 1, len(direction_calls))
                             if direction_calls[j]["call"] == "propagate_in_video")
            frames = list(reference[f"{direction}_call{following}_frames"])
            if call["slice"] not in frames:  # e.g. a keyframe the reverse pass never reaches: keep the logits
                kept[f"{prefix}_logits"] = reference[f"{prefix}_logits"]
                continue
            low_res = torch.from_numpy(reference[f"{direction}_call{following}_lowres_logits"][frames.index(call["slice"])])
            resized = F.interpolate(low_res[None, None], size=gts.shape[1:], mode="bilinear", align_corners=False)
            np.testing.assert_array_equal(resized[0, 0].numpy(), reference[f"{prefix}_logits"])
    np.savez_compressed(HERE / f"session_{name}.npz", **kept)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[2] / "shared" / "fixtures" / "medsam2")

"""Copy the arrays our tests compare from the shared MedSAM2 parity fixtures into Testing/Data.

Usage: python Testing/Data/extract_fixtures.py [FIXTURE_DIR]   (default: ../shared/fixtures/medsam2)

Only what the tests read is kept, so that a plain clone can run them:
- the tiny checkpoint unchanged, and the tensors in which the fallback/absent checkpoints differ from it;
- per fixture set: yield order, the 128x128 low-resolution logits of every yielded slice (the reference's
  yielded logits are exactly their bilinear resize to the slice size, which the tests recompute), object
  scores, object pointers and the final masks;
- the resized slices and the key-slice image-encoder intermediates;
- the key/shape listings of the real (t512) and tiny state_dicts;
- for the Slicer correction scenarios: the official calls and final masks of the two "correct a tracked
  slice" sessions, and the lesion masks they give as mask prompts.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

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
CORRECTION_SESSIONS = ["correct_tracked_with_points", "correct_tracked_with_mask"]
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

    corrections = {}
    for name in CORRECTION_SESSIONS:
        reference = np.load(fixtures / "sessions" / f"{name}.npz")
        corrections.update({f"{name}_seg_final": reference["seg_final"], f"{name}_calls_json": reference["calls_json"]})
    for mask_slice in (7, 17):
        corrections[f"gts_{mask_slice}"] = volume["gts"][mask_slice]
    np.savez_compressed(HERE / "sessions_correction.npz", **corrections)

    sources = dict.fromkeys([BASE_CHECKPOINT, "configs/medsam2_tiny_test.yaml", "input_volume.npz",
                             "tiny/intermediates_tiny_keyslice.npz", "state_dict_t512.json", "state_dict_tiny.json"]
                            + sorted({p for pair in SETS.values() for p in pair})
                            + [f"sessions/{name}.npz" for name in CORRECTION_SESSIONS])
    with open(HERE / "SOURCES.sha256", "w") as listing:
        for source in sources:
            listing.write(f"{sha256(fixtures / source)}  {source}\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parents[2] / "shared" / "fixtures" / "medsam2")

"""Per-slice tracking time of variants measured in one run, interleaved: this tree against an earlier commit
(is exact mode no slower than before?), against other thread counts and between precisions (fast mode's
speed-up, less disturbed by a busy machine than within one process).

    python benchmarks/interleaved.py [--baseline REV [--baseline-precision bfloat16]] [--threads 2 1]
                                     [--precision float32 bfloat16] [--slices 24] [--rounds 3] [--json]

Each measurement is a fresh process (``--child``) that loads the same random t512 weights, propagates a box
through the same synthetic volume in both directions (no early stop) and reports seconds per tracked slice.
The variants take turns, round after round, so that a machine shared with other work slows them alike; each
variant's best round is compared. ``--baseline REV`` extracts that commit with ``git archive`` into a
temporary folder and measures it with the default thread count, in its default precision (float32, all an
old commit had) or in ``--baseline-precision``; its logits must equal this tree's in the same precision
(exact mode unchanged, and fast mode where only its speed changed), reported as the largest difference.
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def child(tree: Path, weights: Path, volume_path: Path, precision: Optional[str], threads: Optional[int],
          logits_path: Path) -> Dict:
    """Runs inside the measured process: ``tree``'s MedSAM2Lib, whatever its layout at that commit."""
    sys.path.insert(0, str(tree))
    import torch

    if threads:
        torch.set_num_threads(threads)
    try:
        from MedSAM2Lib.inference.predictor import VolumePredictor
        from MedSAM2Lib.model.config import MEDSAM2_T512
    except ImportError:  # the layout before MedSAM2Lib/inference and model/config.py
        from MedSAM2Lib.config import MEDSAM2_T512
        from MedSAM2Lib.predictor import VolumePredictor
    from MedSAM2Lib.model import MedSAM2

    model = MedSAM2(MEDSAM2_T512).eval()
    model.load_state_dict(torch.load(weights, weights_only=True))
    predictor = VolumePredictor(model, **({"precision": precision} if precision else {}))
    volume = np.load(volume_path)
    key, size = volume.shape[0] // 2, volume.shape[1]
    box = [0.35 * size, 0.38 * size, 0.65 * size, 0.62 * size]
    logits = np.empty(volume.shape, dtype=np.float32)
    scores = np.empty(volume.shape[0], dtype=np.float32)
    key_done = None
    started = time.perf_counter()
    for result in predictor.propagate(volume, key, box, "both"):
        if key_done is None:
            key_done = time.perf_counter()
        logits[result.index], scores[result.index] = result.logits, result.object_score
    tracked = volume.shape[0] - 1
    np.savez(logits_path, logits=logits, scores=scores)
    return {"per_tracked_slice_s": (time.perf_counter() - key_done) / tracked, "threads": torch.get_num_threads(),
            "key_slice_s": key_done - started}


def extract(revision: str, folder: Path) -> Path:
    """The commit's files (not a worktree: nothing is registered in the repository)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", revision], check=True,
                             capture_output=True).stdout
    tree = folder / revision
    tree.mkdir()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(tree, filter="data")
    return tree


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", metavar="REV", help="an earlier commit to compare with")
    parser.add_argument("--baseline-precision", help="the earlier commit's precision (default: its default, float32)")
    parser.add_argument("--threads", type=int, nargs="+", default=[0], help="thread counts of this tree (0: default)")
    parser.add_argument("--precision", nargs="+", default=["float32"],
                        help="this tree's precisions (auto, float32, bfloat16)")
    parser.add_argument("--slices", type=int, default=24)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=5, metavar=("TREE", "WEIGHTS", "VOLUME", "PRECISION", "THREADS"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--logits", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        tree, weights, volume, precision, threads = args.child
        print(json.dumps(child(Path(tree), Path(weights), Path(volume), precision if precision != "-" else None,
                               int(threads), args.logits)))
        return

    import torch

    sys.path.insert(0, str(ROOT))
    from benchmarks.propagation import synthetic_volume
    from MedSAM2Lib.model import MedSAM2
    from MedSAM2Lib.model.config import MEDSAM2_T512

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        torch.manual_seed(0)
        torch.save(MedSAM2(MEDSAM2_T512).state_dict(), folder / "weights.pt")
        np.save(folder / "volume.npy", synthetic_volume(args.slices, args.size, None))
        variants = [{"name": f"this tree, {precision}, threads {t or 'default'}", "tree": ROOT,
                     "precision": precision, "threads": t} for precision in args.precision for t in args.threads]
        if args.baseline:
            variants.append({"name": f"{args.baseline}, {args.baseline_precision or 'float32'}, threads default",
                             "tree": extract(args.baseline, folder), "precision": args.baseline_precision or "-",
                             "threads": 0})
        times: List[List[float]] = [[] for _ in variants]
        for _ in range(args.rounds):
            for number, variant in enumerate(variants):
                command = [sys.executable, __file__, "--child", str(variant["tree"]), str(folder / "weights.pt"),
                           str(folder / "volume.npy"), variant["precision"], str(variant["threads"]),
                           "--logits", str(folder / f"logits{number}.npz")]
                measured = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
                times[number].append(measured["per_tracked_slice_s"])
                variant["threads_used"] = measured["threads"]
        reference = np.load(folder / "logits0.npz")
        report = {"slices": args.slices, "size": args.size, "rounds": args.rounds, "variants": []}
        for number, variant in enumerate(variants):
            outputs = np.load(folder / f"logits{number}.npz")
            report["variants"].append({
                "name": variant["name"],
                "threads_used": variant["threads_used"],
                "per_tracked_slice_s": [round(t, 3) for t in times[number]],
                "best_s": round(min(times[number]), 3),
                "best_relative_to_first": round(min(times[number]) / min(times[0]), 3),
                # Random weights see no object: masks are empty and most logits the no-object constant, so
                # the object scores (the whole tracking chain's output) are the telling comparison.
                "max_abs_logit_difference_to_first": float(np.abs(outputs["logits"] - reference["logits"]).max()),
                "max_abs_object_score_difference_to_first":
                    float(np.abs(outputs["scores"] - reference["scores"]).max()),
                "masks_equal_to_first": bool(np.array_equal(outputs["logits"] > 0, reference["logits"] > 0)),
            })
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for variant in report["variants"]:
            print(json.dumps(variant))


if __name__ == "__main__":
    main()

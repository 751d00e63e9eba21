"""From mouse release to the preview in the segment, with and without encoding the slice in the background first.

    python benchmarks/preview_latency.py [--slices 64] [--size 512] [--rounds 5] [--precision auto|float32|bfloat16]
                                         [--checkpoint PATH [--config YAML]] [--device cpu] [--threads N] [--json]

Through the Slicer logic on slicer-core (a scene like the application's, the real vtkSlicerSegmentEditorLogic with
undo), as the effect drives it: a synthetic volume (``benchmarks/propagation.py``'s, a bright ellipsoid in noise)
in an axial view; each round scrolls the view to another slice and releases a box there on a new segment
(``InteractiveSegmenter.box``: the preview computed and written, one undoable edit). Timed: that call, from the
release to the segment holding the preview.

- ``without``: the slice is not encoded yet when the box is released (as before the pre-encoder): image encoder,
  decoders and the write.
- ``with``: the view's slice was encoded in the background first (``InteractiveSegmenter.pre_encode``, as the
  effect calls it when the mouse enters the view or the view scrolls; the benchmark then waits until the worker is
  idle, standing for the user's time to drag the box): decoders and the write only. Also timed: how long the
  request keeps the calling (UI) thread, and the background encoding itself.

Both use their own logic (and so their own feature cache) on the same model, on slices far enough apart that no
round finds its slice encoded by an earlier one; the stack is built (windowed) before the first round in both, so
that only the encoder's share differs. Each round checks that the two previews' logits are identical and that the
pre-encoded preview made no image-encoder call.

The model: the real-size MedSAM2 t512 architecture with random weights (seed 0; the same work as real weights), or
``--checkpoint`` (its architecture recognised, or ``--config``). Reported with the CPU's model and the instruction
sets that decide the speed (``benchmarks/hardware_limit.py``'s ``cpu_features``: AMX, AVX-512 BF16, AVX-512,
PyTorch's ATen kernel level) and the precision they led to. Run it on a quiet
machine: timings on shared cores are meaningless.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import List

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "Testing")]

from MedSAM2Lib.inference.predictor import VolumePredictor, select_device  # noqa: E402
from MedSAM2Lib.inference.preprocessing import Windowing  # noqa: E402
from MedSAM2Lib.model import MedSAM2  # noqa: E402
from MedSAM2Lib.model.checkpoint import load_model  # noqa: E402
from MedSAM2Lib.model.config import MEDSAM2_T512, load_config  # noqa: E402
from MedSAM2Lib.model.precision import PRECISIONS  # noqa: E402
from MedSAM2Lib.slicer_glue.interactive import InteractiveOptions, InteractiveSegmenter  # noqa: E402
from MedSAM2Lib.slicer_glue.logic import MedSAM2Logic, view_geometry  # noqa: E402
from MedSAM2Lib.slicer_glue.pre_encoder import NEIGHBOURS  # noqa: E402
from MedSAM2Lib.slicer_glue.scenario import add_volume  # noqa: E402
from benchmarks.hardware_limit import cpu_features  # noqa: E402
from benchmarks.propagation import synthetic_volume  # noqa: E402
from slicer_support import SlicerScene, ras_of, xy_of  # noqa: E402

OPTIONS = InteractiveOptions(windowing=Windowing("none"))  # the synthetic volume is already 0..255


def round_slices(slices: int, rounds: int) -> List[int]:
    """One slice per round, spread over the volume, each at least 2 * NEIGHBOURS + 1 from the next: no round's
    slice is among an earlier round's pre-encoded neighbours."""
    spacing = 2 * NEIGHBOURS + 1
    if rounds * spacing > slices:
        raise SystemExit(f"{rounds} rounds need at least {rounds * spacing} slices; give --slices or fewer --rounds.")
    start = (slices - (rounds - 1) * spacing) // 2
    return [start + spacing * number for number in range(rounds)]


def select_new_segment(scene: SlicerScene, name: str) -> None:
    segmentation = scene.editor_node.GetSegmentationNode()
    scene.editor_node.SetSelectedSegmentID(segmentation.GetSegmentation().AddEmptySegment("", name))


def release_box(scene: SlicerScene, volume_node, segmenter: InteractiveSegmenter, view, index: int, size: int):
    """A box around the object on slice ``index``, released: (seconds, the preview's logits)."""
    corners = [xy_of(view, volume_node, (size * fraction_x, size * fraction_y, index))
               for fraction_x, fraction_y in ((0.33, 0.36), (0.67, 0.64))]
    started = time.perf_counter()
    result = segmenter.box(scene.editor, view, corners, OPTIONS)
    seconds = time.perf_counter() - started
    return seconds, segmenter.session_of(scene.editor).session.results[result.slice_index].logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--precision", choices=PRECISIONS, default="auto")
    parser.add_argument("--checkpoint", type=Path, default=None, help="weights to load (default: random t512)")
    parser.add_argument("--config", type=Path, default=None, help="model config YAML for --checkpoint")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    if args.checkpoint is not None:
        model = load_model(args.checkpoint, load_config(args.config) if args.config else None, device)
    else:
        torch.manual_seed(0)
        model = MedSAM2(MEDSAM2_T512).to(device).eval()
    predictor = VolumePredictor(model, precision=args.precision)
    predictor.warm_up()  # as the module does when it loads the model

    scene = SlicerScene()
    volume = synthetic_volume(args.slices, args.size, None)
    volume_node = add_volume(scene.scene, volume, np.diag([0.7, 0.7, 2.5, 1.0]), "preview benchmark")
    scene.segmentation_for(volume_node)
    half = args.size / 2
    view = scene.view(volume_node, "Axial", (half, half, args.slices // 2))
    plain = InteractiveSegmenter(MedSAM2Logic(predictor))
    pre_encoded = InteractiveSegmenter(MedSAM2Logic(predictor))
    source = scene.editor.source()
    for segmenter in (plain, pre_encoded):  # the windowed stack, as an earlier action would have left it
        segmenter.logic.stack_for(source, view_geometry(source, view), OPTIONS.windowing)

    rounds = []
    for index in round_slices(args.slices, args.rounds):
        view.JumpSliceByOffsetting(*ras_of(volume_node, (half, half, index)))  # the user scrolls to the slice
        select_new_segment(scene, f"without pre-encoding, slice {index}")
        without, plain_logits = release_box(scene, volume_node, plain, view, index, args.size)
        select_new_segment(scene, f"with pre-encoding, slice {index}")
        started = time.perf_counter()
        failure = pre_encoded.pre_encode(scene.editor, view, OPTIONS)  # the mouse enters the view / it scrolled
        request = time.perf_counter() - started
        if failure or not pre_encoded.logic.pre_encoder.wait(600):
            raise SystemExit(failure or "The background encoding did not finish in 10 minutes.")
        background = time.perf_counter() - started
        calls = predictor.encoder_calls
        with_pre_encoding, logits = release_box(scene, volume_node, pre_encoded, view, index, args.size)
        rounds.append({"slice": index, "without_s": round(without, 4), "with_s": round(with_pre_encoding, 4),
                       "request_on_ui_thread_s": round(request, 4), "background_encoding_s": round(background, 3),
                       "encoder_calls_in_pre_encoded_preview": predictor.encoder_calls - calls,
                       "logits_identical": bool(np.array_equal(logits, plain_logits))})
    scene.close()

    report = {
        "device": str(device),
        "cpu": cpu_features(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "precision": str(predictor.dtype).replace("torch.", ""),
        "model": str(args.checkpoint) if args.checkpoint else "MedSAM2 t512, random weights (seed 0)",
        "volume": list(volume.shape),
        "release_to_result_without_s": round(statistics.median(r["without_s"] for r in rounds), 4),
        "release_to_result_with_s": round(statistics.median(r["with_s"] for r in rounds), 4),
        "target_with_s": 0.05,
        "rounds": rounds,
    }
    problems = [r for r in rounds if r["encoder_calls_in_pre_encoded_preview"] or not r["logits_identical"]]
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for name, value in report.items():
            print(f"{name:32s} {value}")
    if problems:
        raise SystemExit(f"A pre-encoded preview encoded its slice again or differs from the plain one: {problems}")


if __name__ == "__main__":
    main()

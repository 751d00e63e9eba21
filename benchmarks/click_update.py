"""Cost of one click in the Segment Editor effect: from "model done" to "segment updated".

    python benchmarks/click_update.py [--slices 300] [--size 512] [--clicks 5] [--json]

A slicer-core scene (the real vtkSlicerSegmentEditorLogic, with undo) holds an int16 volume of 300 x 512 x 512
voxels and a segment with a large structure (an ellipsoid across 81 slices and 161 x 121 voxels, as an earlier
propagation would have left it). A MedSAM2 session on that segment has a box on the middle slice, propagated
over 11 slices. Then, several times, a point clicked on a tracked slice is computed
(``InteractiveSegmenter.compute_points``: the model's part, not timed) and written
(``InteractiveSegmenter.write``, timed): the slice that changed is written on its own extent, with the undo
state and the segment's tags. The model is the tiny test model of ``Testing/Data`` (random weights): only the
time after it matters here, and each click is checked to have changed its slice.

For comparison, ``whole_volume_set_seconds`` times what every click wrote before: one Set of the whole
volume's labelmap through the same editor logic (without the whole-volume mask and 3D largest component that
preceded it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "Testing")]

from MedSAM2Lib.inference.predictor import VolumePredictor  # noqa: E402
from MedSAM2Lib.inference.preprocessing import Windowing  # noqa: E402
from MedSAM2Lib.model.checkpoint import load_model  # noqa: E402
from MedSAM2Lib.model.config import load_config  # noqa: E402
from MedSAM2Lib.slicer_glue.interactive import InteractiveOptions, InteractiveSegmenter  # noqa: E402
from MedSAM2Lib.slicer_glue.logic import MedSAM2Logic, labelmap_like  # noqa: E402
from MedSAM2Lib.slicer_glue.run_controller import WriteTarget  # noqa: E402
from MedSAM2Lib.slicer_glue.scenario import add_volume, segment_array, set_segment_array  # noqa: E402
from slicer_support import SlicerScene, xy_of  # noqa: E402

DATA = ROOT / "Testing" / "Data"


def scene_with_segment(scene: SlicerScene, slices: int, size: int):
    """The volume (a bright ellipsoid in noise) and a segment holding the ellipsoid."""
    rng = np.random.default_rng(0)
    k, j, i = np.ogrid[:slices, :size, :size]
    structure = ((k - slices // 2) / 40.5) ** 2 + ((j - size // 2) / 60.5) ** 2 + ((i - size // 2) / 80.5) ** 2 < 1
    volume = rng.normal(40, 15, (slices, size, size)).astype(np.int16)
    volume[structure] += 120
    volume_node = add_volume(scene.scene, volume, np.diag([0.7, 0.7, 2.5, 1.0]), "click benchmark")
    segmentation = scene.segmentation_for(volume_node, with_segment=True)
    set_segment_array(segmentation, scene.editor_node.GetSelectedSegmentID(), structure.astype(np.uint8),
                      volume_node)
    return volume_node, segmentation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--clicks", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    args = parser.parse_args()
    scene = SlicerScene()
    volume_node, segmentation = scene_with_segment(scene, args.slices, args.size)
    segment_id = scene.editor_node.GetSelectedSegmentID()
    editor = scene.editor
    model = load_model(DATA / "medsam2_tiny_random_seed0.pt", load_config(DATA / "medsam2_tiny_test.yaml"))
    segmenter = InteractiveSegmenter(MedSAM2Logic(VolumePredictor(model)))
    middle, half = args.slices // 2, args.size // 2
    options = InteractiveOptions(windowing=Windowing("window", (0.0, 200.0)), slice_range=(middle - 5, middle + 5))
    view = scene.view(volume_node, "Axial", (half, half, middle))
    corners = [xy_of(view, volume_node, (half + dx, half + dy, middle)) for dx, dy in ((-90, -70), (90, 70))]
    segmenter.box(editor, view, corners, options)
    segmenter.propagate(editor, options)

    clicked = middle + 3
    view = scene.view(volume_node, "Axial", (half, half, clicked))
    seconds, changed = [], []
    for click in range(args.clicks):
        xy = xy_of(view, volume_node, (half - 60 + 30 * click, half + 20 - 10 * click, clicked))
        before = segment_array(segmentation, segment_id, volume_node)[clicked]
        target = WriteTarget.capture(scene.editor_node)
        computed = segmenter.compute_points(editor, view, [(xy, click % 2)], options)  # the model's part
        started = time.perf_counter()
        segmenter.write(editor, computed, target)  # model done -> segment updated
        seconds.append(time.perf_counter() - started)
        after = segment_array(segmentation, segment_id, volume_node)
        changed.append(int(np.count_nonzero(after[clicked] != before)))

    source = editor.source()
    whole = labelmap_like(source.image, segment_array(segmentation, segment_id, volume_node))
    started = time.perf_counter()
    editor.write(whole)
    whole_seconds = time.perf_counter() - started
    figures = {
        "shape": [args.slices, args.size, args.size],
        "click_write_seconds": [round(value, 4) for value in seconds],
        "median_click_write_seconds": round(statistics.median(seconds), 4),
        "changed_voxels_per_click": changed,
        "whole_volume_set_seconds": round(whole_seconds, 3),
    }
    scene.close()
    if not all(changed):
        raise SystemExit(f"A click changed nothing on its slice, so its write measured nothing: {figures}")
    if args.json:
        print(json.dumps(figures))
    else:
        for name, value in figures.items():
            print(f"{name:28s} {value}")


if __name__ == "__main__":
    main()

"""How long the web page's 3D view would add to a preview: a segment's closed surface made from its labelmap.

    python benchmarks/surface_conversion.py [--repeats 3]

``medsam2 web`` makes the closed surface (CreateClosedSurfaceRepresentation, on the server's event loop) after a
propagation only (MedSAM2Lib/web/tool.py). This times it, best of ``--repeats``, for a segment of one slice (what
a first preview writes) and of every slice (what a correction after a propagation would convert again), on the
web tests' 11 x 224 x 256 grid and on 64 x 512 x 512; the segment is an ellipse of 2/5 x 1/3 of the slice on
each of its slices, spacing 1 x 1 x 2.5 mm. Figures taken on a machine shared with other work are upper bounds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import slicer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from MedSAM2Lib.slicer_glue.scenario import add_volume, set_segment_array  # noqa: E402

SHAPES = ((11, 224, 256), (64, 512, 512))


def conversion_seconds(shape, slices: slice, repeats: int) -> float:
    """Best time of CreateClosedSurfaceRepresentation for an ellipse on ``slices`` of a (D, H, W) volume."""
    scene = slicer.vtkMRMLScene()
    segmentations_logic = slicer.vtkSlicerSegmentationsModuleLogic()
    segmentations_logic.SetMRMLScene(scene)  # registers the representation converters
    volume = add_volume(scene, np.zeros(shape, np.int16), np.diag([1.0, 1.0, 2.5, 1.0]))
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    node.CreateDefaultDisplayNodes()
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    _, height, width = shape
    y, x = np.ogrid[:height, :width]
    ellipse = ((y - height / 2) / (height / 5)) ** 2 + ((x - width / 2) / (width / 6)) ** 2 <= 1
    mask = np.zeros(shape, np.uint8)
    mask[slices] = ellipse
    segment_id = node.GetSegmentation().AddEmptySegment("", "segment")
    set_segment_array(node, segment_id, mask, volume)
    times = []
    for _ in range(repeats):
        node.RemoveClosedSurfaceRepresentation()
        started = time.perf_counter()
        node.CreateClosedSurfaceRepresentation()
        times.append(time.perf_counter() - started)
    scene.Clear(1)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for shape in SHAPES:
        middle = shape[0] // 2
        for name, slices in (("one slice", slice(middle, middle + 1)), ("every slice", slice(None))):
            milliseconds = 1000 * conversion_seconds(shape, slices, args.repeats)
            print(f"{' x '.join(map(str, shape))}, {name}: {milliseconds:.0f} ms")


if __name__ == "__main__":
    main()

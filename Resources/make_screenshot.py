"""Makes Resources/Screenshot.png, the Extensions Index screenshot: Slicer's axial slice view of the demo scan
with the MedSAM2 box and the resulting segment, rendered offscreen by Slicer's own slice logic and segmentation
displayable manager (PyPI slicer-core), the box drawn from the effect's BoxTool.

    python Resources/make_screenshot.py --checkpoint MedSAM2_latest.pt     # the real model's result
    python Resources/make_screenshot.py                                    # no weights: a stand-in segment

With --checkpoint the segment is MedSAM2's, computed by the effect's own run (segment_box: the demo prompt,
MR percentile windowing, slices 28..60). Without it the segment is a STAND-IN: the dark (CSF) voxels inside the
box on slices 28..60, largest 3D component; the caption then says so. Needs an EGL-capable Mesa
(Debian: libegl1 libegl-mesa0 libgl1-mesa-dri); run from the repository root.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "Testing")]

import numpy as np  # noqa: E402
import slicer  # noqa: E402
import vtk  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from MedSAM2Lib.apps.demo import DEMO_PROMPT, DEMO_SCAN  # noqa: E402
from MedSAM2Lib.inference.connected_components import largest_component  # noqa: E402
from MedSAM2Lib.inference.preprocessing import mr_percentile_window  # noqa: E402
from MedSAM2Lib.slicer_glue.box import BoxTool  # noqa: E402
from slicer_support import SlicerScene, set_segment, xy_of  # noqa: E402  (the test suite's app-like scene)

VIEW_SIZE = (560, 480)
SEGMENT_COLOUR = (0.95, 0.55, 0.2)
DARK_CSF = 110  # of 255 after MR percentile windowing


def stand_in_mask(volume_kji: np.ndarray) -> np.ndarray:
    """Dark (CSF) voxels inside the demo box on the demo's slice range after MR percentile windowing, largest 3D
    component: NOT MedSAM2's output."""
    x0, y0, x1, y1 = DEMO_PROMPT.box
    first, last = DEMO_PROMPT.slice_range
    windowed = mr_percentile_window(volume_kji)
    mask = np.zeros(volume_kji.shape, np.uint8)
    mask[first : last + 1, y0:y1, x0:x1] = windowed[first : last + 1, y0:y1, x0:x1] < DARK_CSF
    return largest_component(mask)


def medsam2_mask(app, slice_node, box, checkpoint: Path, config) -> None:
    from MedSAM2Lib.inference.preprocessing import Windowing
    from MedSAM2Lib.slicer_glue.run_controller import RunController, segment_box
    from MedSAM2Lib.slicer_glue.runtime import ModelCache, ModelChoice

    logic = ModelCache().logic(ModelChoice(checkpoint, config, "auto"))
    outcome = segment_box(RunController(), app.editor, lambda: logic, slice_node, box.xyz_corners(),
                          windowing=Windowing.parse("mr-percentiles"), slice_range=DEMO_PROMPT.slice_range)
    if not outcome.written:
        raise SystemExit(outcome.message)
    print(outcome.message)


def render(app, slice_logic, tool) -> Image.Image:
    """The slice view as Slicer draws it: the slice logic's blended layers, the segmentation displayable
    manager's fill and outline, and the box's outline."""
    render_window = vtk.vtkRenderWindow()
    render_window.SetOffScreenRendering(1)
    render_window.SetSize(*VIEW_SIZE)
    renderer = vtk.vtkRenderer()
    render_window.AddRenderer(renderer)
    interactor = vtk.vtkRenderWindowInteractor()  # displayable managers observe the view's interactor
    interactor.SetRenderWindow(render_window)

    image_mapper = vtk.vtkImageMapper()
    image_mapper.SetInputConnection(slice_logic.GetImageDataConnection())
    image_mapper.SetColorWindow(255)
    image_mapper.SetColorLevel(127.5)
    image_actor = vtk.vtkActor2D()
    image_actor.SetMapper(image_mapper)
    renderer.AddViewProp(image_actor)

    factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
    factory.SetMRMLApplicationLogic(app.app_logic)
    factory.RegisterDisplayableManager("vtkMRMLSegmentationsDisplayableManager2D")
    group = factory.InstantiateDisplayableManagers(renderer)
    group.SetMRMLDisplayableNode(slice_logic.GetSliceNode())

    display, segments = tool.box.outline(tolerance_mm=1.0)
    points, lines = vtk.vtkPoints(), vtk.vtkCellArray()
    for start, end in segments:
        lines.InsertNextCell(2, [points.InsertNextPoint(*start, 0.0), points.InsertNextPoint(*end, 0.0)])
    outline = vtk.vtkPolyData()
    outline.SetPoints(points)
    outline.SetLines(lines)
    mapper = vtk.vtkPolyDataMapper2D()
    mapper.SetInputData(outline)
    box_actor = vtk.vtkActor2D()
    box_actor.SetMapper(mapper)
    box_actor.GetProperty().SetColor(1, 1, 0)
    box_actor.GetProperty().SetLineWidth(2)
    renderer.AddViewProp(box_actor)

    group.RequestRender()
    render_window.Render()
    grabber = vtk.vtkWindowToImageFilter()
    grabber.SetInput(render_window)
    grabber.Update()
    image = grabber.GetOutput()
    width, height, _ = image.GetDimensions()
    pixels = vtk.util.numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)
    return Image.fromarray(np.flipud(pixels[:, :, :3]).copy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="MedSAM2 weights: the segment is the model's result")
    parser.add_argument("--config", type=Path, help="model config for another architecture (tests: the tiny one)")
    parser.add_argument("--out", type=Path, default=ROOT / "Resources" / "Screenshot.png")
    args = parser.parse_args()

    import vtk.util.numpy_support  # noqa: F401

    app = SlicerScene()
    volume_node = app.volumes_logic.AddArchetypeVolume(str(DEMO_SCAN), "MNI152 T1 demo")
    # The test scene has no Colors module logic to give the volume its default grey table: set it as Slicer does.
    display = volume_node.GetDisplayNode()
    display.SetAndObserveColorNodeID("vtkMRMLColorTableNodeGrey")
    # Shown as the demo windows it for the model: the 0.5-99.5 percentiles of the brain.
    brain = slicer.util.arrayFromVolume(volume_node)
    display.SetAutoWindowLevel(0)
    display.SetWindowLevelMinMax(*np.percentile(brain[brain > 0], (0.5, 99.5)))
    segmentation = app.segmentation_for(volume_node, with_segment=True)
    segment_id = app.editor_node.GetSelectedSegmentID()
    segment = segmentation.GetSegmentation().GetSegment(segment_id)
    segment.SetName("right lateral ventricle")
    segment.SetColor(*SEGMENT_COLOUR)

    dims = volume_node.GetImageData().GetDimensions()
    slice_node = app.view(volume_node, "Axial", (dims[0] / 2, dims[1] / 2, DEMO_PROMPT.key_slice))
    slice_node.SetDimensions(*VIEW_SIZE, 1)
    slice_logic = app._slice_logics[-1]
    slice_logic.FitSliceToAll()
    slice_node.JumpSliceByOffsetting(*_ras(volume_node, (dims[0] / 2, dims[1] / 2, DEMO_PROMPT.key_slice)))

    x0, y0, x1, y1 = DEMO_PROMPT.box
    tool = BoxTool()
    start = xy_of(slice_node, volume_node, (x0, y0, DEMO_PROMPT.key_slice))
    end = xy_of(slice_node, volume_node, (x1, y1, DEMO_PROMPT.key_slice))
    for event, xy in (("press", start), ("move", end), ("release", end)):
        tool.handle(event, slice_node, xy, False, False, tolerance_mm=1.0)

    if args.checkpoint:
        medsam2_mask(app, slice_node, tool.box, args.checkpoint, args.config)
        caption = "MedSAM2 effect: box on slice 45, propagated (slices 28-60)"
    else:
        set_segment(segmentation, segment_id, stand_in_mask(slicer.util.arrayFromVolume(volume_node)), volume_node)
        caption = "Box prompt and segment overlay (segment: threshold stand-in, not a MedSAM2 result)"
    picture = render(app, slice_logic, tool)
    ImageDraw.Draw(picture).text((8, VIEW_SIZE[1] - 16), caption, fill=(255, 255, 255))
    picture.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"{args.out}: {args.out.stat().st_size:,} bytes")


def _ras(volume_node, ijk):
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return matrix.MultiplyPoint((*ijk, 1.0))[:3]


if __name__ == "__main__":
    main()

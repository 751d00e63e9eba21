"""One end-to-end scenario (load a volume, draw a box, propagate, check, undo) shared by the headless tests
and the extension's self-test inside Slicer.

The volume is the parity fixture (24 x 224 x 256) placed in the scene with oblique axes, 0.7 x 0.7 x 2.5 mm
voxels and a non-zero origin. The box is drawn in an axial view rotated to the volume plane. With the tiny
fixture model, the segment must equal the official pipeline's final mask voxel for voxel; with the real
weights only its plausibility can be checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from .logic import array_from_image, matrix_to_array

KEY_SLICE = 12
BOX_IJK = ((104.0, 70.0), (183.0, 131.0))  # (I, J) corners on slice K = 12, as the fixture's box


def oblique_ijk_to_ras(spacing=(0.7, 0.7, 2.5), degrees: float = 20.0, origin=(12.0, -40.0, 100.0)) -> np.ndarray:
    """4x4 IJK-to-RAS of an LPS-stored volume rotated about S: what a tilted-gantry CT looks like."""
    angle = np.radians(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    matrix = np.eye(4)
    matrix[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ rotation @ np.diag(spacing)
    matrix[:3, 3] = origin
    return matrix


def add_volume(scene, volume_kji: np.ndarray, ijk_to_ras: np.ndarray, name: str = "Volume"):
    """A scalar volume node holding a (K, J, I) array with the given geometry, with display nodes."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    image = vtk.vtkImageData()
    image.SetDimensions(volume_kji.shape[::-1])
    image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(np.ascontiguousarray(volume_kji).ravel(), deep=True))
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijk_to_ras))
    node.CreateDefaultDisplayNodes()
    return node


def segment_array(segmentation_node, segment_id: str, reference_volume_node) -> np.ndarray:
    """A segment as a uint8 (K, J, I) array on a volume's grid (exported, never read from internal storage)."""
    labelmap = segmentation_node.GetScene().AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    try:
        ids = vtk.vtkStringArray()
        if segment_id:
            ids.InsertNextValue(segment_id)
        slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, ids, labelmap, reference_volume_node
        )
        return (array_from_image(labelmap.GetImageData()) > 0).astype(np.uint8)
    finally:
        segmentation_node.GetScene().RemoveNode(labelmap)


@dataclass
class BoxScenario:
    volume_node: "slicer.vtkMRMLScalarVolumeNode"
    segmentation_node: "slicer.vtkMRMLSegmentationNode"
    editor_node: "slicer.vtkMRMLSegmentEditorNode"
    slice_node: "slicer.vtkMRMLSliceNode"
    xy_corners: tuple  # two opposite box corners in the view's XY coordinates
    expected_mask: np.ndarray  # (K, J, I) the official pipeline's mask for this box


def set_up(scene, slice_logic, data_dir: Path, editor_node=None) -> BoxScenario:
    """Volume, empty segmentation, editor state and an axial view at the key slice, rotated to the volume."""
    volume = np.load(Path(data_dir) / "input_volume.npz")["imgs"]
    ijk_to_ras = oblique_ijk_to_ras()
    volume_node = add_volume(scene, volume, ijk_to_ras, "MedSAM2 scenario volume")
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "MedSAM2 scenario segmentation")
    segmentation_node.CreateDefaultDisplayNodes()
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    editor_node = editor_node or scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor_node.SetAndObserveSegmentationNode(segmentation_node)
    editor_node.SetAndObserveSourceVolumeNode(volume_node)

    slice_node = slice_logic.GetSliceNode()
    slice_node.SetOrientation("Axial")
    slice_logic.GetSliceCompositeNode().SetBackgroundVolumeID(volume_node.GetID())
    slice_logic.RotateSliceToLowestVolumeAxes()
    slice_logic.FitSliceToAll()
    key_centre = ijk_to_ras @ np.array([volume.shape[2] / 2, volume.shape[1] / 2, KEY_SLICE, 1.0])
    slice_node.JumpSliceByOffsetting(*key_centre[:3])

    ras_to_xy = np.linalg.inv(matrix_to_array(slice_node.GetXYToRAS()))
    corners = [ras_to_xy @ ijk_to_ras @ np.array([i, j, KEY_SLICE, 1.0]) for i, j in BOX_IJK]
    expected = np.load(Path(data_dir) / "expected_tiny_fillholes.npz")["seg_final"]
    return BoxScenario(volume_node, segmentation_node, editor_node, slice_node,
                       tuple(tuple(c[:2]) for c in corners), expected)


def run(
    scene,
    slice_logic,
    data_dir: Path,
    segment_box: Callable[[BoxScenario], None],
    undo: Callable[[], None],
    exact: bool = True,
    editor_node=None,
) -> BoxScenario:
    """Draw the box, propagate with ``segment_box``, check the segment, undo, check it is gone.

    exact: the model is the tiny fixture model, so the segment must equal the reference mask; otherwise
    (real weights) it must be non-empty and overlap the box's region on the key slice.
    """
    scenario = set_up(scene, slice_logic, data_dir, editor_node)
    segment_box(scenario)
    segment_id = scenario.editor_node.GetSelectedSegmentID()
    if not segment_id:
        raise AssertionError("No segment was created and selected.")
    mask = segment_array(scenario.segmentation_node, segment_id, scenario.volume_node)
    if exact:
        different = int(np.count_nonzero(mask != scenario.expected_mask))
        if different:
            raise AssertionError(f"The segment differs from the reference mask in {different} voxels.")
    else:
        (i0, j0), (i1, j1) = np.asarray(BOX_IJK, dtype=int)
        if not mask[KEY_SLICE, j0 : j1 + 1, i0 : i1 + 1].any():
            raise AssertionError("The segment does not overlap the box on its slice.")
    undo()
    segmentation = scenario.segmentation_node.GetSegmentation()
    if segmentation.GetSegment(segment_id) is not None and segment_array(
        scenario.segmentation_node, segment_id, scenario.volume_node
    ).any():
        raise AssertionError("Undo did not restore the empty segmentation.")
    return scenario


def default_slice_logic(scene, app_logic) -> "slicer.vtkMRMLSliceLogic":
    """A slice view's logic without a view (headless use); inside Slicer use a layout view's logic."""
    slice_node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    slice_node.SetLayoutName("MedSAM2Scenario")
    slice_node.SetDimensions(512, 512, 1)
    slice_logic = slicer.vtkMRMLSliceLogic()
    slice_logic.SetMRMLScene(scene)
    slice_logic.SetMRMLApplicationLogic(app_logic)
    slice_logic.SetSliceNode(slice_node)
    return slice_logic

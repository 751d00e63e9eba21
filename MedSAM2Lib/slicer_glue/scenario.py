"""End-to-end scenarios shared by the headless tests and the extension's self-test inside Slicer: load a
volume, draw a box, propagate, check, undo; and the correction scenarios (box, propagate, correct tracked
slices with points or a repainted slice, update, check, undo) in axial, coronal and sagittal views.

The volume is the parity fixture (24 x 224 x 256) placed in the scene with oblique axes, 0.7 x 0.7 x 2.5 mm
voxels and a non-zero origin. The box is drawn in an axial view rotated to the volume plane. With the tiny
fixture model, the segment must equal the official pipeline's final mask voxel for voxel, except at the few
voxels whose reference logit is within float32's reach of 0 on another CPU family or device
(``MedSAM2Lib.inference.reference_check``); with the real weights only its plausibility can be checked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Protocol, Tuple

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from ..inference.reference_check import ReferenceMasks
from .geometry import StackGeometry
from .logic import array_from_image, labelmap_like, matrix_to_array
from .runtime import ModelChoice

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
    reference: ReferenceMasks  # (K, J, I) the official pipeline's masks and logits for this box

    @property
    def expected_mask(self) -> np.ndarray:
        """(K, J, I) the official pipeline's final mask for this box."""
        return self.reference.final


def _scene_with_view(scene, slice_logic, volume_kji, ijk_to_ras, name: str, orientation: str, editor_node=None):
    """A volume, an empty segmentation on its grid, the editor state, and the view in ``orientation`` rotated to
    the volume: (volume node, segmentation node, editor node, slice node)."""
    volume_node = add_volume(scene, volume_kji, ijk_to_ras, f"MedSAM2 {name} volume")
    segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"MedSAM2 {name} segmentation")
    segmentation_node.CreateDefaultDisplayNodes()
    segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    editor_node = editor_node or scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
    editor_node.SetAndObserveSegmentationNode(segmentation_node)
    editor_node.SetAndObserveSourceVolumeNode(volume_node)
    slice_node = slice_logic.GetSliceNode()
    slice_node.SetOrientation(orientation)
    slice_logic.GetSliceCompositeNode().SetBackgroundVolumeID(volume_node.GetID())
    slice_logic.RotateSliceToLowestVolumeAxes()
    slice_logic.FitSliceToAll()
    return volume_node, segmentation_node, editor_node, slice_node


def set_up(scene, slice_logic, data_dir: Path, editor_node=None) -> BoxScenario:
    """Volume, empty segmentation, editor state and an axial view at the key slice, rotated to the volume."""
    volume = np.load(Path(data_dir) / "input_volume.npz")["imgs"]
    ijk_to_ras = oblique_ijk_to_ras()
    volume_node, segmentation_node, editor_node, slice_node = _scene_with_view(
        scene, slice_logic, volume, ijk_to_ras, "scenario", "Axial", editor_node)
    key_centre = ijk_to_ras @ np.array([volume.shape[2] / 2, volume.shape[1] / 2, KEY_SLICE, 1.0])
    slice_node.JumpSliceByOffsetting(*key_centre[:3])

    ras_to_xy = np.linalg.inv(matrix_to_array(slice_node.GetXYToRAS()))
    corners = [ras_to_xy @ ijk_to_ras @ np.array([i, j, KEY_SLICE, 1.0]) for i, j in BOX_IJK]
    return BoxScenario(volume_node, segmentation_node, editor_node, slice_node,
                       tuple(tuple(c[:2]) for c in corners),
                       ReferenceMasks.from_file(Path(data_dir) / "expected_tiny_fillholes.npz"))


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

    exact: the model is the tiny fixture model, so the segment must equal the reference mask (except at a
    handful of borderline voxels, see ``ReferenceMasks.check``); otherwise
    (real weights) it must be non-empty and overlap the box's region on the key slice.
    """
    scenario = set_up(scene, slice_logic, data_dir, editor_node)
    segment_box(scenario)
    segment_id = scenario.editor_node.GetSelectedSegmentID()
    if not segment_id:
        raise AssertionError("No segment was created and selected.")
    mask = segment_array(scenario.segmentation_node, segment_id, scenario.volume_node)
    if exact:
        scenario.reference.check(mask, "The segment")
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


def self_test_model(settings_checkpoint: Path, data_dir: Path) -> Tuple[ModelChoice, bool]:
    """The model the self-test runs (and whether it is the real one): the user's real weights when they are
    downloaded, whose result can only be checked for plausibility; otherwise the tiny fixture model, always on the
    CPU in float32, because its result is compared with the official pipeline's CPU float32 run, and a GPU's
    float32 (TF32 matrix products, other kernels) can move logits further than the tolerance allows."""
    if Path(settings_checkpoint).is_file():
        return ModelChoice(Path(settings_checkpoint), precision="float32"), True
    data_dir = Path(data_dir)
    return ModelChoice(data_dir / "medsam2_tiny_random_seed0.pt", data_dir / "medsam2_tiny_test.yaml", device="cpu",
                       precision="float32"), False


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


# -- the correction scenarios: box, propagate, correct tracked slices, update -----------------------------

CORRECTIONS = {"points": "correct_tracked_with_points", "mask": "correct_tracked_with_mask"}


def view_aligned_ijk_to_ras(orientation: str, in_plane_spacing: float = 0.7, slice_spacing: float = 2.5,
                            degrees: float = 20.0, origin=(12.0, -40.0, 100.0)) -> Tuple[StackGeometry, np.ndarray]:
    """Where a (D, H, W) array is stored and how it is placed so that Slicer's standard ``orientation`` view
    ("Axial", "Coronal", "Sagittal"), rotated to the volume plane, shows slice d with row h downwards and
    column w to the right: slices along K, J or I respectively, rotated by ``degrees`` about the view's normal,
    with anisotropic voxels. Returns the storage (``to_stack`` of the stored (K, J, I) array gives back the
    (D, H, W) array; ``from_stack`` stores it) and the 4x4 IJK-to-RAS.

    For "Axial" this is :func:`oblique_ijk_to_ras` with the same spacing.
    """
    slice_axis = {"Axial": 2, "Coronal": 1, "Sagittal": 0}[orientation]
    row_axis, column_axis = (2, 1) if slice_axis == 0 else (2, 0) if slice_axis == 1 else (1, 0)
    slice_to_ras = vtk.vtkMatrix3x3()
    getattr(slicer.vtkMRMLSliceNode, f"Get{orientation}SliceToRASMatrix")(slice_to_ras, True)
    right, up, normal = (np.array([slice_to_ras.GetElement(row, column) for row in range(3)]) for column in range(3))
    directions = np.zeros((3, 3))
    directions[:, column_axis] = right * in_plane_spacing
    directions[:, row_axis] = -up * in_plane_spacing
    directions[:, slice_axis] = normal * slice_spacing
    angle = np.radians(degrees)
    cross = np.array([[0, -normal[2], normal[1]], [normal[2], 0, -normal[0]], [-normal[1], normal[0], 0]])
    rotation = np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * cross @ cross  # Rodrigues, about normal
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ directions
    matrix[:3, 3] = origin
    return StackGeometry(slice_axis, row_axis, column_axis, False, False), matrix


def set_segment_array(segmentation_node, segment_id: str, mask_kji: np.ndarray, volume_node) -> None:
    """Replace a segment's content with a (K, J, I) 0/1 array on a volume's grid (as painting would)."""
    geometry = slicer.vtkOrientedImageData()
    geometry.SetExtent(volume_node.GetImageData().GetExtent())
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    geometry.SetImageToWorldMatrix(matrix)
    labelmap = labelmap_like(geometry, mask_kji)
    if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(labelmap, segmentation_node, segment_id):
        raise RuntimeError("Could not set the segment.")


@dataclass
class CorrectionScenario:
    volume_node: "slicer.vtkMRMLScalarVolumeNode"
    segmentation_node: "slicer.vtkMRMLSegmentationNode"
    editor_node: "slicer.vtkMRMLSegmentEditorNode"
    slice_node: "slicer.vtkMRMLSliceNode"
    storage: StackGeometry  # the (D, H, W) fixture array <-> the volume's (K, J, I) array
    ijk_to_ras: np.ndarray
    calls: dict  # the official calls of each direction ("fwd", "rev")
    reference: ReferenceMasks  # (D, H, W) the official session's masks and logits
    masks: Dict[int, np.ndarray]  # the masks it gives as prompts, by slice

    def show_slice(self, index: int) -> None:
        """Move the view to slice ``index`` of the (D, H, W) array."""
        shape = self.volume_node.GetImageData().GetDimensions()
        centre = self.storage.index_coordinates([[index, shape[self.storage.row_axis] / 2,
                                                  shape[self.storage.column_axis] / 2]], shape)[0]
        self.slice_node.JumpSliceByOffsetting(*(self.ijk_to_ras @ np.append(centre, 1.0))[:3])

    def xy(self, index: int, x: float, y: float) -> Tuple[float, float]:
        """View XY of pixel (x = column, y = row) of slice ``index`` (which the view must show)."""
        ijk = self.storage.index_coordinates([[index, y, x]], self.volume_node.GetImageData().GetDimensions())[0]
        xy = np.linalg.inv(matrix_to_array(self.slice_node.GetXYToRAS())) @ self.ijk_to_ras @ np.append(ijk, 1.0)
        return float(xy[0]), float(xy[1])

    def segment(self) -> np.ndarray:
        """The selected segment as a (D, H, W) array, the fixture's frame."""
        segment_id = self.editor_node.GetSelectedSegmentID()
        return self.storage.to_stack(segment_array(self.segmentation_node, segment_id, self.volume_node))

    def paint_slice(self, index: int, mask_hw: np.ndarray) -> None:
        """Repaint slice ``index`` of the selected segment with a (H, W) mask, the rest unchanged."""
        content = self.segment()
        content[index] = mask_hw
        set_segment_array(self.segmentation_node, self.editor_node.GetSelectedSegmentID(),
                          self.storage.from_stack(content), self.volume_node)


class CorrectionActions(Protocol):
    """The effect's actions as the scenario performs them (headless: InteractiveSegmenter; in Slicer: the effect)."""

    def box(self, slice_node, xy_corners) -> None: ...

    def propagate(self) -> None: ...

    def points(self, slice_node, clicks) -> None:
        """clicks: ((x, y) view XY, label) pairs given on the slice the view shows, in one action."""

    def use_segment_on_slice(self, slice_node) -> None: ...


def set_up_correction(scene, slice_logic, data_dir: Path, orientation: str, correction: str,
                      editor_node=None) -> CorrectionScenario:
    """The fixture volume stored and placed for ``orientation``, an empty segmentation, and that view."""
    volume_dhw = np.load(Path(data_dir) / "input_volume.npz")["imgs"]
    storage, ijk_to_ras = view_aligned_ijk_to_ras(orientation)
    volume_node, segmentation_node, editor_node, slice_node = _scene_with_view(
        scene, slice_logic, storage.from_stack(volume_dhw), ijk_to_ras, f"{orientation.lower()} correction",
        orientation, editor_node)
    path = Path(data_dir) / f"session_{CORRECTIONS[correction]}.npz"
    reference = np.load(path)
    masks = {int(key[5:]): reference[key].astype(bool) for key in reference.files if key.startswith("mask_")}
    return CorrectionScenario(volume_node, segmentation_node, editor_node, slice_node, storage, ijk_to_ras,
                              json.loads(str(reference["calls_json"])), ReferenceMasks.from_file(path), masks)


def run_correction(scene, slice_logic, data_dir: Path, orientation: str, correction: str, actions: CorrectionActions,
                   undo: Callable[[], None], exact: bool = True, editor_node=None,
                   ready: Optional[Callable[[CorrectionScenario], None]] = None) -> CorrectionScenario:
    """Box on the key slice (its preview must be written at once), propagate, correct the slice each
    direction's official session corrects (by points clicked in the view, or by repainting the slice and
    using the segment on it), update; the segment must equal the official session's final mask (exact) or
    overlap the box (real weights); Undo must restore the segment as it was before the last action.
    ready(scenario) is called once the scene is set up (the self-test activates the effect there)."""
    scenario = set_up_correction(scene, slice_logic, data_dir, orientation, correction, editor_node)
    if ready is not None:
        ready(scenario)
    first = scenario.calls["fwd"][0]
    key, (x0, y0, x1, y1) = first["slice"], first["box"]
    scenario.show_slice(key)
    actions.box(scenario.slice_node, (scenario.xy(key, x0, y0), scenario.xy(key, x1, y1)))
    preview = scenario.segment()
    if not preview[key].any() or np.delete(preview, key, axis=0).any():
        raise AssertionError("The box's preview was not written on its slice alone.")
    actions.propagate()
    for direction in ("fwd", "rev"):
        call = scenario.calls[direction][2]  # the correction: after the first propagation
        index = call["slice"]
        scenario.show_slice(index)
        if correction == "points":
            actions.points(scenario.slice_node, [(scenario.xy(index, x, y), label)
                                                 for (x, y), label in zip(call["points"], call["labels"])])
            if direction == "fwd":
                continue
            before = scenario.segment()
            actions.propagate()  # Update
        else:
            scenario.paint_slice(index, scenario.masks[index])
            before = scenario.segment()
            actions.use_segment_on_slice(scenario.slice_node)
    mask = scenario.segment()
    if exact:
        scenario.reference.check(mask, "The segment")
    elif not mask[key, int(y0) : int(y1) + 1, int(x0) : int(x1) + 1].any():
        raise AssertionError("The segment does not overlap the box on its slice.")
    undo()
    if np.count_nonzero(scenario.segment() != before):
        raise AssertionError("Undo did not restore the segment as it was before the last action.")
    return scenario

"""Helpers for tests on Slicer's real Qt-free core (PyPI slicer-core): a scene like the application's, views,
and a test double for the predictor."""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import pytest
import slicer
import vtk

from MedSAM2Lib.inference.predictor import SliceResult, planned_slices, validate_prompt
from MedSAM2Lib.slicer_glue.logic import EditorAccess, SegmentEditorLogicBackend, matrix_to_array
from MedSAM2Lib.slicer_glue.scenario import default_slice_logic
from MedSAM2Lib.slicer_glue.scenario import set_segment_array as set_segment  # noqa: F401 (tests import it here)


class SlicerScene:
    """A scene with the application, colour, volumes and segmentations logics, as in the desktop app.

    Every logic is kept referenced here: SetModuleLogic does not own them (see shared/notes/slicer-core.md).
    """

    def __init__(self) -> None:
        self.scene = slicer.vtkMRMLScene()
        self.app_logic = slicer.vtkSlicerApplicationLogic()
        self.app_logic.SetMRMLScene(self.scene)
        self.color_logic = self.app_logic.GetColorLogic()
        self.color_logic.SetMRMLScene(self.scene)
        self.color_logic.AddDefaultColorNodes()
        self.volumes_logic = slicer.vtkSlicerVolumesLogic()
        self.segmentations_logic = slicer.vtkSlicerSegmentationsModuleLogic()
        for name, logic in (("Volumes", self.volumes_logic), ("Segmentations", self.segmentations_logic)):
            logic.SetMRMLScene(self.scene)
            logic.SetMRMLApplicationLogic(self.app_logic)
            self.app_logic.SetModuleLogic(name, logic)
        self.editor_node = self.scene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        self.editor_logic = slicer.vtkSlicerSegmentEditorLogic()
        self.editor_logic.SetMRMLScene(self.scene)
        self.editor_logic.SetMRMLApplicationLogic(self.app_logic)
        self.editor_logic.SetSegmentEditorNode(self.editor_node)
        self.editor = EditorAccess(SegmentEditorLogicBackend(self.editor_logic))
        self._slice_logics: List[slicer.vtkMRMLSliceLogic] = []

    def segmentation_for(self, volume_node, with_segment: bool = False):
        """A segmentation on the volume's geometry, set in the editor with the volume as source."""
        segmentation = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentation.CreateDefaultDisplayNodes()
        segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
        self.editor_node.SetAndObserveSegmentationNode(segmentation)
        self.editor_node.SetAndObserveSourceVolumeNode(volume_node)
        if with_segment:
            segment_id = segmentation.GetSegmentation().AddEmptySegment("", "target")
            self.editor_node.SetSelectedSegmentID(segment_id)
        return segmentation

    def view(self, volume_node, orientation: str, ijk: Sequence[float]) -> slicer.vtkMRMLSliceNode:
        """A slice view in the given orientation, rotated to the volume plane, through voxel ijk."""
        slice_logic = default_slice_logic(self.scene, self.app_logic)
        self._slice_logics.append(slice_logic)
        slice_node = slice_logic.GetSliceNode()
        slice_node.SetOrientation(orientation)
        slice_logic.GetSliceCompositeNode().SetBackgroundVolumeID(volume_node.GetID())
        slice_logic.RotateSliceToLowestVolumeAxes()
        slice_logic.FitSliceToAll()
        slice_node.JumpSliceByOffsetting(*ras_of(volume_node, ijk))
        return slice_node

    def load_segmentation(self, path) -> slicer.vtkMRMLSegmentationNode:
        """A ``.seg.nrrd`` file read into a new segmentation node of the scene."""
        reloaded = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(str(path))
        assert storage.ReadData(reloaded)
        return reloaded

    def close(self) -> None:
        """Take the scene apart in a fixed order (views first), instead of leaving it to the garbage collector."""
        for slice_logic in self._slice_logics:
            slice_logic.SetMRMLScene(None)
        self._slice_logics.clear()
        self.editor_logic.SetMRMLScene(None)
        self.scene.Clear(True)

    def slice_logic(self) -> slicer.vtkMRMLSliceLogic:
        slice_logic = default_slice_logic(self.scene, self.app_logic)
        self._slice_logics.append(slice_logic)
        return slice_logic


def ijk_to_ras(volume_node) -> np.ndarray:
    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    return matrix_to_array(matrix)


def ras_of(volume_node, ijk: Sequence[float]) -> np.ndarray:
    return (ijk_to_ras(volume_node) @ np.append(np.asarray(ijk, dtype=float), 1.0))[:3]


def xy_of(slice_node, volume_node, ijk: Sequence[float]) -> Tuple[float, float]:
    """Where voxel ijk (continuous) appears in the view's XY coordinates."""
    ras = np.append(ras_of(volume_node, ijk), 1.0)
    xy = np.linalg.inv(matrix_to_array(slice_node.GetXYToRAS())) @ ras
    return float(xy[0]), float(xy[1])


def voxels_inside_box_in_view(grid_node, slice_node, xy_corners) -> np.ndarray:
    """(K, J, I) 0/1 array over a volume's grid: voxels whose centre the view shows inside the XY box.

    An expectation computed independently of the logic: voxel centre -> RAS -> view XY.
    """
    dims = grid_node.GetImageData().GetDimensions()
    k, j, i = np.meshgrid(*(np.arange(n) for n in dims[::-1]), indexing="ij")
    ijk = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    xy = np.linalg.inv(matrix_to_array(slice_node.GetXYToRAS())) @ ijk_to_ras(grid_node) @ ijk
    (x0, y0), (x1, y1) = xy_corners
    inside = (xy[0] >= min(x0, x1)) & (xy[0] <= max(x0, x1)) & (xy[1] >= min(y0, y1)) & (xy[1] <= max(y0, y1))
    return inside.reshape(dims[::-1]).astype(np.uint8)


class BoxFillingPredictor:
    """Test double for VolumePredictor: "segments" exactly the box on every slice it visits, and records
    the stacks and prompts it is given. Geometry tests use it so that the expected segment is known."""

    def __init__(self) -> None:
        self.calls: List[dict] = []

    def _fill(self, volume: np.ndarray, index: int, box) -> SliceResult:
        x0, y0, x1, y1 = box
        logits = np.full(volume.shape[1:], -1.0, dtype=np.float32)
        logits[int(np.ceil(y0)) : int(np.floor(y1)) + 1, int(np.ceil(x0)) : int(np.floor(x1)) + 1] = 1.0
        return SliceResult(index, logits, 1.0)

    def segment(self, volume, key_slice, box, direction="both", slice_range=None, on_slice=None, cache=None):
        validate_prompt(volume, key_slice, box, direction, slice_range)
        self.calls.append(dict(volume=volume, key_slice=key_slice, box=tuple(box), direction=direction,
                               slice_range=slice_range))
        mask = np.zeros(volume.shape, dtype=np.uint8)
        for index in planned_slices(volume.shape[0], key_slice, direction, slice_range):
            result = self._fill(volume, index, box)
            mask[index] = result.mask
            if on_slice is not None:
                on_slice(result)
        return mask

    def segment_slice(self, volume, key_slice, box, cache=None):
        validate_prompt(volume, key_slice, box)
        self.calls.append(dict(volume=volume, key_slice=key_slice, box=tuple(box), direction=None, slice_range=None))
        return self._fill(volume, key_slice, box)


def lesion_volume(shape_kji=(20, 48, 64), seed: int = 0) -> np.ndarray:
    """Int16 CT-like volume: noisy soft tissue with a brighter ellipsoid off centre."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape_kji), indexing="ij")
    volume = rng.normal(40, 15, shape_kji)
    volume[((i - 40) / 9) ** 2 + ((j - 20) / 7) ** 2 + ((k - 9) / 5) ** 2 < 1] += 120
    return volume.astype(np.int16)


# The lesion scene shared by the box and run tests: a scene like the app's with the lesion volume on oblique axes.
LESION_CENTRE = (40.3, 20.4, 9.0)  # the lesion centre, in IJK
LESION_HALF_BOX = np.array([8.6, 6.3, 4.2])  # half box extent in IJK, off voxel centres to avoid ties


@pytest.fixture
def app():
    """A fresh scene per test, taken apart by close(): left to the garbage collector, slicer-core crashed
    (segfault) in about one run of test_slicer_logic.py in five."""
    scene = SlicerScene()
    yield scene
    scene.close()


@pytest.fixture
def volume_node(app):
    from MedSAM2Lib.slicer_glue.scenario import add_volume, oblique_ijk_to_ras

    return add_volume(app.scene, lesion_volume(), oblique_ijk_to_ras(), "lesion")

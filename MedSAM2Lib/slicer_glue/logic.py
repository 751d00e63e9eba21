"""Box on a slice view -> whole-volume segment, headless, on Slicer's own MRML and segment-editor classes.

The Segment Editor effect (MedSAM2Slicer) and the tests drive the same :class:`MedSAM2Logic`; they differ
only in the :class:`EditorBackend` through which the editor's state is read and the result written. Writing always goes
through the segment editor's "modify segment by labelmap", after saving state for undo: in Set mode for a whole
result (:meth:`MedSAM2Logic.write`), as Remove then Add on the extent of the slices that changed for the
interactive sessions (:func:`slab_modifications`); so masking (editable area, intensity range), overwrite of
other segments and undo behave as for Slicer's own effects.

Geometry: the box is mapped from the view to the voxel grid of the *aligned source volume* (the source
volume resampled to the segmentation's geometry, as every segment editor effect sees it), so the result
lands voxel for voxel in the segmentation whatever the two geometries are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Protocol, Sequence, Tuple

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from ..inference.connected_components import bounding_box
from ..inference.predictor import Cancelled, FeatureCache, SliceResult, VolumePredictor, planned_slices
from ..inference.preprocessing import Windowing, check_finite
from .geometry import StackGeometry, StackPrompt, box_prompt, stack_geometry, transform_points
from .pre_encoder import PreEncoder
from .run_controller import WriteTarget


class EditorStateError(ValueError):
    """The segment editor's state (segmentation, source volume, transforms) does not allow segmenting."""


# -- reading the editor's state -------------------------------------------------------------------------


def matrix_to_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(row, column) for column in range(4)] for row in range(4)])


# NaN/infinite voxels: what a Slicer user can do about them (the command line says --nan-as instead).
SLICER_NAN_FIX = "replace them first (for example with the Simple Filters module's ThresholdImageFilter) or choose another volume"


def array_from_image(image: vtk.vtkImageData) -> np.ndarray:
    """Scalars of a single-component image as a (K, J, I) array (a copy)."""
    dimensions = image.GetDimensions()
    return numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dimensions[::-1]).copy()


@dataclass
class SourceImage:
    """What segmenting needs from the editor: the aligned source volume and how to reach it from world RAS."""

    image: "slicer.vtkOrientedImageData"  # source volume resampled to the segmentation geometry
    volume_node: "slicer.vtkMRMLScalarVolumeNode"  # for its display window
    world_to_segmentation: np.ndarray = field(default_factory=lambda: np.eye(4))  # 4x4, segmentation transform

    @property
    def extent_start(self) -> np.ndarray:
        return np.array(self.image.GetExtent()[0::2])

    @property
    def shape_ijk(self) -> Tuple[int, int, int]:
        return tuple(self.image.GetDimensions())

    def ras_to_array_index(self) -> np.ndarray:
        """4x4 from world RAS to continuous (I, J, K) indices into :meth:`array`'s reversed axes."""
        image_to_world = vtk.vtkMatrix4x4()
        self.image.GetImageToWorldMatrix(image_to_world)
        to_index = np.linalg.inv(matrix_to_array(image_to_world)) @ self.world_to_segmentation
        to_index[:3, 3] -= self.extent_start
        return to_index

    def array(self) -> np.ndarray:
        return array_from_image(self.image)

    def on_volume_grid(self) -> bool:
        """True if the aligned image is the source volume's own voxel grid (same size, each voxel at the same
        place), as when the segmentation's geometry was taken from that volume: then index coordinates on it
        are index coordinates in the volume's file."""
        if self.shape_ijk != tuple(self.volume_node.GetImageData().GetDimensions()):
            return False
        ijk_to_ras = vtk.vtkMatrix4x4()
        self.volume_node.GetIJKToRASMatrix(ijk_to_ras)
        try:
            world_to_volume = world_to_node_matrix(self.volume_node)
        except EditorStateError:  # under a non-linear transform: no voxel of the file is at a fixed place
            return False
        world_to_volume_index = np.linalg.inv(matrix_to_array(ijk_to_ras)) @ world_to_volume
        return bool(np.allclose(world_to_volume_index @ np.linalg.inv(self.ras_to_array_index()), np.eye(4),
                                atol=1e-4))


def check_source_volume(volume_node) -> None:
    """Refuse volumes MedSAM2 cannot propagate through: none, vector/4D, single-slice."""
    if volume_node is None or volume_node.GetImageData() is None:
        raise EditorStateError("Select a source volume in the Segment Editor first.")
    image = volume_node.GetImageData()
    components = image.GetNumberOfScalarComponents()
    if components != 1:
        raise EditorStateError(
            f"The source volume '{volume_node.GetName()}' has {components} values per voxel (a colour, vector or "
            "4D volume); MedSAM2 needs a scalar 3D volume. Extract one frame or channel first."
        )
    dimensions = image.GetDimensions()
    if min(dimensions) < 2:
        raise EditorStateError(
            f"The source volume '{volume_node.GetName()}' has dimensions {dimensions[0]} x {dimensions[1]} x "
            f"{dimensions[2]}: a single slice. MedSAM2 propagates through a 3D volume with at least two slices."
        )


def world_to_node_matrix(node) -> np.ndarray:
    """4x4 from world RAS to a transformable node's local RAS; refuses non-linear transforms."""
    parent = node.GetParentTransformNode()
    matrix = vtk.vtkMatrix4x4()
    if parent is not None and not slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(None, parent, matrix):
        raise EditorStateError(
            f"'{node.GetName()}' is under a non-linear transform. Harden the transform (Data module) first."
        )
    return matrix_to_array(matrix)


# -- windowing -----------------------------------------------------------------------------------------


def display_windowing(volume_node) -> Windowing:
    """The window/level the source volume is displayed with: what the clinician sees."""
    display = volume_node.GetDisplayNode() if volume_node is not None else None
    if display is None or not hasattr(display, "GetWindow"):
        raise EditorStateError("The source volume has no display window; choose another intensity windowing.")
    half = display.GetWindow() / 2.0
    return Windowing("window", (display.GetLevel() - half, display.GetLevel() + half))


# -- editor access: read state, write results ------------------------------------------------------------


# The editor's modification modes by name, as vtkSlicerSegmentEditorLogic and qSlicerSegmentEditorAbstractEffect
# spell them.
MODIFICATION_MODES = {"set": "ModificationModeSet", "add": "ModificationModeAdd", "remove": "ModificationModeRemove"}


class EditorBackend(Protocol):
    """The four things a segment editor must provide; implemented for vtkSlicerSegmentEditorLogic here and
    for the Segment Editor's effect API in MedSAM2Slicer."""

    def editor_node(self) -> "slicer.vtkMRMLSegmentEditorNode": ...

    def aligned_source_image(self) -> Optional["slicer.vtkOrientedImageData"]:
        """The source volume resampled to the segmentation's geometry (None if that fails)."""

    def save_state_for_undo(self) -> None: ...

    def modify_segment(self, segmentation_node, segment_id: str, labelmap: "slicer.vtkOrientedImageData",
                       mode: str = "set") -> None:
        """Modify that segment by the labelmap, honouring the editor's masking and overwrite settings. mode (one of
        :data:`MODIFICATION_MODES`): "set" replaces the whole segment (Slicer's Set first clears all of it), "add"
        adds the labelmap's voxels and "remove" removes them, both only within the labelmap's extent, which must be
        passed as the modification extent: without one, Slicer's Remove thresholds the segment's whole labelmap
        (vtkSegmentationModifier::ModifyBinaryLabelmap, MODE_MERGE_MIN), a tenth of a second on a large segment."""


class SegmentEditorLogicBackend:
    """Headless backend: ``vtkSlicerSegmentEditorLogic``, which keeps its own undo history."""

    def __init__(self, editor_logic: "slicer.vtkSlicerSegmentEditorLogic") -> None:
        self.editor_logic = editor_logic

    def editor_node(self):
        return self.editor_logic.GetSegmentEditorNode()

    def aligned_source_image(self):
        return self.editor_logic.GetAlignedSourceVolume() if self.editor_logic.UpdateAlignedSourceVolume() else None

    def save_state_for_undo(self) -> None:
        self.editor_logic.SaveStateForUndo()

    def modify_segment(self, segmentation_node, segment_id: str, labelmap, mode: str = "set") -> None:
        mode_value = getattr(slicer.vtkSlicerSegmentEditorLogic, MODIFICATION_MODES[mode])
        self.editor_logic.ModifySegmentByLabelmap(segmentation_node, segment_id, labelmap, mode_value,
                                                  labelmap.GetExtent(), True, False)


class EditorAccess:
    """The editor's state as the logic reads it, and the undoable write of a result."""

    def __init__(self, backend: EditorBackend) -> None:
        self.backend = backend

    def segmentation_node(self) -> "slicer.vtkMRMLSegmentationNode":
        return self.backend.editor_node().GetSegmentationNode()

    def selected_segment_id(self) -> Optional[str]:
        """The selected segment's ID, or None when no existing segment is selected."""
        segment_id = self.backend.editor_node().GetSelectedSegmentID()
        if segment_id and self.segmentation_node().GetSegmentation().GetSegment(segment_id) is not None:
            return segment_id
        return None

    def source(self) -> SourceImage:
        if self.segmentation_node() is None:
            raise EditorStateError("Select a segmentation in the Segment Editor first.")
        volume_node = self.backend.editor_node().GetSourceVolumeNode()
        check_source_volume(volume_node)
        image = self.backend.aligned_source_image()
        if image is None:
            raise EditorStateError("The source volume cannot be resampled to the segmentation's geometry.")
        return SourceImage(image, volume_node, world_to_node_matrix(self.segmentation_node()))

    def write(self, labelmap: "slicer.vtkOrientedImageData", target: Optional[WriteTarget] = None) -> str:
        """Save state for undo, then set the target segment (default: the selected one; a new segment when there
        is none) to labelmap; returns the segment's ID. EditorStateError if the target is gone."""
        return self.modify([("set", labelmap)], target)

    def modify(self, modifications: Sequence[Tuple[str, "slicer.vtkOrientedImageData"]],
               target: Optional[WriteTarget] = None) -> str:
        """Save state for undo once, then apply each (mode, labelmap) to the target segment in order (one undo
        step; a new segment when none is selected, also when there is nothing to apply); returns the segment's ID.
        EditorStateError if the target is gone.

        The editor builds its editable-area mask for the *selected* segment
        (vtkSlicerSegmentEditorLogic::UpdateMaskLabelmap passes GetSelectedSegmentID to GenerateEditMask), so the
        target is selected while writing; a selection the user made meanwhile is restored afterwards.
        """
        editor_node = self.backend.editor_node()
        target = target or WriteTarget.capture(editor_node)
        problem = target.problem(editor_node)
        if problem is not None:
            raise EditorStateError(problem)
        self.backend.save_state_for_undo()
        segmentation = target.segmentation_node.GetSegmentation()
        segment_id = target.segment_id or segmentation.AddEmptySegment("", target.segment_name)
        selected = editor_node.GetSelectedSegmentID()
        editor_node.SetSelectedSegmentID(segment_id)
        try:
            for mode, labelmap in modifications:
                self.backend.modify_segment(target.segmentation_node, segment_id, labelmap, mode)
        finally:
            if selected and selected != segment_id and segmentation.GetSegment(selected) is not None:
                editor_node.SetSelectedSegmentID(selected)
        return segment_id

    def masking_applies(self) -> bool:
        """True if the editor's editable area or intensity range can make a write differ from its labelmap."""
        editor_node = self.backend.editor_node()
        return (editor_node.GetMaskMode() != slicer.vtkMRMLSegmentationNode.EditAllowedEverywhere
                or bool(editor_node.GetSourceVolumeIntensityMask()))


def segment_mask_on(segmentation_node, segment_id: str, reference: "slicer.vtkOrientedImageData") -> np.ndarray:
    """A segment's current content as a 0/1 (K, J, I) array on a reference image's grid and extent (a part of
    the grid from :func:`grid_part` reads only that part)."""
    segmentation = segmentation_node.GetSegmentation()
    segment = segmentation.GetSegment(segment_id)
    labelmap = segment.GetRepresentation(segmentation.GetSourceRepresentationName()) if segment is not None else None
    if isinstance(labelmap, slicer.vtkOrientedImageData) and slicer.vtkOrientedImageDataResample.DoGeometriesMatch(
            labelmap, reference):
        # The segment's own labelmap (maybe shared with other segments: its label value) is on the reference's grid:
        # read the part they share, instead of extracting and resampling the whole labelmap.
        return _label_on_extent(labelmap, segment.GetLabelValue(), reference.GetExtent())
    segment_image = slicer.vtkOrientedImageData()
    if not slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        segmentation_node, segment_id, segment_image, False
    ):
        raise EditorStateError(f"The segment {segment_id!r} has no binary labelmap to edit.")
    resampled = slicer.vtkOrientedImageData()
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(segment_image, reference, resampled)
    if resampled.GetPointData().GetScalars() is None:
        return np.zeros(reference.GetDimensions()[::-1], dtype=np.uint8)
    return (array_from_image(resampled) > 0).astype(np.uint8)


def _label_on_extent(labelmap: "slicer.vtkOrientedImageData", label: int, extent: Sequence[int]) -> np.ndarray:
    """0/1 (K, J, I) array over ``extent`` (a VTK extent on the labelmap's grid): where the labelmap holds label."""
    result = np.zeros([extent[2 * axis + 1] - extent[2 * axis] + 1 for axis in (2, 1, 0)], dtype=np.uint8)
    held = labelmap.GetExtent()
    low = [max(extent[2 * axis], held[2 * axis]) for axis in range(3)]
    high = [min(extent[2 * axis + 1], held[2 * axis + 1]) for axis in range(3)]
    if labelmap.GetPointData().GetScalars() is None or any(l > h for l, h in zip(low, high)):
        return result
    values = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(labelmap.GetDimensions()[::-1])
    source = tuple(slice(low[axis] - held[2 * axis], high[axis] - held[2 * axis] + 1) for axis in (2, 1, 0))
    target = tuple(slice(low[axis] - extent[2 * axis], high[axis] - extent[2 * axis] + 1) for axis in (2, 1, 0))
    result[target] = values[source] == label
    return result


def labelmap_stamp(segmentation_node, segment_id: str) -> Optional[Tuple[str, int]]:
    """The segment's labelmap object and its modification time: the same stamp means the segment's voxels have not
    changed (a labelmap shared with other segments also changes when they do)."""
    segmentation = segmentation_node.GetSegmentation()
    segment = segmentation.GetSegment(segment_id)
    labelmap = segment.GetRepresentation(segmentation.GetSourceRepresentationName()) if segment is not None else None
    return (labelmap.GetAddressAsString("vtkObject"), labelmap.GetMTime()) if labelmap is not None else None


# -- the logic -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewPrompt:
    """A box prompt on the aligned source volume's grid."""

    source: SourceImage
    stack: StackPrompt

    @property
    def slice_axis(self) -> int:
        return self.stack.geometry.slice_axis

    @property
    def num_slices(self) -> int:
        return self.source.shape_ijk[self.slice_axis]


@dataclass
class SegmentationResult:
    """A mask on the aligned source volume's grid and the slices that were computed."""

    mask: np.ndarray  # uint8 (K, J, I) like the aligned source volume
    slices: List[int]  # slices that were segmented (indices along the slice axis)
    slice_axis: int  # 0, 1, 2 for I, J, K
    early_stops: List[str] = field(default_factory=list)  # where and why a direction stopped early

    @property
    def status(self) -> str:
        """One line for the status label."""
        return " ".join([f"Segmented {len(self.slices)} slice(s).", *self.early_stops, "Undo (Ctrl+Z) reverts it."])


ProgressCallback = Callable[[int, int], None]


class PropagationProgress:
    """``progress(done, total)`` through a propagation whose directions may end early.

    The total starts as the slices planned per direction (what would be computed if none stopped early); when
    a direction ends, what it left of its plan leaves the total, so the last call has done == total.
    """

    def __init__(self, plan: Dict[str, Sequence[int]], progress: Optional[ProgressCallback]) -> None:
        self._progress = progress
        self._left = {direction: set(slices) for direction, slices in plan.items()}
        self._reported: Optional[Tuple[int, int]] = None
        self.done = 0

    @property
    def total(self) -> int:
        return self.done + sum(len(left) for left in self._left.values())

    def slice_done(self, result: SliceResult) -> None:
        self.done += 1
        for left in self._left.values():
            left.discard(result.index)
        if result.stop is not None:
            self._left.get(result.stop.direction, set()).clear()
        self._report()

    def finish(self) -> None:
        """The propagation has ended (a direction may have stopped on a slice it did not need to recompute)."""
        for left in self._left.values():
            left.clear()
        if self.done and self._reported != (self.done, self.done):
            self._report()

    def _report(self) -> None:
        self._reported = (self.done, self.total)
        if self._progress is not None:
            self._progress(*self._reported)


class MedSAM2Logic:
    """Turns a box on a view into a segment. The predictor is injected (tests may pass a stand-in).

    ``pre_encoder`` encodes slices of the cached stack in the background (the effect asks it for the slice a view
    shows, :meth:`InteractiveSegmenter.pre_encode`); every computation on the model runs inside its
    :meth:`PreEncoder.paused`, so that the model computes one thing at a time."""

    def __init__(self, predictor: VolumePredictor, max_cached_slices: Optional[int] = 128) -> None:
        self.predictor = predictor
        self.max_cached_slices = max_cached_slices
        self._cache_key: Optional[tuple] = None
        self._cache: Optional[FeatureCache] = None
        self.pre_encoder = PreEncoder(predictor)

    # prompts

    def prompt_from_view(
        self, source: SourceImage, slice_node, xy_corners: Sequence[Sequence[float]],
        geometry: Optional[StackGeometry] = None,
    ) -> ViewPrompt:
        """A box dragged in a slice view: two opposite corners in the view's XY (pixel) coordinates, with an
        optional third coordinate z locating the slice they were drawn on (0: the slice shown).

        geometry: the stack orientation to use (an existing session's, along the same axis); default: the view's.
        """
        (x0, y0, z0), (x1, y1, z1) = [tuple(corner) + (0.0,) * (3 - len(corner)) for corner in xy_corners]
        z = (z0 + z1) / 2
        xy_to_index = view_to_index(source, slice_node)
        geometry = geometry or view_geometry(source, slice_node)
        corners_xy = np.array([[x0, y0, z], [x1, y0, z], [x0, y1, z], [x1, y1, z]], dtype=np.float64)
        corners = transform_points(xy_to_index, corners_xy)
        return ViewPrompt(source, box_prompt(geometry, corners, source.shape_ijk))

    def prompt_from_ras(self, source: SourceImage, ras_points: Sequence[Sequence[float]]) -> ViewPrompt:
        """A box given by points in world RAS (two opposite corners, or more) lying on one slice.

        The slices run along the voxel axis on which the points agree; rows and columns are oriented as
        Slicer's standard axial, coronal or sagittal view of that plane would show them.
        """
        to_index = source.ras_to_array_index()
        points = transform_points(to_index, ras_points)
        slice_axis = int(np.argmin(np.ptp(points, axis=0)))
        if np.ptp(points[:, slice_axis]) >= 0.5:
            raise EditorStateError("The box's points are not on one slice of the volume.")
        right, up = _standard_view_directions(to_index, slice_axis)
        geometry = stack_geometry(right, up)
        return ViewPrompt(source, box_prompt(geometry, points, source.shape_ijk))

    # computing

    def segment(
        self,
        prompt: ViewPrompt,
        windowing: Optional[Windowing] = None,
        propagate: bool = True,
        direction: str = "both",
        slice_range: Optional[Tuple[int, int]] = None,
        progress: Optional[ProgressCallback] = None,
        should_cancel: Optional[Callable[[], bool]] = None,
    ) -> SegmentationResult:
        """Run the model: the box's slice only (``propagate=False``, a preview) or through the volume.

        windowing: how intensities become the model's input; None (default) uses the display window.

        progress(done, total) is called after each slice (see :class:`PropagationProgress`); should_cancel() is
        asked after each slice and raises :class:`Cancelled` when it says yes. Nothing is written here.
        """
        stack, cache = self.stack_for(prompt.source, prompt.stack.geometry, windowing)
        key = prompt.stack.slice_index
        slices = planned_slices(stack.shape[0], key, direction, slice_range) if propagate else [key]
        ahead = {i for i in slices if i > key or (i == key and direction != "backward")}
        counter = PropagationProgress({"forward": [i for i in slices if i in ahead],
                                       "backward": [i for i in slices if i not in ahead]}, progress)

        computed: List[int] = []
        early_stops: List[str] = []

        def on_slice(result: SliceResult) -> None:
            computed.append(result.index)
            if result.stop is not None and result.stop.early:
                early_stops.append(str(result.stop))
            counter.slice_done(result)
            if should_cancel is not None and should_cancel():
                raise Cancelled()

        box = prompt.stack.box
        with self.pre_encoder.paused():
            if propagate:
                stack_mask = self.predictor.segment(stack, key, box, direction, slice_range, on_slice, cache)
            else:
                result = self.predictor.segment_slice(stack, key, box, cache)
                on_slice(result)
                stack_mask = np.zeros(stack.shape, dtype=np.uint8)
                stack_mask[key] = result.mask
        counter.finish()
        mask = prompt.stack.geometry.from_stack(stack_mask)
        return SegmentationResult(mask, sorted(computed), prompt.slice_axis, early_stops)

    def write(
        self, editor: EditorAccess, prompt: ViewPrompt, result: SegmentationResult, target: Optional[WriteTarget] = None
    ) -> str:
        """Set the target segment (default: the selected one) to the result on the computed slices, undoably;
        the segment keeps its content on the other slices. Returns the segment's ID.

        Slicer's Set mode replaces the whole segment, so the labelmap carries the segment's current content
        outside the computed slices (masking and overwrite settings then act as for Slicer's own effects).
        """
        modifier = result.mask.copy()
        untouched = np.ones(modifier.shape[2 - result.slice_axis], dtype=bool)
        untouched[result.slices] = False
        target = target or WriteTarget.capture(editor.backend.editor_node())
        if target.segment_id is not None and untouched.any():  # a full propagation replaces everything
            current = segment_mask_on(target.segmentation_node, target.segment_id, prompt.source.image)
            index = [slice(None)] * 3
            index[2 - result.slice_axis] = untouched
            modifier[tuple(index)] = current[tuple(index)]
        return editor.write(labelmap_like(prompt.source.image, modifier), target)

    def process(
        self, editor: EditorAccess, slice_node, xy_corners: Sequence[Sequence[float]], **options
    ) -> SegmentationResult:
        """Everything a click on Propagate does: prompt from the view, segment, write."""
        prompt = self.prompt_from_view(editor.source(), slice_node, xy_corners)
        result = self.segment(prompt, **options)
        self.write(editor, prompt, result)
        return result

    def clear_cache(self) -> None:
        """Release the image features (and stop encoding in the background: waits for the slice in flight)."""
        self.pre_encoder.stop()
        self._cache_key = self._cache = None

    def feature_bytes(self) -> int:
        """Bytes of image features kept (0 after clear_cache)."""
        return self._cache.nbytes if self._cache is not None else 0

    def stack_for(
        self, source: SourceImage, geometry: StackGeometry, windowing: Optional[Windowing] = None
    ) -> Tuple[np.ndarray, FeatureCache]:
        """The windowed (slices, rows, columns) stack and its feature cache, both kept while the volume,
        the windowing (None: the display window) and the stack orientation stay the same."""
        image = source.image
        windowing = windowing or display_windowing(source.volume_node)
        # The image's C++ address, not id(): Python may wrap the same image in a new object on each call (a
        # new id), and a new image at a reused address has a newer MTime.
        key = (id(self.predictor), image.GetAddressAsString("vtkObject"), image.GetMTime(), windowing, geometry)
        if key != self._cache_key:
            intensities = source.array()
            check_finite(intensities, SLICER_NAN_FIX, name=f"The source volume '{source.volume_node.GetName()}'")
            stack = geometry.to_stack(windowing.apply(intensities))
            self._cache_key, self._cache = key, FeatureCache(stack, self.max_cached_slices)
        return self._cache.volume, self._cache


def view_to_index(source: SourceImage, slice_node) -> np.ndarray:
    """4x4 from a slice view's XY (pixels; z: offset from the slice shown) to the source's continuous IJK."""
    return source.ras_to_array_index() @ matrix_to_array(slice_node.GetXYToRAS())


def view_geometry(source: SourceImage, slice_node) -> StackGeometry:
    """How the source becomes a stack of the slices this view shows (ObliqueViewError if it cannot)."""
    xy_to_index = view_to_index(source, slice_node)
    return stack_geometry(xy_to_index[:3, 0], xy_to_index[:3, 1])


def grid_part(image: "slicer.vtkOrientedImageData", box_kji: Sequence[slice]) -> "slicer.vtkOrientedImageData":
    """An oriented image without voxels on ``image``'s grid, its extent the part ``box_kji`` of :meth:`array`
    indices (three slices with start and stop, K, J, I): a reference for reading or writing only there."""
    start = image.GetExtent()[0::2]
    extent = []
    for axis, part in zip(range(3), box_kji[::-1]):  # I, J, K
        extent += [start[axis] + part.start, start[axis] + part.stop - 1]
    part_image = slicer.vtkOrientedImageData()
    part_image.SetExtent(extent)
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    part_image.SetImageToWorldMatrix(matrix)
    return part_image


def slab_modifications(image: "slicer.vtkOrientedImageData", box_kji: Sequence[slice], current: np.ndarray,
                       new: np.ndarray) -> List[Tuple[str, "slicer.vtkOrientedImageData"]]:
    """The editor modifications (:meth:`EditorAccess.modify`) that set the part ``box_kji`` of ``image``'s grid,
    where the segment holds ``current``, to ``new`` (both 0/1 arrays of that part's shape) and leave the rest
    alone: Remove where ``current`` has voxels that ``new`` has not, then Add ``new``, each cropped to the box of
    its voxels. Slicer's Set would clear the whole segment first (vtkSlicerSegmentEditorLogic::
    ModifySegmentByLabelmap thresholds its whole labelmap in Set mode). The editable area, the intensity range and
    overwriting other segments apply to Remove and Add as to Set, except with the editable area "inside a
    segment", where Slicer lets Remove (as the Erase effect) clear this segment's voxels outside that segment too."""
    modifications = []
    for mode, voxels in (("remove", (current != 0) & (new == 0)), ("add", new != 0)):
        occupied = bounding_box(voxels)
        if occupied is not None:
            part = tuple(slice(whole.start + inner.start, whole.start + inner.stop)
                         for whole, inner in zip(box_kji, occupied))
            labelmap = labelmap_like(grid_part(image, part), voxels[occupied].astype(np.uint8))
            modifications.append((mode, labelmap))
    return modifications


def labelmap_like(image: "slicer.vtkOrientedImageData", mask_kji: np.ndarray) -> "slicer.vtkOrientedImageData":
    """A uint8 oriented image with ``image``'s geometry and extent (which ``mask_kji``'s shape must match)
    holding ``mask_kji``."""
    labelmap = slicer.vtkOrientedImageData()
    labelmap.SetExtent(image.GetExtent())
    matrix = vtk.vtkMatrix4x4()
    image.GetImageToWorldMatrix(matrix)
    labelmap.SetImageToWorldMatrix(matrix)
    scalars = numpy_support.numpy_to_vtk(np.ascontiguousarray(mask_kji, dtype=np.uint8).ravel(), deep=True,
                                         array_type=vtk.VTK_UNSIGNED_CHAR)
    labelmap.GetPointData().SetScalars(scalars)
    return labelmap


def _standard_view_directions(ras_to_index: np.ndarray, slice_axis: int) -> Tuple[np.ndarray, np.ndarray]:
    """Screen right and up, in index space, of Slicer's standard view closest to a voxel plane, projected
    onto that plane (as 'Rotate to volume plane' would show it)."""
    index_to_ras = np.linalg.inv(ras_to_index)[:3, :3]
    normal_ras = index_to_ras[:, slice_axis]
    anatomical = int(np.argmax(np.abs(normal_ras)))  # 0: sagittal (R), 1: coronal (A), 2: axial (S)
    slice_to_ras = vtk.vtkMatrix3x3()
    getter = [slicer.vtkMRMLSliceNode.GetSagittalSliceToRASMatrix, slicer.vtkMRMLSliceNode.GetCoronalSliceToRASMatrix,
              slicer.vtkMRMLSliceNode.GetAxialSliceToRASMatrix][anatomical]
    getter(slice_to_ras, True)
    directions = []
    for column in (0, 1):
        direction = ras_to_index[:3, :3] @ np.array([slice_to_ras.GetElement(row, column) for row in range(3)])
        direction[slice_axis] = 0.0
        directions.append(direction)
    return directions[0], directions[1]


# -- saving ----------------------------------------------------------------------------------------------


def _write_with_storage_node(node, storage_node, path) -> None:
    scene = node.GetScene()
    scene.AddNode(storage_node)
    try:
        storage_node.SetFileName(str(path))
        if not storage_node.WriteData(node):
            raise OSError(f"Could not write {path}.")
    finally:
        scene.RemoveNode(storage_node)


def save_segmentation(segmentation_node, path) -> None:
    """Save a segmentation as ``.seg.nrrd`` (all segments, names, colours, its own geometry)."""
    _write_with_storage_node(segmentation_node, slicer.vtkMRMLSegmentationStorageNode(), path)


def save_segment_as_labelmap(segmentation_node, segment_id: str, reference_volume_node, path) -> None:
    """Save one segment as a 0/1 labelmap volume file (NRRD, NIfTI, ...) on the reference volume's grid,
    with its spacing, origin and directions."""
    scene = segmentation_node.GetScene()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode")
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, ids, labelmap, reference_volume_node
        ):
            raise EditorStateError(f"Segment {segment_id!r} could not be exported.")
        _write_with_storage_node(labelmap, slicer.vtkMRMLVolumeArchetypeStorageNode(), path)
    finally:
        scene.RemoveNode(labelmap)

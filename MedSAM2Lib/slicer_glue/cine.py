"""Propagation through time: a cine loop or a 4D image, shown as the proxy volume of a Sequence, segmented on
one slice of every frame, written as a segmentation Sequence that the volume's sequence browser plays with it.

In Slicer a sequence browser (``vtkMRMLSequenceBrowserNode``) shows one item of each sequence it synchronises
through a proxy node; the Segment Editor's source volume is then that proxy. Here:

- :func:`cine_of` finds the browser and the volume sequence whose proxy a volume is;
- :func:`frame_source` is the frames' voxel grid as the prompt functions of :mod:`.logic` take it, so that a
  box drawn on a view (``MedSAM2Logic.prompt_from_view``) or given by RAS points (``prompt_from_ras``) becomes a
  :class:`~.geometry.StackPrompt`: the slice the view shows, oriented as it shows it, and the box on it;
- :func:`time_stack` takes that slice from every frame: a (T, rows, columns) stack, windowed as the proxy is
  displayed, which a :class:`~MedSAM2Lib.inference.session.Session` tracks through time as through slices;
- :class:`SegmentationSequenceEdit` writes the result into a segmentation Sequence of the same index values
  (a new one, synchronised with the browser, or the one an earlier run made), and undoes it as one action.

The proxy nodes are refreshed with ``vtkSlicerSequencesLogic.UpdateProxyNodesFromSequences`` (Slicer's
Sequences logic: it copies each synchronised sequence's item at the selected index into that sequence's proxy
node, creating the proxy when there is none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import numpy as np
import slicer
import vtk

from ..inference.predictor import VolumePredictor
from ..inference.preprocessing import Windowing
from ..inference.session import Session
from .geometry import StackPrompt
from .logic import (EditorStateError, MedSAM2Logic, SourceImage, array_from_image, display_windowing, labelmap_like,
                    world_to_node_matrix)


@dataclass(frozen=True)
class Cine:
    """A volume sequence shown by a browser through ``proxy``."""

    browser: "slicer.vtkMRMLSequenceBrowserNode"
    sequence: "slicer.vtkMRMLSequenceNode"
    proxy: "slicer.vtkMRMLScalarVolumeNode"

    @property
    def num_frames(self) -> int:
        return self.sequence.GetNumberOfDataNodes()

    def frame(self, number: int):
        return self.sequence.GetNthDataNode(number)

    def index_value(self, number: int) -> str:
        return self.sequence.GetNthIndexValue(number)

    @property
    def shown_frame(self) -> int:
        """The frame the browser shows now."""
        shown = self.sequence.GetItemNumberFromIndexValue(
            self.browser.GetMasterSequenceNode().GetNthIndexValue(self.browser.GetSelectedItemNumber()))
        return max(shown, 0)


def cine_of(volume_node) -> Optional[Cine]:
    """The browser and volume sequence whose proxy ``volume_node`` is, or None for a volume of its own."""
    scene = volume_node.GetScene() if volume_node is not None else None
    if scene is None:
        return None
    for number in range(scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode")):
        browser = scene.GetNthNodeByClass(number, "vtkMRMLSequenceBrowserNode")
        sequence = browser.GetSequenceNode(volume_node)
        if sequence is not None:
            return Cine(browser, sequence, volume_node)
    return None


def frame_source(cine: Cine) -> SourceImage:
    """The frames' voxel grid (the proxy's) as a :class:`~.logic.SourceImage` for the prompt functions."""
    return SourceImage(_frame_image(cine.proxy), cine.proxy, world_to_node_matrix(cine.proxy))


def time_stack(cine: Cine, prompt: StackPrompt, windowing: Windowing) -> np.ndarray:
    """uint8 (T, rows, columns): the prompt's slice of every frame, oriented as its geometry says, windowed
    together; frames of one grid only."""
    if cine.num_frames < 2:
        raise EditorStateError(f"The sequence '{cine.sequence.GetName()}' has {cine.num_frames} frame; propagating "
                               "through time needs at least two.")
    frames = [array_from_image(cine.frame(number).GetImageData()) for number in range(cine.num_frames)]
    shapes = sorted({frame.shape for frame in frames})
    if len(shapes) > 1:
        raise EditorStateError(f"The frames of '{cine.sequence.GetName()}' differ in size ({shapes[0][::-1]} and "
                               f"{shapes[1][::-1]} voxels); propagating through time needs frames of one grid.")
    return windowing.apply(np.stack([prompt.geometry.to_stack(frame)[prompt.slice_index] for frame in frames]))


def propagate_through_time(predictor: VolumePredictor, stack: np.ndarray, frame: int, box: Sequence[float],
                           early_stop: Optional[int] = None) -> np.ndarray:
    """uint8 (T, rows, columns) masks: a box (x = column, y = row, as in a StackPrompt) on ``frame``, tracked
    forward and backward in time; frames the tracking did not reach stay empty."""
    session = Session(predictor, stack, predictor.single_pass_cache(stack), early_stop=early_stop)
    session.add_prompt(frame, box=box)
    masks = np.zeros(stack.shape, dtype=np.uint8)
    for result in session.propagate():
        masks[result.index] = result.mask
    return masks


def run_through_time(logic: MedSAM2Logic, cine: Cine, slice_node, xy_corners: Sequence[Sequence[float]],
                     sequences_logic: "slicer.vtkSlicerSequencesLogic", segment_name: str,
                     windowing: Optional[Windowing] = None, target: Optional["slicer.vtkMRMLSequenceNode"] = None,
                     early_stop: Optional[int] = None) -> "SegmentationSequenceEdit":
    """What "propagate through time" does: a box drawn on a view of the proxy (two XY corners, as
    ``MedSAM2Logic.prompt_from_view`` takes them) tracked from the shown frame through all frames, on the slice
    the view shows, and written into a segmentation Sequence; returns the edit, whose ``undo()`` takes it back.
    windowing: None for the proxy's display window."""
    prompt = logic.prompt_from_view(frame_source(cine), slice_node, xy_corners).stack
    stack = time_stack(cine, prompt, windowing or display_windowing(cine.proxy))
    masks = propagate_through_time(logic.predictor, stack, cine.shown_frame, prompt.box, early_stop)
    edit = SegmentationSequenceEdit(cine, sequences_logic, target)
    edit.write(masks, prompt, segment_name)
    return edit


class SegmentationSequenceEdit:
    """One run's result written as a segment on every frame of a segmentation Sequence, undoable as one action.

    ``target``: the segmentation sequence of an earlier run (synchronised with the same browser), or None for a
    new one named after the volume sequence, added to the scene and synchronised with the browser.
    """

    def __init__(self, cine: Cine, sequences_logic: "slicer.vtkSlicerSequencesLogic",
                 target: Optional["slicer.vtkMRMLSequenceNode"] = None) -> None:
        if target is not None and not cine.browser.IsSynchronizedSequenceNodeID(target.GetID()):
            raise EditorStateError(f"The segmentation sequence '{target.GetName()}' is not played by the browser "
                                   f"'{cine.browser.GetName()}' of the volume.")
        self.cine, self.logic, self.target = cine, sequences_logic, target
        self.created = False
        self._previous: Dict[str, Optional["slicer.vtkMRMLSegmentationNode"]] = {}

    def write(self, masks: np.ndarray, prompt: StackPrompt, segment_name: str) -> "slicer.vtkMRMLSequenceNode":
        """Set the segment ``segment_name`` on each frame's segmentation to ``masks`` (T, rows, columns) on the
        prompt's slice, the frame's other slices empty; the browser's proxy segmentation then shows the
        selected frame's."""
        cine = self.cine
        if masks.shape[0] != cine.num_frames:
            raise EditorStateError(f"{masks.shape[0]} masks for {cine.num_frames} frames.")
        if self.target is None:
            scene = cine.proxy.GetScene()
            self.target = scene.AddNewNodeByClass("vtkMRMLSequenceNode",
                                                  scene.GenerateUniqueName(f"{cine.sequence.GetName()} MedSAM2"))
            self.target.CopySequenceIndex(cine.sequence)
            self.created = True
        try:
            self._write_frames(masks, prompt, segment_name)
        except BaseException:  # nothing half written: every frame back as it was
            self.undo()
            raise
        if self.created:
            cine.browser.AddSynchronizedSequenceNodeID(self.target.GetID())
        self.logic.UpdateProxyNodesFromSequences(cine.browser)
        return self.target

    def _write_frames(self, masks: np.ndarray, prompt: StackPrompt, segment_name: str) -> None:
        cine = self.cine
        segment_id = None  # one ID on every frame, so that the segment stays selected while the browser plays
        for number in range(cine.num_frames):
            value = cine.index_value(number)
            previous = self.target.GetDataNodeAtValue(value, True)
            self._previous[value] = _copy(previous) if previous is not None else None
            frame = cine.frame(number)
            segmentation = _copy(previous) if previous is not None else _segmentation_on(frame)
            stack = prompt.geometry.to_stack(np.zeros(array_from_image(frame.GetImageData()).shape, np.uint8))
            stack[prompt.slice_index] = masks[number]
            segment_id = _set_segment(segmentation, segment_id, segment_name,
                                      labelmap_like(_frame_image(frame), prompt.geometry.from_stack(stack)))
            self.target.SetDataNodeAtValue(segmentation, value)

    @property
    def proxy(self) -> Optional["slicer.vtkMRMLSegmentationNode"]:
        """The segmentation the browser shows for the selected frame."""
        return self.cine.browser.GetProxyNode(self.target) if self.target is not None else None

    def undo(self) -> None:
        """Put every frame back as it was before :meth:`write` (a new sequence and its proxy are removed)."""
        cine, target = self.cine, self.target
        if target is None:
            return
        if self.created:
            proxy = self.proxy
            if cine.browser.IsSynchronizedSequenceNodeID(target.GetID()):
                cine.browser.RemoveSynchronizedSequenceNode(target.GetID())
            scene = cine.proxy.GetScene()
            if proxy is not None:
                scene.RemoveNode(proxy)
            scene.RemoveNode(target)
            self.target, self.created = None, False
        else:
            for value, previous in self._previous.items():
                if previous is None:
                    target.RemoveDataNodeAtValue(value)
                else:
                    target.SetDataNodeAtValue(previous, value)
            self.logic.UpdateProxyNodesFromSequences(cine.browser)
        self._previous.clear()


def _copy(segmentation):
    copy = slicer.vtkMRMLSegmentationNode()
    copy.Copy(segmentation)
    return copy


def _frame_image(frame) -> "slicer.vtkOrientedImageData":
    """A frame's voxel grid (its extent and IJK-to-RAS) as an oriented image, no scalars."""
    image = slicer.vtkOrientedImageData()
    image.SetExtent(frame.GetImageData().GetExtent())
    matrix = vtk.vtkMatrix4x4()
    frame.GetIJKToRASMatrix(matrix)
    image.SetImageToWorldMatrix(matrix)
    return image


def _segmentation_on(frame) -> "slicer.vtkMRMLSegmentationNode":
    segmentation = slicer.vtkMRMLSegmentationNode()
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(frame)
    return segmentation


def _set_segment(segmentation, segment_id: Optional[str], name: str, labelmap) -> str:
    """The segment named ``name`` holds ``labelmap``; added when missing, with ``segment_id`` when given (else
    a new ID). Returns its ID."""
    content = segmentation.GetSegmentation()
    existing = content.GetSegmentIdBySegmentName(name)
    if existing:
        segment_id = existing
    else:
        segment_id = content.AddEmptySegment(segment_id or "", name)
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        labelmap, segmentation, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    return segment_id

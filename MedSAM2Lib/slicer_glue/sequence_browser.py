"""A cine loop or 4D image as Slicer shows it: a volume Sequence played by a sequence browser through a proxy
volume, and the segmentation Sequence the editor's segmentation becomes the proxy of. No torch: the effect asks
:func:`cine_of` before setup, to decide whether it offers "propagate through time".

In Slicer a sequence browser (``vtkMRMLSequenceBrowserNode``) shows one item of each sequence it synchronises
through a proxy node; the Segment Editor's source volume is then that proxy. With "save changes" on for a
sequence (``SetSaveChanges``), the proxy is a shallow copy of the shown item: ``vtkSlicerSequencesLogic::
UpdateProxyNodesFromSequences`` calls ``CopyContent(item, deepCopy=!saveChanges)``, and
``vtkMRMLSegmentationNode::CopyContent`` then shares the item's ``vtkSegmentation``. So an edit of the proxy
segmentation (Paint, or MedSAM2 through the editor) is an edit of the shown frame's item, and the Segment Editor's
undo history, which follows the proxy's ``vtkSegmentation`` object (``vtkSlicerSegmentEditorLogic::
ProcessMRMLNodesEvents`` calls ``vtkSegmentationHistory::SetSegmentation``, which clears the states when the
object changes), covers the shown frame until another frame is shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import slicer


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
    """The browser and volume sequence whose proxy ``volume_node`` is (with two frames or more), or None for a
    volume of its own."""
    scene = volume_node.GetScene() if volume_node is not None else None
    if scene is None:
        return None
    for number in range(scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode")):
        browser = scene.GetNthNodeByClass(number, "vtkMRMLSequenceBrowserNode")
        sequence = browser.GetSequenceNode(volume_node)
        if sequence is not None and sequence.GetNumberOfDataNodes() > 1:
            return Cine(browser, sequence, volume_node)
    return None


def segmentation_sequence(cine: Cine, segmentation_node, sequences_logic: "slicer.vtkSlicerSequencesLogic"
                          ) -> "slicer.vtkMRMLSequenceNode":
    """The segmentation Sequence whose proxy ``segmentation_node`` is in the cine's browser, with one item on every
    frame and its changes saved.

    A segmentation that is not one yet becomes one as Slicer's Sequences module makes it
    (``vtkSlicerSequencesLogic::AddSynchronizedNode(nullptr, proxy, browser)``: a new sequence with the master's
    index name and unit, the segmentation its proxy); each frame then starts with a copy of the segmentation as it
    is (what the browser itself adds when a frame without item is shown with "save changes" on). Refused
    (ValueError) when the segmentation is the proxy of a sequence in another browser.
    """
    browser = cine.browser
    sequence = browser.GetSequenceNode(segmentation_node)
    if sequence is None:
        scene = segmentation_node.GetScene()
        for number in range(scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode")):
            other = scene.GetNthNodeByClass(number, "vtkMRMLSequenceBrowserNode")
            if other is not browser and other.GetSequenceNode(segmentation_node) is not None:
                raise ValueError(f"The segmentation '{segmentation_node.GetName()}' is played by the sequence browser "
                                 f"'{other.GetName()}', not by '{browser.GetName()}' of the source volume: select "
                                 "another segmentation to segment through time.")
        sequence = sequences_logic.AddSynchronizedNode(None, segmentation_node, browser)
    browser.SetSaveChanges(sequence, True)
    for number in range(cine.num_frames):
        value = cine.index_value(number)
        if sequence.GetDataNodeAtValue(value, True) is None:
            sequence.SetDataNodeAtValue(segmentation_node, value)  # copied into the sequence
    sequences_logic.UpdateProxyNodesFromSequences(browser)  # the proxy shares the shown item's segmentation
    return sequence

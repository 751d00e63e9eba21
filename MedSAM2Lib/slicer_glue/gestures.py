"""What mouse and keys do in slice views while the MedSAM2 effect is active, as interactive-session actions
(:mod:`MedSAM2Lib.slicer_glue.interactive`). No Qt and no torch: the effect uses it before PyTorch exists.

- drag: a box (drawn by the box tool); on release, the action "box" on its slice;
- click (press and release without dragging): an object point, or a background point when the options'
  background toggle is on; Shift+click: a background point;
- Ctrl+click on a point of the viewed slice: removes it; Backspace: removes the last point;
- Esc, double-click, corner drags: as the box tool says (Esc during a run cancels it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

from .box import CORNER_GRAB_PIXELS, BoxEvent, BoxTool


@dataclass(frozen=True)
class Gesture:
    """What the effect does after an event: the box tool's answer, and a session action to run, if any."""

    box_event: BoxEvent
    action: Optional[str] = None  # an InteractiveSegmenter action: "box", "points", "remove_point", ...
    arguments: tuple = ()


class ViewGestures:
    """Turns slice-view events into session actions; the box itself is the box tool's."""

    def __init__(self, box_tool: Optional[BoxTool] = None) -> None:
        self.box_tool = box_tool or BoxTool()

    def handle(self, event: str, slice_node, xy: Sequence[float], shift: bool = False, control: bool = False,
               alt: bool = False, running: bool = False, background: bool = False, tolerance_mm: float = 0.5,
               segmenter=None, editor=None) -> Gesture:
        """event: "press", "move", "release" (left button), "double_click", "escape", "backspace".

        segmenter, editor: the InteractiveSegmenter and EditorAccess, once they exist (they find the points
        to remove); None before MedSAM2 is set up, when there are no sessions yet.
        """
        sessions = segmenter is not None and editor is not None
        if running and event in ("press", "backspace"):
            return Gesture(BoxEvent(False))
        if event == "backspace":
            session = segmenter.session_of(editor) if sessions else None
            if session is None or not session.point_order:
                return Gesture(BoxEvent(False))
            return Gesture(BoxEvent(True), "remove_last_point")
        if event == "press" and control and not (shift or alt):
            near = segmenter.point_near(editor, slice_node, xy, CORNER_GRAB_PIXELS) if sessions else None
            return Gesture(BoxEvent(True), "remove_point", near) if near is not None else Gesture(BoxEvent(False))
        if event == "press" and shift and not (control or alt):
            return Gesture(BoxEvent(True), "points", (slice_node, [(tuple(xy[:2]), 0)]))
        box_event = self.box_tool.handle(event, slice_node, xy, shift or control or alt, running, tolerance_mm)
        if event != "release" or not box_event.consumed:
            return Gesture(box_event)
        box = self.box_tool.box
        if box is None:  # released without dragging: a click
            return Gesture(BoxEvent(True, changed=True), "points",
                           (slice_node, [(tuple(xy[:2]), 0 if background else 1)]))
        return Gesture(replace(box_event, status="Box drawn: segmenting its slice..."), "box",
                       (slice_node, box.xyz_corners()))

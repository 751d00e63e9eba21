"""What mouse and keys do in slice views while the MedSAM2 effect is active, as interactive-session actions
(:mod:`MedSAM2Lib.slicer_glue.interactive`). No Qt and no torch: the effect uses it before PyTorch exists.

- drag: a box (drawn by the box tool); on release, the action "box" on its slice;
- click (press and release without dragging): an object point, or a background point when the options'
  background toggle is on; Shift+click: a background point; the box stays drawn;
- Ctrl+click (Cmd+click on macOS: Qt's ControlModifier, which VTK's Qt adapter reports as the control key, is
  the Command key there) on a point of the viewed slice: removes it;
- Backspace or Delete (the Mac "delete" key is Backspace): removes the last point; with none left, clears the box;
- double-click, corner drags: as the box tool says.

Esc is not here: the Segment Editor widget installs it as a shortcut that deactivates the active effect
(qMRMLSegmentEditorWidget::installKeyboardShortcuts), so the effect never receives it; deactivating cancels a
run. While a run goes on, presses and keys are left to the view.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

from .box import CORNER_GRAB_PIXELS, BoxEvent, BoxTool

POINT_COLOURS = {1: (0, 220, 0), 0: (230, 40, 40)}  # object (green), background (red), in the views of both front ends


def set_point_glyphs(polydata, points) -> None:
    """Fill ``polydata``, the input of a 2D glyph actor, with ``points`` (x, y, label) in a view's XY, each coloured
    by its label (the desktop effect and the web page draw points alike)."""
    from vtkmodules.vtkCommonCore import vtkPoints, vtkUnsignedCharArray

    coordinates, colours = vtkPoints(), vtkUnsignedCharArray()
    colours.SetNumberOfComponents(3)
    for x, y, label in points:
        coordinates.InsertNextPoint(x, y, 0.0)
        colours.InsertNextTuple3(*POINT_COLOURS[label])
    polydata.SetPoints(coordinates)
    polydata.GetPointData().SetScalars(colours)
    polydata.Modified()

def point_glyph_mapper(polydata):
    """A 2D mapper drawing each point of ``polydata`` (filled by :func:`set_point_glyphs`) as a filled dot in its
    label's colour, for the points actor of both front ends.

    vtkGlyph2D hands the points' colours on as an unnamed array of its output that is not the active scalars
    (VTK 9.6), so the mapper is pointed at that array: on the active scalars it found none and drew every point in
    the actor's colour, white."""
    from vtkmodules.vtkFiltersCore import vtkGlyph2D
    from vtkmodules.vtkFiltersSources import vtkGlyphSource2D
    from vtkmodules.vtkRenderingCore import vtkPolyDataMapper2D

    glyph = vtkGlyphSource2D()
    glyph.SetGlyphTypeToCircle()
    glyph.FilledOn()
    glyph.SetScale(10)
    glyphs = vtkGlyph2D()
    glyphs.SetInputData(polydata)
    glyphs.SetSourceConnection(glyph.GetOutputPort())
    glyphs.SetScaleModeToDataScalingOff()
    glyphs.SetColorModeToColorByScalar()
    mapper = vtkPolyDataMapper2D()
    mapper.SetInputConnection(glyphs.GetOutputPort())
    mapper.SetScalarModeToUsePointFieldData()
    mapper.ColorByArrayComponent(0, 0)  # the glyphs' colours, the only array of their output (all 3 components)
    mapper.SetColorModeToDirectScalars()  # the points' RGB values, not a lookup table
    return mapper


# VTK key symbols (vtkRenderWindowInteractor::GetKeySym) of the keys the effect handles -> gesture events. The
# Segment Editor passes a slice view's KeyPressEvent to the active effect (qMRMLSegmentEditorWidget observes the
# interactor's KeyPressEvent) and installs no shortcut on these keys; Slicer's own views use the same key
# symbols (vtkSlicerMarkupsWidget: "BackSpace" and "Delete" delete a control point). Delete does what Backspace does.
KEY_EVENTS = {"BackSpace": "backspace", "Delete": "backspace"}


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
        """event: "press", "move", "release" (left button), "double_click", "backspace" (:data:`KEY_EVENTS`).

        segmenter, editor: the InteractiveSegmenter and EditorAccess, once they exist (they find the points
        to remove); None before MedSAM2 is set up, when there are no sessions yet.
        """
        sessions = segmenter is not None and editor is not None
        if running and event in ("press", "backspace"):
            return Gesture(BoxEvent(False))
        if event == "backspace":
            session = segmenter.session_of(editor) if sessions else None
            if session is not None and session.point_order:
                return Gesture(BoxEvent(True), "remove_last_point")
            if self.box_tool.box is not None:
                self.box_tool.box = None
                return Gesture(BoxEvent(True, changed=True, status="Box cleared."))
            return Gesture(BoxEvent(False))
        if event == "press" and control and not (shift or alt):
            near = segmenter.point_near(editor, slice_node, xy, CORNER_GRAB_PIXELS) if sessions else None
            return Gesture(BoxEvent(True), "remove_point", near) if near is not None else Gesture(BoxEvent(False))
        if event == "press" and shift and not (control or alt):
            return Gesture(BoxEvent(True), "points", (slice_node, [(tuple(xy[:2]), 0)]))
        box_event = self.box_tool.handle(event, slice_node, xy, shift or control or alt, running, tolerance_mm)
        if event != "release" or not box_event.consumed:
            return Gesture(box_event)
        if box_event.clicked:
            return Gesture(box_event, "points", (slice_node, [(tuple(xy[:2]), 0 if background else 1)]))
        return Gesture(replace(box_event, status=f"{box_event.status} Segmenting its slice..."), "box",
                       (slice_node, self.box_tool.box.xyz_corners()))

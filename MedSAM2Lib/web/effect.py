"""The MedSAM2 tool as a trame-slicer segmentation effect: each slice view gets a pipeline that hands mouse and key
events to :class:`~MedSAM2Lib.web.tool.WebTool` and draws the box (as ``BoxTool`` outlines it) and the session's
points of the slice shown, like the desktop effect's BoxActor and PointsActor.

trame-slicer replays the browser's pointer events into each view's VTK interactor; Slicer's layered displayable
manager asks the active pipelines whether they process an event (``CanProcessInteractionEvent``) and lets the one
that does consume it (``ProcessInteractionEvent`` returning True), so a box drag is not also a window/level drag.
Event positions are the view's display pixels (origin bottom left): the slice node's XY, as in the desktop.
"""

from __future__ import annotations

from typing import Optional

from slicer import vtkMRMLInteractionEventData, vtkMRMLSliceNode
from trame_slicer.segmentation import SegmentationEffect, SegmentationEffectPipeline
from vtkmodules.vtkCommonCore import vtkCommand, vtkPoints
from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData
from vtkmodules.vtkRenderingCore import vtkActor2D, vtkPolyDataMapper2D

from ..slicer_glue.gestures import KEY_EVENTS as GESTURE_KEYS, point_glyph_mapper, set_point_glyphs
from .tool import WebTool

MOUSE_EVENTS = {int(vtkCommand.LeftButtonPressEvent): "press", int(vtkCommand.MouseMoveEvent): "move",
                int(vtkCommand.LeftButtonReleaseEvent): "release",
                int(vtkCommand.LeftButtonDoubleClickEvent): "double_click"}
KEY_EVENTS = {**GESTURE_KEYS, "Escape": "escape"}  # the desktop effect's keys, and Esc, which the page owns
# vtkEvent modifier bits (vtkEvent::ShiftModifier, ControlModifier, AltModifier)
SHIFT, CONTROL, ALT = 1, 2, 4


class MedSAM2Effect(SegmentationEffect):
    """Registered with trame-slicer's SegmentationEditor, which creates it without arguments; ``tool`` is set
    right after."""

    def __init__(self) -> None:
        super().__init__()
        self.tool: Optional[WebTool] = None

    def _create_pipeline(self, view_node, _parameter) -> Optional["MedSAM2Pipeline"]:
        return MedSAM2Pipeline() if isinstance(view_node, vtkMRMLSliceNode) else None

    def redraw(self) -> None:
        """Show the box and points in every slice view (after an event or an action)."""
        for reference in self.pipelines:
            pipeline = reference()
            if pipeline is not None:
                pipeline.draw()


class MedSAM2Pipeline(SegmentationEffectPipeline[MedSAM2Effect]):
    def __init__(self) -> None:
        super().__init__()
        self.box = _Overlay.lines((1.0, 1.0, 0.0))
        self.points = _Overlay.dots()

    def OnRendererAdded(self, renderer) -> None:
        for overlay in (self.box, self.points):
            renderer.AddViewProp(overlay.actor)

    def OnRendererRemoved(self, renderer) -> None:
        for overlay in (self.box, self.points):
            renderer.RemoveViewProp(overlay.actor)

    def GetRenderOrder(self) -> int:
        return 10  # above the slice layers

    def CanProcessInteractionEvent(self, event_data: vtkMRMLInteractionEventData):
        return bool(self.IsActive()) and self._event(event_data) is not None, 0.0

    def ProcessInteractionEvent(self, event_data: vtkMRMLInteractionEventData) -> bool:
        tool, event = self._effect.tool, self._event(event_data)
        if tool is None or event is None:
            return False
        modifiers = event_data.GetModifiers()
        answer = tool.view_event(event, self.GetViewNode(), event_data.GetDisplayPosition(),
                                 shift=bool(modifiers & SHIFT), control=bool(modifiers & CONTROL),
                                 alt=bool(modifiers & ALT))
        if answer.changed:
            self._effect.redraw()
        return answer.consumed

    def draw(self) -> None:
        tool, slice_node = self._effect.tool, self.GetViewNode()
        if tool is None or slice_node is None:
            return
        box = tool.gestures.box_tool.box
        if box is not None and box.slice_node is slice_node:
            display, segments = box.outline(tool.tolerance_mm(slice_node))
            self.box.show_segments(segments, display.opacity)
        else:
            self.box.hide()
        if not tool.busy:  # the run's worker may be reading the editor's source image: points wait for it
            self.points.show_points(tool.points_in_view(slice_node))
        self.RequestRender()

    def _event(self, event_data) -> Optional[str]:
        kind = event_data.GetType()
        if kind == vtkCommand.KeyPressEvent:
            return KEY_EVENTS.get(event_data.GetKeySym())
        return MOUSE_EVENTS.get(kind)


class _Overlay:
    """A 2D actor in view XY: line segments (the box) or filled dots coloured per point (the points)."""

    def __init__(self, source, actor: vtkActor2D) -> None:
        self.polydata, self.actor = source, actor

    @classmethod
    def lines(cls, colour) -> "_Overlay":
        polydata = vtkPolyData()
        mapper = vtkPolyDataMapper2D()
        mapper.SetInputData(polydata)
        actor = vtkActor2D()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*colour)
        actor.GetProperty().SetLineWidth(2)
        actor.SetVisibility(False)
        return cls(polydata, actor)

    @classmethod
    def dots(cls) -> "_Overlay":
        polydata = vtkPolyData()
        actor = vtkActor2D()
        actor.SetMapper(point_glyph_mapper(polydata))
        return cls(polydata, actor)

    def show_segments(self, segments, opacity: float) -> None:
        points, lines = vtkPoints(), vtkCellArray()
        for start, end in segments:
            lines.InsertNextCell(2, [points.InsertNextPoint(start[0], start[1], 0.0),
                                     points.InsertNextPoint(end[0], end[1], 0.0)])
        self.polydata.SetPoints(points)
        self.polydata.SetLines(lines)
        self.actor.GetProperty().SetOpacity(opacity)
        self.actor.SetVisibility(True)

    def show_points(self, points) -> None:
        """points: (x, y, label) in view XY."""
        set_point_glyphs(self.polydata, points)

    def hide(self) -> None:
        self.actor.SetVisibility(False)

"""``medsam2 web``'s options, segments list, points and 3D view on the server side, without a browser: the command's
app on slicer-core and the tiny model, its tool driven with the view events and calls the page's controls make
(Testing/test_web_browser.py clicks the controls themselves)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("trame_slicer", reason="the web front end's extra is not installed: pip install -e '.[web]'")

import torch  # noqa: E402
from vtkmodules.vtkIOImage import vtkPNGWriter  # noqa: F401,E402 (the rendering modules below need an IO factory)
from vtkmodules.vtkRenderingCore import vtkWindowToImageFilter  # noqa: E402
from vtkmodules.util.numpy_support import vtk_to_numpy  # noqa: E402

from MedSAM2Lib.inference.predictor import VolumePredictor  # noqa: E402
from MedSAM2Lib.inference.preprocessing import Windowing  # noqa: E402
from MedSAM2Lib.inference.session import Session  # noqa: E402
from MedSAM2Lib.inference.session_file import run_steps  # noqa: E402
from MedSAM2Lib.slicer_glue.effect import post_processing  # noqa: E402
from MedSAM2Lib.slicer_glue.gestures import POINT_COLOURS  # noqa: E402
from MedSAM2Lib.slicer_glue.scenario import segment_array, set_segment_array  # noqa: E402
from MedSAM2Lib.web.app import MedSAM2WebApp  # noqa: E402

from web_support import volume_file, web_app  # noqa: E402

# The box and a point, as fractions of the axial view's width and height from its bottom left (the bright structure).
BOX = ((0.40, 0.67), (0.72, 0.43))
# Another box: a press within a few pixels of a box's corner on its slice drags that corner instead of drawing anew.
OTHER_BOX = ((0.34, 0.73), (0.70, 0.45))
POINT = (0.50, 0.55)
KEY = 5  # the slice the axial view shows of the 11-slice volume
SURFACE = "Closed surface"


class Tool:
    """The app's tool as the views and controls drive it."""

    def __init__(self, app: MedSAM2WebApp) -> None:
        self.app, self.tool = app, app.tool
        self.view = app.slicer.view_manager.get_slice_views()[0]
        self.slice_node = self.view.get_view_node()
        app._fit(self.view)  # as when the page lays the view out
        self.width, self.height = self.view.render_window().GetSize()

    def xy(self, fraction):
        return fraction[0] * self.width, fraction[1] * self.height

    async def box(self, corners=BOX) -> str:
        for event, corner in (("press", corners[0]), ("move", corners[1]), ("release", corners[1])):
            self.tool.view_event(event, self.slice_node, self.xy(corner))
        return await self.done()

    async def click(self, fraction=POINT, shift: bool = False) -> str:
        for event in ("press", "release"):
            self.tool.view_event(event, self.slice_node, self.xy(fraction), shift=shift)
        return await self.done()

    async def propagate(self) -> str:
        self.tool.propagate()
        return await self.done()

    async def done(self) -> str:
        assert self.tool.task is not None, self.tool.message
        await self.tool.task
        return self.tool.message

    def segment(self, segment_id=None) -> np.ndarray:
        """A segment (default: the selected one) as (K, J, I) 0/1 on the volume's grid."""
        return segment_array(self.app.segmentation_node, segment_id or self.tool.editor.selected_segment_id(),
                             self.app.volume_node)

    def segment_shape(self):
        return self.app.volume_node.GetImageData().GetDimensions()[::-1]

    def sessions(self) -> int:
        return len(self.tool.segmenter.sessions)


def run(tmp_path: Path, scenario, **app_options) -> None:
    """The app on the 11-slice volume (made inside the loop, as trame-slicer needs), then ``scenario(Tool)``."""

    async def main() -> None:
        with web_app(volume_file(tmp_path, "short"), tmp_path, **app_options) as app:
            await scenario(Tool(app))

    asyncio.run(main())


def written_slices(mask: np.ndarray) -> list:
    return [int(index) for index in np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1))]


def test_direction_and_range_options_limit_propagation(tmp_path):
    async def scenario(page: Tool) -> None:
        tool = page.tool
        tool.set_early_stop(None)  # every slice the options allow
        tool.set_option("NewSegmentPerBox", True)  # one segment per option tried
        tool.set_option("Direction", "forward")
        await page.box()
        message = await page.propagate()
        assert message.startswith(f"Propagated: {11 - KEY} slice(s)"), message
        assert written_slices(page.segment()) == list(range(KEY, 11))

        tool.set_option("Direction", "both")
        tool.set_option("RangeEnabled", True)
        tool.set_option("RangeFirst", 3)
        tool.set_option("RangeLast", 7)
        await page.box(OTHER_BOX)
        await page.propagate()
        assert written_slices(page.segment()) == [3, 4, 5, 6, 7]

        tool.set_option("RangeLast", "7.5")
        assert "not one; unchanged" in tool.message and tool.option("RangeLast") == "7"

    run(tmp_path, scenario)


def library_mask(state, fill_holes: bool, keep_largest_component: bool) -> np.ndarray:
    """The library's own result of a segment session's steps on its stack (a Session on a VolumePredictor with this
    post-processing, tracking to the end), as (K, J, I) on the volume's grid."""
    predictor = state.session.predictor
    library = VolumePredictor(predictor.model, fill_holes=fill_holes, keep_largest_component=keep_largest_component,
                              precision="float32", early_stop=None)
    session = Session(library, state.session.volume, early_stop=None)
    run_steps(session, state.session.steps)
    return state.geometry.from_stack(session.mask())


def test_fill_holes_and_largest_component_options_reach_the_next_action(tmp_path):
    """Off, the page's segment is the library's result without that post-processing (which differs from the
    default's on this volume), as the desktop effect's parameters make it; on again, the next action applies it."""

    async def scenario(page: Tool) -> None:
        tool = page.tool
        tool.set_early_stop(None)
        assert tool.option("FillHoles") == tool.option("LargestComponent") == "1"  # the command line's defaults
        tool.set_option("FillHoles", False)
        tool.set_option("LargestComponent", False)
        await page.box()
        await page.propagate()
        state = tool.segmenter.session_of(tool.editor)
        unprocessed = library_mask(state, fill_holes=False, keep_largest_component=False)
        np.testing.assert_array_equal(page.segment(), unprocessed)
        for fill_holes, keep_largest_component in ((True, False), (False, True)):  # each option changes it here
            assert not np.array_equal(library_mask(state, fill_holes, keep_largest_component), unprocessed)

        tool.set_option("FillHoles", True)
        tool.set_option("LargestComponent", True)
        await page.click(shift=True)
        await page.propagate()
        np.testing.assert_array_equal(page.segment(), library_mask(state, True, True))

    run(tmp_path, scenario)


def test_add_keeps_the_segments_earlier_content_replace_overwrites_it(tmp_path):
    async def scenario(page: Tool) -> None:
        tool, app = page.tool, page.app
        earlier = np.zeros(page.segment_shape(), np.uint8)
        earlier[:, :40, :40] = 1  # a corner far from the box, on every slice
        tool.set_early_stop(None)
        results = {}
        for mode in ("replace", "add"):  # the same box on each segment (the box goes with the selection)
            tool.add_segment()
            segment_id = tool.editor.selected_segment_id()
            set_segment_array(app.segmentation_node, segment_id, earlier, app.volume_node)
            tool.set_option("WriteMode", mode)
            await page.box(BOX)
            await page.propagate()
            results[mode] = page.segment(segment_id)
        replaced, added = results["replace"], results["add"]
        assert replaced.any() and (earlier & (1 - replaced)).any()  # Replace dropped the earlier content
        np.testing.assert_array_equal(added, replaced | earlier)

    run(tmp_path, scenario)


def test_new_segment_per_box(tmp_path):
    async def scenario(page: Tool) -> None:
        tool = page.tool
        await page.box(BOX)
        await page.box(OTHER_BOX)  # the same segment's session: its box replaced
        assert len(tool.segments()) == 1 and page.sessions() == 1
        first = tool.editor.selected_segment_id()
        tool.set_option("NewSegmentPerBox", True)
        await page.box(BOX)
        rows = tool.segments()
        assert len(rows) == 2 and page.sessions() == 2
        assert tool.editor.selected_segment_id() == rows[1].id != first
        assert tool.gestures.box_tool.box is not None  # the prompt of the segment its write created and selected
        tool.select_segment(first)
        assert tool.gestures.box_tool.box is None  # another segment selected: the box was the new one's prompt
        assert page.segment(first)[KEY].any() and page.segment(rows[1].id)[KEY].any()

    run(tmp_path, scenario)


def test_intensities_option_is_the_window_a_session_starts_with(tmp_path):
    async def scenario(page: Tool) -> None:
        tool = page.tool
        await page.box()
        display = tool.segmenter.session_of(tool.editor).windowing
        assert display.name == "window"  # the default: the display window at the first box
        tool.set_option("Windowing", "none")
        message = await page.click()
        assert message.startswith("The intensity windowing changed in the effect's options"), message
        message = await page.box(OTHER_BOX)
        assert "was made with the intensity window" in message and "Click Reset" in message
        assert tool.state().reset_enabled
        tool.reset()
        assert tool.message.startswith("The selected segment's MedSAM2 session was reset")
        assert not tool.state().reset_enabled and tool.gestures.box_tool.box is None
        await page.box(OTHER_BOX)  # a new session, on the option's window
        assert tool.segmenter.session_of(tool.editor).windowing == Windowing.parse("none") != display

    run(tmp_path, scenario)


def test_early_stop_option_reaches_the_next_propagation(tmp_path, checkpoints):
    """The tiny checkpoint whose object score says the object is absent everywhere: early stop ends each direction
    after that many slices; off, every slice is tracked."""

    async def scenario(page: Tool) -> None:
        tool = page.tool
        tool.set_early_stop(2)
        assert tool.message.startswith("Early stop: each direction ends after 2 slice(s)")
        await page.box()
        stopped = await page.propagate()
        assert "stopped" in stopped, stopped
        tool.set_early_stop(None)
        assert tool.message.startswith("Early stop off")
        await page.click()  # a prompt on the keyframe: the next Update walks both directions again
        message = await page.propagate()
        assert message.startswith("Propagated: 11 slice(s)") and "stopped" not in message, message
        tool.set_early_stop(0)
        assert tool.message.startswith("Early stop unchanged: Early stop needs at least one slice")
        tool.set_early_stop("2.5")  # what the page's field holds when it is not a whole number
        assert tool.message == "Early stop unchanged: '2.5' is not a whole number of slices."
        assert tool.model.settings.early_stop() is None

    run(tmp_path, scenario, checkpoint=checkpoints["tiny_absent"])


def test_precision_change_computes_on_a_bfloat16_copy_of_the_loaded_model(tmp_path):
    async def scenario(page: Tool) -> None:
        tool = page.tool
        model = tool.model
        loaded = model.models.model(model.choice())
        float_logic = tool.segmenter.logic
        assert float_logic.predictor.dtype == torch.float32
        await page.box()
        tool.set_precision("float16")
        assert tool.message.startswith("Unknown precision 'float16'") and model.settings.precision() == "float32"
        tool.set_precision("bfloat16")
        assert "the next action computes in bfloat16" in tool.message
        assert tool.segmenter.logic is float_logic  # nothing is rebuilt before the next action
        message = await page.click()
        assert tool.segmenter.logic.predictor.dtype == torch.bfloat16
        assert model.models.model(model.choice()) is loaded  # the model is not loaded again
        assert message.startswith("Restored the segment's saved MedSAM2 session") and "replayed in bfloat16" in message
        tool.set_precision("float32")
        await page.click(shift=True)
        assert tool.segmenter.logic.predictor.dtype == torch.float32

    run(tmp_path, scenario)


def test_segments_list_add_select_remove_and_undo(tmp_path):
    async def scenario(page: Tool) -> None:
        tool, app = page.tool, page.app
        await page.box()
        first = tool.editor.selected_segment_id()
        tool.add_segment()
        rows = tool.segments()
        second = rows[1].id
        assert [row.id for row in rows] == [first, second] and tool.editor.selected_segment_id() == second
        assert all(row.colour.startswith("#") and len(row.colour) == 7 for row in rows)
        assert app.server.state.medsam2_segments == [{"id": row.id, "name": row.name, "colour": row.colour}
                                                     for row in rows]
        assert app.server.state.medsam2_selected_segment == second
        assert tool.gestures.box_tool.box is None  # the first segment's box is not the new segment's prompt

        await page.box()  # the tool edits the selected segment: its own session
        assert page.segment(second)[KEY].any() and page.sessions() == 2
        first_before = page.segment(first)
        tool.select_segment(first)
        assert tool.editor.selected_segment_id() == first
        await page.click(shift=True)  # a correction of the first segment's session
        assert not np.array_equal(page.segment(first), first_before)

        tool.select_segment(second)
        tool.remove_segment()
        assert [row.id for row in tool.segments()] == [first] and page.sessions() == 1
        tool.undo()
        assert [row.id for row in tool.segments()] == [first, second]
        tool.select_segment(second)
        message = await page.click()
        assert message.startswith("Restored the segment's saved MedSAM2 session"), message
        tool.select_segment("no such segment")
        assert tool.message == "That segment no longer exists." and tool.editor.selected_segment_id() == second

    run(tmp_path, scenario)


def test_page_controls_reach_the_tool(tmp_path):
    """The panel's state names, as the browser changes them, end where the desktop effect and module keep them."""

    async def scenario(page: Tool) -> None:
        tool, state = page.tool, page.app.server.state
        state.ready()  # as when the server starts: the state is sent and its listeners called
        assert state.medsam2_direction == "both" and state.medsam2_precision == "float32"
        assert state.medsam2_fill_holes and state.medsam2_largest_component
        with state:
            state.medsam2_direction = "backward"
            state.medsam2_write_mode = "add"
            state.medsam2_new_segment_per_box = True
            state.medsam2_range_on = True
            state.medsam2_range_first = "2"
            state.medsam2_early_stop_slices = "3"
            state.medsam2_precision = "bfloat16"
            state.medsam2_windowing = "lung"
            state.medsam2_fill_holes = False
            state.medsam2_largest_component = False
        assert [tool.option(name) for name in ("Direction", "WriteMode", "NewSegmentPerBox", "RangeEnabled",
                                               "RangeFirst", "Windowing", "FillHoles", "LargestComponent")
                ] == ["backward", "add", "1", "1", "2", "lung", "0", "0"]
        assert post_processing(tool.editor_node) == (False, False)  # what the next action hands the logic
        assert tool.model.settings.early_stop() == 3 and tool.model.settings.precision() == "bfloat16"
        with state:
            state.medsam2_early_stop_on = False
        assert tool.model.settings.early_stop() is None

    run(tmp_path, scenario)


def test_command_line_post_processing_is_where_the_page_options_start(tmp_path):
    """``medsam2 web --no-fill-holes --all-components``: the page's checkboxes start off, as the effect's
    parameters."""

    async def scenario(page: Tool) -> None:
        state = page.app.server.state
        assert (page.tool.option("FillHoles"), page.tool.option("LargestComponent")) == ("0", "0")
        assert not state.medsam2_fill_holes and not state.medsam2_largest_component
        predictor = page.tool.segmenter.logic.predictor
        assert not predictor.fill_holes and not predictor.keep_largest_component

    run(tmp_path, scenario, options=("--precision", "float32", "--no-fill-holes", "--all-components"))


def test_points_are_drawn_in_their_label_colour(tmp_path):
    """Rendered in the axial view: a background point red, an object point green (gestures.POINT_COLOURS)."""

    async def scenario(page: Tool) -> None:
        await page.box()
        await page.click(POINT, shift=True)
        object_point = (0.60, 0.52)
        await page.click(object_point)
        render_window = page.view.render_window()
        render_window.Render()
        capture = vtkWindowToImageFilter()
        capture.SetInput(render_window)
        capture.ReadFrontBufferOff()
        capture.Update()
        image = capture.GetOutput()
        width, height, _ = image.GetDimensions()
        pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[..., :3]
        for fraction, label in ((POINT, 0), (object_point, 1)):
            x, y = (round(value) for value in page.xy(fraction))
            np.testing.assert_array_equal(pixels[y, x], POINT_COLOURS[label])

    run(tmp_path, scenario)


def test_3d_view_shows_the_segment_after_a_propagation_only(tmp_path):
    async def scenario(page: Tool) -> None:
        segmentation = page.app.segmentation_node.GetSegmentation()
        await page.box()
        assert not segmentation.ContainsRepresentation(SURFACE)  # a preview converts nothing
        await page.propagate()
        segment_id = page.tool.editor.selected_segment_id()
        assert segmentation.GetSegment(segment_id).GetRepresentation(SURFACE).GetNumberOfPoints() > 0
        display = page.app.segmentation_node.GetDisplayNode()
        assert display.GetVisibility3D() and display.GetDisplayRepresentationName3D() == SURFACE
        await page.click(shift=True)  # a correction, not propagated: the surface is dropped before the write
        assert not segmentation.ContainsRepresentation(SURFACE)
        await page.propagate()
        assert segmentation.ContainsRepresentation(SURFACE)

    run(tmp_path, scenario)


def test_save_never_replaces_the_image_it_segments(tmp_path):
    """medsam2 web CT.nii.gz, Save writing into the image's own folder (--out's default is the current folder):
    the label map would be CT.nii.gz, the image itself. Refused with a sentence, the image untouched; the
    .seg.nrrd beside it is written."""
    import SimpleITK as sitk

    image = tmp_path / "lesion.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(volume_file(tmp_path, "short"))), str(image))
    before = image.read_bytes()

    async def main() -> None:
        with web_app(image, tmp_path) as app:
            page = Tool(app)
            await page.box(BOX)
            page.app._save("nii.gz")
            assert page.tool.message == (
                f"Cannot write the .nii.gz file to {image}: that is the image open, which it would replace; start "
                "medsam2 web with another --out folder.")
            assert image.read_bytes() == before
            page.app._save("seg.nrrd")
            assert page.tool.message == f"Saved {tmp_path / 'lesion.seg.nrrd'}."
            assert (tmp_path / "lesion.seg.nrrd").is_file()

    asyncio.run(main())


def test_close_ends_the_sessions_and_takes_the_scene_apart(tmp_path):
    """What the command does when it stops serving (and each test when it ends): no session, no image features,
    no background encoding left, the scene emptied and the editor logic detached from it; closing twice is
    harmless."""
    async def scenario(page: Tool) -> None:
        await page.box(BOX)
        logic = page.tool.segmenter.logic
        assert page.sessions() == 1 and logic.feature_bytes() > 0
        page.app.close()
        assert page.sessions() == 0 and logic.feature_bytes() == 0 and logic.pre_encoder.idle
        assert page.app.slicer.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0
        assert page.tool.editor_logic.GetMRMLScene() is None
        page.app.close()

    run(tmp_path, scenario)

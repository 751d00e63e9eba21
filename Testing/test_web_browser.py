"""``medsam2 web`` end to end in a real browser: Debian's chromium driven by playwright, real mouse events on the
streamed views, the tiny fixture model; results checked on the server side against the library.

The server is the command's own app (web_support.web_app: arguments parsed by ``medsam2``'s parser, the app
built by ``prepare_web`` as ``medsam2 web`` builds it), started in this process so that the test can read its
scene between browser actions (the browser and the server share one event loop: nothing else touches the scene
meanwhile).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pytest.importorskip("trame_slicer", reason="the web front end's extra is not installed: pip install -e '.[web]'")
async_api = pytest.importorskip("playwright.async_api", reason="playwright is not installed: pip install -e '.[test]'")
CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")

import slicer  # noqa: E402
import vtk  # noqa: E402

from MedSAM2Lib.inference.predictor import FeatureCache  # noqa: E402
from MedSAM2Lib.inference.preprocessing import Windowing  # noqa: E402
from MedSAM2Lib.inference.session import Session  # noqa: E402
from MedSAM2Lib.inference.session_file import run_steps  # noqa: E402
from MedSAM2Lib.slicer_glue.geometry import StackGeometry  # noqa: E402
from MedSAM2Lib.slicer_glue.logic import matrix_to_array  # noqa: E402
from MedSAM2Lib.slicer_glue.scenario import segment_array  # noqa: E402
from MedSAM2Lib.web.app import MedSAM2WebApp  # noqa: E402

from web_support import volume_file, web_app  # noqa: E402

BROWSER_ARGUMENTS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run"]
# The box and the background point, as fractions of the axial view's width and height (the bright structure).
BOX = ((0.40, 0.33), (0.72, 0.57))
BACKGROUND_POINT = (0.45, 0.36)


class Page:
    """The page in chromium, and the server-side app it shows."""

    def __init__(self, app: MedSAM2WebApp, page) -> None:
        self.app, self.page = app, page

    async def status(self) -> str:
        return await self.page.locator("#medsam2-status").inner_text()

    async def wait_for_status(self, start: str, timeout_s: float = 120) -> str:
        await self.page.wait_for_function(
            "start => document.querySelector('#medsam2-status').innerText.startsWith(start)", arg=start,
            timeout=timeout_s * 1000)
        return await self.status()

    async def axial_view(self) -> dict:
        """The axial view's image on the page (the layout's large view, first)."""
        boxes = [await image.bounding_box() for image in await self.page.locator("img").all()]
        largest = max(boxes, key=lambda box: box["width"] * box["height"])
        assert largest == boxes[0]
        return largest

    async def drag(self, view: dict, start, end) -> None:
        await self.page.mouse.move(*at(view, start))
        await self.page.mouse.down()
        await self.page.mouse.move(*at(view, end), steps=8)
        await self.page.mouse.up()

    async def shift_click(self, view: dict, where) -> None:
        await self.page.keyboard.down("Shift")
        await self.page.mouse.click(*at(view, where))
        await self.page.keyboard.up("Shift")

    def segment(self) -> np.ndarray:
        """The selected segment as a (K, J, I) 0/1 array on the volume's grid."""
        app = self.app
        segment_id = app.slicer.segmentation_editor.editor_node.GetSelectedSegmentID()
        return segment_array(app.segmentation_node, segment_id, app.volume_node)


def at(view: dict, fraction) -> tuple:
    return view["x"] + fraction[0] * view["width"], view["y"] + fraction[1] * view["height"]


async def open_page(volume_file: Path, out: Path, scenario, *options: str) -> None:
    """Serve the app, open it in chromium, run ``scenario(Page)``, stop both and close the app. The app is made
    inside the running loop: trame-slicer schedules each view's registration on the loop current when the view is
    created."""
    with web_app(volume_file, out, options=("--precision", "float32", *options)) as app:
        app.start(exec_mode="task")
        assert await app.server.ready
        async with async_api.async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGUMENTS)
            try:
                page = await browser.new_page(viewport={"width": 1400, "height": 900})
                page.set_default_timeout(120_000)  # a loaded machine renders and answers slowly
                await page.goto(f"http://127.0.0.1:{app.server.port}/")
                await page.wait_for_function(
                    "Array.from(document.querySelectorAll('img')).filter(image => image.naturalWidth > 0)"
                    ".length >= 3", timeout=60_000)
                await asyncio.sleep(1.0)  # the views are fitted once laid out (a resize event each)
                await scenario(Page(app, page))
            finally:
                await browser.close()
                await app.server.stop()


def view_to_stack(app: MedSAM2WebApp, view: dict, fraction) -> np.ndarray:
    """Where the page position falls in the volume, as (slice, row, column) of the axially stored volume: the
    browser's pixel -> the view's display pixel (origin bottom left) -> RAS (the slice node) -> IJK (the volume).
    Computed here, independently of the tool, to check the prompts the server received."""
    slice_view = app.slicer.view_manager.get_slice_views()[0]
    slice_node = slice_view.get_view_node()
    assert slice_node.GetOrientation() == "Axial"
    width, height = slice_view.render_window().GetSize()
    x = fraction[0] * width
    y = height - fraction[1] * height
    ras = matrix_to_array(slice_node.GetXYToRAS()) @ np.array([x, y, 0.0, 1.0])
    ras_to_ijk = vtk.vtkMatrix4x4()
    app.volume_node.GetRASToIJKMatrix(ras_to_ijk)
    i, j, k, _ = matrix_to_array(ras_to_ijk) @ ras
    return np.array([k, j, i])


def library_mask(app: MedSAM2WebApp, steps) -> np.ndarray:
    """What the library computes for these session steps on the volume under its display window: (K, J, I)."""
    display = app.volume_node.GetDisplayNode()
    half = display.GetWindow() / 2
    windowed = Windowing("window", (display.GetLevel() - half, display.GetLevel() + half)).apply(
        slicer.util.arrayFromVolume(app.volume_node))
    predictor = app.tool.segmenter.logic.predictor
    session = Session(predictor, windowed, FeatureCache(windowed), early_stop=predictor.early_stop)
    run_steps(session, steps)
    return session.mask()


def test_box_point_propagate_undo_redo_save_in_a_browser(tmp_path):
    out = tmp_path / "out"

    async def scenario(page: Page) -> None:
        app = page.app
        view = await page.axial_view()
        await page.drag(view, *BOX)
        message = await page.wait_for_status("Box on slice 5: segmented.")
        preview = page.segment()
        assert preview[5].any() and not np.delete(preview, 5, axis=0).any(), message

        await page.shift_click(view, BACKGROUND_POINT)
        await page.wait_for_status("Point on slice 5: added to its prompt")
        before_propagation = page.segment()

        await page.page.click("#medsam2-propagate")
        message = await page.wait_for_status("Propagated: ")
        assert (await page.page.locator("#medsam2-propagate").inner_text()).upper() == "UPDATE"
        propagated = page.segment()

        # The prompts the server received are where the mouse was (to a voxel), and the segment is exactly what
        # the library computes from them.
        state = app.tool.segmenter.session_of(app.tool.editor)
        assert state.geometry == StackGeometry(2, 1, 0, False, False)  # the axial stack is the volume as stored
        prompt = state.prompts[5]
        corners = np.array([view_to_stack(app, view, corner) for corner in BOX])
        np.testing.assert_allclose(corners[:, 0], 5.0, atol=1e-6)
        expected_box = [*corners[:, 2:0:-1].min(axis=0), *corners[:, 2:0:-1].max(axis=0)]
        np.testing.assert_allclose(prompt.box, expected_box, atol=1.0)
        np.testing.assert_allclose(prompt.points, [view_to_stack(app, view, BACKGROUND_POINT)[2:0:-1]], atol=1.0)
        assert prompt.labels == [0]
        steps = [{"slice": 5, "box": list(prompt.box)},
                 {"slice": 5, "points": [list(point) for point in prompt.points], "labels": [0], "add": True},
                 {"propagate": "both"}]
        expected = library_mask(app, steps)
        assert expected.any()
        assert np.count_nonzero(propagated != expected) == 0, message

        await page.page.screenshot(path=str(tmp_path / "medsam2-web.png"))

        await page.page.click("#medsam2-undo")
        await page.wait_for_status("Undone.")
        np.testing.assert_array_equal(page.segment(), before_propagation)
        await page.page.click("#medsam2-redo")
        await page.wait_for_status("Redone.")
        np.testing.assert_array_equal(page.segment(), propagated)

        await page.page.click("#medsam2-save-seg-nrrd")
        message = await page.wait_for_status("Saved ")
        saved = out / "lesion.seg.nrrd"
        assert saved.is_file(), message
        assert sorted(path.name for path in out.iterdir()) == ["lesion.seg.nrrd"]  # no temporary file left
        reloaded = app.slicer.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        storage = slicer.vtkMRMLSegmentationStorageNode()
        storage.SetFileName(str(saved))
        assert storage.ReadData(reloaded)
        segment_id = reloaded.GetSegmentation().GetNthSegmentID(0)
        np.testing.assert_array_equal(segment_array(reloaded, segment_id, app.volume_node), propagated)

        # The side panel: a segment added and listed, the first one selected again from the list, an option ticked.
        first = app.tool.editor.selected_segment_id()
        await page.page.click("#medsam2-add-segment")
        await page.wait_for_status("Segment 'Segment_1' added")
        assert await page.page.locator(".medsam2-segment").count() == 2
        assert app.tool.editor.selected_segment_id() not in (None, first)
        await page.page.locator(".medsam2-segment").first.click()
        await page.wait_for_status("Segment 'MedSAM2' selected")
        assert app.tool.editor.selected_segment_id() == first
        await page.page.get_by_label("New segment for each box").check()
        while app.tool.option("NewSegmentPerBox") != "1":  # the page's state reaches the server on its loop
            await asyncio.sleep(0.05)

    asyncio.run(open_page(volume_file(tmp_path, "short"), out, scenario))
    assert (tmp_path / "medsam2-web.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("MEDSAM2_WEB_SCREENSHOT"):  # how Resources/WebScreenshot.png was made
        shutil.copyfile(tmp_path / "medsam2-web.png", os.environ["MEDSAM2_WEB_SCREENSHOT"])


def test_cancel_during_propagation_writes_nothing(tmp_path):
    async def scenario(page: Page) -> None:
        app = page.app
        view = await page.axial_view()
        await page.drag(view, *BOX)
        await page.wait_for_status("Box on slice 11: segmented.")
        preview = page.segment()
        undo_before = app.tool.editor_logic.CanUndo()

        await page.page.click("#medsam2-propagate")
        while app.tool.progress[0] < 1:  # the server has computed a slice of the propagation (read on its loop)
            await asyncio.sleep(0.05)
        await page.page.click("#medsam2-cancel")
        message = await page.wait_for_status("Cancelled.")
        assert "The segmentation was not changed." in message
        assert not app.tool.segmenter.session_of(app.tool.editor).propagated
        np.testing.assert_array_equal(page.segment(), preview)
        assert (await page.page.locator("#medsam2-propagate").inner_text()).upper() == "PROPAGATE"
        assert app.tool.editor_logic.CanUndo() == undo_before
        await page.page.click("#medsam2-undo")  # the only undo step is the preview's, which created the segment
        await page.wait_for_status("Undone.")
        assert app.segmentation_node.GetSegmentation().GetNumberOfSegments() == 0

    asyncio.run(open_page(volume_file(tmp_path, "long"), tmp_path / "out", scenario))


def test_a_second_tab_is_told_and_cannot_edit(tmp_path):
    """trame-slicer serves one scene to every tab: the first tab owns the app, a second one is covered by a
    notice that takes its clicks (its views and buttons do nothing) until it takes the app over."""
    async def scenario(page: Page) -> None:
        first = page.page
        other_tab = "#medsam2-other-tab"
        second = await first.context.browser.new_page(viewport={"width": 1400, "height": 900})
        await second.goto(first.url)
        await second.wait_for_selector(other_tab)
        assert "open in another tab" in await second.locator("#medsam2-other-tab-text").inner_text()
        assert await first.locator(other_tab).count() == 0
        # The notice is what a click on the second tab's views or buttons reaches.
        view_image = second.locator("img").first
        await view_image.wait_for(state="visible")  # laid out once its first frame arrives
        view = await view_image.bounding_box()
        x, y = at(view, (0.5, 0.5))
        assert await second.evaluate(
            "([x, y]) => document.getElementById('medsam2-other-tab').contains(document.elementFromPoint(x, y))",
            [x, y])
        before = page.app.server.state.medsam2_owner
        await second.click("#medsam2-take-over")
        await first.wait_for_selector(other_tab)
        assert await second.locator(other_tab).count() == 0
        assert page.app.server.state.medsam2_owner not in ("", before)
        owner = page.app.server.state.medsam2_owner
        await second.close()  # its connection closes: the app is free, and the first tab claims it again
        await first.wait_for_function("!document.getElementById('medsam2-other-tab')")
        assert page.app.server.state.medsam2_owner not in ("", owner)

    asyncio.run(open_page(volume_file(tmp_path, "short"), tmp_path / "out", scenario))


def test_an_image_of_the_data_folder_is_chosen_in_the_page(tmp_path):
    """--data: the page lists the folder's images; an unreadable one gets a sentence and the image stays;
    choosing another replaces the scene's volume."""
    data = tmp_path / "data"
    data.mkdir()
    first = volume_file(data, "short")
    image = sitk.ReadImage(str(first))
    sitk.WriteImage(image[:, :128, :], str(data / "half.nii.gz"))  # another image: half the rows
    (data / "broken.nii.gz").write_bytes(b"not a NIfTI file")

    async def scenario(page: Page) -> None:
        await page.page.locator(".v-select").first.click()
        await page.page.get_by_role("option", name="broken.nii.gz").click()
        message = await page.wait_for_status("Cannot read ")
        assert "broken.nii.gz" in message and "Traceback" not in message
        assert page.app.volume_node.GetName() == "lesion"  # the image stays, and the list says so
        await page.page.wait_for_function(
            "document.querySelector('.v-select').innerText.includes('lesion.nrrd')")
        await page.page.locator(".v-select").first.click()
        await page.page.get_by_role("option", name="half.nii.gz").click()
        await page.wait_for_status("Opened half.nii.gz.")
        assert page.app.volume_node.GetName() == "half"
        assert page.app.volume_node.GetImageData().GetDimensions() == (256, 128, 11)
        assert "half.nii.gz" in await page.page.locator(".v-select").first.inner_text()

    asyncio.run(open_page(first, tmp_path / "out", scenario, "--data", str(data)))

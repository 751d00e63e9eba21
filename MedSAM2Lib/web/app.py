"""``medsam2 web``: a trame-slicer page with axial, coronal, sagittal and 3D views of one volume and the MedSAM2 tool.

Security defaults: the server binds 127.0.0.1; ``--host`` (any other interface) is refused unless ``--token`` is
given, and then the page connects only with that token (wslink's secret: the URL carries ``?secret=TOKEN``). Files
are read only from the image named on the command line or from the ``--data`` folder
(:mod:`~MedSAM2Lib.web.data_folder`), and written only into ``--out``. trame-slicer keeps one scene per server
process and every connected tab sees it: this is one user's app, and a second tab is told so
(:mod:`~MedSAM2Lib.web.single_tab`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np

if not os.environ.get("DISPLAY"):
    # A server without a screen renders offscreen through EGL (Mesa's llvmpipe without a GPU); VTK would first try X
    # and log "bad X server connection". Set before VTK creates a render window.
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

from trame.app import TrameApp
from trame.widgets import client, html
from trame_slicer.core import LayoutManager, SlicerApp
from trame_slicer.rca_view import register_rca_factories
from trame_vuetify.ui.vuetify3 import SinglePageWithDrawerLayout
from trame_vuetify.widgets import vuetify3 as v3
from vtkmodules.vtkCommonCore import vtkCommand

from ..inference.session_file import SessionDocument
from ..slicer_glue.box import rotate_views_to_grid
from .data_folder import DataFolder, DataFolderError, add_image
from .effect import MedSAM2Effect
from .model import ModelOptions, PageModel
from .options_panel import build_options_panel
from .session_opening import open_session
from .single_tab import TabGuard
from .tool import SAVE_FORMATS, WebTool

LOG = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1"
LAYOUT = "Axial Primary"  # the axial view large; 3D, coronal and sagittal beside it
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".npz")


@dataclass(frozen=True)
class WebOptions:
    image: Path
    out: Path  # where Save writes
    port: int = 8080
    host: str = LOOPBACK
    token: Optional[str] = None
    data: Optional[DataFolder] = None  # the folder whose images the page lists (image is one of them)
    session: Optional[SessionDocument] = None  # opened with the image as its segment (--prompts)


def check_exposure(host: Optional[str], token: Optional[str]) -> str:
    """The interface to bind: 127.0.0.1 unless ``host`` is given, which requires a token (ValueError otherwise)."""
    if host is None:
        return LOOPBACK
    if not token:
        raise ValueError(f"--host {host} would let anyone who can reach this machine use the app and its files: "
                         "give --token SECRET as well (the page then needs ?secret=SECRET), or leave --host out to "
                         "serve on 127.0.0.1 only.")
    return host


class MedSAM2WebApp(TrameApp):
    """The page and its scene. ``model``: the model and how it computes (loaded before the page opens)."""

    def __init__(self, options: WebOptions, model: ModelOptions, server=None) -> None:
        super().__init__(server)
        self.options = options
        self.slicer = SlicerApp()
        register_rca_factories(self.slicer.view_manager, self.server)
        self.layout_manager = LayoutManager(self.slicer.scene, self.slicer.view_manager, self.server)
        self.layout_manager.register_layout_dict(LayoutManager.default_grid_configuration())
        self.layout_manager.set_layout(LAYOUT)
        self.image = options.image
        self._show(self._load(options.image))
        editor = self.slicer.segmentation_editor
        self.tool = WebTool(self.slicer.scene, self.slicer.app_logic, editor.editor_node, PageModel(model),
                            self._show_state)
        self.effect = editor.set_active_effect_type(MedSAM2Effect)
        self.effect.tool = self.tool
        self.tabs = TabGuard(self.server)
        if options.session is not None:  # refused here, before serving, if it does not fit the image
            open_session(self.tool, options.session, self.server)
        self._build_ui()
        self._fit_views_on_resize()
        self._show_state()

    # -- the scene -----------------------------------------------------------------------------------------

    def _load(self, image: Path):
        """The image as a new volume node, read as ``medsam2 segment`` reads it (VolumeError says why not; the
        scene is then unchanged), named after the file: Save names its files after it."""
        return add_image(self.slicer.scene, image, volume_name(image), on_note=lambda note: LOG.info("%s", note))

    def _show(self, volume_node) -> None:
        """Segment ``volume_node``: shown in the slice views, with a new empty segmentation active."""
        self.volume_node = volume_node
        self.slicer.display_manager.show_volume_in_slice_background(volume_node)
        editor = self.slicer.segmentation_editor
        self.segmentation_node = editor.create_empty_segmentation_node()
        self.segmentation_node.SetName(f"{volume_node.GetName()} segmentation")
        editor.set_active_segmentation(self.segmentation_node, volume_node)
        editor.editor_node.SetAndObserveSegmentationNode(self.segmentation_node)
        editor.editor_node.SetAndObserveSourceVolumeNode(volume_node)

    def open_image(self, name: str) -> bool:
        """Replace the image by the data folder's image ``name``, as closing the scene and loading it would: the
        sessions end, the segmentation and its undo history go. False, with a sentence in the page and the log,
        when it cannot be opened (outside the folder, unreadable, a run going on): the current image stays."""
        try:
            if self.tool.busy:
                raise DataFolderError("MedSAM2 is segmenting: open another image once it has finished (or cancel it).")
            if self.options.data is None:
                raise DataFolderError("Start medsam2 web with --data FOLDER to choose images in the page.")
            path = self.options.data.path_of(name)
            volume_node = self._load(path)
        except Exception as error:  # the page gets a sentence, never a traceback (wslink would send it one)
            if isinstance(error, (ValueError, OSError)):  # VolumeError, DataFolderError, NonFiniteError: a sentence
                LOG.warning("%s", error)
                self.tool.message = str(error)
            else:  # a bug: the log keeps the traceback
                LOG.exception("Opening %s failed", name)
                self.tool.message = f"Could not open {name} ({type(error).__name__}: {error}); see the log."
            self._show_state()
            return False
        old = (self.volume_node, self.segmentation_node)
        self.tool.segmenter.end_sessions()  # as on scene close
        self._show(volume_node)
        for node in old:
            self.slicer.scene.RemoveNode(node)
        self.tool.editor_logic.ClearUndoState()
        self.image = path
        for view in self.slicer.view_manager.get_views():
            self._fit(view)
        self.tool.message = f"Opened {name}. Drag a box around the structure in a slice view."
        self._show_state()
        return True

    def slice_nodes(self):
        return [view.get_view_node() for view in self.slicer.view_manager.get_slice_views()]

    def _fit_views_on_resize(self) -> None:
        """The views' size is known only once the page has laid them out: rotate the slice views to the volume's
        grid (as the desktop's "rotate to volume plane") and fit them to it whenever a view is resized."""
        for view in self.slicer.view_manager.get_views():
            view.render_window().AddObserver(vtkCommand.WindowResizeEvent, lambda *_, view=view: self._fit(view))

    def _fit(self, view) -> None:
        if view in self.slicer.view_manager.get_slice_views():
            source = self.tool.editor.source()
            rotate_views_to_grid([view.get_view_node()], np.linalg.inv(source.ras_to_array_index()))
        view.reset_view()
        self.effect.redraw()

    # -- the page ------------------------------------------------------------------------------------------

    def _build_ui(self) -> None:
        state, tool = self.server.state, self.tool
        state.trame__title = "MedSAM2"
        with SinglePageWithDrawerLayout(self.server, full_height=True, width=330) as self.ui:
            self.ui.title.set_text("MedSAM2")
            with self.ui.toolbar:
                if self.options.data is not None:
                    v3.VSelect(id="medsam2-image", label="Image", items=("medsam2_images", self._image_names()),
                               v_model=("medsam2_image", self.options.data.name_of(self.image)),
                               update_modelValue=(self._pick, "[$event]"), density="compact", hide_details=True,
                               style="max-width: 320px;")
                v3.VSpacer()
                v3.VBtn("{{ medsam2_propagate_text }}", id="medsam2-propagate", click=self._propagate,
                        disabled=("!medsam2_propagate_enabled",))
                v3.VBtn("Reset", id="medsam2-reset", click=tool.reset, disabled=("!medsam2_reset_enabled",))
                v3.VBtn("Cancel", id="medsam2-cancel", click=tool.cancel, disabled=("!medsam2_busy",))
                v3.VBtn("Undo", id="medsam2-undo", click=tool.undo, disabled=("!medsam2_can_undo",))
                v3.VBtn("Redo", id="medsam2-redo", click=tool.redo, disabled=("!medsam2_can_redo",))
                for file_format in SAVE_FORMATS:
                    v3.VBtn(f"Save .{file_format}", id=f"medsam2-save-{file_format.replace('.', '-')}",
                            click=lambda file_format=file_format: self._save(file_format),
                            disabled=("medsam2_busy",))
            with self.ui.drawer:
                build_options_panel(self.server, tool)
            with self.ui.content:
                client.Style("html { overflow-y: hidden; }")
                self.tabs.add_notice()
                with html.Div(style="display: flex; flex-direction: column; height: 100%;"):
                    with html.Div(style="padding: 4px 12px;"):
                        v3.VProgressLinear(id="medsam2-progress", model_value=("medsam2_percent",), height=6,
                                           color="primary")
                        html.Div("{{ medsam2_message }}", id="medsam2-status")
                    with html.Div(style="flex: 1; position: relative;"):
                        self.layout_manager.initialize_layout_grid(self.ui)

    def _image_names(self):
        names, cut_short = self.options.data.images()
        if cut_short:
            LOG.warning("The data folder holds more images than the page lists (the first %d).", len(names))
        return names

    def _pick(self, name: str) -> None:
        if not self.open_image(name):  # the list shows the image still open
            self.server.state.medsam2_image = self.options.data.name_of(self.image)

    def _propagate(self) -> None:
        # Returns nothing: trame awaits what a handler returns, and the page would wait for the whole run.
        self.tool.propagate()

    def _save(self, file_format: str) -> None:
        with contextlib.suppress(Exception):  # the message says what happened; the log keeps the details
            self.tool.save(self.options.out, file_format, self._reads())

    def _reads(self) -> List[Tuple[str, Path]]:
        """The files this app reads, which Save must not replace: the image open, and the data folder's images."""
        reads = [("the image open", self.image)]
        if self.options.data is not None:
            reads += [("an image of the data folder", self.options.data.path_of(name)) for name in self._image_names()]
        return reads

    def _show_state(self) -> None:
        shown = self.tool.state()
        with self.server.state as state:
            state.medsam2_message = shown.message
            state.medsam2_busy = shown.busy
            state.medsam2_percent = 100 * shown.done / shown.total if shown.total else 0
            state.medsam2_propagate_text = shown.propagate_text
            state.medsam2_propagate_enabled = shown.propagate_enabled
            state.medsam2_reset_enabled = shown.reset_enabled
            state.medsam2_can_undo = shown.can_undo
            state.medsam2_can_redo = shown.can_redo
            state.medsam2_segments = [asdict(row) for row in shown.segments]
            state.medsam2_selected_segment = shown.selected_segment
        self.effect.redraw()

    def close(self) -> None:
        """Take the app apart once it no longer serves (the command's exit, each test): the tool (sessions, the
        background encoder), then each view (its observers, its render window's graphics context), then the scene,
        in this order as a test's Slicer scene (Testing/slicer_support.SlicerScene.close), instead of leaving them
        live until the interpreter exits (trame keeps every server it made, and the app with it). The app is
        unusable afterwards."""
        self.tool.close()
        for view in self.slicer.view_manager.get_views():
            view.render_window().RemoveAllObservers()  # the resize observers of _fit_views_on_resize hold the app
            view.finalize()  # trame-slicer's AbstractView.finalize: hides and finalizes the render window
        self.slicer.scene.Clear(True)

    # -- serving -------------------------------------------------------------------------------------------

    def url(self, port: int) -> str:
        secret = f"?secret={self.options.token}" if self.options.token else ""
        return f"http://{self.options.host}:{port}/{secret}"

    def start(self, **keywords):
        """Start serving (``exec_mode="task"`` returns at once inside a running loop, for tests)."""
        with trame_arguments(self.options.token):
            return self.server.start(port=self.options.port, host=self.options.host, open_browser=False,
                                     show_connection_info=False, **keywords)


def volume_name(image: Path) -> str:
    """The image's file name without its volume extension (a DICOM folder's name as it is)."""
    name = image.name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


@contextlib.contextmanager
def trame_arguments(token: Optional[str]) -> Iterator[None]:
    """trame's server reads its own options from sys.argv when it starts, where ``medsam2 web``'s are (it would take
    --port and --host, and maybe others, by prefix): it sees only the program name, and the token as wslink's
    authentication key."""
    saved = sys.argv
    sys.argv = [saved[0]] + (["--authKey", token] if token else [])
    try:
        yield
    finally:
        sys.argv = saved

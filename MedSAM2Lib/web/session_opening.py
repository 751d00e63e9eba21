"""``medsam2 web --prompts SESSION.json``: a session file opens with its segment.

The file (the format ``medsam2 segment --prompts`` reads) becomes the saved session of a new segment, stored in
its tag as the Slicer effect stores a session with a segment; the restore the effect does when it goes on with
a saved session (:meth:`~MedSAM2Lib.slicer_glue.interactive.InteractiveSegmenter.compute_restore`) then replays
its steps and writes the segment, as the page's first run (progress and Cancel as for any run). The user goes on
from there: a click is a correction, Update re-propagates. A file that does not fit the image (another size, a
step outside the volume) is refused with a sentence before the server starts.
"""

from __future__ import annotations

from ..inference.preprocessing import Windowing
from ..inference.session_file import SessionDocument
from ..slicer_glue.interactive import session_tag_from_file
from ..slicer_glue.run_controller import SESSION_TAG
from .tool import WebTool

# A file without a window was made on intensities already 0..255, as `medsam2 segment` reads it without --window.
DEFAULT_WINDOW = Windowing("none")


def open_session(tool: WebTool, document: SessionDocument, server) -> str:
    """Add a segment, named after the file, holding the session, select it, and restore it once the server
    runs. Returns the segment's ID; SessionFileError (or PromptError) when the file cannot apply to the image."""
    tag = session_tag_from_file(document, tool.editor.source(), DEFAULT_WINDOW)
    segmentation = tool.editor.segmentation_node().GetSegmentation()
    segment_id = segmentation.AddEmptySegment("", document.path.name.removesuffix(".json"))
    segmentation.GetSegment(segment_id).SetTag(SESSION_TAG, tag)
    tool.editor_logic.GetSegmentEditorNode().SetSelectedSegmentID(segment_id)
    tool.message = f"Opening the session {document.path.name}: replaying its {len(document.steps)} steps..."
    server.controller.on_server_ready.add(lambda **_: tool.start("restore"))
    return segment_id

"""Session files: the prompts and propagations that produced a segment, as JSON, for the command line, batch
and for saving with a segment.

    {"steps": [{"slice": 12, "box": [x0, y0, x1, y1], "points": [[x, y], ...], "labels": [1, 0]},
               {"propagate": "both"},
               {"slice": 17, "points": [[x, y]], "labels": [0], "add": true},
               {"slice": 30, "mask": "mask30.png"},
               {"propagate": "both", "range": [0, 60]},
               {"slice": 17, "remove": true}]}

Coordinates are slice pixels (x = column, y = row), as ``--box``; a mask is a PNG or ``.npy`` file (non-zero =
object) relative to the JSON file. Steps run in order.

Several objects: a prompt or removal step may name its object, ``"object": 2`` (a label value 1..255; absent:
object 1). Each object is tracked by a session of its own (its own memory, as the official predictor keeps a
state per object); a propagation step propagates every object that has a prompt then. So an object's results
are those of its own steps run alone: its prompts and removals, and the propagations while it has a prompt
(:func:`object_steps`).

Video frames play the role of slices (:func:`read_session` with ``frame_names``): steps name a ``"frame"``, by
its name (``"00012"``, the file name without extension) or its index from 0, instead of a ``"slice"``; the
entries below, which describe volumes, do not apply.

Optional entries say which images the steps were given on (a file written from a Slicer segment has them all):

- ``"stack"``: how the volume's voxel array becomes the stack of slices the steps refer to, e.g.
  ``{"slice_axis": "J", "row_axis": "K", "column_axis": "I", "flip_rows": true, "flip_columns": false}``: slices
  along the volume's J axis, row 0 at the highest K, columns along I (I, J, K: the file's voxel axes, I fastest;
  see :class:`~MedSAM2Lib.slicer_glue.geometry.StackGeometry`). Absent: slices along K, the array's first axis.
  The mask is mapped back to the volume's voxel grid.
- ``"window"``: the windowing of the intensities (``LO HI``, ``none``, ``mr-percentiles`` or a CT preset), used
  unless the command line or the batch row names one; a different one there is refused (other images than
  the prompts were given on).
- ``"size_ijk"``: the volume's size in voxels along I, J, K; a volume of another size is refused.
- ``"options"``: how the session computed, e.g. ``{"precision": "float32", "early_stop": 5, "fill_holes": true,
  "keep_largest_component": true}`` (``early_stop`` null: tracked to the end); ``medsam2 segment`` uses them
  where its command line names none (batch runs every row with the options of its own command line).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import numpy as np

from ..atomic import write_atomically, write_text_atomically
from ..slicer_glue.geometry import ARRAY_ORDER, StackGeometry  # numpy only
from .early_stop import DIRECTIONS

if TYPE_CHECKING:  # reading and writing session files needs no torch; running them does
    from .predictor import SliceResult
    from .preprocessing import Windowing
    from .session import Session

PROMPT_KEYS = {"slice", "box", "points", "labels", "mask", "add", "object"}
PROPAGATE_KEYS = {"propagate", "range"}
REMOVE_KEYS = {"slice", "remove", "object"}
DOCUMENT_KEYS = {"steps", "stack", "window", "size_ijk", "options"}
VOLUME_KEYS = DOCUMENT_KEYS - {"steps"}  # what a video session file cannot have: they describe volumes
DEFAULT_OBJECT = 1
MAX_OBJECT = 255  # objects are label values of a uint8 label map
# Each step decodes a slice or propagates through the volume (a fraction of a second to minutes on a CPU); far
# more steps than anyone gives by hand come from a generator gone wrong, refused before any work.
MAX_STEPS = 1000
OPTION_CHECKS = {  # an option's name -> (its check, what it must be)
    "precision": (lambda value: value in ("float32", "bfloat16"), '"float32" or "bfloat16"'),
    "early_stop": (lambda value: value is None or (type(value) is int and value >= 1), "a slice count or null"),
    "fill_holes": (lambda value: isinstance(value, bool), "true or false"),
    "keep_largest_component": (lambda value: isinstance(value, bool), "true or false"),
}


class SessionFileError(ValueError):
    """A session file cannot be read or one of its steps cannot be used."""


@dataclass(frozen=True)
class SessionDocument:
    """A session file's content: its steps and the images they were given on."""

    path: Path
    steps: List[Dict[str, Any]]
    stack: StackGeometry = ARRAY_ORDER
    window: Optional[str] = None  # as Windowing.parse reads it
    size_ijk: Optional[Tuple[int, int, int]] = None
    options: Dict[str, Any] = field(default_factory=dict)  # checked against OPTION_CHECKS
    mask_files: Tuple[Path, ...] = ()  # the mask files the steps name (read already)

    def check_size(self, shape_kji: Sequence[int]) -> None:
        """Refuse a (K, J, I) volume shape other than the one the file was made on."""
        if self.size_ijk is not None and tuple(shape_kji[::-1]) != self.size_ijk:
            size = " x ".join(map(str, self.size_ijk))
            raise SessionFileError(f"The session file {self.path} was made on a {size} volume (I x J x K); this one "
                                   f"is {' x '.join(map(str, shape_kji[::-1]))}.")

    def stack_of(self, volume_kji: np.ndarray) -> np.ndarray:
        """The (slices, rows, columns) stack the steps refer to, from a (K, J, I) volume of the right size."""
        self.check_size(volume_kji.shape)
        return self.stack.to_stack(volume_kji)

    def windowing(self, given: Optional[Windowing], given_as: str, default: Windowing) -> Windowing:
        """The windowing to run the steps with: ``given`` (an explicit choice, named ``given_as`` in a refusal),
        else the file's, else ``default``. A given window that differs from the file's is refused: the model
        would see other images than the prompts were given on."""
        from .preprocessing import Windowing

        if self.window is None:
            return given or default
        try:
            saved = Windowing.parse(self.window)
        except ValueError as error:
            raise SessionFileError(f"The session file {self.path}: {error}") from error
        if given is not None and given != saved:
            raise SessionFileError(
                f"The session file {self.path} was made on intensities windowed with {self.window}, but {given_as} "
                f"asks for {given}; leave {given_as} out or give the same window."
            )
        return saved


def read_session(path, frame_names: Optional[Sequence[str]] = None) -> SessionDocument:
    """A session file, checked, with masks loaded as (H, W) bool arrays. ``frame_names``: the file is about the
    frames of a clip with these names (in order): its steps name frames (by name or index), which become slice
    numbers, and the entries about volumes are refused."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SessionFileError(f"Cannot read the session file {path}: {error.strerror or error}.") from error
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SessionFileError(f"The session file {path} is not valid JSON: {error}.") from error
    if not isinstance(document, dict) or not isinstance(document.get("steps"), list) or not document["steps"]:
        raise SessionFileError(f'The session file {path} must hold {{"steps": [...]}} with at least one step.')
    unknown = set(document) - DOCUMENT_KEYS
    if unknown:
        raise SessionFileError(f"The session file {path} has unknown entries: {', '.join(sorted(unknown))}.")
    volume_entries = sorted(set(document) & VOLUME_KEYS) if frame_names is not None else []
    if volume_entries:
        raise SessionFileError(f"The session file {path} has {', '.join(volume_entries)}, which describe a volume; a "
                               "video session file holds only steps (the command line gives the options).")
    if len(document["steps"]) > MAX_STEPS:
        raise SessionFileError(f"The session file {path} has {len(document['steps']):,} steps, more than the "
                               f"{MAX_STEPS:,} a session file may hold; keep the steps that make the segment.")
    steps = [_checked_step(number, step if frame_names is None else _frame_step(number, step, frame_names),
                           path.parent) for number, step in enumerate(document["steps"], start=1)]
    try:
        stack = StackGeometry.from_json(document["stack"]) if "stack" in document else ARRAY_ORDER
    except ValueError as error:
        raise SessionFileError(f"The session file {path}: {error}.") from error
    window = document.get("window")
    if window is not None and not isinstance(window, str):
        raise SessionFileError(f'The session file {path}: window must be text such as "-160 240"; got {window!r}.')
    size = document.get("size_ijk")
    if size is not None and not (isinstance(size, list) and len(size) == 3 and all(
            isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in size)):
        raise SessionFileError(f"The session file {path}: size_ijk must be three voxel counts; got {size!r}.")
    options = document.get("options", {})
    if not isinstance(options, dict):
        raise SessionFileError(f"The session file {path}: options must be an object; got {options!r}.")
    for name, value in options.items():
        if name not in OPTION_CHECKS:
            raise SessionFileError(f"The session file {path} has an unknown option {name!r}; known: "
                                   f"{', '.join(OPTION_CHECKS)}.")
        check, expected = OPTION_CHECKS[name]
        if not check(value):
            raise SessionFileError(f"The session file {path}: option {name} must be {expected}; got {value!r}.")
    mask_files = tuple(path.parent / step["mask"] for step in document["steps"] if "mask" in step)
    return SessionDocument(path, steps, stack, window, tuple(size) if size is not None else None, options,
                           mask_files)


def session_options(session: Session) -> Dict[str, Any]:
    """How a session computes, as a session file's ``options``."""
    predictor = session.predictor
    return {"precision": str(predictor.dtype).replace("torch.", ""), "early_stop": session.early_stop,
            "fill_holes": predictor.fill_holes, "keep_largest_component": predictor.keep_largest_component}


def read_session_file(path) -> List[Dict[str, Any]]:
    """The steps of a session file (:func:`read_session`)."""
    return read_session(path).steps


def object_steps(steps: Sequence[Dict[str, Any]]) -> Dict[int, List[Tuple[int, Dict[str, Any]]]]:
    """Each object's steps (module docstring), numbered as in the file, objects in id order: its prompts and
    removals without the ``object`` entry, and every propagation while it has a prompt (a slice prompted and
    not removed since)."""
    objects: Dict[int, List[Tuple[int, Dict[str, Any]]]] = {}
    prompted: Dict[int, Set[int]] = {}
    for number, step in enumerate(steps, start=1):
        if "propagate" in step:
            for object_id, slices in prompted.items():
                if slices:
                    objects[object_id].append((number, step))
            continue
        object_id = step.get("object", DEFAULT_OBJECT)
        own = {key: value for key, value in step.items() if key != "object"}
        objects.setdefault(object_id, []).append((number, own))
        slices = prompted.setdefault(object_id, set())
        if step.get("remove"):
            slices.discard(step["slice"])
        else:
            slices.add(step["slice"])
    return dict(sorted(objects.items()))


def check_steps(steps: Sequence[Dict[str, Any]], volume: np.ndarray, name_steps: bool = True) -> None:
    """Refuse, before any work, steps that cannot apply to a volume: a prompt outside it or not fitting its
    slices, a range outside it, a propagation with no prompt or whose range surely leaves out the slice it starts
    from. Raises :class:`PromptError`, or :class:`SessionFileError` naming the step (``name_steps``: steps of a
    file, not of command-line options). Each object's steps are checked as if run alone (:func:`object_steps`).

    A propagation starts from the lowest conditioning slice (:class:`~MedSAM2Lib.inference.session.Session`).
    Prompts given before the first propagation all condition; a later one conditions only where no propagation
    reached its slice, which depends on early stops, so for it only what is sure is refused here (the session
    refuses the rest when it gets there)."""
    from .predictor import PromptError, check_volume

    check_volume(volume)
    objects = object_steps(steps)
    own_numbers = {number for numbered in objects.values() for number, _ in numbered}
    for number, step in enumerate(steps, start=1):
        if "propagate" in step and number not in own_numbers:
            _refuse_step(number, PromptError("Give a box, points or a mask on a slice before propagating."),
                         name_steps)
    for numbered in objects.values():
        _check_object_steps(numbered, volume.shape[0], volume.shape, name_steps)


def _check_object_steps(numbered: Sequence[Tuple[int, Dict[str, Any]]], num_slices: int, shape: Sequence[int],
                        name_steps: bool) -> None:
    """:func:`check_steps` for one object's numbered steps."""
    from .predictor import PromptError, check_slice_range
    from .session import check_prompt

    conditioning: Set[int] = set()  # surely conditioning: prompted before any propagation and not removed
    prompted: Set[int] = set()  # may be conditioning: every prompted slice not removed
    propagated = False
    for number, step in numbered:
        try:
            if "propagate" in step:
                slice_range = step.get("range", (0, num_slices - 1))
                check_slice_range(slice_range, num_slices)
                if not prompted:
                    raise PromptError("Give a box, points or a mask on a slice before propagating.")
                # The start lies between the lowest prompted slice and the lowest surely conditioning one.
                if conditioning and min(conditioning) < slice_range[0]:
                    check_slice_range(slice_range, num_slices, min(conditioning), "the first prompted slice")
                if min(prompted) > slice_range[1]:
                    check_slice_range(slice_range, num_slices, min(prompted), "the first prompted slice")
                propagated = True
            elif step.get("remove"):
                conditioning.discard(step["slice"])
                prompted.discard(step["slice"])
            else:
                check_prompt(tuple(shape[:3]), step["slice"], step.get("box"), step.get("points"),
                             step.get("labels"), step.get("mask"))
                prompted.add(step["slice"])
                if not propagated:
                    conditioning.add(step["slice"])
        except PromptError as error:
            _refuse_step(number, error, name_steps)


def _refuse_step(number: int, error: Exception, name_steps: bool) -> None:
    if not name_steps:
        raise error
    raise SessionFileError(f"Step {number}: {error}") from error


def run_steps(
    session: Session,
    steps: Sequence[Dict[str, Any]],
    on_slice: Optional[Callable[[object], None]] = None,
    on_step: Optional[Callable[[int], None]] = None,
) -> None:
    """Run steps in order on a session. ``on_slice`` sees each slice a propagation yields and ``on_step`` each
    finished step's number; either may raise to cancel. A step the session refuses raises
    :class:`SessionFileError` naming the step."""
    for number, result in step_results(session, list(enumerate(steps, start=1))):
        if result is None:
            if on_step is not None:
                on_step(number)
        elif on_slice is not None:
            on_slice(result)


def step_results(session: Session, numbered: Sequence[Tuple[int, Dict[str, Any]]]
                 ) -> Iterator[Tuple[int, Optional[SliceResult]]]:
    """Run numbered steps in order on a session, yielding (step number, result) for each slice a propagation
    yields and (step number, None) once each step is done; stop iterating to cancel. A step the session refuses
    raises :class:`SessionFileError` naming the step."""
    from .predictor import PromptError

    for number, step in numbered:
        if step.get("object", DEFAULT_OBJECT) != DEFAULT_OBJECT:
            raise SessionFileError(f"Step {number} is about object {step['object']}, and a session tracks one object; "
                                   "steps of several objects run through object_steps, a session each.")
        try:
            if "propagate" in step:
                for result in session.propagate(step["propagate"], tuple(step["range"]) if "range" in step else None):
                    yield number, result
            elif step.get("remove"):
                session.remove_prompt(step["slice"])
            else:
                session.add_prompt(step["slice"], box=step.get("box"), points=step.get("points"),
                                   labels=step.get("labels"), mask=step.get("mask"), add=step.get("add", False))
        except PromptError as error:
            raise SessionFileError(f"Step {number}: {error}") from error
        yield number, None


def write_session_file(path, steps: Sequence[Dict[str, Any]], stack: Optional[StackGeometry] = None,
                       window: Optional[str] = None, size_ijk: Optional[Sequence[int]] = None,
                       options: Optional[Dict[str, Any]] = None) -> None:
    """Write steps (as :attr:`Session.steps` gives them) to a JSON file; masks go to ``.npy`` files beside it,
    named after the JSON file, the step and the slice. ``stack``, ``window``, ``size_ijk`` and ``options``: the
    optional entries of the module docstring."""
    path = Path(path)

    def mask_name(number: int, index: int) -> str:
        return f"{path.stem}.step{number}.slice{index}.npy"

    for number, step in enumerate(steps, start=1):
        if isinstance(step.get("mask"), np.ndarray):
            write_atomically(path.parent / mask_name(number, step["slice"]),
                             lambda target, mask=step["mask"]: np.save(target, mask.astype(bool)), suffix=".npy")
    document = [dict(step, mask=mask_name(number, step["slice"])) if isinstance(step.get("mask"), np.ndarray)
                else dict(step) for number, step in enumerate(steps, start=1)]
    entries = {"stack": stack.as_json() if stack is not None else None, "window": window,
               "size_ijk": [int(n) for n in size_ijk] if size_ijk is not None else None, "options": options or None}
    content = {**{key: value for key, value in entries.items() if value is not None}, "steps": document}
    write_text_atomically(path, json.dumps(content, indent=1) + "\n")


def _checked_step(number: int, step: Any, folder: Path) -> Dict[str, Any]:
    where = f"Step {number} of the session file"
    if not isinstance(step, dict):
        raise SessionFileError(f"{where} must be an object such as {{\"slice\": 12, \"box\": [...]}}; got {step!r}.")
    if "propagate" in step:
        unknown = set(step) - PROPAGATE_KEYS
        if unknown:
            raise SessionFileError(f"{where} propagates and cannot also have {', '.join(sorted(unknown))}.")
        if step["propagate"] not in DIRECTIONS:
            raise SessionFileError(f"{where}: propagate must be one of {', '.join(DIRECTIONS)}; got {step['propagate']!r}.")
        if "range" in step and not _is_int_pair(step["range"]):
            raise SessionFileError(f"{where}: range must be two slice numbers [first, last]; got {step['range']!r}.")
        return dict(step)
    if not isinstance(step.get("slice"), int) or isinstance(step.get("slice"), bool):
        raise SessionFileError(f"{where} needs a slice number (or \"propagate\"); got {step.get('slice')!r}.")
    if step.get("remove"):
        unknown = set(step) - REMOVE_KEYS
        if unknown:
            raise SessionFileError(f"{where} removes a prompt and cannot also have {', '.join(sorted(unknown))}.")
        _check_object(where, step)
        return dict(step)
    unknown = set(step) - PROMPT_KEYS
    if unknown:
        raise SessionFileError(f"{where} has unknown keys: {', '.join(sorted(unknown))}.")
    _check_object(where, step)
    if not any(key in step for key in ("box", "points", "mask")):
        raise SessionFileError(f"{where} gives no box, points or mask for slice {step['slice']}.")
    checked = dict(step)
    if "mask" in step:
        checked["mask"] = _read_mask(where, folder, step["mask"])
    return checked


def _check_object(where: str, step: Dict[str, Any]) -> None:
    object_id = step.get("object", DEFAULT_OBJECT)
    if not (isinstance(object_id, int) and not isinstance(object_id, bool) and 1 <= object_id <= MAX_OBJECT):
        raise SessionFileError(f"{where}: object must be a label value 1..{MAX_OBJECT}; got {object_id!r}.")


def _frame_step(number: int, step: Any, frame_names: Sequence[str]) -> Any:
    """A video step with its ``frame`` (a name or an index) as the ``slice`` of a volume step."""
    if not isinstance(step, dict) or "propagate" in step:
        return step
    where = f"Step {number} of the session file"
    if "slice" in step:
        raise SessionFileError(f"{where} names a slice; the steps of a video session file name a \"frame\" "
                               "(its name, or its index from 0).")
    if "frame" not in step:
        raise SessionFileError(f"{where} needs a frame (its name, or its index from 0), or \"propagate\".")
    frame = step["frame"]
    if isinstance(frame, str):
        if frame not in frame_names:
            raise SessionFileError(f"{where}: there is no frame named {frame!r}; the frames are "
                                   f"{frame_names[0]}..{frame_names[-1]} ({len(frame_names)} frames).")
        index = list(frame_names).index(frame)
    elif isinstance(frame, int) and not isinstance(frame, bool):
        if not 0 <= frame < len(frame_names):
            raise SessionFileError(f"{where}: frame {frame} is outside the clip, whose frames are numbered "
                                   f"0..{len(frame_names) - 1}.")
        index = frame
    else:
        raise SessionFileError(f"{where}: frame must be a frame's name or its index from 0; got {frame!r}.")
    return {("slice" if key == "frame" else key): (index if key == "frame" else value) for key, value in step.items()}


def _read_mask(where: str, folder: Path, name: Any) -> np.ndarray:
    if not isinstance(name, str):
        raise SessionFileError(f"{where}: mask must be a file name (PNG or .npy); got {name!r}.")
    path = folder / name
    try:
        if path.suffix.lower() == ".npy":
            mask = np.load(path, allow_pickle=False)
        elif path.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(path) as image:
                mask = np.asarray(image.convert("L"))
        else:
            raise SessionFileError(f"{where}: the mask {name} must be a .png or .npy file.")
    except (OSError, ValueError) as error:
        raise SessionFileError(f"{where}: cannot read the mask {path}: {error}.") from error
    if mask.ndim != 2:
        raise SessionFileError(f"{where}: the mask {name} must be one 2D slice; it has shape {mask.shape}.")
    return mask != 0


def _is_int_pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value)

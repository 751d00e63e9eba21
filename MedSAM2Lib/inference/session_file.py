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
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from ..atomic import write_atomically, write_text_atomically
from ..slicer_glue.geometry import ARRAY_ORDER, StackGeometry  # numpy only
from .early_stop import DIRECTIONS

if TYPE_CHECKING:  # reading and writing session files needs no torch; running them does
    from .preprocessing import Windowing
    from .session import Session

PROMPT_KEYS = {"slice", "box", "points", "labels", "mask", "add"}
PROPAGATE_KEYS = {"propagate", "range"}
REMOVE_KEYS = {"slice", "remove"}
DOCUMENT_KEYS = {"steps", "stack", "window", "size_ijk", "options"}
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


def read_session(path) -> SessionDocument:
    """A session file, checked, with masks loaded as (H, W) bool arrays."""
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
    if len(document["steps"]) > MAX_STEPS:
        raise SessionFileError(f"The session file {path} has {len(document['steps']):,} steps, more than the "
                               f"{MAX_STEPS:,} a session file may hold; keep the steps that make the segment.")
    steps = [_checked_step(number, step, path.parent) for number, step in enumerate(document["steps"], start=1)]
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
    return SessionDocument(path, steps, stack, window, tuple(size) if size is not None else None, options)


def session_options(session: Session) -> Dict[str, Any]:
    """How a session computes, as a session file's ``options``."""
    predictor = session.predictor
    return {"precision": str(predictor.dtype).replace("torch.", ""), "early_stop": session.early_stop,
            "fill_holes": predictor.fill_holes, "keep_largest_component": predictor.keep_largest_component}


def read_session_file(path) -> List[Dict[str, Any]]:
    """The steps of a session file (:func:`read_session`)."""
    return read_session(path).steps


def check_steps(steps: Sequence[Dict[str, Any]], volume: np.ndarray, name_steps: bool = True) -> None:
    """Refuse, before any work, steps that cannot apply to a volume: a prompt outside it or not fitting its
    slices, a range outside it, a propagation with no prompt or whose range surely leaves out the slice it starts
    from. Raises :class:`PromptError`, or :class:`SessionFileError` naming the step (``name_steps``: steps of a
    file, not of command-line options).

    A propagation starts from the lowest conditioning slice (:class:`~MedSAM2Lib.inference.session.Session`).
    Prompts given before the first propagation all condition; a later one conditions only where no propagation
    reached its slice, which depends on early stops, so for it only what is sure is refused here (the session
    refuses the rest when it gets there)."""
    from .predictor import PromptError, check_slice_range, check_volume
    from .session import check_prompt

    check_volume(volume)
    num_slices = volume.shape[0]
    conditioning: Set[int] = set()  # surely conditioning: prompted before any propagation and not removed
    prompted: Set[int] = set()  # may be conditioning: every prompted slice not removed
    propagated = False
    for number, step in enumerate(steps, start=1):
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
                check_prompt(volume.shape, step["slice"], step.get("box"), step.get("points"), step.get("labels"),
                             step.get("mask"))
                prompted.add(step["slice"])
                if not propagated:
                    conditioning.add(step["slice"])
        except PromptError as error:
            if not name_steps:
                raise
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
    from .predictor import PromptError

    for number, step in enumerate(steps, start=1):
        try:
            if "propagate" in step:
                for result in session.propagate(step["propagate"], tuple(step["range"]) if "range" in step else None):
                    if on_slice is not None:
                        on_slice(result)
            elif step.get("remove"):
                session.remove_prompt(step["slice"])
            else:
                session.add_prompt(step["slice"], box=step.get("box"), points=step.get("points"),
                                   labels=step.get("labels"), mask=step.get("mask"), add=step.get("add", False))
        except PromptError as error:
            raise SessionFileError(f"Step {number}: {error}") from error
        if on_step is not None:
            on_step(number)


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
        return dict(step)
    unknown = set(step) - PROMPT_KEYS
    if unknown:
        raise SessionFileError(f"{where} has unknown keys: {', '.join(sorted(unknown))}.")
    if not any(key in step for key in ("box", "points", "mask")):
        raise SessionFileError(f"{where} gives no box, points or mask for slice {step['slice']}.")
    checked = dict(step)
    if "mask" in step:
        checked["mask"] = _read_mask(where, folder, step["mask"])
    return checked


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

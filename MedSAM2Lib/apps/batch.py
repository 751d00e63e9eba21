"""Batch segmentation from a table of prompts: several structures per scan, one label map per scan.

Prompt table (CSV; header names in any case and order):

- ``image``: the scan's file, relative to the images folder (or absolute); any volume ``read_volume`` reads,
  including a folder of DICOM files (the series with the most slices; the summary names it when there are
  several).
- ``slice``: index of the box's slice along the array's first axis, from 0.
- ``x0, y0, x1, y1``: the box on that slice in pixels, x = column, y = row (as ``medsam2 segment --box``).
- ``window`` (optional): ``LO HI`` (or ``LO, HI``), a CT preset name, ``mr-percentiles`` or ``none``; empty or
  absent: the command line's windowing.
- ``label`` (optional): 1..255; empty or absent: one more than the highest label of the scan's earlier rows.
  Rows with the same label are one structure (their masks are merged).
- ``direction`` (optional): ``both`` (default), ``forward`` or ``backward``; ``first_slice`` and ``last_slice``
  (optional, both or neither): the inclusive slice range to stay within.
- ``session`` (optional): a session file of one object (prompts on several slices, corrections, propagations;
  see :mod:`~MedSAM2Lib.inference.session_file`; a file naming several objects fails its row), relative to the
  table's folder, instead of ``slice`` and the box
  columns, which then stay empty (and may be absent from the table). The session runs on the stack of slices the
  file names (a file saved from a Slicer segment may slice the scan along any axis) and its mask is mapped back
  to the scan's grid; the file's window, if it names one, replaces the command line's (a different ``window``
  cell is refused).

DeepLesion's ``DeepLesion_Dataset_Info.csv`` is read by :func:`read_deeplesion_table` instead.

How a scan is processed:

- It is read once. Its rows are segmented per window: each distinct window gives one uint8 volume, and the rows
  sharing it (and the stack of slices their session files name) are segmented in **one pass**: a session per
  row, advanced side by side over one :class:`~MedSAM2Lib.inference.predictor.FeatureCache`, so each slice is
  encoded once for all of them (:func:`~MedSAM2Lib.inference.objects.segment_objects`). Rows with different
  windows see different images and cannot share features. A row's ``seconds`` is the time of its pass.
- Each row is its own object (its own memory), and the predictor's post-processing (the largest 3D component)
  applies to that row's mask only, never to the union of several rows: a small lesion beside a large one
  survives. A row's mask is that of the row run alone.
- Overlaps: **the higher logit wins**, the official non-overlap rule among the rows whose masks hold a voxel
  (:func:`~MedSAM2Lib.inference.objects.compose_labels`; the earlier row on a tie); rows with the same label
  merge. The voxels of a row's mask that another label wins are counted in the summary (``overlap_voxels``).
- The label map (uint8) goes to the output folder under the image's path relative to the images folder (its
  file name when outside it), in the input's format (``.nii.gz`` when that format cannot hold a 3D label map,
  e.g. DICOM or ``.mhd``; a DICOM folder ``CT1`` gives ``CT1.nii.gz``) and with its spacing, origin and
  direction. It is written when at least one of the scan's rows succeeded, atomically
  (:mod:`MedSAM2Lib.atomic`: a temporary file, read back, renamed into place), so a file that exists is a
  finished output and an earlier output survives a failed write; existing outputs are skipped unless
  ``overwrite``.
- The summary CSV has one line per table row (:class:`Outcome`). A summary already at its path (an earlier,
  perhaps cancelled, run) is merged into, not replaced: a row skipped because its scan's output exists keeps
  the earlier run's line and figures, and earlier lines this run has no outcome for stay
  (:func:`merge_outcomes`).
- A scan with NaN or infinite voxels fails (all its rows, with a sentence counting them) unless ``nan_as``
  gives the value to replace them with.
- A row that cannot be used (bad numbers, a box outside the slice, an unreadable or missing image) is
  reported with its table line and skipped; the other rows go on.
"""

from __future__ import annotations

import csv
import math
import re
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..inference.objects import Region, compose_labels
from ..inference.predictor import DIRECTIONS, FeatureCache
from ..inference.preprocessing import Windowing
from ..inference.session_file import SessionDocument, check_steps, object_steps, read_session
from ..slicer_glue.geometry import ARRAY_ORDER, StackGeometry
from ..atomic import FileUses, write_csv_atomically
from .volume_io import MASK_SUFFIXES, VolumeError, check_output, mask_suffix, read_scan, write_mask

TABLE_COLUMNS = ("image", "slice", "x0", "y0", "x1", "y1")
SESSION_COLUMN = "session"  # a session file: an alternative to a row's box columns
DEEPLESION_COLUMNS = ("file_name", "key_slice_index", "bounding_boxes", "dicom_windows", "slice_range")
# DeepLesion volumes are named <patient>_<study>_<series>_<first>-<last>.nii.gz (first and last slice, 1-based).
DEEPLESION_VOLUME = re.compile(r"^(\d{6}_\d{2}_\d{2})_(\d{3})-(\d{3})\.nii\.gz$")
DEEPLESION_CASE = re.compile(r"^(\d{6}_\d{2}_\d{2})")
MAX_LABEL = 255  # label maps are written as uint8
ROW_ERRORS = (ValueError, OSError, RuntimeError)  # PromptError and VolumeError are ValueErrors


class TableError(ValueError):
    """The prompt table as a whole cannot be read (missing, no header, required columns absent)."""


# -- what a row asks for ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prompt:
    """One row of a prompt table: a box on one slice of one scan (or a session file), and the label its mask
    gets."""

    row: int  # line of the table file (the header is line 1)
    image: Path  # absolute
    key_slice: Optional[int]  # None for a session row
    box: Optional[Tuple[float, float, float, float]]  # x0, y0, x1, y1 in slice pixels; None for a session row
    window: Windowing
    label: int
    direction: str = "both"
    slice_range: Optional[Tuple[int, int]] = None
    session: Optional[Path] = None  # absolute path of a session file, instead of the box
    stack: StackGeometry = ARRAY_ORDER  # a session file's stack: how the scan's array becomes its slices


@dataclass
class Outcome:
    """One row of the summary CSV: what became of one prompt (or of a table row that is not one)."""

    row: Optional[int]
    image: str
    label: Optional[int]
    status: str  # ok, failed or skipped
    message: str = ""
    output: str = ""
    voxels: int = 0  # of this row's own mask
    slices: int = 0  # slices this row's mask touches
    overlap_voxels: int = 0  # of this row's mask, won by another label (a higher logit there)
    seconds: float = 0.0  # the pass that segmented this row with the others of its window (encoding included)
    scan_seconds: float = 0.0  # the whole scan: reading, windowing, every row, writing


SUMMARY_COLUMNS = [column.name for column in fields(Outcome)]
SUMMARY_KEY_COLUMNS = ("row", "image", "label", "status")  # what an earlier summary needs to be merged


# -- reading tables ----------------------------------------------------------------------------------------


def _read_rows(path: Path, required: Sequence[str], instead: str = "") -> List[Tuple[int, Dict[str, str]]]:
    """(line number, {lower-case column: stripped text}) for each data row of a CSV file. ``instead``: a column
    whose presence makes every required column but the first optional."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as stream:
            reader = csv.DictReader(stream)
            columns = [name.strip().lower() for name in reader.fieldnames or []]
            missing = [name for name in required if name not in columns]
            if instead and instead in columns:
                missing = [name for name in missing if name == required[0]]
            if missing:
                raise TableError(
                    f"{path} lacks the column(s) {', '.join(missing)} (found: {', '.join(columns) or 'no header'})."
                )
            rows = []
            for row in reader:
                cells = {name.strip().lower(): (value or "").strip() for name, value in row.items() if name is not None}
                rows.append((reader.line_num, cells))
            return rows
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise TableError(f"Cannot read the prompt table {path}: {error}") from error


def _integer(text: str, column: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{column} {text!r} is not a number.") from None
    if not value.is_integer():
        raise ValueError(f"{column} {text!r} is not a whole number.")
    return int(value)


def _decimal(text: str, column: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{column} {text!r} is not a number.") from None
    if not math.isfinite(value):
        raise ValueError(f"{column} {text!r} is not a finite number.")
    return value


def _label(text: str, column: str = "label") -> int:
    label = _integer(text, column)
    if not 1 <= label <= MAX_LABEL:
        raise ValueError(f"{column} {label} is outside 1..{MAX_LABEL}.")
    return label


def _table_prompt(line: int, cells: Dict[str, str], image: Path, default_window: Windowing, next_label: int,
                  table_folder: Path) -> Prompt:
    """A prompt from one row of our table; ValueError with a sentence when a cell is unusable."""
    window_text = cells.get("window", "")
    window = Windowing.parse(window_text) if window_text else None
    label = _label(cells["label"]) if cells.get("label") else next_label
    if cells.get(SESSION_COLUMN):
        given = [column for column in TABLE_COLUMNS[1:] + ("direction", "first_slice", "last_slice") if cells.get(column)]
        if given:
            raise ValueError(f"a session row takes its slices, boxes and propagation from the session file; "
                             f"leave {', '.join(given)} empty.")
        session = (table_folder / cells[SESSION_COLUMN]).resolve()
        document = read_session(session)  # refused now, before any work, if it cannot be used
        one_object_steps(document)
        return Prompt(row=line, image=image, key_slice=None, box=None, label=label, session=session,
                      window=document.windowing(window, "the row's window", default_window), stack=document.stack)
    missing = [column for column in TABLE_COLUMNS[1:] if column not in cells]
    if missing:
        raise ValueError(f"the row has no session file and the table lacks the column(s) {', '.join(missing)}.")
    box = tuple(_decimal(cells[column], column) for column in ("x0", "y0", "x1", "y1"))
    direction = cells.get("direction", "") or "both"
    if direction not in DIRECTIONS:
        raise ValueError(f"direction {direction!r} is not one of {', '.join(DIRECTIONS)}.")
    first, last = cells.get("first_slice", ""), cells.get("last_slice", "")
    if bool(first) != bool(last):
        raise ValueError("give both first_slice and last_slice, or neither.")
    return Prompt(
        row=line,
        image=image,
        key_slice=_integer(cells["slice"], "slice"),
        box=box,
        window=window or default_window,
        label=label,
        direction=direction,
        slice_range=(_integer(first, "first_slice"), _integer(last, "last_slice")) if first else None,
    )


def read_prompt_table(
    path: Path, images: Path, default_window: Windowing = Windowing("none")
) -> Tuple[List[Prompt], List[Outcome]]:
    """The usable prompts of a table and a ``failed`` outcome for each row that is not usable."""
    prompts: List[Prompt] = []
    failures: List[Outcome] = []
    highest_label: Dict[Path, int] = {}
    for line, cells in _read_rows(Path(path), TABLE_COLUMNS, instead=SESSION_COLUMN):
        if not cells["image"]:
            failures.append(Outcome(line, "", None, "failed", "the image cell is empty."))
            continue
        image = (Path(images) / cells["image"]).resolve()
        try:
            prompt = _table_prompt(line, cells, image, default_window, highest_label.get(image, 0) + 1,
                                   Path(path).resolve().parent)
        except ValueError as error:
            failures.append(Outcome(line, cells["image"], None, "failed", str(error)))
            continue
        if prompt.label > MAX_LABEL:
            failures.append(Outcome(line, cells["image"], None, "failed", f"no label left below {MAX_LABEL + 1}."))
            continue
        highest_label[image] = max(highest_label.get(image, 0), prompt.label)
        prompts.append(prompt)
    return prompts, failures


def _numbers(text: str, count: int, column: str) -> List[float]:
    values = text.split(",")
    if len(values) != count:
        raise ValueError(f"{column} {text!r} should hold {count} comma-separated numbers.")
    return [_decimal(value.strip(), column) for value in values]


def _deeplesion_range(cells: Dict[str, str]) -> Optional[Tuple[str, int, int]]:
    """(case, first slice, last slice) a DeepLesion row belongs to, or None when it names none."""
    case = DEEPLESION_CASE.match(cells.get("file_name", ""))
    try:
        first, last = (int(value) for value in cells.get("slice_range", "").split(","))
    except ValueError:
        return None
    return (case.group(1), first, last) if case else None


def _deeplesion_prompt(line: int, cells: Dict[str, str], image: Path, first_slice: int, label: int) -> Prompt:
    """A prompt from one DeepLesion row, read as the official MedSAM2 CT script reads it.

    ``Bounding_boxes`` is read as y0, x0, y1, x1, each truncated to an integer, and swapped to x0, y0, x1, y1;
    the key slice is ``Key_slice_index`` minus the first slice of ``Slice_range`` (both 1-based in DeepLesion,
    so the difference indexes the volume, which holds exactly that range); ``DICOM_windows`` is the window."""
    y0, x0, y1, x1 = (int(value) for value in _numbers(cells["bounding_boxes"], 4, "Bounding_boxes"))
    lower, upper = _numbers(cells["dicom_windows"], 2, "DICOM_windows")
    return Prompt(
        row=line,
        image=image,
        key_slice=_integer(cells["key_slice_index"], "Key_slice_index") - first_slice,
        box=(x0, y0, x1, y1),
        window=Windowing.parse(f"{lower!r} {upper!r}"),
        label=label,
    )


def deeplesion_volumes(images: Path) -> Tuple[Dict[Tuple[str, int, int], Path], List[Outcome]]:
    """DeepLesion volumes in a folder by (case, first slice, last slice), and a failure for each other .nii.gz."""
    volumes, failures = {}, []
    for path in sorted(Path(images).glob("*.nii.gz")):
        if path.name.startswith("."):
            continue
        match = DEEPLESION_VOLUME.match(path.name)
        if match is None:
            failures.append(Outcome(None, path.name, None, "failed",
                                    "the name is not <patient>_<study>_<series>_<first>-<last>.nii.gz (DeepLesion)."))
            continue
        volumes[(match.group(1), int(match.group(2)), int(match.group(3)))] = path.resolve()
    return volumes, failures


def read_deeplesion_table(path: Path, images: Path) -> Tuple[List[Prompt], List[Outcome]]:
    """Prompts for the DeepLesion volumes in ``images`` from DeepLesion's info table.

    A row belongs to a volume when its ``File_name`` starts with the volume's case and its ``Slice_range``
    equals the volume's range; other rows are not about these volumes and are passed over. Lesions get labels
    1, 2, ... per volume in table order (a failed row keeps its number). Volumes without rows are skipped."""
    volumes, outcomes = deeplesion_volumes(images)
    prompts: List[Prompt] = []
    lesions: Dict[Path, int] = {}
    for line, cells in _read_rows(Path(path), DEEPLESION_COLUMNS):
        key = _deeplesion_range(cells)
        image = volumes.get(key) if key else None
        if image is None:
            continue
        lesions[image] = lesions.get(image, 0) + 1
        try:
            prompts.append(_deeplesion_prompt(line, cells, image, key[1], lesions[image]))
        except ValueError as error:
            outcomes.append(Outcome(line, image.name, lesions[image], "failed", str(error)))
    for image in volumes.values():
        if image not in lesions:
            outcomes.append(Outcome(None, image.name, None, "skipped", "no row of the table is about this volume."))
    return prompts, outcomes


# -- running ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScanJob:
    """One scan of a batch, the unit of work: its prompts in table order and where its label map goes."""

    image: Path  # absolute
    name: str  # the image, relative to the images folder when inside it
    output: Path
    prompts: Tuple[Prompt, ...]


@dataclass
class ScanReport:
    """What became of one scan, for progress messages."""

    name: str  # the image, relative to the images folder when inside it
    output: Path
    outcomes: List[Outcome] = field(default_factory=list)
    seconds: float = 0.0  # reading, windowing, segmenting and writing (0 for a scan not segmented)
    worker: str = ""  # the Ray worker that segmented it, and that worker's pace so far; empty in one process


def group_in_order(items: Iterable, key: Callable) -> "OrderedDict[object, list]":
    """Items grouped by key, groups in order of first appearance, items in their order."""
    groups: "OrderedDict[object, list]" = OrderedDict()
    for item in items:
        groups.setdefault(key(item), []).append(item)
    return groups


def display_path(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` when inside it, else as it is."""
    try:
        return Path(path).relative_to(Path(folder).resolve()).as_posix()
    except ValueError:
        return str(path)


class BatchRunner:
    """Runs prompts scan by scan (see the module docstring for the rules).

    predictor_factory: called once, when the first scan needs segmenting (so a run that only skips never loads
    the model); it returns an object with VolumePredictor's ``segment``. on_prompt sees each prompt when done;
    on_scan each scan's report. ``outcomes`` holds the outcomes of the scans finished so far. ``run`` is
    ``plan``, then ``run_plan``: ``process_scan`` and ``finish`` for each scan; ``ray_batch`` runs
    ``process_scan`` on Ray workers instead."""

    def __init__(
        self,
        predictor_factory: Callable[[], object],
        images: Path,
        output_folder: Path,
        overwrite: bool = False,
        cache_slices: Optional[int] = None,
        on_prompt: Optional[Callable[[Prompt], None]] = None,
        on_scan: Optional[Callable[[ScanReport], None]] = None,
        nan_as: Optional[float] = None,
    ) -> None:
        self._predictor_factory = predictor_factory
        self._predictor = None
        self.images = Path(images).resolve()
        self.output_folder = Path(output_folder)
        self.overwrite = overwrite
        self.cache_slices = cache_slices
        self.on_prompt = on_prompt or (lambda prompt: None)
        self.on_scan = on_scan or (lambda report: None)
        self.outcomes: List[Outcome] = []
        self.nan_as = nan_as  # the value of NaN and infinite voxels; None: such scans fail

    def predictor(self):
        """The predictor, made by the factory on first use (a run that only skips never loads the model)."""
        if self._predictor is None:
            self._predictor = self._predictor_factory()
        return self._predictor

    def output_path(self, image: Path) -> Path:
        relative = Path(display_path(image, self.images))
        if relative.is_absolute() or ".." in relative.parts:
            relative = Path(image.name)
        if image.is_dir():  # a DICOM series: its folder's whole name (often a UID, with dots), as NIfTI
            relative = relative.with_name(relative.name + MASK_SUFFIXES[0])
        elif mask_suffix(relative) is None:  # a DICOM file, .mhd, ...: the name without its extension, as NIfTI
            relative = relative.with_name(relative.name.split(".")[0] + MASK_SUFFIXES[0])
        return self.output_folder / relative

    def run(self, prompts: Sequence[Prompt]) -> List[Outcome]:
        return self.run_plan(self.plan(prompts))

    def run_plan(self, planned: Sequence[Tuple[ScanJob, Optional[ScanReport]]]) -> List[Outcome]:
        """Segment the scans of a :meth:`plan` (those with a report are done already); returns ``outcomes``."""
        for job, report in planned:
            if report is None:
                self.finish(self.process_scan(job))
            else:
                self.finish_planned(job, report)
        return self.outcomes

    def plan(self, prompts: Sequence[Prompt], files: Optional[FileUses] = None
             ) -> List[Tuple[ScanJob, Optional[ScanReport]]]:
        """Each scan's job in table order, with its report when it is not to be segmented: its output is
        refused (not a mask format, or a file the batch reads or writes otherwise: a scan, a session file,
        another scan's label map, or a file already in ``files``, such as the prompt table) or exists (and not
        ``overwrite``). Nothing is written or reported yet; ``files`` (the command's, if given) gets the scans,
        the session files and the label maps, so that the caller can check the summary against them."""
        files = files if files is not None else FileUses()
        scans = group_in_order(prompts, lambda prompt: prompt.image)
        for image, scan_prompts in scans.items():
            files.read(f"the scan {display_path(image, self.images)}", image)
            for prompt in scan_prompts:
                if prompt.session is not None:
                    files.read(f"the session file of line {prompt.row}", prompt.session)
        planned = []
        for image, scan_prompts in scans.items():
            job = ScanJob(image, display_path(image, self.images), self.output_path(image), tuple(scan_prompts))
            report = None
            try:
                files.write(f"the label map of {job.name}", check_output(job.output), "choose another output folder")
            except (VolumeError, OSError) as error:
                report = ScanReport(job.name, job.output, self._outcomes(scan_prompts, "failed", str(error)))
            else:
                if job.output.exists() and not self.overwrite:
                    message = f"{job.output} exists (--overwrite redoes it)."
                    report = ScanReport(job.name, job.output, self._outcomes(scan_prompts, "skipped", message))
            planned.append((job, report))
        return planned

    def finish_planned(self, job: ScanJob, report: ScanReport) -> None:
        """Count a scan the plan refused or skipped as done: ``on_prompt`` sees its rows, then :meth:`finish`."""
        for prompt in job.prompts:
            self.on_prompt(prompt)
        self.finish(report)

    def process_scan(self, job: ScanJob) -> ScanReport:
        """Segment one scan: read it, window it, share a feature cache per window among its rows, segment every
        row, compose the label map and write it atomically. The one unit of work, in this process or on a Ray
        worker; a row's failure is its outcome, and the model is loaded on the first call."""
        self.predictor()  # errors here (no weights) stop the whole batch
        started = time.perf_counter()
        report = ScanReport(job.name, job.output, self._segment_scan(job.image, job.prompts, job.output))
        report.seconds = time.perf_counter() - started
        for outcome in report.outcomes:
            outcome.scan_seconds = report.seconds
        return report

    def finish(self, report: ScanReport) -> None:
        """Count a scan as done: its outcomes join ``outcomes`` and ``on_scan`` sees its report."""
        self.outcomes += report.outcomes
        self.on_scan(report)

    def _outcome(self, prompt: Prompt, status: str, message: str = "") -> Outcome:
        return Outcome(prompt.row, display_path(prompt.image, self.images), prompt.label, status, message)

    def _outcomes(self, prompts: Sequence[Prompt], status: str, message: str) -> List[Outcome]:
        return [self._outcome(prompt, status, message) for prompt in prompts]

    def _all(self, prompts: Sequence[Prompt], status: str, message: str) -> List[Outcome]:
        """The outcomes of prompts done at once, each shown to ``on_prompt``."""
        for prompt in prompts:
            self.on_prompt(prompt)
        return self._outcomes(prompts, status, message)

    def _segment_scan(self, image: Path, prompts: Sequence[Prompt], output: Path) -> List[Outcome]:
        notes: List[str] = []  # which DICOM series of a folder was read
        try:
            volume, geometry = read_scan(image, self.nan_as, on_note=notes.append)
        except (ValueError, OSError) as error:
            return self._all(prompts, "failed", str(error))
        regions: Dict[Prompt, Region] = {}
        outcomes = {prompt: self._outcome(prompt, "failed") for prompt in prompts}
        for window_choice, group in group_in_order(prompts, lambda prompt: prompt.window).items():
            try:
                windowed = window_choice.apply(volume)
            except ValueError as error:
                for prompt in group:
                    outcomes[prompt].message = f"window {window_choice}: {error}"
                    self.on_prompt(prompt)
                continue
            for stack, stack_group in group_in_order(group, lambda prompt: prompt.stack).items():
                stacked = stack.to_stack(windowed)  # the scan's array itself for boxes (slices along K)
                self._segment_together(stack_group, stacked, volume.shape, regions, outcomes)
        self._compose_and_write(volume.shape, regions, outcomes, geometry, output)
        for outcome in outcomes.values():
            outcome.message = " ".join(notes + [outcome.message]).strip()
        return list(outcomes.values())

    def _segment_together(self, prompts: Sequence[Prompt], stacked: np.ndarray, scan_shape: Tuple[int, int, int],
                          regions: Dict[Prompt, Region], outcomes: Dict[Prompt, Outcome]) -> None:
        """Rows on one windowed stack of slices in one pass, a session each sharing one feature cache (each slice
        encoded once for all of them); their masks on the scan's grid. A row that cannot be used, or whose
        steps fail, fails alone."""
        started = time.perf_counter()
        objects = {}
        for prompt in prompts:
            try:
                objects[prompt] = _row_steps(prompt, stacked, scan_shape)
            except ROW_ERRORS as error:
                outcomes[prompt].message = str(error)
        errors: Dict[Prompt, Exception] = {}
        tracked = self._predictor.segment_objects(stacked, objects, FeatureCache(stacked, self.cache_slices),
                                                  errors=errors) if objects else {}
        seconds = time.perf_counter() - started
        for prompt in prompts:
            outcome = outcomes[prompt]
            outcome.seconds = seconds
            if prompt in errors:
                outcome.message = str(errors[prompt]) or type(errors[prompt]).__name__
            elif prompt in tracked:
                found = tracked[prompt]
                regions[prompt] = found.on_grid(prompt.stack, stacked.shape)
                outcome.status, outcome.message = "ok", " ".join(map(str, found.stops))
            self.on_prompt(prompt)

    def _compose_and_write(self, shape, regions: Dict[Prompt, Region], outcomes: Dict[Prompt, Outcome],
                           geometry, output: Path) -> None:
        if not regions:
            return
        ordered = sorted(regions, key=lambda prompt: prompt.row)
        label_map, lost = compose_labels(shape, [(prompt.label, regions[prompt]) for prompt in ordered])
        try:
            write_mask(output, label_map, geometry)
        except (ValueError, OSError) as error:
            for prompt in ordered:
                outcomes[prompt].status, outcomes[prompt].message = "failed", str(error)
            return
        for prompt, lost_voxels in zip(ordered, lost):
            region, outcome = regions[prompt], outcomes[prompt]
            outcome.output, outcome.voxels, outcome.slices = str(output), region.voxels, region.slices
            outcome.overlap_voxels = lost_voxels
            if region.voxels == 0:
                outcome.message = "the mask is empty."


def one_object_steps(document: SessionDocument):
    """The numbered steps of a session file's one object; ValueError with a sentence when it names several."""
    objects = object_steps(document.steps)
    if len(objects) > 1:
        raise ValueError(f"the session file names objects {', '.join(map(str, objects))}; a row is one structure: "
                         "give each object a row (and label) of its own.")
    return next(iter(objects.values()))


def _row_steps(prompt: Prompt, stacked: np.ndarray, scan_shape: Tuple[int, int, int]):
    """A row's steps, numbered, checked on its stack of slices: its session file's (one object), or its box
    propagated. ValueError with a sentence when they cannot be used."""
    if prompt.session is not None:
        document = read_session(prompt.session)
        document.check_size(scan_shape)
        check_steps(document.steps, stacked)
        return one_object_steps(document)
    propagate = {"propagate": prompt.direction}
    if prompt.slice_range is not None:
        propagate["range"] = list(prompt.slice_range)
    steps = [{"slice": prompt.key_slice, "box": list(prompt.box)}, propagate]
    check_steps(steps, stacked, name_steps=False)
    return list(enumerate(steps, start=1))


def read_summary(path: Path) -> List[Outcome]:
    """The outcomes of an earlier run's summary CSV at ``path`` (none when there is no file), for
    :func:`merge_outcomes`; TableError when the file is not such a summary (it would be replaced by one)."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        with open(path, newline="", encoding="utf-8-sig") as stream:
            reader = csv.DictReader(stream)
            columns = reader.fieldnames or []
            if not set(SUMMARY_KEY_COLUMNS) <= set(columns):
                found = ", ".join(columns) or "none"
                raise TableError(
                    f"{path} exists and is not the summary of a batch (its columns are {found}); the summary of a "
                    "resumed batch is merged into it, so name another --summary or move that file.")
            return [_summary_outcome(path, reader.line_num, cells) for cells in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise TableError(f"Cannot read the earlier summary {path}: {error}") from error


def _summary_outcome(path: Path, line: int, cells: Dict[str, str]) -> Outcome:
    values: Dict[str, object] = {}
    for column in fields(Outcome):
        text = cells.get(column.name) or ""
        try:
            if column.name in ("row", "label"):
                values[column.name] = int(text) if text else None
            elif column.type in ("int", "float"):
                values[column.name] = (int if column.type == "int" else float)(text or 0)
            else:
                values[column.name] = text
        except ValueError:
            raise TableError(f"The earlier summary {path}, line {line}: {column.name} {text!r} is not a number; "
                             "name another --summary or move that file.") from None
    return Outcome(**values)


def merge_outcomes(previous: Sequence[Outcome], outcomes: Sequence[Outcome]) -> List[Outcome]:
    """A resumed run's summary: this run's outcomes, except that a row skipped because its scan's output exists
    keeps what the earlier run said of it (its figures), and the earlier run's rows this run has no outcome for
    (not reached before a cancel, or no longer in the table) stay. One outcome per (table line, image)."""
    def key(outcome: Outcome) -> Tuple[Optional[int], str]:
        return outcome.row, outcome.image

    merged = {key(outcome): outcome for outcome in previous}
    for outcome in outcomes:
        if outcome.status != "skipped" or key(outcome) not in merged:
            merged[key(outcome)] = outcome
    return list(merged.values())


def write_summary(path: Path, outcomes: Sequence[Outcome]) -> None:
    """The summary CSV: one line per outcome, in table order (rows that are not prompts last)."""
    ordered = sorted(outcomes, key=lambda outcome: (outcome.row is None, outcome.row or 0))
    rows = []
    for outcome in ordered:
        cells = asdict(outcome)
        cells["seconds"], cells["scan_seconds"] = f"{outcome.seconds:.3f}", f"{outcome.scan_seconds:.3f}"
        rows.append([cells[column] for column in SUMMARY_COLUMNS])
    write_csv_atomically(Path(path), SUMMARY_COLUMNS, rows)

"""The ``medsam2`` command line."""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import math

from .. import __version__
from ..inference.early_stop import DEFAULT_ABSENT_SLICES
from ..inference.predictor import PromptError, planned_slices
from ..inference.preprocessing import CT_WINDOW_PRESETS
from ..model.checkpoint import CheckpointError
from ..model.config import ConfigError
from ..model.precision import PRECISIONS
from ..inference.session_file import SessionFileError
from ..model_catalogue import CATALOGUE, DEFAULT_MODEL, MODEL_NAMES, CatalogueModel, catalogue_model
from ..weights import DownloadError, cache_directory
from ..atomic import FileUses, check_writable
from .volume_io import VolumeError, check_output, mask_formats

# Errors that carry a sentence for the user; anything else is a bug and keeps its traceback.
USER_ERRORS = (CheckpointError, ConfigError, DownloadError, PromptError, SessionFileError, VolumeError, ValueError,
               OSError)


MIB = 2**20
# The package is not on PyPI yet: its Ray extra installs from a checkout.
RAY_INSTALL = "pip install ray, or in a checkout of this project pip install -e '.[ray]'"


class ProgressBar:
    """Progress on stderr, as a context manager that ends its line on leaving (an error or an early stop then
    starts on a line of its own).

    On a terminal: one line redrawn in place (bar, items done, seconds per item: a slice unless ``unit`` says
    otherwise). In a log (the stream is not a terminal): no carriage returns, one line each time another tenth
    of the items is done."""

    TENTHS = 10

    def __init__(self, total: int, label: str, stream=None, width: int = 30, unit: str = "slice") -> None:
        self.total, self.label, self.width, self.unit = total, label, width, unit
        self.stream = stream or sys.stderr
        self.terminal = self.stream.isatty()
        self.done = 0
        self.started = time.perf_counter()
        self._line = ""  # the bar drawn last on a terminal, "" once its line is ended

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exception) -> None:
        self.end_line()

    def advance(self, _item: Optional[object] = None) -> None:
        self.update(self.done + 1)

    def update(self, done: int) -> None:
        """``done`` items of ``total`` are done."""
        previous, self.done = self.done, done
        if self.terminal:
            self._draw()
            if self.done >= self.total:
                self.end_line()
        elif self.done >= self.total or self._share(self.done, self.TENTHS) > self._share(previous, self.TENTHS):
            percent = self._share(self.done, 100)
            self.stream.write(f"{self.label} {self.done}/{self.total} ({percent}%, {self._pace()})\n")
        self.stream.flush()

    def note(self, message: str) -> None:
        """A line of its own above the bar (which is drawn again below it while unfinished)."""
        if not self.terminal:
            self.stream.write(f"{message}\n")
        else:
            self.stream.write(f"\r{message.ljust(len(self._line))}\n")
            if 0 < self.done < self.total:
                self._draw()
        self.stream.flush()

    def end_line(self) -> None:
        """End the bar's line if it is on one (further output then starts on a line of its own)."""
        if self._line:
            self.stream.write("\n")
            self.stream.flush()
            self._line = ""

    def _share(self, done: int, parts: int) -> int:
        """How many whole ``parts``-ths of the total ``done`` items are."""
        return done * parts // max(self.total, 1)

    def _pace(self) -> str:
        return f"{(time.perf_counter() - self.started) / max(self.done, 1):.2f} s/{self.unit}"

    def _draw(self) -> None:
        filled = self._share(min(self.done, self.total), self.width)
        bar = "#" * filled + "." * (self.width - filled)
        self._line = f"{self.label} [{bar}] {self.done}/{self.total} ({self._pace()})"
        self.stream.write(f"\r{self._line}")


# -- argument types: a bad value is refused by argparse with our sentence (exit status 2) -------------------


def finite_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def non_negative_number(text: str) -> float:
    value = finite_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative; give a distance of 0 or more millimetres")
    return value


def whole_number(text: str, lowest: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < lowest:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: give a whole number at least {lowest}")
    return value


def slice_count(text: str) -> int:
    return whole_number(text, 1)


def whole_number_or_zero(text: str) -> int:
    return whole_number(text, 0)


def label_value(text: str) -> int:
    return whole_number(text, 1)  # 0 is the background


def worker_count(text: str) -> int:
    return whole_number(text, 1)


def resource_amount(text: str) -> float:
    value = finite_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def add_model_arguments(parser: argparse.ArgumentParser, volume: bool = True) -> None:
    """The model and how it computes; ``volume`` False: for video, where no hole filling or component choice
    applies by default and tracking runs to the last frame unless told to stop early."""
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--model", choices=MODEL_NAMES, default=None,
                         help=f"a published MedSAM2 model, from {cache_directory()} (default: {DEFAULT_MODEL.name}; "
                              "medsam2 models lists them, medsam2 download --model NAME gets one)")
    weights.add_argument("--checkpoint", type=Path, default=None,
                         help="a checkpoint file you have instead; its architecture (MedSAM2 or Efficient MedSAM2) "
                              "is recognised from its contents")
    parser.add_argument("--config", type=Path, default=None,
                        help="official model yaml for another architecture (default: MedSAM2 sam2.1_hiera_t512)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto",
                        help="where the network runs (default: auto, a CUDA or Apple GPU when there is one, else cpu)")
    if volume:
        parser.add_argument("--no-fill-holes", action="store_true",
                            help="do not fill background holes of <= 8 pixels in each slice's low-resolution mask")
        parser.add_argument("--all-components", action="store_true",
                            help="keep every connected component instead of the largest one")
    # Defaults None: a session file's options apply where the command line names none (computing_options).
    parser.add_argument("--precision", choices=PRECISIONS, default=None,
                        help="float32: exact; bfloat16: about 1.6x faster where the hardware has it, masks nearly "
                             "identical; auto (default): bfloat16 on CUDA and on CPUs with AVX-512 BF16 or AMX")
    stop = parser.add_mutually_exclusive_group()
    if volume:
        stop.add_argument("--early-stop", type=int, default=None, metavar="N",
                          help="end each direction after N slices in a row on which the model sees no object "
                               f"(default {DEFAULT_ABSENT_SLICES})")
        stop.add_argument("--no-early-stop", action="store_true", help="track every slice to the end")
    else:
        stop.add_argument("--early-stop", type=int, default=None, metavar="N",
                          help="stop tracking an object after N frames in a row on which the model sees it not "
                               "(default: track every object to the last frame, as the official script)")
        stop.add_argument("--no-early-stop", action="store_true", help="track to the last frame (the default)")


def add_mirror_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mirror", default=os.environ.get("HF_ENDPOINT", "https://huggingface.co"),
                        help="a Hugging Face mirror to download from (default: $HF_ENDPOINT or huggingface.co)")


def add_window_arguments(parser: argparse.ArgumentParser) -> None:
    windows = parser.add_mutually_exclusive_group()
    windows.add_argument("--window", nargs=2, type=finite_number, metavar=("LO", "HI"),
                         help="clip intensities to [LO, HI] and scale to 0..255 (e.g. CT -160 240)")
    windows.add_argument("--ct-preset", choices=sorted(CT_WINDOW_PRESETS), help="a named CT window")
    windows.add_argument("--mr-percentiles", action="store_true",
                         help="window to the 0.5-99.5 percentiles of the non-zero voxels (MR)")
    windows.add_argument("--no-window", action="store_true",
                         help="use the intensities as they are (they must be whole numbers in 0..255); the default")
    parser.add_argument("--nan-as", type=finite_number, default=None, metavar="VALUE",
                        help="replace NaN and infinite voxels with VALUE before windowing (without it, a volume "
                             "that has any is refused)")


def window_choice(args: argparse.Namespace):
    """The windowing the command's arguments ask for, as a :class:`~MedSAM2Lib.inference.preprocessing.Windowing`."""
    from ..inference.preprocessing import Windowing

    return given_window(args) or Windowing("none")


def given_window(args: argparse.Namespace):
    """The windowing a window option names, or None when the command has none."""
    from ..inference.preprocessing import Windowing

    if args.window:
        lower, upper = args.window
        if not lower < upper:
            raise ValueError(f"--window {lower:g} {upper:g}: LO must be below HI.")
        return Windowing("window", (lower, upper))
    if args.ct_preset:
        return Windowing(args.ct_preset)
    if args.mr_percentiles or args.no_window:
        return Windowing("mr-percentiles" if args.mr_percentiles else "none")
    return None


def computing_options(args: argparse.Namespace, saved: Mapping[str, Any]) -> Dict[str, Any]:
    """precision, early_stop, fill_holes, keep_largest_component: the command line's where it names them, else
    a session file's ``options`` (``saved``), else the defaults."""
    if args.no_early_stop:
        early_stop = None
    elif args.early_stop is not None:
        early_stop = args.early_stop
    else:
        early_stop = saved.get("early_stop", DEFAULT_ABSENT_SLICES)
    return {
        "precision": args.precision or saved.get("precision", "auto"),
        "early_stop": early_stop,
        "fill_holes": False if args.no_fill_holes else saved.get("fill_holes", True),
        "keep_largest_component": False if args.all_components else saved.get("keep_largest_component", True),
    }


def model_files(args: argparse.Namespace) -> FileUses:
    """The files of a command, starting with the model's that it reads: the checkpoint and the configuration."""
    files = FileUses()
    files.read("the checkpoint", chosen_checkpoint(args))
    if args.config is not None:
        files.read("the model configuration", args.config)
    return files


def build_predictor(args: argparse.Namespace, saved_options: Optional[Mapping[str, Any]] = None,
                    options: Optional[Mapping[str, Any]] = None):
    """Load the model named by the command's arguments into a VolumePredictor (``saved_options``: a session
    file's, for what the arguments leave open; ``options``: the predictor's options, instead of both)."""
    from ..model.checkpoint import load_model
    from ..model.config import load_config
    from ..inference.predictor import VolumePredictor, select_device

    config = load_config(args.config) if args.config else None  # None: recognised from the checkpoint
    device = select_device(args.device)
    model = load_model(chosen_checkpoint(args), config, device)
    return VolumePredictor(model, **(options if options is not None else computing_options(args, saved_options or {})))


def chosen_model(args: argparse.Namespace) -> CatalogueModel:
    return catalogue_model(args.model) if args.model else DEFAULT_MODEL


def chosen_checkpoint(args: argparse.Namespace) -> Path:
    """--checkpoint, or the file of --model (default: the default model) in the weights cache."""
    return args.checkpoint if args.checkpoint is not None else chosen_model(args).path()


def segment_session(args: argparse.Namespace):
    """What ``segment`` runs, as a session file's content: the file of ``--prompts``, or the box (and points)
    on one slice, propagated, in the array's own order."""
    from ..inference.session_file import SessionDocument, read_session

    if args.prompts is not None:
        if args.slice is not None or args.box is not None or args.point:
            raise PromptError("Give either --prompts or --slice with --box/--point, not both.")
        return read_session(args.prompts)
    if args.slice is None or (args.box is None and not args.point):
        raise PromptError("Give --slice K with --box X0 Y0 X1 Y1 (and/or --point X Y LABEL), or --prompts FILE.")
    step = {"slice": args.slice}
    if args.box is not None:
        step["box"] = list(args.box)
    if args.point:
        step["points"] = [[x, y] for x, y, _ in args.point]
        step["labels"] = [label for _, _, label in args.point]  # checked as given: 0.9 is refused, not truncated
    return SessionDocument(args.image, [step, {"propagate": args.direction}])


def command_segment(args: argparse.Namespace) -> int:
    from ..inference.cpu_memory import release_free_memory
    from ..inference.objects import compose_labels
    from ..inference.preprocessing import Windowing
    from ..inference.session_file import check_steps, object_steps
    from .volume_io import read_scan, write_mask

    # Everything that can be refused is refused before the model loads: the output, the scan, the prompts.
    files = model_files(args)
    files.read("the input image", args.image)
    if args.prompts is not None:
        files.read("the session file", args.prompts)
    files.write("the mask", check_output(args.output))
    document = segment_session(args)
    windowing = document.windowing(given_window(args), "the window option", Windowing("none"))
    volume, geometry = read_scan(args.image, args.nan_as, args.series,
                                 on_note=lambda note: print(f"medsam2: {note}", file=sys.stderr))
    stack = document.stack_of(windowing.apply(volume))  # a session file's stack: slices along any axis
    shape = volume.shape
    del volume  # the scan's own values (an int16 CT: 2 bytes a voxel, 150 MiB for 300 x 512 x 512) go once windowed
    steps = document.steps
    check_steps(steps, stack, name_steps=args.prompts is not None)
    objects = object_steps(steps)  # several objects (session files): one pass, one session each
    predictor = build_predictor(args, document.options)
    # Image features are kept for a later step that returns to a slice (a correction, a second propagation, or
    # another object); one object whose steps end in their only propagation never does, so each slice's features
    # go once used (memory flat in depth).
    single_pass = len(objects) == 1 and [number for number, step in enumerate(steps) if "propagate" in step] == [
        len(steps) - 1]
    cache = predictor.single_pass_cache(stack) if single_pass else None
    if args.prompts is not None:
        progress = ProgressBar(sum(map(len, objects.values())), "Session", unit="step")
    else:  # an early stop ends the bar before its total
        progress = ProgressBar(len(planned_slices(stack.shape[0], args.slice, args.direction, None)), "Propagating")
    counts_steps = args.prompts is not None

    def advance(_object_id, _step, result) -> None:  # result None: a step is done, else a slice
        if (result is None) == counts_steps:
            progress.advance()

    with progress:
        tracked = predictor.segment_objects(stack, objects, cache, on_result=advance)
    for object_id, found in tracked.items():
        for stop in found.stops:
            print(f"Object {object_id}: {stop}" if len(tracked) > 1 else stop, file=sys.stderr)
    # The model and the stack go, with the heap's free pages, before the whole-volume arrays of the output come.
    stack_shape = stack.shape
    del cache, stack, predictor
    release_free_memory()
    regions = [(object_id, found.on_grid(document.stack, stack_shape)) for object_id, found in tracked.items()]
    labels, _ = compose_labels(shape, regions)
    write_mask(args.output, labels, geometry)
    objects_voxels = ", ".join(f"object {object_id}: {int((labels == object_id).sum())}" for object_id in tracked)
    print(f"Wrote {args.output}: {int((labels > 0).sum())} voxels on {int(labels.any(axis=(1, 2)).sum())} slices"
          + (f" ({objects_voxels})." if len(tracked) > 1 else "."))
    return 0


def command_video(args: argparse.Namespace) -> int:
    from ..inference.session_file import object_steps
    from ..video.frames import read_frames
    from ..video.tracking import (VideoOptions, check_output_folder, planned_results, png_path, read_prompts,
                                  read_session_prompts, track, track_session, write_result)

    # Everything that can be refused is refused before the model loads: the output, the frames, the prompts.
    check_output_folder(args.output, tuple(path for path in (args.frames, args.masks) if path is not None))
    if args.early_stop is not None and args.early_stop < 1:
        raise ValueError(f"--early-stop {args.early_stop}: give at least 1 frame.")
    if args.prompts is not None and (args.use_all_masks or args.track_objects_appearing_later):
        raise ValueError("--use-all-masks and --track-objects-appearing-later choose among the masks of --masks; a "
                         "session file (--prompts) names its prompts itself.")
    options = VideoOptions(args.use_all_masks, args.per_object_png, args.track_objects_appearing_later,
                           args.score_thresh)
    frames = read_frames(args.frames)
    if args.prompts is not None:
        document = read_session_prompts(args.prompts, frames)
        objects = object_steps(document.steps)
        files = model_files(args)
        files.read("the session file", args.prompts)
        for mask in document.mask_files:
            files.read("a mask of the session file", mask)
        for name in frames.names:
            for object_id in (objects if args.per_object_png else [None]):
                files.write(f"the PNG of frame {name}", png_path(args.output, name, object_id))
    else:
        prompts = read_prompts(args.masks, frames, options)
    predictor = build_predictor(args, options={
        "precision": args.precision or "auto",
        "early_stop": args.early_stop,
        # The official script's post-processing switch: hole filling, and prompts entering the memory binarised.
        "fill_holes": args.apply_postprocessing,
        "binarize_prompt_memory": args.apply_postprocessing,
        "keep_largest_component": False,
    })
    if args.prompts is not None:
        with ProgressBar(sum(map(len, objects.values())), "Session", unit="step") as progress:
            result = track_session(predictor, frames, document, options, args.early_stop,
                                   on_step=lambda *_: progress.advance())
        palette = None
    else:
        progress = ProgressBar(planned_results(frames, prompts), "Tracking", unit="frame")
        result = track(predictor, frames, prompts, options, args.early_stop, on_result=lambda *_: progress.advance())
        if 0 < progress.done < progress.total:  # an early stop: end the bar's line
            progress.stream.write("\n")
        palette = prompts.palette
    written = write_result(args.output, frames, result, palette)
    print(f"Wrote {len(written)} mask PNGs of {len(result.object_ids)} objects "
          f"({', '.join(map(str, result.object_ids))}) to {args.output}.")
    return 0


def command_batch(args: argparse.Namespace) -> int:
    from .batch import (BatchRunner, merge_outcomes, read_deeplesion_table, read_prompt_table, read_summary,
                        write_summary)

    files = model_files(args)
    files.read("the prompt table", args.prompts)

    if not args.images.is_dir():
        raise VolumeError(f"The images folder {args.images} does not exist or is not a folder.")
    if args.out.exists() and not args.out.is_dir():
        raise VolumeError(f"The output folder {args.out} is a file; name a folder for the label maps.")

    if args.format == "deeplesion":
        prompts, outcomes = read_deeplesion_table(args.prompts, args.images)
    else:
        prompts, outcomes = read_prompt_table(args.prompts, args.images, window_choice(args))
    if args.ray is not None:
        runner, progress = _ray_batch_runner(args, len({prompt.image for prompt in prompts}))
    elif (args.workers, args.cpus_per_worker, args.gpus_per_worker) != (None, None, None):
        raise ValueError("--workers, --cpus-per-worker and --gpus-per-worker go with --ray.")
    else:
        progress = ProgressBar(len(prompts), "Prompts", unit="prompt")
        runner = BatchRunner(lambda: build_predictor(args), args.images, args.out, args.overwrite, args.cache_slices,
                             on_prompt=progress.advance, on_scan=lambda report: _report_scan(report, progress),
                             nan_as=args.nan_as)
    planned = runner.plan(prompts, files)  # a scan whose label map would replace a file of the batch fails
    summary = files.write("the summary", check_writable(args.summary or args.out / "summary.csv"))
    earlier = read_summary(summary)  # a resumed batch: the skipped scans keep the figures of the run that made them
    for outcome in outcomes:  # the table's unusable rows, once the batch as a whole is accepted
        print(f"medsam2: {_where(outcome)}: {outcome.status}: {outcome.message}", file=sys.stderr)
    try:
        with progress:
            runner.run_plan(planned)
    except KeyboardInterrupt:
        write_summary(summary, merge_outcomes(earlier, outcomes + runner.outcomes))
        print(f"medsam2: cancelled; finished outputs are kept and {summary} lists them.", file=sys.stderr)
        return 130
    outcomes += runner.outcomes
    write_summary(summary, merge_outcomes(earlier, outcomes))
    counts = {status: sum(outcome.status == status for outcome in outcomes) for status in ("ok", "skipped", "failed")}
    print(f"{counts['ok']} prompts segmented, {counts['skipped']} skipped, {counts['failed']} failed. Summary: {summary}")
    return 1 if counts["failed"] else 0


def _ray_batch_runner(args: argparse.Namespace, scans: int):
    """``--ray``: the Ray runner, with a bar over scans (the single-process bar counts prompts)."""
    if importlib.util.find_spec("ray") is None:  # not imported here: a local Ray is set up before its import
        raise ValueError(f"--ray needs Ray: {RAY_INSTALL}.")
    from .ray_batch import LOCAL, RayBatchRunner, RayOptions

    options = RayOptions(None if args.ray == LOCAL else args.ray, args.workers or 1, args.cpus_per_worker or 1.0,
                         args.gpus_per_worker or 0.0)
    progress = ProgressBar(scans, "Scans", unit="scan")

    def on_scan(report) -> None:
        progress.advance()
        _report_scan(report, progress)

    runner = RayBatchRunner(functools.partial(build_predictor, args), args.images, args.out, options, progress.note,
                            overwrite=args.overwrite, cache_slices=args.cache_slices, on_scan=on_scan,
                            nan_as=args.nan_as)
    return runner, progress


def _where(outcome) -> str:
    return f"{outcome.image}, line {outcome.row}" if outcome.row is not None else outcome.image


def _report_scan(report, progress: ProgressBar) -> None:
    """Per scan: its failures, then one line with its timing."""
    for outcome in report.outcomes:
        if outcome.status == "failed":
            progress.note(f"medsam2: {_where(outcome)}: failed: {outcome.message}")
    done = sum(outcome.status == "ok" for outcome in report.outcomes)
    if all(outcome.status == "skipped" for outcome in report.outcomes):
        progress.note(f"{report.name}: skipped, {report.output} exists")
    else:
        progress.note(f"{report.name}: {done}/{len(report.outcomes)} prompts in {report.seconds:.1f} s"
                      + (f" -> {report.output}" if done else "") + (f" [{report.worker}]" if report.worker else ""))


def command_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import EMPTY_PAIR, format_table, mean_scores, paired_files, score_pair, write_scores_csv

    check_writable(args.csv)
    pairs = paired_files(args.prediction, args.reference)
    files = FileUses()
    for _, prediction, reference in pairs:
        files.read("the prediction", prediction)
        files.read("the reference", reference)
    files.write("the scores", args.csv)
    scores = []
    for case, prediction, reference in pairs:
        scores += score_pair(case, prediction, reference, args.labels, args.tolerance)
    print(f"Dice and normalised surface Dice at {args.tolerance:g} mm")
    print(format_table(scores + mean_scores(scores)))
    write_scores_csv(args.csv, scores)
    print(f"Wrote {args.csv}")
    for score in scores:
        if score.status != "ok":
            print(f"medsam2: {score.case}: {score.status}", file=sys.stderr)
    return 1 if any(score.status not in ("ok", EMPTY_PAIR) for score in scores) else 0


def command_demo(args: argparse.Namespace) -> int:
    from ..model.checkpoint import CheckpointError
    from .demo import CREDIT, DEMO_PROMPT, check_demo_outputs, confirm_download, missing_weights_message, run_demo

    check_demo_outputs(args.out, model_files(args))  # before any download
    checkpoint, model = chosen_checkpoint(args), chosen_model(args)
    if not checkpoint.is_file():
        # Only a catalogue model's cache path is filled in; a --checkpoint the user named is theirs.
        if args.checkpoint is not None or not confirm_download(checkpoint, args.yes, model=model):
            raise CheckpointError(missing_weights_message(checkpoint, model))
        try:
            download_weights(checkpoint, args.mirror, model)
        except DownloadError as error:
            raise DownloadError(f"{error}\n{missing_weights_message(checkpoint, model)}") from error
    predictor = build_predictor(args)
    first, last = DEMO_PROMPT.slice_range
    with ProgressBar(last - first + 1, f"Segmenting the {DEMO_PROMPT.structure}") as progress:
        result = run_demo(predictor, args.out, on_slice=progress.advance)
    print(f"Mask: {result.mask_path}")
    print(f"Picture: {result.png_path}")
    print(f"The {DEMO_PROMPT.structure}: {result.voxels} voxels ({result.millilitres:.1f} ml) on slices "
          f"{result.slices[0]}..{result.slices[1]}, from a box on slice {DEMO_PROMPT.key_slice}.")
    print(CREDIT)
    return 0


def prepare_web(args: argparse.Namespace):
    """``medsam2 web``'s options and its model's: everything that can be refused here is refused before the
    server starts (exposure, data folder, image, checkpoint, --out, session file)."""
    from ..inference.session_file import read_session
    from ..resources import resource_path
    from ..web.app import WebOptions, check_exposure
    from ..web.data_folder import DataFolder, check_image_in
    from ..web.model import ModelOptions
    from .demo import missing_weights_message

    host = check_exposure(args.host, args.token)
    data = DataFolder(args.data) if args.data is not None else None
    image = check_image_in(data, args.image) or resource_path("mni152_t1_demo.nii.gz")
    if not image.exists():
        raise VolumeError(f"No image at {image}: give a volume file or a folder of DICOM files.")
    checkpoint = chosen_checkpoint(args)
    if not checkpoint.is_file():
        from ..model.checkpoint import CheckpointError

        raise CheckpointError(missing_weights_message(checkpoint, chosen_model(args)))
    check_writable(args.out / "medsam2-web-check")  # Save writes there: refused now, not after an hour of work
    session = read_session(args.prompts) if args.prompts is not None else None
    options = WebOptions(image, args.out, args.port, host, args.token, data, session)
    # A session file's options apply where the command line names none, as for medsam2 segment --prompts.
    return options, ModelOptions.from_arguments(args, session.options if session is not None else None)


def command_web(args: argparse.Namespace) -> int:
    try:
        from ..web.app import MedSAM2WebApp
    except ImportError as error:  # the optional extra is missing
        raise ValueError(f"medsam2 web needs trame-slicer ({error}): pip install 'medsam2-slicer[web]'.") from None
    options, model = prepare_web(args)
    app = MedSAM2WebApp(options, model)  # refuses a session file that does not fit the image
    print(f"MedSAM2 in the browser: {app.url(args.port)} (Ctrl+C stops; Save writes into {args.out})", flush=True)
    try:
        app.start()  # until Ctrl+C or the server stops
    finally:
        app.close()
    return 0


def command_download(args: argparse.Namespace) -> int:
    model = chosen_model(args)
    path = download_weights(check_writable(args.output or model.path()), args.mirror, model)
    print(f"Verified MedSAM2 weights '{model.name}' ({model.filename}, published SHA256) at {path}")
    return 0


def command_models(args: argparse.Namespace) -> int:
    """The catalogue, with what is in the weights cache."""
    print(f"MedSAM2 models (weights folder: {cache_directory()}):")
    for model in CATALOGUE:
        here = "downloaded" if model.is_downloaded() else "not downloaded"
        default = ", the default" if model == DEFAULT_MODEL else ""
        print(f"  {model.name:<17} {model.architecture:<31} about {model.approximate_mb:>3} MB  {here}{default}")
        print(f"  {'':<17} {model.trained_for}")
    print("Get one with: medsam2 download --model NAME; use it with --model NAME.")
    return 0


def download_weights(destination: Path, mirror: str, model: CatalogueModel = DEFAULT_MODEL) -> Path:
    """The verified download with its progress on stderr (in MiB; the size is known once the download starts)."""
    from ..weights import CLI_ALTERNATIVE, download_checkpoint

    with ProgressBar(0, "Downloading MedSAM2 weights", unit="MiB") as progress:

        def report(done: int, total: int) -> None:
            progress.total = -(-total // MIB)
            if -(-done // MIB) != progress.done:
                progress.update(-(-done // MIB))

        return download_checkpoint(destination, progress=report, source=model.source(mirror),
                                   alternative=CLI_ALTERNATIVE)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsam2", description="MedSAM2 3D segmentation from a box on one slice.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the version and exit")
    commands = parser.add_subparsers(dest="command", required=True)

    segment = commands.add_parser("segment", help="segment one structure from a box (or points, or a session "
                                                  "file of prompts on several slices, of one or several objects)")
    segment.add_argument("image", type=Path, help=".npz with 'imgs' (D, H, W), a volume file SimpleITK reads, or a "
                                                  "folder of DICOM files (the series with the most slices)")
    segment.add_argument("--series", default=None, metavar="UID",
                         help="with a DICOM folder: the Series Instance UID of the series to read")
    segment.add_argument("--slice", type=int, default=None, help="index K of the prompted slice along the first axis")
    segment.add_argument("--box", nargs=4, type=float, default=None, metavar=("X0", "Y0", "X1", "Y1"),
                         help="box in pixels of slice K: x = column, y = row")
    segment.add_argument("--point", nargs=3, type=float, action="append", default=[], metavar=("X", "Y", "LABEL"),
                         help="a point on slice K (LABEL 1 object, 0 background); repeat for more")
    segment.add_argument("--prompts", type=Path, default=None, metavar="SESSION.json",
                         help="a session file: prompts on any slices, corrections and propagations, run in order "
                              "(on the stack of slices and with the window it names, as a file saved from a "
                              "Slicer segment does); steps naming objects (\"object\": 2) segment several lesions "
                              "in one pass into one label map")
    segment.add_argument("-o", "--output", type=Path, required=True,
                         help=f"the mask: {mask_formats()} (.npz: key 'mask'), written with the input's geometry; an "
                              "existing file is replaced only once the new one is complete")
    segment.add_argument("--direction", choices=["both", "forward", "backward"], default="both",
                         help="propagate to both ends of the volume (default), or only towards higher (forward) or "
                              "lower (backward) slice numbers")
    add_window_arguments(segment)
    add_model_arguments(segment)
    segment.set_defaults(run=command_segment)

    batch = commands.add_parser("batch", help="segment the prompts of a table: one label map per scan")
    batch.add_argument("prompts", type=Path, help="CSV: image, slice, x0, y0, x1, y1 [, window, label, direction, "
                                                  "first_slice, last_slice]; or DeepLesion's info table")
    batch.add_argument("--images", type=Path, required=True, help="folder the table's image paths are relative to")
    batch.add_argument("--out", type=Path, required=True, help="folder for the label maps and the summary")
    batch.add_argument("--format", choices=["table", "deeplesion"], default="table",
                       help="deeplesion: DeepLesion_Dataset_Info.csv and its <case>_<first>-<last>.nii.gz volumes")
    batch.add_argument("--overwrite", action="store_true", help="segment scans whose output exists again")
    batch.add_argument("--summary", type=Path, default=None, help="summary CSV (default: OUT/summary.csv)")
    batch.add_argument("--cache-slices", type=slice_count, default=None, metavar="N",
                       help="keep the features of at most N slices per scan (default: what fits in 512 MiB or a "
                            "quarter of the available memory; about 4 MB a slice in float32, 2 MB in bfloat16)")
    cluster = batch.add_argument_group(f"Ray ({RAY_INSTALL})")
    cluster.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                         help="segment the scans on Ray workers: alone (or 'local'), a Ray started on this machine, "
                              "on loopback only; else an existing cluster: auto, HOST:PORT or ray://HOST:PORT")
    cluster.add_argument("--workers", type=worker_count, metavar="N", help="with --ray: N workers (default 1)")
    cluster.add_argument("--cpus-per-worker", type=resource_amount, metavar="C",
                         help="with --ray: CPUs each worker holds (default 1; also its PyTorch threads)")
    cluster.add_argument("--gpus-per-worker", type=resource_amount, metavar="G",
                         help="with --ray: GPUs each worker holds (default 0; 0.5 puts two workers on a GPU)")
    add_window_arguments(batch)
    add_model_arguments(batch)
    batch.set_defaults(run=command_batch)

    video = commands.add_parser("video", help="track objects through video frames from masks on some frames (the "
                                              "official medsam2_infer_video.py)")
    video.add_argument("frames", type=Path,
                       help="a folder of JPEG or PNG frames, in the order of their names; or a video file "
                            "(.mp4, .avi, .mov, .mkv) with PyAV: pip install av (in a checkout: pip install -e "
                            "'.[video]')")
    prompts = video.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--masks", type=Path,
                         help="folder of label PNGs named like the frames (00000.png: one value per object), by "
                              "default only the first frame's")
    prompts.add_argument("--prompts", type=Path, metavar="SESSION.json",
                         help="a session file whose steps name frames (\"frame\": a name or an index from 0): "
                              "boxes, points, masks, corrections and propagations of one or several objects, run "
                              "in order; a PNG is written for every frame")
    video.add_argument("-o", "--output", type=Path, required=True,
                       help="folder for the label PNGs (one per frame, named like the frames, with the input "
                            "masks' palette, else DAVIS's); each file is replaced only once the new one is complete")
    video.add_argument("--use-all-masks", action="store_true",
                       help="prompt with every mask PNG named like a frame, not only the first")
    video.add_argument("--per-object-png", action="store_true",
                       help="masks in and out as one folder per object (001/00000.png, ...), 0/1 PNGs that may "
                            "overlap; without it, overlapping objects give each pixel to the higher logit")
    video.add_argument("--track-objects-appearing-later", action="store_true",
                       help="track each object from the first frame whose mask holds it (objects absent from the "
                            "first frame's mask)")
    video.add_argument("--score-thresh", type=finite_number, default=0.0, metavar="T",
                       help="a pixel belongs to an object where its logit exceeds T (default 0)")
    video.add_argument("--apply-postprocessing", action="store_true",
                       help="fill small holes and put the prompt masks into the memory binarised (the official "
                            "script's --apply_postprocessing; off by default, as there)")
    add_model_arguments(video, volume=False)
    video.set_defaults(run=command_video)

    evaluate = commands.add_parser("evaluate", help="per-label Dice and normalised surface Dice against references")
    evaluate.add_argument("prediction", type=Path, help="label map, or a folder of them")
    evaluate.add_argument("reference", type=Path,
                          help="reference label map, or a folder: each file in it is paired with the prediction "
                               "of the same relative path")
    evaluate.add_argument("--labels", nargs="+", type=label_value, default=None,
                          help="labels to score, each 1 or more (default: every label in either map)")
    evaluate.add_argument("--tolerance", type=non_negative_number, default=2.0, metavar="MM",
                          help="surface Dice tolerance in millimetres (default: 2)")
    evaluate.add_argument("--csv", type=Path, default=Path("evaluation.csv"),
                          help="where to write the scores (default: evaluation.csv)")
    evaluate.set_defaults(run=command_evaluate)

    download = commands.add_parser("download", help="download the official MedSAM2 weights, verified by SHA256")
    download.add_argument("--model", choices=MODEL_NAMES, default=None,
                          help=f"which published model (default: {DEFAULT_MODEL.name}; medsam2 models lists them)")
    download.add_argument("-o", "--output", type=Path, default=None,
                          help=f"where to save them (default: the model's file in {cache_directory()})")
    add_mirror_argument(download)
    download.set_defaults(run=command_download)

    web = commands.add_parser("web", help="segment in a web browser: slice and 3D views, box and point prompts, "
                                          "propagation, undo, save (pip install 'medsam2-slicer[web]')")
    web.add_argument("image", type=Path, nargs="?", default=None,
                     help="volume file (NRRD, NIfTI, MHA, .npz) or DICOM folder, as segment reads it (default: the "
                          "first image of --data, else the bundled demo scan)")
    web.add_argument("--data", type=Path, default=None, metavar="DIR",
                     help="a folder whose images (and DICOM folders) the page lists to choose from; nothing outside "
                          "it is opened (IMAGE, if given, must be one of them)")
    web.add_argument("--prompts", type=Path, default=None, metavar="SESSION.json",
                     help="a session file (as segment --prompts reads) to open with its segment, to go on from")
    web.add_argument("--port", type=whole_number_or_zero, default=8080, help="port to serve on (default 8080; 0: any free one)")
    web.add_argument("--host", default=None,
                     help="serve on this interface instead of 127.0.0.1 (requires --token)")
    web.add_argument("--token", default=None, help="the secret the page must present (with --host)")
    web.add_argument("--out", type=Path, default=Path("."), help="folder Save writes into (default: the current one)")
    add_model_arguments(web)
    web.set_defaults(run=command_web)
    models = commands.add_parser("models", help="list the published MedSAM2 models and which are downloaded")
    models.set_defaults(run=command_models)

    demo = commands.add_parser("demo", help="segment a ventricle on the MNI152 brain template shipped with MedSAM2Lib")
    demo.add_argument("--out", type=Path, default=Path("medsam2-demo"),
                      help="folder for the mask and the picture (default: medsam2-demo)")
    add_model_arguments(demo)
    demo.add_argument("-y", "--yes", action="store_true",
                      help="download the weights without asking when there are none (also done without a terminal)")
    add_mirror_argument(demo)
    demo.set_defaults(run=command_demo)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except USER_ERRORS as error:
        print(f"medsam2: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nmedsam2: cancelled; nothing was written.", file=sys.stderr)
        return 130


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()

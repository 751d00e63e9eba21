"""The ``medsam2`` command line."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .checkpoint import CheckpointError, default_checkpoint_path
from .config import ConfigError
from .predictor import PromptError, SliceResult, planned_slices
from .preprocessing import CT_WINDOW_PRESETS
from .volume_io import VolumeError

# Errors that carry a sentence for the user; anything else is a bug and keeps its traceback.
USER_ERRORS = (CheckpointError, ConfigError, PromptError, VolumeError, ValueError, OSError)


class ProgressBar:
    """One-line progress on stderr: bar, slices done, seconds per slice."""

    def __init__(self, total: int, label: str, stream=None, width: int = 30) -> None:
        self.total, self.label, self.width = total, label, width
        self.stream = stream or sys.stderr
        self.done = 0
        self.started = time.perf_counter()

    def advance(self, _result: Optional[SliceResult] = None) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.started
        filled = self.width * self.done // max(self.total, 1)
        self.stream.write(
            f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} "
            f"({elapsed / self.done:.2f} s/slice)"
        )
        if self.done == self.total:
            self.stream.write("\n")
        self.stream.flush()


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help=f"MedSAM2 checkpoint (default: {default_checkpoint_path()})")
    parser.add_argument("--config", type=Path, default=None,
                        help="official model yaml for another architecture (default: MedSAM2 sam2.1_hiera_t512)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    parser.add_argument("--no-fill-holes", action="store_true",
                        help="do not fill background holes of <= 8 pixels in each slice's low-resolution mask")
    parser.add_argument("--all-components", action="store_true",
                        help="keep every connected component instead of the largest one")


def add_window_arguments(parser: argparse.ArgumentParser) -> None:
    windows = parser.add_mutually_exclusive_group()
    windows.add_argument("--window", nargs=2, type=float, metavar=("LO", "HI"),
                         help="clip intensities to [LO, HI] and scale to 0..255 (e.g. CT -160 240)")
    windows.add_argument("--ct-preset", choices=sorted(CT_WINDOW_PRESETS), help="a named CT window")
    windows.add_argument("--mr-percentiles", action="store_true",
                         help="window to the 0.5-99.5 percentiles of the non-zero voxels (MR)")
    windows.add_argument("--no-window", action="store_true",
                         help="use the intensities as they are (they must be whole numbers in 0..255); the default")


def windowed(volume: np.ndarray, args: argparse.Namespace) -> np.ndarray:
    from .preprocessing import as_uint8, ct_preset_window, mr_percentile_window, window

    if args.window:
        return window(volume, *args.window)
    if args.ct_preset:
        return ct_preset_window(volume, args.ct_preset)
    if args.mr_percentiles:
        return mr_percentile_window(volume)
    return as_uint8(volume)


def build_predictor(args: argparse.Namespace):
    """Load the model named by the command's arguments into a VolumePredictor."""
    from .checkpoint import load_model
    from .config import MEDSAM2_T512, load_config
    from .predictor import VolumePredictor, select_device

    config = load_config(args.config) if args.config else MEDSAM2_T512
    device = select_device(args.device)
    model = load_model(args.checkpoint or default_checkpoint_path(), config, device)
    return VolumePredictor(model, fill_holes=not args.no_fill_holes, keep_largest_component=not args.all_components)


def command_segment(args: argparse.Namespace) -> int:
    from .volume_io import read_volume, write_mask

    volume, geometry = read_volume(args.image)
    volume = windowed(volume, args)
    predictor = build_predictor(args)
    total = len(planned_slices(volume.shape[0], args.slice, args.direction, None))
    progress = ProgressBar(total, "Propagating")
    mask = predictor.segment(volume, args.slice, args.box, args.direction, on_slice=progress.advance)
    write_mask(args.output, mask, geometry)
    print(f"Wrote {args.output}: {int(mask.sum())} voxels on {int(mask.any(axis=(1, 2)).sum())} slices.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsam2", description="MedSAM2 3D segmentation from a box on one slice.")
    commands = parser.add_subparsers(dest="command", required=True)

    segment = commands.add_parser("segment", help="segment one structure from a box on one slice")
    segment.add_argument("image", type=Path, help=".npz with 'imgs' (D, H, W) or a volume file SimpleITK reads")
    segment.add_argument("--slice", type=int, required=True, help="index K of the box's slice along the first axis")
    segment.add_argument("--box", nargs=4, type=float, required=True, metavar=("X0", "Y0", "X1", "Y1"),
                         help="box in pixels of slice K: x = column, y = row")
    segment.add_argument("-o", "--output", type=Path, required=True,
                         help=".npz (key 'mask') or a volume file, written with the input's geometry")
    segment.add_argument("--direction", choices=["both", "forward", "backward"], default="both")
    add_window_arguments(segment)
    add_model_arguments(segment)
    segment.set_defaults(run=command_segment)
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

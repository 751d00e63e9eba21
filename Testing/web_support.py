"""What the web front end's tests share: the test volume and ``medsam2 web``'s app on the tiny model."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from trame.app import get_server

from MedSAM2Lib.apps.cli import build_parser, prepare_web
from MedSAM2Lib.web.app import MedSAM2WebApp

from conftest import DATA

# Slices of the fixture volume around its key slice 12, an odd number so that the view's centre is a slice: 11 (the
# centre is slice 5) for the full scenario, 23 (slice 11) for a propagation long enough to cancel.
SLICES = {"short": slice(7, 18), "long": slice(1, 24)}


def volume_file(folder: Path, length: str) -> Path:
    """Slices of the fixture volume (:data:`SLICES`), stored axially (identity directions), 1 x 1 x 2.5 mm."""
    image = sitk.GetImageFromArray(np.load(DATA / "input_volume.npz")["imgs"][SLICES[length]].astype(np.int16))
    image.SetSpacing((1.0, 1.0, 2.5))
    path = folder / "lesion.nrrd"
    sitk.WriteImage(image, str(path))
    return path


@contextlib.contextmanager
def web_app(volume_file: Path, out: Path, checkpoint: Optional[Path] = None,
            options: Sequence[str] = ("--precision", "float32")) -> Iterator[MedSAM2WebApp]:
    """``medsam2 web VOLUME`` on the tiny model (or another tiny checkpoint), on a free port, with its own trame
    server; ``options``: more of the command's arguments. Closed (``MedSAM2WebApp.close``) when the block ends, as
    the command closes it when it stops serving."""
    args = build_parser().parse_args([
        "web", str(volume_file), "--port", "0", "--out", str(out), "--device", "cpu", *options,
        "--checkpoint", str(checkpoint or DATA / "medsam2_tiny_random_seed0.pt"),
        "--config", str(DATA / "medsam2_tiny_test.yaml")])
    app = MedSAM2WebApp(*prepare_web(args), server=get_server(f"medsam2-web-{uuid.uuid4()}", client_type="vue3"))
    try:
        yield app
    finally:
        app.close()

"""The project's non-code files, kept once in the repository's top-level ``Resources/`` folder (demo scan and its
notice, icon, screenshot).

In a source checkout (and an editable install) they are read from there. A wheel and the Slicer extension ship
the ones the code reads inside the package, in ``MedSAM2Lib/Resources/`` (pyproject.toml's package-dir and
MedSAM2Slicer/CMakeLists.txt put them there). No torch here: the Slicer module uses this at startup.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
INSTALLED = PACKAGE / "Resources"  # wheel, Slicer extension
CHECKOUT = PACKAGE.parent / "Resources"  # source tree


def resource_path(name: str) -> Path:
    """Where the resource file ``name`` is: inside the package when installed, else the checkout's Resources/."""
    installed = INSTALLED / name
    return installed if installed.is_file() or not (CHECKOUT / name).is_file() else CHECKOUT / name

"""What the README tells a new user to type, and the refusals it lists, against the code."""

from __future__ import annotations

import re

from MedSAM2Lib.apps import cli
from MedSAM2Lib.inference.session_file import MAX_STEPS

from conftest import DATA

README = (DATA.parent.parent / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    """The README's text from the heading or bold paragraph title to the next heading."""
    start = README.index(title)
    following = re.search(r"^## ", README[start + len(title):], re.MULTILINE)
    return README[start:start + len(title) + following.start()] if following else README[start:]


def test_the_cpu_only_torch_install_stands_beside_the_plain_one():
    """Plain `pip install torch` on Linux pulls the CUDA build (several GB)."""
    install = section("## Install and run")
    plain = install.index("pip install torch ")
    cpu_only = install.index("pip install torch --index-url https://download.pytorch.org/whl/cpu")
    assert 0 < cpu_only - plain < 300


def test_the_ray_extra_is_installed_from_a_checkout():
    """medsam2-slicer is not on PyPI: `pip install "medsam2-slicer[ray]"` would fail."""
    assert not re.search(r"pip install ['\"]?medsam2-slicer", README)
    assert 'pip install -e ".[ray]"    # from a checkout' in section("## Large datasets on a cluster")
    assert "medsam2-slicer[" not in cli.RAY_INSTALL and "pip install -e '.[ray]'" in cli.RAY_INSTALL


def test_errors_and_outputs_lists_the_refusals():
    errors = " ".join(section("**Errors and outputs.**").split())  # as read, whatever the line breaks
    for refusal in ("a box whose corners are swapped", "a slice range whose first slice comes after its last",
                    "a folder without a DICOM series", "a CPU-only PyTorch",
                    f"more than {MAX_STEPS:,} steps", "leaves out the slice it starts from"):
        assert refusal in errors, refusal

"""Peak memory of windowing: an int16 CT against the same scan already in uint8.

    python benchmarks/windowing_memory.py [--slices 200] [--size 512] [--skip-model]

Target (issue 9): ``medsam2 segment`` on a 200 x 512 x 512 int16 volume with ``--window`` peaks within 1.2x
the resident memory of the same command on the uint8 volume with ``--no-window`` (before: 2.5 GB against
1.0 GB, from whole-volume float64 copies).

Each measurement runs in a fresh Python process and reports that process's peak RSS:

- ``window only``: read the .npz and window it (no model), against reading the uint8 .npz, as the peak above
  the process's memory after its imports (Linux only); the difference to reading alone is the windowing's own;
- ``segment``: the whole command with the real-size network (t512, random weights: the same memory as the
  real ones), one slice segmented (``--direction forward`` from the last slice), so the run takes seconds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[1]

# Importing torch peaks above what reading a volume needs, so the window-only measurement resets the peak
# (Linux: writing 5 to /proc/self/clear_refs) after the imports and reports the peak of the work alone.
WINDOW_ONLY = """
import json, sys
import numpy as np
from MedSAM2Lib.apps.volume_io import read_scan
from MedSAM2Lib.inference.preprocessing import Windowing
def status(field):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))
before = status("VmRSS")
open("/proc/self/clear_refs", "w").write("5")
volume, _ = read_scan(sys.argv[1])
if sys.argv[2] == "window":
    volume = Windowing("window", (-160.0, 240.0)).apply(volume)
print(json.dumps(status("VmHWM") - before))
"""

SEGMENT = """
import json, resource, sys
from MedSAM2Lib.apps.cli import main
code = main(sys.argv[1:])
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
sys.exit(code)
"""


def peak_mib(script: str, *arguments: str) -> float:
    """Peak resident memory in MiB that ``script``, run in a fresh interpreter, prints (in KiB)."""
    result = subprocess.run([sys.executable, "-c", script, *arguments], capture_output=True, text=True,
                            cwd=REPOSITORY, env={"PYTHONPATH": str(REPOSITORY), "PATH": "/usr/bin:/bin"})
    if result.returncode != 0:
        raise SystemExit(f"measurement failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1]) / 1024


def ct_like(slices: int, size: int) -> np.ndarray:
    """int16 Hounsfield-like values: air, soft tissue with noise, a bright disc."""
    rng = np.random.default_rng(0)
    volume = np.full((slices, size, size), -1000, np.int16)
    y, x = np.ogrid[:size, :size]
    body = (x - size / 2) ** 2 + (y - size / 2) ** 2 < (0.4 * size) ** 2
    for index in range(slices):
        volume[index][body] = rng.normal(40, 30, int(body.sum())).astype(np.int16)
    volume[:, size // 2 - 20:size // 2 + 20, size // 2 - 20:size // 2 + 20] += 200
    return volume


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--skip-model", action="store_true", help="only the window-only measurement")
    args = parser.parse_args()
    sys.path.insert(0, str(REPOSITORY))
    from MedSAM2Lib.inference.preprocessing import window

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        ct = ct_like(args.slices, args.size)
        np.savez(folder / "ct.npz", imgs=ct)
        np.savez(folder / "u8.npz", imgs=window(ct, -160.0, 240.0))
        del ct
        mib = args.slices * args.size * args.size / 2**20
        print(f"volume {args.slices} x {args.size} x {args.size}: {mib:.0f} MiB as uint8, {2 * mib:.0f} MiB as int16")
        read_u8 = peak_mib(WINDOW_ONLY, str(folder / "u8.npz"), "none")
        read_ct = peak_mib(WINDOW_ONLY, str(folder / "ct.npz"), "none")
        window_ct = peak_mib(WINDOW_ONLY, str(folder / "ct.npz"), "window")
        print(f"window only, peak above the imports: read uint8 {read_u8:.0f} MiB, read int16 {read_ct:.0f} MiB, "
              f"read and window int16 {window_ct:.0f} MiB (windowing itself {window_ct - read_ct:.0f} MiB, "
              f"{(window_ct - read_ct) / mib:.2f}x the uint8 volume)")
        if args.skip_model:
            return
        import torch

        from MedSAM2Lib.model import MedSAM2
        from MedSAM2Lib.model.config import MEDSAM2_T512

        torch.manual_seed(0)
        torch.save({"model": MedSAM2(MEDSAM2_T512).state_dict()}, folder / "random_t512.pt")
        common = ["--slice", str(args.slices - 1), "--box", "200", "200", "300", "300", "--direction", "forward",
                  "--checkpoint", str(folder / "random_t512.pt"), "--device", "cpu"]
        segment_u8 = peak_mib(SEGMENT, "segment", str(folder / "u8.npz"), "-o", str(folder / "m8.npz"),
                              "--no-window", *common)
        segment_ct = peak_mib(SEGMENT, "segment", str(folder / "ct.npz"), "-o", str(folder / "m16.npz"),
                              "--window", "-160", "240", *common)
        print(f"segment: uint8 --no-window {segment_u8:.0f} MiB, int16 --window {segment_ct:.0f} MiB: "
              f"ratio {segment_ct / segment_u8:.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()

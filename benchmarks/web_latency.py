"""How long ``medsam2 web`` makes a user wait, measured in a real browser (Debian's chromium, driven by playwright).

    python benchmarks/web_latency.py VOLUME --checkpoint PT [--config YAML] [--precision float32] [--repeats 3]
                                     [--box X0 Y0 X1 Y1] [--json]

The app is the command's own (``MedSAM2WebApp``), served in this process; the page is opened at 1400 x 900. Measured
from the browser's side, per repeat:

- release to preview: from the mouse button's release at the end of a box drag in the axial view to the page
  showing the preview, i.e. both the status line saying the slice was segmented and a new frame of the axial view
  (the box's slice computed, written, rendered on the server and streamed);
- propagate to done: from the click on Propagate to the status line saying it propagated (the segment written
  for every slice; the frames follow).

Each repeat ends by undoing the propagation and the preview and clearing the box (on the server, untimed), so
that every box starts a fresh session on a fresh segment. The box is given as fractions of the axial view (default: the bright structure of the test volume).

Requires the web extra (``pip install 'medsam2-slicer[web]' playwright``) and ``chromium``. Figures taken on a
machine shared with other work are meaningless: run it alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BROWSER_ARGUMENTS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run"]
STATUS = "document.querySelector('#medsam2-status').innerText"
AXIAL_SOURCE = "document.querySelectorAll('img')[0].src"


async def measure(args) -> dict:
    from playwright.async_api import async_playwright
    from trame.app import get_server

    from MedSAM2Lib.apps.cli import build_parser, prepare_web
    from MedSAM2Lib.web.app import MedSAM2WebApp

    out = Path(tempfile.mkdtemp(prefix="medsam2-web-benchmark-"))
    command = ["web", str(args.volume), "--port", "0", "--out", str(out), "--checkpoint", str(args.checkpoint),
               "--device", args.device, "--precision", args.precision] + (
        ["--config", str(args.config)] if args.config else [])
    parsed = build_parser().parse_args(command)
    app = MedSAM2WebApp(*prepare_web(parsed), server=get_server(f"medsam2-web-benchmark-{uuid.uuid4()}", client_type="vue3"))
    app.start(exec_mode="task")
    await app.server.ready
    previews, propagations = [], []
    slices = app.volume_node.GetImageData().GetDimensions()[2]
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=shutil.which("chromium"), args=BROWSER_ARGUMENTS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(600_000)
            await page.goto(f"http://127.0.0.1:{app.server.port}/")
            await page.wait_for_function(
                "Array.from(document.querySelectorAll('img')).filter(image => image.naturalWidth > 0).length >= 3")
            await asyncio.sleep(1.0)
            view = await page.locator("img").nth(0).bounding_box()
            (x0, y0), (x1, y1) = [(view["x"] + fx * view["width"], view["y"] + fy * view["height"])
                                  for fx, fy in (args.box[:2], args.box[2:])]
            for _ in range(args.repeats):
                await page.mouse.move(x0, y0)
                await page.mouse.down()
                await page.mouse.move(x1, y1, steps=8)
                source = await page.evaluate(AXIAL_SOURCE)
                started = time.perf_counter()
                await page.mouse.up()
                await page.wait_for_function(f"{STATUS}.startsWith('Box on slice') && {AXIAL_SOURCE} !== {source!r}")
                previews.append(time.perf_counter() - started)
                print(f"preview {previews[-1]:.2f} s", file=sys.stderr, flush=True)
                started = time.perf_counter()
                await page.click("#medsam2-propagate")
                await page.wait_for_function(f"{STATUS}.startsWith('Propagated')")
                propagations.append(time.perf_counter() - started)
                print(f"propagation {propagations[-1]:.2f} s", file=sys.stderr, flush=True)
                for _ in range(2):  # the propagation, then the preview (which created the segment); not timed
                    app.tool.undo()
                assert app.segmentation_node.GetSegmentation().GetNumberOfSegments() == 0
                app.tool.gestures.box_tool.box = None  # else the next drag would grab the old box's corner
                app.effect.redraw()
                await asyncio.sleep(1.0)
        finally:
            await browser.close()
            await app.server.stop()
            app.close()
            shutil.rmtree(out, ignore_errors=True)
    return {"release_to_preview_s": previews, "propagate_to_done_s": propagations,
            "release_to_preview_median_s": statistics.median(previews),
            "propagate_to_done_median_s": statistics.median(propagations),
            "slices": slices}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("volume", type=Path)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--box", nargs=4, type=float, default=(0.40, 0.33, 0.72, 0.57),
                        metavar=("FX0", "FY0", "FX1", "FY1"), help="the box as fractions of the axial view")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = asyncio.run(measure(args))
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"{figures['slices']} slices, {args.repeats} repeats")
    print(f"release to preview: median {figures['release_to_preview_median_s']:.2f} s "
          f"({', '.join(f'{s:.2f}' for s in figures['release_to_preview_s'])})")
    print(f"propagate to done:  median {figures['propagate_to_done_median_s']:.2f} s "
          f"({', '.join(f'{s:.2f}' for s in figures['propagate_to_done_s'])})")


if __name__ == "__main__":
    main()

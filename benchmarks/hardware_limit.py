"""How far a tracked slice is from what this CPU's matrix products allow, in both precisions.

    python benchmarks/hardware_limit.py [--slices 4] [--threads N] [--json]

One tracked t512 slice (real-size Hiera-T model, random weights: the same work as the real ones) is mostly matrix
products: the linear layers (``addmm``), the attention products (``bmm``, or PyTorch's fused CPU attention in exact
mode). Their count of floating-point operations is fixed by the network, so the rate at which this CPU multiplies
matrices bounds the time of a slice from below, whatever else is removed. Measured in one run:

- the CPU's matrix-product rate in float32 and bfloat16 (``torch.matmul`` of 2048 x 2048 matrices and of the
  model's MLP shape 1024 x 384 x 1536, best of several), with the threads the model uses;
- per tracked slice of a propagation (after the memory bank is full), in each precision: wall seconds without the
  profiler, then under ``torch.profiler`` the operations of the matrix products (counted from their input shapes:
  2 M N K per product, 4 Nq Nk D per head of fused attention) and the CPU time spent in them against everything
  else (copies, casts, softmax, GELU, norms, convolutions, resizes), the largest of those by name;
- the limit: those operations at the measured rate, against the issue's targets (bfloat16 <= 0.15 s with AMX,
  <= 0.30 s with AVX-512 BF16; float32 <= 0.45 s).

Reports the CPU's features (AMX, AVX-512 BF16, PyTorch's ATen kernel level). The profiler times each operation on
the thread that calls it, from its start to its end (its intra-op threads work within that span), so the shares
add up to about the wall time of a slice, plus the profiler's own cost. Run it alone: shared cores make every
figure meaningless.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Dict, List

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from MedSAM2Lib.inference.predictor import FeatureCache, VolumePredictor  # noqa: E402
from MedSAM2Lib.model import MedSAM2  # noqa: E402
from MedSAM2Lib.model.config import MEDSAM2_T512  # noqa: E402
from benchmarks.propagation import synthetic_volume  # noqa: E402

TARGETS_S = {"bfloat16": {"amx": 0.15, "avx512_bf16": 0.30}, "float32": {"any": 0.45}}
MATRIX_PRODUCTS = ("aten::addmm", "aten::mm", "aten::bmm")
FUSED_ATTENTION = "aten::_scaled_dot_product_flash_attention_for_cpu"
# The memory bank holds 7 slices; from then on every tracked slice does the same work.
FILL_SLICES = 8
OTHER_OPERATIONS_LISTED = 12  # the operations other than products that take longest, with their self time


def cpu_features() -> Dict:
    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "model_name": model,
        "amx_bf16": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "avx512f": "avx512f" in flags,
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
    }


def matmul_rate_gflops(dtype: torch.dtype, m: int, k: int, n: int, seconds: float = 1.0) -> float:
    """Best rate of repeated (m, k) @ (k, n) products."""
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - started)
    return 2 * m * k * n / best / 1e9


def product_operations(event) -> float:
    """Floating-point operations of one profiled matrix product or fused attention, from its input shapes."""
    shapes = event.input_shapes
    if event.name == "aten::addmm":  # (bias, a (M, K), b (K, N))
        (m, k), (_, n) = shapes[1], shapes[2]
        return 2.0 * m * k * n
    if event.name == "aten::mm":
        (m, k), (_, n) = shapes[0], shapes[1]
        return 2.0 * m * k * n
    if event.name == "aten::bmm":
        (b, m, k), (_, _, n) = shapes[0], shapes[1]
        return 2.0 * b * m * k * n
    # Fused attention q (B, H, Nq, D), k (B, H, Nk, D): two products of 2 Nq Nk D each.
    (b, h, nq, d), (_, _, nk, _) = shapes[0], shapes[1]
    return 4.0 * b * h * nq * nk * d


def measure_precision(model: MedSAM2, precision: str, slices: int) -> Dict:
    volume = synthetic_volume(FILL_SLICES + 2 * slices + 2, 512, None)
    predictor = VolumePredictor(model, precision=precision, early_stop=None)
    predictor.warm_up()
    size = volume.shape[1]
    box = [0.35 * size, 0.38 * size, 0.65 * size, 0.62 * size]
    results = predictor.propagate(volume, 0, box, "forward", cache=FeatureCache(volume))
    for _ in range(FILL_SLICES):
        next(results)
    started = time.perf_counter()
    for _ in range(slices):
        next(results)
    wall = (time.perf_counter() - started) / slices

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiled:
        for _ in range(slices):
            next(results)
    operations = product_seconds = all_seconds = 0.0
    others: Dict[str, List[float]] = {}  # operation -> [self seconds, calls]
    for event in profiled.events():
        all_seconds += event.self_cpu_time_total / 1e6
        if event.name in MATRIX_PRODUCTS or event.name == FUSED_ATTENTION:
            operations += product_operations(event)
            product_seconds += event.self_cpu_time_total / 1e6
        else:
            entry = others.setdefault(event.name, [0.0, 0])
            entry[0] += event.self_cpu_time_total / 1e6
            entry[1] += 1
    largest_others = sorted(others.items(), key=lambda item: -item[1][0])[:OTHER_OPERATIONS_LISTED]
    return {
        "wall_s_per_tracked_slice": round(wall, 3),
        "gflop_per_tracked_slice": round(operations / slices / 1e9, 1),
        "profiled_products_s_per_slice": round(product_seconds / slices, 3),
        "profiled_other_s_per_slice": round((all_seconds - product_seconds) / slices, 3),
        "profiled_products_share": round(product_seconds / all_seconds, 3),
        "achieved_product_gflops": round(operations / product_seconds / 1e9) if product_seconds else None,
        "largest_other_operations": [
            {"operation": name, "s_per_slice": round(seconds / slices, 4), "calls_per_slice": round(calls / slices)}
            for name, (seconds, calls) in largest_others],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, default=4, help="tracked slices timed and profiled per precision")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    features = cpu_features()
    rates = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        rates[name] = {
            "square_2048_gflops": round(matmul_rate_gflops(dtype, 2048, 2048, 2048)),
            "mlp_1024x384x1536_gflops": round(matmul_rate_gflops(dtype, 1024, 384, 1536)),
        }
    torch.manual_seed(0)
    model = MedSAM2(MEDSAM2_T512).eval()
    report: Dict = {"cpu": features, "matmul_rate": rates, "precisions": {}}
    for precision in ("bfloat16", "float32"):
        measured = measure_precision(model, precision, args.slices)
        best_rate = max(rates[precision].values())
        limit = measured["gflop_per_tracked_slice"] / best_rate
        measured["limit_s_per_slice_at_best_rate"] = round(limit, 3)
        measured["wall_over_limit"] = round(measured["wall_s_per_tracked_slice"] / limit, 2)
        targets: List[Dict] = []
        for hardware, target in TARGETS_S[precision].items():
            applies = hardware == "any" or features.get(f"{hardware}_bf16" if hardware == "amx" else hardware, False)
            targets.append({"hardware": hardware, "target_s": target, "applies_here": bool(applies),
                            "met": measured["wall_s_per_tracked_slice"] <= target,
                            "below_limit_here": target < limit})
        measured["targets"] = targets
        report["precisions"][precision] = measured
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"CPU: {features}")
    print(f"matrix products: {rates}")
    for precision, measured in report["precisions"].items():
        print(f"{precision}: {measured}")


if __name__ == "__main__":
    main()

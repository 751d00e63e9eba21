"""Whether torch.compile pays on CPU: its warm-up, and seconds per tracked t512 slice, eager against compiled.

    python benchmarks/torch_compile.py [bfloat16|float32]

The real-size t512 network with random weights on a synthetic 40 x 512 x 512 volume (``benchmarks/propagation.py``'s),
one process: an eager predictor and one whose image encoder and memory attention are ``torch.compile``d (inductor,
static shapes). Reported: the compiled predictor's warm-up and its first 8 tracked slices (it compiles again for each
memory-bank size it meets, until dynamo's recompile limit), then three rounds of 4 tracked slices each, eager and
compiled taking turns. Run it alone.
"""
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.propagation import synthetic_volume  # noqa: E402
from MedSAM2Lib.inference.predictor import FeatureCache, VolumePredictor  # noqa: E402
from MedSAM2Lib.model import MedSAM2  # noqa: E402
from MedSAM2Lib.model.config import MEDSAM2_T512  # noqa: E402

prec = sys.argv[1] if len(sys.argv) > 1 else "bfloat16"
torch.manual_seed(0)
model = MedSAM2(MEDSAM2_T512).eval()
vol = synthetic_volume(40, 512, None)
box = [180, 195, 333, 317]

def per_slice(pred, fill=8, n=4):
    gen = pred.propagate(vol, 0, box, "forward", cache=FeatureCache(vol))
    t0 = time.perf_counter()
    for _ in range(fill): next(gen)
    fill_s = time.perf_counter() - t0
    t = time.perf_counter()
    for _ in range(n): next(gen)
    return fill_s, (time.perf_counter() - t) / n, gen

eager = VolumePredictor(model, precision=prec, early_stop=None); eager.warm_up()
compiled = VolumePredictor(model, precision=prec, early_stop=None)
m = compiled.model
m.image_encoder = torch.compile(m.image_encoder, dynamic=False)
m.memory_attention = torch.compile(m.memory_attention, dynamic=False)
t = time.perf_counter(); compiled.warm_up(); warm = time.perf_counter() - t
fill_c, _, _ = per_slice(compiled, fill=8, n=1)  # compiles each memory size it meets
out = {"precision": prec, "compiled_warm_up_s": round(warm, 1), "compiled_first_8_slices_s": round(fill_c, 1)}
for r in range(3):
    _, e, _ = per_slice(eager); _, c, _ = per_slice(compiled)
    out[f"round{r}"] = {"eager_s": round(e, 3), "compiled_s": round(c, 3)}
print(json.dumps(out))

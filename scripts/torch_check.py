#!/usr/bin/env python3
"""scripts/torch_check.py FP32 QUANT... -- loads joule checkpoints (fp32, bf16, int8; docs/FORMATS.md §6a)
into PyTorch with torch alone (Debian's python3-torch 1.13 has no safetensors loader), dequantises
int8 by its per-row scales and prints the mean and largest relative RMS error of the quantised
matrices against the fp32 file. Run with Debian's python (`apt-get install python3-torch`, then
`/usr/bin/python3 scripts/torch_check.py ...`)."""
import json, struct, sys, torch
def load(path):                     # safetensors read with torch alone (torch 1.13 has no loader)
    b = open(path, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n])
    dt = {"F32": torch.float32, "BF16": torch.bfloat16, "I8": torch.int8}
    return {k: torch.frombuffer(bytearray(b[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]),
                                dtype=dt[v["dtype"]]).reshape(v["shape"])
            for k, v in h.items() if k != "__metadata__"}
ref = load(sys.argv[1])
for q in sys.argv[2:]:
    t = load(q)
    w = {k: (v.float() * t[k + ".scale"][:, None]) if v.dtype == torch.int8 else v.float()
         for k, v in t.items() if not k.endswith(".scale")}
    kinds = sorted({str(v.dtype) for v in t.values()})
    err = [((w[k] - ref[k]).norm() / ref[k].norm()).item() for k in ref if w[k].dtype == torch.float32 and t[k].dtype != torch.float32]
    print(f"{q}: torch {torch.__version__}, {len(t)} tensors {kinds}, {len(err)} quantised matrices, "
          f"relative RMS error vs fp32 mean {sum(err)/len(err):.5f} max {max(err):.5f}")

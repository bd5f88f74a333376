"""Checks and times src/gpu/kernels/attention_sm90.cu on the GPU machine (development harness).

usage: python3 check.py LIB.so [LIB2.so ...]   (each a build of host.cu, e.g. with -D variants)

Build (here, with the CUDA toolchain of shared/cuda, or on the GPU machine):
    nvcc -O3 -shared -Xcompiler -fPIC -gencode=arch=compute_90a,code=sm_90a \
        -o v.so scripts/flash_sm90/host.cu -lcuda [-DPINGPONG=0] [-DKV_STAGES=3]

For each library: relative error against PyTorch's attention in f32 on random inputs (odd lengths,
padded keys, the 640² bench shape), then the median time at the bench shapes next to PyTorch's
bf16 SDPA backends. Prints one line per check and a table last. SUSTAINED=1 adds a table at the
sustained clock (2 s heat-up, then ~1.5 s back to back, nvidia-smi clock and power sampled) for
our kernel, PyTorch's flash and cuDNN SDPA and, for scale, the DiT's MLP-out GEMM.
"""
import ctypes
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

torch.manual_seed(0)
dev = "cuda"


def outputs(q, kv_len, split):
    """Output buffers poisoned with NaN (an unwritten element shows), and the key lengths."""
    b, s, h, _ = q.shape
    out0 = torch.full((b, split, h * 128), float("nan"), device=dev, dtype=torch.bfloat16)
    out1 = torch.full((b, s - split, h * 128), float("nan"), device=dev, dtype=torch.bfloat16)
    return out0, out1, torch.tensor(kv_len, device=dev, dtype=torch.int32)


def run(lib, q, k, v, kv_len, split, bufs=None):
    b, s, h, _ = q.shape
    out0, out1, kv = bufs or outputs(q, kv_len, split)
    rc = lib.flash_sm90(
        ctypes.c_void_p(q.data_ptr()), ctypes.c_void_p(k.data_ptr()), ctypes.c_void_p(v.data_ptr()),
        ctypes.c_void_p(kv.data_ptr()), ctypes.c_void_p(out0.data_ptr()), ctypes.c_void_p(out1.data_ptr()),
        b, s, h, split, ctypes.c_void_p(torch.cuda.current_stream().cuda_stream))
    assert rc == 0, f"launch failed: {rc}"
    return torch.cat([out0, out1], dim=1), kv


def reference(q, k, v, kv_len):
    b, s, h, _ = q.shape
    mask = torch.zeros(b, 1, s, s, dtype=torch.bool, device=dev)
    for i, n in enumerate(kv_len):
        mask[i, :, :, :n] = True
    out = F.scaled_dot_product_attention(
        q.float().transpose(1, 2), k.float().transpose(1, 2), v.float().transpose(1, 2), attn_mask=mask)
    return out.transpose(1, 2).reshape(b, s, h * 128)


def timed(fn, reps=20):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, z = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        z.record()
        z.synchronize()
        times.append(a.elapsed_time(z) / 1e3)
    times.sort()
    return times[len(times) // 2]


def sustained(fn, seconds):
    """Mean seconds per call once the card has run `fn` back to back for 2 s (at its power limit,
    the clock settles lower than in short bursts), over about `seconds` of back-to-back calls;
    with the SM clock and power draw nvidia-smi sampled meanwhile (medians)."""
    start = time.perf_counter()
    while time.perf_counter() - start < 2.0:
        fn()
        torch.cuda.synchronize()
    one = timed(fn, reps=3)
    reps = max(5, int(seconds / one))
    smi = subprocess.Popen(["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits",
                            "-lms", "100"], stdout=subprocess.PIPE, text=True)
    a, z = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        fn()
    z.record()
    z.synchronize()
    smi.terminate()
    samples = [l.split(",") for l in smi.communicate()[0].splitlines() if l.count(",") == 1]
    clock = statistics.median(float(c) for c, _ in samples) if samples else float("nan")
    power = statistics.median(float(p) for _, p in samples) if samples else float("nan")
    return a.elapsed_time(z) / 1e3 / reps, clock, power


SHAPES = [  # (batch, seq, heads, split, kv_len)
    (1, 37, 1, 30, [37]),
    (2, 300, 2, 270, [300, 281]),
    (2, 1061, 3, 1000, [1061, 1006]),
    (2, 9636, 24, 9600, [9636, 9606]),
]
# PyTorch's bf16 SDPA backends timed beside ours (flash = FlashAttention-2, diffusers' path).
TORCH_BACKENDS = [("torch flash (no mask)", "FLASH_ATTENTION"), ("torch cuDNN (no mask)", "CUDNN_ATTENTION")]
TIMED = [(2, 9636, 24, 9600, [9636, 9606]), (2, 24606, 24, 24576, [24606, 24582])]

rows = []
for path in sys.argv[1:]:
    lib = ctypes.CDLL(path)
    worst = 0.0
    for b, s, h, split, kv_len in SHAPES:
        q, k, v = (torch.randn(b, s, h, 128, device=dev, dtype=torch.bfloat16) for _ in range(3))
        out, _ = run(lib, q, k, v, kv_len, split)
        torch.cuda.synchronize()
        ref = reference(q, k, v, kv_len)
        nan = torch.isnan(out.float()).sum().item()
        err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
        worst = max(worst, err if nan == 0 else float("inf"))
        print(f"{path} B={b} S={s} H={h} kv={kv_len}: rel err {err:.2e}, unwritten {nan}", flush=True)
    for b, s, h, split, kv_len in TIMED:
        q, k, v = (torch.randn(b, s, h, 128, device=dev, dtype=torch.bfloat16) for _ in range(3))
        flops = sum(4.0 * h * s * n * 128 for n in kv_len)
        bufs = outputs(q, kv_len, split)
        t = timed(lambda: run(lib, q, k, v, kv_len, split, bufs))
        rows.append((path, s, t, flops / t / 1e12, worst))
        print(f"{path} S={s}: {t * 1e3:.2f} ms, {flops / t / 1e12:.0f} TFLOP/s", flush=True)

for b, s, h, split, kv_len in TIMED:
    q, k, v = (torch.randn(b, h, s, 128, device=dev, dtype=torch.bfloat16) for _ in range(3))
    flops = 4.0 * b * h * s * s * 128
    for name, backend in TORCH_BACKENDS:
        try:
            with torch.nn.attention.sdpa_kernel(getattr(torch.nn.attention.SDPBackend, backend)):
                t = timed(lambda: F.scaled_dot_product_attention(q, k, v))
            rows.append((name, s, t, flops / t / 1e12, 0.0))
        except Exception as e:  # noqa: BLE001 - a missing backend is reported, not fatal
            print(f"{name}: {e}")

# SUSTAINED=1: each attention and, for scale, the DiT's largest GEMM, at the sustained clock.
steady = []
if os.environ.get("SUSTAINED"):
    libs = [(path, ctypes.CDLL(path)) for path in sys.argv[1:]]
    for b, s, h, split, kv_len in TIMED:
        q, k, v = (torch.randn(b, s, h, 128, device=dev, dtype=torch.bfloat16) for _ in range(3))
        flops = sum(4.0 * h * s * n * 128 for n in kv_len)
        bufs = outputs(q, kv_len, split)
        # Each library twice, alternating (A B A B), so clock drift hits all alike.
        for _ in range(2):
            for path, lib in libs:
                steady.append((f"ours ({path})", s, flops, *sustained(lambda: run(lib, q, k, v, kv_len, split, bufs), 1.5)))
        qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))
        flops_full = 4.0 * b * h * s * s * 128
        for name, backend in TORCH_BACKENDS:
            try:
                with torch.nn.attention.sdpa_kernel(getattr(torch.nn.attention.SDPBackend, backend)):
                    steady.append((name, s, flops_full, *sustained(lambda: F.scaled_dot_product_attention(qt, kt, vt), 1.5)))
            except Exception as e:  # noqa: BLE001
                print(f"{name}: {e}")
        del q, k, v, qt, kt, vt, bufs
    x = torch.randn(19200, 12288, device=dev, dtype=torch.bfloat16)
    w = torch.randn(3072, 12288, device=dev, dtype=torch.bfloat16) / 12288 ** 0.5
    steady.append(("torch GEMM 19200×12288 · (3072×12288)ᵀ (MLP out)", "—", 2.0 * 19200 * 12288 * 3072,
                   *sustained(lambda: x @ w.t(), 1.5)))
    print("\n| sustained | S | ms | TFLOP/s | SM clock (MHz) | power (W) |\n|---|---|---|---|---|---|")
    for name, s, fl, t, clock, power in steady:
        print(f"| {name} | {s} | {t * 1e3:.2f} | {fl / t / 1e12:.0f} | {clock:.0f} | {power:.0f} |")

print("\n| kernel | S | ms | TFLOP/s | worst rel err |\n|---|---|---|---|---|")
for name, s, t, tf, err in rows:
    print(f"| {name} | {s} | {t * 1e3:.2f} | {tf:.0f} | {err:.1e} |")

"""The roofline of ``demos/bench.py``: what this machine's matrix units and memory allow a sampling
run, and the fraction of it a run reaches.

A generator's sampling run must at least (a) do its matrix products and attention, ``flops`` of
them, at the GEMM peak, and (b) read every weight once per forward pass, ``passes x weight_bytes``,
and the keys and values each attention call attends to, ``kv_bytes``, at the rate a GEMM with the
decoding row count streams a weight matrix. Its floor is the larger of the two, ``max(flops /
peak, (passes * weight_bytes + kv_bytes) / bandwidth)``. It is the floor of this machine's GEMM
kernels, not of its hardware; tight for passes that are all compute-bound (VAR's last scales,
NAR's wide steps) or all memory-bound (one-token raster steps). ``weight_bytes`` counts every
parameter and buffer, embedding tables included, of which a pass reads only a few rows
(LlamaGen-B's code and class tables are 12% of its bytes), so a memory-bound floor is high by
up to that much and its fraction as flattering. ``flops`` are counted by
``torch.utils.flop_counter.FlopCounterMode`` over one more call of the run (matmul, addmm,
attention, convolution, and oneDNN's fused linear that vargen's bf16 GELU layers call), key and value bytes by a dispatch mode beside it on every
``scaled_dot_product_attention`` kernel; the fraction reached is ``floor / seconds``.

On CPU the peaks are measured here, in this process, at the benchmark's threads: a 4096 x 4096
matmul (min of ``repeats``) and ``rows`` x 4096 against a 4096 x 4096 weight (bytes of the weight
per second; the faster of a plain ``F.linear`` and the prepacked weight of
``vargen.speed.prepack_linears``, which skips the per-call repacking). On CUDA they are the
datasheet's dense peaks for known cards (:data:`CUDA_PEAKS`), the measured ones otherwise.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import register_flop_formula

# Datasheet dense peaks (SXM parts): FLOP/s fp32 (non-tensor), bf16 (tensor cores), memory bytes/s.
CUDA_PEAKS = {
    "H100": {"float32": 67e12, "bfloat16": 989e12, "bandwidth": 3.35e12},
    "H200": {"float32": 67e12, "bfloat16": 989e12, "bandwidth": 4.8e12},
    "A100": {"float32": 19.5e12, "bfloat16": 312e12, "bandwidth": 2.04e12},
}


if torch.backends.mkldnn.is_available():  # vargen.nn.linear_gelu: a GEMM with its epilogue fused
    @register_flop_formula(torch.ops.mkldnn._linear_pointwise)
    def _fused_linear_flops(x_shape, w_shape, *args, **kwargs) -> int:
        rows = 1
        for n in x_shape[:-1]:
            rows *= n
        return 2 * rows * x_shape[-1] * w_shape[0]


def _best_seconds(fn: Callable[[], object], device: str, repeats: int) -> float:
    cuda = device.startswith("cuda")
    fn()  # warm-up: first-touch pages, kernel selection
    best = float("inf")
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def measure_peaks(dtype: torch.dtype, device: str = "cpu", rows: int = 16, size: int = 4096,
                  repeats: int = 4) -> Dict[str, float]:
    """``{"flops": GEMM FLOP/s, "bandwidth": weight bytes/s at ``rows`` rows, "source": ...}``."""
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(device)
        known = next((v for k, v in CUDA_PEAKS.items() if k in name), None)
        if known is not None and str(dtype).split(".")[-1] in known:
            return {"flops": known[str(dtype).split(".")[-1]], "bandwidth": known["bandwidth"],
                    "source": f"{name} datasheet"}
    with torch.no_grad():
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        gemm = _best_seconds(lambda: a @ b, device, repeats)
        x = torch.randn(rows, size, device=device, dtype=dtype)
        stream = _best_seconds(lambda: torch.nn.functional.linear(x, b), device, 4 * repeats)
        if device == "cpu":  # the weight prepacked (vargen.speed.prepack_linears) streams faster
            from vargen.speed import prepack_linears
            packed = prepack_linears(torch.nn.Linear(size, size, bias=False, dtype=dtype), rows)
            stream = min(stream, _best_seconds(lambda: packed(x), device, 4 * repeats))
    return {"flops": 2 * size ** 3 / gemm, "bandwidth": b.numel() * b.element_size() / stream,
            "source": f"measured: {size}² matmul; {rows} rows × a {size}² weight, the faster of plain "
                      f"and prepacked"}


def _is_attention(op) -> bool:
    return "scaled_dot_product" in str(op)


class _AttentionCounter(TorchDispatchMode):
    """FLOPs of every attention kernel (``FlopCounterMode`` has no formula for the CPU flash
    kernel) and the key and value bytes it reads (the KV cache: at one-token steps a stream as
    large as the weights)."""

    def __init__(self):
        super().__init__()
        self.flops = self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if _is_attention(func):
            q, k, v = args[:3]  # [B, H, Lq, E], [B, H, Lk, E], [B, H, Lk, Ev]
            self.flops += 2 * q.numel() * k.shape[-2] + 2 * q[..., :1].numel() * v.shape[-2] * v.shape[-1]
            self.bytes += k.numel() * k.element_size() + v.numel() * v.element_size()
        return func(*args, **(kwargs or {}))


def count_work(model: torch.nn.Module, run: Callable[[], dict]) -> Dict[str, float]:
    """FLOPs and attention key/value bytes of one more ``run()`` (which returns the sampler's stats,
    ``forward_passes`` in them), and the bytes of ``model``'s parameters and buffers."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter, _AttentionCounter() as attention:
        stats = run()
    products = sum(n for op, n in counter.get_flop_counts().get("Global", {}).items() if not _is_attention(op))
    weight_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    return {"flops": float(products + attention.flops), "weight_bytes": float(weight_bytes),
            "kv_bytes": float(attention.bytes), "passes": int(stats["forward_passes"])}


def floor_seconds(work: Dict[str, float], peaks: Dict[str, float]) -> tuple:
    """``(seconds, "compute" | "memory")``: the larger of the compute time and the streaming time of
    the weights (once per pass) and the attention's keys and values."""
    compute = work["flops"] / peaks["flops"]
    memory = (work["passes"] * work["weight_bytes"] + work.get("kv_bytes", 0.0)) / peaks["bandwidth"]
    return (compute, "compute") if compute >= memory else (memory, "memory")


def describe(peaks: Optional[Dict[str, float]]) -> str:
    if not peaks:
        return ""
    return (f"Roofline: GEMM peak {peaks['flops'] / 1e9:,.0f} GFLOP/s, weight streaming "
            f"{peaks['bandwidth'] / 1e9:,.1f} GB/s ({peaks['source']}). A row's floor is the larger of its "
            f"counted FLOPs at the peak and its streamed bytes (passes × weight bytes + the keys and values "
            f"attention reads) at the streaming rate (demos/roofline.py); roofline % = floor / seconds (min).")

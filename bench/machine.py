"""The CPU a benchmark ran on, for its header: figures from machines of different kinds are not comparable (this
project's VMs are AMD EPYC or Intel Xeon with AVX512-BF16, the Xeons with AMX too, or AVX2 only)."""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
from pathlib import Path

# The instruction sets the engine's kernels depend on, by the name /proc/cpuinfo's flags give them.
FEATURES = {"AVX2": "avx2", "AVX512": "avx512f", "AVX512-BF16": "avx512_bf16", "AVX512-FP16": "avx512_fp16",
            "AMX-BF16": "amx_bf16", "AMX-INT8": "amx_int8"}


def cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    """The CPU's model name, core count and which of :data:`FEATURES` it has."""
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    fields: dict[str, str] = {}
    for line in text.splitlines():  # "key<tabs>: value", once per core: the first core's stand for all
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get("flags", "").split())
    model = fields.get("model name", "unknown")
    return {"model": model, "cores": os.cpu_count(), **{name: flag in flags for name, flag in FEATURES.items()}}


def cpu_line() -> str:
    info = cpu()
    have = ", ".join(f"{name} {'yes' if info[name] else 'no'}" for name in FEATURES)
    return f"CPU: {info['model']}, {info['cores']} cores; {have}"


# A bfloat16 and a float32 projection of the embedded model's width, one row and a prefill's worth, through the
# oneDNN layout the lean decoder packs its dense weights in (common/engine/llama.py's _Projection).
_PROBE = """
import torch
for dtype in (torch.bfloat16, torch.float32):
    w = torch.randn(1536, 576, dtype=dtype)
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(w, 16)
    except RuntimeError:  # a dtype this CPU cannot pack
        continue
    for rows in (1, 64):
        torch.ops.mkldnn._linear_pointwise(torch.randn(rows, 576, dtype=dtype), packed, None, "none", [], "")
"""
_EXEC = re.compile(r"^onednn_verbose,(?:v\d+,)?(?:primitive,)?exec,cpu,(\w+),([^,]+),[^,]*,src:(\w+)", re.M)


@functools.cache  # the machine does not change within a run: make bench's sections and its JSON probe once
def onednn_kernels() -> dict[str, str]:
    """The oneDNN implementation each dtype's dense projections run here, by dtype (e.g. ``bf16``:
    ``brg_matmul:avx10_1_512_amx`` where AMX tiles run them), from oneDNN's verbose log of a probe process."""
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "ONEDNN_VERBOSE": "1"})
    return kernels_of(done.stdout)


def kernels_of(verbose_log: str) -> dict[str, str]:
    """The implementations of the matmul-like primitives a oneDNN verbose log says ran, by source dtype."""
    kernels: dict[str, set[str]] = {}
    for primitive, implementation, dtype in _EXEC.findall(verbose_log):
        if primitive in ("inner_product", "matmul"):
            kernels.setdefault(dtype, set()).add(implementation)
    return {dtype: ", ".join(sorted(names)) for dtype, names in kernels.items()}


def kernel_line() -> str:
    kernels = onednn_kernels()
    found = "; ".join(f"{dtype} {names}" for dtype, names in kernels.items()) or "none reported"
    return f"oneDNN kernels for dense projections (1 and 64 rows): {found}"

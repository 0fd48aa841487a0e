"""The CPU a benchmark ran on, for its header: figures from machines of different kinds are not comparable (this
project's VMs are AMD EPYC or Intel Xeon with AVX512-BF16, the Xeons with AMX too, or AVX2 only)."""

from __future__ import annotations

import os
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

"""llama.cpp's ``llama-server`` on the embedded GGUF, as the peer the benches measure against.

Built by harness/llama_server.sh from the llama-cpp-python sdist's vendored llama.cpp (cached under
~/.cache/conclave); where it cannot be built (no toolchain, no sdist), the reason is returned and the bench skips it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from common.engine.loading import embedded_gguf_path
from harness.services import ROOT, Service

# ggml's only repacked CPU layout for the embedded GGUF's Q4_1 and Q8_0 tensors on x86 is its AMX one, and that
# crashes at the first matmul (SIGSEGV in ggml_backend_amx_mul_mat; llama.cpp of llama-cpp-python 0.3.36, Xeon
# with AMX): the peer runs its AVX512 or AVX2 kernels, as it does on CPUs without AMX.
RUN_FLAGS = ("--no-repack",)


def llama_server(work: Path, slots: int = 4, *flags: str) -> Service | str:
    """llama-server on the embedded GGUF with ``slots`` parallel sequences and 2 threads, or why it cannot run."""
    built = subprocess.run(["bash", str(ROOT / "harness" / "llama_server.sh")], capture_output=True, text=True,
                           env={**os.environ, "PYTHON": sys.executable})
    if built.returncode != 0:
        return f"llama-server not available: {(built.stderr.strip().splitlines() or ['build failed'])[-1]}"
    service = Service("llama-server", [], work / f"llama-{slots}")
    service.data_dir.mkdir(parents=True, exist_ok=True)
    service.proc = subprocess.Popen(
        [built.stdout.strip().splitlines()[-1], "-m", str(embedded_gguf_path()), "-np", str(slots), "-t", "2",
         *RUN_FLAGS, *flags, "--host", "127.0.0.1", "--port", str(service.port)], stdout=open(service.log_path, "ab"),
        stderr=subprocess.STDOUT, start_new_session=True)
    service.wait("health", 120)
    return service

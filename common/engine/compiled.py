"""The lean decoder's decode step for one to a few rows, compiled ahead of time with AOTInductor.

At a few rows a decode step of a small model is short on arithmetic and long on operators: profiled with 4-bit weights,
under half of a step was the int4 matmuls and most of the rest the launch cost of some forty small operators a layer
in eager PyTorch; on float16 copies (a float32 engine on an AVX2 CPU) fbgemm's matmuls were 54% of a step. Compiled
into one C++ function (norms, rotary embedding and attention fused into loops; the int4 matmuls called directly, the
float16 ones generated as loops that read the float16 weights), the step loses that launch cost;
``bench/weights.py`` measures compiled against eager in ``make bench``, and the README keeps the figures.

- The graph is exported once per shape of the model and torch build and kept under the cache directory; it holds no
  weights: it is loaded with the decoder's own tensors as its constants (shared, not copied), so the weights stay
  in memory once. The float16 weights are the exception: fbgemm's packed copies are opaque to a graph, so the step
  holds plain float16 tensors of the same values beside them (half the float32 weights' bytes again).
- The KV cache's capacity is a dynamic dimension, so one compiled step serves every length; on 4-bit weights the
  row count is one too, up to :data:`MAX_ROWS`.
- The step attends over the cache (the new token's column not yet written) and over the new token apart, and returns
  the new keys and values of every layer; the caller writes them with one copy. Writing them inside the graph would
  make it copy the whole cache, since a compiled graph may not mutate its inputs in place.
- At load the compiled step is checked against the eager one on a real cache; a step that disagrees, or a machine
  without a C++ compiler, keeps the eager step (:func:`compile_step` returns why, and the log says it).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import multiprocessing
import os
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from .decoding import Batch
from .int4 import GROUP, int4_matmul
from .llama import KVCache, _rotate

log = logging.getLogger(__name__)

# Rows a compiled step on 4-bit weights takes (a dynamic dimension of its graph): the load a panel puts on an expert,
# a few users and the orchestrator's consultations at once (measured on a 2-core AMX Xeon, compiled against eager:
# 1.54x tokens/s at 1 row, 1.42x at 2, 1.27x at 4, 1.16x at 8, 1.01x at 16). Wider batches run the eager step, on
# the dense weights (see common.engine.llama.INT4_MAX_TOKENS). A step on float16 copies stays one row: its
# generated product-and-sum loop was slower than fbgemm's kernel at 2 and 4 rows (measured on an AVX2 EPYC).
MAX_ROWS = 8

# The eager and the compiled step agree to rounding (measured: 1.2% of the largest logit on the embedded model, a few
# bfloat16 steps); further apart means a broken compile.
MAX_RELATIVE_DIFFERENCE = 0.05


class _Step(torch.nn.Module):
    """One decode step of up to ``dims["rows"]`` rows, over a :class:`~common.engine.llama.LlamaDecoder`'s tensors
    (as buffers, so the exported graph names them and the runner can be given them at load). ``dims`` are its sizes
    and, by projection, its kind: ``("int4", plane count, width)`` or ``("fp16", width)``, all plain values: a
    compile process rebuilds the module from them."""

    PROJECTIONS = ("qkv", "o", "gate_up", "down")

    def __init__(self, dims: dict, buffers: dict[str, torch.Tensor]):
        super().__init__()
        self.dims = dims
        self.heads, self.kv_heads, self.dim = dims["heads"], dims["kv_heads"], dims["dim"]
        self.hidden, self.intermediate, self.eps = dims["hidden"], dims["intermediate"], dims["eps"]
        self.dtype, self.layers, self.out = dims["dtype"], dims["layers"], dims["out"]
        self.max_rows = dims["rows"]
        for name, tensor in buffers.items():
            self.register_buffer(name, tensor)

    @classmethod
    def of(cls, decoder) -> _Step:
        buffers = {"embed": decoder.embed, "final_norm": decoder.final_norm}
        out = {}

        def weights(prefix: str, projection) -> None:
            if projection.int4 is not None:
                for j, (packed, scales_and_zeros) in enumerate(projection.int4.planes):
                    buffers[f"{prefix}_p{j}_w"], buffers[f"{prefix}_p{j}_sz"] = packed, scales_and_zeros
                out[prefix] = ("int4", len(projection.int4.planes), projection.int4.out_features)
            else:
                buffers[f"{prefix}_w"] = projection.half.unpacked()
                out[prefix] = ("fp16", projection.half.out_features)

        weights("head", decoder.head)
        for i, layer in enumerate(decoder.layers):
            buffers[f"l{i}_attn_norm"], buffers[f"l{i}_mlp_norm"] = layer.attn_norm, layer.mlp_norm
            for name in cls.PROJECTIONS:
                weights(f"l{i}_{name}", getattr(layer, name))
        dims = {"heads": decoder.heads, "kv_heads": decoder.kv_heads, "dim": decoder.head_dim,
                "hidden": decoder.hidden, "intermediate": decoder.intermediate, "eps": decoder.eps,
                "dtype": decoder.dtype, "layers": len(decoder.layers), "out": out,
                "rows": MAX_ROWS if all(kind == "int4" for kind, *_ in out.values()) else 1}
        return cls(dims, buffers)

    def shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {name: (tuple(b.shape), b.dtype) for name, b in self.named_buffers()}

    def _linear(self, prefix: str, x: torch.Tensor) -> torch.Tensor:
        kind, *sizes = self.out[prefix]
        if kind == "fp16":
            # Written as a product and a sum, inductor makes one loop that reads each float16 weight once and
            # multiplies in float32; x @ w.float().T would write a float32 copy of the weights every step.
            return (x[..., None, :] * getattr(self, f"{prefix}_w").float()).sum(-1)
        count, out_features = sizes
        planes = [(getattr(self, f"{prefix}_p{j}_w"), getattr(self, f"{prefix}_p{j}_sz")) for j in range(count)]
        return int4_matmul(x, planes, out_features)

    def forward(self, ids, cos, sin, keys, values, bias):
        """ids [rows, 1]; cos, sin [rows, 1, 1, dim] (see :func:`~common.engine.llama._rotate`); keys, values
        [layers, rows, kv_heads, capacity, dim], read only; bias [rows, 1, 1, capacity], 0 where a column is attended
        and -inf elsewhere (padding, and the columns from the new token's on).
        Returns logits [rows, vocab] and the new token's keys and values [layers, rows, kv_heads, 1, dim]."""
        heads, kv_heads, dim = self.heads, self.kv_heads, self.dim
        group, rows = heads // kv_heads, ids.shape[0]
        x = F.embedding(ids, self.embed).float()
        new_keys, new_values = [], []
        for i in range(self.layers):
            h = F.rms_norm(x, (self.hidden,), getattr(self, f"l{i}_attn_norm"), self.eps).to(self.dtype)
            qk, v = self._linear(f"l{i}_qkv", h).float().split([(heads + kv_heads) * dim, kv_heads * dim], dim=-1)
            qk = _rotate(qk.view(rows, 1, heads + kv_heads, dim), cos, sin)
            # query head h reads key head h // group, as SDPA's grouped-query attention does in the eager step
            q = qk[:, 0, :heads].reshape(rows, kv_heads, group, dim) * dim ** -0.5
            k = qk[:, 0, heads:].reshape(rows, kv_heads, 1, dim)
            v = v.reshape(rows, kv_heads, 1, dim)
            scores = torch.cat([torch.matmul(q, keys[i].transpose(-1, -2)) + bias, (q * k).sum(-1, keepdim=True)],
                               dim=-1).softmax(dim=-1)  # [rows, kv_heads, group, capacity + 1]
            attn = torch.matmul(scores[..., :-1], values[i]) + scores[..., -1:] * v
            new_keys.append(k)
            new_values.append(v)
            x = x + self._linear(f"l{i}_o", attn.reshape(rows, 1, heads * dim).to(self.dtype))
            h = F.rms_norm(x, (self.hidden,), getattr(self, f"l{i}_mlp_norm"), self.eps).to(self.dtype)
            gate, up = self._linear(f"l{i}_gate_up", h).split([self.intermediate, self.intermediate], dim=-1)
            x = x + self._linear(f"l{i}_down", F.silu(gate) * up)
        last = F.rms_norm(x, (self.hidden,), self.final_norm, self.eps).to(self.dtype)
        return self._linear("head", last)[:, -1], torch.stack(new_keys), torch.stack(new_values)


def unavailable_reason(decoder) -> str | None:
    """Why the decode step of this decoder cannot be compiled, or None."""
    projections = [p for layer in decoder.layers for p in (layer.qkv, layer.o, layer.gate_up, layer.down)]
    if any(p.int4 is None and p.half is None for p in [*projections, decoder.head]):
        return "the compiled step runs 4-bit weights or float16 copies, and some of this model's are dense only"
    return None


def compile_step(decoder, cache_dir: Path) -> Callable | str:
    """The compiled decode step of ``decoder`` (same inputs and outputs as :meth:`_Step.forward`), or why not."""
    reason = unavailable_reason(decoder)
    if reason:
        return reason
    module = _Step.of(decoder).eval()
    try:
        path = _package(module, cache_dir)
        step = CompiledStep(torch._inductor.aoti_load_package(str(path)), dict(module.named_buffers()),
                            module.max_rows)
        disagreement = _disagreement(decoder, step)
    except Exception as exc:  # no compiler, an unsupported operator: the eager step still works
        log.warning("compiled decode step unavailable: %s: %s", type(exc).__name__, exc)
        return f"compile failed: {type(exc).__name__}"
    if disagreement:
        log.warning("compiled decode step not used: %s", disagreement)
        return disagreement
    return step


def _disagreement(decoder, step) -> str | None:
    """How the compiled step's logits differ from the eager step's after short prompts (two of unlike lengths, so one
    is padded, where the step takes two rows), or None if they agree to rounding (the same top tokens, each logit
    within :data:`MAX_RELATIVE_DIFFERENCE` of the largest)."""
    prompts = [list(range(1, 17)), list(range(3, 12))][: min(2, step.max_rows)]
    with torch.inference_mode():
        logits, batch = decoder.prefill(prompts, pad_id=0, remember=False)
        token = logits.argmax(-1, keepdim=True)
        twin = Batch(KVCache.stacked([(batch.cache, None, 0)], batch.cache.length), batch.mask.clone())
        expected = decoder.decode(batch, token)
        decoder.step, eager = step, decoder.step
        try:
            got = decoder.decode(twin, token)
        finally:
            decoder.step = eager
    difference = float((expected - got).abs().max()) / float(expected.abs().max())
    if not torch.equal(expected.argmax(-1), got.argmax(-1)) or not difference <= MAX_RELATIVE_DIFFERENCE:
        return f"its logits differ from the eager step's by {100 * difference:.1f}% of the largest"
    return None


class CompiledStep:
    """The loaded package, run on the decoder's own tensors (the runner keeps pointers to them: they live here)."""

    def __init__(self, runner, buffers: dict[str, torch.Tensor], max_rows: int):
        self.max_rows = max_rows
        # Inductor passes the int4 kernel's group size as a constant tensor of its own at each call, named
        # constantN; every constant that is not one of the weights is one of those (a wrong guess fails the
        # comparison with the eager step at load).
        group_sizes = {name: torch.tensor(GROUP) for name in runner.get_constant_fqns() if name not in buffers}
        self.constants = {**buffers, **group_sizes}
        runner.load_constants(self.constants, check_full_update=True, user_managed=True)
        self.runner = runner

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.runner(*inputs)


def _example(dims: dict, capacity: int = 96) -> tuple[torch.Tensor, ...]:
    """Step inputs of the right shapes and dtypes (what the compile needs; their values do not matter). Two rows
    where the row count is dynamic: an example of one would make the export specialize on it."""
    rows = min(2, dims["rows"])
    cache = (dims["layers"], rows, dims["kv_heads"], capacity, dims["dim"])
    angle = torch.zeros((rows, 1, 1, dims["dim"]))
    return (torch.ones((rows, 1), dtype=torch.long), angle, angle.clone(), torch.randn(cache), torch.randn(cache),
            torch.zeros((rows, 1, 1, capacity)))


def _package(module: _Step, cache_dir: Path) -> Path:
    """The AOTInductor package of ``module``'s graph (without its weights), compiled now or found in the cache.

    Its name hashes what the graph depends on: the torch build, the CPU's instruction set, the shapes and dtypes of
    the weights, and this code. One process compiles while others starting beside it wait for the file. The compile
    runs in a process of its own: inductor leaves a few hundred MB behind in the process that compiles (measured:
    an expert's idle RSS 1296 MB after compiling in-process, 1043 MB after loading the package)."""
    key = hashlib.sha256()
    for part in (torch.__version__, torch.backends.cpu.get_cpu_capability(), Path(__file__).read_bytes(),
                 (Path(__file__).parent / "llama.py").read_bytes(), (Path(__file__).parent / "int4.py").read_bytes(),
                 (Path(__file__).parent / "fp16.py").read_bytes(),
                 repr(sorted(module.shapes().items())), repr(module.dims)):
        key.update(part if isinstance(part, bytes) else part.encode())
    folder = Path(cache_dir) / "compiled"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"decode-step-{key.hexdigest()[:16]}.pt2"
    with open(folder / f"{path.stem}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            return path
        failed = path.with_suffix(".failed")
        if failed.exists():  # not ~50 s again at every start: the same code on the same machine fails the same way
            raise RuntimeError(f"an earlier compile of this step failed (delete {failed} to try again)")
        torch._inductor.cpp_builder.get_cpp_compiler()  # fails at once where there is none (a slim image)
        log.info("compiling the decode step (once per model shape and torch build)")
        partial = path.with_suffix(f".{os.getpid()}.partial.pt2")
        try:
            child = multiprocessing.get_context("spawn").Process(
                target=_compile, args=(module.dims, module.shapes(), str(partial)), name="compile-decode-step")
            child.start()
            child.join()
            if child.exitcode != 0:
                failed.touch()
                raise RuntimeError(f"the compile process failed (exit code {child.exitcode}; its log is above)")
            os.replace(partial, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
    return path


def _compile(dims: dict, shapes: dict[str, tuple[tuple[int, ...], torch.dtype]], package_path: str) -> None:
    """In the compile process: the step over empty weights of the decoder's shapes, exported and compiled."""
    module = _Step(dims, {name: torch.empty(shape, dtype=dtype) for name, (shape, dtype) in shapes.items()}).eval()
    capacity = torch.export.Dim("capacity", min=2, max=1 << 20)
    rows = {0: torch.export.Dim("rows", min=1, max=dims["rows"])} if dims["rows"] > 1 else {}
    cache = {1: rows[0], 3: capacity} if rows else {3: capacity}
    dynamic = {"ids": rows or None, "cos": rows or None, "sin": rows or None, "keys": cache, "values": cache,
               "bias": {**rows, 3: capacity}}
    with torch.inference_mode():
        exported = torch.export.export(module, _example(dims), dynamic_shapes=dynamic)
    with torch._inductor.config.patch({"aot_inductor.package_constants_in_so": False}):
        torch._inductor.aoti_compile_and_package(exported, package_path=package_path)

"""The benchmarks' CPU header reads /proc/cpuinfo's first core."""

from __future__ import annotations

from bench.machine import cpu, kernels_of

CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
"""


def test_model_and_features_of_an_amx_xeon(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    info = cpu(path)
    assert info["model"].startswith("Intel(R) Xeon(R) Platinum 8481C")
    assert info["AVX2"] and info["AVX512-BF16"] and info["AMX-BF16"] and info["AMX-INT8"]


def test_an_avx2_only_cpu_and_a_machine_without_cpuinfo(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 fma\n")
    info = cpu(path)
    assert info["AVX2"] and not info["AVX512"] and not info["AMX-BF16"]
    assert cpu(tmp_path / "absent")["model"] == "unknown"


VERBOSE = """onednn_verbose,v1,info,cpu,isa:Intel AVX-512 with float16, Intel DL Boost and bfloat16 support, AMX
onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:bf16::blocked:ab::f0 dst:bf16::blocked:AB16b32a2b::f0,,
onednn_verbose,v1,primitive,exec,cpu,inner_product,brg_matmul:avx10_1_512_amx,forward_inference,src:bf16::blocked:ab::f0
onednn_verbose,v1,primitive,exec,cpu,inner_product,brg_matmul:avx10_1_512_amx,forward_inference,src:bf16::blocked:ab::f0
onednn_verbose,v1,primitive,exec,cpu,inner_product,brg_matmul:avx512_core,forward_inference,src:f32::blocked:ab::f0
"""


def test_the_kernels_oneDNN_says_it_ran_by_dtype():
    assert kernels_of(VERBOSE) == {"bf16": "brg_matmul:avx10_1_512_amx", "f32": "brg_matmul:avx512_core"}
    assert kernels_of("no verbose output") == {}

"""The benchmarks' CPU header reads /proc/cpuinfo's first core."""

from __future__ import annotations

from bench.machine import cpu

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

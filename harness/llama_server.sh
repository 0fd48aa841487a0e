#!/usr/bin/env bash
# Builds llama.cpp's llama-server from the llama.cpp vendored in the llama-cpp-python sdist (PyPI), once, and prints
# the binary's path. The build lives outside the repository (LLAMA_SERVER_CACHE), so later runs reuse it.
# Needs cmake and a C++ compiler; exits 3 with the reason when either is missing, so callers can skip honestly.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${LLAMA_SERVER_CACHE:-$HOME/.cache/conclave/llama-server-$VERSION}"
BIN="$CACHE/build/bin/llama-server"
PY="${PYTHON:-python3}"

if [[ -x "$BIN" ]]; then echo "$BIN"; exit 0; fi
for tool in cmake c++; do
  command -v "$tool" >/dev/null || { echo "no $tool on PATH: cannot build llama-server" >&2; exit 3; }
done
mkdir -p "$CACHE"
if [[ ! -d "$CACHE/src" ]]; then
  "$PY" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$CACHE" >&2 \
    || { echo "could not download the llama-cpp-python $VERSION sdist" >&2; exit 3; }
  mkdir -p "$CACHE/src"
  tar -xzf "$CACHE"/llama_cpp_python-"$VERSION".tar.gz -C "$CACHE/src" --strip-components=1
fi
cmake -S "$CACHE/src/vendor/llama.cpp" -B "$CACHE/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_CURL=OFF -DGGML_NATIVE=ON >&2
cmake --build "$CACHE/build" --target llama-server -j "$(nproc)" >&2
echo "$BIN"

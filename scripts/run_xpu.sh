#!/usr/bin/env bash
# speculative.py with the runtime environment IPEX-LLM recommended for Intel Data Center GPU Max, e.g.
#   scripts/run_xpu.sh --backend ipex-llm --repo-id-or-model-path /path/to/Baichuan2-7B-Chat
#   scripts/run_xpu.sh --device xpu --repo-id-or-model-path /path/to/Baichuan2-7B-Chat
# Variables already set in the caller's environment win.
set -euo pipefail

# oneAPI runtime for APT/offline installs (pip-installed oneAPI needs none). Sourced with an explicit
# argument so that setvars.sh does not parse this script's arguments; it also trips over `set -eu`.
if [ -z "${SETVARS_COMPLETED:-}" ] && [ -f /opt/intel/oneapi/setvars.sh ]; then
    set +eu
    source /opt/intel/oneapi/setvars.sh --force >&2  # its banner to stderr: --json keeps stdout clean
    set -eu
fi

# tcmalloc speeds up host allocations (conda install -c conda-forge gperftools=2.10 provides it).
for prefix in "${CONDA_PREFIX:-}" "${VIRTUAL_ENV:-}"; do
    if [ -n "$prefix" ] && [ -f "$prefix/lib/libtcmalloc.so" ]; then
        export LD_PRELOAD="${LD_PRELOAD:+$LD_PRELOAD:}$prefix/lib/libtcmalloc.so"
        break
    fi
done

export SYCL_PI_LEVEL_ZERO_USE_IMMEDIATE_COMMANDLISTS="${SYCL_PI_LEVEL_ZERO_USE_IMMEDIATE_COMMANDLISTS:-1}"
export ENABLE_SDP_FUSION="${ENABLE_SDP_FUSION:-1}"  # IPEX's fused scaled-dot-product attention
export SYCL_CACHE_PERSISTENT="${SYCL_CACHE_PERSISTENT:-1}"  # keep JIT-compiled kernels between runs

# By path, without cd: relative model paths are the caller's.
exec python "$(dirname "$0")/../speculative.py" "$@"

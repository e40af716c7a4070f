#!/usr/bin/env bash
# The whole GPU check in one go (its steps are limited to 8.5 minutes in all): what the machine has, the GPU tests,
# then python -m bench.gpu (engine variants, then end to end through `millibatch serve`). Every result goes
# to one folder; the tables are printed last.
#
#   bash bench/gpu_check.sh [OUT [BENCH ARGS...]]   # on a CUDA machine with onnxruntime-gpu, cuda-python, torch
#   bash bench/gpu_check.sh --quick [OUT]           # the same steps on CPU with a tiny model: tests the harness
#
# BENCH ARGS replace the GPU run's extra bench.gpu arguments. By default the fp16 model with CUDA graphs is
# also served by `serve --workers 4`, beside four separate servers (--scale-out): one event loop caps
# saturation (docs/GPU.md), and these say how far more processes behind one port lift it.
#
# PYTHON picks the interpreter (default: .venv/bin/python if there is one, else python3); BENCH_LIMIT the
# benchmark step's seconds (330). The STS-B test
# set comes from MILLIBATCH_STSB or ../shared/data/stsb-test.tsv. Each step has its own time limit and
# a failing step does not stop the ones after it; the exit status is that of the benchmark.
set -u
cd "$(dirname "$0")/.."
QUICK=0
if [ "${1:-}" = "--quick" ]; then QUICK=1; shift; fi
OUT=${1:-bench/results/gpu-check}
shift || true
if [ $# -gt 0 ]; then EXTRA=("$@"); else
    EXTRA=(--serve-also "ort-cuda-fp16-graphs-w4=ort-cuda-fp16-graphs:--workers 4" --scale-out ort-cuda-fp16-graphs:4)
fi
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONUNBUFFERED=1
export MILLIBATCH_STSB=${MILLIBATCH_STSB:-$(cd .. && pwd)/shared/data/stsb-test.tsv}
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"

# onnxruntime-gpu loads CUDA and cuDNN from the NVIDIA pip packages beside it; where they live elsewhere
# (torch's), the loader must be told, before any process starts.
NVIDIA_LIBS=$("$PYTHON" - <<'EOF'
import glob, importlib.util, os
spec = importlib.util.find_spec("nvidia")
roots = list(spec.submodule_search_locations) if spec and spec.submodule_search_locations else []
print(os.pathsep.join(sorted({d for r in roots for d in glob.glob(os.path.join(r, "*", "lib")) if os.path.isdir(d)})))
EOF
)
if [ -n "$NVIDIA_LIBS" ]; then export LD_LIBRARY_PATH="$NVIDIA_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi

step() {  # step NAME SECONDS COMMAND...: run with a time limit, output to $OUT/NAME.txt and the terminal
    local name=$1 limit=$2; shift 2
    echo "== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*"
    timeout --signal=TERM --kill-after=15 "$limit" "$@" > >(tee "$OUT/$name.txt") 2>&1
    local rc=$?
    echo "== $name exit $rc"
    return $rc
}

{
    date -u
    uname -a
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || echo "no nvidia-smi"
    "$PYTHON" - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for name in ("onnxruntime", "torch", "transformers", "numpy", "grpc", "google.protobuf", "tokenizers",
             "cuda.bindings", "pynvml"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"), getattr(module, "__file__", ""))
    except Exception as exc:  # report, do not stop
        print(name, "unavailable:", exc)
import onnxruntime
print("providers", onnxruntime.get_available_providers())
EOF
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

if [ "$QUICK" = 1 ]; then
    # CPU only: a tiny random model, the CPU engine, plain ORT and PyTorch on CPU, one server.
    TINY=$(mktemp -d)
    "$PYTHON" - "$TINY" <<'EOF'
import sys
from pathlib import Path
from millibatch.engines.convert.convert import ConvertOptions, convert
from tests.helpers import make_tiny_checkpoint
root = Path(sys.argv[1])
convert(ConvertOptions(source=str(make_tiny_checkpoint(root / "checkpoint", "embed")), output=root / "model"),
        progress=lambda _: None)
EOF
    step tests 300 "$PYTHON" -m pytest -q -m gpu tests/engines -rs -p no:cacheprovider
    step bench 300 "$PYTHON" -m bench.gpu --quick --model "$TINY/model" --checkpoint "$TINY/checkpoint" \
        --variants cpu,ort-plain,ort-iobind,torch-cpu,ort-cuda-fp32 --served cpu --rows 1,4 --tokens 16 --out "$OUT"
    rc=$?
    rm -rf "$TINY"
else
    # Converting takes CPU cores, the tests mostly the GPU: side by side they save a minute of GPU time.
    step convert 180 "$PYTHON" -m bench.gpu --convert-only --convert-dir "${CONVERT_DIR:-bench/results/raw}" &
    converting=$!
    step tests 180 "$PYTHON" -m pytest -q -m gpu tests/engines -rs -p no:cacheprovider -o "filterwarnings=default"
    wait "$converting"
    step bench "${BENCH_LIMIT:-330}" "$PYTHON" -m bench.gpu --convert-dir "${CONVERT_DIR:-bench/results/raw}" --seconds 2 --out "$OUT" \
        "${EXTRA[@]}"
    rc=$?
fi
echo
echo "== results in $OUT"
tail -n 4 "$OUT/tests.txt"
latest=$(ls -t "$OUT"/gpu-*.md 2>/dev/null | head -n 1)
if [ -n "$latest" ]; then cat "$latest"; else echo "no benchmark report"; fi
exit $rc

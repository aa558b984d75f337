#!/usr/bin/env bash
# GPU check 2 (device machine, one call, about 3-5 minutes on an H200; everything under $OUT):
#   a) versions and nvidia-smi                         -> $OUT/gpu_check2.log
#   b) pytest -m gpu over the test files with gpu marks -> $OUT/pytest-gpu.log (and the log)
#   c) the recently added tiny demo families through Dagster on $DEVICE, each sealed manifest's
#      device read back (bench/gpu_families.py)          -> $OUT/gpu_families.json
#   d) memory refusal of the Qwen2-VL rows against the device's real free memory
#      (bench/gpu_memory_refusal.py; 72B expected refused, 7B accepted on one H200)
#                                                        -> $OUT/gpu_memory_refusal.json
#   e) bench/embed_throughput.py, CLIP-L/14 size (random weights), torchvision decoder, 128 and
#      384 plates, bf16                                  -> $OUT/gpu-clip-l14-torchvision.json
# Each part runs under its own timeout and prints one PART line (ok / FAILED rc=N / TIMEOUT);
# the SUMMARY block at the end repeats them. Exit status: the number of parts that failed.
#
# Wheels: .whl/ (git-ignored, carried with the run tool's `carry`, installed into $SITE ahead of
# the image's packages) holds what the device image lacks (its package list: the device tool's
# KINDS.md): dagster 1.13.27 and its needs (pydantic, SQLAlchemy, alembic, dagster-postgres, ...),
# protobuf 6, timm, open_clip_torch, birder (+ polars, webdataset), carvekit, segment-anything,
# pycocotools. `bash bench/gpu_wheels.sh` fills it (about 53 MiB). transformers and
# huggingface_hub are the image's own (5.17 / 1.33 as last seen): 5.24 / 2.4 do not fit the
# 64 MiB the run tool carries (see gpu_wheels.sh); the versions part prints what ran.
#
# On the device (from the repo root, .whl carried; GIT_COMMIT names the commit in the summary):
#   GIT_COMMIT=<sha> bash bench/gpu_check2.sh
# Here, without a GPU (tests the script; cuda-only parts are skipped or run on the CPU):
#   DEVICE=cpu PY=/path/to/python3.12 EMBED_ARCH=tiny-clip EMBED_SIZES=8,16 OUT=/tmp/out bash bench/gpu_check2.sh
set -uo pipefail
OUT="${OUT:-bench/results}"
DEVICE="${DEVICE:-cuda}"
PY="${PY:-python3}"
SITE="${SITE:-/tmp/site}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check2.log"
STARTED=$(date +%s)
SUMMARY=()
FAILED=0

# part NAME TIMEOUT_S COMMAND...: run one part, record ok / FAILED / TIMEOUT with its seconds.
# A part's limit is cut to what is left of TOTAL_LIMIT_S (default 450 s, for a run tool timeout
# of 480 s), so the summary is always printed.
part() {
  local name=$1 limit=$2
  shift 2
  local t0=$(date +%s)
  local left=$(( ${TOTAL_LIMIT_S:-450} - (t0 - STARTED) - 10 ))
  [ "$left" -lt "$limit" ] && limit=$left
  echo
  if [ "$limit" -lt 5 ]; then
    SUMMARY+=("PART $name: SKIPPED (TOTAL_LIMIT_S spent)"); FAILED=$((FAILED + 1)); echo "${SUMMARY[-1]}"; return
  fi
  echo "===== PART $name (limit ${limit}s) ====="
  if declare -F "$1" >/dev/null; then  # a function of this script: run it in a child bash
    timeout --kill-after=10 "$limit" bash -c "set -uo pipefail; $(declare -f "$1"); $*"
  else
    timeout --kill-after=10 "$limit" "$@"
  fi
  local rc=$?
  local verdict=ok
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then verdict="TIMEOUT after ${limit}s"; FAILED=$((FAILED + 1))
  elif [ $rc -ne 0 ]; then verdict="FAILED rc=$rc"; FAILED=$((FAILED + 1)); fi
  local line="PART $name: $verdict ($(( $(date +%s) - t0 ))s)"
  echo "$line"
  SUMMARY+=("$line")
}

main() {
if [ -d .whl ] && [ -z "${SKIP_WHEELS:-}" ]; then
  t0=$(date +%s)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl || {
    echo "wheel install failed"; return 99; }
  echo "installed $(ls .whl/*.whl | wc -l) wheels from .whl/ into $SITE in $(( $(date +%s) - t0 ))s"
  export PYTHONPATH="$SITE:$PWD"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 HF_HUB_DISABLE_TELEMETRY=1 HF_HUB_DISABLE_XET=1 HF_HUB_DISABLE_PROGRESS_BARS=1
export AWB_INSTANCE_YAML="${AWB_INSTANCE_YAML:-dagster.sqlite.yaml}"  # no embedded PostgreSQL wheel carried
export TOKENIZERS_PARALLELISM=false
export OUT DEVICE PY EMBED_ARCH="${EMBED_ARCH:-clip-l14}" EMBED_SIZES="${EMBED_SIZES:-128,384}" BATCH="${BATCH:-128}"
export EMBED_DTYPE="${EMBED_DTYPE:-$([ "$DEVICE" = cpu ] && echo float32 || echo bfloat16)}"

versions() {
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader
  else
    echo "nvidia-smi: not on this machine"
  fi
  "$PY" - <<'EOF'
import importlib, os, platform
import torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| cuda available", torch.cuda.is_available(), "| cpus", os.cpu_count())
if torch.cuda.is_available():
    free, total = torch.cuda.mem_get_info()
    print("device", torch.cuda.get_device_name(), f"| free {free / 2**30:.1f} GiB of {total / 2**30:.1f} GiB")
names = ["dagster", "transformers", "huggingface_hub", "tokenizers", "safetensors", "pydantic", "sqlalchemy", "protobuf:google.protobuf",
         "grpcio:grpc", "torchvision", "timm", "open_clip", "birder", "carvekit", "segment_anything", "pycocotools", "polars",
         "numpy", "PIL", "pyarrow", "pytest"]
found = []
for name in names:
    label, _, module = name.partition(":")
    try:
        mod = importlib.import_module(module or label)
        found.append(f"{label} {getattr(mod, '__version__', '?')}")
    except Exception as exc:  # a missing package is reported, and the part that needs it fails
        found.append(f"{label} MISSING ({type(exc).__name__})")
print(" | ".join(found))
import awb_dagster.definitions  # the code location imports with these packages
print("awb_dagster.definitions imports")
EOF
}
part versions 90 versions

gpu_tests() {
  local files
  files=$(grep -l "pytest.mark.gpu" tests/test_*.py | tr '\n' ' ')
  echo "test files with gpu marks: $files"
  set -o pipefail
  "$PY" -m pytest -q -m gpu -rs --durations=5 -p no:cacheprovider --basetemp=/tmp/pt-gpu-check2 $files 2>&1 \
    | tee "$OUT/pytest-gpu.log" | grep -v "Warning\|warn("
}
part pytest-gpu 120 gpu_tests

part families 200 "$PY" bench/gpu_families.py --device "$DEVICE" --out "$OUT/gpu_families.json"

part memory-refusal 40 "$PY" bench/gpu_memory_refusal.py --device "$DEVICE" --out "$OUT/gpu_memory_refusal.json"

embed() {
  set -o pipefail
  "$PY" bench/embed_throughput.py --arch "$EMBED_ARCH" --sizes "$EMBED_SIZES" --device "$DEVICE" \
    --dtype "$EMBED_DTYPE" --batch-size "$BATCH" --decoder torchvision --instance sqlite \
    --workdir /tmp/awb-bench-check2 --out "$OUT/gpu-$EMBED_ARCH-torchvision.json" 2>&1 \
    | grep -v "Warning\|warn(\|Writing model"
}
part embed-throughput 180 embed

echo
echo "===== SUMMARY (commit ${GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo '?')}, device $DEVICE, $(( $(date +%s) - STARTED ))s) ====="
printf '%s\n' "${SUMMARY[@]}"
echo "files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
return $FAILED
}

main 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"

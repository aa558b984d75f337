#!/usr/bin/env bash
# GPU check (device machine): real-size CLIP ViT-L/14 and DINOv2-L (random weights) through
# the same single-run Dagster path in bf16, against a bare loop over the same plate files, with
# the PIL and the torchvision (nvjpeg) decoder.
# Needs the wheels in .whl/ (dagster and its pure-Python needs) on a machine with torch.
# Preparing .whl/ (dev machine, once; .whl/ is listed in .git/info/exclude and carried):
#   pip download --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --platform any -d /tmp/w \
#     dagster==$(pip show dagster | sed -n 's/^Version: //p') transformers==5.24.0 huggingface_hub==2.4.0
#   then copy into .whl/ only what the device image lacks (its package list is in the device
#   tool's KINDS.md): dagster*, pydantic*, sqlalchemy, alembic, mako, structlog, toposort, ...
set -uo pipefail
OUT="${OUT:-bench/results}"
mkdir -p "$OUT"
if [ -d .whl ] && [ -z "${SKIP_WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 HF_HUB_DISABLE_TELEMETRY=1 HF_HUB_DISABLE_XET=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, huggingface_hub, dagster, PIL; print('torch', torch.__version__, 'transformers', transformers.__version__, 'hf_hub', huggingface_hub.__version__, 'dagster', dagster.__version__, 'PIL', PIL.__version__, 'cpus', __import__('os').cpu_count())"
# The nvjpeg path against the PIL full decode, and the mixed batch on CUDA (tests/test_decoding.py).
if python3 -c "import pytest" 2>/dev/null; then
  python3 -m pytest -q -m gpu tests/test_decoding.py 2>&1 | tail -5
else
  echo "pytest is not installed here (add its wheel to .whl/): skipping tests/test_decoding.py -m gpu"
fi
# Synthetic 2000x2429 plates (or PLATES_DIR, replicated), two sizes so fixed costs cancel; each arch
# with both decoders (PIL in the decode workers; torchvision = batched nvjpeg on the GPU).
SIZES="${SIZES:-128,384}"
PLATE_ARGS=()
if [ -n "${PLATES_DIR:-}" ]; then PLATE_ARGS=(--plates "$PLATES_DIR" --replicate); fi
for arch in ${ARCHS:-clip-l14 dinov2-l}; do
  for decoder in ${DECODERS:-torchvision pil}; do
    python3 bench/embed_throughput.py --arch "$arch" --sizes "$SIZES" "${PLATE_ARGS[@]}" --device "${DEVICE:-cuda}" \
      --dtype bfloat16 --batch-size "${BATCH:-128}" --decoder "$decoder" --instance "${INSTANCE:-sqlite}" \
      --workdir /tmp/awb-bench --out "$OUT/gpu-$arch-$decoder.json" 2>&1 \
      | grep -v "Warning\|warn(\|Writing model"
  done
done
# Automatic mask generation, ours (bf16, batched prompts) vs segment-anything's generator (fp32),
# same converted vit_b weights and pixels (issue 3 goal: >= 3x faster, mean best-match IoU >= 0.95).
# Needs segment_anything, pycocotools, opencv-python-headless and scipy wheels in .whl/ as well.
if [ -z "${SKIP_AMG:-}" ]; then
  python3 bench/amg_compare.py --device "${DEVICE:-cuda}" --points-per-side 32 --repeats 3 \
    --out "$OUT/amg_compare-vit_b-pps32.json" 2>&1 \
    | grep -v "Warning\|warn("
fi

#!/usr/bin/env bash
# The checks a lent CUDA machine runs, in one call, most important first:
#   1. the device-fixture tests on the GPU (each also runs on the CPU in CI);
#   2. the scaling section on CUDA (mask layer time, kNN time and peak memory);
#   3. `bottleneck bench speed --device cuda`, one model group per process, so that a
#      group that fails or runs out of time loses only its own figures.
# Each step has its own time limit; every output lands in OUT (default ./cuda_out).
# Merge the speed files afterwards with `python benchmarks/merge_speed.py OUT/speed_cuda_*.json --scaling OUT/scaling_cuda.json --json F`.
# The machine needs torch (with CUDA), torch-geometric, transformers, pluggy, einops,
# safetensors, tqdm, hypothesis and pytest; the package itself is installed here, offline.
# DEVICE (default cuda), QUICK=1 (the bench's --quick) and MODEL_GROUPS ("modality:Model,Model ...")
# let the script be tried on a CPU first.
set -u
out=${1:-cuda_out}
device=${DEVICE:-cuda}
quick=${QUICK:+--quick}
groups=${MODEL_GROUPS:-text:BERT,BiLSTM image:ViT,CNN,CNN-8 pointcloud:PointNet pointcloud:DGCNN}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}

step() {  # step SECONDS NAME COMMAND...: run with a limit, say how it ended
  local limit=$1 name=$2; shift 2
  local start=$SECONDS
  echo "=== $name (limit ${limit}s)"
  timeout "$limit" "$@"
  echo "=== $name: exit $? after $((SECONDS - start))s"
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  "$python" -c "import torch, torch_geometric, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'pyg', torch_geometric.__version__, 'transformers', transformers.__version__, 'threads', torch.get_num_threads())"
  # editable, offline; else a wheel of this tree built beforehand (pip wheel --no-deps -w .whl .)
  "$python" -m pip install -q --no-deps --no-build-isolation --no-index -e . \
    || "$python" -m pip install -q --no-deps --no-index .whl/bottleneck_mask-*.whl || exit 1
  step 120 "device tests on $device" "$python" -m pytest -q -p no:cacheprovider -k cuda \
    tests/test_device_parity.py tests/test_compile_autocast.py tests/test_image_mask.py \
    tests/test_pointcloud_mask.py tests/test_text_models.py tests/test_neighbors.py
  step 60 "scaling on $device" "$python" -m bottleneck.scaling --device "$device" --json "$out/scaling_$device.json"
  for group in $groups; do
    modality=${group%%:*} models=${group#*:}
    step 200 "bench speed on $device: $models" "$python" -m bottleneck bench speed --device "$device" $quick \
      --modality "$modality" --models "$models" --no-scaling --no-progress --json "$out/speed_${device}_${models%%,*}.json"
  done
} 2>&1 | tee "$out/log.txt"

#!/usr/bin/env bash
# The checks a lent CUDA machine runs, most important first:
#   tests       the device-fixture tests on the GPU (each also runs on the CPU in CI);
#   profile     benchmarks/launch_profile.py: operations, kernel launches and host syncs
#               per call (forward, sparse call, explanation, training steps) and their
#               ratios on the bench's batch repeated 1, 4, 16 and 64 times (where sparse
#               inference starts to pay on the GPU);
#   text        `bottleneck bench speed --device cuda` for BERT and the BiLSTM,
#   image       ... for the ViT and the CNNs,
#   pointnet    ... for PointNet,
#   dgcnn       ... for DGCNN: one model group per process, so that a group that fails
#               or runs out of time loses only its own figures;
#   scaling     the scaling section on CUDA (mask layer time, kNN time and peak memory).
# Seconds each took on an NVIDIA H200 (2026-11-30, torch 2.11, 16 CPU threads): tests 99,
# text 87, image 106, pointnet 144, dgcnn about 160, scaling over 70 (the 100k point did
# not finish in 70 s); profile not yet run there. All of them take longer than one 600 s
# call and than a session's 15 minutes of device time: pick with STEPS (for the launch
# question, STEPS="tests profile" first), and split the rest over calls made while the
# machine is warm.
#
# Usage: benchmarks/cuda_check.sh [OUT]   (default ./cuda_out; every output lands there)
# STEPS (default all, in the order above), DEVICE (default cuda) and QUICK=1 (the bench's
# --quick) let a part run alone, or the script be tried on a CPU first.
# Merge the speed files afterwards:
#   python benchmarks/merge_speed.py OUT/speed_cuda_*.json --scaling OUT/scaling_cuda.json --json F
# The machine needs torch (with CUDA), torch-geometric, transformers, pluggy, einops,
# safetensors, tqdm, hypothesis and pytest; the package itself is installed here, offline.
set -u
out=${1:-cuda_out}
device=${DEVICE:-cuda}
quick=${QUICK:+--quick}
steps=${STEPS:-tests profile text image pointnet dgcnn scaling}
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

bench() {  # bench MODALITY MODELS: one model group of the speed bench
  step 240 "bench speed on $device: $2" "$python" -m bottleneck bench speed --device "$device" $quick \
    --modality "$1" --models "$2" --no-scaling --no-progress --json "$out/speed_${device}_${2%%,*}.json"
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  "$python" -c "import torch, torch_geometric, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'pyg', torch_geometric.__version__, 'transformers', transformers.__version__, 'threads', torch.get_num_threads())"
  # editable, offline; else a wheel of this tree built beforehand (pip wheel --no-deps -w .whl .)
  "$python" -m pip install -q --no-deps --no-build-isolation --no-index -e . \
    || "$python" -m pip install -q --no-deps --no-index .whl/bottleneck_mask-*.whl || exit 1
  for name in $steps; do
    case $name in
      tests) step 150 "device tests on $device" "$python" -m pytest -q -p no:cacheprovider -k cuda \
               --continue-on-collection-errors tests/ ;;  # every test the device fixture gave a cuda id
      profile) step 320 "launch profile on $device" "$python" benchmarks/launch_profile.py --device "$device" \
                 --times 1,4,16,64 --repeats 11 --json "$out/launch_$device.json" ;;
      text) bench text BERT,BiLSTM ;;
      image) bench image ViT,CNN,CNN-8 ;;
      pointnet) bench pointcloud PointNet ;;
      dgcnn) bench pointcloud DGCNN ;;
      scaling) step 200 "scaling on $device" "$python" -m bottleneck.scaling --device "$device" \
                 --json "$out/scaling_$device.json" ;;
      *) echo "unknown step $name (tests profile text image pointnet dgcnn scaling)"; exit 2 ;;
    esac
  done
} 2>&1 | tee -a "$out/log.txt"

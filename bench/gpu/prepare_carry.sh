#!/usr/bin/env bash
# Prepares the git-ignored folders that travel to the GPU machine (which has no Debian packages and no registry):
#   gpu_deps/googletest   GoogleTest sources (Debian's googletest package)
#   gpu_deps/engine       nlohmann-json headers, pcre2.h and libpcre2-8.a (Debian's nlohmann-json3-dev, libpcre2-dev),
#                         httplib.h (header-only, from Debian's cpp-httplib source package)
#   gpu-data/             a 4-layer SmolLM2 written by our own `hipserve shrink`, and 200 KB of a shared text
# gpu_act/ (real activations) is written by bench/gpu/dump_activations (see docs/GPU.md). Run from the repository root
# after `make` (needs build/hipserve and the default model).
set -euo pipefail
mkdir -p gpu_deps/engine/include gpu_deps/engine/lib gpu-data
[ -d gpu_deps/googletest ] || cp -r /usr/src/googletest gpu_deps/
cp -r /usr/include/nlohmann gpu_deps/engine/include/
cp /usr/include/pcre2.h gpu_deps/engine/include/
cp /usr/lib/x86_64-linux-gnu/libpcre2-8.a gpu_deps/engine/lib/
# cpp-httplib for `serve` on the GPU machine: Debian's package is a compiled library linked against this
# machine's OpenSSL, so the header-only httplib.h of the same Debian source package (0.11.4+ds, the upstream
# tarball; Debian's patches are not applied: good enough for a test build on the GPU machine) travels instead.
if [ ! -f gpu_deps/engine/include/httplib.h ]; then
  t=$(mktemp -d)
  curl -sSf -o "$t/src.tar.xz" http://deb.debian.org/debian/pool/main/c/cpp-httplib/cpp-httplib_0.11.4+ds.orig.tar.xz &&
    echo "8b1a5df569003b6a4f24c68489bbda5c64aec94697bdc9ebba5d79408b2ae7eb  $t/src.tar.xz" | sha256sum -c --quiet &&
    tar -xf "$t/src.tar.xz" -C "$t" && cp "$t"/*/httplib.h gpu_deps/engine/include/httplib.h ||
    echo "warning: cpp-httplib source not fetched: the GPU build's serve will be a stub"
  rm -rf "$t"
fi
[ -f gpu-data/smollm2-4l.gguf ] ||
  build/hipserve shrink -m models/SmolLM2-135M-Instruct.Q4_1.gguf -o gpu-data/smollm2-4l.gguf --layers 4
TEXT=../shared/data/texts/dracula.txt
[ -f gpu-data/text.txt ] || { [ -f "$TEXT" ] && head -c 200000 "$TEXT" > gpu-data/text.txt; } || true
du -sh gpu_deps gpu-data gpu_act 2>/dev/null || true

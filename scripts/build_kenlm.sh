#!/usr/bin/env bash
# Build KenLM's `lmplz` and `build_binary` (needed to *build* n-gram LMs; the kenlm Python module only queries)
# from KenLM's source release into .tools/kenlm/bin. Idempotent: exits early when both binaries exist.
#
# Needs: cmake, a C++ compiler, Boost (program_options, system, thread, test), zlib, bz2, lzma. On Debian/Ubuntu:
#   apt-get install -y cmake build-essential libboost-program-options-dev libboost-system-dev \
#       libboost-thread-dev libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev
#
# Environment: KENLM_PREFIX (default <repo>/.tools/kenlm), KENLM_VERSION (default 0.3.0), JOBS (default 2),
#              PYTHON (default python3; its pip downloads the source release).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="${KENLM_PREFIX:-$ROOT/.tools/kenlm}"
BIN="$PREFIX/bin"
VERSION="${KENLM_VERSION:-0.3.0}"
JOBS="${JOBS:-2}"
PYTHON="${PYTHON:-python3}"

if [[ -x "$BIN/lmplz" && -x "$BIN/build_binary" ]]; then
    echo "kenlm: lmplz and build_binary already in $BIN"
    exit 0
fi

for tool in cmake c++ make tar; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "error: '$tool' not found. Install the build tools first, e.g.:" >&2
        echo "  apt-get install -y cmake build-essential libboost-program-options-dev libboost-system-dev \\" >&2
        echo "      libboost-thread-dev libboost-test-dev zlib1g-dev libbz2-dev liblzma-dev" >&2
        exit 1
    fi
done

WORK="$(mktemp -d "${TMPDIR:-/tmp}/kenlm-build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

echo "kenlm: downloading the kenlm==$VERSION source release"
# --no-binary kenlm (not :all:, which would also build cmake and other build deps from source).
"$PYTHON" -m pip download --quiet --no-deps --no-binary kenlm "kenlm==$VERSION" -d "$WORK/src"

ARCHIVE="$(find "$WORK/src" -maxdepth 1 -name 'kenlm-*.tar.gz' | head -n 1)"
if [[ -z "$ARCHIVE" ]]; then
    echo "error: pip did not download a kenlm source archive into $WORK/src" >&2
    exit 1
fi
tar -xzf "$ARCHIVE" -C "$WORK"
SRC="$(find "$WORK" -maxdepth 1 -mindepth 1 -type d -name 'kenlm*' | head -n 1)"

echo "kenlm: building lmplz and build_binary in $SRC/build (-j$JOBS)"
cmake -S "$SRC" -B "$SRC/build" -DCMAKE_BUILD_TYPE=Release >"$WORK/cmake.log" 2>&1 || {
    tail -n 30 "$WORK/cmake.log" >&2
    echo "error: cmake configure failed (missing Boost/zlib/bz2/lzma headers? see the apt-get line in $0)" >&2
    exit 1
}
cmake --build "$SRC/build" -j "$JOBS" --target lmplz build_binary >"$WORK/build.log" 2>&1 || {
    tail -n 30 "$WORK/build.log" >&2
    echo "error: building lmplz/build_binary failed" >&2
    exit 1
}

mkdir -p "$BIN"
for exe in lmplz build_binary; do
    # copy then rename, so an interrupted run never leaves a half-written binary that passes the check above
    install -m 0755 "$SRC/build/bin/$exe" "$BIN/.$exe.tmp"
    mv -f "$BIN/.$exe.tmp" "$BIN/$exe"
done
echo "kenlm: installed $BIN/lmplz and $BIN/build_binary"

#!/usr/bin/env bash
# Benchmark-only build of libFM (Rendle), the baseline that bench/bench_libfm.py runs on our splits.
#
#   bash bench/setup_libfm.sh                  # clones github.com/srendle/libfm at the pinned commit
#   LIBFM_SRC=/path/to/libfm.git bash bench/setup_libfm.sh   # builds from a local clone or mirror
#   bash bench/setup_libfm.sh --bin            # prints where the binary is (or would be); builds nothing
#   .venv/bin/python bench/bench_libfm.py --data out/frappe
#
# libFM is never a dependency of afm-dist (CI and `make test` do not need it). The binary goes to a
# cache outside the repository, ${AFM_LIBFM_CACHE:-~/.cache/afm-dist}/libfm-<version>/bin/libFM,
# and the script does nothing when it is already there. The repository has no release tags, so
# the pin is a commit: the head of master, whose banner says "Version: 1.4.4".
set -euo pipefail
LIBFM_VERSION="1.4.4"
LIBFM_COMMIT="30b9c799c41d043f31565cbf827bf41d0dc3e2ab"
LIBFM_URL="https://github.com/srendle/libfm.git"
CACHE="${AFM_LIBFM_CACHE:-$HOME/.cache/afm-dist}"
PREFIX="$CACHE/libfm-$LIBFM_VERSION-${LIBFM_COMMIT:0:7}"
BIN="$PREFIX/bin/libFM"
if [ "${1:-}" = "--bin" ]; then
  echo "$BIN"  # bench/bench_libfm.py asks here, so the pin is written only in this file
  exit 0
fi

if [ -x "$BIN" ]; then
  echo "libFM $LIBFM_VERSION (${LIBFM_COMMIT:0:7}) already built: $BIN"
  exit 0
fi
for tool in git g++ make; do
  command -v "$tool" >/dev/null || { echo "setup_libfm.sh: $tool not found; install it (Debian/Ubuntu: apt-get install git g++ make)" >&2; exit 2; }
done

BUILD="$(mktemp -d "${TMPDIR:-/tmp}/libfm-build.XXXXXX")"
trap 'rm -rf "$BUILD"' EXIT
SRC="${LIBFM_SRC:-}"
if [ -z "$SRC" ]; then
  SRC="$BUILD/libfm.git"
  git clone --quiet --bare "$LIBFM_URL" "$SRC"
fi
# A git directory (bare clone, mirror) or a work tree: `git -C` reads either.
GIT=(git -C "$SRC")
if ! "${GIT[@]}" cat-file -e "$LIBFM_COMMIT^{commit}" 2>/dev/null; then
  echo "setup_libfm.sh: $SRC has no commit $LIBFM_COMMIT; point LIBFM_SRC at a clone of $LIBFM_URL" >&2
  exit 2
fi
"${GIT[@]}" archive "$LIBFM_COMMIT" | tar -x -C "$BUILD"
make -C "$BUILD/src/libfm" -j1 libFM >"$BUILD/make.log" 2>&1 || { cat "$BUILD/make.log" >&2; exit 1; }

# Into place only when built: an interrupted build leaves no binary that looks finished.
mkdir -p "$PREFIX/bin"
cp "$BUILD/bin/libFM" "$PREFIX/bin/libFM.tmp"
mv "$PREFIX/bin/libFM.tmp" "$BIN"
echo "$LIBFM_COMMIT" >"$PREFIX/COMMIT"
echo "libFM $LIBFM_VERSION (${LIBFM_COMMIT:0:7}) built: $BIN"

#!/usr/bin/env bash
# Set up afm-dist on a Linux machine with Python 3.11: system packages, .venv, the package and
# its pinned dependencies, and Horovod 0.28.1 built from source (PyTorch + Gloo, NCCL when a CUDA
# toolkit is present) into a wheel cache outside the repository.
#
# Idempotent: when nothing it depends on changed since the last successful run, it checks that
# Horovod still works and exits in seconds.
#
# Environment:
#   SPARK             the stack profile: 4 (default: pyspark 4.3, pyarrow 26, NumPy 2, pandas 3) or
#                     3.5 (for Spark 3.5 clusters: pyspark 3.5.9, pyarrow 25, NumPy 1, pandas 2);
#                     the pins are scripts/stack-spark$SPARK.txt
#   AFM_VENV          the venv to create or update (default: .venv in the repository)
#   PYTHON            interpreter to create the venv with (default: python3.11, else python3)
#   AFM_WHEEL_CACHE   Horovod wheel cache (default: ${XDG_CACHE_HOME:-~/.cache}/afm-dist/wheels)
#   AFM_SKIP_APT=1    never call apt-get (fail instead when a system package is missing)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AFM_VENV:-$ROOT/.venv}"
SPARK="${SPARK:-4}"
STACK="$ROOT/scripts/stack-spark$SPARK.txt"
HOROVOD_VERSION="0.28.1"
PETASTORM_VERSION="0.13.1"
TORCH_VERSION="2.13.0"
CACHE="${AFM_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/afm-dist/wheels}"
STAMP="$VENV/.afm-setup-stamp"

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }
[ -f "$STACK" ] || die "SPARK=$SPARK: no such profile (choose SPARK=4, the default, or SPARK=3.5)"

# ---------------------------------------------------------------- system packages
apt_install() {
  [ "${AFM_SKIP_APT:-0}" = "1" ] && die "missing system packages: $* (AFM_SKIP_APT=1 set; install them yourself)"
  local sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  command -v apt-get >/dev/null || die "missing system packages: $* (no apt-get here; install them with your package manager)"
  log "installing Debian packages: $*"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

need=()
if ! command -v java >/dev/null || ! java -version 2>&1 | grep -qE 'version "(17|21)'; then
  need+=(openjdk-17-jre-headless)
fi
command -v cmake >/dev/null || need+=(cmake)
command -v g++ >/dev/null || need+=(g++)
command -v make >/dev/null || need+=(make)
[ -x /usr/bin/time ] || need+=(time)  # GNU time: peak memory in bench/bench_large_pipeline.py
# tests/train/test_multihost.py: two "hosts" as network namespaces, the second reached over SSH
command -v ip >/dev/null || need+=(iproute2)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
[ ${#need[@]} -gt 0 ] && apt_install "${need[@]}"

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' 2>/dev/null \
  || die "$PYTHON is not Python 3.11; set PYTHON=/path/to/python3.11"

# ---------------------------------------------------------------- fast path
key="$(cat "$ROOT/pyproject.toml" "$ROOT/scripts/setup.sh" "$ROOT/scripts/cxx17-wrapper.sh" "$STACK" | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$key" ] && [ -x "$VENV/bin/horovodrun" ]; then
  if "$VENV/bin/python" -c 'import horovod.torch as h, petastorm, pyspark; assert h.gloo_built()' 2>/dev/null; then
    log "already set up (stamp $key, profile SPARK=$SPARK, $VENV); horovod.torch with Gloo imports"
    exit 0
  fi
fi

# ---------------------------------------------------------------- venv + python packages
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
PIP_LOG="$VENV/.setup-pip.log"
pip_install() {  # quiet unless it fails; then the end of pip's output
  if ! "${PIP[@]}" install "$@" >"$PIP_LOG" 2>&1; then
    tail -n 30 "$PIP_LOG" >&2
    die "pip install $* failed (full output: $PIP_LOG)"
  fi
}
log "installing Python packages into $VENV (profile SPARK=$SPARK: $(grep -v '^#' "$STACK" | tr '\n' ' '))"
pip_install --upgrade "pip>=23" "setuptools>=77,<81" wheel
# torch first and on its own: an already installed CUDA build of the same version satisfies it.
pip_install "torch==$TORCH_VERSION"
# The profile's pins as constraints: a venv of the other profile is moved to this one's versions.
pip_install -e "$ROOT[test]" -c "$STACK"
# petastorm declares setuptools<70, which conflicts with torch's setuptools>=77; its real needs
# are listed in pyproject.toml, so it is installed without its declared dependencies.
pip_install --no-deps "petastorm==$PETASTORM_VERSION"

# ---------------------------------------------------------------- horovod
torch_ver="$("$VENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')"
cuda_tag="cpu"
if command -v nvcc >/dev/null && "$VENV/bin/python" -c 'import torch,sys; sys.exit(0 if torch.version.cuda else 1)'; then
  cuda_tag="cuda$("$VENV/bin/python" -c 'import torch; print(torch.version.cuda)')"
fi
py_tag="py$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
HVD_DIR="$CACHE/horovod-$HOROVOD_VERSION-torch$torch_ver-$py_tag-$cuda_tag"
mkdir -p "$HVD_DIR"
wheel="$(ls "$HVD_DIR"/horovod-"$HOROVOD_VERSION"-*.whl 2>/dev/null | head -n1 || true)"
if [ -z "$wheel" ]; then
  log "building horovod $HOROVOD_VERSION wheel (torch $torch_ver, $cuda_tag) into $HVD_DIR; this takes ~8 minutes"
  # Horovod's bundled gloo does not configure with pip's cmake 4.x: use the system cmake.
  "${PIP[@]}" uninstall -q -y cmake 2>/dev/null || true
  export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
         HOROVOD_WITHOUT_TENSORFLOW=1 HOROVOD_WITHOUT_MXNET=1
  if [ "$cuda_tag" != "cpu" ]; then
    export HOROVOD_GPU_OPERATIONS=NCCL
  fi
  export CXX="$ROOT/scripts/cxx17-wrapper.sh"
  export MAKEFLAGS="-j$(nproc)"
  build_log="$HVD_DIR/build.log"
  tmp_wheels="$(mktemp -d "$HVD_DIR/.build-XXXXXX")"
  if ! "${PIP[@]}" wheel --no-build-isolation --no-deps --no-cache-dir -w "$tmp_wheels" \
        "horovod==$HOROVOD_VERSION" >"$build_log" 2>&1; then
    tail -n 40 "$build_log" >&2
    rm -rf "$tmp_wheels"
    die "horovod build failed; full log: $build_log"
  fi
  mv "$tmp_wheels"/horovod-*.whl "$HVD_DIR"/  # the wheel appears in the cache only when complete
  rm -rf "$tmp_wheels"
  wheel="$(ls "$HVD_DIR"/horovod-"$HOROVOD_VERSION"-*.whl | head -n1)"
fi
log "installing $wheel"
pip_install --no-deps --force-reinstall "$wheel"

check="$("$VENV/bin/horovodrun" --check-build 2>&1)" || { echo "$check" >&2; die "horovodrun --check-build failed"; }
echo "$check" >&2
echo "$check" | grep -qE '\[X\] PyTorch' || die "horovod was built without PyTorch support"
echo "$check" | grep -qE '\[X\] Gloo' || die "horovod was built without Gloo support"
echo "$key" >"$STAMP"
log "done"

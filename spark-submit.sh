#!/usr/bin/env bash
# Run an afm-dist Spark job with the project's Spark and Python.
#
#   ./spark-submit.sh jobs/preprocess.py --schema schemas/frappe.yaml --input ... --output ...
#
# Environment:
#   AFM_SPARK_MASTER       master URL (default local[*]); e.g. spark://host:7077, yarn, k8s://...
#   AFM_SPARK_UI=1         turn the Spark UI on (bound to 127.0.0.1); off by default
#   AFM_SPARK_SUBMIT_ARGS  extra spark-submit arguments, e.g. "--executor-memory 4g"
#   AFM_VENV               the venv whose Spark and Python run the job (default: .venv; `make setup
#                          SPARK=3.5 VENV=.venv-spark3.5` makes a second one)
#   PYSPARK_PYTHON         executors' Python (default: this venv's). On a real cluster it must be a
#                          Python with afm-dist's dependencies on every node (same path), or ship
#                          a packed environment with --archives via AFM_SPARK_SUBMIT_ARGS.
# The afm_dist package itself is shipped to executors as a zip with --py-files.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${AFM_VENV:-$ROOT/.venv}"
die() { printf 'spark-submit.sh: %s\n' "$*" >&2; exit 2; }

[ $# -ge 1 ] || die "usage: ./spark-submit.sh JOB.py [ARGS...]  (jobs are in $ROOT/jobs)"
job="$1"; shift
[ -f "$job" ] || die "$job: no such job file (jobs are in $ROOT/jobs)"
[ -x "$VENV/bin/spark-submit" ] || die "no Spark in $VENV: run 'make setup' first"

# Ship the library as a zip named by its content hash, rebuilt only when the code changes.
pyfiles="$("$VENV/bin/python" - "$ROOT" <<'PY'
import hashlib, os, sys, zipfile
root = sys.argv[1]
pkg = os.path.join(root, "afm_dist")
files = sorted(
    os.path.join(d, f) for d, dirs, fs in os.walk(pkg) if "__pycache__" not in d
    for f in fs if f.endswith((".py", ".yaml", ".json"))
)
h = hashlib.sha256()
for f in files:
    h.update(os.path.relpath(f, root).encode()); h.update(open(f, "rb").read())
out_dir = os.path.join(root, "build", "pyfiles")
os.makedirs(out_dir, exist_ok=True)
out = os.path.join(out_dir, f"afm_dist-{h.hexdigest()[:12]}.zip")
if not os.path.exists(out):
    tmp = out + f".tmp{os.getpid()}"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:
            z.write(f, os.path.relpath(f, root))
    os.replace(tmp, out)
print(out)
PY
)"

export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$VENV/bin/python}"
export PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-$VENV/bin/python}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

master="${AFM_SPARK_MASTER:-local[*]}"
# A local run binds to loopback instead of whatever address the hostname resolves to.
case "$master" in local*) export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}" ;; esac

ui=(--conf spark.ui.enabled=false)
if [ "${AFM_SPARK_UI:-0}" = "1" ]; then
  ui=(--conf spark.ui.enabled=true --conf spark.driver.bindAddress=127.0.0.1 --conf spark.driver.host=127.0.0.1)
fi
# shellcheck disable=SC2206
extra=(${AFM_SPARK_SUBMIT_ARGS:-})

exec "$VENV/bin/spark-submit" \
  --master "$master" \
  "${ui[@]}" \
  --conf spark.sql.session.timeZone=UTC \
  --driver-java-options "-Dlog4j2.configurationFile=file://$ROOT/conf/log4j2.properties" \
  --conf "spark.executorEnv.PYTHONHASHSEED=0" \
  --py-files "$pyfiles" \
  "${extra[@]}" \
  "$job" "$@"

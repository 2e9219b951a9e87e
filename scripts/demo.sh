#!/usr/bin/env bash
# The whole pipeline on the embedded default data (generated logs with a planted interaction):
# generate -> preprocess (Spark) -> FM, then AFM from FM (horovodrun -np 2, Gloo) -> score the
# test split (Spark) -> explain AFM's attention (Spark). Ends with a table of test RMSE.
#
# Environment: AFM_DEMO_ROWS (default 300000), AFM_DEMO_OUT (default out/demo), AFM_DEMO_NP (2),
# AFM_DEMO_EPOCHS (default 6), AFM_VENV (default .venv).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ROWS="${AFM_DEMO_ROWS:-300000}"
OUT="${AFM_DEMO_OUT:-out/demo}"
NP="${AFM_DEMO_NP:-2}"
EPOCHS="${AFM_DEMO_EPOCHS:-6}"
export AFM_VENV="${AFM_VENV:-$ROOT/.venv}"
export PATH="$AFM_VENV/bin:$PATH"
mkdir -p "$OUT"
start=$(date +%s)
stage() { printf '\n=== [%4ds] %s\n' "$(( $(date +%s) - start ))" "$*"; }

stage "1/6 generate $ROWS synthetic logs (planted user x item and item x daytime interactions)"
./spark-submit.sh jobs/generate.py --rows "$ROWS" --output "$OUT/logs" --overwrite

stage "2/6 preprocess with schemas/synthetic.yaml (Spark)"
./spark-submit.sh jobs/preprocess.py --schema schemas/synthetic.yaml --input "$OUT/logs" \
  --output "$OUT/data" --overwrite

HVD=(horovodrun -np "$NP" -H "localhost:$NP" --gloo python -m afm_dist.train --data "$OUT/data"
     --epochs "$EPOCHS" --batch-size 512 --embedding-dim 64 --attention-factor 64 --lr 0.05 --overwrite)
stage "3/6 train FM on $NP workers (horovodrun, Gloo)"
"${HVD[@]}" --model fm --output "$OUT/models/fm"

stage "4/6 train AFM initialised from FM on $NP workers"
"${HVD[@]}" --model afm --init-from "$OUT/models/fm" --output "$OUT/models/afm" --interaction-dropout 0.2

stage "5/6 score the test split with both models (Spark)"
for m in fm afm; do
  ./spark-submit.sh jobs/score.py --model "$OUT/models/$m" --input "$OUT/data/test" \
    --output "$OUT/scores/$m" --overwrite
done

stage "6/6 explain AFM's attention (Spark)"
./spark-submit.sh jobs/explain.py --model "$OUT/models/afm" --input "$OUT/data/test" \
  --output "$OUT/explain" --overwrite

stage "done"
python - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
print(f"\n{'model':<6} {'test RMSE':>10} {'test MAE':>9} {'best val RMSE':>14} {'parameters':>11}")
for m in ("fm", "afm"):
    s = json.loads((out / "scores" / m / "metrics.json").read_text())
    info = json.loads((out / "models" / m / "model.json").read_text())
    print(f"{m.upper():<6} {s['rmse']:>10.4f} {s['mae']:>9.4f} {info['best']['val_rmse']:>14.4f} {info['num_parameters']:>11,}")
print(f"""
data set:        {out / 'data'}  (metadata.json, vocabulary/, rejected/)
models:          {out / 'models' / 'fm'}, {out / 'models' / 'afm'}  (model.safetensors, metrics.jsonl)
training curves: {out / 'models' / 'fm' / 'curves.png'}, {out / 'models' / 'afm' / 'curves.png'}
test metrics:    {out / 'scores' / 'fm' / 'metrics.json'}, {out / 'scores' / 'afm' / 'metrics.json'}
attention:       {out / 'explain' / 'attention_heatmap.png'}, {out / 'explain' / 'field_pairs.csv'}, {out / 'explain' / 'rows.csv'}""")
PY

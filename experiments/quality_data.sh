#!/usr/bin/env bash
# The data sets of the quality experiments (issues 24 and 26): three real data sets, two splits each,
# and MovieLens and the Frappe logs again with each user's history.
#
#   bash experiments/quality_data.sh OUT      # writes OUT/{fl1,fl2,fr1,fr2,ml1,ml2,mh1,mh2,fh1,fh2}; ~15 minutes on 2 cores
#
# fl1/fl2: the shared Frappe libFM file as given splits (fl1: lines by NR%10, 7/2/1; fl2: a seeded
#          random 70/20/10 assignment of lines), schemas/frappe_libfm.yaml.
# fr1/fr2: the Frappe logs with sampled negatives, schemas/frappe.yaml with seeds 2017 and 99.
# ml1/ml2: MovieLens latest-small ratings with genres, schemas/movielens_ratings.yaml, seeds 2017 and 99.
# mh1/mh2: the same rows with each user's history of rated movies (issue 26),
#          schemas/movielens_ratings_history.yaml, seeds 2017 and 99.
# fh1/fh2: the Frappe logs of fr1/fr2 with each user's history of used apps (issue 26),
#          schemas/frappe_history.yaml, seeds 2017 and 99.
# Existing OUT/<name> directories are kept (delete one to rebuild it).
set -euo pipefail
OUT=${1:?usage: quality_data.sh OUT}
DATA=${AFM_DATA_DIR:-../shared/data}
cd "$(dirname "$0")/.."
mkdir -p "$OUT/src"
F=$DATA/frappe/frappe.validation.libfm
run() { [ -e "$OUT/$1/metadata.json" ] || ./spark-submit.sh jobs/preprocess.py --output "$OUT/$1" "${@:2}"; }
for s in 1 2; do
  D=$OUT/src/fl$s; mkdir -p "$D"
  if [ "$s" = 1 ]; then
    awk 'NR%10<7' "$F" > "$D/train.libfm"; awk 'NR%10>=7 && NR%10<9' "$F" > "$D/validation.libfm"
    awk 'NR%10==9' "$F" > "$D/test.libfm"
  else
    awk -v d="$D" 'BEGIN{srand(7)} {r=rand(); f=(r<0.7)?"train":(r<0.9)?"validation":"test"; print > (d "/" f ".libfm")}' "$F"
  fi
  run fl$s --schema schemas/frappe_libfm.yaml --train "$D/train.libfm" --validation "$D/validation.libfm" --test "$D/test.libfm"
done
sed 's/^seed: 2017/seed: 99/' schemas/frappe.yaml > "$OUT/src/frappe99.yaml"
sed 's/^seed: 2017/seed: 99/' schemas/movielens_ratings.yaml > "$OUT/src/movielens99.yaml"
run fr1 --schema schemas/frappe.yaml --input "$DATA/frappe/frappe_logs.tsv"
run fr2 --schema "$OUT/src/frappe99.yaml" --input "$DATA/frappe/frappe_logs.tsv"
run ml1 --schema schemas/movielens_ratings.yaml --input "$DATA/movielens-latest-small/ratings.csv" \
  --table movies="$DATA/movielens-latest-small/movies.csv"
run ml2 --schema "$OUT/src/movielens99.yaml" --input "$DATA/movielens-latest-small/ratings.csv" \
  --table movies="$DATA/movielens-latest-small/movies.csv"
sed 's/^seed: 2017/seed: 99/' schemas/movielens_ratings_history.yaml > "$OUT/src/movielens_history99.yaml"
run mh1 --schema schemas/movielens_ratings_history.yaml --input "$DATA/movielens-latest-small/ratings.csv" \
  --table movies="$DATA/movielens-latest-small/movies.csv"
run mh2 --schema "$OUT/src/movielens_history99.yaml" --input "$DATA/movielens-latest-small/ratings.csv" \
  --table movies="$DATA/movielens-latest-small/movies.csv"
sed 's/^seed: 2017/seed: 99/' schemas/frappe_history.yaml > "$OUT/src/frappe_history99.yaml"
run fh1 --schema schemas/frappe_history.yaml --input "$DATA/frappe/frappe_logs.tsv"
run fh2 --schema "$OUT/src/frappe_history99.yaml" --input "$DATA/frappe/frappe_logs.tsv"

#!/usr/bin/env bash
# Bulk ingestion on the emulators (DynamoDB Local + kinesalite), end to end: rows accepted
# AND projected into the Balances table, then `tally verify --backend aws`.
#   loadtest/aws.sh cli    # tally ingest --backend aws FILE --wait-projected
#   loadtest/aws.sh http   # POST /v1/transactions bodies of BODY_ROWS rows, CONCURRENCY at a time
#   loadtest/aws.sh ceiling  # DynamoDB Local alone, no tally: the ceiling of any bulk client
#                            # here (loadtest/ddb_ceiling.py)
# ROWS (20000), ACCOUNTS (1000), ZIPF (empty: uniform), BODY_ROWS (1000), CONCURRENCY (4),
# PORT (3300) override the defaults. Needs the emulators (`scripts/emulators up`); uses
# fresh table and stream names, so runs never see each other's data. A `tally serve
# --backend aws` on 127.0.0.1 plays the projector Lambda (its event source mapping as in
# template.yaml: 1 s window) and is stopped at the end.
# DynamoDB Local slows down over its lifetime (every write to a table with a stream looks up
# the stream's description, a query that grows with what the emulator has held): measure on
# freshly started emulators (`scripts/emulators down && scripts/emulators up`).
set -euo pipefail
cd "$(dirname "$0")/.."

mode="${1:-cli}"
case "$mode" in cli|http|ceiling) ;; *) echo "usage: loadtest/aws.sh cli|http|ceiling" >&2; exit 2 ;; esac
if [ "$mode" = ceiling ]; then
  eval "$(scripts/emulators env)"
  exec env PYTHONPATH="$PWD/.tools/python" python3 loadtest/ddb_ceiling.py
fi
rows="${ROWS:-20000}"
accounts="${ACCOUNTS:-1000}"
body_rows="${BODY_ROWS:-1000}"
concurrency="${CONCURRENCY:-4}"
port="${PORT:-3300}"

cargo build --release --quiet --bin tally
target_dir="${CARGO_TARGET_DIR:-target}"
case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
tally="$target_dir/release/tally"
eval "$(scripts/emulators env)"
suffix="bench-$$-$(date +%s)"
export TALLY_BACKEND=aws TALLY_EVENTS_TABLE="ev-$suffix" TALLY_BALANCES_TABLE="ba-$suffix" \
  TALLY_QUARANTINE_TABLE="qu-$suffix" TALLY_STREAM="st-$suffix" TALLY_SHARDS=2 \
  TALLY_BATCH_SIZE="${BATCH_SIZE:-10000}" TALLY_BATCH_WINDOW_MS="${BATCH_WINDOW_MS:-1000}"
work="$(mktemp -d)"
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -INT "$pid"; wait "$pid" || true; fi
  rm -rf "$work"
  # The emulators keep everything until they stop (kinesalite allows 100 shards in all).
  PYTHONPATH="$PWD/.tools/python" python3 - <<'PY' || true
import os, boto3
kw = dict(region_name="eu-west-1", aws_access_key_id="local", aws_secret_access_key="local")
ddb = boto3.client("dynamodb", endpoint_url=os.environ["AWS_ENDPOINT_URL_DYNAMODB"], **kw)
for t in ("TALLY_EVENTS_TABLE", "TALLY_BALANCES_TABLE", "TALLY_QUARANTINE_TABLE"):
    ddb.delete_table(TableName=os.environ[t])
boto3.client("kinesis", endpoint_url=os.environ["AWS_ENDPOINT_URL_KINESIS"], **kw).delete_stream(
    StreamName=os.environ["TALLY_STREAM"])
PY
}
trap cleanup EXIT

zipf=()
[ -n "${ZIPF:-}" ] && zipf=(--zipf "$ZIPF")
"$tally" gen --accounts "$accounts" --transactions "$rows" "${zipf[@]}" --seed 7 --out "$work/w.csv"

"$tally" serve --create-resources --addr "127.0.0.1:$port" 2>"$work/serve.log" &
pid=$!
up=""
for _ in $(seq 1 300); do
  curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && { up=1; break; }
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
[ -n "$up" ] || { echo "tally serve did not start:" >&2; cat "$work/serve.log" >&2; exit 1; }

now() { date +%s.%N; }
start="$(now)"
if [ "$mode" = cli ]; then
  echo "== tally ingest --backend aws ($rows rows, $accounts accounts) --wait-projected"
  "$tally" ingest "$work/w.csv" --rejects "$work/rejects.csv" --wait-projected 600 | head -3
else
  echo "== POST /v1/transactions: $rows rows, $accounts accounts, $body_rows rows/body, $concurrency at a time"
  mkdir "$work/bodies"
  tail -n +2 "$work/w.csv" | split -l "$body_rows" -d -a 5 - "$work/bodies/b"
  for f in "$work"/bodies/b*; do
    { head -1 "$work/w.csv"; cat "$f"; } >"$f.csv" && rm "$f"
  done
  ls "$work"/bodies/*.csv | xargs -P "$concurrency" -I{} \
    curl -fsS -o /dev/null -X POST "http://127.0.0.1:$port/v1/transactions" \
      -H 'content-type: text/csv' --data-binary @{}
  accepted="$(now)"
  echo "accepted in $(python3 -c "print(round($accepted - $start, 2))")s"
  # Projected when every event the server appended has been folded by its poller.
  for _ in $(seq 1 6000); do
    m="$(curl -fsS "http://127.0.0.1:$port/metrics")"
    a="$(awk '/^tally_events_appended_total/{print $2}' <<<"$m")"
    p="$(awk '/^tally_events_projected_total/{print $2}' <<<"$m")"
    [ "$a" = "$p" ] && break
    sleep 0.1
  done
  echo "events appended $a, projected $p"
fi
end="$(now)"
python3 -c "d=$end-$start; print(f'END TO END: $rows rows in {d:.2f}s = {$rows/d:.0f} rows/s (accepted and projected)')"
echo "== tally verify --backend aws"
"$tally" verify

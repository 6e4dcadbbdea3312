#!/usr/bin/env bash
# make bench-api: the gateway under load, on a throwaway cluster with release
# builds of the extension, gateway and worker. The load generator is its own
# process on loopback. Writes bench/results/api.json.
source "$(dirname "$0")/lib.sh"

bench_services api api_load

WORKER_DATABASE_URL="postgres://s2t_worker_svc@$DB" S2T_MODEL="$MODELS/ggml-base.bin" \
S2T_MODEL_EN="$MODELS/ggml-tiny.en.bin" \
    start_service bench-worker "$CARGO_TARGET_DIR/release/s2t-worker" run --maintenance-secs 0
APP_DATABASE_URL="postgres://s2t_gateway@$DB" S2T_GATEWAY_LISTEN="127.0.0.1:$GW_PORT" \
S2T_JWT_SECRET="$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')" \
S2T_SPOOL_DIR="$WORK/spool" S2T_DB_POOL=32 \
    start_service bench-gateway "$CARGO_TARGET_DIR/release/s2t-gateway"
for _ in $(seq 1 100); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$GW_PORT/readyz', timeout=1)" 2>/dev/null && break
    sleep 0.1
done

# 30 s of English speech.
TEXT="Please check the weather report before you drive to the mountains this weekend. The roads may be closed by snow."
espeak-ng -v en-us -s 150 -w "$WORK/raw.wav" "$TEXT $TEXT $TEXT $TEXT"
sox -V1 "$WORK/raw.wav" -r 16000 -c 1 -b 16 "$WORK/speech.wav" pad 0.5 0 trim 0 30
mkdir -p "$ROOT/bench/results"

say "load: login, listing at 64 clients, upload to done (30 s file)"
"$CARGO_TARGET_DIR/release/examples/api_load" --base "http://127.0.0.1:$GW_PORT" --users 8 \
    --wav "$WORK/speech.wav" --out "$ROOT/bench/results/api.json" \
    --ready-file "$WORK/ready" --go-file "$WORK/go" "$@" &
LOAD=$!
for _ in $(seq 1 600); do [ -f "$WORK/ready" ] && break; sleep 0.1; done
[ -f "$WORK/ready" ] || die "the load generator did not register its users"
# Each user gets 200 recordings to list (SQL, no transcription needed).
psql_admin "$WORK" "$PORT" bench -c "
    UPDATE s2t.user_subscriptions SET plan_id = (SELECT id FROM s2t.plans WHERE code = 'ENTERPRISE');
    SELECT count(s2t.check_quota_and_create_recording(u.id, 'realtime', 'en'))
      FROM s2t.users u, generate_series(1, 200);" >/dev/null
psql_admin "$WORK" "$PORT" bench -c "VACUUM ANALYZE" >/dev/null
# Memory and CPU of each service over the run (bench/proc_sample.py).
"$VENV/bin/python" "$ROOT/bench/proc_sample.py" --pid "$(cat "$STATE/bench-gateway.pid")" \
    --name gateway --out "$WORK/gateway.json" &
GW_SAMPLER=$!
"$VENV/bin/python" "$ROOT/bench/proc_sample.py" --pid "$(cat "$STATE/bench-worker.pid")" \
    --name worker --out "$WORK/worker.json" &
WK_SAMPLER=$!
touch "$WORK/go"
wait "$LOAD"
kill -TERM "$GW_SAMPLER" "$WK_SAMPLER"
wait "$GW_SAMPLER" "$WK_SAMPLER" || true
"$VENV/bin/python" - "$ROOT/bench/results/api.json" "$WORK/gateway.json" "$WORK/worker.json" <<'PY'
import json, sys
out, gw, wk = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
report = json.load(open(out))
requests = sum(v.get("requests", 0) for v in report.values() if isinstance(v, dict))
gw["requests"] = requests
gw["cpu_ms_per_request"] = round(gw["cpu_seconds"] * 1000 / max(requests, 1), 3)
gw["peak_mib_per_connection_at_64"] = round((gw["rss_peak_mib"] - gw["rss_start_mib"]) / 64, 3)
report["resources"] = {"gateway": gw, "worker": wk}
json.dump(report, open(out, "w"), indent=2)
print(f"gateway: RSS {gw['rss_start_mib']} MiB idle, {gw['rss_peak_mib']} MiB peak at 64 clients "
      f"({gw['peak_mib_per_connection_at_64']} MiB per connection); {gw['cpu_ms_per_request']} ms CPU per request")
print(f"worker: RSS {wk['rss_start_mib']} MiB idle, {wk['tree_rss_peak_mib']} MiB peak with its transcription "
      f"child; {wk['cpu_seconds']} CPU s over the run")
PY

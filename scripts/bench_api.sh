#!/usr/bin/env bash
# make bench-api: the gateway under load, on a throwaway cluster with release
# builds of the extension, gateway and worker. The load generator is its own
# process on loopback. Writes bench/results/api.json.
source "$(dirname "$0")/lib.sh"

ensure_deps
"$ROOT/scripts/models.sh"
MODELS="${S2T_MODELS_DIR:-$HOME/.cache/pg_s2t/models}"
mkdir -p "$STATE"
install_extension --release
ensure_pg_os_user
say "building the gateway and the load generator"
cargo build -q --release -p s2t-gateway --bin s2t-gateway --example api_load

WORK="$(mktemp -d "$STATE/bench-api.XXXXXX")"
chmod 755 "$WORK"
PORT="$(free_port)"
GW_PORT="$(free_port)"
cleanup() {
    stop_service bench-gateway 50
    stop_service bench-worker 50
    cluster_stop "$WORK" || true
    rm -rf "$WORK"
}
trap cleanup EXIT

bench_cluster "$WORK" "$PORT"
create_login_roles "$WORK" "$PORT" bench-gw bench-wk
DB="127.0.0.1:$PORT/bench"

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
touch "$WORK/go"
wait "$LOAD"

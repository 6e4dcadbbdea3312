#!/usr/bin/env bash
# make bench-realtime: realtime sessions through the gateway's /ws/s2t at
# real-time pace, 1, 2, 4 and 8 at once and then one long session, on a
# throwaway cluster with release builds. Writes bench/results/realtime.json.
# Extra arguments go to the load generator (e.g. --sessions 1,4
# --seconds 30 --long-seconds 0 for a quick run).
source "$(dirname "$0")/lib.sh"

bench_services rt realtime_bench
RT_PORT="$(free_port)"

# Real read speech: the five pocketsphinx-testdata sentences with a 1 s
# pause after each, as 48 kHz s16le (what a browser sends), and the batch
# transcript of the same audio as the reference.
LIBRIVOX=/usr/share/pocketsphinx/test/data/librivox
sox -n -r 16000 -c 1 -b 16 "$WORK/pause.wav" trim 0 1
PARTS=()
for f in "$LIBRIVOX"/*.wav; do PARTS+=("$f" "$WORK/pause.wav"); done
sox "${PARTS[@]}" "$WORK/speech16.wav"
sox "$WORK/speech16.wav" -t raw -e signed -b 16 -c 1 "$WORK/speech48.raw" rate 48000
"$CARGO_TARGET_DIR/release/s2t-worker" transcribe --model-en "$MODELS/ggml-tiny.en.bin" --language en \
    "$WORK/speech16.wav" | python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["text"]); sys.stdin.read()' \
    >"$WORK/reference.txt"
say "reference (batch, tiny.en): $(cat "$WORK/reference.txt")"

WORKER_LOG="$STATE/bench-worker.log"
: >"$WORKER_LOG"
WORKER_DATABASE_URL="postgres://s2t_worker_svc@$DB" S2T_MODEL_EN="$MODELS/ggml-tiny.en.bin" \
S2T_REALTIME_LISTEN="127.0.0.1:$RT_PORT" S2T_REALTIME_CAPACITY=8 \
    start_service bench-worker "$CARGO_TARGET_DIR/release/s2t-worker" run --maintenance-secs 0
APP_DATABASE_URL="postgres://s2t_gateway@$DB" S2T_GATEWAY_LISTEN="127.0.0.1:$GW_PORT" \
S2T_JWT_SECRET="$(python3 -c 'import secrets; print(secrets.token_urlsafe(48))')" \
S2T_SPOOL_DIR="$WORK/spool" \
    start_service bench-gateway "$CARGO_TARGET_DIR/release/s2t-gateway"
for _ in $(seq 1 100); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$GW_PORT/readyz', timeout=1)" 2>/dev/null && break
    sleep 0.1
done
for _ in $(seq 1 300); do
    live="$(psql_admin "$WORK" "$PORT" bench -c "SELECT count(*) FROM s2t.workers")"
    [ "$live" = "1" ] && break
    sleep 0.1
done
mkdir -p "$ROOT/bench/results"

"$CARGO_TARGET_DIR/release/examples/realtime_bench" --base "http://127.0.0.1:$GW_PORT" \
    --pcm "$WORK/speech48.raw" --reference "$WORK/reference.txt" \
    --out "$ROOT/bench/results/realtime.json" --ready-file "$WORK/ready" --go-file "$WORK/go" "$@" &
LOAD=$!
for _ in $(seq 1 600); do [ -f "$WORK/ready" ] && break; sleep 0.1; done
[ -f "$WORK/ready" ] || die "the load generator did not register its users"
psql_admin "$WORK" "$PORT" bench -c "
    UPDATE s2t.user_subscriptions SET plan_id = (SELECT id FROM s2t.plans WHERE code = 'ENTERPRISE');" >/dev/null
"$VENV/bin/python" "$ROOT/bench/proc_sample.py" --pid "$(cat "$STATE/bench-worker.pid")" \
    --name worker --out "$WORK/worker.json" &
SAMPLER=$!
touch "$WORK/go"
wait "$LOAD"
kill -TERM "$SAMPLER"
wait "$SAMPLER" || true
"$VENV/bin/python" - "$ROOT/bench/results/realtime.json" "$WORK/worker.json" "$WORKER_LOG" <<'PY'
import json, sys
out, wk = sys.argv[1], json.load(open(sys.argv[2]))
report = json.load(open(out))
most = max(r["sessions"] for r in report["runs"])
wk["mib_per_session_at_peak"] = round((wk["rss_peak_mib"] - wk["rss_start_mib"]) / most, 1)
report["worker"] = wk
# Where a final's time goes: the worker logs each final's decode.
finals = []
for line in open(sys.argv[3], errors="replace"):
    if '"realtime_final_decoded"' in line:
        try:
            finals.append(json.loads(line))
        except ValueError:
            pass
def avg(key):
    return round(sum(f[key] for f in finals) / len(finals), 1) if finals else None
report["final_decodes"] = {"count": len(finals), "mean_window_ms": avg("window_ms"),
                           "mean_queued_ms": avg("queued_ms"), "mean_decode_ms": avg("decode_ms")}
json.dump(report, open(out, "w"), indent=2)
for r in report["runs"]:
    e = r["end_of_speech_to_final_s"]
    print(f"{r['sessions']} session(s), {r['seconds']} s: end of speech -> final p50 {e['p50']} s, p95 {e['p95']} s; "
          f"first partial p50 {r['first_partial_s']['p50']} s; lag mean {r['lag_s']['mean']} s "
          f"(first minute {r['lag_s']['first_minute_mean']}, last {r['lag_s']['last_minute_mean']}); "
          f"WER vs batch {r['wer_vs_batch']['mean']}")
print(f"final decodes: {report['final_decodes']}")
print(f"worker RSS {wk['rss_start_mib']} MiB idle, {wk['rss_peak_mib']} MiB peak "
      f"({wk['mib_per_session_at_peak']} MiB per session at {most})")
PY

"""Quota-admission benchmark: pg_s2t against the specification's original.

Drives sp_check_quota_and_create_recording with pgbench (which ships with the
server) at several client counts over many users, for our extension and for
the specification's plpgsql loaded into the scratch schema seed_baseline.
Two comparisons: a realtime admission (no job) against the specification,
and an upload (which queues a job) against the specification with a job
insert added (baseline_spec_jobs.sql). Reports transactions per second and
p95 latency, checks that no user ends above its limit, writes
bench/results/quota.json and prints a table.

Then, as evidence of where the time goes (--evidence, on by default): wait
events sampled from pg_stat_activity during runs at the most clients, with
and without a NOTIFY per upload, pg_stat_statements and function timings for
an upload run; claim_job latency with 100k jobs queued across 1 and across
1,000 users; and how soon an idle LISTENing claimer gets a new upload.

Run through `make bench`, which starts a throwaway cluster and passes
--host/--port/--pg-bin.
"""

import argparse
import datetime
import glob
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time

import psycopg

UUID_SQL = "('00000000-0000-4000-8000-' || lpad({n}::text, 12, '0'))::uuid"

SETUP_OURS = f"""
INSERT INTO s2t.plans (code, name, monthly_minutes, monthly_usage_limit)
VALUES ('BENCH', 'Benchmark', 100000, %(limit)s);
INSERT INTO s2t.users (id, email, user_name, password_hash)
SELECT {UUID_SQL.format(n='n')}, 'u' || n || '@bench.test', 'u' || n, '$bench'
  FROM generate_series(1, %(users)s) n;
INSERT INTO s2t.user_profiles (user_id) SELECT id FROM s2t.users;
INSERT INTO s2t.user_subscriptions (user_id, plan_id)
SELECT id, (SELECT id FROM s2t.plans WHERE code = 'BENCH') FROM s2t.users;
"""

SETUP_BASELINE = f"""
INSERT INTO seed_baseline.plans (code, name, monthly_minutes, monthly_usage_limit)
VALUES ('BENCH', 'Benchmark', 100000, %(limit)s);
INSERT INTO seed_baseline.users (id, email, user_name, password_hash)
SELECT {UUID_SQL.format(n='n')}, 'u' || n || '@bench.test', 'u' || n, '$bench'
  FROM generate_series(1, %(users)s) n;
INSERT INTO seed_baseline.user_subscriptions (user_id, plan_id)
SELECT id, (SELECT id FROM seed_baseline.plans WHERE code = 'BENCH') FROM seed_baseline.users;
"""

RESET_OURS = ("TRUNCATE s2t.recordings CASCADE; "
              "UPDATE s2t.user_subscriptions SET usage_count = 0, used_seconds = 0, reserved_seconds = 0; ")
RESET_SPEC = ("TRUNCATE seed_baseline.recordings CASCADE; "
              "UPDATE seed_baseline.user_subscriptions SET usage_count = 0, used_seconds = 0; ")
# variant -> (schema family, source). The *_upload variants queue a job.
VARIANTS = {
    "pg_s2t": ("pg_s2t", "realtime"),
    "spec": ("spec", "realtime"),
    "pg_s2t_upload": ("pg_s2t", "upload"),
    "spec_job": ("spec", "upload"),
}
RESET = {v: RESET_OURS if fam == "pg_s2t" else RESET_SPEC for v, (fam, _) in VARIANTS.items()}
# Which variant each one is compared with.
PAIRS = [("pg_s2t", "spec"), ("pg_s2t_upload", "spec_job")]

# Users whose final count (from the recordings themselves) exceeds the limit.
OVER_LIMIT_BY_FAMILY = {
    "pg_s2t": """SELECT count(*) FROM (SELECT r.user_id FROM s2t.recordings r GROUP BY r.user_id
                 HAVING count(*) > (SELECT monthly_usage_limit FROM s2t.plans WHERE code = 'BENCH')) x""",
    "spec": """SELECT count(*) FROM (SELECT r.user_id FROM seed_baseline.recordings r GROUP BY r.user_id
                 HAVING count(*) > (SELECT monthly_usage_limit FROM seed_baseline.plans WHERE code = 'BENCH')) x""",
}
COUNTS_BY_FAMILY = {
    "pg_s2t": "SELECT count(*), count(DISTINCT user_id) FROM s2t.recordings",
    "spec": "SELECT count(*), count(DISTINCT user_id) FROM seed_baseline.recordings",
}
OVER_LIMIT = {v: OVER_LIMIT_BY_FAMILY[fam] for v, (fam, _) in VARIANTS.items()}
COUNTS = {v: COUNTS_BY_FAMILY[fam] for v, (fam, _) in VARIANTS.items()}
JOBS = {
    "pg_s2t": "SELECT count(*) FROM s2t.jobs",
    "spec": "SELECT count(*) FROM seed_baseline.jobs",
}


def script_for(variant):
    family, source = VARIANTS[variant]
    # The specification's code resolves its tables through search_path, as
    # it would in the public schema; PGOPTIONS sets it for these sessions.
    function = "s2t.sp_check_quota_and_create_recording" if family == "pg_s2t" else "sp_check_quota_and_create_recording"
    return ("\\set n random(1, {users})\n"
            f"SELECT * FROM {function}(" + UUID_SQL.format(n=":n") + f", '{source}', 'vi', '{{{{}}}}');\n")


def psql(args, sql):
    out = subprocess.run(
        [os.path.join(args.pg_bin, "psql"), "-h", args.host, "-p", str(args.port), "-U", args.user,
         "-d", args.db, "-v", "ON_ERROR_STOP=1", "-qAtX", "-c", sql],
        capture_output=True, text=True,
    )
    if out.returncode != 0:
        sys.exit(f"psql failed: {out.stderr.strip()}\nSQL: {sql[:300]}")
    return out.stdout.strip()


def run_pgbench(args, variant, clients, workdir, options="", script_text=None, transactions=None):
    script = os.path.join(workdir, f"{variant}.sql")
    with open(script, "w") as f:
        f.write(script_text if script_text is not None else script_for(variant).format(users=args.users))
    prefix = os.path.join(workdir, f"log_{variant}_{clients}")
    env = dict(os.environ)
    if VARIANTS.get(variant, ("pg_s2t",))[0] == "spec":
        options = "-c search_path=seed_baseline,public " + options
    env["PGOPTIONS"] = options
    threads = min(clients, os.cpu_count() or 1)
    length = ["-t", str(transactions)] if transactions else ["-T", str(args.seconds)]
    cmd = [os.path.join(args.pg_bin, "pgbench"), "-h", args.host, "-p", str(args.port), "-U", args.user,
           "-n", "-M", "prepared", "-c", str(clients), "-j", str(threads), *length,
           "-f", script, "-l", "--log-prefix", prefix, args.db]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    tps = next(float(line.split("=")[1].split()[0]) for line in out.splitlines() if line.startswith("tps ="))
    failed = next((int(line.split(":")[1].split()[0]) for line in out.splitlines()
                   if line.startswith("number of failed transactions")), 0)
    latencies = []
    for path in glob.glob(prefix + "*"):
        with open(path) as f:
            latencies.extend(int(line.split()[2]) for line in f if line.strip())
        os.remove(path)
    latencies.sort()

    def pct(p):
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] / 1000.0

    return {"tps": round(tps, 1), "p50_ms": round(pct(0.50), 3), "p95_ms": round(pct(0.95), 3),
            "transactions": len(latencies), "failed_transactions": failed}


def dsn(args):
    return f"host={args.host} port={args.port} user={args.user} dbname={args.db}"


def sample_waits(args, seconds, out):
    """Sample what the pgbench backends are doing every 10 ms, from one
    session inside the server (no client round trip per sample)."""
    rounds = int(seconds * 100)
    with psycopg.connect(dsn(args), autocommit=True) as conn:
        conn.execute("CREATE TEMP TABLE waits (what text)")
        conn.execute(f"""
            DO $$ BEGIN
              FOR i IN 1..{rounds} LOOP
                INSERT INTO waits
                SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU (no wait event)')
                  FROM pg_stat_activity
                 WHERE application_name = 'pgbench' AND state = 'active';
                PERFORM pg_stat_clear_snapshot();
                PERFORM pg_sleep(0.01);
              END LOOP;
            END $$""")
        rows = conn.execute("SELECT what, count(*) FROM waits GROUP BY 1 ORDER BY 2 DESC").fetchall()
    total = sum(n for _, n in rows) or 1
    out.update({what: round(100.0 * n / total, 1) for what, n in rows})


def run_with_waits(args, variant, clients, workdir, options=""):
    waits = {}
    sampler = threading.Thread(target=sample_waits, args=(args, max(1, args.seconds - 2), waits))
    sampler.start()
    result = run_pgbench(args, variant, clients, workdir, options)
    sampler.join()
    result["wait_events_pct_of_active_samples"] = waits
    return result


ALWAYS_NOTIFY_MARK = "IF NOT v_quiet THEN"


def evidence(args, workdir):
    """Where the admission time goes, at the most clients."""
    clients = max(int(c) for c in args.clients.split(","))
    out = {"clients": clients, "runs": []}
    original = psql(args, "SELECT pg_get_functiondef('s2t.trg_enqueue_upload()'::regprocedure)")
    assert ALWAYS_NOTIFY_MARK in original, "trg_enqueue_upload changed: update the evidence phase"
    always = original.replace(ALWAYS_NOTIFY_MARK, "IF true THEN")
    cases = [
        ("pg_s2t", "pg_s2t", "", "realtime: no job"),
        ("pg_s2t_upload", "pg_s2t_upload", "", "upload: job queued, NOTIFY only when a worker may be idle"),
        ("pg_s2t_upload_notify_each", "pg_s2t_upload", "", "upload with the trigger changed to NOTIFY on every upload (as 0.3.0)"),
        ("spec", "spec", "", "specification"),
        ("spec_job", "spec_job", "", "specification + job insert"),
        ("spec_job_notify_each", "spec_job", "-c bench.notify=on", "specification + job insert + NOTIFY on every insert"),
    ]
    for name, variant, options, what in cases:
        psql(args, RESET[variant])
        psql(args, "VACUUM ANALYZE")
        if name == "pg_s2t_upload_notify_each":
            psql(args, always)
        psql(args, "SELECT pg_stat_reset_shared('wal')")
        try:
            result = run_with_waits(args, variant, clients, workdir, options)
        finally:
            if name == "pg_s2t_upload_notify_each":
                psql(args, original)
        wal_bytes, wal_records, fpi = map(int, psql(args, "SELECT wal_bytes, wal_records, wal_fpi FROM pg_stat_wal").split("|"))
        n = result["transactions"] or 1
        result["wal_per_admission"] = {"bytes": round(wal_bytes / n), "records": round(wal_records / n, 1),
                                       "full_page_images": round(fpi / n, 2)}
        result.update(case=name, variant=variant, what=what, clients=clients)
        out["runs"].append(result)
        top = ", ".join(f"{k} {v}%" for k, v in list(result["wait_events_pct_of_active_samples"].items())[:3])
        print(f"  evidence {name:26} {result['tps']:9.1f} tps, WAL {result['wal_per_admission']['bytes']} B/tx;"
              f" waits: {top}", file=sys.stderr)

    # CPU cost alone: without waiting for the WAL flush at commit
    # (synchronous_commit = off) and with as many clients as cores, the
    # throughput is set by the work each admission does. The "fifo" case
    # swaps the enqueue trigger for a bare job insert (no fair turn, no
    # wake-up check, no NOTIFY): the cost of those two features.
    fifo = original[:original.index("BEGIN\n")] + (
        "BEGIN\n    INSERT INTO jobs (recording_id, user_id) VALUES (NEW.id, NEW.user_id);\n    RETURN NULL;\nEND\n$function$\n")
    cpu_clients = os.cpu_count() or 1
    out["cpu_bound"] = {"clients": cpu_clients, "settings": "synchronous_commit = off", "runs": []}
    for name, variant in [("pg_s2t", "pg_s2t"), ("spec", "spec"), ("pg_s2t_upload", "pg_s2t_upload"),
                          ("spec_job", "spec_job"), ("pg_s2t_upload_fifo_trigger", "pg_s2t_upload")]:
        psql(args, RESET[variant])
        psql(args, "VACUUM ANALYZE")
        if name.endswith("fifo_trigger"):
            psql(args, fifo)
        try:
            r = run_pgbench(args, variant, cpu_clients, workdir, "-c synchronous_commit=off")
        finally:
            if name.endswith("fifo_trigger"):
                psql(args, original)
        out["cpu_bound"]["runs"].append({"case": name, "tps": r["tps"],
                                         "us_per_admission_per_core": round(cpu_clients * 1e6 / r["tps"], 1)})
        print(f"  cpu-bound {name:26} {r['tps']:9.1f} tps", file=sys.stderr)

    # Per statement and per function, for one upload run: what each part
    # of the admission costs (the trigger's statements include the index
    # maintenance of the tables they write).
    psql(args, RESET["pg_s2t_upload"])
    psql(args, "VACUUM ANALYZE")
    psql(args, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset(); "
               "SELECT pg_stat_reset()")
    run = run_pgbench(args, "pg_s2t_upload", clients, workdir,
                      "-c pg_stat_statements.track=all -c track_functions=all")
    calls = run["transactions"] or 1
    statements = psql(args, f"""
        SELECT string_agg(format('%s|%s|%s|%s', round(total_exec_time::numeric / {calls} * 1000, 1), calls,
                                 round(mean_exec_time::numeric * 1000, 1), regexp_replace(left(query, 160), '\\s+', ' ', 'g')),
                          E'\\n' ORDER BY total_exec_time DESC)
          FROM (SELECT * FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 15) s""")
    out["statements_per_upload"] = [
        {"us_per_admission": float(a), "calls": int(b), "mean_us": float(c), "query": d}
        for a, b, c, d in (line.split("|", 3) for line in statements.splitlines() if line)
    ]
    functions = psql(args, f"""
        SELECT string_agg(format('%s|%s|%s|%s', funcname, calls, round(self_time::numeric / {calls} * 1000, 1),
                                 round(total_time::numeric / {calls} * 1000, 1)), E'\\n' ORDER BY self_time DESC)
          FROM pg_stat_user_functions WHERE schemaname = 's2t'""")
    out["functions_per_upload"] = [
        {"function": a, "calls": int(b), "self_us_per_admission": float(c), "total_us_per_admission": float(d)}
        for a, b, c, d in (line.split("|") for line in functions.splitlines() if line)
    ]
    out["statement_timing_run"] = {"tps_with_tracking": run["tps"], "transactions": run["transactions"]}
    return out


def load_queue(args, jobs, users):
    """jobs uploads spread evenly over the first `users` benchmark users,
    queued through the real trigger (each reserving 1 s, as an admission of
    a 1 s file would)."""
    psql(args, RESET_OURS)
    # Counted in one UPDATE below: the usage trigger would update one
    # subscription row per job inside one transaction, which for a single
    # user walks an ever longer chain of row versions.
    # enable_seqscan off: the foreign-key check of each job is planned once,
    # against the emptied recordings table, and would scan it for every row.
    psql(args, f"""
        SET enable_seqscan = off;
        ALTER TABLE s2t.recordings DISABLE TRIGGER increment_usage_on_recording;
        INSERT INTO s2t.recordings (user_id, source, language, reserved_seconds, expected_ms)
        SELECT {UUID_SQL.format(n='((n % ' + str(users) + ') + 1)')}, 'upload', 'en', 1, 1000
          FROM generate_series(0, {jobs - 1}) n;
        ALTER TABLE s2t.recordings ENABLE TRIGGER increment_usage_on_recording;
        UPDATE s2t.user_subscriptions s SET reserved_seconds = r.n, usage_count = r.n
          FROM (SELECT user_id, count(*) AS n FROM s2t.recordings GROUP BY 1) r WHERE r.user_id = s.user_id""")
    psql(args, "VACUUM ANALYZE")


def claim_latency(args, workdir):
    out = []
    script = "SELECT job_id FROM s2t.claim_job('bench', interval '1 hour');\n"
    for users in (1, 1000):
        for claimers in (1, 4):
            load_queue(args, args.queued_jobs, users)
            result = run_pgbench(args, f"claim_{users}_{claimers}", claimers, workdir,
                                 script_text=script, transactions=args.claims // claimers)
            running, users_served = map(int, psql(args, "SELECT count(*), count(DISTINCT user_id) FROM s2t.jobs "
                                                        "WHERE state = 'running'").split("|"))
            row = {"queued_jobs": args.queued_jobs, "users": users, "claimers": claimers,
                   "claims": result["transactions"], "claimed": running, "distinct_users_claimed": users_served,
                   "claims_per_s": result["tps"], "p50_ms": result["p50_ms"], "p95_ms": result["p95_ms"],
                   "failed": result["failed_transactions"]}
            out.append(row)
            print(f"  claim {args.queued_jobs} queued over {users:4} users, {claimers} claimers: "
                  f"p50 {row['p50_ms']:.2f} ms, p95 {row['p95_ms']:.2f} ms, {row['claims_per_s']:.0f}/s",
                  file=sys.stderr)
    return out


def wakeup_latency(args, samples=40):
    """An idle claimer that does what the worker's listener and slots do
    (LISTEN s2t_jobs; on a notification, claim until nothing is due), and an
    admission every 100 ms: how long from the admission's commit until the
    job is claimed."""
    psql(args, RESET_OURS)
    claimed = {}
    ready = threading.Event()
    stop = threading.Event()

    def claimer():
        with psycopg.connect(dsn(args), autocommit=True) as listen, \
                psycopg.connect(dsn(args), autocommit=True) as work:
            listen.execute("LISTEN s2t_jobs")
            ready.set()
            while not stop.is_set():
                for _ in listen.notifies(timeout=0.5, stop_after=1):
                    while True:
                        row = work.execute("SELECT recording_id FROM s2t.claim_job('idle', interval '1 hour')").fetchone()
                        if row is None:
                            break
                        claimed[str(row[0])] = time.perf_counter()

    thread = threading.Thread(target=claimer)
    thread.start()
    ready.wait(10)
    committed = {}
    user = UUID_SQL.format(n=1)
    with psycopg.connect(dsn(args), autocommit=True) as conn:
        for _ in range(samples):
            rec = conn.execute(f"SELECT s2t.check_quota_and_create_recording({user}, 'upload', 'en', '{{}}', NULL, 1000)").fetchone()[0]
            committed[str(rec)] = time.perf_counter()
            time.sleep(0.1)
    deadline = time.time() + 5
    while len(claimed) < samples and time.time() < deadline:
        time.sleep(0.05)
    stop.set()
    thread.join()
    lat = sorted((claimed[r] - committed[r]) * 1000 for r in committed if r in claimed)
    server = psql(args, "SELECT string_agg(round(extract(epoch FROM j.updated_at - r.created_at)::numeric * 1000, 2)::text, ',') "
                        "FROM s2t.jobs j JOIN s2t.recordings r ON r.id = j.recording_id WHERE j.state = 'running'")

    def pct(values, p):
        return round(values[min(len(values) - 1, int(p * len(values)))], 2) if values else None

    srv = sorted(float(x) for x in server.split(",") if x)
    return {"samples": samples, "claimed": len(lat), "target_ms": 50,
            "commit_to_claim_ms": {"p50": pct(lat, 0.5), "p95": pct(lat, 0.95), "max": round(max(lat), 2) if lat else None},
            "server_admission_start_to_claim_start_ms": {"p50": pct(srv, 0.5), "p95": pct(srv, 0.95),
                                                         "max": max(srv) if srv else None},
            "how": "psycopg client: LISTEN s2t_jobs, on each notification claim_job until none; "
                   "one upload every 100 ms from another connection, measured from its commit returning to the claim returning"}


def load_average():
    try:
        return open("/proc/loadavg").read().split()[:3]
    except OSError:
        return None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", default="s2t")
    parser.add_argument("--db", default="bench")
    parser.add_argument("--pg-bin", required=True)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--limit-users", type=int, default=100)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--queued-jobs", type=int, default=100_000)
    parser.add_argument("--claims", type=int, default=2000)
    parser.add_argument("--no-evidence", action="store_true", help="only the throughput table and the limit check")
    parser.add_argument("--out", default="bench/results/quota.json")
    args = parser.parse_args()

    here = os.path.dirname(os.path.abspath(__file__))
    psql(args, open(os.path.join(here, "baseline_spec.sql")).read())
    psql(args, open(os.path.join(here, "baseline_spec_jobs.sql")).read())
    # Throughput is measured with limits nobody reaches, so both sides do the
    # same work (an admission, never a cheaper refusal). A second phase then
    # hammers few users with a low limit and counts who ended above it.
    psql(args, SETUP_OURS % {"users": args.users, "limit": 1_000_000_000})
    psql(args, SETUP_BASELINE % {"users": args.users, "limit": 1_000_000_000})
    load_before = load_average()

    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for clients in [int(c) for c in args.clients.split(",")]:
            for variant in VARIANTS:
                psql(args, RESET[variant])
                psql(args, "VACUUM ANALYZE")
                result = run_pgbench(args, variant, clients, workdir)
                created, users_touched = map(int, psql(args, COUNTS[variant]).split("|"))
                jobs = int(psql(args, JOBS[VARIANTS[variant][0]]))
                result.update(variant=variant, clients=clients, recordings_created=created,
                              users_with_recordings=users_touched, jobs_queued=jobs)
                rows.append(result)
                print(f"  {variant:14} {clients:3} clients: {result['tps']:9.1f} tps, p95 {result['p95_ms']:.2f} ms",
                      file=sys.stderr)

        # Limit phase: the most clients over few users with a low limit.
        clients = max(int(c) for c in args.clients.split(","))
        psql(args, f"UPDATE s2t.plans SET monthly_usage_limit = {args.limit} WHERE code = 'BENCH';"
                   f"UPDATE seed_baseline.plans SET monthly_usage_limit = {args.limit} WHERE code = 'BENCH'")
        limit_rows = []
        saved_users = args.users
        args.users = args.limit_users
        for variant in VARIANTS:
            psql(args, RESET[variant])
            result = run_pgbench(args, variant, clients, workdir)
            created, users_touched = map(int, psql(args, COUNTS[variant]).split("|"))
            over = int(psql(args, OVER_LIMIT[variant]))
            limit_rows.append({"variant": variant, "clients": clients, "users": args.limit_users,
                               "usage_limit": args.limit, "calls": result["transactions"],
                               "recordings_created": created, "allowed_at_most": args.limit_users * args.limit,
                               "users_over_limit": over})
            print(f"  limit   {variant:14}: {result['transactions']} calls, {created} created"
                  f" (at most {args.limit_users * args.limit}), {over} users over the limit", file=sys.stderr)
        args.users = saved_users
        psql(args, "UPDATE s2t.plans SET monthly_usage_limit = 1000000000 WHERE code = 'BENCH';"
                   "UPDATE seed_baseline.plans SET monthly_usage_limit = 1000000000 WHERE code = 'BENCH'")

        extra = {}
        if not args.no_evidence:
            extra["evidence"] = evidence(args, workdir)
            extra["claim_latency"] = claim_latency(args, workdir)
            extra["wakeup_latency"] = wakeup_latency(args)

    summary = []
    for clients in sorted({r["clients"] for r in rows}):
        for ours_name, theirs_name in PAIRS:
            ours = next(r for r in rows if r["clients"] == clients and r["variant"] == ours_name)
            spec = next(r for r in rows if r["clients"] == clients and r["variant"] == theirs_name)
            summary.append({"clients": clients, "pg_s2t": ours_name, "spec": theirs_name,
                            "tps_ratio": round(ours["tps"] / spec["tps"], 2),
                            "p95_ratio": round(ours["p95_ms"] / spec["p95_ms"], 2)})

    server = psql(args, "SELECT version()")
    result = {
        "benchmark": "quota admission: sp_check_quota_and_create_recording",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_average_before": load_before, "load_average_after": load_average()},
        "server": server,
        "settings": {"users": args.users, "seconds_per_run": args.seconds,
                     "pgbench": "-M prepared, -j min(clients, cpus), random user per call, superuser session",
                     "server": "defaults of the embedded wheel (fsync on, synchronous_commit on), "
                               "pg_stat_statements loaded with track = none outside the statement-timing run",
                     "variants": {"pg_s2t": "realtime admission, no job", "spec": "the specification's function",
                                  "pg_s2t_upload": "upload admission, queues a job (fair turn, NOTIFY only when a worker may be idle)",
                                  "spec_job": "the specification's function with a job insert (baseline_spec_jobs.sql), no NOTIFY"}},
        "runs": rows,
        "limit_check": limit_rows,
        "ratios_pg_s2t_over_spec": summary,
        **extra,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")

    print()
    print("| clients | variant | tps | p50 ms | p95 ms |")
    print("|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['clients']} | {r['variant']} | {r['tps']:.0f} | {r['p50_ms']:.2f} | {r['p95_ms']:.2f} |")
    print()
    print("| limit check | clients | calls | created | allowed | users over limit |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in limit_rows:
        print(f"| {r['variant']} | {r['clients']} | {r['calls']} | {r['recordings_created']} |"
              f" {r['allowed_at_most']} | {r['users_over_limit']} |")
    print()
    for s in summary:
        print(f"{s['clients']:3} clients: {s['pg_s2t']}/{s['spec']} throughput x{s['tps_ratio']}, p95 x{s['p95_ratio']}")
    if "evidence" in extra:
        ev = extra["evidence"]
        print()
        print(f"| evidence at {ev['clients']} clients | tps | WAL bytes/tx | top wait events (% of active samples) |")
        print("|---|---:|---:|---|")
        for r in ev["runs"]:
            top = ", ".join(f"{k} {v}" for k, v in list(r["wait_events_pct_of_active_samples"].items())[:4])
            print(f"| {r['case']} | {r['tps']:.0f} | {r['wal_per_admission']['bytes']} | {top} |")
        print()
        print(f"| cpu-bound ({ev['cpu_bound']['settings']}, {ev['cpu_bound']['clients']} clients) | tps | core-us per admission |")
        print("|---|---:|---:|")
        for r in ev["cpu_bound"]["runs"]:
            print(f"| {r['case']} | {r['tps']:.0f} | {r['us_per_admission_per_core']} |")
        print()
        print("| per upload admission (track=all) | us | calls |")
        print("|---|---:|---:|")
        for st in ev["statements_per_upload"][:10]:
            print(f"| {st['query'][:90]} | {st['us_per_admission']} | {st['calls']} |")
        print()
        print("| claim_job, queued | users | claimers | p50 ms | p95 ms | claims/s |")
        print("|---:|---:|---:|---:|---:|---:|")
        for c in extra["claim_latency"]:
            print(f"| {c['queued_jobs']} | {c['users']} | {c['claimers']} | {c['p50_ms']:.2f} | {c['p95_ms']:.2f} |"
                  f" {c['claims_per_s']:.0f} |")
        w = extra["wakeup_latency"]
        print()
        print(f"idle LISTENing claimer, commit to claim: p50 {w['commit_to_claim_ms']['p50']} ms, "
              f"p95 {w['commit_to_claim_ms']['p95']} ms, max {w['commit_to_claim_ms']['max']} ms "
              f"({w['claimed']}/{w['samples']} claimed; target < {w['target_ms']} ms)")
    print(f"wrote {args.out}")
    if any(r["users_over_limit"] for r in limit_rows if VARIANTS[r["variant"]][0] == "pg_s2t"):
        print("FAIL: pg_s2t admitted a user above its limit", file=sys.stderr)
        sys.exit(1)
    if "wakeup_latency" in extra and extra["wakeup_latency"]["claimed"] < extra["wakeup_latency"]["samples"]:
        print("FAIL: an idle claimer missed an upload", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

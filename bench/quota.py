"""Quota-admission benchmark: pg_s2t against the specification's original.

Drives sp_check_quota_and_create_recording with pgbench (which ships with the
server) at several client counts over many users, for our extension and for
the specification's plpgsql loaded into the scratch schema seed_baseline.
Reports transactions per second and p95 latency, checks that no user ends
above its limit, writes bench/results/quota.json and prints a table.

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

RESET = {
    "pg_s2t": "TRUNCATE s2t.recordings CASCADE; UPDATE s2t.user_subscriptions SET usage_count = 0, used_seconds = 0; ",
    "spec": "TRUNCATE seed_baseline.recordings; UPDATE seed_baseline.user_subscriptions SET usage_count = 0, used_seconds = 0; ",
}

# Users whose final count (from the recordings themselves) exceeds the limit.
OVER_LIMIT = {
    "pg_s2t": """SELECT count(*) FROM (SELECT r.user_id FROM s2t.recordings r GROUP BY r.user_id
                 HAVING count(*) > (SELECT monthly_usage_limit FROM s2t.plans WHERE code = 'BENCH')) x""",
    "spec": """SELECT count(*) FROM (SELECT r.user_id FROM seed_baseline.recordings r GROUP BY r.user_id
                 HAVING count(*) > (SELECT monthly_usage_limit FROM seed_baseline.plans WHERE code = 'BENCH')) x""",
}
COUNTS = {
    "pg_s2t": "SELECT count(*), count(DISTINCT user_id) FROM s2t.recordings",
    "spec": "SELECT count(*), count(DISTINCT user_id) FROM seed_baseline.recordings",
}

SCRIPT = {
    "pg_s2t": "\\set n random(1, {users})\n"
    "SELECT * FROM s2t.sp_check_quota_and_create_recording(" + UUID_SQL.format(n=":n") + ", 'realtime', 'vi', '{{}}');\n",
    # The specification's code resolves its tables through search_path, as
    # it would in the public schema; PGOPTIONS sets it for these sessions.
    "spec": "\\set n random(1, {users})\n"
    "SELECT * FROM sp_check_quota_and_create_recording(" + UUID_SQL.format(n=":n") + ", 'realtime', 'vi', '{{}}');\n",
}


def psql(args, sql):
    out = subprocess.run(
        [os.path.join(args.pg_bin, "psql"), "-h", args.host, "-p", str(args.port), "-U", args.user,
         "-d", args.db, "-v", "ON_ERROR_STOP=1", "-qAtX", "-c", sql],
        capture_output=True, text=True,
    )
    if out.returncode != 0:
        sys.exit(f"psql failed: {out.stderr.strip()}\nSQL: {sql[:300]}")
    return out.stdout.strip()


def run_pgbench(args, variant, clients, workdir):
    script = os.path.join(workdir, f"{variant}.sql")
    with open(script, "w") as f:
        f.write(SCRIPT[variant].format(users=args.users))
    prefix = os.path.join(workdir, f"log_{variant}_{clients}")
    env = dict(os.environ)
    if variant == "spec":
        env["PGOPTIONS"] = "-c search_path=seed_baseline,public"
    threads = min(clients, os.cpu_count() or 1)
    cmd = [os.path.join(args.pg_bin, "pgbench"), "-h", args.host, "-p", str(args.port), "-U", args.user,
           "-n", "-M", "prepared", "-c", str(clients), "-j", str(threads), "-T", str(args.seconds),
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
    parser.add_argument("--out", default="bench/results/quota.json")
    args = parser.parse_args()

    here = os.path.dirname(os.path.abspath(__file__))
    psql(args, open(os.path.join(here, "baseline_spec.sql")).read())
    # Throughput is measured with limits nobody reaches, so both sides do the
    # same work (an admission, never a cheaper refusal). A second phase then
    # hammers few users with a low limit and counts who ended above it.
    psql(args, SETUP_OURS % {"users": args.users, "limit": 1_000_000_000})
    psql(args, SETUP_BASELINE % {"users": args.users, "limit": 1_000_000_000})

    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for clients in [int(c) for c in args.clients.split(",")]:
            for variant in ("pg_s2t", "spec"):
                psql(args, RESET[variant])
                psql(args, "VACUUM ANALYZE")
                result = run_pgbench(args, variant, clients, workdir)
                created, users_touched = map(int, psql(args, COUNTS[variant]).split("|"))
                result.update(variant=variant, clients=clients, recordings_created=created,
                              users_with_recordings=users_touched)
                rows.append(result)
                print(f"  {variant:7} {clients:3} clients: {result['tps']:9.1f} tps, p95 {result['p95_ms']:.2f} ms",
                      file=sys.stderr)

        # Limit phase: the most clients over few users with a low limit.
        clients = max(int(c) for c in args.clients.split(","))
        psql(args, f"UPDATE s2t.plans SET monthly_usage_limit = {args.limit} WHERE code = 'BENCH';"
                   f"UPDATE seed_baseline.plans SET monthly_usage_limit = {args.limit} WHERE code = 'BENCH'")
        limit_rows = []
        saved_users = args.users
        args.users = args.limit_users
        for variant in ("pg_s2t", "spec"):
            psql(args, RESET[variant])
            result = run_pgbench(args, variant, clients, workdir)
            created, users_touched = map(int, psql(args, COUNTS[variant]).split("|"))
            over = int(psql(args, OVER_LIMIT[variant]))
            limit_rows.append({"variant": variant, "clients": clients, "users": args.limit_users,
                               "usage_limit": args.limit, "calls": result["transactions"],
                               "recordings_created": created, "allowed_at_most": args.limit_users * args.limit,
                               "users_over_limit": over})
            print(f"  limit   {variant:7}: {result['transactions']} calls, {created} created"
                  f" (at most {args.limit_users * args.limit}), {over} users over the limit", file=sys.stderr)
        args.users = saved_users

    summary = []
    for clients in sorted({r["clients"] for r in rows}):
        ours = next(r for r in rows if r["clients"] == clients and r["variant"] == "pg_s2t")
        spec = next(r for r in rows if r["clients"] == clients and r["variant"] == "spec")
        summary.append({"clients": clients, "tps_ratio": round(ours["tps"] / spec["tps"], 2),
                        "p95_ratio": round(ours["p95_ms"] / spec["p95_ms"], 2)})

    server = psql(args, "SELECT version()")
    result = {
        "benchmark": "quota admission: sp_check_quota_and_create_recording",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "server": server,
        "settings": {"users": args.users, "seconds_per_run": args.seconds,
                     "pgbench": "-M prepared, -j min(clients, cpus), random user per call, superuser session",
                     "server": "defaults of the embedded wheel (fsync on, synchronous_commit on)"},
        "runs": rows,
        "limit_check": limit_rows,
        "ratios_pg_s2t_over_spec": summary,
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
        print(f"{s['clients']:3} clients: pg_s2t/spec throughput x{s['tps_ratio']}, p95 x{s['p95_ratio']}")
    print(f"wrote {args.out}")
    if any(r["users_over_limit"] for r in limit_rows if r["variant"] == "pg_s2t"):
        print("FAIL: pg_s2t admitted a user above its limit", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()

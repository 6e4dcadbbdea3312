"""Stored-audio benchmark: how an upload is written and read back.

Compares, on one throwaway cluster and the same random bytes:
- chunks (0.4.0): COPY into s2t.recording_audio_chunks as the application
  role, admission and attach_audio in the same transaction (the gateway's
  path);
- one bytea (0.3.0's layout): COPY into an unlogged staging table, then
  INSERT ... SELECT into the stored table, as attach_upload did;
- large objects: lo_create and lo_put, 1 MiB per call.

For each: WAL written per byte stored (pg_current_wal_insert_lsn before and
after, nothing else running), time to store, time for 1 MiB range reads at
random offsets, and time to stream the whole file back. Writes
bench/results/audio_store.json and prints a table.

Run through `make bench-audio`, which starts the cluster and passes
--host/--port.
"""

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import time

import psycopg

MIB = 1024 * 1024

SCRATCH = """
DROP SCHEMA IF EXISTS bench_audio CASCADE;
CREATE SCHEMA bench_audio;
CREATE UNLOGGED TABLE bench_audio.staging (id int PRIMARY KEY, data bytea NOT NULL);
ALTER TABLE bench_audio.staging ALTER COLUMN data SET STORAGE EXTERNAL;
CREATE TABLE bench_audio.stored (id int PRIMARY KEY, data bytea NOT NULL);
ALTER TABLE bench_audio.stored ALTER COLUMN data SET STORAGE EXTERNAL;
"""


def wal_lsn(admin):
    return admin.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]


def wal_since(admin, start):
    return admin.execute(
        "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s)::bigint", (start,)
    ).fetchone()[0]


def measured(admin, write):
    """Run `write()` after a checkpoint; return (wal bytes, seconds)."""
    admin.execute("CHECKPOINT")
    start = wal_lsn(admin)
    t = time.perf_counter()
    write()
    seconds = time.perf_counter() - t
    return wal_since(admin, start), seconds


def store_chunks(conninfo, user, data):
    """The gateway's path, as the application role."""
    with psycopg.connect(conninfo, autocommit=False) as c:
        c.execute("SET ROLE s2t_app")
        c.execute("SELECT set_config('s2t.user_id', %s, true)", (str(user),))
        audio = c.execute("SELECT gen_random_uuid()").fetchone()[0]
        with c.cursor().copy(
            "COPY s2t.recording_audio_chunks (audio_id, byte_offset, data) FROM STDIN (FORMAT binary)"
        ) as copy:
            copy.set_types(["uuid", "int8", "bytea"])
            for off in range(0, len(data), MIB):
                copy.write_row((audio, off, data[off : off + MIB]))
        rec = c.execute(
            "SELECT s2t.check_quota_and_create_recording(%s, 'upload', 'en', '{}', 'db:', 60000)",
            (user,),
        ).fetchone()[0]
        c.execute("SELECT s2t.attach_audio(%s, %s, 'audio/wav')", (rec, audio))
        c.commit()
    return rec


def store_bytea(conninfo, key, data):
    with psycopg.connect(conninfo, autocommit=False) as c:
        with c.cursor().copy(
            "COPY bench_audio.staging (id, data) FROM STDIN (FORMAT binary)"
        ) as copy:
            copy.set_types(["int4", "bytea"])
            copy.write_row((key, data))
        c.execute(
            "WITH s AS (DELETE FROM bench_audio.staging WHERE id = %s RETURNING id, data) "
            "INSERT INTO bench_audio.stored SELECT id, data FROM s",
            (key,),
        )
        c.commit()


def store_large_object(conninfo, data):
    with psycopg.connect(conninfo, autocommit=False) as c:
        oid = c.execute("SELECT lo_create(0)").fetchone()[0]
        for off in range(0, len(data), MIB):
            c.execute("SELECT lo_put(%s, %s, %s)", (oid, off, data[off : off + MIB]))
        c.commit()
    return oid


def time_reads(read, size, n, rng):
    offsets = [rng.randrange(0, size - MIB) for _ in range(n)]
    times = []
    for off in offsets:
        t = time.perf_counter()
        got = read(off)
        times.append(time.perf_counter() - t)
        assert len(got) == MIB, f"read {len(got)} bytes at {off}"
    return statistics.median(times) * 1000


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", required=True)
    ap.add_argument("--db", default="bench")
    ap.add_argument("--mib", type=int, default=128, help="upload size")
    ap.add_argument("--reads", type=int, default=50)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    conninfo = f"host={a.host} port={a.port} dbname={a.db} user=s2t"
    rng = random.Random(8)
    data = os.urandom(a.mib * MIB)
    size = len(data)
    with psycopg.connect(conninfo, autocommit=True) as admin:
        admin.execute(SCRATCH)
        user = admin.execute(
            "SELECT s2t.register_user('bench@audio.test', 'benchaudio', 'x', 'Bench', 'ENTERPRISE')"
        ).fetchone()[0]
        results = {}

        holder = {}
        wal, secs = measured(admin, lambda: holder.update(rec=store_chunks(conninfo, user, data)))
        rec = holder["rec"]

        def read_chunk(off):
            return admin.execute(
                "SELECT s2t.read_audio(%s, %s, %s)", (rec, off, MIB)
            ).fetchone()[0]

        def stream_chunks():
            n = 0
            with admin.cursor() as cur:
                audio = cur.execute(
                    "SELECT audio_id FROM s2t.recording_audio WHERE recording_id = %s", (rec,)
                ).fetchone()[0]
                for (piece,) in cur.stream(
                    "SELECT data FROM s2t.recording_audio_chunks WHERE audio_id = %s ORDER BY byte_offset",
                    (audio,),
                ):
                    n += len(piece)
            assert n == size
        t = time.perf_counter()
        stream_chunks()
        results["chunks"] = {
            "wal_bytes": wal,
            "wal_per_byte": round(wal / size, 3),
            "store_s": round(secs, 2),
            "range_read_1mib_ms_p50": round(time_reads(read_chunk, size, a.reads, rng), 2),
            "stream_all_s": round(time.perf_counter() - t, 2),
        }

        wal, secs = measured(admin, lambda: store_bytea(conninfo, 1, data))

        def read_bytea(off):
            return admin.execute(
                "SELECT substring(data FROM %s FOR %s) FROM bench_audio.stored WHERE id = 1",
                (off + 1, MIB),
            ).fetchone()[0]

        t = time.perf_counter()
        off = 0
        while off < size:
            off += len(read_bytea(off) if off + MIB <= size else data[off:])
        results["bytea_0.3.0"] = {
            "wal_bytes": wal,
            "wal_per_byte": round(wal / size, 3),
            "store_s": round(secs, 2),
            "range_read_1mib_ms_p50": round(time_reads(read_bytea, size, a.reads, rng), 2),
            "stream_all_s": round(time.perf_counter() - t, 2),
        }

        holder = {}
        wal, secs = measured(admin, lambda: holder.update(oid=store_large_object(conninfo, data)))
        oid = holder["oid"]

        def read_lo(off):
            return admin.execute("SELECT lo_get(%s, %s, %s)", (oid, off, MIB)).fetchone()[0]

        t = time.perf_counter()
        off = 0
        while off < size:
            off += len(read_lo(off))
        results["large_object"] = {
            "wal_bytes": wal,
            "wal_per_byte": round(wal / size, 3),
            "store_s": round(secs, 2),
            "range_read_1mib_ms_p50": round(time_reads(read_lo, size, a.reads, rng), 2),
            "stream_all_s": round(time.perf_counter() - t, 2),
        }
        server = admin.execute("SHOW server_version").fetchone()[0]

    out = {
        "benchmark": "stored audio: write and read paths",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "postgres": server,
        "upload_bytes": size,
        "range_reads": a.reads,
        "results": results,
    }
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    print(f"\nupload of {a.mib} MiB (random bytes), PostgreSQL {server}")
    print(f"{'layout':<14} {'WAL/byte':>9} {'store s':>8} {'1 MiB read ms':>14} {'read all s':>11}")
    for name, r in results.items():
        print(
            f"{name:<14} {r['wal_per_byte']:>9} {r['store_s']:>8} "
            f"{r['range_read_1mib_ms_p50']:>14} {r['stream_all_s']:>11}"
        )


if __name__ == "__main__":
    main()

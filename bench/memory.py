"""Memory benchmark: one long recording through the real transcription child.

Generates a long 48 kHz stereo WAV (espeak-ng sentences and pauses,
repeated with sox), runs `s2t-worker transcribe-job --audio FILE` exactly
as the worker's job slot does (tiny.en, the worker's defaults: beam 5,
fitted encoder context), and records the child's own peak RSS (wait4's
ru_maxrss), the wall time, the time until it reported the decoded length,
and the real-time factor. It also checks what it got: segment times
monotonic, inside the recording, and speech found through to the end.

`--stdin` runs a child from before the streaming decode (commit 1060f57
and earlier read the audio from stdin), for a before/after comparison.

Writes (or updates, keyed by the run's label) bench/results/memory.json.
Run through scripts/bench_memory.sh.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

SENTENCES = [
    "The morning train was late again, so the station filled with tired commuters.",
    "Please remember to water the tomato plants on the balcony before you leave.",
    "Our library keeps old maps of the river valley in a quiet room on the third floor.",
    "Speech recognition turns spoken words into written text, one window at a time.",
    "The database stores every segment with its start and end time.",
]


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True)


def make_audio(path: str, minutes: float, work: str, gap: float) -> float:
    """A 48 kHz stereo 16-bit WAV of about `minutes`; returns its seconds.

    Each sentence is followed by a pause of `gap` seconds, or of 2-6 s (as
    people speak) when `gap` is 0."""
    if os.path.exists(path) and os.path.getsize(path) > 0:
        return float(subprocess.check_output(["soxi", "-D", path], text=True))
    parts = []
    for i, text in enumerate(SENTENCES):
        raw = os.path.join(work, f"s{i}.raw.wav")
        part = os.path.join(work, f"s{i}.wav")
        sh("espeak-ng", "-v", "en-us", "-s", "150", "-w", raw, text)
        pause = gap or 2 + i
        sh("sox", "-V1", raw, "-r", "48000", "-c", "2", "-b", "16", part, "pad", "0", str(pause))
        parts.append(part)
    unit = os.path.join(work, "unit.wav")
    sh("sox", "-V1", *parts, unit)
    unit_seconds = float(subprocess.check_output(["soxi", "-D", unit], text=True))
    repeats = max(1, round(minutes * 60 / unit_seconds))
    tmp = path + ".tmp.wav"
    sh("sox", "-V1", unit, tmp, "repeat", str(repeats - 1))
    os.replace(tmp, path)
    return float(subprocess.check_output(["soxi", "-D", path], text=True))


def vm_hwm_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def run_child(a, audio: str) -> dict:
    cmd = [
        a.worker, "transcribe-job",
        "--model", os.path.join(a.models, "ggml-tiny.en.bin"),
        "--language", "en", "--threads", str(a.threads),
        "--beam-size", str(a.beam_size), "--fit-audio-ctx", "true",
        "--max-audio-secs", str(4 * 3600), "--extension", "wav",
    ]
    if not a.stdin:
        cmd += ["--audio", audio]
    if a.block_secs:
        cmd += ["--block-secs", str(a.block_secs)]
    stdin = open(audio, "rb") if a.stdin else subprocess.DEVNULL
    started = time.monotonic()
    decoded_at = None
    last = None
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdin=stdin, stdout=subprocess.PIPE, stderr=err, text=True)
        reported = started
        for line in proc.stdout:
            msg = json.loads(line)
            now = time.monotonic()
            if "progress" in msg and now - reported > 60:
                # The peak so far, in case the run has to be stopped early.
                reported = now
                print(f"  {now - started:6.0f} s: progress {msg['progress']:.3f}, "
                      f"VmHWM {vm_hwm_mib(proc.pid):.1f} MiB", flush=True)
            if "decoded" in msg and decoded_at is None:
                decoded_at = time.monotonic() - started
                print(f"  decoded: {msg['decoded']['audio_ms'] / 1000:.0f} s of audio "
                      f"after {decoded_at:.1f} s", flush=True)
            elif "progress" in msg:
                pass
            else:
                last = msg
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - started
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0 or not last or "done" not in last:
            sys.exit(f"child failed ({status}): {last}\n{err.read()[-3000:]}")
    if a.stdin:
        stdin.close()
    done = last["done"]
    return {"done": done, "wall": wall, "decoded_at": decoded_at,
            "peak_rss_bytes": usage.ru_maxrss * 1024,
            "cpu_seconds": usage.ru_utime + usage.ru_stime}


def check(done: dict, audio_seconds: float, gap: float) -> dict:
    segs = done["segments"]
    starts = [s["start_ms"] for s in segs]
    ok_monotonic = all(x <= y for x, y in zip(starts, starts[1:]))
    ok_inside = all(0 <= s["start_ms"] <= s["end_ms"] <= done["duration_ms"] for s in segs)
    ok_idx = [s["idx"] for s in segs] == list(range(len(segs)))
    last_end = segs[-1]["end_ms"] / 1000 if segs else 0.0
    # The last sentence ends within its pause of the end.
    ok_end = audio_seconds - last_end < gap + 15
    return {"segments": len(segs), "monotonic": ok_monotonic, "inside": ok_inside,
            "numbered": ok_idx, "last_segment_end_s": last_end, "speech_to_the_end": ok_end,
            "words": sum(len(s["text"].split()) for s in segs)}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", required=True, help="release s2t-worker binary")
    p.add_argument("--models", required=True, help="make models' directory")
    p.add_argument("--minutes", type=float, default=120)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--beam-size", type=int, default=5)
    p.add_argument("--block-secs", type=int, default=0, help="0: the worker's default")
    p.add_argument("--stdin", action="store_true", help="a pre-streaming child (audio on stdin)")
    p.add_argument("--gap", type=float, default=0,
                   help="seconds of silence after each sentence (0: 2-6 s, dense speech)")
    p.add_argument("--label", required=True)
    p.add_argument("--audio-dir", default=tempfile.gettempdir())
    p.add_argument("--out", required=True)
    a = p.parse_args()

    os.makedirs(a.audio_dir, exist_ok=True)
    kind = f"gap{a.gap:g}s" if a.gap else "dense"
    audio = os.path.join(a.audio_dir, f"s2t-bench-{a.minutes:g}min-{kind}-48k-stereo.wav")
    with tempfile.TemporaryDirectory() as work:
        seconds = make_audio(audio, a.minutes, work, a.gap)
    print(f"{a.label}: {seconds / 60:.1f} min, {os.path.getsize(audio) / 2**20:.0f} MiB WAV",
          flush=True)
    r = run_child(a, audio)
    verdict = check(r["done"], seconds, a.gap)
    row = {
        "label": a.label,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "audio": {"seconds": round(seconds, 1), "rate_hz": 48000, "channels": 2,
                  "speech": f"a sentence every {a.gap:g} s" if a.gap else "sentences with 2-6 s pauses",
                  "format": "wav pcm16", "bytes": os.path.getsize(audio)},
        "settings": {"model": "tiny.en", "threads": a.threads, "beam_size": a.beam_size,
                     "block_secs": a.block_secs or "default", "audio_on_stdin": a.stdin},
        "peak_rss_mib": round(r["peak_rss_bytes"] / 2**20, 1),
        "wall_seconds": round(r["wall"], 1),
        "cpu_seconds": round(r["cpu_seconds"], 1),
        "decoded_after_seconds": None if r["decoded_at"] is None else round(r["decoded_at"], 1),
        "realtime_factor": round(seconds / r["wall"], 2),
        "transcript": verdict,
    }
    results = {"benchmark": "memory", "machine": {"cpus": os.cpu_count(),
                                                   "platform": platform.platform()}, "runs": []}
    if os.path.exists(a.out):
        with open(a.out) as f:
            results = json.load(f)
    results["runs"] = [x for x in results["runs"] if x["label"] != a.label] + [row]
    with open(a.out, "w") as f:
        json.dump(results, f, indent=2, ensure_ascii=False)
        f.write("\n")
    print(f"{'run':44} {'audio':>8} {'peak RSS':>10} {'wall':>8} {'x RT':>6}")
    for x in results["runs"]:
        print(f"{x['label'][:44]:44} {x['audio']['seconds'] / 60:6.1f} m "
              f"{x['peak_rss_mib']:7.1f} MiB {x['wall_seconds']:7.0f}s {x['realtime_factor']:6.2f}")
    bad = [k for k in ("monotonic", "inside", "numbered", "speech_to_the_end") if not verdict[k]]
    if bad:
        print(f"transcript checks failed: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

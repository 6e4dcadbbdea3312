"""The audio pipeline's CPU cost outside Whisper: resampling an hour of
audio at 44.1 and 48 kHz, and per container the demux-only, counting and
decode+resample passes (with the lengths each finds). Runs the
`audio_bench` example, writes bench/results/audio_pipeline.json and prints
a table. Run through scripts/bench_memory.sh.
"""

import json
import subprocess
import sys


def run(cmd: list[str], cwd: str | None = None) -> dict:
    return json.loads(subprocess.run(cmd, cwd=cwd, check=True, capture_output=True,
                                     text=True).stdout)


def main() -> int:
    bench, formats, out_path, *files = sys.argv[1:]
    out = {"benchmark": "audio_pipeline",
           "note": "CPU seconds of the one thread (schedstat); wall includes other load",
           **run([bench, "resample", "3600"]), **run([bench, "decode", *files], cwd=formats)}
    with open(out_path, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")
    for r in out["resample"]:
        print(f"resample {r['from_hz']} Hz -> 16 kHz: "
              f"{r['cpu_seconds_per_audio_hour']:.2f} s CPU per hour of audio")
    print(f"{'file':10} {'codec':7} {'audio':>6} {'demux':>6} {'count':>6} {'full':>6}  "
          f"packet-duration frames vs decoded")
    for r in out["decode"]:
        print(f"{r['file']:10} {r['codec']:7} {r['audio_seconds']:5.0f}s "
              f"{r['demux_only']['cpu_seconds']:6.2f} {r['counting_pass']['cpu_seconds']:6.2f} "
              f"{r['decode_resample_pass']['cpu_seconds']:6.2f}  "
              f"{r['packet_duration_frames']} vs {r['decoded_frames']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

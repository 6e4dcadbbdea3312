//! The audio pipeline's CPU cost, outside Whisper (run by
//! scripts/bench_memory.sh; `cargo run --release --example audio_bench`).
//!
//! - `resample SECONDS`: that much synthetic mono audio at 44.1 and 48 kHz
//!   through the streaming resampler, in 1152-frame packets (an MP3
//!   frame), CPU time scaled to one hour.
//! - `decode FILE...`: per file, the container's packet durations summed
//!   (demux only), the counting pass the transcription child makes first
//!   (decode, no resampling), and the full 16 kHz pass, with the lengths
//!   each finds, so the choice of the first pass can be checked per format.
//!
//! Prints one JSON object.

use s2t_worker::audio::resample::StreamResampler;
use s2t_worker::audio::stream::{measure, Source, Stream16k};
use std::path::Path;
use std::time::Instant;
use symphonia::core::codecs::CODEC_TYPE_NULL;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

/// Nanoseconds this thread has run on a CPU (Linux schedstat): the cost
/// without the time other processes on the shared cores took.
fn cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .expect("/proc/thread-self/schedstat (Linux)")
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64, f64) {
    let (c0, w0) = (cpu_ns(), Instant::now());
    let out = f();
    (
        out,
        (cpu_ns() - c0) as f64 / 1e9,
        w0.elapsed().as_secs_f64(),
    )
}

fn resample(seconds: u64) -> serde_json::Value {
    let mut rows = Vec::new();
    for rate in [44_100u32, 48_000] {
        // Speech-band content, so nothing is trivially zero.
        let packet: Vec<f32> = (0..1152 * 64)
            .map(|i| {
                let t = i as f32 / rate as f32;
                0.3 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()
                    + 0.1 * (2.0 * std::f32::consts::PI * 3_100.0 * t).sin()
            })
            .collect();
        let frames = seconds * u64::from(rate);
        let ((), cpu, wall) = timed(|| {
            let mut r = StreamResampler::new(rate, 16_000).expect("resampler");
            let mut out = Vec::with_capacity(16_000);
            let mut fed = 0u64;
            let mut produced = 0u64;
            while fed < frames {
                for chunk in packet.chunks(1152) {
                    let n = chunk.len().min((frames - fed) as usize);
                    r.push(&chunk[..n], &mut out);
                    fed += n as u64;
                    produced += out.len() as u64;
                    out.clear();
                    if fed >= frames {
                        break;
                    }
                }
            }
            r.finish(&mut out);
            produced += out.len() as u64;
            assert_eq!(produced, seconds * 16_000, "output length");
        });
        rows.push(serde_json::json!({
            "from_hz": rate, "to_hz": 16_000, "audio_seconds": seconds,
            "cpu_seconds": cpu, "wall_seconds": wall,
            "cpu_seconds_per_audio_hour": cpu * 3600.0 / seconds as f64,
        }));
    }
    serde_json::json!({"resample": rows})
}

/// Demux only: the sum of the track's packet durations.
fn packet_frames(path: &Path) -> (u64, usize) {
    let file = std::fs::File::open(path).expect("open");
    let mss = MediaSourceStream::new(Box::new(file), Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = path.extension().and_then(|e| e.to_str()) {
        hint.with_extension(ext);
    }
    let mut format = symphonia::default::get_probe()
        .format(
            &hint,
            mss,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
        .expect("probe")
        .format;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .expect("audio track")
        .id;
    let (mut frames, mut unknown) = (0u64, 0usize);
    while let Ok(p) = format.next_packet() {
        if p.track_id() == track {
            frames += p.dur;
            unknown += usize::from(p.dur == 0);
        }
    }
    (frames, unknown)
}

fn decode(files: &[String]) -> serde_json::Value {
    let mut rows = Vec::new();
    for f in files {
        let path = Path::new(f);
        let ext = path.extension().and_then(|e| e.to_str());
        let ((frames, unknown), demux_cpu, demux_wall) = timed(|| packet_frames(path));
        let (measured, measure_cpu, measure_wall) = timed(|| {
            measure(Source::open_path(path, ext).expect("open"), 24 * 3600).expect("measure")
        });
        let (samples, full_cpu, full_wall) = timed(|| {
            let source = Source::open_path(path, ext).expect("open");
            let mut stream = Stream16k::new(source, 24 * 3600);
            let mut piece = Vec::new();
            let mut n = 0u64;
            while stream.pull(&mut piece).expect("pull") {
                n += piece.len() as u64;
                piece.clear();
            }
            n
        });
        let seconds = measured.duration_ms() as f64 / 1000.0;
        rows.push(serde_json::json!({
            "file": f, "codec": measured.codec, "audio_seconds": seconds,
            "packet_duration_frames": frames, "packets_without_duration": unknown,
            "decoded_frames": measured.lengths.frames(),
            "samples_16k": samples,
            "demux_only": {"cpu_seconds": demux_cpu, "wall_seconds": demux_wall},
            "counting_pass": {"cpu_seconds": measure_cpu, "wall_seconds": measure_wall},
            "decode_resample_pass": {"cpu_seconds": full_cpu, "wall_seconds": full_wall},
        }));
    }
    serde_json::json!({"decode": rows})
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = match args.first().map(String::as_str) {
        Some("resample") => resample(args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3600)),
        Some("decode") => decode(&args[1..]),
        _ => {
            eprintln!("usage: audio_bench resample [SECONDS] | decode FILE...");
            std::process::exit(2);
        }
    };
    println!("{out}");
}

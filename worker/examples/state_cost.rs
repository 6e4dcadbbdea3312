//! What one whisper.cpp decoding state costs to make and to hold, per
//! model: `cargo run --release -p s2t-worker --example state_cost --
//! MODEL.bin [N]` makes N states (default 10) of one loaded model and
//! prints the time per state and the resident memory each adds. The
//! realtime server makes one per decode (see `asr::engine`).

use std::time::Instant;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(model) = args.next() else {
        eprintln!("usage: state_cost MODEL.bin [N]");
        std::process::exit(2);
    };
    let n: usize = args
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
        .max(1);
    whisper_rs::install_logging_hooks();
    let ctx = whisper_rs::WhisperContext::new_with_params(&model, Default::default())
        .unwrap_or_else(|e| panic!("cannot load {model}: {e}"));
    let before = rss_kib();
    let began = Instant::now();
    let states: Vec<_> = (0..n)
        .map(|_| ctx.create_state().expect("a state"))
        .collect();
    let ms = began.elapsed().as_secs_f64() * 1000.0 / n as f64;
    let mib = (rss_kib().saturating_sub(before)) as f64 / 1024.0 / n as f64;
    println!(
        "{{\"model\": {model:?}, \"states\": {}, \"ms_per_state\": {ms:.1}, \"mib_per_state\": {mib:.1}}}",
        states.len()
    );
}

fn main() {
    println!(
        "s2t-worker {}: not yet implemented (listens on channel {})",
        s2t_worker::version(),
        s2t_worker::JOBS_CHANNEL
    );
}

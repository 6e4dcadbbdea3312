fn main() {
    println!(
        "s2t-gateway {}: not yet implemented",
        env!("CARGO_PKG_VERSION")
    );
}

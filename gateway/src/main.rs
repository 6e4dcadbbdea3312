use clap::Parser;
use s2t_gateway::{AppState, Config};

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listen = config.listen;
        if config.dev {
            eprintln!("{}", serde_json::json!({"level": "warn", "event": "dev_mode", "message": "development mode: weak or missing JWT secrets are accepted"}));
        }
        let state = AppState::connect(config).await?;
        let listener = tokio::net::TcpListener::bind(listen).await?;
        eprintln!(
            "{}",
            serde_json::json!({"level": "info", "event": "listening", "addr": listener.local_addr()?.to_string(), "version": env!("CARGO_PKG_VERSION")})
        );
        s2t_gateway::run(listener, state, async {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            eprintln!("{}", serde_json::json!({"level": "info", "event": "shutdown"}));
        })
        .await?;
        Ok(())
    })
}

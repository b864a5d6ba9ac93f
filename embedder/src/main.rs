use clap::Parser;
use memoriesdb_embedder::config::{Command, Config};
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let config = Config::parse();
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if config.log_format == "json" {
        builder.json().with_current_span(false).init();
    } else {
        builder.init();
    }
    let result = match config.command {
        Some(Command::Embed) => memoriesdb_embedder::embed_lines(&config),
        None => match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
            Ok(runtime) => runtime.block_on(memoriesdb_embedder::server::run(config)),
            Err(error) => Err(anyhow::anyhow!("cannot start the async runtime: {error}")),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("memoriesdb-embedder: {error:#}");
            ExitCode::FAILURE
        }
    }
}

//! memoriesdb-embedder: computes the embeddings MemoriesDB queues, and serves them.
pub mod backend;
pub mod bert;
pub mod chunking;
pub mod config;
pub mod http;
pub mod model;
pub mod remote;
pub mod server;
pub mod worker;

/// An error and its causes on one line (many libraries' Display shows only the outermost).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `memoriesdb-embedder embed`: JSON strings in (one per line), JSON arrays out, in order.
pub fn embed_lines(config: &config::Config) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::{BufRead, Write};
    let model = model::LocalModel::load(&config.model_dir, config.model_name.clone(), config.model_batch)?.with_passes(config.model_passes)?;
    let mut texts = Vec::new();
    for (number, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.context("cannot read stdin")?;
        let text: String = serde_json::from_str(&line).with_context(|| format!("line {}: not a JSON string", number + 1))?;
        texts.push(text);
    }
    let started = std::time::Instant::now();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let vectors = model.embed(&refs)?;
    let elapsed = started.elapsed();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for vector in vectors {
        serde_json::to_writer(&mut out, &vector)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    eprintln!("{} texts in {:.1} ms ({:.1} texts/s)", texts.len(), elapsed.as_secs_f64() * 1e3, texts.len() as f64 / elapsed.as_secs_f64());
    Ok(())
}

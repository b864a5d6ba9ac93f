//! The hub benchmark client (bench/hub/run.sh). Built with `--features bench`.
fn main() {
    eprintln!("memoriesdb-hub-bench: not implemented yet");
    std::process::exit(2);
}

//! In-backend tests of the extension's logic. Each runs as superuser inside a transaction that is
//! rolled back, so commit-time behaviour (NOTIFY delivery, concurrency) is tested in `tests/`
//! against a real cluster instead.

mod core;
mod identity;
mod search;

use pgrx::prelude::*;

/// The single value `sql` returns. Runs through read-write SPI, so it may write and it sees
/// everything the test did before (read-only SPI would keep reading an older snapshot).
pub fn one<T: FromDatum + IntoDatum>(sql: &str) -> T {
    // No row limit: with one, the executor would stop an INSERT ... RETURNING before the
    // statement-level AFTER triggers see the inserted rows.
    Spi::connect_mut(|c| c.update(sql, None, &[]).expect("query failed").first().get_one::<T>())
        .expect("query failed")
        .expect("query returned NULL")
}

pub fn uuid_of(sql: &str) -> String {
    one::<pgrx::Uuid>(sql).to_string()
}

/// A session with `n` messages "m1".."mn" alternating user/assistant.
pub fn session_with(n: usize) -> String {
    let s = uuid_of("SELECT create_session('t')");
    for i in 1..=n {
        let role = if i % 2 == 1 { "user" } else { "assistant" };
        Spi::run(&format!("SELECT add_message_to_session('{s}', '{role}', 'm{i}')")).unwrap();
    }
    s
}

pub fn transcript(session: &str) -> String {
    one::<String>(&format!("SELECT get_conversation_text('{session}')"))
}


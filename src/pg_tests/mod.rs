//! In-backend tests of the extension's logic. Each runs as superuser inside a transaction that is
//! rolled back, so commit-time behaviour (NOTIFY delivery, concurrency) is tested in `tests/`
//! against a real cluster instead.

mod core;
mod search;

use pgrx::prelude::*;

pub fn one<T: FromDatum + IntoDatum>(sql: &str) -> T {
    Spi::get_one::<T>(sql).expect("query failed").expect("query returned NULL")
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


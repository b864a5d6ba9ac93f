//! Channel names: validation, quoting for LISTEN/UNLISTEN, and glob patterns for authorization.
//!
//! A channel name is what clients subscribe to and what PostgreSQL NOTIFYs on. Names are checked
//! against `^[A-Za-z0-9_.:-]{1,63}$` before they reach PostgreSQL (63 bytes is PostgreSQL's
//! identifier limit; longer names would be silently truncated and collide), and they are always
//! sent as quoted identifiers, so no name can change the meaning of a statement.

use std::fmt;
use std::sync::Arc;

pub const MAX_CHANNEL_LEN: usize = 63;

/// Channels on which only the database publishes: the extension's own (`memoriesdb_*`, e.g.
/// `memoriesdb_events`) and the per-session chat events (`chat_updates_*`). Clients may subscribe
/// to them (within their token's rights) but never publish there: a forged chat event would make
/// every client of the session resync or announce a message that was never written, and the
/// extension's internal channels are not the hub's to write on. Compared case-insensitively, so
/// that no spelling of them gets through.
pub const RESERVED_PREFIXES: [&str; 2] = ["memoriesdb_", "chat_updates_"];

/// A validated channel name. Cheap to clone (shared string).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName(Arc<str>);

impl ChannelName {
    pub fn parse(name: &str) -> Result<ChannelName, String> {
        if name.is_empty() || name.len() > MAX_CHANNEL_LEN {
            return Err(format!("channel name must be 1 to {MAX_CHANNEL_LEN} characters, got {}", name.chars().count()));
        }
        if let Some(bad) = name.chars().find(|&c| !is_channel_char(c)) {
            return Err(format!(
                "channel name {:?} contains {bad:?}; allowed are letters, digits and _ . : -",
                truncate(name, 80)
            ));
        }
        Ok(ChannelName(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as a PostgreSQL quoted identifier, for LISTEN and UNLISTEN. Validation already
    /// excludes quotes, but quoting is done properly anyway (defence in depth).
    pub fn quoted_identifier(&self) -> String {
        quote_identifier(&self.0)
    }

    /// True for channels only the database may publish on (see [`RESERVED_PREFIXES`]).
    pub fn is_reserved(&self) -> bool {
        RESERVED_PREFIXES.iter().any(|prefix| {
            self.0.len() >= prefix.len() && self.0.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
        })
    }

    /// The per-session chat channel the extension NOTIFYs on: chat_updates_<uuid without dashes>.
    pub fn for_session(session: &uuid::Uuid) -> ChannelName {
        ChannelName(Arc::from(format!("chat_updates_{}", session.simple())))
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

fn is_channel_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')
}

pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Shorten untrusted text for error messages and logs.
pub fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        text.to_string()
    } else {
        let mut short: String = text.chars().take(max_chars).collect();
        short.push('…');
        short
    }
}

/// Glob match for authorization patterns: `*` matches any run of characters (including none),
/// `?` matches exactly one, everything else matches itself. Iterative with backtracking to the
/// last `*`, so it runs in O(pattern × name) at worst and never recurses.
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let name: Vec<char> = name.chars().collect();
    let (mut p, mut n) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, n));
            p += 1;
        } else if let Some((star_p, star_n)) = star {
            p = star_p + 1;
            n = star_n + 1;
            star = Some((star_p, star_n + 1));
        } else {
            return false;
        }
    }
    while p < pattern.len() && pattern[p] == '*' {
        p += 1;
    }
    p == pattern.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names() {
        for name in ["updates", "chat_updates_0190abcd", "a.b:c-d_E9", &"x".repeat(63)] {
            assert!(ChannelName::parse(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn invalid_names() {
        for name in ["", &"x".repeat(64), "a b", "a\"b", "x;DROP TABLE memories", "é", "a\0b", "a/b", "$1"] {
            assert!(ChannelName::parse(name).is_err(), "{name:?}");
        }
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_identifier("abc"), "\"abc\"");
        assert_eq!(quote_identifier("a\"b"), "\"a\"\"b\"");
        assert_eq!(ChannelName::parse("Mixed.Case").unwrap().quoted_identifier(), "\"Mixed.Case\"");
    }

    #[test]
    fn session_channel() {
        let id: uuid::Uuid = "0190abcd-0000-7000-8000-000000000001".parse().unwrap();
        assert_eq!(ChannelName::for_session(&id).as_str(), "chat_updates_0190abcd000070008000000000000001");
    }

    #[test]
    fn reserved_channels() {
        for name in ["memoriesdb_events", "memoriesdb_", "MemoriesDB_Events", "chat_updates_0190abcd", "CHAT_UPDATES_x"] {
            assert!(ChannelName::parse(name).unwrap().is_reserved(), "{name}");
        }
        for name in ["updates", "memoriesdb", "chat_updates", "my_memoriesdb_events", "chat-updates_x", "m"] {
            assert!(!ChannelName::parse(name).unwrap().is_reserved(), "{name}");
        }
        let id: uuid::Uuid = "0190abcd-0000-7000-8000-000000000001".parse().unwrap();
        assert!(ChannelName::for_session(&id).is_reserved());
    }

    #[test]
    fn globs() {
        assert!(glob_matches("*", "anything"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("chat_updates_*", "chat_updates_abc"));
        assert!(!glob_matches("chat_updates_*", "chat_update"));
        assert!(glob_matches("room.?", "room.1"));
        assert!(!glob_matches("room.?", "room.12"));
        assert!(glob_matches("a*b*c", "aXXbYYc"));
        assert!(!glob_matches("a*b*c", "aXXbYY"));
        assert!(glob_matches("updates", "updates"));
        assert!(!glob_matches("updates", "updates2"));
        // pathological pattern stays fast
        let name = "a".repeat(60);
        assert!(!glob_matches("*a*a*a*a*a*a*a*a*b", &name));
    }
}

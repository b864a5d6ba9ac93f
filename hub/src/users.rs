//! Does a token's user exist? A token is signed by the application, but it may name a user that
//! was never created (or was deleted): such a connection could only fail on its first write.
//! The upgrade and `auth` refuse it instead (401 / `unauthorized`).
//!
//! Answers are cached, so that reconnect storms do not become a query per connection: a user
//! found is trusted for [`FOUND_TTL`], a missing one is asked again after [`MISSING_TTL`] (the
//! application may be creating it right now).

use crate::database::{Database, DbFailure};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use uuid::Uuid;

const FOUND_TTL: Duration = Duration::from_secs(60);
const MISSING_TTL: Duration = Duration::from_secs(5);
/// Entries kept at most; a full cache drops expired entries, then everything.
const MAX_ENTRIES: usize = 100_000;

#[derive(Default)]
pub struct UserDirectory {
    cache: Mutex<HashMap<Uuid, (bool, Instant)>>,
}

impl UserDirectory {
    /// Whether `user` exists, from the cache or the database.
    pub async fn exists(&self, database: &Database, user: Uuid) -> Result<bool, DbFailure> {
        if let Some(known) = self.cached(user) {
            return Ok(known);
        }
        let exists = database.user_exists(user).await?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_ENTRIES {
            let now = Instant::now();
            cache.retain(|_, (_, expires)| *expires > now);
            if cache.len() >= MAX_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(user, (exists, Instant::now() + if exists { FOUND_TTL } else { MISSING_TTL }));
        Ok(exists)
    }

    fn cached(&self, user: Uuid) -> Option<bool> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.get(&user).filter(|(_, expires)| *expires > Instant::now()).map(|(exists, _)| *exists)
    }
}

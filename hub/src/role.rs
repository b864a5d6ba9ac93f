//! The hub's own database role.
//!
//! Row-level security is what keeps MemoriesDB's tenants apart, and the hub reaches the data as
//! one database role. A role that bypasses row security (a superuser, or one with BYPASSRLS)
//! would hand every client every tenant's rows: with authentication on, `app.current_user` would
//! name the token's user but no policy would apply; without it, `list_sessions` would list all
//! sessions of the database. So the hub refuses such a role:
//!
//! - with authentication, always;
//! - without authentication, unless `--allow-anonymous-superuser` says that this is a local demo.
//!
//! The role is checked at startup and again on every new database connection (pool and LISTEN
//! connection), since the hub also starts while the database is unreachable and the role could
//! be altered while it runs. The first refusal is recorded and stops the hub with a non-zero exit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use tokio_util::sync::CancellationToken;

/// Why a connection's role may not be used.
#[derive(Debug)]
pub enum RoleError {
    /// The role bypasses row security (the message says what to do instead).
    Refused(String),
    /// The check could not run (the database went away): not a verdict on the role.
    Query(tokio_postgres::Error),
}

pub struct RoleCheck {
    auth_enabled: bool,
    allow_anonymous_superuser: bool,
    refusal: OnceLock<String>,
    refused: CancellationToken,
    warned: AtomicBool,
}

/// What the database says about the connected role.
struct RoleFacts {
    name: String,
    superuser: bool,
    bypass_rls: bool,
    /// member of memoriesdb_user (may call the API); None when the extension has no such role
    api_user: Option<bool>,
    /// member of memoriesdb_trusted (may assert app.current_user)
    trusted: Option<bool>,
}

impl RoleCheck {
    pub fn new(auth_enabled: bool, allow_anonymous_superuser: bool) -> Arc<RoleCheck> {
        Arc::new(RoleCheck {
            auth_enabled,
            allow_anonymous_superuser,
            refusal: OnceLock::new(),
            refused: CancellationToken::new(),
            warned: AtomicBool::new(false),
        })
    }

    /// Cancelled once a connection's role was refused: the hub must stop.
    pub fn refused(&self) -> &CancellationToken {
        &self.refused
    }

    /// The first refusal, for the exit message.
    pub fn refusal(&self) -> Option<String> {
        self.refusal.get().cloned()
    }

    /// Check the role `client` is connected as. A refusal is recorded (and stops the hub).
    pub async fn verify(&self, client: &tokio_postgres::Client) -> Result<(), RoleError> {
        // current_user is SQL syntax, not a function looked up on the search_path; the role
        // names are compared as data, so a missing extension role is "not a member", not an error
        let row = client
            .query_one(
                "SELECT r.rolname, r.rolsuper, r.rolbypassrls,
                        (SELECT pg_catalog.pg_has_role(r.oid, g.oid, 'USAGE')
                           FROM pg_catalog.pg_roles g WHERE g.rolname = 'memoriesdb_user'),
                        (SELECT pg_catalog.pg_has_role(r.oid, g.oid, 'USAGE')
                           FROM pg_catalog.pg_roles g WHERE g.rolname = 'memoriesdb_trusted')
                   FROM pg_catalog.pg_roles r
                  WHERE r.rolname = current_user",
                &[],
            )
            .await
            .map_err(RoleError::Query)?;
        let facts = RoleFacts {
            name: row.get(0),
            superuser: row.get(1),
            bypass_rls: row.get(2),
            api_user: row.get(3),
            trusted: row.get(4),
        };
        if let Some(message) = self.judge(&facts) {
            if self.refusal.set(message.clone()).is_ok() {
                self.refused.cancel();
            }
            return Err(RoleError::Refused(message));
        }
        if !self.warned.swap(true, Ordering::Relaxed) {
            self.warn_about(&facts);
        }
        Ok(())
    }

    /// The refusal message for a role that bypasses row security, None when it may be used.
    fn judge(&self, facts: &RoleFacts) -> Option<String> {
        if !(facts.superuser || facts.bypass_rls) {
            return None;
        }
        if !self.auth_enabled && self.allow_anonymous_superuser {
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    role = %facts.name,
                    "--allow-anonymous-superuser: the hub's database role bypasses row-level security, so every \
                     client reaches every tenant's data; a local demo only"
                );
            }
            return None;
        }
        let what = if facts.superuser { "is a superuser" } else { "has BYPASSRLS" };
        let role = &facts.name;
        let mut message = format!(
            "refusing to run as database role \"{role}\": it {what}, so row-level security would not apply and \
             every client would reach every tenant's data. Connect the hub as an ordinary role \
             (CREATE ROLE memoriesdb_hub LOGIN; GRANT memoriesdb_user TO memoriesdb_hub;"
        );
        if self.auth_enabled {
            message.push_str(" GRANT memoriesdb_trusted TO memoriesdb_hub; so that it may act as its tokens' users)");
        } else {
            message.push_str(
                " SELECT memoriesdb.create_user('demo', 'memoriesdb_hub'); as an administrator, so that anonymous \
                 clients act as that one user), or, for a local demo only, pass --allow-anonymous-superuser",
            );
        }
        Some(message)
    }

    /// Roles that will not work: say so once, at the first connection.
    fn warn_about(&self, facts: &RoleFacts) {
        if facts.api_user == Some(false) {
            tracing::warn!(
                role = %facts.name,
                "the hub's database role is not a member of memoriesdb_user: chat actions will be refused \
                 (GRANT memoriesdb_user TO {})",
                facts.name
            );
        }
        if self.auth_enabled && facts.trusted == Some(false) {
            tracing::warn!(
                role = %facts.name,
                "the hub's database role is not a member of memoriesdb_trusted: it cannot act as its tokens' users \
                 and chat actions will be refused (GRANT memoriesdb_trusted TO {})",
                facts.name
            );
        }
    }
}

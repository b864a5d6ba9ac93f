//! The acting MemoriesDB user, `current_memory_user()`, resolved once per statement.
//!
//! Every row-level security policy, the provenance and audit triggers and most API functions ask
//! who is acting, often many times in one statement: each `(SELECT current_memory_user())` in a
//! policy is its own initplan, and a row trigger asks once per row. Resolving it means reading
//! two settings, a role membership and the `users` row mapped to the role — a query. Written in
//! PL/pgSQL that cost about 0.05 ms per call (a `SET search_path` function plus its query), so the
//! policies alone made a 1,000-row transcript read 37% slower than with row-level security off.
//! Here the answer is cached per backend and reused while nothing it depends on has changed:
//!
//!   * the statement (local transaction id and statement start time) — so, as before, it is
//!     resolved per statement, and a mapping committed by someone else counts from the next one;
//!   * the `app.current_user` setting and the acting role (`SET ROLE` or the session user);
//!   * within the statement: any change to `users` (a statement trigger clears the cache), to role
//!     memberships or roles (a syscache callback), and a rolled-back subtransaction (which may
//!     have undone such a change).
//!
//! The rules themselves are the ones documented in `sql/identity.sql` and SECURITY.md. The role
//! predicates the SQL side asks on every search (`acting_role_is`, `acting_role_bypasses_rls`)
//! live here too: as SQL over `pg_roles` they cost a catalog scan per call.

use crate::catalog::SCHEMA;
use crate::errors::raise;
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::ffi::CStr;

/// What one resolution depended on, and its answer.
struct Resolution {
    local_xid: pg_sys::LocalTransactionId,
    statement_start: pg_sys::TimestampTz,
    asserted: Option<Vec<u8>>,
    acting_role: pg_sys::Oid,
    generation: u64,
    user: Option<pgrx::Uuid>,
}

// Invalidation callbacks can run in the middle of anything this module does (whenever
// PostgreSQL reads invalidation messages, e.g. while SPI opens a relation), so they only bump
// a generation counter in a Cell; cached values remember the generation they were made in.
thread_local! {
    static CACHED: RefCell<Option<Resolution>> = const { RefCell::new(None) };
    /// Bumped by anything that may change who is acting (see the module comment).
    static IDENTITY_GENERATION: Cell<u64> = const { Cell::new(0) };
    static MAPPED_USER_PLAN: RefCell<Option<pgrx::spi::OwnedPreparedStatement>> = const { RefCell::new(None) };
    static CALLBACKS_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

fn forget() {
    IDENTITY_GENERATION.with(|generation| generation.set(generation.get().wrapping_add(1)));
}

/// The acting user (see `sql/identity.sql` for the rules). NULL when the acting role is neither
/// trusted with an assertion nor mapped to a user.
#[pg_extern(stable, parallel_safe)]
pub(crate) fn current_memory_user() -> Option<pgrx::Uuid> {
    register_invalidation_callbacks();
    let asserted = asserted_user_setting();
    let acting_role = acting_role();
    // SAFETY: MyProc is set for every backend that can run SQL; the timestamp is a plain read.
    let (local_xid, statement_start) =
        unsafe { ((*pg_sys::MyProc).lxid, pg_sys::GetCurrentStatementStartTimestamp()) };
    let generation = IDENTITY_GENERATION.with(Cell::get);
    let hit = CACHED.with(|cached| {
        cached.borrow().as_ref().and_then(|r| {
            (r.local_xid == local_xid
                && r.statement_start == statement_start
                && r.acting_role == acting_role
                && r.generation == generation
                && r.asserted == asserted)
                .then_some(r.user)
        })
    });
    if let Some(user) = hit {
        return user;
    }
    let user = resolve(asserted.as_deref(), acting_role);
    // `generation` as read before resolving: a change seen while resolving invalidates this answer
    CACHED.with(|cached| {
        *cached.borrow_mut() = Some(Resolution { local_xid, statement_start, asserted, acting_role, generation, user })
    });
    user
}

/// The uncached rules: a trusted role's assertion wins; otherwise the user mapped to the role; an
/// untrusted role asserting anyone but its own user gets 42501.
fn resolve(asserted: Option<&[u8]>, acting_role: pg_sys::Oid) -> Option<pgrx::Uuid> {
    let claimed = asserted.map(|text| {
        parse_user_id(text).unwrap_or_else(|| {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("app.current_user is not a valid user id: \"{}\"", String::from_utf8_lossy(text)),
                Some("a uuid looks like 01a21f03-29cf-73a6-baaf-99d93cbcd453"),
            )
        })
    });
    if let Some(claimed) = claimed {
        if role_is_trusted(acting_role) {
            require_transaction_local_assertion();
            return Some(claimed);
        }
    }
    let role_name = role_name(acting_role);
    let mapped = mapped_user(&role_name);
    match claimed {
        Some(claimed) if Some(claimed) != mapped => raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!(
                "role \"{role_name}\" may not act as user {claimed}: app.current_user is honoured only for members of memoriesdb_trusted"
            ),
            Some(&format!(
                "an administrator can run GRANT memoriesdb_trusted TO {} for an application or pooler role",
                quote_identifier(&role_name)
            )),
        ),
        _ => mapped,
    }
}

/// The user mapped to a role, through a plan prepared once per backend (planning the query
/// cost more than running it). PostgreSQL re-plans it by itself when `users` changes, or is
/// dropped and created again with the extension: the statement names it by schema.
fn mapped_user(role_name: &str) -> Option<pgrx::Uuid> {
    // Taken out while it runs, so that a nested call (none is expected) would prepare its own
    // instead of finding the cell borrowed.
    let kept = MAPPED_USER_PLAN.with(|plan| plan.borrow_mut().take());
    let result = Spi::connect(|client| {
        let plan = match kept {
            Some(plan) => plan,
            // qualified throughout, operators included: this runs under the caller's search_path
            None => client
                .prepare(
                    &*format!(
                        "SELECT u.id FROM {SCHEMA}.users u WHERE u.db_role OPERATOR(pg_catalog.=) $1::pg_catalog.name"
                    ),
                    &[PgOid::BuiltIn(PgBuiltInOids::TEXTOID)],
                )?
                .keep(),
        };
        let user = match client.select(&plan, None, &[role_name.into()])?.first().get_one::<pgrx::Uuid>() {
            Err(pgrx::spi::SpiError::InvalidPosition) => Ok(None), // no row: the role is mapped to nobody
            other => other,
        };
        MAPPED_USER_PLAN.with(|cell| *cell.borrow_mut() = Some(plan));
        user
    });
    result.unwrap_or_else(|e| {
        raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("looking up the user mapped to role \"{role_name}\": {e}"), None)
    })
}

/// `memoriesdb.allow_session_identity`: may a trusted role assert the acting user for a whole
/// session (`SET app."current_user"`, `set_memory_user(id, false)`, a role or database default)?
/// Off by default: behind a transaction-mode pooler a session-level assertion stays on the
/// server connection and the next client's statements run as that user. Only a superuser can
/// turn it on (PGC_SUSET), e.g. `ALTER ROLE app SET memoriesdb.allow_session_identity = on` for
/// a role that owns its connections.
pub static ALLOW_SESSION_IDENTITY: GucSetting<bool> = GucSetting::<bool>::new(false);

pub fn register_settings() {
    GucRegistry::define_bool_guc(
        c"memoriesdb.allow_session_identity",
        c"Whether trusted roles may assert the acting user (app.current_user) for a whole session",
        c"Off: an assertion counts only when made for the current transaction (set_memory_user(id), SET LOCAL), so that behind a transaction-mode pooler it cannot carry over to the next client.",
        &ALLOW_SESSION_IDENTITY,
        GucContext::Suset,
        GucFlags::default(),
    );
}

/// A trusted role's assertion counts only when it was made for the current transaction (or by a
/// function's own SET clause), unless an administrator allowed session-level assertions.
fn require_transaction_local_assertion() {
    if ALLOW_SESSION_IDENTITY.get() || assertion_is_transaction_local() {
        return;
    }
    raise(
        PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        "app.current_user is set for the whole session, not for this transaction: behind a connection pooler it would carry over to the next client".into(),
        Some("assert the user per transaction with SELECT set_memory_user(id) or SET LOCAL app.\"current_user\"; an administrator can allow session-level assertions for a role that owns its connections with ALTER ROLE ... SET memoriesdb.allow_session_identity = on"),
    )
}

/// Was the current value of `app.current_user` set for this transaction (SET LOCAL,
/// set_config(..., true)) or by a function's SET clause, rather than for the session (SET,
/// set_config(..., false), a role or database default, a connection option)? PostgreSQL keeps a
/// stack of saved values per setting; the top entry tells how the current value was set, and
/// a value with no stack entry was set before this transaction began.
fn assertion_is_transaction_local() -> bool {
    // SAFETY: reads of the GUC table, which only this backend changes; nothing is kept.
    unsafe {
        let variables = pg_sys::get_guc_variables();
        let count = pg_sys::GetNumConfigOptions();
        for i in 0..count as usize {
            let variable = *variables.add(i);
            if variable.is_null() || CStr::from_ptr((*variable).name).to_bytes() != b"app.current_user" {
                continue;
            }
            let stack = (*variable).stack;
            return !stack.is_null()
                && matches!(
                    (*stack).state,
                    pg_sys::GucStackState::GUC_LOCAL | pg_sys::GucStackState::GUC_SET_LOCAL | pg_sys::GucStackState::GUC_SAVE
                );
        }
        false
    }
}

/// `app.current_user`, when set to something other than the empty string.
fn asserted_user_setting() -> Option<Vec<u8>> {
    // SAFETY: GetConfigOption returns NULL (missing_ok) or a NUL-terminated string owned by the
    // GUC machinery, copied out at once.
    unsafe {
        let value = pg_sys::GetConfigOption(c"app.current_user".as_ptr(), true, false);
        if value.is_null() {
            return None;
        }
        let bytes = CStr::from_ptr(value).to_bytes();
        (!bytes.is_empty()).then(|| bytes.to_vec())
    }
}

/// The role the session acts as: the one chosen by `SET ROLE` (which needs real membership), else
/// the session user. Unlike current_user it is not changed by SECURITY DEFINER functions, so
/// the extension's own functions still see their caller. Same as `acting_db_role()` in SQL.
fn acting_role() -> pg_sys::Oid {
    // SAFETY: plain reads of backend state.
    unsafe {
        let set_role = pg_sys::GetCurrentRoleId();
        if set_role != pg_sys::InvalidOid {
            set_role
        } else {
            pg_sys::GetSessionUserId()
        }
    }
}

fn role_is_trusted(role: pg_sys::Oid) -> bool {
    role_is_member(role, c"memoriesdb_trusted")
}

/// Is `role` a member of the role named `group`? Superusers are members of every role; a group
/// that does not exist has no members.
fn role_is_member(role: pg_sys::Oid, group: &CStr) -> bool {
    // SAFETY: catalog lookups through the syscache (is_member_of_role caches per role).
    unsafe {
        let group = pg_sys::get_role_oid(group.as_ptr(), true);
        group != pg_sys::InvalidOid && pg_sys::is_member_of_role(role, group)
    }
}

/// Is the acting role (see `acting_db_role()`) a member of `role_name`?
#[pg_extern(stable, strict, parallel_safe)]
pub(crate) fn acting_role_is(role_name: &str) -> bool {
    // a name with a NUL byte names no role
    std::ffi::CString::new(role_name).is_ok_and(|name| role_is_member(acting_role(), &name))
}

/// Does the acting role bypass row-level security (a superuser or a BYPASSRLS role)? SECURITY
/// DEFINER functions that decide for their caller grant such roles what the policies would.
#[pg_extern(stable, parallel_safe)]
pub(crate) fn acting_role_bypasses_rls() -> bool {
    let role = acting_role();
    // SAFETY: syscache lookups of an existing role.
    unsafe { pg_sys::superuser_arg(role) || pg_sys::has_bypassrls_privilege(role) }
}

fn role_name(role: pg_sys::Oid) -> String {
    // SAFETY: errors (as an ERROR) for a dropped role; returns a palloc'd NUL-terminated name.
    unsafe { CStr::from_ptr(pg_sys::GetUserNameFromId(role, false)).to_string_lossy().into_owned() }
}

fn quote_identifier(name: &str) -> String {
    let name = std::ffi::CString::new(name).expect("role names have no NUL");
    // SAFETY: PostgreSQL's quote_identifier returns its argument or a palloc'd quoted copy.
    unsafe { CStr::from_ptr(pg_sys::quote_identifier(name.as_ptr())).to_string_lossy().into_owned() }
}

/// A user id as the setting may carry it: 32 hex digits, each of the first four groups
/// (8-4-4-4) optionally followed by a hyphen, the whole optionally in braces. The same subset of
/// the uuid syntax `parse_uuid()` accepts in SQL.
fn parse_user_id(text: &[u8]) -> Option<pgrx::Uuid> {
    let inner = match text {
        [b'{', inner @ .., b'}'] => inner,
        _ => text,
    };
    let mut digits = Vec::with_capacity(32);
    let mut rest = inner;
    for (index, group) in [8usize, 4, 4, 4, 12].into_iter().enumerate() {
        if rest.len() < group || !rest[..group].iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        digits.extend_from_slice(&rest[..group]);
        rest = &rest[group..];
        if index < 4 {
            if let [b'-', after @ ..] = rest {
                rest = after;
            }
        }
    }
    if !rest.is_empty() {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (byte, pair) in bytes.iter_mut().zip(digits.chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(pgrx::Uuid::from_bytes(bytes))
}

/// AFTER ... FOR EACH STATEMENT trigger on `users` (declared in sql/identity.sql): a mapping may
/// have changed.
unsafe fn forget_cached_identity(_fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    forget();
    pg_sys::Datum::from(0usize)
}

fn register_invalidation_callbacks() {
    if CALLBACKS_REGISTERED.with(Cell::get) {
        return;
    }
    // SAFETY: registering backend-lifetime callbacks; they only clear a thread-local.
    unsafe {
        for cache in [
            pg_sys::SysCacheIdentifier::AUTHMEMROLEMEM,
            pg_sys::SysCacheIdentifier::AUTHOID,
            pg_sys::SysCacheIdentifier::AUTHNAME,
        ] {
            pg_sys::CacheRegisterSyscacheCallback(cache as i32, Some(on_role_change), pg_sys::Datum::from(0));
        }
        pg_sys::RegisterSubXactCallback(Some(on_subtransaction_event), std::ptr::null_mut());
    }
    CALLBACKS_REGISTERED.with(|registered| registered.set(true));
}

#[pg_guard]
unsafe extern "C-unwind" fn on_role_change(_arg: pg_sys::Datum, _cache: i32, _hash: u32) {
    forget();
}

#[pg_guard]
unsafe extern "C-unwind" fn on_subtransaction_event(
    event: pg_sys::SubXactEvent::Type,
    _sub: pg_sys::SubTransactionId,
    _parent: pg_sys::SubTransactionId,
    _arg: *mut std::ffi::c_void,
) {
    if event == pg_sys::SubXactEvent::SUBXACT_EVENT_ABORT_SUB {
        forget();
    }
}

#[cfg(test)]
mod unit {
    use super::parse_user_id;

    #[test]
    fn user_id_forms() {
        let canonical = parse_user_id(b"01a21f03-29cf-73a6-baaf-99d93cbcd453").unwrap();
        assert_eq!(canonical.to_string(), "01a21f03-29cf-73a6-baaf-99d93cbcd453");
        assert_eq!(parse_user_id(b"01A21F0329CF73A6BAAF99D93CBCD453"), Some(canonical));
        assert_eq!(parse_user_id(b"{01a21f03-29cf73a6-baaf-99d93cbcd453}"), Some(canonical));
        for bad in [&b""[..], b"nobody", b"01a21f03-29cf-73a6-baaf-99d93cbcd45", b"01a21f03-29cf-73a6-baaf-99d93cbcd4533",
            b"{01a21f03-29cf-73a6-baaf-99d93cbcd453", b"01a21f03--29cf-73a6-baaf-99d93cbcd453", b"01a21f03-29cf-73a6-baaf-99d93cbcd45g",
            b"01a21f03-29cf-73a6-baaf-99d9-3cbcd453", b"01a21f03-29cf-73a6-baaf-99d93cbcd453-"] {
            assert_eq!(parse_user_id(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}

crate::fmgr::guarded_trigger_entry!(pg_finfo_forget_cached_identity_guarded, forget_cached_identity_guarded, forget_cached_identity, "forget_cached_identity()");

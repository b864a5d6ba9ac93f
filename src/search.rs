//! Search: full-text (`search_memories`), vector (`vector_search`) and hybrid (`hybrid_search`),
//! each branch-aware when restricted to a session; and what a memory's search configuration and
//! indexed text must satisfy.
//!
//! The search functions run as the extension owner (SECURITY DEFINER, declared in
//! sql/search.sql): under row-level security the planner could not let the GIN or HNSW index
//! drive a search (their operators are not leakproof, so they may not run before the policy),
//! and every search would scan all tenants' rows. So each statement applies the memories read
//! rule itself — the one definition in policies.rs, as ordinary conditions after the index
//! match — for its caller, whose role and identity it still sees: it returns only rows the
//! caller may see. Statements are fixed text in this library, kept per backend (vector search:
//! one per embedding dimension, whose number the statement must name for the dimension's
//! partial HNSW index to match), and their rows go straight into the function's result.
//!
//! Common optional filters, with the same names everywhere: session_id (only what that
//! session's branch sees: its messages and the inherited prefix of its ancestors), kind_filter,
//! metadata_filter (`_metadata @>`), lim (1 .. 10000, default 10).

use crate::catalog::SCHEMA;
use crate::embeddings;
use crate::errors::{attempt, raise};
use crate::fmgr::raw_arg;
use crate::identity;
use crate::policies::{memories_read_rule, MemoryColumns};
use crate::ranking::{self, Ranking};
use crate::spi::{self, arg, Arg, Effect, KeptPlan, KeptPlans, PlanChoice, ResultSet};
use pgrx::pg_sys;
use pgrx::pg_sys::{
    BOOLOID as BOOL, FLOAT8OID as FLOAT8, INT4OID as INT4, JSONBOID as JSONB, REGCONFIGOID as REGCONFIG, TEXTOID as TEXT,
    TSQUERYOID as TSQUERY, UUIDOID as UUID,
};
use pgrx::prelude::*;
use std::ffi::CStr;

/// pg_ts_config's columns, for SysCacheGetAttr (pgrx has no binding of its row struct).
const CFGNAME: i16 = 2;
const CFGNAMESPACE: i16 = 3;
const CFGOWNER: i16 = 4;

/// CHECK on `memories.search_config`: the text search configuration a memory is indexed with
/// must outlive the session that wrote it, and be one pg_dump restores: a built-in one
/// (pg_catalog) or one a superuser created in an ordinary schema. A temporary configuration —
/// or one an ordinary role made and can drop again — would leave rows whose search vector can
/// never be recomputed: every later UPDATE of such a row fails, and a restore loads none of the
/// table. Returns true, or raises 22023 naming the configuration. A syscache lookup in Rust,
/// because it runs for every row written.
#[pg_extern(stable, strict, parallel_safe)]
fn require_durable_search_config(config: pg_sys::Oid) -> bool {
    // SAFETY: a syscache lookup by oid; the tuple is released before returning, the values read
    // from it are plain oids, and the name is copied out first.
    let (name, namespace, owner) = unsafe {
        let cache = pg_sys::SysCacheIdentifier::TSCONFIGOID as i32;
        let tuple = pg_sys::SearchSysCache1(cache, pg_sys::Datum::from(config));
        if tuple.is_null() {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
                format!("text search configuration with oid {} does not exist", config.to_u32()),
                None,
            );
        }
        let mut is_null = false;
        let name_ptr = pg_sys::SysCacheGetAttr(cache, tuple, CFGNAME.into(), &mut is_null).cast_mut_ptr::<pg_sys::NameData>();
        let name = CStr::from_ptr((*name_ptr).data.as_ptr()).to_string_lossy().into_owned();
        let namespace = pg_sys::Oid::from(pg_sys::SysCacheGetAttr(cache, tuple, CFGNAMESPACE.into(), &mut is_null).value() as u32);
        let owner = pg_sys::Oid::from(pg_sys::SysCacheGetAttr(cache, tuple, CFGOWNER.into(), &mut is_null).value() as u32);
        pg_sys::ReleaseSysCache(tuple);
        (name, namespace, owner)
    };
    // SAFETY: catalog lookups by oid.
    let durable = namespace == pg_sys::Oid::from(pg_sys::PG_CATALOG_NAMESPACE)
        || unsafe { !pg_sys::isAnyTempNamespace(namespace) && pg_sys::superuser_arg(owner) };
    if !durable {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("text search configuration \"{name}\" cannot index stored memories: it is temporary or was not created by a superuser"),
            Some("use a built-in configuration such as 'english' or 'simple' (memoriesdb.text_search_config), or one an administrator created"),
        );
    }
    true
}

/// How much of a memory's content is indexed for full-text search, in bytes. PostgreSQL refuses
/// a tsvector whose distinct lexemes add up to 1 MiB or more (54000), and the lexemes of a text
/// can outgrow the text itself: hyphenated compounds are indexed whole and in parts (up to 2x),
/// and lowercasing lengthens some letters (e.g. U+023A, 2 bytes, becomes U+2C65, 3 bytes:
/// 1.5x). 256 KiB x 2 x 1.5 stays below 1 MiB, so no content, in any script, can make a write
/// fail. A limit in characters (as before) let 4-byte characters overflow it.
const SEARCHABLE_BYTES: usize = 256 * 1024;

/// The part of `content` that full-text search indexes: the whole text when it is at most
/// 256 KiB of UTF-8, else its first 256 KiB, cut at a character boundary.
#[pg_extern(immutable, strict, parallel_safe)]
fn searchable_text(content: &str) -> &str {
    if content.len() <= SEARCHABLE_BYTES {
        return content;
    }
    let mut end = SEARCHABLE_BYTES;
    while !content.is_char_boundary(end) {
        end -= 1;
    }
    &content[..end]
}


// ---------------------------------------------------------------------------------------------
// The search functions
// ---------------------------------------------------------------------------------------------

thread_local! {
    // Searches of everything: generic plans, which the GIN or HNSW index drives whatever the
    // values (for a role that reads everything, a plan for the values folds the read rule away,
    // so PostgreSQL would plan the statement anew on every call: see PlanChoice::Generic).
    // Searches in a session: plans for the values, so that the planner can weigh reading the
    // branch's B-tree ranges against the GIN index for the actual query.
    static TEXT_SEARCH: KeptPlan = const { KeptPlan::generic() };
    static TEXT_SEARCH_IN_SESSION: KeptPlan = const { KeptPlan::new() };
    static SESSION_LISTED: KeptPlan = const { KeptPlan::new() };
    static SEARCH_CONFIG: KeptPlan = const { KeptPlan::new() };
    static PGVECTOR_TYPE: KeptPlan = const { KeptPlan::new() };
    /// vector and hybrid statements, by text (dimension, pgvector's schema) and parameter types:
    /// of everything, and in a session
    static VECTOR_PLANS: KeptPlans = KeptPlans::new(PlanChoice::Generic);
    static VECTOR_PLANS_IN_SESSION: KeptPlans = KeptPlans::new(PlanChoice::Adaptive);
}

/// Every search statement takes these parameters, so that the full-text and the vector ranking
/// can be put together in one hybrid statement. $13 is pgvector's `vector` (its type oid is the
/// database's own).
const ME: &str = "$1";
const WORKER: &str = "$2";
const PARAMETER_TYPES: [pg_sys::Oid; 12] = {
    let [pool, importance_weight, recency_weight, half_life] = ranking::PARAMETER_TYPES;
    [UUID, BOOL, UUID, TEXT, JSONB, INT4, TSQUERY, REGCONFIG, pool, importance_weight, recency_weight, half_life]
};
//  $3 session, $4 kind_filter, $5 metadata_filter, $6 lim, $7 the parsed query, $8 its configuration,
//  $9 .. $12 the ranking's (ranking.rs: the number of best matches by relevance it orders, its weights, the half-life),
//  $13 embedding, $14 min_similarity, $15 candidates per ranking, $16 text_weight, $17 vector_weight, $18 rrf_k,
//  $19 the model the query embedding is from (NULL: any)

fn all_parameter_types(vector: pg_sys::Oid) -> Vec<pg_sys::Oid> {
    let mut types = PARAMETER_TYPES.to_vec();
    types.extend([vector, FLOAT8, INT4, FLOAT8, FLOAT8, INT4, TEXT]);
    types
}

/// The rule, the memory's validity in time and the filters, for memories `m`.
fn visible_and_filtered() -> String {
    let rule = memories_read_rule(&MemoryColumns::of_row("m"), ME, WORKER);
    format!(
        "{rule}
         -- only what holds now (a superseded fact has a valid_to: facts() reads the history)
         AND (m.valid_from IS NULL OR m.valid_from OPERATOR(pg_catalog.<=) pg_catalog.now())
         AND (m.valid_to IS NULL OR m.valid_to OPERATOR(pg_catalog.>) pg_catalog.now())
         AND ($4 IS NULL OR m.kind OPERATOR(pg_catalog.=) $4)
         AND ($5 IS NULL OR m._metadata OPERATOR(pg_catalog.@>) $5)"
    )
}

/// The memories a search looks at: all, or those the branch of session $3 sees (its own
/// messages and each ancestor's up to the fork point below it: one B-tree range per segment).
fn searched_memories(in_session: bool) -> String {
    if in_session {
        format!(
            "{SCHEMA}.session_lineage($3) l
             JOIN {SCHEMA}.memories m
               ON m.session_id OPERATOR(pg_catalog.=) l.lineage_session_id
              AND m.position OPERATOR(pg_catalog.<=) l.visible_upto"
        )
    } else {
        format!("{SCHEMA}.memories m")
    }
}

/// The full-text ranking: (id, r) of the best `limit` matches of the parsed query $7, ranked by
/// ts_rank_cd (which looks only at each row and its query: no corpus-wide statistics that could
/// leak one tenant's vocabulary to another). Only (id, rank) pairs are ranked: carrying the
/// content through the ranking of thousands of matches cost 10%.
fn text_ranking(in_session: bool, limit: &str) -> String {
    format!(
        "SELECT m.id, pg_catalog.ts_rank_cd(m.search_tsv, $7) AS r
           FROM {from}
          WHERE m.search_tsv OPERATOR(pg_catalog.@@) $7
            AND {visible}
          ORDER BY r DESC, m.id
          LIMIT {limit}",
        from = searched_memories(in_session),
        visible = visible_and_filtered()
    )
}

/// The vector ranking: (id, sim, chunk) of the `limit` memories nearest to the query embedding
/// $13, each memory once, at its best passage: its own embedding (chunk NULL: the whole content,
/// or its first chunk when it has chunks) or one of its chunks (memory_chunks: the passages of
/// content longer than the model reads), whichever is nearer. sim = 1 - cosine distance.
/// Only embeddings of the query's dimension are compared (and, when $19 names the query's
/// model, only that model's: vectors of two models are never compared), and a chunk only while
/// it is of the memory's current content. Without a session, each side is ordered by the
/// expression of the dimension's HNSW index (create_vector_index), which drives its scan
/// (pgvector's iterative scan, set on the functions, keeps it going past rows the rule or the
/// filters refuse); in a session, exact scans of the branch.
fn vector_ranking(vector_schema: &str, dimensions: Option<i32>, limit: &str, passages: Passages) -> String {
    let visible = visible_and_filtered();
    // the nearest `limit` of one side: embeddings `embedding` of rows `from`, computed by `model`
    let nearest = |from: &str, embedding: &str, model: &str, chunk: &str| {
        // ordered by distance, nearest first, either way: the index scan's own order, and one
        // where an embedding that gives a NaN distance (components near the largest float
        // overflow the cosine) sorts last, so it cannot take a real match's place under the LIMIT
        let (dimension, distance, order) = match dimensions {
            Some(d) => {
                let distance =
                    format!("{embedding}::{vector_schema}.vector({d}) OPERATOR({vector_schema}.<=>) $13::{vector_schema}.vector({d})");
                (d.to_string(), distance.clone(), distance)
            }
            // (`distance` here is the output column: the distance computed once per row)
            None => (format!("{vector_schema}.vector_dims($13)"), format!("{embedding} OPERATOR({vector_schema}.<=>) $13"), "distance, m.id".into()),
        };
        format!(
            "SELECT m.id, {distance} AS distance, {chunk} AS chunk
               FROM {from}
              WHERE {vector_schema}.vector_dims({embedding}) OPERATOR(pg_catalog.=) {dimension}
                AND {visible}
                AND ($19 IS NULL OR {model} OPERATOR(pg_catalog.=) $19)
              ORDER BY {order}
              LIMIT {limit}"
        )
    };
    let memories = searched_memories(dimensions.is_none());
    let whole = nearest(&memories, "m.content_embedding", "m.embedding_model", "NULL::pg_catalog.int4");
    // the hits of `nearest` rows with their similarity
    let hits = |nearest: &str| format!("(SELECT n.id, 1::pg_catalog.float8 OPERATOR(pg_catalog.-) n.distance AS sim, n.chunk FROM {nearest} n)");
    if passages == Passages::None {
        // (each memory once already: no merge)
        return format!(
            "SELECT hit.id, hit.sim, hit.chunk FROM {hits} hit
              WHERE hit.sim OPERATOR(pg_catalog.<>) 'NaN'::pg_catalog.float8
              ORDER BY hit.sim DESC, hit.id",
            hits = hits(&format!("({whole})"))
        );
    }
    let passages = nearest(
        &format!(
            "{memories}
             JOIN {SCHEMA}.memory_chunks c ON c.memory_id OPERATOR(pg_catalog.=) m.id
                                          AND c.content_hash OPERATOR(pg_catalog.=) m.content_hash"
        ),
        "c.embedding",
        "c.embedding_model",
        "c.chunk_index",
    );
    format!(
        "SELECT best.id, best.sim, best.chunk
           FROM (SELECT DISTINCT ON (hit.id) hit.id, hit.sim, hit.chunk
                   FROM {hits} hit
                  -- (NaN sorts first: an embedding written directly that gives NaN must not
                  -- stand for its memory's good passages)
                  WHERE hit.sim OPERATOR(pg_catalog.<>) 'NaN'::pg_catalog.float8
                  ORDER BY hit.id, hit.sim DESC, hit.chunk NULLS FIRST) best
          ORDER BY best.sim DESC, best.id
          LIMIT {limit}",
        hits = hits(&format!("(({whole}) UNION ALL ({passages}))"))
    )
}

/// Whether a vector search has passages to look at. memory_chunks without a single page holds
/// no row for any snapshot (every row ever inserted, committed or not, extended the file first),
/// so a store of short memories, which never has passages, is searched by the statement without
/// the passages' arm, merge and offsets lookup (less to plan and start on every call). This holds
/// for the search's snapshot because the search statements run read-only on the caller's
/// snapshot, taken before this look (spi.rs, return_rows_to): a page added since is of a row that
/// snapshot cannot see.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Passages {
    None,
    Some,
}

impl Passages {
    fn stored() -> Passages {
        // (a catalog older than the library has no memory_chunks: the statement says so)
        let Some(relation) = crate::catalog::relation(c"memory_chunks") else { return Passages::Some };
        // SAFETY: a relation opened and closed here; its size read in between.
        unsafe {
            // (dropped since the lookup: the search statement says so)
            let opened = pg_sys::try_relation_open(relation, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
            if opened.is_null() {
                return Passages::Some;
            }
            // only a plain table without children has all its rows in its own pages
            let rel = &*(*opened).rd_rel;
            let none = rel.relkind == pg_sys::RELKIND_RELATION as std::ffi::c_char
                && !rel.relhassubclass
                && pg_sys::RelationGetNumberOfBlocksInFork(opened, pg_sys::ForkNumber::MAIN_FORKNUM) == 0;
            if none {
                // what the passages' scan would have told a serializable transaction: a passage
                // written concurrently conflicts with this search
                unsafe extern "C-unwind" {
                    fn PredicateLockRelation(relation: pg_sys::Relation, snapshot: pg_sys::Snapshot);
                }
                crate::errors::catching(|| PredicateLockRelation(opened, pg_sys::GetActiveSnapshot()));
            }
            // (released at once: the statement without passages never touches the table, and
            // holding the lock to the end of the transaction would take it before memories')
            pg_sys::relation_close(opened, pg_sys::AccessShareLock as pg_sys::LOCKMODE);
            if none { Passages::None } else { Passages::Some }
        }
    }

    /// The statement variant's name part.
    fn variant(self) -> &'static str {
        match self {
            Passages::None => "whole",
            Passages::Some => "passages",
        }
    }
}

/// The passage a vector ranking's hit `hits` matched, for memory `m`: the chunk it names, or for
/// the memory's own embedding its first chunk if it has chunks; `c` in the statement.
fn matched_chunk(hits: &str, passages: Passages) -> String {
    if passages == Passages::None {
        // (no chunk row to find: c.* are NULL, as the LEFT JOIN would make them)
        return "CROSS JOIN (SELECT NULL::pg_catalog.int4 AS start_char, NULL::pg_catalog.int4 AS end_char) c".into();
    }
    format!(
        "LEFT JOIN {SCHEMA}.memory_chunks c
                ON c.memory_id OPERATOR(pg_catalog.=) m.id
               AND c.chunk_index OPERATOR(pg_catalog.=) coalesce({hits}.chunk, 0)
               AND c.content_hash OPERATOR(pg_catalog.=) m.content_hash"
    )
}

/// chunk_start and chunk_end of a hit joined by matched_chunk(): the chunk's character offsets,
/// or the whole content for a memory embedded whole.
const CHUNK_OFFSETS: &str = "coalesce(c.start_char, 0), coalesce(c.end_char, pg_catalog.char_length(m.content))";

/// The caller, as the search statements decide for them: the acting user, and whether their
/// role reads everything (bypasses row-level security, or a worker).
struct Caller {
    user: Option<pgrx::Uuid>,
    me: Arg,
    reads_all: bool,
}

impl Caller {
    fn current() -> Caller {
        let user = identity::current_memory_user();
        Caller {
            user,
            me: arg(user),
            reads_all: identity::acting_role_bypasses_rls() || identity::acting_role_is("memoriesdb_worker"),
        }
    }

    /// A session to search in must be listed for the caller (theirs or shared with them; any
    /// for roles that read everything): P0002 otherwise, as for a session that does not exist.
    fn require_listed(&self, spi: &spi::Connection, session: Option<pg_sys::Datum>) {
        let Some(session) = session else { return };
        if self.reads_all {
            return;
        }
        let listed = spi.execute_kept(
            &SESSION_LISTED,
            || format!("SELECT {SCHEMA}.session_listed_for($1, $2)"),
            &[UUID, UUID],
            &[self.me, Some(session)],
            Effect::Reads,
        );
        if listed.get::<bool>(0, 1) != Some(true) {
            // SAFETY: a uuid datum.
            let id = unsafe { pgrx::Uuid::from_datum(session, false) }.expect("not NULL");
            raise(
                PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
                format!("session {id} does not exist"),
                Some("create one with create_session(title)"),
            )
        }
    }
}

/// The limit rule of the search and listing functions (search_limit(lim) in SQL): NULL means
/// 10, else 1 .. 10000 (22023).
#[pg_extern(immutable, parallel_safe)]
pub fn search_limit(lim: Option<i32>) -> i32 {
    checked_limit(lim.unwrap_or(10), "lim")
}

/// A limit of at most 10000 rows (and at least 1), or 22023 naming `argument`.
pub fn checked_limit(n: i32, argument: &str) -> i32 {
    if !(1..=10000).contains(&n) {
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("{argument} must be between 1 and 10000, got {n}"), None)
    }
    n
}

/// A float8 as PostgreSQL prints it in a message (NaN, Infinity).
pub fn float8_text(value: f64) -> String {
    match value {
        v if v.is_nan() => "NaN".into(),
        v if v == f64::INFINITY => "Infinity".into(),
        v if v == f64::NEG_INFINITY => "-Infinity".into(),
        v => v.to_string(),
    }
}

/// A search's text query, checked before anything else: not NULL, at most 10,000 characters
/// (parsing a huge query costs seconds and can exhaust the stack; nobody types that much).
/// Returns the query and its bytes.
fn checked_query<'a>(query: Option<pg_sys::Datum>) -> (pg_sys::Datum, &'a [u8]) {
    let Some(query) = query else {
        raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "query must not be NULL".into(), None)
    };
    // SAFETY: a text datum.
    let text = unsafe { crate::tuples::text_bytes(query) };
    if text.len() > 10000 {
        let characters = String::from_utf8_lossy(text).chars().count();
        if characters > 10000 {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("query is {characters} characters long; at most 10000 are allowed"),
                None,
            )
        }
    }
    (query, text)
}

/// A checked query (`checked_query()`), parsed with websearch_to_tsquery semantics (quoted
/// phrases, -exclusion, "or") in configuration `config` (NULL: memoriesdb.text_search_config,
/// else 'english'). Any text a user types is accepted; None when it has no searchable words
/// (empty, only stop words or punctuation): such a query matches nothing. Returns (query, config).
fn parse_text_query(
    spi: &spi::Connection,
    (query, text): (pg_sys::Datum, &[u8]),
    config: Option<pg_sys::Datum>,
) -> (Option<pg_sys::Datum>, pg_sys::Oid) {
    // the configuration asked for, or default_search_config() (the rule the memories' column
    // default follows: memoriesdb.text_search_config, else 'english'), if it exists
    let found = spi.execute_kept(
        &SEARCH_CONFIG,
        || {
            format!(
                "SELECT c.oid FROM pg_catalog.pg_ts_config c
                  WHERE c.oid OPERATOR(pg_catalog.=) coalesce($1, {SCHEMA}.default_search_config())::pg_catalog.oid"
            )
        },
        &[REGCONFIG],
        &[config],
        Effect::Reads,
    );
    let Some(config) = found.get::<pg_sys::Oid>(0, 1) else {
        let asked = config.map_or(0, |d| d.value() as u32);
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("text search configuration {asked} does not exist"), None)
    };
    // SAFETY: PostgreSQL's websearch_to_tsquery(regconfig, text), called directly; it allocates
    // its result in the current memory context and owns nothing else.
    let parsed = unsafe {
        attempt(|| raw::direct_call2(Some(raw::websearch_to_tsquery_byid), pg_sys::InvalidOid, pg_sys::Datum::from(config), query))
    };
    let parsed = match parsed {
        Ok(parsed) => parsed,
        // PostgreSQL's parser gives up on more than 32 operators in a row ("tsquery stack too
        // small", XX000); that is the query's fault, not the server's
        Err(error) if error.sqlstate() == PgSqlErrorCode::ERRCODE_INTERNAL_ERROR && error.message() == "tsquery stack too small" => {
            let shown: String = String::from_utf8_lossy(text).chars().take(80).collect();
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("query has too many operators in a row (e.g. \"-\" signs) to search: {shown}"),
                Some("at most 32 operators may follow each other"),
            )
        }
        Err(error) => error.raise(),
    };
    // SAFETY: a tsquery just made (not toasted): a varlena header, then its number of nodes.
    let nodes = unsafe { std::ptr::read_unaligned(parsed.cast_mut_ptr::<u8>().add(pg_sys::VARHDRSZ).cast::<i32>()) };
    ((nodes > 0).then_some(parsed), config)
}

/// pgvector's schema as SQL names it, from the type of the embedding argument `argument` of the
/// function being called (CREATE EXTENSION bound it to pgvector's own `vector`).
fn vector_schema(fcinfo: pg_sys::FunctionCallInfo, argument: usize) -> (pg_sys::Oid, String) {
    // SAFETY: the fcinfo of the current call; its function's signature is in the catalog.
    let vector = unsafe {
        let mut types: *mut pg_sys::Oid = std::ptr::null_mut();
        let mut count = 0;
        pg_sys::get_func_signature((*(*fcinfo).flinfo).fn_oid, &mut types, &mut count);
        *types.add(argument)
    };
    // looked up on every call (two syscache hits), never cached: a name remembered across calls
    // would outlive a change of pgvector's schema
    // SAFETY: syscache lookups of an existing type and its schema.
    let schema = unsafe {
        let cache = pg_sys::SysCacheIdentifier::TYPEOID as i32;
        let tuple = pg_sys::SearchSysCache1(cache, pg_sys::Datum::from(vector));
        if tuple.is_null() {
            raise(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, format!("type {} does not exist", vector.to_u32()), None);
        }
        let mut is_null = false;
        let namespace = pg_sys::SysCacheGetAttr(cache, tuple, 3 /* typnamespace */, &mut is_null);
        pg_sys::ReleaseSysCache(tuple);
        let name = pg_sys::get_namespace_name(pg_sys::Oid::from(namespace.value() as u32));
        CStr::from_ptr(pg_sys::quote_identifier(name)).to_string_lossy().into_owned()
    };
    (vector, schema)
}

/// A query embedding: its dimension, after checking it is usable (require_usable_embedding()
/// in SQL words the refusal: NULL, or (nearly) the zero vector, for which cosine similarity is
/// undefined).
fn usable_embedding(spi: &spi::Connection, embedding: Option<pg_sys::Datum>, vector: pg_sys::Oid, vector_schema: &str) -> i32 {
    if let Some(embedding) = embedding {
        // SAFETY: a pgvector `vector`: a varlena header, int16 dim, int16 unused, dim float4s.
        let (dimensions, norm) = unsafe {
            let v = pg_sys::pg_detoast_datum(embedding.cast_mut_ptr::<pg_sys::varlena>()).cast::<u8>();
            let dimensions = std::ptr::read_unaligned(v.add(pg_sys::VARHDRSZ).cast::<i16>());
            let values = std::slice::from_raw_parts(v.add(pg_sys::VARHDRSZ + 4).cast::<f32>(), dimensions.max(0) as usize);
            // as pgvector's vector_norm computes it
            (dimensions as i32, values.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt())
        };
        if norm >= 1e-10 && norm.is_finite() {
            return dimensions;
        }
    }
    spi.execute(
        &format!("SELECT {SCHEMA}.require_usable_embedding($1::{vector_schema}.vector)"),
        &[vector],
        &[embedding],
        Effect::Reads,
    );
    raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, "require_usable_embedding() accepted an unusable embedding".into(), None)
}

/// search_memories(query text, session_id uuid, kind_filter text, metadata_filter jsonb,
/// lim integer, config regconfig, importance_weight float8, recency_weight float8, half_life
/// interval) RETURNS TABLE (id, content, kind, role, origin_session_id, position, rank real,
/// snippet text, importance real, recency float8, score float8): full-text search, best first
/// (by rank, or by score when ranking by importance or recency: ranking.rs); snippet
/// highlights the matches with <b>...</b>.
unsafe fn search_memories(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: declared in SQL with these ten arguments.
    let [query, session, kind, metadata, lim, config, importance_weight, recency_weight, half_life, candidates] =
        std::array::from_fn(|i| unsafe { raw_arg(fcinfo, i) });
    let n = search_limit(lim.map(|d| d.value() as i32));
    let ranking = Ranking::checked(importance_weight, recency_weight, half_life);
    // (ranking costs little more than it orders: ts_rank_cd is computed for every match anyway)
    let pool = ranking.pool(n, candidates, (n * 5).min(10000));
    let caller = Caller::current();
    // SAFETY: a set-returning function with a row type.
    let result = unsafe { ResultSet::materialize(fcinfo) };
    spi::connect(|spi| {
        let query = checked_query(query);
        caller.require_listed(spi, session);
        let (parsed, config) = parse_text_query(spi, query, config);
        let Some(parsed) = parsed else { return };
        let in_session = session.is_some();
        let plan = spi::kept(
            if in_session { &TEXT_SEARCH_IN_SESSION } else { &TEXT_SEARCH },
            || {
                format!(
                    "SELECT h.id, m.content, m.kind, m.role, m.session_id, m.position, h.r,
                            pg_catalog.ts_headline($8, {SCHEMA}.searchable_text(m.content), $7,
                                                   'MaxFragments=2, MaxWords=20, MinWords=5'),
                            h.importance, h.recency, h.score
                       FROM ({ranked}) h JOIN {SCHEMA}.memories m ON m.id OPERATOR(pg_catalog.=) h.id
                      ORDER BY h.score DESC, h.r DESC, h.id",
                    ranked = ranking::ranked(&text_ranking(in_session, ranking::POOL), "h.r")
                )
            },
            &PARAMETER_TYPES,
        );
        let [pool, importance_weight, recency_weight, half_life] = ranking.args(pool);
        let returned = spi.return_rows_noting_ids(
            plan,
            &[
                caller.me,
                arg(caller.reads_all),
                session,
                kind,
                metadata,
                arg(n),
                Some(parsed),
                arg(config),
                pool,
                importance_weight,
                recency_weight,
                half_life,
            ],
            &result,
            n as usize,
        );
        ranking::note_accesses(spi, caller.user, returned);
    });
    pg_sys::Datum::from(0)
}

crate::fmgr::sql_function_entry!(pg_finfo_search_memories_native, search_memories_native, search_memories);

/// vector_search(embedding vector, threshold float8, lim integer, session_id uuid, kind_filter
/// text, metadata_filter jsonb, model text) RETURNS TABLE (id, content, kind, role,
/// origin_session_id, position, similarity float8, chunk_start integer, chunk_end integer):
/// similarity = 1 - cosine distance, highest first, at most lim rows with similarity >=
/// threshold, among memories whose embedding has the query's dimension (and, with `model`, was
/// computed by that model); each memory once, at its best passage (chunk_start, chunk_end: its
/// character offsets).
unsafe fn vector_search(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: declared in SQL with these eleven arguments.
    let [embedding, threshold, lim, session, kind, metadata, model, importance_weight, recency_weight, half_life, candidates] =
        std::array::from_fn(|i| unsafe { raw_arg(fcinfo, i) });
    let (vector, vector_schema) = vector_schema(fcinfo, 0);
    let ranking = Ranking::checked(importance_weight, recency_weight, half_life);
    let search = VectorSearch::checked(threshold, lim, session, kind, metadata, ranking, candidates);
    // SAFETY: a set-returning function with a row type.
    let result = unsafe { ResultSet::materialize(fcinfo) };
    spi::connect(|spi| {
        let dimensions = usable_embedding(spi, embedding, vector, &vector_schema);
        search.caller.require_listed(spi, session);
        search.run(spi, embedding, dimensions, model, vector, &vector_schema, &result);
    });
    pg_sys::Datum::from(0)
}

crate::fmgr::sql_function_entry!(pg_finfo_vector_search_native, vector_search_native, vector_search);

/// semantic_search(query text, threshold float8, lim integer, session_id uuid, kind_filter
/// text, metadata_filter jsonb) RETURNS TABLE (id, content, kind, role, origin_session_id,
/// position, similarity float8, chunk_start integer, chunk_end integer): vector_search() with the embedding of `query` from the
/// configured endpoint (embeddings.rs), among memories embedded by the same model.
unsafe fn semantic_search(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: declared in SQL with these ten arguments.
    let [query, threshold, lim, session, kind, metadata, importance_weight, recency_weight, half_life, candidates] =
        std::array::from_fn(|i| unsafe { raw_arg(fcinfo, i) });
    let ranking = Ranking::checked(importance_weight, recency_weight, half_life);
    let search = VectorSearch::checked(threshold, lim, session, kind, metadata, ranking, candidates);
    // SAFETY: a set-returning function with a row type.
    let result = unsafe { ResultSet::materialize(fcinfo) };
    spi::connect(|spi| {
        let (_, text) = checked_query(query);
        search.caller.require_listed(spi, session);
        let (vector, vector_schema) = pgvector_type(spi);
        let embedded = embeddings::embed_query(text);
        let embedding = Some(embeddings::vector_datum(&embedded.values));
        // an endpoint can answer with the zero vector: refused as it is from a caller (22023)
        let dimensions = usable_embedding(spi, embedding, vector, &vector_schema);
        let model = embedded.model.as_str().into_datum();
        search.run(spi, embedding, dimensions, model, vector, &vector_schema, &result);
    });
    pg_sys::Datum::from(0)
}

crate::fmgr::sql_function_entry!(pg_finfo_semantic_search_native, semantic_search_native, semantic_search);

/// A vector search's checked arguments, shared by vector_search() and semantic_search().
struct VectorSearch {
    caller: Caller,
    min_similarity: f64,
    n: i32,
    session: Option<pg_sys::Datum>,
    kind: Option<pg_sys::Datum>,
    metadata: Option<pg_sys::Datum>,
    ranking: Ranking,
    pool: i32,
}

impl VectorSearch {
    fn checked(
        threshold: Option<pg_sys::Datum>,
        lim: Option<pg_sys::Datum>,
        session: Option<pg_sys::Datum>,
        kind: Option<pg_sys::Datum>,
        metadata: Option<pg_sys::Datum>,
        ranking: Ranking,
        candidates: Option<pg_sys::Datum>,
    ) -> VectorSearch {
        let n = search_limit(lim.map(|d| d.value() as i32));
        // SAFETY: a float8 datum (by value).
        let min_similarity = threshold.map_or(-1.0, |d| unsafe { f64::from_datum(d, false) }.expect("not NULL"));
        if !(-1.0..=1.0).contains(&min_similarity) {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("threshold must be between -1 and 1 (cosine similarity), got {}", float8_text(min_similarity)),
                None,
            )
        }
        // by default the ranking orders the lim nearest: under a selective filter (one tenant's
        // rows among many) each further candidate costs the HNSW scan more index tuples, 5 x lim
        // about 5 times the search (BENCHMARKS.md)
        let pool = ranking.pool(n, candidates, n);
        VectorSearch { caller: Caller::current(), min_similarity, n, session, kind, metadata, ranking, pool }
    }

    /// Return the rows of the search for `embedding` (usable, of `dimensions`) into `result`.
    #[allow(clippy::too_many_arguments)]
    fn run(
        &self,
        spi: &spi::Connection,
        embedding: Option<pg_sys::Datum>,
        dimensions: i32,
        model: Option<pg_sys::Datum>,
        vector: pg_sys::Oid,
        vector_schema: &str,
        result: &ResultSet,
    ) {
        let types = all_parameter_types(vector);
        let session = self.session;
        // ordering by distance and then cutting at the threshold returns exactly the top rows
        // above it, because similarity falls monotonically along that order; NaN similarities
        // (stored embeddings written directly can give them) are left out. The relevance the
        // ranking scales is the similarity, or 0 for a negative one.
        let passages = Passages::stored();
        let sql = || {
            let nearest = vector_ranking(vector_schema, session.is_none().then_some(dimensions), ranking::POOL, passages);
            format!(
                "SELECT m.id, m.content, m.kind, m.role, m.session_id, m.position, hits.sim, {CHUNK_OFFSETS},
                        hits.importance, hits.recency, hits.score
                   FROM ({ranked}) hits
                   JOIN {SCHEMA}.memories m ON m.id OPERATOR(pg_catalog.=) hits.id
                   {chunk}
                  ORDER BY hits.score DESC, hits.sim DESC, hits.id",
                ranked = ranking::ranked(
                    &format!(
                        "SELECT v.* FROM ({nearest}) v
                          WHERE v.sim OPERATOR(pg_catalog.>=) $14 AND v.sim OPERATOR(pg_catalog.<>) 'NaN'::pg_catalog.float8"
                    ),
                    "greatest(h.sim, 0::pg_catalog.float8)"
                ),
                chunk = matched_chunk("hits", passages),
            )
        };
        let variant = format!("vector_search {} {vector_schema} {}", session.map_or(dimensions, |_| 0), passages.variant());
        let plans = if session.is_some() { &VECTOR_PLANS_IN_SESSION } else { &VECTOR_PLANS };
        let plan = spi::kept_variant(plans, variant, sql, &types);
        let [pool, importance_weight, recency_weight, half_life] = self.ranking.args(self.pool);
        let returned = spi.return_rows_noting_ids(
            plan,
            &[
                self.caller.me,
                arg(self.caller.reads_all),
                session,
                self.kind,
                self.metadata,
                arg(self.n),
                None,
                None,
                pool,
                importance_weight,
                recency_weight,
                half_life,
                embedding,
                arg(self.min_similarity),
                None,
                None,
                None,
                None,
                model,
            ],
            result,
            self.n as usize,
        );
        ranking::note_accesses(spi, self.caller.user, returned);
    }
}

/// pgvector's `vector` type and its schema as SQL names it, for a search that has no vector
/// argument to read them from (semantic_search).
fn pgvector_type(spi: &spi::Connection) -> (pg_sys::Oid, String) {
    let found = spi.execute_kept(
        &PGVECTOR_TYPE,
        || {
            "SELECT t.oid, pg_catalog.quote_ident(n.nspname)
               FROM pg_catalog.pg_extension e
               JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace
               JOIN pg_catalog.pg_type t ON t.typnamespace OPERATOR(pg_catalog.=) n.oid
                                        AND t.typname OPERATOR(pg_catalog.=) 'vector'
              WHERE e.extname OPERATOR(pg_catalog.=) 'vector'"
                .into()
        },
        &[],
        &[],
        Effect::Reads,
    );
    match (found.get::<pg_sys::Oid>(0, 1), found.get::<String>(0, 2)) {
        (Some(vector), Some(schema)) => (vector, schema),
        _ => raise(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, "pgvector's type vector does not exist".into(), None),
    }
}


/// hybrid_search(query text, embedding vector, lim, session_id, kind_filter, metadata_filter,
/// text_weight float8, vector_weight float8, rrf_k integer, candidates integer, config regconfig,
/// model text) RETURNS TABLE (id, content, kind, role, origin_session_id, position, score
/// float8, text_rank bigint, text_score real, vector_rank bigint, vector_similarity float8,
/// chunk_start integer, chunk_end integer — the passage the vector ranking matched):
/// reciprocal-rank fusion of the full-text and the vector ranking,
///   score = text_weight / (rrf_k + text_rank) + vector_weight / (rrf_k + vector_rank),
/// where a ranking a row is missing from contributes 0, so a row found by only one method still
/// appears. Each ranking contributes its top `candidates` rows (default 5 x lim). One statement.
/// Without an embedding (NULL, the default), the query text's embedding comes from the
/// configured endpoint (embeddings.rs), and only memories embedded by its model are compared;
/// `model` restricts the vector ranking to embeddings of that model.
unsafe fn hybrid_search(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
    // SAFETY: declared in SQL with these fifteen arguments.
    let [query, embedding, lim, session, kind, metadata, text_weight, vector_weight, rrf_k, candidates, config, model, importance_weight, recency_weight, half_life] =
        std::array::from_fn(|i| unsafe { raw_arg(fcinfo, i) });
    let n = search_limit(lim.map(|d| d.value() as i32));
    let ranking = Ranking::checked(importance_weight, recency_weight, half_life);
    let candidates_per_ranking = checked_limit(candidates.map_or((n * 5).min(10000), |d| d.value() as i32), "candidates");
    // SAFETY: float8 datums (by value).
    let weight = |d: Option<pg_sys::Datum>| d.map(|d| unsafe { f64::from_datum(d, false) }.expect("not NULL"));
    let (text_weight, vector_weight) = (weight(text_weight), weight(vector_weight));
    if !matches!((text_weight, vector_weight), (Some(t), Some(v)) if t >= 0.0 && v >= 0.0 && t.is_finite() && v.is_finite()) {
        let shown = |w: Option<f64>| w.map_or("<NULL>".into(), float8_text);
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("text_weight and vector_weight must be finite and >= 0, got {} and {}", shown(text_weight), shown(vector_weight)),
            None,
        )
    }
    let rrf_k = rrf_k.map(|d| d.value() as i32);
    if !rrf_k.is_some_and(|k| k >= 1) {
        let shown = rrf_k.map_or("<NULL>".into(), |k| k.to_string());
        raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, format!("rrf_k must be a positive integer, got {shown}"), None)
    }
    let (vector, vector_schema) = vector_schema(fcinfo, 1);
    let caller = Caller::current();
    // SAFETY: a set-returning function with a row type.
    let result = unsafe { ResultSet::materialize(fcinfo) };
    spi::connect(|spi| {
        let query = checked_query(query);
        caller.require_listed(spi, session);
        let (parsed, _) = parse_text_query(spi, query, config);
        let (embedding, model) = match embedding {
            Some(embedding) => (Some(embedding), model),
            None => {
                let embedded = embeddings::embed_query(query.1);
                if let Some(asked) = model {
                    // SAFETY: a text datum.
                    let asked = String::from_utf8_lossy(unsafe { crate::tuples::text_bytes(asked) }).into_owned();
                    if asked != embedded.model {
                        raise(
                            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                            format!("the embedding endpoint computes embeddings with model \"{}\", not \"{asked}\"", embedded.model),
                            Some("pass the query's embedding yourself, or leave model out"),
                        )
                    }
                }
                (Some(embeddings::vector_datum(&embedded.values)), embedded.model.as_str().into_datum())
            }
        };
        let dimensions = usable_embedding(spi, embedding, vector, &vector_schema);
        let in_session = session.is_some();
        let types = all_parameter_types(vector);
        let passages = Passages::stored();
        // (a query without searchable words is passed as NULL: it matches nothing, at no cost)
        let sql = || {
            format!(
                "WITH text_hits AS ({text_ranking}),
                      text_ranked AS (
                        SELECT t.id, t.r, pg_catalog.row_number() OVER (ORDER BY t.r DESC, t.id) AS text_rank FROM text_hits t),
                      vector_hits AS ({vector_ranking}),
                      vector_ranked AS (
                        SELECT v.id, v.sim, v.chunk, pg_catalog.row_number() OVER (ORDER BY v.sim DESC, v.id) AS vector_rank
                          FROM vector_hits v WHERE v.sim OPERATOR(pg_catalog.<>) 'NaN'::pg_catalog.float8),
                      fused AS (
                        SELECT coalesce(t.id, v.id) AS id,
                               coalesce($16 OPERATOR(pg_catalog./) ($18 OPERATOR(pg_catalog.+) t.text_rank)::pg_catalog.float8, 0)
                                 OPERATOR(pg_catalog.+)
                               coalesce($17 OPERATOR(pg_catalog./) ($18 OPERATOR(pg_catalog.+) v.vector_rank)::pg_catalog.float8, 0) AS fused_score,
                               t.text_rank, t.r, v.vector_rank, v.sim, v.chunk
                          FROM text_ranked t FULL OUTER JOIN vector_ranked v ON v.id OPERATOR(pg_catalog.=) t.id
                         ORDER BY fused_score DESC, id
                         LIMIT {pool}),
                      ranked AS ({ranked})
                 SELECT f.id, m.content, m.kind, m.role, m.session_id, m.position, f.score, f.text_rank, f.r, f.vector_rank, f.sim,
                        CASE WHEN f.vector_rank IS NOT NULL THEN coalesce(c.start_char, 0) END,
                        CASE WHEN f.vector_rank IS NOT NULL THEN coalesce(c.end_char, pg_catalog.char_length(m.content)) END,
                        f.fused_score, f.importance, f.recency
                   FROM ranked f JOIN {SCHEMA}.memories m ON m.id OPERATOR(pg_catalog.=) f.id
                   {chunk}
                  ORDER BY f.score DESC, f.fused_score DESC, f.id",
                pool = ranking::POOL,
                ranked = ranking::ranked("SELECT * FROM fused", "h.fused_score"),
                text_ranking = text_ranking(in_session, "$15"),
                vector_ranking = vector_ranking(&vector_schema, (!in_session).then_some(dimensions), "$15", passages),
                chunk = matched_chunk("f", passages),
            )
        };
        // re-ranked: every candidate either ranking found (up to 2 x pool)
        let [pool, importance_weight, recency_weight, half_life] =
            ranking.args(if ranking.reranks() { candidates_per_ranking.saturating_mul(2) } else { n });
        let variant = format!("hybrid_search {} {vector_schema} {}", session.map_or(dimensions, |_| 0), passages.variant());
        let plans = if session.is_some() { &VECTOR_PLANS_IN_SESSION } else { &VECTOR_PLANS };
        let plan = spi::kept_variant(plans, variant, sql, &types);
        let returned = spi.return_rows_noting_ids(
            plan,
            &[
                caller.me,
                arg(caller.reads_all),
                session,
                kind,
                metadata,
                arg(n),
                parsed,
                None,
                pool,
                importance_weight,
                recency_weight,
                half_life,
                embedding,
                None,
                arg(candidates_per_ranking),
                arg(text_weight),
                arg(vector_weight),
                arg(rrf_k),
                model,
            ],
            &result,
            n as usize,
        );
        ranking::note_accesses(spi, caller.user, returned);
    });
    pg_sys::Datum::from(0)
}

crate::fmgr::sql_function_entry!(pg_finfo_hybrid_search_native, hybrid_search_native, hybrid_search);

/// PostgreSQL functions called directly, inside `attempt()`.
mod raw {
    use pgrx::pg_sys::{Datum, FunctionCallInfo, Oid, PGFunction};
    unsafe extern "C-unwind" {
        #[link_name = "DirectFunctionCall2Coll"]
        pub fn direct_call2(function: PGFunction, collation: Oid, first: Datum, second: Datum) -> Datum;
        #[link_name = "websearch_to_tsquery_byid"]
        pub fn websearch_to_tsquery_byid(fcinfo: FunctionCallInfo) -> Datum;
    }
}

#[cfg(test)]
mod unit {
    use super::{searchable_text, SEARCHABLE_BYTES};

    #[test]
    fn searchable_text_cuts_at_a_character_boundary() {
        assert_eq!(searchable_text("short"), "short");
        let four_byte = "\u{20000}".repeat(SEARCHABLE_BYTES / 4 + 10);
        let cut = searchable_text(&four_byte);
        assert_eq!(cut.len(), SEARCHABLE_BYTES);
        let three_byte = "\u{4e00}".repeat(SEARCHABLE_BYTES / 3 + 10);
        let cut = searchable_text(&three_byte);
        assert!(cut.len() <= SEARCHABLE_BYTES && cut.len() > SEARCHABLE_BYTES - 3);
        assert!(cut.chars().all(|c| c == '\u{4e00}'));
    }
}

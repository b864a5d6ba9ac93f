//! Graph traversal: breadth-first from one memory, along chosen relation types and direction,
//! to a maximum depth. A visited set keeps every memory to its first (shortest) discovery, so
//! the walk terminates on any graph and its cost is linear in the edges it touches — never the
//! exponential path expansion of a naive recursive query. One SPI query per depth level.

use crate::catalog::SCHEMA;
use crate::errors::raise;
use pgrx::prelude::*;
use std::collections::HashMap;

/// How a memory was first reached: from which memory, over which edge, at which depth.
struct Discovery {
    parent: Option<pgrx::Uuid>,
    depth: i32,
    relation: Option<String>,
    edge_id: Option<pgrx::Uuid>,
}

/// The SQL that lists, for a frontier ($1) and relation filter ($2), each edge as
/// (from, to, relation, edge id), where `from` is in the frontier. Implied edges (a message's
/// belongs_to, a fork's forked_from) have no edge id.
/// Qualified throughout, operators included: it runs under the caller's search_path.
fn neighbour_query(direction: &str) -> String {
    let outgoing = format!(
        "SELECT e.source_id, e.target_id, e.relation, e.edge_id FROM {SCHEMA}.memory_graph_edges e
          WHERE e.source_id OPERATOR(pg_catalog.=) ANY($1::pg_catalog.uuid[])
            AND ($2::pg_catalog.text[] IS NULL OR e.relation OPERATOR(pg_catalog.=) ANY($2::pg_catalog.text[]))"
    );
    let incoming = format!(
        "SELECT e.target_id, e.source_id, e.relation, e.edge_id FROM {SCHEMA}.memory_graph_edges e
          WHERE e.target_id OPERATOR(pg_catalog.=) ANY($1::pg_catalog.uuid[])
            AND ($2::pg_catalog.text[] IS NULL OR e.relation OPERATOR(pg_catalog.=) ANY($2::pg_catalog.text[]))"
    );
    // a stable order makes the chosen first discovery (and so each path) deterministic
    match direction {
        "outgoing" => format!("{outgoing} ORDER BY 1, 2, 3"),
        "incoming" => format!("{incoming} ORDER BY 1, 2, 3"),
        _ => format!("{outgoing} UNION ALL {incoming} ORDER BY 1, 2, 3"),
    }
}

/// Memories reachable from `start_id`, each once, with its depth, the path of ids from the start,
/// and the relation and edge it was reached by. The start itself is the row at depth 0.
#[pg_extern(stable, parallel_safe)]
#[allow(clippy::type_complexity)]
fn traverse_memory_graph(
    start_id: Option<pgrx::Uuid>,
    relations: default!(Option<Vec<Option<String>>>, "NULL"),
    direction: default!(Option<String>, "'outgoing'"),
    max_depth: default!(Option<i32>, 3),
    max_rows: default!(Option<i32>, 10000),
) -> TableIterator<
    'static,
    (
        name!(memory_id, pgrx::Uuid),
        name!(depth, i32),
        name!(path, Vec<pgrx::Uuid>),
        name!(relation, Option<String>),
        name!(edge_id, Option<pgrx::Uuid>),
    ),
> {
    let Some(start) = start_id else {
        raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "start_id must not be NULL".into(), None)
    };
    let direction = direction.unwrap_or_else(|| "outgoing".into());
    if !matches!(direction.as_str(), "outgoing" | "incoming" | "both") {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            // (at most 80 characters of it: an error must not echo megabytes back)
            format!("direction must be 'outgoing', 'incoming' or 'both', got '{}'", direction.chars().take(80).collect::<String>()),
            None,
        );
    }
    let max_depth = max_depth.unwrap_or(3);
    if !(0..=1000).contains(&max_depth) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("max_depth must be between 0 and 1000, got {max_depth}"),
            None,
        );
    }
    let max_rows = max_rows.unwrap_or(10000);
    if !(1..=1_000_000).contains(&max_rows) {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("max_rows must be between 1 and 1000000, got {max_rows}"),
            None,
        );
    }
    let max_rows = max_rows as usize;
    let relations: Option<Vec<String>> = relations.map(|list| {
        list.into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    raise(PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "relations must not contain NULL".into(), None)
                })
            })
            .collect()
    });
    let exists = Spi::get_one_with_args::<bool>(
        &format!("SELECT EXISTS (SELECT 1 FROM {SCHEMA}.memories m WHERE m.id OPERATOR(pg_catalog.=) $1::pg_catalog.uuid)"),
        &[start.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    if !exists {
        raise(PgSqlErrorCode::ERRCODE_NO_DATA_FOUND, format!("memory {start} does not exist"), None);
    }

    let query = neighbour_query(&direction);
    let mut discovered: HashMap<pgrx::Uuid, Discovery> = HashMap::new();
    let mut order: Vec<pgrx::Uuid> = vec![start];
    discovered.insert(start, Discovery { parent: None, depth: 0, relation: None, edge_id: None });
    let mut frontier = vec![start];

    Spi::connect(|client| {
        for depth in 1..=max_depth {
            if frontier.is_empty() || order.len() >= max_rows {
                break;
            }
            let edges = client
                .select(&query, None, &[frontier.clone().into(), relations.clone().into()])
                .unwrap_or_else(|e| raise(PgSqlErrorCode::ERRCODE_INTERNAL_ERROR, format!("traversal query failed: {e}"), None));
            let mut next = Vec::new();
            for edge in edges {
                let (Ok(Some(from)), Ok(Some(to))) = (edge.get::<pgrx::Uuid>(1), edge.get::<pgrx::Uuid>(2)) else {
                    continue;
                };
                if discovered.contains_key(&to) {
                    continue;
                }
                discovered.insert(
                    to,
                    Discovery {
                        parent: Some(from),
                        depth,
                        relation: edge.get::<String>(3).ok().flatten(),
                        edge_id: edge.get::<pgrx::Uuid>(4).ok().flatten(),
                    },
                );
                order.push(to);
                next.push(to);
                if order.len() >= max_rows {
                    break;
                }
            }
            frontier = next;
        }
    });

    let rows: Vec<_> = order
        .into_iter()
        .map(|id| {
            let mut path = vec![id];
            let mut cursor = discovered[&id].parent;
            while let Some(parent) = cursor {
                path.push(parent);
                cursor = discovered[&parent].parent;
            }
            path.reverse();
            let found = &discovered[&id];
            (id, found.depth, path, found.relation.clone(), found.edge_id)
        })
        .collect();
    TableIterator::new(rows)
}

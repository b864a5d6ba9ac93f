-- Integrity checks and the graph view.

-- Recompute every content hash and report the memories whose stored hash does not match
-- (content or hash changed behind the triggers' back). An empty result means all verify.
CREATE FUNCTION @extschema@.verify_memory_integrity()
RETURNS TABLE (memory_id uuid, stored_hash text, computed_hash text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT m.id, m.content_hash, h.computed
      FROM @extschema@.memories m
     CROSS JOIN LATERAL (SELECT @extschema@.content_sha256(m.content) AS computed) h
     WHERE m.content_hash IS DISTINCT FROM h.computed
$$;

-- Each memory with its direct relations in both directions:
--   SELECT * FROM memory_graph WHERE id = '...' LIMIT 100;
-- A plain view, so it is always current; the filter on id reaches the edge indexes.
CREATE VIEW @extschema@.memory_graph AS
SELECT m.id, m.kind, m.content, e.relation, 'outgoing'::text AS direction,
       e.target_id AS related_id, r.kind AS related_kind, r.content AS related_content,
       e.weight, e._metadata AS edge_metadata, e.edge_id
  FROM @extschema@.memories m
  JOIN @extschema@.memory_graph_edges e ON e.source_id = m.id
  JOIN @extschema@.memories r ON r.id = e.target_id
UNION ALL
SELECT m.id, m.kind, m.content, e.relation, 'incoming'::text,
       e.source_id, r.kind, r.content, e.weight, e._metadata, e.edge_id
  FROM @extschema@.memories m
  JOIN @extschema@.memory_graph_edges e ON e.target_id = m.id
  JOIN @extschema@.memories r ON r.id = e.source_id;

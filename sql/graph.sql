-- Graph helpers: typed, weighted edges with the cycle rules of prevent_cycles().
-- Traversal is traverse_memory_graph() (Rust); neighbours at a glance are in memory_graph.

-- Add (or update the weight and metadata of) the edge source -[relation]-> target. Returns its id.
-- Fails with 23514 when the edge would be a self-loop or close a cycle.
CREATE FUNCTION @extschema@.add_edge(source_id uuid, target_id uuid, relation text,
                                     weight double precision DEFAULT 1.0, metadata jsonb DEFAULT '{}')
RETURNS uuid LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    edge uuid;
    missing uuid;
BEGIN
    IF add_edge.source_id IS NULL OR add_edge.target_id IS NULL THEN
        RAISE EXCEPTION 'source_id and target_id must not be NULL' USING ERRCODE = '22004';
    END IF;
    IF add_edge.relation IS NULL OR add_edge.relation !~ '^[a-z][a-z0-9_]{0,62}$' THEN
        RAISE EXCEPTION 'relation must be a lowercase identifier like belongs_to (a-z, 0-9, _; at most 63), got %',
            pg_catalog.quote_nullable(pg_catalog.left(add_edge.relation, 80)) USING ERRCODE = '22023';
    END IF;
    IF add_edge.weight IS NULL OR add_edge.weight IN ('NaN', 'Infinity', '-Infinity') THEN
        RAISE EXCEPTION 'weight must be a finite number, got %', pg_catalog.quote_nullable(add_edge.weight)
            USING ERRCODE = '22023';
    END IF;
    SELECT x.id INTO missing FROM (VALUES (add_edge.source_id), (add_edge.target_id)) x(id)
     WHERE NOT EXISTS (SELECT 1 FROM @extschema@.memories m WHERE m.id = x.id) LIMIT 1;
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'memory % does not exist', missing USING ERRCODE = 'P0002';
    END IF;
    INSERT INTO @extschema@.memory_edges AS e (source_id, target_id, relation, weight, _metadata)
    VALUES (add_edge.source_id, add_edge.target_id, add_edge.relation, add_edge.weight,
            @extschema@.metadata_object(metadata, 'metadata'))
    ON CONFLICT ON CONSTRAINT memory_edges_unique
    DO UPDATE SET weight = EXCLUDED.weight, _metadata = EXCLUDED._metadata
    RETURNING e.id INTO edge;
    RETURN edge;
END
$$;

-- Remove the edge source -[relation]-> target, if it is the caller's. Returns whether there was
-- one. SECURITY DEFINER because nobody holds DELETE on memory_edges (it would also allow LOCK
-- TABLE, see finalize.sql); it removes only edges the caller created.
CREATE FUNCTION @extschema@.remove_edge(source_id uuid, target_id uuid, relation text)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    me uuid := @extschema@.require_acting_user();
    unrestricted boolean := @extschema@.acting_role_bypasses_rls();
BEGIN
    DELETE FROM @extschema@.memory_edges e
     WHERE e.source_id = remove_edge.source_id AND e.target_id = remove_edge.target_id
       AND e.relation = remove_edge.relation
       AND (unrestricted OR e.created_by = me);
    RETURN FOUND;
END
$$;

-- An edge may only connect memories the acting user can see. A memory another user owns (and
-- did not share) gets exactly the error a missing one gets from the foreign key, so edges cannot
-- be used to probe for other tenants' ids. Runs as the caller, under row-level security.
CREATE FUNCTION @extschema@.require_visible_endpoints() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM @extschema@.memories m WHERE m.id = NEW.source_id) THEN
        RAISE EXCEPTION 'insert or update on table "memory_edges" violates foreign key constraint "memory_edges_source_id_fkey"'
            USING ERRCODE = '23503', DETAIL = format('Key (source_id)=(%s) is not present in table "memories".', NEW.source_id);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM @extschema@.memories m WHERE m.id = NEW.target_id) THEN
        RAISE EXCEPTION 'insert or update on table "memory_edges" violates foreign key constraint "memory_edges_target_id_fkey"'
            USING ERRCODE = '23503', DETAIL = format('Key (target_id)=(%s) is not present in table "memories".', NEW.target_id);
    END IF;
    RETURN NEW;
END
$$;

-- The cycle check (Rust, src/graph.rs). It must see edges the caller cannot (two tenants could
-- otherwise close a cycle together), so it runs as the extension owner.
CREATE FUNCTION @extschema@.prevent_cycles() RETURNS trigger
    LANGUAGE c SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS 'MODULE_PATHNAME', 'prevent_cycles_guarded';

-- memory_edges
CREATE TRIGGER memory_edges_05_visible_endpoints BEFORE INSERT OR UPDATE OF source_id, target_id
    ON @extschema@.memory_edges
    FOR EACH ROW WHEN (NEW.source_id IS NOT NULL AND NEW.target_id IS NOT NULL)
    EXECUTE FUNCTION @extschema@.require_visible_endpoints();
CREATE TRIGGER memory_edges_10_prevent_cycles BEFORE INSERT OR UPDATE OF source_id, target_id
    ON @extschema@.memory_edges
    FOR EACH ROW EXECUTE FUNCTION @extschema@.prevent_cycles();

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

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

-- (prevent_cycles() runs as the extension owner: see finalize.sql)

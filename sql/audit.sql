-- Audit: who changed what, when, as which role, in which transaction; an append-only log and a
-- tamper-evident hash chain over it; content hashes and their verification.

-- What every write to memories and memory_edges derives, through the API or as direct DML
-- (Rust, src/write_path.rs): content_hash, the SHA-256 of content (a value supplied by the caller
-- is replaced); provenance, created_by/updated_by from the acting user and never from the
-- caller, _created_at kept and _updated_at stamped on UPDATE; a memory's kind, session and
-- position fixed (0A000: moving a message would rewrite other branches' history); and the
-- embedding and its model cleared when an UPDATE changes content, so that vector search never
-- serves a stale embedding as current.
CREATE FUNCTION @extschema@.derive_row_fields() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'derive_row_fields_guarded';
CREATE TRIGGER memories_10_derive_fields BEFORE INSERT OR UPDATE ON @extschema@.memories
    FOR EACH ROW EXECUTE FUNCTION @extschema@.derive_row_fields();
CREATE TRIGGER memory_edges_20_derive_fields BEFORE INSERT OR UPDATE ON @extschema@.memory_edges
    FOR EACH ROW EXECUTE FUNCTION @extschema@.derive_row_fields();

-- Audit: one row per changed memory or edge (Rust, src/write_path.rs): the row before and after
-- as jsonb (without the derived search_tsv), the acting user, the user the change concerns (the
-- row's owner), the role and the transaction. SECURITY DEFINER so that nobody needs (or gets)
-- INSERT on audit_log: rows are written only here and by log_share_change().
CREATE FUNCTION @extschema@.log_memory_change() RETURNS trigger
    LANGUAGE c SECURITY DEFINER AS 'MODULE_PATHNAME', 'log_memory_change_guarded';

-- The audit log is append-only: UPDATE, DELETE and TRUNCATE fail for everyone but superusers.
-- (Privileges already deny them; this also holds for the table's owner and for roles that were
-- granted the privileges.) A statement-level trigger, so that it fails even when row-level
-- security leaves the statement no rows to touch.
CREATE FUNCTION @extschema@.audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname = current_user) THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP USING ERRCODE = '42501';
END
$$;

-- Sharing is audited like data: a grant, a change of can_write and a revocation (by
-- revoke_share() or by a cascade) each write an audit row, attributed to the acting user and
-- concerning the owner who granted it. SECURITY DEFINER for the same reason as above.
CREATE FUNCTION @extschema@.log_share_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO @extschema@.audit_log (table_name, operation, row_id, old_row, new_row, acting_user,
                                       subject_user, db_role, txid)
    VALUES (TG_TABLE_NAME, TG_OP,
            CASE WHEN TG_OP = 'DELETE' THEN OLD.memory_id ELSE NEW.memory_id END,
            CASE WHEN TG_OP <> 'INSERT' THEN to_jsonb(OLD) END,
            CASE WHEN TG_OP <> 'DELETE' THEN to_jsonb(NEW) END,
            @extschema@.current_memory_user(),
            CASE WHEN TG_OP = 'DELETE' THEN OLD.granted_by ELSE NEW.granted_by END,
            @extschema@.acting_db_role(), txid_current());
    RETURN NULL;
END
$$;

-- The deletion of an expired memory (by sweep_expired_memories(), or anyone) is audited without
-- its content and embedding: the row keeps content_hash and is marked "content_redacted", so that
-- expiry really ends the content's life instead of moving it into the audit log for ever.
-- (a new memory's audit row is written by memories_inserted(), once per INSERT statement, with
-- its queue rows: see sql/events.sql)
-- An UPDATE is audited unless it is an embedding worker storing an embedding: content_embedding
-- and embedding_model are derived from the content (recomputed whenever it changes), and
-- updated_by and _updated_at are stamped by every UPDATE. Otherwise each memory's embedding, once
-- stored, would add an audit row holding its content twice over. Anyone else's change of the
-- embedding (a user or a write grantee ranking a memory first, or hiding it from searches by
-- model) is audited like any change.
CREATE TRIGGER memories_50_audit AFTER DELETE ON @extschema@.memories
    FOR EACH ROW EXECUTE FUNCTION @extschema@.log_memory_change();
CREATE TRIGGER memories_50_audit_update AFTER UPDATE ON @extschema@.memories
    FOR EACH ROW
    WHEN ((OLD.id, OLD.kind, OLD.content, OLD.content_hash, OLD.search_config, OLD._metadata, OLD.session_id,
           OLD.position, OLD.role, OLD.created_by, OLD._created_at, OLD.importance, OLD.expires_at,
           OLD.valid_from, OLD.valid_to)
          IS DISTINCT FROM
          (NEW.id, NEW.kind, NEW.content, NEW.content_hash, NEW.search_config, NEW._metadata, NEW.session_id,
           NEW.position, NEW.role, NEW.created_by, NEW._created_at, NEW.importance, NEW.expires_at,
           NEW.valid_from, NEW.valid_to)
          OR NOT @extschema@.acting_role_is('memoriesdb_worker'))
    EXECUTE FUNCTION @extschema@.log_memory_change();
CREATE TRIGGER memory_edges_50_audit AFTER INSERT OR UPDATE OR DELETE ON @extschema@.memory_edges
    FOR EACH ROW EXECUTE FUNCTION @extschema@.log_memory_change();
-- memory_shares
CREATE TRIGGER memory_shares_50_audit AFTER INSERT OR UPDATE OR DELETE ON @extschema@.memory_shares
    FOR EACH ROW EXECUTE FUNCTION @extschema@.log_share_change();
-- audit_log
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON @extschema@.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.audit_log_append_only();

-- ---------------------------------------------------------------------------------------------
-- Tamper-evident audit: a hash chain over the audit log
-- ---------------------------------------------------------------------------------------------

-- The chain (chain version 2) commits to each audit row in two parts, so that erasure can remove
-- personal content from the log later and the chain still verifies:
--   audit_row_text(row)      everything but the erasable parts: its text is hashed into the link
--   audit_erasable_text(row) the erasable parts (content, content_embedding and _metadata of the
--                            row before and after): only its SHA-256, audit_log.erasable_digest,
--                            is hashed into the link
-- chain_hash = sha256(previous chain_hash || audit_row_text || erasable_digest). Verification
-- recomputes erasable_digest from the row unless the row was erased (erased_at), so changed
-- content is still detected until it is erased, and every other field always.
-- jsonb's text form is canonical; the time is hashed in UTC so that the text, and so the chain,
-- is the same whatever the session's TimeZone.
CREATE FUNCTION @extschema@.audit_row_text(a @extschema@.audit_log) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.jsonb_build_array(a.id, a.table_name, a.operation, a.row_id,
                                        a.old_row OPERATOR(pg_catalog.-) '{content,content_embedding,_metadata}'::text[],
                                        a.new_row OPERATOR(pg_catalog.-) '{content,content_embedding,_metadata}'::text[],
                                        a.acting_user, a.subject_user, a.db_role, a.txid,
                                        a.changed_at AT TIME ZONE 'UTC')::text
$$;
CREATE FUNCTION @extschema@.audit_erasable_text(a @extschema@.audit_log) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT pg_catalog.jsonb_build_array(a.old_row -> 'content', a.old_row -> 'content_embedding', a.old_row -> '_metadata',
                                        a.new_row -> 'content', a.new_row -> 'content_embedding', a.new_row -> '_metadata')::text
$$;

-- Link every finished transaction's audit rows into the chain, in (transaction, row) order:
-- chain_hash = sha256(previous chain_hash || audit_row_text(row) || erasable_digest). Only transactions older than
-- every running one are sealed, so no row can later appear before a sealed one. Writers never
-- wait for this: call it periodically (a worker, cron, or pg_cron every minute). Returns the
-- number of rows sealed. Rust (src/audit.rs).
CREATE FUNCTION @extschema@.seal_audit_log(max_rows integer DEFAULT 100000)
RETURNS bigint LANGUAGE c SECURITY DEFINER AS 'MODULE_PATHNAME', 'seal_audit_log_native';

-- Recompute the chain and report the first broken link: a changed row (its hash no longer
-- matches; for content, until the row is erased), a removed row (a gap in positions) or a forged
-- hash. `intact` is true when every
-- sealed row verifies. Compare `last_hash` with a value recorded outside the database earlier
-- to detect a rewrite of the whole chain by a superuser. Rust (src/audit.rs).
CREATE FUNCTION @extschema@.verify_audit_chain()
RETURNS TABLE (intact boolean, sealed_rows bigint, unsealed_rows bigint, first_broken_position bigint,
               first_broken_audit_id bigint, problem text, last_hash text)
LANGUAGE c STABLE SECURITY DEFINER AS 'MODULE_PATHNAME', 'verify_audit_chain_native';

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


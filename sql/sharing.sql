-- Sharing: a memory or a session shared with another user, read-only or read-write, and
-- taken back. What a share lets the grantee see is decided by the rules in policies.sql.

-- Share a memory or a session with another user, read-only or read-write. Sharing a session
-- shares what its branch shows of the owner's own sessions (its messages and the inherited
-- prefix of the owner's ancestors; not messages inherited from someone else's session); with
-- can_write the grantee may also add messages to it. Sharing again changes can_write. Shares are written only here (SECURITY DEFINER):
-- nobody can grant themselves access by writing the share tables.
CREATE FUNCTION @extschema@.share_memory(memory_id uuid, grantee uuid, can_write boolean DEFAULT false)
RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    me uuid := @extschema@.current_memory_user();
    target @extschema@.memories;
BEGIN
    IF share_memory.memory_id IS NULL OR share_memory.grantee IS NULL OR share_memory.can_write IS NULL THEN
        RAISE EXCEPTION 'memory_id, grantee and can_write must not be NULL' USING ERRCODE = '22004';
    END IF;
    SELECT m.* INTO target FROM @extschema@.memories m WHERE m.id = share_memory.memory_id;
    IF NOT FOUND OR NOT @extschema@.memory_visible_to(me, target.created_by, target.session_id, target.position, target.id, target.expires_at) THEN
        RAISE EXCEPTION 'memory % does not exist', share_memory.memory_id USING ERRCODE = 'P0002';
    END IF;
    IF target.created_by IS DISTINCT FROM me THEN
        RAISE EXCEPTION 'only the owner of memory % can share it', share_memory.memory_id USING ERRCODE = '42501';
    END IF;
    IF share_memory.grantee = me THEN
        RAISE EXCEPTION 'memory % already belongs to user %', share_memory.memory_id, me USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM @extschema@.users u WHERE u.id = share_memory.grantee) THEN
        RAISE EXCEPTION 'user % does not exist', share_memory.grantee USING ERRCODE = 'P0002';
    END IF;
    INSERT INTO @extschema@.memory_shares AS s (memory_id, grantee, can_write, granted_by)
    VALUES (share_memory.memory_id, share_memory.grantee, share_memory.can_write, me)
    ON CONFLICT ON CONSTRAINT memory_shares_pkey
    DO UPDATE SET can_write = EXCLUDED.can_write, granted_at = now();
    IF target.kind = 'session' THEN
        DELETE FROM @extschema@.memory_share_segments g
         WHERE g.grantee = share_memory.grantee AND g.shared_memory = share_memory.memory_id;
        -- Each session of the lineage that is the sharer's own, up to what the branch shows. Only
        -- an owner grants access to its messages: sharing a fork of someone else's session shares
        -- the fork's own messages, not the inherited prefix (which the sharer may see only
        -- through a share of their own, and which its owner can take back at any time).
        INSERT INTO @extschema@.memory_share_segments (grantee, session_id, visible_upto, shared_memory, can_write)
        SELECT share_memory.grantee, l.lineage_session_id, l.visible_upto, share_memory.memory_id,
               share_memory.can_write AND l.lineage_session_id = share_memory.memory_id
          FROM @extschema@.session_lineage(share_memory.memory_id) l
          JOIN @extschema@.memory_sessions s ON s.id = l.lineage_session_id
         WHERE s.owner_id = me;
    END IF;
END
$$;

-- Take a share back; effective for the grantee's next statement. Returns whether there was one.
CREATE FUNCTION @extschema@.revoke_share(memory_id uuid, grantee uuid)
RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM @extschema@.memory_shares s
     WHERE s.memory_id = revoke_share.memory_id AND s.grantee = revoke_share.grantee
       AND s.granted_by = @extschema@.current_memory_user();
    RETURN FOUND;
END
$$;


-- Identity: who is acting. The acting MemoriesDB user is resolved per statement.

-- The database role a change is attributed to. Inside SECURITY DEFINER functions current_user is
-- the function owner; the `role` setting still names the role the session runs as (SET ROLE
-- needs real membership, so it cannot be forged), falling back to the login role.
-- A SQL-standard body (BEGIN ATOMIC): parsed once, at install, with the search_path CREATE
-- EXTENSION pins, so nothing in it resolves under the caller's search_path, and PostgreSQL can
-- still inline it into the audit trigger's query (a SET clause would forbid that, and cost an
-- extra query per audited row).
CREATE FUNCTION @extschema@.acting_db_role() RETURNS name
LANGUAGE sql STABLE PARALLEL SAFE
BEGIN ATOMIC
    SELECT CASE WHEN pg_catalog.current_setting('role') OPERATOR(pg_catalog.=) 'none' THEN session_user
                ELSE pg_catalog.current_setting('role')::pg_catalog.name END;
END;

-- Roles MemoriesDB's privileges and policies refer to. Roles belong to the cluster, not the
-- database, so they are created only when missing and are left in place by DROP EXTENSION.
--   memoriesdb_user      the API: an administrator grants it to every role that uses MemoriesDB
--                        (nothing of the extension is granted to PUBLIC; see finalize.sql)
--   memoriesdb_trusted   may assert the acting user through app.current_user (application
--                        servers, poolers) and create users
--   memoriesdb_worker    embedding and indexing workers: read all content, work the queues
--   memoriesdb_auditor   reads the whole audit log
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['memoriesdb_user', 'memoriesdb_trusted', 'memoriesdb_worker', 'memoriesdb_auditor'] LOOP
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r) THEN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            END IF;
            -- the other roles use the API too
            IF r <> 'memoriesdb_user' AND NOT pg_catalog.pg_has_role(r, 'memoriesdb_user', 'MEMBER') THEN
                EXECUTE format('GRANT memoriesdb_user TO %I', r);
            END IF;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- done meanwhile by a concurrent CREATE EXTENSION in another database
        END;
    END LOOP;
END
$$;

-- acting_role_is(role_name) and acting_role_bypasses_rls() are Rust (src/identity.rs): the acting
-- role's membership in a role, and whether it bypasses row-level security.

-- The acting user, resolved per statement: current_memory_user(), in Rust (src/identity.rs),
-- cached for the statement because every policy and row trigger asks for it.
--   * a role trusted to assert identities (member of memoriesdb_trusted) acts as the user named
--     by app.current_user when it is set;
--   * otherwise the role acts as the user mapped to it (users.db_role), or as nobody (NULL).
-- An untrusted role that sets app.current_user to anyone but its own user gets 42501: it gains
-- nothing. A change to users clears the cached answer at once:
CREATE FUNCTION @extschema@.forget_cached_identity() RETURNS trigger
    LANGUAGE c AS 'MODULE_PATHNAME', 'forget_cached_identity_guarded';
CREATE TRIGGER users_forget_cached_identity
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON @extschema@.users
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@.forget_cached_identity();

-- Does this user exist? For the roles trusted to assert identities (the hub refuses a token for
-- a user that does not exist). Runs as the caller: row-level security on users decides.
CREATE FUNCTION @extschema@.user_exists(user_id uuid) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT FROM @extschema@.users u WHERE u.id = user_exists.user_id)
$$;

-- Create a user; optionally map a database role to it so that role acts as the user by default.
CREATE FUNCTION @extschema@.create_user(name text, db_role name DEFAULT NULL, metadata jsonb DEFAULT '{}')
RETURNS uuid LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    new_id uuid;
BEGIN
    IF NOT @extschema@.acting_role_is('memoriesdb_trusted') THEN
        RAISE EXCEPTION 'only members of memoriesdb_trusted can create users' USING ERRCODE = '42501';
    END IF;
    IF create_user.name IS NULL OR pg_catalog.btrim(create_user.name) = '' THEN
        RAISE EXCEPTION 'user name must not be empty' USING ERRCODE = '22023';
    END IF;
    IF create_user.db_role IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.rolname = create_user.db_role) THEN
        RAISE EXCEPTION 'database role "%" does not exist', create_user.db_role USING ERRCODE = '42704';
    END IF;
    INSERT INTO @extschema@.users (name, db_role, _metadata)
    VALUES (create_user.name, create_user.db_role,
            @extschema@.metadata_object(create_user.metadata, 'metadata'))
    RETURNING id INTO new_id;
    RETURN new_id;
END
$$;

-- Set the acting user for the current transaction (is_local, the default, which is what a
-- transaction-mode pooler needs) or for the rest of the session. Only members of
-- memoriesdb_trusted may name another user than their own, and they only for the transaction
-- unless an administrator set memoriesdb.allow_session_identity = on for them (a session-level
-- identity would carry over to the next client behind a transaction-mode pooler). Spares callers the quoting
-- that `SET app."current_user" = '...'` needs (current_user is a reserved word).
CREATE FUNCTION @extschema@.set_memory_user(user_id uuid, is_local boolean DEFAULT true)
RETURNS uuid LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF user_id IS NULL THEN
        PERFORM pg_catalog.set_config('app.current_user', '', is_local);
        RETURN NULL;
    END IF;
    IF NOT @extschema@.acting_role_is('memoriesdb_trusted')
       AND user_id IS DISTINCT FROM (SELECT u.id FROM @extschema@.users u WHERE u.db_role = @extschema@.acting_db_role()) THEN
        RAISE EXCEPTION 'role "%" may not act as user %: only members of memoriesdb_trusted can assert identities',
            @extschema@.acting_db_role(), user_id USING ERRCODE = '42501';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM @extschema@.users u WHERE u.id = set_memory_user.user_id) THEN
        RAISE EXCEPTION 'user % does not exist', user_id USING ERRCODE = 'P0002';
    END IF;
    PERFORM pg_catalog.set_config('app.current_user', user_id::text, is_local);
    -- resolve it now, so that a refused session-level assertion (memoriesdb.allow_session_identity)
    -- fails here rather than at the next statement
    PERFORM @extschema@.current_memory_user();
    RETURN user_id;
END
$$;

-- Metadata arguments must be JSON objects; NULL means empty. One place for that rule.
CREATE FUNCTION @extschema@.metadata_object(value jsonb, argument text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF value IS NULL THEN
        RETURN '{}'::jsonb;
    END IF;
    IF pg_catalog.jsonb_typeof(value) <> 'object' THEN
        RAISE EXCEPTION '% must be a JSON object, got % %', argument, pg_catalog.jsonb_typeof(value),
            pg_catalog.left(value::text, 80)
            USING ERRCODE = '22023';
    END IF;
    RETURN value;
END
$$;

-- Parse a uuid given as text, or fail with 22023: '<complaint>: "<value>"'.
-- Checked by a pattern that accepts a subset of what the uuid type accepts, rather than by
-- catching the cast's error: an EXCEPTION block would open a subtransaction on every call.
CREATE FUNCTION @extschema@.parse_uuid(value text, complaint text) RETURNS uuid
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF value !~ '^(\{[0-9A-Fa-f]{8}-?([0-9A-Fa-f]{4}-?){3}[0-9A-Fa-f]{12}\}|[0-9A-Fa-f]{8}-?([0-9A-Fa-f]{4}-?){3}[0-9A-Fa-f]{12})$' THEN
        RAISE EXCEPTION '%: "%"', complaint, value
            USING ERRCODE = '22023', HINT = 'a uuid looks like 01a21f03-29cf-73a6-baaf-99d93cbcd453';
    END IF;
    RETURN value::uuid;
END
$$;

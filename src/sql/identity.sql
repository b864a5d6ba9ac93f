-- Identity: who is acting. The acting MemoriesDB user is resolved per statement.

-- The database role a change is attributed to. Inside SECURITY DEFINER functions current_user is
-- the function owner; the `role` setting still names the role the session runs as (SET ROLE
-- needs real membership, so it cannot be forged), falling back to the login role.
CREATE FUNCTION @extschema@.acting_db_role() RETURNS name
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN pg_catalog.current_setting('role') = 'none' THEN session_user
                ELSE pg_catalog.current_setting('role')::name END
$$;

-- The acting user: `app.current_user` when it is set, otherwise the user mapped to the acting
-- database role, otherwise NULL (anonymous).
CREATE FUNCTION @extschema@.current_memory_user() RETURNS uuid
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    asserted text := pg_catalog.current_setting('app.current_user', true);
    mapped uuid;
BEGIN
    IF asserted IS NOT NULL AND asserted <> '' THEN
        RETURN @extschema@.parse_uuid(asserted, 'app.current_user is not a valid user id');
    END IF;
    SELECT u.id INTO mapped FROM @extschema@.users u WHERE u.db_role = @extschema@.acting_db_role();
    RETURN mapped;
END
$$;

-- Create a user; optionally map a database role to it so that role acts as the user by default.
CREATE FUNCTION @extschema@.create_user(name text, db_role name DEFAULT NULL, metadata jsonb DEFAULT '{}')
RETURNS uuid LANGUAGE plpgsql AS $$
DECLARE
    new_id uuid;
BEGIN
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
-- transaction-mode pooler needs) or for the rest of the session. Spares callers the quoting
-- that `SET app."current_user" = '...'` needs (current_user is a reserved word).
CREATE FUNCTION @extschema@.set_memory_user(user_id uuid, is_local boolean DEFAULT true)
RETURNS uuid LANGUAGE plpgsql AS $$
BEGIN
    IF user_id IS NULL THEN
        PERFORM pg_catalog.set_config('app.current_user', '', is_local);
        RETURN NULL;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM @extschema@.users u WHERE u.id = set_memory_user.user_id) THEN
        RAISE EXCEPTION 'user % does not exist', user_id USING ERRCODE = 'P0002';
    END IF;
    PERFORM pg_catalog.set_config('app.current_user', user_id::text, is_local);
    RETURN user_id;
END
$$;

-- Metadata arguments must be JSON objects; NULL means empty. One place for that rule.
CREATE FUNCTION @extschema@.metadata_object(value jsonb, argument text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
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
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF value !~ '^(\{[0-9A-Fa-f]{8}-?([0-9A-Fa-f]{4}-?){3}[0-9A-Fa-f]{12}\}|[0-9A-Fa-f]{8}-?([0-9A-Fa-f]{4}-?){3}[0-9A-Fa-f]{12})$' THEN
        RAISE EXCEPTION '%: "%"', complaint, value
            USING ERRCODE = '22023', HINT = 'a uuid looks like 01a21f03-29cf-73a6-baaf-99d93cbcd453';
    END IF;
    RETURN value::uuid;
END
$$;

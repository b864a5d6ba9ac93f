-- The specification's own SQL examples, run the way a psql user runs them.
--
-- Session ids are carried between statements with psql's \gset, exactly as someone pasting the
-- examples would copy an id from one result into the next statement. Everything runs in one
-- transaction that is rolled back at the end, so this file leaves nothing behind.
BEGIN;
SELECT plan(39);

-- ---------------------------------------------------------------------------------------------
-- "Session Management" / "Message Management" examples
-- ---------------------------------------------------------------------------------------------

-- SELECT create_session('Session Title', '{"tags": ["important"]}');
SELECT create_session('Session Title', '{"tags": ["important"]}') AS session_id \gset

SELECT ok(:'session_id'::uuid IS NOT NULL, 'create_session(title, metadata) returns a session id');
SELECT is((SELECT kind || '|' || content || '|' || _metadata::text FROM memories WHERE id = :'session_id'),
          'session|Session Title|{"tags": ["important"]}',
          'the session is a memory of kind session, titled, with the given metadata');
SELECT is(get_conversation_text(:'session_id'), '',
          'a new session has an empty transcript');

-- SELECT add_message_to_session('session-id', 'user', 'Hello, world!', '{"emotion": "happy"}');
SELECT add_message_to_session(:'session_id', 'user', 'Hello, world!', '{"emotion": "happy"}') AS hello_id \gset

SELECT is((SELECT kind || '|' || role || '|' || position::text || '|' || session_id::text
             FROM memories WHERE id = :'hello_id'),
          'message|user|1|' || :'session_id',
          'add_message_to_session stores a message at position 1 of the session');

-- SELECT get_conversation_text('session-id-here');
SELECT is(get_conversation_text(:'session_id'), 'user: Hello, world!',
          'get_conversation_text shows "role: content"');

-- SELECT * FROM get_formatted_conversation('session-id-here', true);
SELECT results_eq(
    format($$SELECT position, role, content, message_id, origin_session_id, metadata
               FROM get_formatted_conversation(%L, true)$$, :'session_id'),
    format($$VALUES (1::bigint, 'user'::text, 'Hello, world!'::text, %L::uuid, %L::uuid,
                     '{"emotion": "happy"}'::jsonb)$$, :'hello_id', :'session_id'),
    'get_formatted_conversation(id, true) returns position, role, content, ids and metadata');
SELECT is((SELECT created_at FROM get_formatted_conversation(:'session_id', true)),
          (SELECT _created_at FROM memories WHERE id = :'hello_id'),
          'get_formatted_conversation shows the message''s creation time');
SELECT is((SELECT metadata FROM get_formatted_conversation(:'session_id', false)), NULL,
          'include_metadata = false hides the metadata');
SELECT is((SELECT metadata FROM get_formatted_conversation(:'session_id')), NULL,
          'include_metadata defaults to false');
SELECT is((SELECT content FROM get_formatted_conversation(:'session_id')), 'Hello, world!',
          'without metadata the content is still shown');

-- SELECT fork_session('original-session-id', 'New Branch');
SELECT fork_session(:'session_id', 'New Branch') AS branch_id \gset

SELECT isnt(:'branch_id'::uuid, :'session_id'::uuid, 'fork_session returns a new session id');
SELECT is((SELECT content FROM memories WHERE id = :'branch_id' AND kind = 'session'), 'New Branch',
          'the fork is a session titled New Branch');
SELECT is(get_conversation_text(:'branch_id'), 'user: Hello, world!',
          'by default a fork sees the whole conversation up to the latest message');
SELECT is((SELECT origin_session_id FROM get_formatted_conversation(:'branch_id')), :'session_id'::uuid,
          'an inherited message names the session it was written in');
SELECT is((SELECT count(*) FROM memories WHERE session_id = :'branch_id'), 0::bigint,
          'forking copies no message');

-- the branches diverge
SELECT add_message_to_session(:'branch_id', 'assistant', 'Hi! This is the branch.') AS branch_msg \gset
SELECT add_message_to_session(:'session_id', 'assistant', 'Hi! This is the original.') AS orig_msg \gset
SELECT is(get_conversation_text(:'branch_id'), E'user: Hello, world!\nassistant: Hi! This is the branch.',
          'a message added to the fork appears in the fork');
SELECT is(get_conversation_text(:'session_id'), E'user: Hello, world!\nassistant: Hi! This is the original.',
          'and not in the original, which goes on independently');
SELECT is((SELECT array_agg(position ORDER BY position) FROM get_formatted_conversation(:'branch_id')),
          ARRAY[1, 2]::bigint[],
          'positions in a fork continue from the fork point');

-- ---------------------------------------------------------------------------------------------
-- "Example Workflow: Real-time Chat Application"
-- ---------------------------------------------------------------------------------------------

-- 1. Initialize a chat session
SELECT create_session(
    'Product Brainstorm',
    '{"type": "chat", "members": ["alice", "bob"], "status": "active"}'
) AS chat_id \gset

-- LISTEN chat_updates_abc123;  -- Replace abc123 with your session ID
SELECT is(quote_ident('chat_updates_' || replace(:'chat_id', '-', '')),
          'chat_updates_' || replace(:'chat_id', '-', ''),
          'the session channel name is a plain identifier that needs no quoting');
-- (LISTEN takes effect at commit, so inside this transaction only its acceptance can be checked)
SELECT lives_ok(format('LISTEN chat_updates_%s', replace(:'chat_id', '-', '')),
                'LISTEN chat_updates_<session id without dashes> works as written, unquoted');
UNLISTEN *;

-- 2. Exchange messages
SELECT add_message_to_session(
    :'chat_id',
    'alice',
    'I think we should focus on the mobile experience first',
    '{"priority": "high", "sent_at": "2025-06-27T13:20:00Z"}'
) AS alice_msg \gset
SELECT add_message_to_session(
    :'chat_id',
    'bob',
    'Great point! We can use our new design system components.',
    '{"priority": "normal", "sent_at": "2025-06-27T13:21:30Z"}'
) AS bob_msg \gset

SELECT is(get_conversation_text(:'chat_id'),
          E'alice: I think we should focus on the mobile experience first\n'
          'bob: Great point! We can use our new design system components.',
          'the brainstorm transcript shows alice then bob');
SELECT results_eq(
    format($$SELECT position, role, metadata ->> 'priority' FROM get_formatted_conversation(%L, true)$$, :'chat_id'),
    $$VALUES (1::bigint, 'alice'::text, 'high'::text), (2::bigint, 'bob'::text, 'normal'::text)$$,
    'the structured brainstorm carries each message''s metadata');

-- 4. Fork for specific topics (the spec's "msg123" stands for a real message id)
SELECT fork_session(
    :'chat_id',
    'Mobile Design Discussion',
    format('{"parent_message_id": "%s", "focus": "mobile_design"}', :'alice_msg')::jsonb
) AS mobile_id \gset

SELECT is(get_conversation_text(:'mobile_id'),
          'alice: I think we should focus on the mobile experience first',
          'a fork at alice''s message sees only alice''s message');
SELECT is((SELECT _metadata ->> 'focus' FROM memories WHERE id = :'mobile_id'), 'mobile_design',
          'the fork keeps its metadata');
SELECT is((SELECT fork_message_id::text || '|' || fork_position::text || '|' || parent_id::text
             FROM memory_sessions WHERE id = :'mobile_id'),
          :'alice_msg' || '|1|' || :'chat_id',
          'the fork records its parent and fork point');

SELECT add_message_to_session(:'mobile_id', 'carol',
    'For mobile, start with the chat screen and offline drafts.', '{}') AS carol_msg \gset
SELECT is(get_conversation_text(:'mobile_id'),
          E'alice: I think we should focus on the mobile experience first\n'
          'carol: For mobile, start with the chat screen and offline drafts.',
          'the mobile discussion continues after alice''s message, without bob''s');
SELECT is(get_conversation_text(:'chat_id'),
          E'alice: I think we should focus on the mobile experience first\n'
          'bob: Great point! We can use our new design system components.',
          'the brainstorm itself is unchanged by its fork');
SELECT results_eq(
    format($$SELECT message_id, origin_session_id FROM get_formatted_conversation(%L)$$, :'mobile_id'),
    format($$VALUES (%L::uuid, %L::uuid), (%L::uuid, %L::uuid)$$,
           :'alice_msg', :'chat_id', :'carol_msg', :'mobile_id'),
    'the fork''s transcript: alice''s message from the brainstorm, carol''s from the fork');

-- A fork of the fork, at the latest message: three generations, still nothing copied.
SELECT fork_session(:'mobile_id', 'Offline drafts') AS drafts_id \gset
SELECT add_message_to_session(:'drafts_id', 'alice', 'Drafts sync when back online.') AS drafts_msg \gset
SELECT is(get_conversation_text(:'drafts_id'),
          E'alice: I think we should focus on the mobile experience first\n'
          'carol: For mobile, start with the chat screen and offline drafts.\n'
          'alice: Drafts sync when back online.',
          'a fork of a fork sees its whole lineage in order');
SELECT is((SELECT depth FROM memory_sessions WHERE id = :'drafts_id'), 2,
          'a fork of a fork has depth 2');

-- ---------------------------------------------------------------------------------------------
-- Graph traversal: SELECT * FROM memory_graph WHERE id = 'memory-id' LIMIT 100;
-- ---------------------------------------------------------------------------------------------

SELECT set_eq(
    format($$SELECT relation, direction, related_id, related_kind, related_content
               FROM memory_graph WHERE id = %L LIMIT 100$$, :'chat_id'),
    format($$VALUES ('belongs_to'::text, 'incoming'::text, %L::uuid, 'message'::text,
                     'I think we should focus on the mobile experience first'::text),
                    ('belongs_to', 'incoming', %L::uuid, 'message',
                     'Great point! We can use our new design system components.'),
                    ('forked_from', 'incoming', %L::uuid, 'session', 'Mobile Design Discussion')$$,
           :'alice_msg', :'bob_msg', :'mobile_id'),
    'memory_graph for a session: belongs_to edges from its messages, forked_from from its fork');
SELECT set_eq(
    format($$SELECT relation, direction, related_id FROM memory_graph WHERE id = %L LIMIT 100$$, :'mobile_id'),
    format($$VALUES ('forked_from'::text, 'outgoing'::text, %L::uuid),
                    ('belongs_to', 'incoming', %L::uuid),
                    ('forked_from', 'incoming', %L::uuid)$$,
           :'chat_id', :'carol_msg', :'drafts_id'),
    'memory_graph for a fork: forked_from its parent, its own messages, its own fork');
SELECT set_eq(
    format($$SELECT relation, direction, related_id FROM memory_graph WHERE id = %L$$, :'alice_msg'),
    format($$VALUES ('belongs_to'::text, 'outgoing'::text, %L::uuid)$$, :'chat_id'),
    'memory_graph for a message: belongs_to its session (outgoing)');
SELECT is((SELECT edge_metadata FROM memory_graph
            WHERE id = :'mobile_id' AND relation = 'forked_from' AND direction = 'outgoing'),
          jsonb_build_object('fork_position', 1, 'parent_message_id', :'alice_msg'),
          'the forked_from edge records the fork point');
SELECT is((SELECT count(*) FROM memory_graph WHERE id = :'chat_id' LIMIT 100), 3::bigint,
          'memory_graph shows exactly the direct relations');
SELECT is((SELECT weight FROM memory_graph WHERE id = :'alice_msg'), 1.0::float8,
          'edges written by the API have the default weight 1.0');

-- ---------------------------------------------------------------------------------------------
-- Content hashing, as the spec's data model promises ("Content-addressable via SHA-256 hashing")
-- ---------------------------------------------------------------------------------------------
SELECT is((SELECT content_hash FROM memories WHERE id = :'hello_id'),
          '315f5bdb76d078c43b8ac0064e4a0164612b1fce77c869345bfc94c75894edd3',
          'content_hash of "Hello, world!" is its SHA-256 (as sha256sum prints it)');
SELECT is_empty('SELECT * FROM verify_memory_integrity()',
                'verify_memory_integrity() finds every stored hash correct');
SELECT is((SELECT count(*) FROM embedding_schedule
            WHERE memory_id IN (:'hello_id', :'alice_msg', :'bob_msg', :'carol_msg') AND status = 'pending'),
          4::bigint,
          'every new message waits in embedding_schedule');

SELECT * FROM finish();
ROLLBACK;

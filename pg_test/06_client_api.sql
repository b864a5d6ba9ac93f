-- What a client (the hub, an application) needs besides the conversation API: the channel a
-- session's events go to, the caller's sessions, one session's summary, and a transcript page.
BEGIN;
SELECT plan(14);

SELECT create_session('Parent') AS p \gset
SELECT count(*) AS appended FROM add_messages_to_session(:'p', '[{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"},
                                       {"role": "user", "content": "three"}]') \gset
SELECT fork_session(:'p', 'Fork at two', '{}', (SELECT id FROM memories WHERE session_id = :'p' AND position = 2)) AS f \gset
SELECT add_message_to_session(:'f', 'user', 'four in the fork') AS m4 \gset

SELECT is(session_channel(:'p'), 'chat_updates_' || replace(:'p', '-', ''), 'session_channel: chat_updates_<id without dashes>');
SELECT is(session_channel(NULL), NULL, 'session_channel(NULL) is NULL');

SELECT is((SELECT array_agg(title ORDER BY created_at DESC, session_id DESC) FROM list_sessions()),
          (SELECT array_agg(content ORDER BY _created_at DESC, id DESC) FROM memories WHERE kind = 'session'),
          'list_sessions: every session the caller sees, newest first');
SELECT is((SELECT row(parent_id, fork_position, last_position, channel)::text FROM list_sessions() WHERE session_id = :'f'),
          row(:'p'::uuid, 2::bigint, 3::bigint, session_channel(:'f'))::text, 'with its parent, fork point, last position and channel');
SELECT is((SELECT count(*) FROM list_sessions(1)), 1::bigint, 'at most lim of them');
SELECT throws_ok($$SELECT * FROM list_sessions(0)$$, '22023', 'lim must be between 1 and 10000, got 0', 'lim 0 raises 22023');

SELECT is((SELECT row(title, parent_id, fork_position, last_position, channel)::text FROM get_session(:'f')),
          row('Fork at two', :'p'::uuid, 2::bigint, 3::bigint, session_channel(:'f'))::text, 'get_session: title and branch structure');
SELECT throws_ok($$SELECT * FROM get_session('00000000-0000-4000-8000-00000000dead')$$, 'P0002',
                 'session 00000000-0000-4000-8000-00000000dead does not exist', 'get_session of an unknown session raises P0002');

SELECT is((SELECT array_agg(content ORDER BY position) FROM get_conversation_page(:'f', 0, 2)), ARRAY['one', 'two'],
          'get_conversation_page: the first page');
SELECT is((SELECT array_agg(content ORDER BY position) FROM get_conversation_page(:'f', 2, 2)), ARRAY['four in the fork'],
          'the next page continues after the position, across the fork point');
SELECT is((SELECT array_agg(row(position, role, content, message_id, origin_session_id, created_at, metadata)::text ORDER BY position)
             FROM get_conversation_page(:'f', 0, NULL, true)),
          (SELECT array_agg(row(position, role, content, message_id, origin_session_id, created_at, metadata)::text ORDER BY position)
             FROM get_formatted_conversation(:'f', true)),
          'all pages together are the transcript, row for row');
SELECT is((SELECT count(*) FROM get_conversation_page(:'f', 3, 10)), 0::bigint, 'nothing after the last position');
SELECT throws_ok(format($$SELECT * FROM get_conversation_page(%L, 0, 0)$$, :'f'), '22023',
                 'lim must be between 1 and 10000, got 0', 'a page of 0 messages raises 22023');
SELECT throws_ok($$SELECT * FROM get_conversation_page('00000000-0000-4000-8000-00000000dead')$$, 'P0002',
                 'session 00000000-0000-4000-8000-00000000dead does not exist', 'a page of an unknown session raises P0002');

SELECT * FROM finish();
ROLLBACK;

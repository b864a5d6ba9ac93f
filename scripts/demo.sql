-- The demo conversation from the specification's real-time chat example. Loaded once.
DO $$
DECLARE
    brainstorm uuid;
    first_message uuid;
    branch uuid;
BEGIN
    IF EXISTS (SELECT 1 FROM memories WHERE kind = 'session' AND content = 'Product Brainstorm') THEN
        RAISE NOTICE 'demo conversation already loaded';
        RETURN;
    END IF;
    brainstorm := create_session('Product Brainstorm',
        '{"type": "chat", "members": ["alice", "bob"], "status": "active"}');
    first_message := add_message_to_session(brainstorm, 'alice',
        'I think we should focus on the mobile experience first',
        '{"priority": "high", "sent_at": "2025-06-27T13:20:00Z"}');
    PERFORM add_message_to_session(brainstorm, 'bob',
        'Great point! We can use our new design system components.',
        '{"priority": "normal", "sent_at": "2025-06-27T13:21:30Z"}');
    branch := fork_session(brainstorm, 'Mobile Design Discussion',
        jsonb_build_object('parent_message_id', first_message, 'focus', 'mobile_design'));
    PERFORM add_message_to_session(branch, 'carol',
        'For mobile, start with the chat screen and offline drafts.', '{}');
    RAISE NOTICE 'demo loaded: session % (LISTEN chat_updates_%), fork %',
        brainstorm, replace(brainstorm::text, '-', ''), branch;
END
$$;

"""A chat client written with websocket-client, as a Python application would use the hub:
create a session, subscribe to its channel, send messages from two connections, see each other's
messages arrive, resync with get_transcript, and fork. Exits non-zero on any failure.

    python chat_client.py ws://127.0.0.1:5002
"""
import json
import sys

import websocket

HUB = sys.argv[1]
next_id = 0


def request(ws, message):
    """Send a request with a fresh id and return the reply to it (other messages are kept)."""
    global next_id
    next_id += 1
    message = dict(message, id=next_id)
    ws.send(json.dumps(message))
    while True:
        data = json.loads(ws.recv())
        if data.get("id") == next_id:
            if "error" in data:
                raise RuntimeError(f"{message} failed: {data['error']}")
            return data["result"]
        pending.setdefault(id(ws), []).append(data)


pending = {}


def delivery(ws, channel):
    for data in pending.get(id(ws), []):
        if data.get("channel") == channel:
            pending[id(ws)].remove(data)
            return data["payload"]
    while True:
        data = json.loads(ws.recv())
        if data.get("channel") == channel:
            return data["payload"]


alice = websocket.create_connection(HUB + "/ws", timeout=10)
bob = websocket.create_connection(HUB + "/ws", timeout=10)

session = request(alice, {"action": "create_session", "title": "Python chat", "metadata": {"client": "python"}})
channel = session["channel"]
assert channel == "chat_updates_" + session["session_id"].replace("-", ""), session
request(alice, {"method": "sub", "params": {"channels": [channel]}})
request(bob, {"method": "sub", "params": {"channels": [channel]}})

sent = request(alice, {"action": "send_message", "session_id": session["session_id"], "role": "alice",
                       "content": "Hello from Python", "metadata": {"device": "cli"}})
for ws in (alice, bob):
    event = delivery(ws, channel)
    assert event["id"] == sent["message_id"] and event["position"] == 1 and event["role"] == "alice", event

request(bob, {"action": "send_message", "session_id": session["session_id"], "role": "bob", "content": "Hi Alice"})
assert delivery(alice, channel)["position"] == 2

transcript = request(bob, {"action": "get_transcript", "session_id": session["session_id"], "include_metadata": True})
assert [(m["role"], m["content"]) for m in transcript["messages"]] == [("alice", "Hello from Python"), ("bob", "Hi Alice")], transcript
assert transcript["messages"][0]["metadata"] == {"device": "cli"}, transcript

fork = request(alice, {"action": "fork_session", "session_id": session["session_id"], "title": "Python branch",
                       "parent_message_id": sent["message_id"]})
branch = request(alice, {"action": "get_transcript", "session_id": fork["session_id"]})
assert [m["content"] for m in branch["messages"]] == ["Hello from Python"], branch

alice.send("this is not JSON")
while True:
    data = json.loads(alice.recv())
    if "error" in data:
        assert data["error"]["code"] == "bad_json", data
        break

alice.close()
bob.close()
print("python chat client: OK")

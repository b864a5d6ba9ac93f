import websocket
import json

def on_message(ws, message):
    data = json.loads(message)
    print(f"Received: {data}")

def on_error(ws, error):
    print(f"Error: {error}")

def on_close(ws, close_status_code, close_msg):
    print("### Connection closed ###")

def on_open(ws):
    print("Connected to WebSocket server")
    # Subscribe to channels
    ws.send(json.dumps({
        'method': 'pub',
        'params': {
            'channel': 'updates',
            'content': 'Hello from Python!'
        }
    }))

if __name__ == "__main__":
    ws = websocket.WebSocketApp("ws://localhost:5002/ws?c=updates",
                             on_open=on_open,
                             on_message=on_message,
                             on_error=on_error,
                             on_close=on_close)
    ws.run_forever()

"""The device plane: the WebSocket server, each device's session rules, stream positions."""

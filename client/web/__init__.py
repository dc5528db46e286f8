"""room-web: the chat in a browser, through a WebSocket gateway (docs/web.md)."""

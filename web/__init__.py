"""zchat in the browser: a WebSocket gateway (`zchat web`) and the page it serves."""

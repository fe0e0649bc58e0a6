"""Embed zchat in a program: greet everyone, answer private messages, stop after a minute.

Run a broker first (`zchat broker`), then: python examples/hello.py
"""

from zchat.client import events
from zchat.client.session import Client

with Client("hello-bot", "tcp://127.0.0.1:5555") as chat:
    chat.broadcast("hello, I answer private messages").wait(5)
    for event in chat.events(timeout=60):
        if isinstance(event, events.Message) and event.private:
            answer = chat.send(event.sender, f"you said: {event.text}").wait(5)
            print(f"answered {event.sender}: {answer}")

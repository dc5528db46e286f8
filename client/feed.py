"""What arrives on the SUB: the current room's events, each handed to the part it concerns.

A PUB body is opened first, with its room key on a broker that seals (``keyring.Keyring``); a body
whose key has not come yet is held, and handed on when its ``RoomKey`` comes over the DEALER. Then,
in order: a ``Posted`` goes to delivery; a ``Synced`` that answers our latest ``Sync`` proves the
subscription (delivery) and refreshes who is where (roster); a ``Presence`` of the current room
goes to the roster.
"""

from __future__ import annotations

from broker.wire.protocol import Posted, Presence, RoomEvent, RoomKey, Synced
from client.delivery import Delivery
from client.effects import Effect
from client.keyring import Keyring
from client.link import Link
from client.roster import Roster


class Feed:
    """The SUB side of a session: the room keys, and room events handed on in order."""

    def __init__(self, link: Link, delivery: Delivery, roster: Roster) -> None:
        self.link = link
        self.delivery = delivery
        self.roster = roster
        self.keyring = Keyring()
        """Room keys, for a broker that seals the PUB (``--room-keys``)."""

    def frame(self, topic: bytes, body: bytes, now: float) -> list[Effect]:
        """A PUB send as it came on the SUB: opened (with a room key, on a sealing broker)."""
        events = self.keyring.open(topic, body, now)
        return [] if events is None else self.events(events, now)

    def key(self, msg: RoomKey, now: float) -> list[Effect]:
        """A room key from the DEALER: kept, and the held bodies it opens handed on."""
        out: list[Effect] = []
        for events in self.keyring.add(msg, now):
            out += self.events(events, now)
        return out

    def events(self, events: list[RoomEvent], now: float) -> list[Effect]:
        """A batch of events that arrived on the SUB, handled in order."""
        if self.link.done:
            return []
        self.link.last_recv = now
        out: list[Effect] = []
        for event in events:
            match event:
                case Posted():
                    out += self.delivery.posted(event, now)
                case Synced():
                    if self.delivery.subscription.proves(event, self.delivery.room):
                        out += self.delivery.synced(event, now)
                        out += self.roster.refresh(now)
                case Presence(room=room):
                    if room == self.delivery.room:
                        out += self.roster.presence(event)
        return out

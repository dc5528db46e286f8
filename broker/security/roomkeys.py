"""Room keys: the PUB carries each room's events sealed with a key only its members hold.

Anyone who can reach the PUB can subscribe to any topic, so who reads a room cannot be left to
the subscriptions. So each room has a key (AES-256-GCM, from the ``cryptography`` package;
unless the broker runs with ``--no-room-keys``), and every PUB send is sealed with it once,
whatever it carries. The key changes whenever the room's members are not those it was given to
(someone joined, left, was put out, fired, or dropped), before the next send: the newcomers get
no key that opens what was sent before they came, and those who left get no key that opens what
is sent after. Keys go to members over their own DEALER connection (``RoomKey``), and live in
memory only: a restart starts new ones. A (key, nonce) pair never repeats: a key is random, its
nonces count.

A sealed body is ``epoch (8 bytes, big-endian) || nonce (12 bytes) || ciphertext and tag``, the
associated data ``topic || epoch``. Pure code: the loop asks ``seal`` for each room's send.

Why AES-256-GCM and not ChaCha20-Poly1305: every subscriber opens every send of its room, so
opening is what keys cost a room of many readers, and with the AES instructions of every x86-64
CPU since 2010 and of ARMv8, OpenSSL opens a 52 KB body in 17 us here against 28 to 40 for
ChaCha20-Poly1305: one to ten, keys took 3.7% of the run's CPU against 4.7%
(docs/performance.md#room-keys). The nonces count, so GCM's limit on random nonces does not
apply; a key seals at most 2**64 bodies, and changes with its room's members anyway.
"""

from __future__ import annotations

import os
import secrets
import struct
from collections.abc import Set
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["AESGCM", "InvalidTag"]  # for the keyring: its one way to cryptography

EPOCH_BYTES: Final = 8
NONCE_BYTES: Final = 12
KEY_BYTES: Final = 32


_NONCE: Final = struct.Struct(">4xQ")
"""A nonce: four zero bytes, then how many bodies the key sealed before (big-endian)."""


@dataclass(slots=True)
class _RoomKey:
    epoch: int
    key: bytes
    cipher: AESGCM
    holders: frozenset[str]
    head: bytes  # epoch_head(epoch): the first bytes of every body it seals
    associated: bytes  # topic || head
    sent: int = 0  # nonces used


class RoomKeys:
    """Each room's current key, and who holds it."""

    def __init__(self) -> None:
        self._rooms: dict[str, _RoomKey] = {}
        self._made: list[tuple[str, int, bytes, frozenset[str]]] = []
        self.changes = 0
        """Keys made since the start: each one a change of its room's key (the metrics)."""
        self._next_epoch = secrets.randbits(32) + 1
        """Epochs count up from a random start: a client never mistakes a key of this broker's
        life for one of an earlier life's."""

    def seal(self, room: str, topic: bytes, members: Set[str], body: bytes) -> bytes:
        """``body`` sealed with the key of ``members`` (a new one if they changed). Once for
        every PUB send: what a key needs for each is made with the key."""
        current = self._rooms.get(room)
        if current is None or current.holders != members:
            current = self.rotate(room, topic, members)
        nonce = _NONCE.pack(current.sent)
        current.sent += 1
        return current.head + nonce + current.cipher.encrypt(nonce, body, current.associated)

    def new_keys(self) -> list[tuple[str, int, bytes, frozenset[str]]]:
        """Keys made since the last call, to send: (room, epoch, key, to whom)."""
        made, self._made = self._made, []
        return made

    def current(self, room: str, member: str) -> tuple[int, bytes] | None:
        """(epoch, key) of the room's current key if ``member`` holds it: for a member that
        lost it (a ``Join`` of its own room). None when the room has no key yet, or a new one
        will be made for its members at its next send (and handed out then)."""
        key = self._rooms.get(room)
        if key is None or member not in key.holders:
            return None
        return key.epoch, key.key

    def rotate(self, room: str, topic: bytes, members: Set[str]) -> _RoomKey:
        """A new key for the room's ``members``, from the next send on (to hand out: ``new_keys``):
        at each seal when they changed, and at once when a connection that held the key is gone
        though its name is still a member (a resumed session's old connection)."""
        key, head = os.urandom(KEY_BYTES), epoch_head(self._next_epoch)
        fresh = _RoomKey(self._next_epoch, key, AESGCM(key), frozenset(members), head, topic + head)
        self._next_epoch += 1
        self.changes += 1
        self._rooms[room] = fresh
        self._made.append((room, fresh.epoch, key, fresh.holders))
        return fresh


def open_sealed(key: bytes | AESGCM, topic: bytes, sealed: bytes) -> bytes:
    """The body of a sealed PUB send (raises ``cryptography.exceptions.InvalidTag`` if ``key``
    is not the one it was sealed with, or it was changed). A reader of many bodies passes the
    key's cipher (``cipher_of``), made once: making one costs as much as opening a small body.
    A subscriber opens every send of its room, so this is its hot path: a small body is sliced
    (cheaper than a view), a large one read through a view (no copy of its ciphertext)."""
    cipher = AESGCM(key) if type(key) is bytes else key
    head = sealed[:EPOCH_BYTES]
    data = sealed if len(sealed) < VIEW_FROM else memoryview(sealed)
    return cipher.decrypt(data[EPOCH_BYTES:_SEALED_AT], data[_SEALED_AT:], topic + head)


VIEW_FROM: Final = 4096
_SEALED_AT: Final = EPOCH_BYTES + NONCE_BYTES


def cipher_of(key: bytes) -> AESGCM:
    return AESGCM(key)


def epoch_of(sealed: bytes) -> int:
    return int.from_bytes(sealed[:EPOCH_BYTES], "big")


def epoch_head(epoch: int) -> bytes:
    """The first bytes of every body sealed with the key of ``epoch``."""
    return epoch.to_bytes(EPOCH_BYTES, "big")

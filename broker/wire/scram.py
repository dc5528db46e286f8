"""SCRAM-SHA-256 (RFC 5802, RFC 7677) as the room protocol uses it, on the ``scramp`` library.

A password never crosses the wire nor reaches the broker: the client derives the verifier
(salt, iteration count, StoredKey, ServerKey) itself when it registers (``verifier``), and proves
it knows the password at each login (``Prover``). The broker keeps the verifier and checks a
proof with a few HMACs (``Checker``): no key derivation ever runs on its loop. The one text form
of a verifier (``verifier_text``, ``parse_verifier``) is PostgreSQL's, for room-ctl's arguments.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from scramp import ScramClient, ScramException, ScramMechanism

MECHANISM: Final = "SCRAM-SHA-256"
ITERATIONS: Final = 100_000
"""PBKDF2 rounds a client derives its keys with when it registers (about 50 ms, once per
registration and login, on the client): what a stolen database costs to guess from. The broker
accepts 4,096 (RFC 7677's floor) to 10,000,000 and never runs them itself."""
MAX_ITERATIONS: Final = 10_000_000

__all__ = ["ScramException"]


@dataclass(frozen=True, slots=True)
class Verifier:
    """What the broker keeps of a password: enough to check a proof, not to make one."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


def verifier(password: str, iterations: int = ITERATIONS) -> Verifier:
    """The verifier of ``password`` with a fresh random salt (client side)."""
    salt, stored, server, rounds = ScramMechanism(MECHANISM).make_auth_info(password, iterations)
    return Verifier(salt, rounds, stored, server)


def verifier_text(v: Verifier) -> str:
    """``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`` (base64), as PostgreSQL."""
    b64 = base64.b64encode
    salt, stored, server = (b64(x).decode() for x in (v.salt, v.stored_key, v.server_key))
    return f"{MECHANISM}${v.iterations}:{salt}${stored}:{server}"


def parse_verifier(text: str) -> Verifier | None:
    """The verifier of ``verifier_text``'s form; None for anything else."""
    try:
        mech, counted, keys = text.split("$")
        rounds, salt = counted.split(":")
        stored, server = keys.split(":")
        v = Verifier(
            base64.b64decode(salt, validate=True),
            int(rounds),
            base64.b64decode(stored, validate=True),
            base64.b64decode(server, validate=True),
        )
    except (ValueError, binascii.Error):
        return None
    return v if mech == MECHANISM and well_formed(v) else None


def well_formed(v: Verifier) -> bool:
    """Sizes and rounds the protocol allows (``Register``'s ranges)."""
    return (
        12 <= len(v.salt) <= 64
        and 4096 <= v.iterations <= MAX_ITERATIONS
        and len(v.stored_key) == len(v.server_key) == 32
    )


class Prover:
    """The client's side of one login: ``first``, then ``final`` of the broker's challenge, then
    ``check`` the broker's own proof (``Verified``). Each raises ``ScramException`` when the
    broker's message is wrong."""

    def __init__(self, name: str, password: str) -> None:
        self._client = ScramClient([MECHANISM], name, password)

    def first(self) -> str:
        return str(self._client.get_client_first())

    def final(self, challenge: str) -> str:
        self._client.set_server_first(challenge)  # scramp refuses over 10,000,000 rounds
        return str(self._client.get_client_final())

    def check(self, verified: str) -> None:
        self._client.set_server_final(verified)


class Checker:
    """The broker's side of one login: ``challenge`` for the client's first message (the
    verifier comes from ``lookup``), then ``verify`` its proof: the server-final message, or
    ``ScramException`` for a wrong one. A few HMACs; no key derivation."""

    def __init__(self, name: str, lookup: Callable[[], Verifier]) -> None:
        def auth(user: str) -> tuple[bytes, bytes, bytes, int]:
            if user != name:
                raise ScramException("the SCRAM user name is not the login's name")
            v = lookup()
            return v.salt, v.stored_key, v.server_key, v.iterations

        self._server = ScramMechanism(MECHANISM).make_server(auth)

    def challenge(self, first: str) -> str:
        self._server.set_client_first(first)
        return str(self._server.get_server_first())

    def verify(self, final: str) -> str:
        self._server.set_client_final(final)
        return str(self._server.get_server_final())

"""A cap on the log lines of one noisy kind: a flood of bad input (bad frames, refused
handshakes) cannot flood the log."""

from __future__ import annotations


class Throttle:
    """At most ``cap`` lines of one noisy kind per heartbeat interval (bad frames, refused
    handshakes): a flood of them cannot flood the log. ``tick`` says how many were left out, in
    ``more`` (a format with one ``{}``)."""

    def __init__(self, cap: int, more: str) -> None:
        self.cap = cap
        self.more = more
        self.count = 0

    def allow(self) -> bool:
        self.count += 1
        return self.count <= self.cap

    def tick(self) -> list[str]:
        """Once per interval: the line that counts what was left out, if anything was."""
        more, self.count = self.count - self.cap, 0
        return [self.more.format(more)] if more > 0 else []

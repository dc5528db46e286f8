"""What a verb's handler returns (``Result``) or raises (``AdminError``): shared by the handlers
of ``commands`` and ``accountverbs``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from broker.wire import ctlprotocol as cp
from broker.wire import protocol as p

if TYPE_CHECKING:
    from broker.chat.chat import Chat


class AdminError(Exception):
    def __init__(self, code: p.Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Result:
    message: str
    data: cp.CtlData | None = None


Handler = Callable[["Chat", list[str], float], Result]

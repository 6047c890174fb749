"""
The observer interface: how a server reports what it does (for metrics).
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Observer"]


class Observer(Protocol):
    """
    Receives events from an L{smtphooks.SMTPServer} whose C{observer}
    attribute is set.  Each method must be quick and must not raise: it runs
    inside the protocol.
    """

    def connection_opened(self) -> None:
        """
        A client connected (refused ones included).
        """

    def connection_closed(self) -> None:
        """
        A connection ended.
        """

    def reply(self, code: int) -> None:
        """
        The server sent a reply with this code.
        """

    def hook_finished(self, name: str, seconds: float) -> None:
        """
        A hook answered (or failed) after C{seconds}.
        """

    def transaction(self) -> None:
        """
        A MAIL FROM was accepted: a transaction began.
        """

    def message(self, accepted: bool, size: int) -> None:
        """
        A message ended: C{accepted} when answered 2xx (for LMTP: for at
        least one recipient); C{size} is its length in bytes.
        """

"""
Hooks objects for the tests of the twistd plugin (C{--hooks tests.tap_hooks:...}).
"""

from __future__ import annotations

from typing import Any

from smtphooks import Hooks, SMTPError
from smtphooks._session import Address, Session


class RejectSome(Hooks):
    """
    Rejects recipients whose local part starts with C{reject}; has no
    C{on_data} of its own, so the plugin delivers to the Maildir.
    """

    def on_rcpt_to(self, address: Address, session: Session) -> None:
        if address.address.lower().startswith("reject"):
            raise SMTPError("No such user here", code=550, enhanced="5.1.1")


class OwnData:
    """
    A plain object (not a L{Hooks}) with its own C{on_data}, which keeps the
    bodies in memory.
    """

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def on_data(self, stream: Any, session: Session) -> str:
        self.bodies.append(await stream.read())
        return "kept in memory"


class Broken:
    """
    A class that cannot be instantiated.
    """

    def __init__(self) -> None:
        raise RuntimeError("boom")


class WithAuth(Hooks):
    """
    Hooks with an C{on_auth}.
    """

    def on_auth(self, auth: Any, session: Session) -> None:
        return None


#: Not a hooks object: it has no on_* attribute.
nothing = object()


def on_mail_from(address: Address, session: Session) -> None:
    """
    A module-level hook, for C{--hooks tests.tap_hooks}.
    """

"""
Tests of my_hooks.py with pytest: run them with
C{python -m pytest test_my_hooks_pytest.py} from this directory.

The helpers of smtphooks.testing need no reactor and no plugin: plain test
functions call them.
"""

from __future__ import annotations

import pytest
from twisted.internet.defer import Deferred, succeed

from my_hooks import MyHooks
from smtphooks import SMTPError
from smtphooks.testing import (
    ReplyPending,
    SMTPTestClient,
    make_address,
    make_session,
    make_test_server,
    run_hook,
)

MESSAGE = b"Subject: hello\r\n\r\nHi Bob!\r\n"


def ham(body: bytes) -> Deferred[float]:
    return succeed(0.0)


@pytest.fixture
def hooks() -> MyHooks:
    return MyHooks(scorer=ham)


@pytest.fixture
def client(hooks: MyHooks) -> SMTPTestClient:
    return SMTPTestClient(make_test_server(hooks))


def test_delivery(client: SMTPTestClient, hooks: MyHooks) -> None:
    assert client.send("carol@example.org", "bob@example.com", MESSAGE) == (
        250,
        "2.0.0 Queued as 1",
    )
    assert hooks.delivered == [("carol@example.org", ["bob@example.com"], MESSAGE)]


def test_unknown_recipient(client: SMTPTestClient) -> None:
    client.ehlo()
    client.mail("carol@example.org")
    reply = client.rcpt("nobody@example.com")
    assert reply.code == 550
    assert reply.text == "5.1.1 No such user here"


def test_rcpt_hook_alone() -> None:
    hooks = MyHooks(scorer=ham)
    with pytest.raises(SMTPError) as caught:
        run_hook(hooks.on_rcpt_to, make_address("eve@example.com"), make_session())
    assert caught.value.code == 550


def test_slow_scorer() -> None:
    score: Deferred[float] = Deferred()
    client = SMTPTestClient(make_test_server(MyHooks(scorer=lambda body: score)))
    client.ehlo()
    client.mail("carol@example.org")
    client.rcpt("bob@example.com")
    with pytest.raises(ReplyPending):
        client.data(MESSAGE)
    score.callback(1.0)
    assert client.wait() == (250, "2.0.0 Queued as 1")

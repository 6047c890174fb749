"""
smtphooks: a mail-receiving SMTP and LMTP server for Python, on Twisted.

Build a server with L{SMTPServer}, decide what happens at each step of a
session with hooks (C{on_connect}, C{on_secure}, C{on_auth},
C{on_mail_from}, C{on_rcpt_to}, C{on_data}, C{on_close}), and reject with
L{SMTPError}.  The message body reaches C{on_data} as a L{DataStream};
L{MaildirDelivery} stores it in a Maildir.  C{smtphooks.testing} drives
sessions in memory to test hooks; C{smtphooks.metrics} exports Prometheus
metrics; C{smtphooks.reactor} is a leaner epoll reactor for Linux;
C{twistd smtphooks} runs a complete server from the command line.
"""

from ._auth import AuthRequest, AuthResponse
from ._data import DataStream
from ._errors import SMTPError
from ._hooks import Hooks, ISMTPHooks
from ._server import SMTPServer
from ._session import Address, Envelope, Session, TLSInfo
from ._version import __version__
from .maildir import MaildirDelivery

__all__ = [
    "SMTPServer",
    "SMTPError",
    "Hooks",
    "ISMTPHooks",
    "AuthRequest",
    "AuthResponse",
    "Session",
    "Envelope",
    "Address",
    "TLSInfo",
    "DataStream",
    "MaildirDelivery",
    "__version__",
]

"""
smtphooks: a mail-receiving SMTP server for Python, on Twisted.

Build a server with L{SMTPServer}, decide what happens at each step of a
session with hooks (C{on_connect}, C{on_mail_from}, C{on_rcpt_to},
C{on_data}, C{on_close}, ...), reject with L{SMTPError}.
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

"""
The C{smtphooks-epoll} reactor for twistd and twist:
C{twistd --reactor smtphooks-epoll ...} runs on
L{smtphooks.reactor.LeanEPollReactor}.

Like C{smtphooks_plugin.py}, this file must stay cheap to import: the
reactor module is imported only when the reactor is chosen.
"""

from twisted.application.reactors import Reactor

smtphooks_epoll = Reactor(
    "smtphooks-epoll",
    "smtphooks.reactor",
    "epoll(7) reactor without a logging context per I/O event (Linux; smtphooks).",
)

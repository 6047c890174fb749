"""
The C{smtphooks} twistd plugin: C{twistd -n smtphooks --help}.

Twisted finds this file by scanning C{twisted/plugins} directories on
C{sys.path}.  It must stay cheap to import: the package (and the reactor)
is imported only when the plugin is used.
"""

from twisted.application.service import ServiceMaker

smtphooks = ServiceMaker(  # type: ignore[no-untyped-call]
    "smtphooks",
    "smtphooks.tap",
    "A mail-receiving SMTP server: delivers to a Maildir, or to your own hooks.",
    "smtphooks",
)

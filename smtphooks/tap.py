"""
The twistd plugin's glue: L{Options} (the command line) and L{makeService}.

C{twistd -n smtphooks} runs a receiving server on
C{tcp:2525:interface=127.0.0.1} that delivers every message to
C{./Maildir}; see the operations guide (C{docs/operations.md}) for the
options.  Without C{twistd --reactor}, it runs on
L{smtphooks.reactor.LeanEPollReactor} on Linux.
"""

from __future__ import annotations

import base64
import binascii
import getpass
import hashlib
import hmac
import importlib
import inspect
import math
import os
import re
import select
import socket
import sys
from typing import Any, Callable, NoReturn, Sequence, TextIO

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from ._auth import AuthRequest, AuthResponse
from ._coroutine import run_coroutine
from ._errors import (
    DATA_REJECTED,
    MAIL_REJECTED,
    RCPT_REJECTED,
    Reply,
    is_rejection,
    reply_for_error,
)
from ._hooks import HOOK_NAMES, Hooks
from ._options import OPTIONS, OptionSpec, parse_networks
from ._session import Session
from ._version import __version__
from .maildir import MaildirDelivery

__all__ = ["Options", "makeService", "hash_password", "verify_password", "SMTPService"]

log = Logger()

#: Where the server listens when no C{--listen} is given.
DEFAULT_LISTEN = "tcp:2525:interface=127.0.0.1"
#: Where messages go when no C{--maildir} is given and no C{--hooks} object
#: has an C{on_data}.
DEFAULT_MAILDIR = "./Maildir"

# -- passwords ----------------------------------------------------------------

#: scrypt cost parameters for new hashes: about 16 MiB and 50 ms per check.
SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
_SALT_BYTES = 16
_KEY_BYTES = 32
#: The largest scrypt parameters accepted from a users file (memory
#: 128 * n * r * p bytes), so that a bad entry cannot exhaust the host.
_MAX_SCRYPT_MEMORY = 256 * 1024 * 1024


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """
    Hash a password for an C{--auth-users} file.

    @param password: the password.
    @param n: the scrypt CPU/memory cost (a power of 2).
    @param r: the scrypt block size.
    @param p: the scrypt parallelism.
    @return: C{scrypt$<n>$<r>$<p>$<salt, base64>$<key, base64>}, with a
        random salt.
    """
    salt = os.urandom(_SALT_BYTES)
    key = _scrypt(password, salt, n, r, p, _KEY_BYTES)
    encode = base64.b64encode
    return f"scrypt${n}${r}${p}${encode(salt).decode()}${encode(key).decode()}"


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=128 * n * r * p + 1024 * 1024,
        dklen=length,
    )


def _parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    """
    @return: C{(n, r, p, salt, key)} of a hash made by L{hash_password}.
    @raise ValueError: if C{encoded} is not such a hash.
    """
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not a hash made by --hash-password (scrypt$n$r$p$salt$key)")
    try:
        n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt = base64.b64decode(parts[4], validate=True)
        key = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error):
        raise ValueError("malformed scrypt hash") from None
    if n < 2 or n & (n - 1) or r < 1 or p < 1 or 128 * n * r * p > _MAX_SCRYPT_MEMORY:
        raise ValueError("scrypt parameters out of range")
    if not salt or len(key) < 16:
        raise ValueError("scrypt salt or key too short")
    return n, r, p, salt, key


def verify_password(password: str, encoded: str) -> bool:
    """
    Check a password against a hash made by L{hash_password}, in constant
    time.

    @return: L{True} if they match; L{False} otherwise, also when
        C{encoded} is malformed.
    """
    try:
        n, r, p, salt, key = _parse_hash(encoded)
    except ValueError:
        return False
    return hmac.compare_digest(_scrypt(password, salt, n, r, p, len(key)), key)


def read_users(path: str) -> dict[str, str]:
    """
    Read an C{--auth-users} file: one C{user:hash} per line; blank lines and
    lines starting with C{#} are ignored.

    @return: user names and their hashes.
    @raise OSError: if the file cannot be read.
    @raise ValueError: for a malformed line, naming it (never its hash).
    """
    users: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for number, raw in enumerate(f, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, encoded = line.rpartition(":")
            if not sep or not user:
                raise ValueError(f"{path}, line {number}: expected user:hash")
            try:
                _parse_hash(encoded)
            except ValueError as e:
                raise ValueError(f"{path}, line {number} (user {user!r}): {e}") from None
            if user in users:
                raise ValueError(f"{path}, line {number}: user {user!r} appears twice")
            users[user] = encoded
    return users


class AuthUsers:
    """
    An C{on_auth} hook that checks PLAIN and LOGIN passwords against the
    users of an C{--auth-users} file.  The check (scrypt) runs in the
    reactor's thread pool.  Mechanisms without a password (CRAM-MD5,
    XOAUTH2) are refused.
    """

    def __init__(self, users: dict[str, str], reactor: Any) -> None:
        """
        @param users: user names and hashes, as L{read_users} gives.
        @param reactor: an L{twisted.internet.interfaces.IReactorThreads}.
        """
        self.users = users
        self._reactor = reactor
        # Unknown users cost as much as known ones, so that timing does not
        # tell which names exist.
        self._dummy = hash_password(os.urandom(8).hex())

    def __call__(self, auth: AuthRequest, session: Session) -> Deferred[AuthResponse | None]:
        """
        @param auth: the AUTH exchange.
        @return: a L{Deferred} firing with an L{AuthResponse} for the right
            password, or L{None} (which rejects with C{535}).
        """
        password = auth.password
        username = auth.username
        if password is None:
            return succeed(None)
        known = username in self.users
        encoded = self.users.get(username, self._dummy)
        d: Deferred[bool] = deferToThreadPool(
            self._reactor, self._reactor.getThreadPool(), verify_password, password, encoded
        )

        def decide(ok: bool) -> AuthResponse | None:
            if ok and known:
                return AuthResponse(user=username)
            log.info(
                "authentication failed for {username!r} from {client} (session {session_id})",
                username=username,
                client=session.remote_address,
                session_id=session.id,
            )
            return None

        return d.addCallback(decide)


# -- the reactor --------------------------------------------------------------


def _install_default_reactor() -> None:
    """
    Install L{smtphooks.reactor.LeanEPollReactor} as the global reactor, on
    Linux, when no reactor is installed yet.  Elsewhere, or once a reactor
    is installed (C{twistd --reactor NAME} installs it before the plugin's
    options are parsed), do nothing.
    """
    if "twisted.internet.reactor" in sys.modules:
        return
    if not sys.platform.startswith("linux") or not hasattr(select, "epoll"):
        return
    from .reactor import install

    install()


# -- option parsing -----------------------------------------------------------

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def _count(flag: str) -> Callable[[str], int]:
    def coerce(value: str) -> int:
        try:
            number = int(value.strip(), 10)
        except ValueError:
            number = -1
        if number < 0:
            raise usage.UsageError(f"--{flag} must be a whole number (0 or more), not {value!r}")
        return number

    return coerce


def _seconds(flag: str) -> Callable[[str], float]:
    def coerce(value: str) -> float:
        try:
            number = float(value.strip())
        except ValueError:
            number = -1.0
        if not number > 0 or not math.isfinite(number):
            raise usage.UsageError(f"--{flag} must be a positive number of seconds, not {value!r}")
        return number

    return coerce


def _strlist(flag: str) -> Callable[[str], list[str]]:
    def coerce(value: str) -> list[str]:
        return [item.strip() for item in value.split(",") if item.strip()]

    return coerce


def _networks(flag: str) -> Callable[[str], bool | list[str]]:
    def coerce(value: str) -> bool | list[str]:
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        items = [item.strip() for item in value.split(",") if item.strip()]
        if not items:
            raise usage.UsageError(f"--{flag} needs yes, no, or a list of networks")
        try:
            parse_networks(flag, items)
        except ValueError:
            bad = next(i for i in items if not _is_network(i))
            raise usage.UsageError(f"--{flag}: {bad!r} is not an address or network") from None
        return items

    return coerce


def _is_network(text: str) -> bool:
    try:
        parse_networks("", [text])
    except ValueError:
        return False
    return True


def _mapping(flag: str) -> Callable[[str], dict[str, str]]:
    def coerce(value: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in value.split(","):
            if not item.strip():
                continue
            key, sep, rest = item.partition("=")
            if not sep or not key.strip():
                raise usage.UsageError(f"--{flag} must be a list of name=value, not {value!r}")
            out[key.strip()] = rest.strip()
        return out

    return coerce


def _text(flag: str) -> Callable[[str], str]:
    def coerce(value: str) -> str:
        return value

    return coerce


_COERCERS: dict[str, Callable[[str], Callable[[str], Any]]] = {
    "str": _text,
    "text": _text,
    "path": _text,
    "count": _count,
    "seconds": _seconds,
    "strlist": _strlist,
    "networks": _networks,
    "mapping": _mapping,
}

_METAVARS = {
    "count": "N",
    "seconds": "SECONDS",
    "strlist": "A,B,...",
    "networks": "yes|no|CIDR,...",
    "mapping": "NAME=VALUE,...",
    "path": "FILE",
}


def _help(spec: OptionSpec) -> str:
    text = spec.help
    if spec.name == "sni":
        text = "certificates chosen by the client's server name (SNI): NAME=CERT.pem:KEY.pem"
    if spec.kind in ("networks",):
        text += " (yes = loopback only, or a comma-separated list of networks)"
    elif spec.kind in ("strlist", "mapping"):
        text += " (comma-separated)"
    if spec.kind != "bool" and spec.default not in (None, "", [], {}, False):
        default = spec.default
        if isinstance(default, list):
            default = ",".join(default)
        elif isinstance(default, float) and default.is_integer():
            default = int(default)
        text += f" [default: {default}]"
    if not spec.implemented:
        text += " (not supported by this version)"
    return text


def _generated() -> tuple[list[list[Any]], list[list[Any]]]:
    """
    The C{optFlags} and C{optParameters} for every option of
    L{smtphooks._options.OPTIONS} that can be given on a command line.
    """
    flags: list[list[Any]] = []
    parameters: list[list[Any]] = []
    for spec in OPTIONS:
        if spec.kind == "object":
            continue
        flag = _kebab(spec.name)
        if spec.kind == "bool":
            flags.append([flag, None, _help(spec)])
        else:
            coerce = _COERCERS[spec.kind](flag)
            coerce.coerceDoc = ""  # type: ignore[attr-defined]
            parameters.append([flag, None, None, _help(spec), coerce])
    return flags, parameters


_FLAGS, _PARAMETERS = _generated()
_SERVER_OPTIONS = [spec for spec in OPTIONS if spec.kind != "object"]


_CLI_NAMES = "|".join(sorted((spec.name for spec in _SERVER_OPTIONS), key=len, reverse=True))
_OPTION_NAME = re.compile(rf"(?:option )?'({_CLI_NAMES})'|^({_CLI_NAMES}):")


def _option_names_to_flags(message: str) -> str:
    """
    Rewrite the option names in an L{SMTPServer} error
    (C{option 'max_clients'}, C{'tls_key'}, C{tls_cert: ...}) as the
    names the operator typed (C{--max-clients}).
    """

    def flag(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        return f"--{_kebab(name)}" + ("" if match.group(1) else ":")

    return _OPTION_NAME.sub(flag, message)


class Options(usage.Options):
    """
    The command line of C{twistd smtphooks}.
    """

    synopsis = "[options]"
    longdesc = (
        "Receive mail over SMTP and deliver it to a Maildir (or to your own hooks). "
        "By default it listens on " + DEFAULT_LISTEN + " and delivers to " + DEFAULT_MAILDIR
        + ". Every option of smtphooks.SMTPServer is available as --kebab-case."
    )

    optParameters = [
        ["maildir", "m", None, f"deliver to this Maildir [default: {DEFAULT_MAILDIR}]"],
        [
            "hooks",
            None,
            None,
            "package.module:object with on_* hooks (a class is instantiated without "
            "arguments); on_data falls back to the Maildir only when it has none",
        ],
        ["auth-users", None, None, "file of user:hash lines for AUTH (see --hash-password)"],
        *_PARAMETERS,
    ]
    optFlags = [
        [
            "reuse-port",
            None,
            "with --workers: give each worker its own SO_REUSEPORT socket on tcp:/ssl: "
            "listeners, so that the kernel spreads connections evenly (Linux)",
        ],
        *_FLAGS,
    ]

    #: Where --hash-password reads and writes; tests replace them.
    stdin: TextIO | None = None
    stdout: TextIO | None = None
    getpass: Callable[[str], str] | None = None

    def __init__(self, reactor: Any = None) -> None:
        """
        @param reactor: the reactor the server will run on (default: the
            global one, looked up when the options are checked; if none is
            installed by then, on Linux, a
            L{smtphooks.reactor.LeanEPollReactor} is installed first).
        """
        super().__init__()  # type: ignore[no-untyped-call]
        self["listen"] = []
        self["metrics"] = None
        self["workers"] = 1
        self._reactor = reactor
        #: The command line and working directory it was parsed in.
        self.argv: list[str] = []
        self.cwd = os.getcwd()
        #: The registry that C{--metrics} serves (single process), or
        #: L{None}.
        self.registry: Any = None
        #: Set by a worker process (L{smtphooks._workers}) before parsing:
        #: its sockets are inherited, so C{--listen} is not checked here and
        #: it does not serve C{--metrics} itself.
        self.adopted = False
        #: The server, built and checked by L{postOptions}.
        self.server: Any = None
        #: The Maildir delivery in use, or L{None} when the hooks have an
        #: C{on_data}.
        self.maildir: MaildirDelivery | None = None

    def opt_listen(self, endpoint: str) -> None:
        """Listen on this endpoint (repeatable) [default: tcp:2525:interface=127.0.0.1]"""
        self["listen"].append(endpoint)

    opt_l = opt_listen

    def opt_metrics(self, endpoint: str) -> None:
        """Serve Prometheus metrics over HTTP here, e.g. tcp:9100 (needs smtphooks[metrics])"""
        self["metrics"] = endpoint

    def opt_workers(self, count: str) -> None:
        """Run N processes that share the listening sockets (1: one process) [default: 1]"""
        try:
            number = int(count.strip(), 10)
        except ValueError:
            number = 0
        if number < 1:
            raise usage.UsageError(f"--workers must be a whole number (1 or more), not {count!r}")
        self["workers"] = number

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Parse the command line, and keep it (and the working directory) for
        worker processes, which parse the same one.
        """
        self.argv = list(sys.argv[1:] if options is None else options)
        self.cwd = os.getcwd()
        super().parseOptions(options)  # type: ignore[no-untyped-call]

    def opt_hash_password(self) -> None:
        """Read a password (terminal or stdin), print its hash for --auth-users, exit"""
        stdin = self.stdin or sys.stdin
        stdout = self.stdout or sys.stdout
        if stdin.isatty():
            ask = self.getpass or getpass.getpass
            password = ask("Password: ")
            if ask("Again: ") != password:
                raise usage.UsageError("--hash-password: the passwords differ")
        else:
            password = stdin.readline().rstrip("\r\n")
        if not password:
            raise usage.UsageError("--hash-password: the password is empty")
        stdout.write(hash_password(password) + "\n")
        stdout.flush()
        raise SystemExit(0)

    def opt_version(self) -> None:
        """Print the versions of smtphooks and Twisted, and exit"""
        from twisted import __version__ as twisted_version

        stdout = self.stdout or sys.stdout
        stdout.write(f"smtphooks {__version__} (Twisted {twisted_version})\n")
        stdout.flush()
        raise SystemExit(0)

    def _get_reactor(self) -> Any:
        if self._reactor is None:
            # twistd and twist install a reactor before this point only when
            # given --reactor; otherwise this is the first import of the
            # global reactor, and it can still be chosen.
            _install_default_reactor()
            from twisted.internet import reactor

            self._reactor = reactor
        return self._reactor

    def postOptions(self) -> None:
        """
        Check everything before anything listens: endpoints, the Maildir,
        the hooks object, the users file and every server option.  The
        server is built here and kept as C{self.server}.

        @raise usage.UsageError: one line naming what is wrong.
        """
        reactor = self._get_reactor()
        if not self["listen"]:
            self["listen"] = [DEFAULT_LISTEN]
        if not self.adopted:
            self._check_endpoints(reactor)
            self._check_workers()
        metrics = self._check_metrics(reactor)
        for spec in _SERVER_OPTIONS:
            if spec.kind == "path" and self[_kebab(spec.name)] is not None:
                _check_readable(f"--{_kebab(spec.name)}", self[_kebab(spec.name)])

        hooks = _load_hooks(self["hooks"]) if self["hooks"] is not None else None
        on_auth = None
        if self["auth-users"] is not None:
            if hooks is not None and getattr(hooks, "on_auth", None) is not None:
                raise usage.UsageError(
                    "--auth-users cannot be used with a --hooks object that has on_auth"
                )
            path = self["auth-users"]
            _check_readable("--auth-users", path)
            try:
                users = read_users(path)
            except OSError as e:
                raise usage.UsageError(f"--auth-users: cannot read {path}: {e.strerror}") from None
            except (ValueError, UnicodeDecodeError) as e:
                raise usage.UsageError(f"--auth-users: {e}") from None
            on_auth = AuthUsers(users, reactor)

        server_options = self._server_options()
        from ._server import SMTPServer

        try:
            server = SMTPServer(hooks=hooks, on_auth=on_auth, reactor=reactor, **server_options)
        except (TypeError, ValueError) as e:
            message = _option_names_to_flags(str(e))
            if "on_auth" in message and on_auth is not None:
                message = f"--auth-users: {message}"
            elif "hook" in message and hooks is not None:
                message = f"--hooks {self['hooks']}: {message}"
            raise usage.UsageError(message) from None

        if not _has_own_on_data(hooks):
            path = self["maildir"] or DEFAULT_MAILDIR
            full = os.path.abspath(path)
            parts = [full] + [os.path.join(full, sub) for sub in ("tmp", "new", "cur")]
            missing = [part for part in parts if not os.path.exists(part)]
            try:
                self.maildir = MaildirDelivery(path, hostname=server.options.name, reactor=reactor)
                self._give_to_runtime_user(missing)
            except (OSError, ValueError) as e:
                detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                raise usage.UsageError(f"--maildir {path}: {detail}") from None
            server.on_data = self.maildir
        elif self["maildir"] is not None:
            raise usage.UsageError(
                "--maildir cannot be used with a --hooks object that has its own on_data"
            )
        for name in _LOGGED_HOOKS:
            hook = getattr(server, name, None)
            if hook is not None:
                setattr(server, name, LogRejections(name, hook))
        if metrics is not None and (self.adopted or self["workers"] == 1):
            # A worker's observer writes to the files of prometheus_client's
            # multiprocess mode, which the master serves.
            self.registry = _metrics_registry(with_process=not self.adopted)
            server.observer = metrics.PrometheusObserver(self.registry)
        self.server = server

    def _give_to_runtime_user(self, created: list[str]) -> None:
        """
        When twistd runs as root and will switch to another user
        (C{twistd --uid/--gid}), the Maildir directories created here (as
        root, before the switch) are given to that user, who writes the mail.
        """
        runner = getattr(self, "parent", None)
        if runner is None or not hasattr(runner, "get") or os.getuid() != 0:
            return
        uid, gid = runner.get("uid"), runner.get("gid")
        if uid is None:
            return
        if gid is None:
            import pwd

            gid = pwd.getpwuid(uid).pw_gid
        for directory in created:
            os.chown(directory, uid, gid)

    def _check_endpoints(self, reactor: Any) -> None:
        from twisted.internet.endpoints import serverFromString

        for description in self["listen"]:
            try:
                serverFromString(reactor, description)  # type: ignore[no-untyped-call]
            except Exception as e:
                detail = str(e) or type(e).__name__
                raise usage.UsageError(f"--listen {description}: {detail}") from None

    def _check_workers(self) -> None:
        if self["reuse-port"]:
            if self["workers"] < 2:
                raise usage.UsageError("--reuse-port needs --workers 2 or more")
            if not sys.platform.startswith("linux") or not hasattr(socket, "SO_REUSEPORT"):
                raise usage.UsageError("--reuse-port needs Linux (SO_REUSEPORT load balancing)")

    def _check_metrics(self, reactor: Any) -> Any:
        """
        @return: the module L{smtphooks.metrics} when C{--metrics} is given,
            else L{None}.
        @raise usage.UsageError: when C{prometheus_client} is missing, or
            the endpoint is malformed.
        """
        endpoint = self["metrics"]
        if endpoint is None:
            return None
        try:
            from . import metrics
        except ImportError:
            raise usage.UsageError(
                "--metrics needs prometheus_client: pip install 'smtphooks[metrics]'"
            ) from None
        if not self.adopted:
            from twisted.internet.endpoints import serverFromString

            try:
                serverFromString(reactor, endpoint)  # type: ignore[no-untyped-call]
            except Exception as e:
                detail = str(e) or type(e).__name__
                raise usage.UsageError(f"--metrics {endpoint}: {detail}") from None
        return metrics

    def _server_options(self) -> dict[str, Any]:
        """
        The L{SMTPServer} keyword arguments the operator gave (the others
        keep the server's defaults).
        """
        values: dict[str, Any] = {}
        for spec in _SERVER_OPTIONS:
            value = self[_kebab(spec.name)]
            if spec.kind == "bool":
                if value:
                    values[spec.name] = True
            elif value is not None:
                values[spec.name] = value
        if "sni" in values:
            values["sni"] = _load_sni(values["sni"])
        return values


def _metrics_registry(with_process: bool) -> Any:
    """
    A new C{prometheus_client} registry for C{--metrics}: the server's
    metrics, and (C{with_process}) those of the process (CPU, memory, file
    descriptors, garbage collection) that C{prometheus_client}'s default
    registry has.
    """
    from prometheus_client import (
        CollectorRegistry,
        GCCollector,
        PlatformCollector,
        ProcessCollector,
    )

    registry = CollectorRegistry()
    if with_process:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry


def _load_sni(names: dict[str, str]) -> dict[str, Any]:
    """
    The C{--sni} certificates: C{NAME=CERT.pem:KEY.pem} (or
    C{NAME=BOTH.pem}, one file holding the chain and the key).

    @raise usage.UsageError: naming the server name whose files are bad.
    """
    from ._tls import load_pem

    factories: dict[str, Any] = {}
    for name, files in names.items():
        cert, sep, key = files.rpartition(":")
        if not sep:
            cert = key = files
        if not cert or not key:
            raise usage.UsageError(f"--sni {name}: expected {name}=CERT.pem:KEY.pem")
        try:
            factories[name] = load_pem(cert, key)
        except ValueError as e:
            detail = re.sub(r"^tls_(?:cert|key)(?:/tls_key)?: ", "", str(e))
            raise usage.UsageError(f"--sni {name}: {detail}") from None
    return factories


def _check_readable(flag: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise usage.UsageError(f"{flag}: cannot read {path}: {e.strerror}") from None


def _load_hooks(spec: str) -> object:
    """
    Import the C{--hooks} object: C{package.module:object} (a dotted path
    inside the module is allowed), or C{package.module} for a module whose
    functions are the hooks.  A class is instantiated without arguments.
    The current directory is importable, as with C{python -m}.

    @raise usage.UsageError: naming what could not be found.
    """
    module_name, _, attribute = spec.partition(":")
    if not module_name or (":" in spec and not attribute):
        raise usage.UsageError(f"--hooks must look like package.module:object, not {spec!r}")
    cwd = os.getcwd()
    if "" not in sys.path and cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise usage.UsageError(f"--hooks {spec}: cannot import {module_name}: {e}") from None
    except Exception as e:
        raise usage.UsageError(
            f"--hooks {spec}: importing {module_name} failed: {type(e).__name__}: {e}"
        ) from None
    if attribute:
        for part in attribute.split("."):
            try:
                target = getattr(target, part)
            except AttributeError:
                raise usage.UsageError(
                    f"--hooks {spec}: {module_name} has no attribute {attribute!r}"
                ) from None
    if inspect.isclass(target):
        try:
            target = target()
        except Exception as e:
            raise usage.UsageError(
                f"--hooks {spec}: cannot instantiate {attribute}: {type(e).__name__}: {e}"
            ) from None
    found = [name for name in HOOK_NAMES if getattr(target, name, None) is not None]
    if not found:
        raise usage.UsageError(
            f"--hooks {spec}: the object has none of the hooks " + ", ".join(HOOK_NAMES)
        )
    for name in found:
        if not callable(getattr(target, name)):
            raise usage.UsageError(f"--hooks {spec}: {name} is not callable")
    return target


def _has_own_on_data(hooks: object | None) -> bool:
    """
    Whether a C{--hooks} object has an C{on_data} of its own.  The default
    of L{smtphooks.Hooks} (which discards messages) does not count: a
    subclass that does not override it gets Maildir delivery.
    """
    if hooks is None:
        return False
    on_data = getattr(hooks, "on_data", None)
    if on_data is None:
        return False
    return getattr(on_data, "__func__", None) is not Hooks.on_data


# -- logging rejections -------------------------------------------------------

_LOGGED_HOOKS: dict[str, Reply] = {
    "on_mail_from": MAIL_REJECTED,
    "on_rcpt_to": RCPT_REJECTED,
    "on_data": DATA_REJECTED,
}


class LogRejections:
    """
    Wraps a hook so that each rejection it makes (an L{SMTPError}, or an
    exception with a C{response_code}) is logged in one line: what was
    rejected, the client, the reply.  The hook's result is passed on
    unchanged; errors that are not rejections are left to the server, which
    logs them with their traceback.

    @ivar __wrapped__: the hook.
    """

    def __init__(self, name: str, hook: Callable[..., Any]) -> None:
        """
        @param name: the hook's name (C{"on_rcpt_to"}, ...).
        @param hook: the hook.
        """
        self.__wrapped__ = hook
        self._name = name
        self._default = _LOGGED_HOOKS[name]

    def __call__(self, *args: Any) -> Any:
        try:
            result = self.__wrapped__(*args)
        except BaseException as e:
            self._log(e, args)
            raise
        if inspect.iscoroutine(result):
            result = run_coroutine(result)
        if isinstance(result, Deferred):

            def failed(failure: Failure) -> Failure:
                if failure.value is not None:
                    self._log(failure.value, args)
                return failure

            result.addErrback(failed)
        return result

    def _log(self, error: BaseException, args: tuple[Any, ...]) -> None:
        if not is_rejection(error):
            return
        session = args[-1]
        reply = reply_for_error(error, self._default)
        envelope = getattr(session, "envelope", None)
        sender = getattr(getattr(envelope, "mail_from", None), "address", "")
        if self._name == "on_mail_from":
            what = f"MAIL FROM:<{getattr(args[0], 'address', '')}>"
        elif self._name == "on_rcpt_to":
            what = f"RCPT TO:<{getattr(args[0], 'address', '')}> sender=<{sender}>"
        else:
            count = len(getattr(envelope, "rcpt_to", ()))
            what = f"DATA sender=<{sender}> recipients={count}"
        log.info(
            "rejected from {client}: {what}: {code} {enhanced} {text} (session {session_id})",
            what=what,
            client=getattr(session, "remote_address", "?"),
            code=reply.code,
            enhanced=reply.enhanced or "",
            text=" ".join(reply.text.split()),
            session_id=getattr(session, "id", "?"),
        )


# -- the service --------------------------------------------------------------


class StartupError(Exception):
    """
    The server could not start listening.
    """


class SMTPService(Service):
    """
    Listens with an L{SMTPServer} on every endpoint when started, and closes
    it gracefully (SPEC: sessions finish their transaction for up to
    C{close_timeout}, the rest get C{421}) when stopped, as on SIGTERM.

    Listening happens in L{privilegedStartService} (before twistd drops
    privileges, so port 25 works with C{--uid}), or in L{startService} for
    runners that do not call it (C{twist}).  If an endpoint cannot listen,
    the ports already opened are closed and startup fails with one line.

    @ivar server: the L{SMTPServer}.
    @ivar endpoints: the endpoint descriptions (or endpoints).
    @ivar ports: the listening ports, once started.
    @ivar metrics_port: the port that serves C{--metrics}, once started.
    """

    def __init__(
        self,
        server: Any,
        endpoints: Sequence[str | IStreamServerEndpoint],
        runner: Any = None,
        maildir: str | None = None,
        *,
        names: Sequence[str] | None = None,
        metrics: str | None = None,
        registry: Any = None,
        reactor: Any = None,
    ) -> None:
        """
        @param server: the L{SMTPServer}.
        @param endpoints: endpoint descriptions (or endpoints) for
            C{server.listen}.
        @param runner: the runner's own options (twistd's, when run by
            twistd), to report a failure the way it expects; or L{None}.
        @param maildir: the Maildir messages go to, for the log; or
            L{None}.
        @param names: how to call each endpoint in the log (default: the
            descriptions).
        @param metrics: an endpoint description where C{registry} is served
            over HTTP (C{--metrics}); or L{None}.
        @param registry: the C{prometheus_client} registry to serve.
        @param reactor: the reactor (default: the global one).
        """
        self.server = server
        self.endpoints = list(endpoints)
        self.names = [str(e) for e in endpoints] if names is None else list(names)
        self.ports: list[IListeningPort] | None = None
        self.metrics_port: IListeningPort | None = None
        self._runner = runner
        self._maildir = maildir
        self._metrics = metrics
        self._registry = registry
        self._chosen_reactor = reactor

    @property
    def _reactor(self) -> Any:
        if self._chosen_reactor is None:
            from twisted.internet import reactor

            self._chosen_reactor = reactor
        return self._chosen_reactor

    def privilegedStartService(self) -> None:
        """
        Listen on every endpoint.

        @raise SystemExit: when an endpoint cannot listen (C{twistd -n},
            C{twist}): the reason is logged in one line.
        @raise StartupError: the same for a daemonizing twistd, which
            reports it on the terminal and exits with status 1.
        """
        super().privilegedStartService()  # type: ignore[no-untyped-call]
        self._listen()

    def startService(self) -> None:
        """
        Listen, unless L{privilegedStartService} did.
        """
        super().startService()  # type: ignore[no-untyped-call]
        if self.ports is None:
            self._listen()

    def _listen_on(self, endpoint: str | IStreamServerEndpoint) -> Deferred[IListeningPort]:
        """
        Listen on one endpoint (subclasses listen otherwise).
        """
        d: Deferred[IListeningPort] = self.server.listen(endpoint)
        return d

    def _listen(self) -> None:
        self.ports = []
        for endpoint, name in zip(self.endpoints, self.names):
            port = self._now(lambda: self._listen_on(endpoint), name)
            if port is None:
                continue
            self.ports.append(port)
            log.info(
                "smtphooks {version} listening on {description} ({address})",
                version=__version__,
                description=name,
                address=_describe(port),
            )
        if self._metrics is not None:
            from .metrics import serve_metrics

            where = self._metrics
            self.metrics_port = self._now(
                lambda: serve_metrics(self._reactor, where, self._registry), where
            )
            if self.metrics_port is not None:
                log.info(
                    "serving Prometheus metrics on {description} ({address})",
                    description=where,
                    address=_describe(self.metrics_port),
                )
        if self._maildir is not None:
            log.info("delivering to the Maildir {path}", path=self._maildir)

    def _now(self, listen: Callable[[], Deferred[IListeningPort]], name: str) -> Any:
        """
        Call C{listen} and give its port, which endpoints give at once; a
        failure ends startup (L{_cannot_start}).

        @return: the port, or L{None} for an endpoint that listens later.
        """
        outcome: list[Any] = []
        try:
            d = listen()
        except Exception as e:
            self._cannot_start(name, e)
        d.addBoth(outcome.append)
        if not outcome:
            # An endpoint that listens asynchronously; nothing in
            # Twisted does, but a plugin might.
            d.addErrback(self._late_failure, name)
            return None
        result = outcome[0]
        if isinstance(result, Failure):
            self._cannot_start(name, result.value or Exception("failed"))
        return result

    def _close_ports(self) -> None:
        """
        Close what L{_listen} opened, when startup fails half-way.
        """
        self.server.close(0)
        if self.metrics_port is not None:
            self.metrics_port.stopListening()
            self.metrics_port = None

    def _cannot_start(self, description: str, error: BaseException) -> NoReturn:
        reason = _reason(error)
        message = f"cannot listen on {description}: {reason}"
        log.critical(
            "cannot listen on {description}: {reason}", description=description, reason=reason
        )
        self._close_ports()
        runner = self._runner
        if runner is None or not hasattr(runner, "get"):
            runner = {}
        if "nodaemon" in runner and not runner["nodaemon"]:
            # A daemonizing twistd: its parent process waits on a status
            # pipe for "0" (started) or "1 <message>", prints the message
            # and exits with status 1.
            pipe = runner.get("statusPipe")
            if pipe is None:
                raise StartupError(message)
            try:
                os.write(pipe, b"1 " + message.encode("utf-8", "replace")[:98])
                os.close(pipe)
            except OSError:
                pass
            runner["statusPipe"] = None
        elif "nodaemon" in runner or not runner:
            # twistd -n (or no runner we know): the log has the line above;
            # the terminal gets it too, even when the log goes to a file.
            # (Under twist, logging has not begun yet, and twisted.logger
            # writes critical events to standard error itself.)
            stderr = sys.__stderr__
            if stderr is not None:
                stderr.write(f"smtphooks: {message}\n")
                stderr.flush()
        pidfile = runner.get("pidfile")
        if pidfile:
            try:
                os.unlink(pidfile)
            except OSError:
                pass
        raise SystemExit(1)

    def _late_failure(self, failure: Failure, description: str) -> None:
        log.critical(
            "cannot listen on {description}: {error}; stopping",
            description=description,
            error=_one_line(failure.value or Exception("failed")),
        )
        self._reactor.stop()

    def stopService(self) -> Deferred[None]:
        """
        Stop listening and let the sessions finish (see
        L{smtphooks.SMTPServer.close}).

        @return: a L{Deferred} that fires when every session is gone.
        """
        super().stopService()  # type: ignore[no-untyped-call]
        count = len(self.server.connections)
        log.info(
            "stopping: no more connections; {count} session(s) may finish their transaction",
            count=count,
        )
        d: Deferred[None] = maybeDeferred(self.server.close)
        metrics, self.metrics_port = self.metrics_port, None

        async def done(result: None) -> None:
            log.info("stopped: every session is closed")
            if metrics is not None:
                await maybeDeferred(metrics.stopListening)

        return d.addCallback(lambda result: Deferred.fromCoroutine(done(result)))


def _reason(error: BaseException) -> str:
    """
    Why an endpoint could not listen, in a few words: C{Address already in
    use} rather than Twisted's longer C{CannotListenError} text.
    """
    from twisted.internet.error import CannotListenError

    if isinstance(error, CannotListenError):
        strerror = getattr(error.socketError, "strerror", None)
        if strerror:
            return str(strerror)
    return _one_line(error)


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _describe(port: Any) -> str:
    try:
        host = port.getHost()
    except Exception:
        return "?"
    address = getattr(host, "host", None)
    number = getattr(host, "port", None)
    if address is not None and number is not None:
        return f"{address}:{number}"
    name = getattr(host, "name", None)
    return str(name if name is not None else host)


def makeService(options: Options) -> IService:
    """
    The service that twistd runs, named C{"smtp"} in a L{MultiService}: an
    L{SMTPService}, or with C{--workers} N > 1 a
    L{smtphooks._workers.WorkersService} that binds the sockets and runs N
    worker processes on them.

    @param options: parsed L{Options}.
    """
    top = MultiService()  # type: ignore[no-untyped-call]
    runner = getattr(options, "parent", None)
    maildir = options.maildir.path if options.maildir is not None else None
    smtp: SMTPService
    if options["workers"] > 1:
        from ._workers import WorkersService

        smtp = WorkersService(options, runner, maildir)
    else:
        smtp = SMTPService(
            options.server,
            list(options["listen"]),
            runner,
            maildir,
            metrics=options["metrics"],
            registry=options.registry,
            reactor=options._get_reactor(),
        )
    smtp.setName("smtp")  # type: ignore[no-untyped-call]
    smtp.setServiceParent(top)  # type: ignore[no-untyped-call]
    return top

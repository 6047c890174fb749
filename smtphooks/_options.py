"""
The server's options: one table that both L{SMTPServer} and the twistd
plugin read, so a name, its type, its default and its help text are written
once.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any, Final, Iterable, Mapping

__all__ = ["OPTIONS", "OptionSpec", "Options", "parse_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class OptionSpec:
    """
    One option.

    @ivar name: its keyword name (the twistd plugin spells it in kebab-case).
    @ivar kind: how its value is checked and parsed from a command line:
        C{"str"}, C{"text"} (a string or L{None}), C{"bool"}, C{"count"} (an
        int >= 0), C{"seconds"} (a number > 0), C{"strlist"}, C{"networks"}
        (L{False}, L{True} for loopback only, or a list of CIDR strings),
        C{"mapping"}, C{"object"} (anything; not settable from a command
        line), C{"path"} (a file name or L{None}).
    @ivar default: the value when not given.
    @ivar help: one line for C{--help}.
    @ivar implemented: L{False} while a value other than the default is
        refused because the feature does not exist yet.
    """

    name: str
    kind: str
    default: Any
    help: str
    implemented: bool = True


OPTIONS: Final[tuple[OptionSpec, ...]] = (
    OptionSpec("name", "str", None, "host name in the greeting and replies (default: the FQDN)"),
    OptionSpec("banner", "str", "", "extra text for the greeting"),
    OptionSpec("size", "count", 0, "maximum message size in bytes (0: no limit)"),
    OptionSpec("hide_size", "bool", False, "do not advertise SIZE (it is still enforced)"),
    OptionSpec(
        "auth_methods", "strlist", ["PLAIN", "LOGIN"], "SASL mechanisms offered"
    ),
    OptionSpec("auth_optional", "bool", False, "do not require AUTH before MAIL"),
    OptionSpec("auth_required_message", "text", None, "text of the 530 reply when AUTH is needed"),
    OptionSpec(
        "allow_insecure_auth",
        "bool",
        False,
        "allow AUTH on a connection without TLS",
    ),
    OptionSpec("disabled_commands", "strlist", [], "commands to treat as unknown"),
    OptionSpec("hide_starttls", "bool", False, "do not advertise or accept STARTTLS"),
    OptionSpec("hide_pipelining", "bool", False, "do not advertise PIPELINING"),
    OptionSpec("hide_8bitmime", "bool", False, "do not advertise or accept 8BITMIME"),
    OptionSpec("hide_smtputf8", "bool", False, "do not advertise or accept SMTPUTF8"),
    OptionSpec("hide_dsn", "bool", False, "do not advertise or accept DSN"),
    OptionSpec(
        "hide_enhancedstatuscodes",
        "bool",
        False,
        "do not advertise or send enhanced status codes",
    ),
    OptionSpec("hide_chunking", "bool", False, "do not advertise or accept CHUNKING (BDAT)"),
    OptionSpec("secure", "bool", False, "implicit TLS on every listener"),
    OptionSpec("tls", "object", None, "a TLS context factory; enables STARTTLS"),
    OptionSpec("tls_cert", "path", None, "PEM certificate chain file"),
    OptionSpec("tls_key", "path", None, "PEM private key file"),
    OptionSpec("sni", "mapping", {}, "server name -> TLS context factory"),
    OptionSpec(
        "request_cert", "bool", False, "ask clients for a certificate"
    ),
    OptionSpec("disable_reverse_lookup", "bool", False, "do not look up client host names"),
    OptionSpec("resolver", "object", None, "an IResolver for the reverse lookup"),
    OptionSpec("max_clients", "count", 0, "maximum simultaneous connections (0: no limit)"),
    OptionSpec("max_recipients", "count", 0, "maximum recipients per message (0: no limit)"),
    OptionSpec(
        "lenient_addresses", "bool", False, "accept malformed but common addresses"
    ),
    OptionSpec("max_command_length", "count", 512, "longest command line accepted, in bytes"),
    OptionSpec(
        "use_proxy", "networks", False, "expect a PROXY protocol header"
    ),
    OptionSpec(
        "use_xclient", "networks", False, "accept XCLIENT from these clients"
    ),
    OptionSpec(
        "use_xforward", "networks", False, "accept XFORWARD from these clients"
    ),
    OptionSpec("lmtp", "bool", False, "speak LMTP instead of SMTP"),
    OptionSpec("socket_timeout", "seconds", 60.0, "idle seconds before a client is disconnected"),
    OptionSpec(
        "command_timeout", "seconds", 60.0, "seconds a client may take to send one command line"
    ),
    OptionSpec("data_timeout", "seconds", 600.0, "seconds a client may take to send one message"),
    OptionSpec("close_timeout", "seconds", 30.0, "seconds a graceful close waits for sessions"),
    OptionSpec(
        "max_unauthenticated_commands",
        "count",
        10,
        "commands allowed before AUTH when AUTH is required",
    ),
    OptionSpec(
        "max_unrecognized_commands", "count", 10, "unknown commands before disconnecting"
    ),
    OptionSpec("hook_timeout", "seconds", 60.0, "seconds a hook may take"),
    OptionSpec(
        "max_clients_per_ip", "count", 0, "maximum connections from one address (0: no limit)"
    ),
)

_BY_NAME: Final[Mapping[str, OptionSpec]] = {spec.name: spec for spec in OPTIONS}


def parse_networks(name: str, value: Iterable[object]) -> tuple[Network, ...]:
    """
    Parse a list of CIDR strings.

    @raise TypeError: if an entry is not a string.
    @raise ValueError: if an entry is not a network.
    """
    out = []
    for entry in value:
        if not isinstance(entry, str):
            raise TypeError(f"option {name!r}: networks must be strings, not {entry!r}")
        try:
            out.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"option {name!r}: {entry!r} is not an address or network") from None
    return tuple(out)


def _check(spec: OptionSpec, value: Any) -> Any:
    name, kind = spec.name, spec.kind
    if kind == "str":
        if value is None and spec.default is None:
            return None
        if not isinstance(value, str):
            raise TypeError(f"option {name!r} must be a string, not {value!r}")
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError(f"option {name!r} must not contain control characters")
        return value
    if kind in ("text", "path"):
        if value is not None and not isinstance(value, str):
            raise TypeError(f"option {name!r} must be a string or None, not {value!r}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise TypeError(f"option {name!r} must be True or False, not {value!r}")
        return value
    if kind == "count":
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"option {name!r} must be an int, not {value!r}")
        if value < 0:
            raise ValueError(f"option {name!r} must be 0 or more, not {value!r}")
        return value
    if kind == "seconds":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"option {name!r} must be a number of seconds, not {value!r}")
        if not value > 0 or value != value or value == float("inf"):
            raise ValueError(f"option {name!r} must be a positive number, not {value!r}")
        return float(value)
    if kind == "strlist":
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise TypeError(f"option {name!r} must be a list of strings, not {value!r}")
        items = list(value)
        for item in items:
            if not isinstance(item, str):
                raise TypeError(f"option {name!r} must be a list of strings, not {value!r}")
        return [item.upper() for item in items]
    if kind == "networks":
        if isinstance(value, bool):
            return value
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise TypeError(
                f"option {name!r} must be True, False or a list of networks, not {value!r}"
            )
        return parse_networks(name, value)
    if kind == "mapping":
        if not isinstance(value, Mapping):
            raise TypeError(f"option {name!r} must be a mapping, not {value!r}")
        return dict(value)
    return value


class Options:
    """
    Checked option values, as attributes named like the options.
    """

    name: str
    banner: str
    size: int
    hide_size: bool
    auth_methods: list[str]
    auth_optional: bool
    auth_required_message: str | None
    allow_insecure_auth: bool
    disabled_commands: list[str]
    hide_starttls: bool
    hide_pipelining: bool
    hide_8bitmime: bool
    hide_smtputf8: bool
    hide_dsn: bool
    hide_enhancedstatuscodes: bool
    hide_chunking: bool
    secure: bool
    tls: Any
    tls_cert: str | None
    tls_key: str | None
    sni: dict[str, Any]
    request_cert: bool
    disable_reverse_lookup: bool
    resolver: Any
    max_clients: int
    max_recipients: int
    lenient_addresses: bool
    max_command_length: int
    use_proxy: bool | tuple[Network, ...]
    use_xclient: bool | tuple[Network, ...]
    use_xforward: bool | tuple[Network, ...]
    lmtp: bool
    socket_timeout: float
    command_timeout: float
    data_timeout: float
    close_timeout: float
    max_unauthenticated_commands: int
    max_unrecognized_commands: int
    hook_timeout: float
    max_clients_per_ip: int

    def __init__(self, values: Mapping[str, Any]) -> None:
        """
        @param values: option names and values; the rest take their defaults.
        @raise TypeError: for an unknown option or a value of the wrong type.
        @raise ValueError: for a bad value, contradictory options, or an
            option whose feature this version does not have.
        """
        for key in values:
            if key not in _BY_NAME:
                raise TypeError(f"unknown option {key!r}")
        for spec in OPTIONS:
            if spec.name in values:
                value = _check(spec, values[spec.name])
                if not spec.implemented and value != _check(spec, spec.default):
                    raise ValueError(
                        f"option {spec.name!r} is not supported by this version of smtphooks"
                    )
            else:
                value = _check(spec, spec.default)
            setattr(self, spec.name, value)
        if not self.name:
            self.name = socket.getfqdn()
        self._check_combinations()
        if self.max_command_length < 64:
            raise ValueError("option 'max_command_length' must be at least 64")

    def _check_combinations(self) -> None:
        from ._auth import MECHANISMS

        for method in self.auth_methods:
            if method not in MECHANISMS:
                raise ValueError(
                    f"option 'auth_methods': unknown mechanism {method!r} "
                    f"(known: {', '.join(MECHANISMS)})"
                )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("options 'tls_cert' and 'tls_key' go together")
        if self.tls is not None and self.tls_cert is not None:
            raise ValueError("give either option 'tls' or 'tls_cert'/'tls_key', not both")
        has_tls = self.tls is not None or self.tls_cert is not None
        for name in ("secure", "request_cert"):
            if getattr(self, name) and not has_tls:
                raise ValueError(f"option {name!r} needs 'tls' or 'tls_cert'/'tls_key'")
        if self.sni and not has_tls:
            raise ValueError("option 'sni' needs a default certificate: 'tls' or 'tls_cert'")

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{spec.name}={getattr(self, spec.name)!r}"
            for spec in OPTIONS
            if getattr(self, spec.name) != spec.default
        )
        return f"Options({shown})"

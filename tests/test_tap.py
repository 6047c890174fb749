"""
Tests for L{smtphooks.tap}: the command line of C{twistd smtphooks}, the
password file helpers, and the service it builds.
"""

from __future__ import annotations

import io
import os
import socket
import sys
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import capturedLogs
from twisted.python import usage
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from smtphooks import tap
from smtphooks._auth import AuthRequest
from smtphooks._options import OPTIONS
from smtphooks._session import Session
from smtphooks.maildir import MaildirDelivery
from smtphooks.tap import (
    DEFAULT_LISTEN,
    AuthUsers,
    LogRejections,
    Options,
    SMTPService,
    StartupError,
    hash_password,
    makeService,
    read_users,
    verify_password,
)

from .test_maildir import FakeReactor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def kebab(name: str) -> str:
    return "--" + name.replace("_", "-")


class OptionsTests(SynchronousTestCase):
    """
    L{Options} parses and checks every option before anything listens; a
    mistake is one L{usage.UsageError} that names the option.
    """

    def setUp(self) -> None:
        self.maildir = self.mktemp()

    def parse(self, *argv: str, maildir: bool = True) -> Options:
        options = Options()
        args = list(argv)
        if maildir:
            args = ["--maildir", self.maildir, *args]
        options.parseOptions(args)
        return options

    def assertUsageError(self, *argv: str, mentions: str, maildir: bool = True) -> str:
        """
        Parsing C{argv} fails with a one-line L{usage.UsageError} that
        contains C{mentions}.
        """
        error = self.assertRaises(usage.UsageError, self.parse, *argv, maildir=maildir)
        message = str(error)
        self.assertIn(mentions, message)
        self.assertNotIn("\n", message)
        return message

    def test_defaults(self) -> None:
        """
        Without options: listen on C{tcp:2525:interface=127.0.0.1}, deliver
        to C{./Maildir}, server options at their defaults.
        """
        here = os.path.abspath(self.mktemp())
        os.makedirs(here)
        cwd = os.getcwd()
        os.chdir(here)
        self.addCleanup(os.chdir, cwd)
        options = self.parse(maildir=False)
        self.assertEqual(options["listen"], [DEFAULT_LISTEN])
        self.assertEqual(DEFAULT_LISTEN, "tcp:2525:interface=127.0.0.1")
        assert options.maildir is not None
        self.assertEqual(options.maildir.path, os.path.join(here, "Maildir"))
        for sub in ("tmp", "new", "cur"):
            self.assertTrue(os.path.isdir(os.path.join(here, "Maildir", sub)))
        server = options.server
        self.assertIs(server.on_data.__wrapped__, options.maildir)
        self.assertEqual(server.options.size, 0)
        self.assertEqual(server.options.socket_timeout, 60.0)
        self.assertEqual(options.maildir.hostname, server.options.name)

    def test_listen_repeatable(self) -> None:
        """
        C{--listen} (or C{-l}) may be given several times; the default is
        then not used.
        """
        options = self.parse("--listen", "tcp:2525", "-l", "unix:/tmp/x.sock", "--listen=tcp:0")
        self.assertEqual(options["listen"], ["tcp:2525", "unix:/tmp/x.sock", "tcp:0"])

    def test_bad_endpoint(self) -> None:
        """
        An endpoint description that does not parse is refused.
        """
        self.assertUsageError("--listen", "nonsense:25", mentions="--listen nonsense:25")
        self.assertUsageError("--listen", "tcp:port", mentions="--listen tcp:port")

    def test_every_server_option_is_generated(self) -> None:
        """
        Every L{SMTPServer} option that can be written on a command line is
        an option of the plugin, in kebab-case: C{bool}s as flags, the others
        with a value.
        """
        options = Options()
        flags = {flag[0] for flag in options.optFlags}
        parameters = {parameter[0] for parameter in options.optParameters}
        for spec in OPTIONS:
            name = spec.name.replace("_", "-")
            if spec.kind == "object":
                self.assertNotIn(name, flags | parameters)
            elif spec.kind == "bool":
                self.assertIn(name, flags)
            else:
                self.assertIn(name, parameters)
        self.assertIn("--max-clients-per-ip", str(options))
        self.assertIn("--hide-enhancedstatuscodes", str(options))

    def test_typed_options(self) -> None:
        """
        Values are parsed by kind: counts as ints, seconds as floats, lists
        comma-separated; flags set their option to L{True}.
        """
        options = self.parse(
            "--size",
            "1048576",
            "--socket-timeout",
            "2.5",
            "--close-timeout=10",
            "--disabled-commands",
            "vrfy, help",
            "--hide-size",
            "--hide-dsn",
            "--banner",
            "hello there",
            "--name",
            "mx.example.com",
            "--max-clients-per-ip",
            "7",
            "--auth-required-message",
            "Log in first",
        )
        opts = options.server.options
        self.assertEqual(opts.size, 1048576)
        self.assertEqual(opts.socket_timeout, 2.5)
        self.assertEqual(opts.close_timeout, 10.0)
        self.assertEqual(opts.disabled_commands, ["VRFY", "HELP"])
        self.assertIs(opts.hide_size, True)
        self.assertIs(opts.hide_dsn, True)
        self.assertIs(opts.hide_chunking, False)
        self.assertEqual(opts.banner, "hello there")
        self.assertEqual(opts.name, "mx.example.com")
        self.assertEqual(opts.max_clients_per_ip, 7)
        self.assertEqual(opts.auth_required_message, "Log in first")
        assert options.maildir is not None
        self.assertEqual(options.maildir.hostname, "mx.example.com")

    def test_bad_numbers(self) -> None:
        """
        A count or a number of seconds that does not parse, or is out of
        range, is refused with a message naming the option.
        """
        self.assertUsageError("--size", "ten", mentions="--size must be a whole number")
        self.assertUsageError("--max-clients", "-1", mentions="--max-clients")
        self.assertUsageError("--max-recipients", "1.5", mentions="--max-recipients")
        self.assertUsageError("--socket-timeout", "0", mentions="--socket-timeout must be")
        self.assertUsageError("--hook-timeout", "soon", mentions="--hook-timeout")
        self.assertUsageError("--close-timeout", "inf", mentions="--close-timeout")
        self.assertUsageError("--close-timeout", "nan", mentions="--close-timeout")

    def test_server_checks_named_as_flags(self) -> None:
        """
        What L{SMTPServer} itself refuses is reported with the option's
        command-line name.
        """
        message = self.assertUsageError(
            "--max-command-length", "10", mentions="--max-command-length"
        )
        self.assertNotIn("max_command_length", message)
        self.assertUsageError("--name", "a\x01b", mentions="--name")

    def test_unsupported_options(self) -> None:
        """
        Options of features this version does not have are listed, and
        refused with the server's "not supported" error.
        """
        examples = {"bool": [], "networks": ["yes"], "count": ["5"], "strlist": ["PLAIN"]}
        unsupported = [spec for spec in OPTIONS if not spec.implemented and spec.kind in examples]
        for spec in unsupported:
            self.assertUsageError(
                kebab(spec.name),
                *examples[spec.kind],
                mentions=f"{kebab(spec.name)} is not supported",
            )
        if unsupported:
            self.assertIn("(not supported by this version)", " ".join(str(Options()).split()))

    def test_option_names_in_messages(self) -> None:
        """
        Server errors name options the way the command line spells them.
        """
        rewrite = tap._option_names_to_flags
        self.assertEqual(
            rewrite("option 'request_cert' needs 'tls' or 'tls_cert'/'tls_key'"),
            "--request-cert needs 'tls' or --tls-cert/--tls-key",
        )
        self.assertEqual(rewrite("tls_cert: 'x' holds no PEM"), "--tls-cert: 'x' holds no PEM")
        self.assertEqual(rewrite("option 'size' must be"), "--size must be")
        self.assertEqual(rewrite("'sizes' and 'name'"), "'sizes' and --name")

    def test_networks(self) -> None:
        """
        A networks option takes yes, no, or CIDR networks; anything else is
        refused with its name.
        """
        self.assertUsageError("--use-xforward", "10.0.0.0/33", mentions="--use-xforward")
        self.assertUsageError("--use-xforward", "not-a-net", mentions="'not-a-net'")
        options = Options()
        coerce = dict((p[0], p[4]) for p in options.optParameters if len(p) > 4)["use-proxy"]
        self.assertIs(coerce("yes"), True)
        self.assertIs(coerce("off"), False)
        self.assertEqual(coerce("10.0.0.0/8, ::1"), ["10.0.0.0/8", "::1"])

    def test_tls_files(self) -> None:
        """
        C{--tls-cert} and C{--tls-key} must name readable files; then they
        are handed to the server (which refuses them while TLS is not in
        this version).
        """
        self.assertUsageError(
            "--tls-cert", "/nonexistent/cert.pem", mentions="--tls-cert: cannot read"
        )
        self.assertUsageError(
            "--tls-key", "/nonexistent/key.pem", mentions="--tls-key: cannot read"
        )
        existing = self.mktemp()
        with open(existing, "w") as f:
            f.write("not really a certificate\n")
        try:
            self.parse("--tls-cert", existing, "--tls-key", existing)
        except usage.UsageError as e:
            self.assertIn("--tls-", str(e))
            self.assertNotIn("\n", str(e))

    def test_sni(self) -> None:
        """
        C{--sni NAME=CERT:KEY,...} loads each certificate; a bad one is
        refused naming the server name.
        """
        from .certs import ALPHA_NAME, BETA_NAME, test_pki

        pki = test_pki()
        tls = ["--tls-cert", pki.server.cert_path, "--tls-key", pki.server.key_path]
        options = self.parse(
            *tls,
            "--sni",
            f"{ALPHA_NAME}={pki.alpha.cert_path}:{pki.alpha.key_path},"
            f"{BETA_NAME}={pki.beta.cert_path}:{pki.beta.key_path}",
        )
        self.assertEqual(sorted(options.server.options.sni), [ALPHA_NAME, BETA_NAME])
        for value in options.server.options.sni.values():
            self.assertTrue(callable(getattr(value, "getContext", None)))
        self.assertUsageError(
            *tls, "--sni", f"{ALPHA_NAME}={pki.alpha.key_path}:{pki.alpha.key_path}",
            mentions=f"--sni {ALPHA_NAME}: {pki.alpha.key_path!r} holds no PEM certificate",
        )
        self.assertUsageError(
            *tls, "--sni", "nameonly", mentions="--sni must be a list of name=value"
        )

    def test_workers(self) -> None:
        """
        C{--workers} is a whole number, 1 or more (1, the default, is a
        single process); C{--reuse-port} goes with it.
        """
        self.assertEqual(self.parse()["workers"], 1)
        self.assertEqual(self.parse("--workers", "4")["workers"], 4)
        for bad in ("0", "-2", "two", ""):
            self.assertUsageError(
                "--workers", bad, mentions="--workers must be a whole number (1 or more)"
            )
        self.assertTrue(self.parse("--workers", "2", "--reuse-port")["reuse-port"])
        self.assertUsageError("--reuse-port", mentions="--reuse-port needs --workers 2 or more")

    def test_argv_kept(self) -> None:
        """
        The command line and the directory it was parsed in are kept, for
        the workers, which parse the same.
        """
        options = self.parse("--workers", "2", "--size", "100")
        self.assertEqual(
            options.argv, ["--maildir", self.maildir, "--workers", "2", "--size", "100"]
        )
        self.assertEqual(options.cwd, os.getcwd())

    def test_metrics(self) -> None:
        """
        C{--metrics} sets a L{PrometheusObserver} on the server, in a
        registry of its own that also has the process metrics; with
        C{--workers}, the master's server (which serves nothing) has none.
        A malformed endpoint is refused by name.
        """
        try:
            from smtphooks.metrics import PrometheusObserver
        except ImportError:
            raise SkipTest("prometheus_client is not installed")
        options = self.parse("--metrics", "tcp:9100:interface=127.0.0.1")
        self.assertEqual(options["metrics"], "tcp:9100:interface=127.0.0.1")
        self.assertIsInstance(options.server.observer, PrometheusObserver)
        self.assertIs(options.server.observer.registry, options.registry)
        self.assertEqual(options.registry.get_sample_value("smtphooks_connections_total"), 0)
        self.assertIsNotNone(options.registry.get_sample_value("process_cpu_seconds_total"))
        second = self.parse("--metrics", "tcp:9100")
        self.assertIsNot(second.registry, options.registry)
        workers = self.parse("--metrics", "tcp:9100", "--workers", "2")
        self.assertIsNone(workers.server.observer)
        self.assertIsNone(workers.registry)
        self.assertUsageError("--metrics", "bogus:1", mentions="--metrics bogus:1")

    def test_metrics_without_prometheus_client(self) -> None:
        """
        Without C{prometheus_client}, C{--metrics} is one line that says
        what to install.
        """
        import smtphooks

        saved = {name: sys.modules.get(name) for name in ("prometheus_client", "smtphooks.metrics")}
        attribute = smtphooks.__dict__.get("metrics")

        def restore() -> None:
            for name, module in saved.items():
                if module is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = module
            if attribute is not None:
                smtphooks.metrics = attribute

        self.addCleanup(restore)
        sys.modules["prometheus_client"] = None  # type: ignore[assignment]
        sys.modules.pop("smtphooks.metrics", None)
        smtphooks.__dict__.pop("metrics", None)
        self.assertUsageError(
            "--metrics", "tcp:9100",
            mentions="--metrics needs prometheus_client: pip install 'smtphooks[metrics]'",
        )

    def test_maildir_not_usable(self) -> None:
        """
        A Maildir that cannot be created is refused.
        """
        afile = self.mktemp()
        with open(afile, "w"):
            pass
        self.assertUsageError(
            "--maildir", os.path.join(afile, "Maildir"), mentions="--maildir", maildir=False
        )

    def test_maildir_for_runtime_user(self) -> None:
        """
        Run as root with twistd's C{--uid}, the Maildir directories the
        plugin creates belong to the user the server will run as; existing
        ones are left alone.
        """
        self.patch(os, "getuid", lambda: 0)
        calls: list[tuple[str, int, int]] = []
        self.patch(os, "chown", lambda path, uid, gid: calls.append((path, uid, gid)))
        path = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(path, "new"))
        options = Options()
        runner: Any = {"uid": 1234, "gid": 5678}
        options.parent = runner
        options.parseOptions(["--maildir", path])
        self.assertEqual(
            sorted(calls),
            [(os.path.join(path, sub), 1234, 5678) for sub in ("cur", "tmp")],
        )

    def test_documented(self) -> None:
        """
        The operations guide describes every option of the plugin.
        """
        with open(os.path.join(ROOT, "docs", "operations.md"), encoding="utf-8") as f:
            guide = f.read()
        names = [spec.name.replace("_", "-") for spec in OPTIONS if spec.kind != "object"]
        names += ["listen", "maildir", "hooks", "auth-users", "hash-password", "version"]
        names += ["metrics", "workers"]
        for name in names:
            self.assertIn(f"`--{name}", guide)

    def test_version(self) -> None:
        """
        C{--version} prints the versions and exits with status 0.
        """
        options = Options()
        options.stdout = io.StringIO()
        exit = self.assertRaises(SystemExit, options.parseOptions, ["--version"])
        self.assertEqual(exit.code, 0)
        self.assertRegex(options.stdout.getvalue(), r"^smtphooks \S+ \(Twisted \S+\)\n$")


class HooksOptionTests(SynchronousTestCase):
    """
    C{--hooks package.module:object} replaces the default hooks.
    """

    def parse(self, *argv: str) -> Options:
        options = Options()
        options.parseOptions(["--maildir", self.mktemp(), *argv])
        return options

    def assertRefused(self, spec: str, mentions: str) -> None:
        error = self.assertRaises(usage.UsageError, self.parse, "--hooks", spec)
        self.assertIn(mentions, str(error))
        self.assertNotIn("\n", str(error))

    def test_hooks_class_without_on_data(self) -> None:
        """
        A L{smtphooks.Hooks} subclass is instantiated; its hooks are used,
        and since it does not override C{on_data}, messages still go to the
        Maildir.
        """
        from .tap_hooks import RejectSome

        options = self.parse("--hooks", "tests.tap_hooks:RejectSome")
        server = options.server
        self.assertIsInstance(server.on_rcpt_to.__wrapped__.__self__, RejectSome)
        self.assertIsInstance(server.on_data.__wrapped__, MaildirDelivery)
        self.assertIs(server.on_data.__wrapped__, options.maildir)

    def test_hooks_with_on_data(self) -> None:
        """
        An object with its own C{on_data} gets the messages: no Maildir is
        created.
        """
        from .tap_hooks import OwnData

        options = Options()
        options.parseOptions(["--hooks", "tests.tap_hooks:OwnData"])
        self.assertIsNone(options.maildir)
        self.assertIsInstance(options.server.on_data.__wrapped__.__self__, OwnData)

    def test_hooks_with_on_data_and_maildir(self) -> None:
        """
        C{--maildir} makes no sense with hooks that store messages
        themselves.
        """
        self.assertRefused("tests.tap_hooks:OwnData", "--maildir cannot be used")

    def test_module_as_hooks(self) -> None:
        """
        C{--hooks package.module} uses the module's functions.
        """
        from . import tap_hooks

        options = self.parse("--hooks", "tests.tap_hooks")
        self.assertIs(options.server.on_mail_from.__wrapped__, tap_hooks.on_mail_from)

    def test_import_errors(self) -> None:
        """
        A module that cannot be imported, a missing attribute, a class that
        cannot be instantiated, an object without hooks and a malformed
        value are each one line naming the problem.
        """
        self.assertRefused("tests.no_such_module:Hooks", "cannot import tests.no_such_module")
        self.assertRefused("tests.tap_hooks:Missing", "has no attribute 'Missing'")
        self.assertRefused("tests.tap_hooks:Broken", "RuntimeError: boom")
        self.assertRefused("tests.tap_hooks:nothing", "has none of the hooks")
        self.assertRefused("tests.tap_hooks:", "must look like package.module:object")
        self.assertRefused(":Hooks", "must look like package.module:object")


class PasswordTests(SynchronousTestCase):
    """
    C{--hash-password}, L{hash_password}, L{verify_password} and the
    C{--auth-users} file.
    """

    def test_hash_roundtrip(self) -> None:
        """
        A hash verifies its password and no other; two hashes of one
        password differ (random salt).
        """
        encoded = hash_password("correct horse", n=2**10)
        self.assertTrue(encoded.startswith("scrypt$1024$8$1$"))
        self.assertTrue(verify_password("correct horse", encoded))
        self.assertFalse(verify_password("correct horsE", encoded))
        self.assertNotEqual(encoded, hash_password("correct horse", n=2**10))

    def test_malformed_hash(self) -> None:
        """
        A malformed or unreasonable hash never verifies.
        """
        for encoded in [
            "",
            "plain",
            "scrypt$1024$8$1$!!$!!",
            "scrypt$1000$8$1$c2FsdA==$" + "A" * 44,
            "scrypt$1099511627776$8$1$c2FsdA==$" + "A" * 44,
            "pbkdf2$1$2$3$4$5",
        ]:
            self.assertFalse(verify_password("x", encoded), encoded)

    def hash_with(self, stdin: io.StringIO, getpass: Any = None) -> str:
        options = Options()
        options.stdin = stdin
        options.stdout = io.StringIO()
        options.getpass = getpass
        exit = self.assertRaises(SystemExit, options.parseOptions, ["--hash-password"])
        self.assertEqual(exit.code, 0)
        out = options.stdout.getvalue()
        self.assertTrue(out.endswith("\n"))
        self.assertEqual(out.count("\n"), 1)
        return out.strip()

    def test_hash_password_from_stdin(self) -> None:
        """
        Not on a terminal, C{--hash-password} reads one line and prints a
        hash that verifies it; nothing listens.
        """
        encoded = self.hash_with(io.StringIO("s3cret pass\n"))
        self.assertTrue(verify_password("s3cret pass", encoded))

    def test_hash_password_prompts(self) -> None:
        """
        On a terminal, it asks twice with getpass.
        """
        prompts: list[str] = []

        def getpass(prompt: str) -> str:
            prompts.append(prompt)
            return "typed"

        encoded = self.hash_with(_TTY(), getpass)
        self.assertEqual(len(prompts), 2)
        self.assertTrue(verify_password("typed", encoded))

    def test_hash_password_mistakes(self) -> None:
        """
        An empty password, or two different ones, are refused.
        """
        options = Options()
        options.stdin = io.StringIO("\n")
        self.assertRaises(usage.UsageError, options.parseOptions, ["--hash-password"])
        answers = iter(["one", "two"])
        options = Options()
        options.stdin = _TTY()
        options.getpass = lambda prompt: next(answers)
        error = self.assertRaises(usage.UsageError, options.parseOptions, ["--hash-password"])
        self.assertIn("differ", str(error))

    def write_users(self, text: str) -> str:
        path: str = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_read_users(self) -> None:
        """
        The file has C{user:hash} lines; blank lines and comments are
        skipped.
        """
        alice = hash_password("a", n=2**10)
        path = self.write_users(f"# users\n\nalice:{alice}\nbob@example.com:{alice}\n")
        self.assertEqual(read_users(path), {"alice": alice, "bob@example.com": alice})

    def test_bad_users_file(self) -> None:
        """
        A missing file or a malformed line is a one-line error naming the
        option and the line (never the hash).
        """
        good = hash_password("a", n=2**10)
        cases = [
            ("/nonexistent/users", "--auth-users: cannot read /nonexistent/users"),
            (self.write_users("alice\n"), "line 1: expected user:hash"),
            (self.write_users(f"alice:{good}\nbob:plaintext\n"), "line 2 (user 'bob')"),
            (self.write_users(f"alice:{good}\nalice:{good}\n"), "appears twice"),
        ]
        for path, mentions in cases:
            options = Options()
            error = self.assertRaises(
                usage.UsageError,
                options.parseOptions,
                ["--maildir", self.mktemp(), "--auth-users", path],
            )
            self.assertIn(mentions, str(error))
            self.assertIn("--auth-users", str(error))
            self.assertNotIn(good, str(error))

    def test_auth_users_given_to_server(self) -> None:
        """
        A good file becomes the server's C{on_auth}, or (while the server
        has no AUTH) a one-line error naming C{--auth-users}.
        """
        path = self.write_users(f"alice:{hash_password('a', n=2**10)}\n")
        options = Options()
        try:
            options.parseOptions(["--maildir", self.mktemp(), "--auth-users", path])
        except usage.UsageError as e:
            self.assertTrue(str(e).startswith("--auth-users: "), str(e))
            self.assertIn("not supported", str(e))
        else:
            self.assertIsInstance(options.server.on_auth, AuthUsers)

    def test_auth_users_and_hooks_on_auth(self) -> None:
        """
        C{--auth-users} and hooks with their own C{on_auth} conflict.
        """
        path = self.write_users(f"alice:{hash_password('a', n=2**10)}\n")
        options = Options()
        error = self.assertRaises(
            usage.UsageError,
            options.parseOptions,
            [
                "--maildir",
                self.mktemp(),
                "--auth-users",
                path,
                "--hooks",
                "tests.tap_hooks:WithAuth",
            ],
        )
        self.assertIn("--auth-users cannot be used", str(error))


class AuthUsersTests(SynchronousTestCase):
    """
    The C{on_auth} hook built from an C{--auth-users} file.
    """

    def setUp(self) -> None:
        self.reactor = FakeReactor()
        self.hook = AuthUsers({"alice": hash_password("wonderland", n=2**10)}, self.reactor)
        self.session = Session(remote_address="192.0.2.1")

    def test_right_password(self) -> None:
        """
        PLAIN or LOGIN with the right password: the user name becomes
        C{session.user}.
        """
        for method in ("PLAIN", "LOGIN"):
            request = AuthRequest(method=method, username="alice", password="wonderland")
            response = self.successResultOf(self.hook(request, self.session))
            assert response is not None
            self.assertEqual(response.user, "alice")

    def test_wrong_password_or_user(self) -> None:
        """
        A wrong password, an unknown user, and mechanisms without a password
        are rejected (L{None}).
        """
        for request in [
            AuthRequest(method="PLAIN", username="alice", password="wrong"),
            AuthRequest(method="PLAIN", username="mallory", password="wonderland"),
            AuthRequest(method="CRAM-MD5", username="alice", challenge="c", challenge_response="r"),
        ]:
            with capturedLogs() as events:
                self.assertIsNone(self.successResultOf(self.hook(request, self.session)))
            for event in events:
                self.assertNotIn("wonderland", repr(event))
                self.assertNotIn("wrong", repr(event))


class LogRejectionsTests(SynchronousTestCase):
    """
    L{LogRejections} logs one line per rejection made by a hook, whatever
    the hook's style, and passes every result on unchanged.
    """

    def setUp(self) -> None:
        from smtphooks._session import Address, Envelope

        self.address = Address("nobody@example.com")
        self.session = Session(
            remote_address="192.0.2.9",
            envelope=Envelope(mail_from=Address("s@example.org")),
        )

    def rejections(self, events: Any) -> list[str]:
        from twisted.logger import formatEvent

        return [formatEvent(e) for e in events if e.get("log_namespace") == "smtphooks.tap"]

    def test_styles(self) -> None:
        """
        A rejection raised, returned as a failed Deferred, or raised by a
        coroutine is logged once, and still reaches the server.
        """
        from twisted.internet.defer import fail

        from smtphooks import SMTPError

        error = SMTPError("No such user here", code=550, enhanced="5.1.1")

        def raising(address: Any, session: Session) -> None:
            raise error

        def deferred(address: Any, session: Session) -> Deferred[None]:
            return fail(error)

        async def coroutine(address: Any, session: Session) -> None:
            raise error

        for hook in (raising, deferred, coroutine):
            wrapped = LogRejections("on_rcpt_to", hook)
            with capturedLogs() as events:
                try:
                    result = wrapped(self.address, self.session)
                except SMTPError as e:
                    self.assertIs(e, error)
                else:
                    self.assertIs(self.failureResultOf(result, SMTPError).value, error)
            self.assertEqual(
                self.rejections(events),
                [
                    f"rejected from 192.0.2.9: RCPT TO:<nobody@example.com> sender=<s@example.org>:"
                    f" 550 5.1.1 No such user here (session {self.session.id})"
                ],
                hook.__name__,
            )

    def test_defaults_and_data(self) -> None:
        """
        A rejection without a code gets the hook's default reply; on_data
        rejections name the sender and the number of recipients.
        """
        from smtphooks import SMTPError

        def on_data(stream: Any, session: Session) -> None:
            raise SMTPError("")

        with capturedLogs() as events:
            self.assertRaises(
                SMTPError, LogRejections("on_data", on_data), object(), self.session
            )
        (line,) = self.rejections(events)
        self.assertIn("DATA sender=<s@example.org> recipients=0: 450 4.7.1 Message rejected", line)

    def test_not_rejections(self) -> None:
        """
        Accepting results pass through untouched and log nothing; a crash
        is the server's to log.
        """
        def accept(address: Any, session: Session) -> str:
            return "fine"

        def crash(address: Any, session: Session) -> None:
            raise ZeroDivisionError()

        with capturedLogs() as events:
            accepted = LogRejections("on_mail_from", accept)(self.address, self.session)
            self.assertEqual(accepted, "fine")
            self.assertRaises(
                ZeroDivisionError, LogRejections("on_mail_from", crash), self.address, self.session
            )
        self.assertEqual(self.rejections(events), [])


def _free_port() -> int:
    """
    A TCP port on 127.0.0.1 that nothing listens on right now.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class ServiceTests(TestCase):
    """
    L{makeService} builds a service that listens when started and closes
    gracefully when stopped.
    """

    def make(self, *argv: str) -> MultiService:
        options = Options()
        options.parseOptions(["--maildir", self.mktemp(), *argv])
        service = makeService(options)
        self.assertTrue(IService.providedBy(service))
        assert isinstance(service, MultiService)
        return service

    def test_listen_and_stop(self) -> Deferred[None]:
        """
        Starting listens on every endpoint; stopping closes the ports.
        """
        port = _free_port()
        service = self.make(
            "--listen", f"tcp:{port}:interface=127.0.0.1", "--listen", "tcp:0:interface=127.0.0.1"
        )
        smtp = service.getServiceNamed("smtp")
        assert isinstance(smtp, SMTPService)
        with capturedLogs() as events:
            service.privilegedStartService()
            service.startService()
        assert smtp.ports is not None
        self.assertEqual(len(smtp.ports), 2)
        self.assertEqual(smtp.ports[0].getHost().port, port)  # type: ignore[attr-defined]
        listening = [e for e in events if "listening on" in e.get("log_format", "")]
        self.assertEqual(len(listening), 2)

        async def stop() -> None:
            await service.stopService()
            probe = socket.socket()
            try:
                self.assertNotEqual(probe.connect_ex(("127.0.0.1", port)), 0)
            finally:
                probe.close()

        return ensureDeferred(stop())

    def test_start_without_privileged_start(self) -> Deferred[None]:
        """
        Runners that only call C{startService} (C{twist}) get a listening
        server too.
        """
        service = self.make("--listen", "tcp:0:interface=127.0.0.1")
        smtp = service.getServiceNamed("smtp")
        service.startService()
        self.assertEqual(len(smtp.ports), 1)
        return service.stopService()  # type: ignore[no-any-return]

    async def test_metrics(self) -> None:
        """
        With C{--metrics}, starting also serves the registry over HTTP, and
        stopping closes that port too.
        """
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            raise SkipTest("prometheus_client is not installed")
        from twisted.internet import reactor
        from twisted.web.client import Agent, HTTPConnectionPool, readBody

        service = self.make(
            "--listen", "tcp:0:interface=127.0.0.1", "--metrics", "tcp:0:interface=127.0.0.1"
        )
        smtp = service.getServiceNamed("smtp")
        with capturedLogs() as events:
            service.privilegedStartService()
            service.startService()
        port = smtp.metrics_port
        self.assertIsNotNone(port)
        served = [e for e in events if "serving Prometheus metrics" in e.get("log_format", "")]
        self.assertEqual(len(served), 1)
        agent = Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False))
        number = port.getHost().port
        response = await agent.request(b"GET", f"http://127.0.0.1:{number}/metrics".encode())
        body = await readBody(response)
        self.assertEqual(response.code, 200)
        self.assertIn(b"smtphooks_connections_total 0.0\n", body)
        self.assertIn(b"process_cpu_seconds_total", body)
        await service.stopService()
        self.assertIsNone(smtp.metrics_port)
        probe = socket.socket()
        try:
            self.assertNotEqual(probe.connect_ex(("127.0.0.1", number)), 0)
        finally:
            probe.close()

    def test_metrics_port_in_use(self) -> None:
        """
        A C{--metrics} port in use stops startup like an SMTP port in use,
        and the SMTP ports already opened are closed.
        """
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            raise SkipTest("prometheus_client is not installed")
        port = self.occupied()
        service = self.make(
            "--listen", "tcp:0:interface=127.0.0.1",
            "--metrics", f"tcp:{port}:interface=127.0.0.1",
        )
        smtp = service.getServiceNamed("smtp")
        self.patch(sys, "__stderr__", io.StringIO())
        with capturedLogs() as events:
            exit = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertEqual(exit.code, 1)
        (critical,) = [e for e in events if e["log_level"].name == "critical"]
        self.assertEqual(critical["description"], f"tcp:{port}:interface=127.0.0.1")
        self.assertEqual(smtp.server._ports, [])

    def occupied(self) -> int:
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        self.addCleanup(blocker.close)
        port: int = blocker.getsockname()[1]
        return port

    def test_port_in_use(self) -> None:
        """
        A port in use stops startup with one logged line, a one-line
        message on standard error and C{SystemExit(1)}; ports already opened
        are closed.
        """
        port = self.occupied()
        service = self.make(
            "--listen", "tcp:0:interface=127.0.0.1", "--listen", f"tcp:{port}:interface=127.0.0.1"
        )
        err = io.StringIO()
        self.patch(sys, "__stderr__", err)
        with capturedLogs() as events:
            exit = self.assertRaises(SystemExit, service.privilegedStartService)
        self.assertEqual(exit.code, 1)
        critical = [e for e in events if e["log_level"].name == "critical"]
        self.assertEqual(len(critical), 1)
        self.assertEqual(critical[0]["description"], f"tcp:{port}:interface=127.0.0.1")
        self.assertIn("Address already in use", critical[0]["reason"])
        self.assertEqual(err.getvalue().count("\n"), 1)
        self.assertIn("Address already in use", err.getvalue())

    def test_port_in_use_daemonizing(self) -> None:
        """
        Under a daemonizing twistd, the failure is an exception with a
        one-line message, which twistd's parent process prints.
        """
        port = self.occupied()
        options = Options()
        options.parseOptions(
            ["--maildir", self.mktemp(), "--listen", f"tcp:{port}:interface=127.0.0.1"]
        )
        runner: Any = {"nodaemon": False, "pidfile": "twistd.pid"}
        options.parent = runner
        service = makeService(options)
        with capturedLogs():
            error = self.assertRaises(StartupError, service.privilegedStartService)
        self.assertIn("cannot listen on", str(error))


class PluginTests(TestCase):
    """
    The plugin file is found by twistd and is cheap to import.
    """

    def test_lazy_import(self) -> Deferred[None]:
        """
        Importing the plugin imports neither the reactor nor smtphooks; its
        options are those of L{smtphooks.tap}.
        """
        from .support import run_process

        code = (
            "import sys\n"
            f"sys.path.insert(0, {ROOT!r})\n"
            "from twisted.plugins import smtphooks_plugin as p\n"
            "assert 'twisted.internet.reactor' not in sys.modules, 'reactor'\n"
            "assert not [m for m in sys.modules if m.startswith('smtphooks')], 'package'\n"
            "assert p.smtphooks.tapname == 'smtphooks'\n"
            "from twisted.plugin import getPlugins\n"
            "from twisted.application.service import IServiceMaker\n"
            "names = [m.tapname for m in getPlugins(IServiceMaker)]\n"
            "assert 'smtphooks' in names, names\n"
            "print('ok')\n"
        )
        d = run_process([sys.executable, "-c", code], path=self.mktemp_dir())

        def check(result: tuple[int, bytes, bytes]) -> None:
            code, out, err = result
            self.assertEqual((code, out.strip()), (0, b"ok"), err.decode())

        return d.addCallback(check)

    def mktemp_dir(self) -> str:
        path: str = self.mktemp()
        os.makedirs(path)
        return path

    def test_no_package_init(self) -> None:
        """
        C{twisted/} and C{twisted/plugins/} are not packages of ours.
        """
        self.assertFalse(os.path.exists(os.path.join(ROOT, "twisted", "__init__.py")))
        self.assertFalse(os.path.exists(os.path.join(ROOT, "twisted", "plugins", "__init__.py")))

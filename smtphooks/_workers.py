"""
C{twistd smtphooks --workers N}: N processes that share the listening
sockets, to use every core.

The twistd process (the I{master}) binds every C{--listen} endpoint itself
and never accepts on those sockets (it stops reading them at once).  It runs
N worker processes, C{python -m smtphooks._workers}, which inherit the
sockets as file descriptors 3, 4, ... and serve them as
C{reactor.adoptStreamPort} does: the kernel gives each new connection to the
worker that accepts it first (a burst of connections may all go to the one
that wakes first).  With C{--reuse-port}, each worker gets its own
C{SO_REUSEPORT} socket of a group on the same address instead, and the
kernel spreads connections over them by address.  Each
worker parses the same command line as the master, so it has the same
options, hooks, TLS certificates, users file and Maildir, and builds its own
L{smtphooks.SMTPServer} (and TLS contexts) from them.  It runs on the
master's kind of reactor: the one C{twistd --reactor} named, or by default
L{smtphooks.reactor.LeanEPollReactor} (on Linux).

The master:

  - writes one log: workers send their log events (JSON lines on their
    standard output), and the master logs them with the worker's number and
    pid in the system field (C{[smtphooks.maildir#info worker 2 pid 4242]});
  - restarts a worker that dies, at once if it had run for
    L{HEALTHY_UPTIME} seconds, else after a delay that doubles from
    L{RESTART_MIN_DELAY} up to L{RESTART_MAX_DELAY} seconds;
  - on SIGTERM, sends SIGTERM to every worker (each drains as a single
    process does: sessions finish their transaction for up to
    C{--close-timeout}), waits for them for C{--close-timeout} plus
    L{KILL_MARGIN} seconds, SIGKILLs those still running, then exits;
  - with C{--metrics}, serves the sum over the workers, which write their
    metrics to files (C{prometheus_client}'s multiprocess mode).

A worker whose master dies (its standard input, a pipe from the master,
closes) stops gracefully.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import sys
import sysconfig
import tempfile
import time
from typing import IO, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, execute, maybeDeferred
from twisted.internet import tcp, unix
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReadDescriptor
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel, eventAsText
from twisted.python.failure import Failure
from zope.interface import implementer

from ._proxy import split_haproxy
from .tap import Options, SMTPService, _install_default_reactor

__all__ = [
    "HEALTHY_UPTIME",
    "KILL_MARGIN",
    "RESTART_MAX_DELAY",
    "RESTART_MIN_DELAY",
    "WorkersService",
    "main",
]

log = Logger(namespace="smtphooks.workers")

#: A worker that ran this many seconds before it died is restarted at once.
HEALTHY_UPTIME = 10.0
#: The first delay before restarting a worker that died sooner.
RESTART_MIN_DELAY = 0.5
#: The longest delay before restarting a worker that keeps dying.
RESTART_MAX_DELAY = 30.0
#: Seconds, after C{--close-timeout}, that stopping waits for workers
#: before it kills them.
KILL_MARGIN = 10.0
#: The longest log line a worker may send; longer ones are cut.
MAX_LINE = 1024 * 1024
#: The first file descriptor of the inherited sockets in a worker.
FIRST_FD = 3
#: What systemd sets for socket activation: the master's, not the workers'.
_SYSTEMD_VARIABLES = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


# -- the master ---------------------------------------------------------------


class _SharedSocket(Factory):
    """
    The factory of the master's ports, which never accept.
    """

    noisy = False

    def logPrefix(self) -> str:
        return "smtphooks (shared socket)"

    def buildProtocol(self, addr: Any) -> Protocol | None:
        return None


class _ReusePort(tcp.Port):
    """
    A TCP port whose socket has C{SO_REUSEPORT}, for a group of sockets on
    one address among which the kernel spreads connections.
    """

    def createInternetSocket(self) -> socket.socket:
        skt: socket.socket = super().createInternetSocket()  # type: ignore[no-untyped-call]
        skt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return skt


class _BindingReactor:
    """
    A reactor for C{serverFromString} in the master: its C{listen*} methods
    listen as the real reactor's do, then stop reading at once, so that the
    sockets exist (bound, listening, with their backlog) but only the
    workers accept on them.  Everything else is the real reactor's.

    With C{reuse_port} = N > 1, C{listenTCP} (and C{listenSSL}) make N
    sockets with C{SO_REUSEPORT} on the same address: the first is the port
    returned, the others are in its C{siblings} attribute.
    """

    def __init__(self, reactor: Any, reuse_port: int = 0) -> None:
        self._reactor = reactor
        self._reuse_port = reuse_port

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def _idle(self, port: Any) -> Any:
        port.stopReading()
        return port

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        if self._reuse_port < 2:
            return self._idle(self._reactor.listenTCP(port, factory, backlog, interface))
        ports = []
        for _ in range(self._reuse_port):
            try:
                ports.append(self._listen_reuse(port, factory, backlog, interface))
            except BaseException:
                for opened in ports:
                    opened.stopListening()
                raise
            # Port 0: the others join the port the first one got.
            port = ports[0].getHost().port
        ports[0].siblings = ports[1:]
        return ports[0]

    def _listen_reuse(self, port: int, factory: Any, backlog: int, interface: str) -> Any:
        listening = _ReusePort(port, factory, backlog, interface, self._reactor)
        listening.startListening()
        return self._idle(listening)

    def listenSSL(
        self, port: int, factory: Any, contextFactory: Any, backlog: int = 50, interface: str = ""
    ) -> Any:
        # The workers do TLS; the master only holds the socket.
        return self.listenTCP(port, factory, backlog, interface)

    def listenUNIX(
        self, address: str, factory: Any, backlog: int = 50, mode: int = 0o666, wantPID: int = 0
    ) -> Any:
        return self._idle(self._reactor.listenUNIX(address, factory, backlog, mode, wantPID))

    def adoptStreamPort(self, fileDescriptor: int, addressFamily: int, factory: Any) -> Any:
        return self._idle(self._reactor.adoptStreamPort(fileDescriptor, addressFamily, factory))


def _family(fd: int) -> socket.AddressFamily:
    """
    The address family of a socket.
    """
    probe = socket.socket(fileno=os.dup(fd))
    try:
        return probe.family
    finally:
        probe.close()


def _worker_environment(metrics_dir: str | None) -> dict[str, str]:
    """
    The workers' environment: this one, where this copy of smtphooks can be
    imported, without systemd's socket variables (the sockets are passed
    otherwise), and with C{PROMETHEUS_MULTIPROC_DIR} for C{--metrics}.
    """
    env = dict(os.environ)
    for name in _SYSTEMD_VARIABLES:
        env.pop(name, None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    installed = {os.path.abspath(sysconfig.get_paths()[key]) for key in ("purelib", "platlib")}
    existing = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in installed and root not in [os.path.abspath(p) for p in existing]:
        env["PYTHONPATH"] = os.pathsep.join([root, *existing])
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.pop("prometheus_multiproc_dir", None)
    if metrics_dir is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    return env


def _describe_end(reason: Failure) -> str:
    value = reason.value
    if isinstance(value, ProcessDone):
        return "exited with status 0"
    if isinstance(value, ProcessTerminated):
        if value.signal is not None:
            return f"was killed by signal {value.signal}"
        return f"exited with status {value.exitCode}"
    return f"ended ({value})"


class _WorkerProcess(ProcessProtocol):
    """
    One worker, seen from the master: it is given its configuration on
    standard input (which then stays open: its end tells the worker that the
    master is gone), and its output is relayed to the master's log.

    @ivar number: the worker's number, 1 to N.
    @ivar pid: its process id.
    @ivar started: when it was started (reactor time).
    @ivar ended: fires with L{None} when it has ended.
    """

    def __init__(self, pool: WorkersService, number: int, config: bytes, started: float) -> None:
        self.pool = pool
        self.number = number
        self.pid: int | None = None
        self.started = started
        self.ended: Deferred[None] = Deferred()
        self._config = config
        self._partial: dict[int, bytes] = {}

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pid = self.transport.pid
        self.transport.writeToChild(0, self._config)

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        lines = (self._partial.pop(childFD, b"") + data).split(b"\n")
        rest = lines.pop()
        if len(rest) > MAX_LINE:
            lines.append(rest[:MAX_LINE])
            rest = b""
        if rest:
            self._partial[childFD] = rest
        for line in lines:
            self.pool.relay(self, childFD, line)

    def childConnectionLost(self, childFD: int) -> None:
        rest = self._partial.pop(childFD, b"")
        if rest:
            self.pool.relay(self, childFD, rest)

    def processEnded(self, reason: Failure) -> None:
        for fd in list(self._partial):
            self.childConnectionLost(fd)
        self.pool.worker_ended(self, reason)
        self.ended.callback(None)

    def signal(self, name: str) -> None:
        """
        Send a signal (C{"TERM"}, C{"KILL"}), unless it has ended.
        """
        if self.transport is None:
            return
        try:
            self.transport.signalProcess(name)
        except ProcessExitedAlready:
            pass


class WorkersService(SMTPService):
    """
    The master of C{--workers N}: binds the sockets (in
    L{privilegedStartService}, like L{SMTPService}, so that a failure is one
    line and exit status 1 before anything runs), then runs and watches N
    worker processes.

    @ivar count: how many workers.
    @ivar workers: the running workers, by number.
    """

    def __init__(
        self,
        options: Options,
        runner: Any = None,
        maildir: str | None = None,
        *,
        executable: str | None = None,
    ) -> None:
        """
        @param options: the parsed command line (it is given to the workers
            as it is).
        @param runner: twistd's options, as for L{SMTPService}.
        @param maildir: the Maildir, for the log.
        @param executable: the Python interpreter for the workers (default:
            this one).
        """
        super().__init__(
            options.server,
            list(options["listen"]),
            runner,
            maildir,
            metrics=options["metrics"],
            reactor=options._get_reactor(),
        )
        self.count: int = options["workers"]
        self.workers: dict[int, _WorkerProcess] = {}
        self._options = options
        self._argv = list(options.argv)
        self._cwd = options.cwd
        self._executable = executable or sys.executable
        self._close_timeout: float = options.server.options.close_timeout
        self._restarts: dict[int, IDelayedCall] = {}
        self._delays: dict[int, float] = {}
        self._metrics_dir: str | None = None
        #: For each listener: its sockets (one, or one per worker with
        #: C{--reuse-port}), their address family, its name.
        self._listeners: list[tuple[list[int], str, str]] = []
        self._reuse_port = self.count if options["reuse-port"] else 0
        self._env: dict[str, str] = {}
        #: The C{--reactor} name of the master's reactor, for the workers.
        self._reactor_name: str | None = None

    # Sockets

    def _listen_on(self, endpoint: str | IStreamServerEndpoint) -> Deferred[IListeningPort]:
        # What the workers' servers will refuse (haproxy:ssl:...) is refused
        # here, before anything runs.
        split_haproxy(endpoint)
        if isinstance(endpoint, str):
            endpoint = serverFromString(  # type: ignore[no-untyped-call]
                _BindingReactor(self._reactor, self._reuse_port), endpoint
            )
        assert not isinstance(endpoint, str)
        d: Deferred[IListeningPort] = endpoint.listen(_SharedSocket())
        return d

    def _listen(self) -> None:
        if self._metrics is not None:
            from prometheus_client import CollectorRegistry
            from prometheus_client.multiprocess import MultiProcessCollector

            self._metrics_dir = tempfile.mkdtemp(prefix="smtphooks-metrics-")
            self._options._give_to_runtime_user([self._metrics_dir])
            self._registry = CollectorRegistry()
            collector: Any = MultiProcessCollector
            collector(self._registry, path=self._metrics_dir)
        super()._listen()
        assert self.ports is not None
        self._listeners = []
        for port, name in zip(self.ports, self.names):
            group = [port, *getattr(port, "siblings", [])]
            fds = [member.fileno() for member in group]
            self._listeners.append((fds, _family(fds[0]).name, name))

    def _all_ports(self) -> list[IListeningPort]:
        """
        Take the master's ports (and their C{SO_REUSEPORT} siblings).
        """
        ports, self.ports = self.ports or [], []
        return [member for port in ports for member in (port, *getattr(port, "siblings", []))]

    def _close_ports(self) -> None:
        super()._close_ports()
        for port in self._all_ports():
            port.stopListening()
        self._remove_metrics_dir()

    def _remove_metrics_dir(self) -> None:
        if self._metrics_dir is not None:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
            self._metrics_dir = None

    # Workers

    def startService(self) -> None:
        """
        Bind the sockets (unless L{privilegedStartService} did), then start
        the workers once the reactor runs.
        """
        super().startService()
        self._env = _worker_environment(self._metrics_dir)
        self._reactor_name = reactor_name(self._reactor)
        self._reactor.callWhenRunning(self._start_all)

    def _start_all(self) -> None:
        if not self.running:
            return
        for number in range(1, self.count + 1):
            self._spawn(number)

    def _spawn(self, number: int) -> None:
        self._restarts.pop(number, None)
        if not self.running:
            return
        listeners = []
        child_fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r"}
        for index, (fds, family, name) in enumerate(self._listeners):
            child_fds[FIRST_FD + index] = fds[(number - 1) % len(fds)]
            listeners.append({"fd": FIRST_FD + index, "family": family, "description": name})
        config = {
            "worker": number,
            "options": self._argv,
            "listeners": listeners,
            "reactor": self._reactor_name,
        }
        worker = _WorkerProcess(
            self, number, json.dumps(config).encode() + b"\n", self._reactor.seconds()
        )
        argv = [self._executable, "-m", "smtphooks._workers", f"--worker={number}"]
        self._reactor.spawnProcess(
            worker, argv[0], argv, env=self._env, path=self._cwd, childFDs=child_fds
        )
        self.workers[number] = worker
        log.info("started worker {number} (pid {pid})", number=number, pid=worker.pid)

    def worker_ended(self, worker: _WorkerProcess, reason: Failure) -> None:
        """
        A worker ended: restart it, unless the service is stopping.
        """
        if self.workers.get(worker.number) is worker:
            del self.workers[worker.number]
        if self._metrics_dir is not None and worker.pid is not None:
            from prometheus_client.multiprocess import mark_process_dead

            mark_process_dead(worker.pid, self._metrics_dir)  # type: ignore[no-untyped-call]
        how = _describe_end(reason)
        if not self.running:
            log.info(
                "worker {number} (pid {pid}) {how}", number=worker.number, pid=worker.pid, how=how
            )
            return
        uptime = self._reactor.seconds() - worker.started
        if uptime >= HEALTHY_UPTIME:
            delay = 0.0
        else:
            previous = self._delays.get(worker.number, 0.0)
            delay = min(max(previous * 2, RESTART_MIN_DELAY), RESTART_MAX_DELAY)
        self._delays[worker.number] = delay
        log.warn(
            "worker {number} (pid {pid}) {how} after {uptime:.1f} s; restarting it in {delay:g} s",
            number=worker.number,
            pid=worker.pid,
            how=how,
            uptime=uptime,
            delay=delay,
        )
        self._restarts[worker.number] = self._reactor.callLater(delay, self._spawn, worker.number)

    def relay(self, worker: _WorkerProcess, fd: int, line: bytes) -> None:
        """
        Log a line a worker wrote: a JSON log event on its standard output,
        or anything on its standard error (a warning).
        """
        text = line.decode("utf-8", "replace").rstrip("\r")
        when: float = time.time()
        level = LogLevel.warn
        namespace = "smtphooks.workers"
        system = f"{namespace}#{level.name}"
        if fd == 1:
            level = LogLevel.info
            system = f"{namespace}#{level.name}"
            try:
                record = json.loads(text)
                when, level = float(record[0]), LogLevel.levelWithName(record[1])
                namespace, system, text = str(record[2]), str(record[3]), str(record[4])
            except Exception:
                pass
        elif not text.strip():
            return
        log.observer(
            {
                "log_format": "{worker_text}",
                "worker_text": text,
                "log_time": when,
                "log_level": level,
                "log_namespace": namespace,
                "log_system": f"{system} worker {worker.number} pid {worker.pid}",
                "worker": worker.number,
                "worker_pid": worker.pid,
            }
        )

    # Stopping

    def stopService(self) -> Deferred[None]:
        """
        Stop every worker gracefully (SIGTERM: each drains its sessions),
        SIGKILL those still running after C{--close-timeout} plus
        L{KILL_MARGIN} seconds, then close the sockets.

        @return: a L{Deferred} that fires when every worker has ended.
        """
        Service.stopService(self)  # type: ignore[no-untyped-call]
        for call in self._restarts.values():
            if call.active():
                call.cancel()
        self._restarts.clear()
        # The master's copies of the sockets go first: once the workers
        # close theirs, new connections are refused, as with one process.
        closing = [maybeDeferred(port.stopListening) for port in self._all_ports()]
        live = list(self.workers.values())
        log.info(
            "stopping: asking {count} worker(s) to finish their sessions", count=len(live)
        )
        for worker in live:
            worker.signal("TERM")
        bound = self._close_timeout + KILL_MARGIN

        def kill() -> None:
            for worker in live:
                if not worker.ended.called:
                    log.warn(
                        "worker {number} (pid {pid}) still running after {bound:g} s; killing it",
                        number=worker.number,
                        pid=worker.pid,
                        bound=bound,
                    )
                    worker.signal("KILL")

        timer = self._reactor.callLater(bound, kill)
        ended: Deferred[Any] = DeferredList([worker.ended for worker in live])

        def finished(result: object) -> Deferred[Any]:
            if timer.active():
                timer.cancel()
            metrics, self.metrics_port = self.metrics_port, None
            if metrics is not None:
                closing.append(maybeDeferred(metrics.stopListening))
            self._remove_metrics_dir()
            log.info("stopped: every worker has exited")
            return DeferredList(closing)

        return ended.addCallback(finished).addCallback(lambda _: None)


def reactor_name(reactor: object) -> str | None:
    """
    The name that C{twistd --reactor} knows a reactor by: that of the
    reactor plugin whose module defines its class (C{"epoll"} for
    Twisted's C{EPollReactor}, C{"smtphooks-epoll"} for
    L{smtphooks.reactor.LeanEPollReactor}).

    @return: the name, or L{None} when no plugin installs that class.
    """
    from twisted.application.reactors import getReactorTypes

    module = type(reactor).__module__
    for installer in getReactorTypes():
        if getattr(installer, "moduleName", None) == module:
            name: str = installer.shortName
            return name
    return None


def install_reactor(name: str | None) -> None:
    """
    Install a worker's reactor, before anything imports the global one:
    the one the master runs on (C{name}, as L{reactor_name} gave it), or
    without a name the one C{twistd smtphooks} uses by default.

    @raise twisted.application.reactors.NoSuchReactor: for an unknown name.
    @raise Exception: whatever installing that reactor raises.
    """
    if name is None:
        _install_default_reactor()
    else:
        from twisted.application.reactors import installReactor

        installReactor(name)


# -- a worker -----------------------------------------------------------------


class _AdoptingReactor:
    """
    A reactor for C{serverFromString} in a worker: whatever the endpoint
    asks to listen on, it adopts the inherited socket instead (with TLS for
    C{ssl:}, as C{listenSSL} does).  Everything else is the real reactor's.
    """

    def __init__(self, reactor: Any, fd: int, family: int) -> None:
        self._reactor = reactor
        self._fd = fd
        self._family = family

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def adopt(self, factory: Any) -> Any:
        """
        Serve the inherited socket with C{factory}.
        """
        if self._family == socket.AF_UNIX:
            return _adopt_unix(self._reactor, self._fd, factory)
        return self._reactor.adoptStreamPort(self._fd, self._family, factory)

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        return self.adopt(factory)

    def listenSSL(
        self, port: int, factory: Any, contextFactory: Any, backlog: int = 50, interface: str = ""
    ) -> Any:
        from twisted.protocols.tls import TLSMemoryBIOFactory

        return self.adopt(TLSMemoryBIOFactory(contextFactory, False, factory))

    def listenUNIX(
        self, address: str, factory: Any, backlog: int = 50, mode: int = 0o666, wantPID: int = 0
    ) -> Any:
        return self.adopt(factory)

    def adoptStreamPort(self, fileDescriptor: int, addressFamily: int, factory: Any) -> Any:
        return self.adopt(factory)


class _SharedUNIXPort(unix.Port):
    """
    A UNIX socket adopted from the master, which owns its file: closing it
    leaves the file alone (Twisted's adopted UNIX ports remove it, which
    would cut the other workers off).
    """

    def connectionLost(self, reason: Failure) -> None:
        tcp.Port.connectionLost(self, reason)  # type: ignore[no-untyped-call]


def _adopt_unix(reactor: Any, fd: int, factory: Any) -> Any:
    """
    Serve an inherited UNIX socket, keeping its file and the file's mode
    (Twisted's adoption would make it world-writable).
    """
    probe = socket.socket(fileno=os.dup(fd))
    try:
        name = probe.getsockname()
    finally:
        probe.close()
    adopt: Any = _SharedUNIXPort._fromListeningDescriptor
    port = adopt(reactor, fd, factory)
    if isinstance(name, str) and name and not name.startswith("\0"):
        port.mode = stat.S_IMODE(os.stat(name).st_mode)
    port.startListening()
    return port


@implementer(IStreamServerEndpoint)
class _AdoptedEndpoint:
    """
    Serves an inherited socket as it is: for C{systemd:} descriptions
    (Twisted's own adopted endpoint would close the descriptor, and its
    parser reads systemd's variables, which are the master's).
    """

    def __init__(self, reactor: _AdoptingReactor) -> None:
        self._reactor = reactor

    def listen(self, factory: Any) -> Deferred[IListeningPort]:
        return execute(self._reactor.adopt, factory)


def adopted_endpoint(reactor: Any, fd: int, family: int, description: str) -> IStreamServerEndpoint:
    """
    The endpoint that serves an inherited listening socket the way
    C{description} says (plain, or TLS for C{ssl:}).  The descriptor stays
    open: the caller closes it once listening.

    @param reactor: the real reactor.
    @param fd: the socket's file descriptor.
    @param family: its address family.
    @param description: the C{--listen} endpoint description it was bound for.
    """
    adopting = _AdoptingReactor(reactor, fd, family)
    head, _, rest = description.partition(":")
    proxied = head.strip().lower() == "haproxy"
    kind = (rest if proxied else description).split(":", 1)[0].strip().lower()
    if kind == "systemd":
        if proxied:
            from twisted.protocols.haproxy import proxyEndpoint

            return proxyEndpoint(_AdoptedEndpoint(adopting))
        return _AdoptedEndpoint(adopting)
    endpoint: IStreamServerEndpoint = serverFromString(  # type: ignore[no-untyped-call]
        adopting, description
    )
    return endpoint


@implementer(ILogObserver)
class _LogRelay:
    """
    Writes each log event as one JSON line, C{[time, level, namespace,
    system, text]}, for the master to log.  The system is what twistd would
    show: the event's C{log_system}, or C{namespace#level}.
    """

    def __init__(self, out: IO[str]) -> None:
        self._out = out

    def __call__(self, event: LogEvent) -> None:
        try:
            text = eventAsText(event, includeTimestamp=False, includeSystem=False)
            level = event.get("log_level") or LogLevel.info
            namespace = event.get("log_namespace") or "-"
            system = event.get("log_system") or f"{namespace}#{level.name}"
            record = [event.get("log_time") or time.time(), level.name, namespace, system, text]
            self._out.write(json.dumps(record) + "\n")
        except Exception:
            pass


@implementer(IReadDescriptor)
class _MasterWatch:
    """
    Reads the worker's standard input, a pipe from the master that nothing
    is written to any more: its end (or hang-up) means that the master is
    gone, and the worker stops (gracefully).
    """

    def __init__(self, reactor: Any, fd: int = 0) -> None:
        self._reactor = reactor
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def logPrefix(self) -> str:
        return "master"

    def doRead(self) -> Failure | None:
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        # Reactors take the exception (their annotation says Failure).
        return None if data else CONNECTION_DONE  # type: ignore[return-value]

    def connectionLost(self, reason: Failure) -> None:
        log.warn("the master process is gone; stopping")
        try:
            self._reactor.stop()
        except ReactorNotRunning:
            pass


def main() -> int:
    """
    Run one worker: read the configuration (one JSON line) from standard
    input, parse the master's command line, serve the inherited sockets
    until SIGTERM (or the master's end), and drain.

    @return: the exit status.
    """
    config = json.loads(sys.stdin.buffer.readline() or b"null")
    if not isinstance(config, dict):
        sys.stderr.write("smtphooks worker: no configuration on standard input\n")
        return 2
    number = int(config["worker"])
    try:
        install_reactor(config.get("reactor"))
    except Exception as e:
        sys.stderr.write(f"smtphooks worker {number}: cannot install the reactor: {e}\n")
        return 2
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner
    from twisted.python import usage

    out = os.fdopen(os.dup(1), "w", encoding="utf-8", errors="replace", buffering=1)
    globalLogBeginner.beginLoggingTo([_LogRelay(out)], redirectStandardIO=True)
    options = Options(reactor)
    options.adopted = True
    try:
        options.parseOptions(config["options"])
    except usage.UsageError as e:
        log.critical("worker {number}: {error}", number=number, error=str(e))
        return 1
    listeners = config["listeners"]
    endpoints = []
    names = []
    for listener in listeners:
        family = socket.AddressFamily[listener["family"]]
        endpoints.append(adopted_endpoint(reactor, listener["fd"], family, listener["description"]))
        names.append(f"{listener['description']} (shared, worker {number})")
    service = SMTPService(options.server, endpoints, names=names, reactor=reactor)
    service.privilegedStartService()
    service.startService()
    for listener in listeners:
        # adoptStreamPort made its own copy.
        os.close(listener["fd"])
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    os.set_blocking(0, False)
    watch = _MasterWatch(reactor)
    reactor.addReader(watch)
    # When the reactor stops it disconnects every reader: that is no news.
    reactor.addSystemEventTrigger("before", "shutdown", reactor.removeReader, watch)
    log.info(
        "worker {number} ready (reactor {reactor})",
        number=number,
        reactor=f"{type(reactor).__module__}.{type(reactor).__qualname__}",
    )
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

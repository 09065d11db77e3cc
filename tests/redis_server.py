"""A real ``redis-server`` for tests: a free loopback port, a temporary directory, no persistence.

    with RedisServer(maxmemory="4mb") as server:
        tier = RemoteTier(server.url, ...)
        server.kill()       # SIGKILL: the data is gone
        server.start()      # the same port again, empty
        server.pause()      # SIGSTOP: connections open, nothing answers
        server.resume()

``.ci/run`` installs the server (Debian's ``redis-server``) when none is on PATH.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

__all__ = ["RedisServer", "free_port", "redis_server_binary", "server_url"]

_START_TIMEOUT = 10.0


def redis_server_binary() -> str:
    """The path of ``redis-server``, or a RuntimeError that says how to install it."""
    path = shutil.which("redis-server")
    if path is None:
        raise RuntimeError(
            "redis-server is not on PATH; the remote tier's tests need a real server: "
            "run .ci/run, or install it (Debian: apt-get install redis-server)"
        )
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process, bound to 127.0.0.1 only, saving nothing to disk.

    ``maxmemory`` (bytes or a size such as ``"4mb"``) with ``policy`` (default
    ``allkeys-lru``) bounds its memory; ``password`` requires AUTH. The port is
    chosen once, so :meth:`start` after :meth:`kill` or :meth:`stop` serves on the
    same address again (empty: nothing was saved).
    """

    def __init__(
        self,
        *,
        maxmemory: int | str | None = None,
        policy: str = "allkeys-lru",
        password: str | None = None,
    ) -> None:
        self.binary = redis_server_binary()
        self.port = free_port()
        self.maxmemory = maxmemory
        self.policy = policy
        self.password = password
        self._dir = tempfile.TemporaryDirectory(prefix="prefixcache-redis-")
        self.log = Path(self._dir.name) / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``, with the password when there is one."""
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _args(self) -> list[str]:
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self._dir.name,
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(self.log),
        ]  # fmt: skip
        if self.maxmemory is not None:
            args += ["--maxmemory", str(self.maxmemory), "--maxmemory-policy", self.policy]
        if self.password is not None:
            args += ["--requirepass", self.password]
        return args

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING (RuntimeError with its log if not)."""
        assert not self.running, "already running"
        self._proc = subprocess.Popen(self._args(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if self._answers_ping():
                return self
            time.sleep(0.01)
        self._stop_process(signal.SIGKILL)
        log = self.log.read_text(errors="replace") if self.log.exists() else "(no log)"
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING:\n{log[-2000:]}")

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                if self.password is not None:
                    s.sendall(_command("AUTH", self.password))
                    s.recv(64)
                s.sendall(_command("PING"))
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL the server (as a crash would) and wait for it to go."""
        self._stop_process(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM the server and wait for it to go (SIGKILL after 5 s)."""
        self._stop_process(signal.SIGTERM)

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections, but nothing answers."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def _stop_process(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)  # a paused server would not act on SIGTERM
            proc.send_signal(sig)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        try:
            self.kill()
        finally:
            self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _command(*parts: str) -> bytes:
    out = [f"*{len(parts)}\r\n".encode()]
    for part in parts:
        raw = part.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


@contextlib.contextmanager
def server_url(url: str | None) -> Iterator[str]:
    """``url`` as it is, or when None the URL of a server started here and stopped on exit."""
    if url is not None:
        yield url
        return
    with RedisServer() as server:
        yield server.url

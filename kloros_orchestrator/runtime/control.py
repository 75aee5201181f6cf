"""The status socket: newline-delimited JSON over a Unix stream socket, server and client.

One request object per line, one response line per request. Malformed input, a request without
``"cmd"`` and a failing handler each get ``{"ok": false, "error": "..."}`` on the same connection;
nothing a client sends can stop the server or disturb another client.

The socket file is never visible with the wrong mode: it is bound inside a fresh 0700 directory
next to ``path``, chmodded, then renamed onto ``path`` (anyio's listener binds first and chmods
after, and changing the umask would race with every other thread of the daemon). The rename also
replaces a stale socket atomically, after a probe showed that nothing accepts connections on it.

Anyone in the socket's group can connect, so nothing a client does may exhaust the daemon:

* **Connection cap.** At most ``max_connections`` clients are served at once; by default
  ``min(128, RLIMIT_NOFILE soft limit // 4)``, so idle clients can never use up the file
  descriptors the rest of the daemon needs. A connection beyond the cap is accepted, gets one
  ``{"ok": false, "error": "too many connections ..."}`` line and is closed at once.
* **Idle timeout.** A connection is closed when no complete request line arrives within
  ``idle_timeout`` (30 s by default) of the previous answer, whether the client is silent or stuck
  mid-line, and when an answer cannot be written within that time (a client that never reads).
  The handler's own time is not counted.
* **Bounded input.** A line holds at most ``MAX_LINE_BYTES``; one nested deeper than
  ``MAX_JSON_DEPTH`` arrays/objects is answered ``ok: false`` before it reaches the JSON decoder
  (whose recursion would otherwise fail on it), and the connection stays usable.
* **Accept never ends the server.** anyio reports every failed ``accept`` (EMFILE, ENFILE, ENOBUFS,
  a broken listener) as an exception; each is logged (throttled) and followed by a back-off that
  doubles from 50 ms to 1 s and resets on the next success, then accepting resumes.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import socket
import stat
import struct
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.abc
import msgspec
from anyio.streams.buffered import BufferedByteReceiveStream
from loguru import logger

from kloros_orchestrator.errors import ControlError, DaemonAlreadyRunning, DaemonNotRunning
from kloros_orchestrator.safefs import nesting_exceeds

MAX_LINE_BYTES: Final = 64 * 1024  # one request line
MAX_JSON_DEPTH: Final = 32  # nested arrays/objects in one request
MAX_RESPONSE_BYTES: Final = 16 * 1024 * 1024
UNIX_PATH_MAX: Final = 107  # sun_path is 108 bytes including the terminating NUL
IDLE_TIMEOUT_S: Final = 30.0
CONNECTION_CAP: Final = 128  # upper bound of the default cap; see default_max_connections()
_FD_SHARE: Final = 4  # connections may take at most a quarter of the file-descriptor limit
_ACCEPT_BACKOFF_S: Final = (0.05, 1.0)  # first and longest pause after a failed accept
_REFUSE_TIMEOUT_S: Final = 1.0  # bound on telling an excess client no (a fresh socket never blocks)
_LOG_INTERVAL_S: Final = 60.0  # repeated accept failures and refusals: one log line per interval

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


_encoder = msgspec.json.Encoder(enc_hook=_enc_hook)


def _line(obj: dict[str, Any]) -> bytes:
    return _encoder.encode(obj) + b"\n"


def _error(message: str) -> bytes:
    return _line({"ok": False, "error": message})


def default_max_connections() -> int:
    """The default connection cap: ``min(CONNECTION_CAP, soft RLIMIT_NOFILE // 4)``, at least 1."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft < 0:
        return CONNECTION_CAP
    return max(1, min(CONNECTION_CAP, soft // _FD_SHARE))


# A JSON string, possibly unterminated (the decoder reports that). Possessive quantifiers and
# matching the unterminated case too keep the substitution linear in the line's length.
def _check_length(path: Path, what: str = "socket path") -> None:
    size = len(os.fsencode(path))
    if size > UNIX_PATH_MAX:
        raise ControlError(f"{what} {path} is {size} bytes; Unix sockets allow at most {UNIX_PATH_MAX}")


# --- server -----------------------------------------------------------------------------------------


def _accepts_connections(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(os.fspath(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except TimeoutError:
            return True  # alive but its backlog is full
        except OSError as exc:
            raise ControlError(f"cannot tell whether a daemon listens on {path}: {exc}") from exc
        return True


async def _check_stale(path: Path) -> None:
    """Refuse a live socket or a non-socket file at ``path``; a stale socket is left for the rename."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlError(f"{path} exists and is not a socket; refusing to replace it")
    if await anyio.to_thread.run_sync(_accepts_connections, path):
        raise DaemonAlreadyRunning(f"another daemon is listening on {path}")
    logger.info("replacing stale control socket {}", path)


async def _bind(path: Path, mode: int) -> tuple[anyio.abc.SocketListener, tuple[int, int]]:
    """Listen on ``path`` with ``mode``; returns the listener and the socket file's (dev, inode)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    private = Path(tempfile.mkdtemp(prefix=".k", dir=path.parent))  # mode 0700
    try:
        staging = private / "s"
        _check_length(staging, "temporary socket path")
        listener = await anyio.create_unix_listener(staging, mode=mode)
        try:
            os.rename(staging, path)
            st = os.stat(path)
        except BaseException:
            await listener.aclose()
            raise
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return listener, (st.st_dev, st.st_ino)


def _remove_if_ours(path: Path, ident: tuple[int, int]) -> None:
    # Another daemon may have replaced our file (after judging it stale); its socket stays.
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == ident:
            path.unlink()


PEER_UID: Final = "peer_uid"  # set by the server on every request (the client's own value is replaced)


def peer_uid(conn: anyio.abc.SocketStream) -> int | None:
    """The connected client's uid (SO_PEERCRED), or None when the socket cannot say."""
    try:
        sock = conn.extra(anyio.abc.SocketAttribute.raw_socket)
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return int(struct.unpack("3i", creds)[1])
    except (OSError, anyio.TypedAttributeLookupError, struct.error):
        return None


async def _respond(raw: bytes, handler: Handler, uid: int | None = None) -> bytes:
    if nesting_exceeds(raw, MAX_JSON_DEPTH):
        return _error(f"request nested deeper than {MAX_JSON_DEPTH} arrays/objects")
    try:
        request = json.loads(raw)
    except ValueError as exc:  # includes UnicodeDecodeError
        return _error(f"malformed JSON: {exc}")
    except RecursionError:  # nesting_exceeds() stops such lines first; no line may go unanswered
        return _error("request nested too deeply")
    if not isinstance(request, dict):
        return _error("a request must be a JSON object")
    cmd = request.get("cmd")
    if not isinstance(cmd, str) or not cmd:
        return _error('a request needs a "cmd" string')
    request[PEER_UID] = uid  # who asks: commands that change the host check it
    try:
        result: object = await handler(request)
    except Exception as exc:  # a failing command must not take the daemon down
        logger.opt(exception=exc).warning("control command {!r} failed", cmd)
        return _error(str(exc) or type(exc).__name__)
    if not isinstance(result, dict):
        logger.error("control handler returned {} for {!r}", type(result).__name__, cmd)
        return _error("internal error: the handler did not return an object")
    try:
        return _line(result)
    except (TypeError, ValueError, msgspec.EncodeError) as exc:
        logger.error("control response for {!r} is not serialisable: {}", cmd, exc)
        return _error(f"internal error: response not serialisable: {exc}")


async def _converse(conn: anyio.abc.SocketStream, handler: Handler, idle_timeout: float) -> None:
    """Answer request lines until the client leaves, goes idle, or sends an overlong line."""
    reader = BufferedByteReceiveStream(conn)
    uid = peer_uid(conn)
    try:
        while True:
            try:
                with anyio.fail_after(idle_timeout):
                    raw = await reader.receive_until(b"\n", MAX_LINE_BYTES)
            except anyio.IncompleteRead:
                return  # the client closed (possibly mid-line)
            except anyio.DelimiterNotFound:
                # No way to find the next request boundary cheaply: answer, then hang up.
                answer = _error(f"request line longer than {MAX_LINE_BYTES} bytes")
                with anyio.fail_after(idle_timeout):
                    await conn.send(answer)
                return
            if raw.strip():
                answer = await _respond(raw, handler, uid)  # the handler's time is not the client's idling
                with anyio.fail_after(idle_timeout):
                    await conn.send(answer)
    except TimeoutError:
        logger.debug("closing a control connection idle for {:g}s", idle_timeout)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, ConnectionError):
        return
    except Exception:
        logger.exception("control connection failed")


async def _serve_connection(
    conn: anyio.abc.SocketStream, handler: Handler, idle_timeout: float, slot: anyio.Semaphore
) -> None:
    try:
        async with conn:
            await _converse(conn, handler, idle_timeout)
    finally:
        slot.release()  # after the close: the cap counts file descriptors, not conversations


class _Throttle:
    """Lets one log line through per ``interval`` seconds for an event that can repeat very fast."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._last: float | None = None
        self._held_back = 0

    def admit(self, now: float) -> int | None:
        """``None`` to stay quiet this time, else how many occurrences were held back since the last."""
        if self._last is not None and now - self._last < self._interval:
            self._held_back += 1
            return None
        held_back, self._held_back, self._last = self._held_back, 0, now
        return held_back


async def _refuse(conn: anyio.abc.SocketStream, message: bytes) -> None:
    async with conn:
        # A fresh socket's send buffer is empty, so this does not block; the bound is a safety net.
        with anyio.move_on_after(_REFUSE_TIMEOUT_S):
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                await conn.send(message)


async def _accept_forever(
    listener: anyio.abc.SocketListener,
    tg: anyio.abc.TaskGroup,
    handler: Handler,
    max_connections: int,
    idle_timeout: float,
) -> None:
    slots = anyio.Semaphore(max_connections, max_value=max_connections)
    refusal = _error(f"too many connections (at most {max_connections}); try again later")
    failures, refusals = _Throttle(_LOG_INTERVAL_S), _Throttle(_LOG_INTERVAL_S)
    first_pause, longest_pause = _ACCEPT_BACKOFF_S
    pause = first_pause
    while True:
        try:
            conn = await listener.accept()
        except (OSError, anyio.BrokenResourceError) as exc:  # ClosedResourceError: we closed it, on exit
            # anyio turns every accept() OSError (EMFILE, ENFILE, ENOBUFS...) into BrokenResourceError.
            # The pending connection stays in the backlog and the listener stays readable, so retrying
            # at once would spin: pause, doubling while it keeps failing.
            if (held_back := failures.admit(anyio.current_time())) is not None:
                logger.warning(
                    "control socket accept failed: {}; retrying in {:g}s ({} similar failures not logged)",
                    exc.__cause__ or exc, pause, held_back,
                )  # fmt: skip
            await anyio.sleep(pause)
            pause = min(2 * pause, longest_pause)
            continue
        pause = first_pause
        try:
            slots.acquire_nowait()
        except anyio.WouldBlock:
            if (held_back := refusals.admit(anyio.current_time())) is not None:
                logger.warning(
                    "control socket: refusing connections beyond {} ({} more refused since the last report)",
                    max_connections, held_back,
                )  # fmt: skip
            await _refuse(conn, refusal)
            continue
        tg.start_soon(_serve_connection, conn, handler, idle_timeout, slots)


async def serve_control(
    path: Path,
    handler: Handler,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    mode: int = 0o660,
    max_connections: int | None = None,
    idle_timeout: float = IDLE_TIMEOUT_S,
) -> None:
    """Serve the status socket at ``path`` until cancelled; ``task_status.started()`` once accepting.

    ``handler(request)`` gets every well-formed request object (it has a string ``"cmd"``) and
    returns the response object; unknown commands are the handler's to answer with ``ok: false``.
    At most ``max_connections`` clients are served at once (default: ``default_max_connections()``);
    a connection is closed after ``idle_timeout`` seconds without a complete request line.
    Raises ``DaemonAlreadyRunning`` when a live daemon answers on ``path``. The file is removed
    on exit (unless another daemon has replaced it meanwhile).
    """
    cap = default_max_connections() if max_connections is None else max_connections
    if cap < 1:
        raise ValueError(f"max_connections must be at least 1, not {cap}")
    if not idle_timeout > 0:
        raise ValueError(f"idle_timeout must be positive, not {idle_timeout}")
    path = Path(path)
    _check_length(path)
    await _check_stale(path)
    listener, ident = await _bind(path, mode)
    try:
        async with listener, anyio.create_task_group() as tg:
            logger.info(
                "control socket listening on {} (at most {} connections, idle timeout {:g}s)",
                path, cap, idle_timeout,
            )  # fmt: skip
            task_status.started()
            await _accept_forever(listener, tg, handler, cap, idle_timeout)
    finally:
        _remove_if_ours(path, ident)


# --- client -----------------------------------------------------------------------------------------


def query(path: Path | str, request: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one request to the daemon and return its response object (synchronous, for the CLI)."""
    data = json.dumps(request).encode() + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(os.fspath(path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonNotRunning(f"no daemon is listening on {path} ({exc.strerror})") from exc
        except PermissionError as exc:
            raise ControlError(
                f"permission denied on {path}: run as root or as a member of the socket's group"
            ) from exc
        except TimeoutError as exc:
            raise ControlError(f"the daemon on {path} did not accept within {timeout:g}s") from exc
        except OSError as exc:
            raise ControlError(f"cannot connect to {path}: {exc}") from exc
        buf = bytearray()
        try:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                # A daemon at its connection cap answers and hangs up at once: read that answer.
                sock.sendall(data)
            while b"\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    raise ControlError(f"the daemon on {path} closed the connection without answering")
                buf += chunk
                if len(buf) > MAX_RESPONSE_BYTES:
                    raise ControlError(f"the daemon's answer exceeds {MAX_RESPONSE_BYTES} bytes")
        except TimeoutError as exc:
            raise ControlError(f"no answer from the daemon on {path} within {timeout:g}s") from exc
        except OSError as exc:
            raise ControlError(f"talking to the daemon on {path} failed: {exc}") from exc
    line = bytes(buf).split(b"\n", 1)[0]
    try:
        response = json.loads(line)
    except ValueError as exc:
        raise ControlError(f"the daemon sent malformed JSON: {exc}") from exc
    if not isinstance(response, dict):
        raise ControlError("the daemon's answer is not a JSON object")
    return response


def query_waiting(
    path: Path | str, request: dict[str, Any], *, wait_s: float, timeout: float = 5.0
) -> dict[str, Any]:
    """:func:`query`, but a daemon that is not listening *yet* (just started with ``run &``) is
    given up to ``wait_s`` seconds. A client-side bounded retry with back-off: the daemon offers no
    event a client could wait on before its socket exists."""
    deadline = time.monotonic() + max(0.0, wait_s)
    delay = 0.05
    while True:
        try:
            return query(path, request, timeout)
        except DaemonNotRunning:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            time.sleep(min(delay, left))  # a CLI process, not the daemon's event loop
            delay = min(2 * delay, 0.5)

"""The status socket: newline-delimited JSON over a Unix stream socket, server and client.

One request object per line, one response line per request. Malformed input, a request without
``"cmd"`` and a failing handler each get ``{"ok": false, "error": "..."}`` on the same connection;
nothing a client sends can stop the server or disturb another client.

The socket file is never visible with the wrong mode: it is bound inside a fresh 0700 directory
next to ``path``, chmodded, then renamed onto ``path`` (anyio's listener binds first and chmods
after, and changing the umask would race with every other thread of the daemon). The rename also
replaces a stale socket atomically, after a probe showed that nothing accepts connections on it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import anyio
import anyio.abc
import msgspec
from anyio.streams.buffered import BufferedByteReceiveStream
from loguru import logger

from kloros_orchestrator.errors import ControlError, DaemonAlreadyRunning, DaemonNotRunning

MAX_LINE_BYTES: Final = 64 * 1024  # one request line
MAX_RESPONSE_BYTES: Final = 16 * 1024 * 1024
UNIX_PATH_MAX: Final = 107  # sun_path is 108 bytes including the terminating NUL
_ACCEPT_BACKOFF_S: Final = 0.1

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


async def _respond(raw: bytes, handler: Handler) -> bytes:
    try:
        request = json.loads(raw)
    except ValueError as exc:  # includes UnicodeDecodeError
        return _error(f"malformed JSON: {exc}")
    if not isinstance(request, dict):
        return _error("a request must be a JSON object")
    cmd = request.get("cmd")
    if not isinstance(cmd, str) or not cmd:
        return _error('a request needs a "cmd" string')
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


async def _serve_connection(conn: anyio.abc.SocketStream, handler: Handler) -> None:
    async with conn:
        reader = BufferedByteReceiveStream(conn)
        try:
            while True:
                try:
                    raw = await reader.receive_until(b"\n", MAX_LINE_BYTES)
                except anyio.IncompleteRead:
                    return  # the client closed (possibly mid-line)
                except anyio.DelimiterNotFound:
                    # No way to find the next request boundary cheaply: answer, then hang up.
                    await conn.send(_error(f"request line longer than {MAX_LINE_BYTES} bytes"))
                    return
                if raw.strip():
                    await conn.send(await _respond(raw, handler))
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, anyio.EndOfStream, ConnectionError):
            return
        except Exception:
            logger.exception("control connection failed")


async def serve_control(
    path: Path,
    handler: Handler,
    *,
    task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    mode: int = 0o660,
) -> None:
    """Serve the status socket at ``path`` until cancelled; ``task_status.started()`` once accepting.

    ``handler(request)`` gets every well-formed request object (it has a string ``"cmd"``) and
    returns the response object; unknown commands are the handler's to answer with ``ok: false``.
    Raises ``DaemonAlreadyRunning`` when a live daemon answers on ``path``. The file is removed
    on exit (unless another daemon has replaced it meanwhile).
    """
    path = Path(path)
    _check_length(path)
    await _check_stale(path)
    listener, ident = await _bind(path, mode)
    try:
        async with listener, anyio.create_task_group() as tg:
            logger.info("control socket listening on {}", path)
            task_status.started()
            while True:
                try:
                    conn = await listener.accept()
                except OSError as exc:  # EMFILE and friends: back off, keep serving the others
                    logger.warning("control socket accept failed: {}", exc)
                    await anyio.sleep(_ACCEPT_BACKOFF_S)
                    continue
                tg.start_soon(_serve_connection, conn, handler)
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

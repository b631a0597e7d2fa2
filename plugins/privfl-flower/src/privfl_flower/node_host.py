"""A SuperNode's privfl host: one long-lived process per node and run.

Flower 1.42's SuperNode starts a new ``flwr-clientapp`` process for every message it
receives, and keeps only the run's :class:`flwr.app.Context` between them. privfl's
client halves must keep state across a round's messages: the secure-aggregation
protocol object, with its private X25519 keys, lives from the ``train`` message to
the last unmasking phase, and such keys cannot be written into a record. So the
first message of a run on a node starts this host, a process that builds the
:class:`~privfl.client_runtime.ClientHost` once (importing torch once, loading each
client's data from the node's folder) and answers every later message of the run;
each ``flwr-clientapp`` process only forwards bytes to it.

The host listens on a Unix socket in a private folder, and every connection must
prove it knows a 32-byte key (:mod:`multiprocessing.connection`'s HMAC challenge);
the address and the key are kept in the run's Context on the SuperNode, which never
leaves the node. Frames are privfl's message bytes, never pickles. The host exits
when its starter's parent is gone (the SuperNode's SuperExec, which ends with its
SuperNode), or when it has been idle for ``idle_timeout`` seconds.

Hand-written because Flower keeps no per-node process between messages and
:mod:`multiprocessing` alone cannot outlive the short-lived process that starts it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import secrets
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

READY = b"ready"
_COUNT = struct.Struct(">I")
_FRAME = struct.Struct(">IB")  # client id, status (0: reply, 1: error text)


class HostGoneError(Exception):
    """The node's host process cannot be reached (it died, or the node restarted)."""


def start(
    builder: str,
    *,
    data_dir: str,
    num_clients: int,
    run_config: Mapping[str, Any],
    threads: int,
    idle_timeout: float,
    watch: int | None = None,
) -> tuple[str, bytes]:
    """Start a host for the calling ``flwr-clientapp``'s node and run; return its
    (socket address, key) once it listens.

    :param builder: ``module:function`` of the federation builder, imported in the host
        with the same ``sys.path`` as this process (the installed Flower app's folder).
    :param watch: The process whose end ends the host; unset: this one's parent (the
        SuperNode's SuperExec, which ends with its SuperNode).
    """
    folder = Path(tempfile.mkdtemp(prefix="privfl-node-"))  # mode 0700: this user only
    address = str(folder / "host.sock")
    key = secrets.token_bytes(32)
    settings = {
        "builder": builder,
        "data_dir": data_dir,
        "num_clients": num_clients,
        "run_config": dict(run_config),
        "threads": threads,
        "idle_timeout": idle_timeout,
        "watch": os.getppid() if watch is None else watch,
        "address": address,
        "key": key.hex(),
    }
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    process = subprocess.Popen(
        # (not ``-m privfl_flower.node_host``: the package imports this module first)
        [sys.executable, "-c", "from privfl_flower.node_host import main; main()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        start_new_session=True,  # outlives this short-lived process
    )
    assert process.stdin is not None
    assert process.stdout is not None
    process.stdin.write(json.dumps(settings).encode())
    process.stdin.close()
    line = process.stdout.readline().strip()  # READY once it listens, else its error
    failure = b"" if line == READY else line + b"\n" + process.stdout.read()
    process.stdout.close()
    process.wait()  # the process forked the host and exited (see main)
    if line != READY:
        raise RuntimeError(f"the privfl node host did not start:\n{failure.decode()}")
    return address, key


def ask(address: str, key: bytes, messages: Mapping[int, bytes]) -> dict[int, bytes]:
    """Send encoded messages (client id -> bytes) to the host; return the encoded replies.

    :raises HostGoneError: when no host listens at ``address``.
    :raises RuntimeError: with the host's traceback when a client half failed.
    """
    try:
        conn = Client(address, family="AF_UNIX", authkey=key)
    except (FileNotFoundError, ConnectionError, EOFError) as error:
        raise HostGoneError(str(error)) from error
    with conn:
        conn.send_bytes(_COUNT.pack(len(messages)))
        for client, body in messages.items():
            conn.send_bytes(_FRAME.pack(client, 0) + body)
        replies: dict[int, bytes] = {}
        for _ in messages:
            try:
                frame = conn.recv_bytes()
            except (EOFError, OSError) as error:
                raise HostGoneError(f"the host closed the connection: {error}") from error
            client, status = _FRAME.unpack_from(frame)
            body = frame[_FRAME.size :]
            if status:
                raise RuntimeError(
                    f"client {client} failed in the privfl node host:\n{body.decode()}"
                )
            replies[client] = body
    return replies


def _answer(conn: Connection, host: Any) -> None:
    """Answer one connection's batch of messages with the host's replies."""
    from privfl.messages import decode, encode

    (count,) = _COUNT.unpack(conn.recv_bytes())
    frames = [conn.recv_bytes() for _ in range(count)]
    clients = [_FRAME.unpack_from(frame)[0] for frame in frames]
    try:
        messages = {
            client: decode(frame[_FRAME.size :], sender="the server")
            for client, frame in zip(clients, frames, strict=True)
        }
        replies = [_FRAME.pack(c, 0) + encode(m) for c, m in host.handle_all(messages).items()]
    except Exception:  # sent back whole: the clientapp raises it, Flower reports it
        error = traceback.format_exc().encode()
        replies = [_FRAME.pack(client, 1) + error for client in clients]
    for reply in replies:
        conn.send_bytes(reply)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _watch(settings: Mapping[str, Any], last_use: list[float]) -> None:
    """Exit the host once the watched process is gone or it has idled too long."""
    while _alive(int(settings["watch"])) and (
        time.monotonic() - last_use[0] < float(settings["idle_timeout"])
    ):
        time.sleep(1.0)
    Path(settings["address"]).unlink(missing_ok=True)
    Path(settings["address"]).parent.rmdir()
    os._exit(0)  # the main thread may be blocked in accept()


def serve(settings: Mapping[str, Any]) -> None:
    """The host's loop: build the client half, then answer connections until stopped.

    It reports to its starter on stdout: READY once it listens, or the error that
    stopped it building the client half (which the starter raises, so that Flower
    reports it to the server).
    """
    try:
        import torch

        from privfl.client_data import FolderData
        from privfl.client_runtime import ClientHost

        torch.set_num_threads(int(settings["threads"]))
        module, _, name = str(settings["builder"]).partition(":")
        build = getattr(importlib.import_module(module), name)
        federation = build(
            client_data=FolderData(settings["data_dir"], int(settings["num_clients"])),
            executor="serial",
            run_config=settings["run_config"],
        )
        host = ClientHost(federation.client_app)
        key = bytes.fromhex(settings["key"])
        listener = Listener(settings["address"], family="AF_UNIX", authkey=key)
    except Exception:
        sys.stdout.write(traceback.format_exc())
        sys.stdout.flush()
        Path(settings["address"]).parent.rmdir()
        os._exit(1)
    last_use = [time.monotonic()]
    threading.Thread(target=_watch, args=(settings, last_use), daemon=True).start()
    sys.stdout.buffer.write(READY + b"\n")
    sys.stdout.flush()
    with open(os.devnull, "wb") as devnull:  # the starter has stopped reading
        os.dup2(devnull.fileno(), sys.stdout.fileno())
    while True:
        try:
            conn = listener.accept()
        except (OSError, EOFError, AuthenticationError):  # no key, or it went away
            continue
        with conn, contextlib.suppress(EOFError, OSError):  # a starter that went away
            _answer(conn, host)
        last_use[0] = time.monotonic()


def main() -> None:
    """The host process's entry point (see :func:`start`): settings come on stdin."""
    settings = json.loads(sys.stdin.buffer.read())
    # Fork before importing anything heavy (forking after torch's threads start is
    # unsafe): the parent exits at once, so its starter can reap it and go; the child,
    # the host, serves on outside the starter's process tree until told to stop.
    if os.fork():
        os._exit(0)
    serve(settings)

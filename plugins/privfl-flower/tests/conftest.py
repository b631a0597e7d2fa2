"""A Flower federation on this machine: a SuperLink and three SuperNodes on 127.0.0.1.

The processes are Flower's own commands (``flower-superlink``, ``flower-supernode``,
``flwr run``), started with a private ``FLWR_HOME`` in a temporary folder, telemetry
and update checks off (nothing may reach the network in a test), on free loopback
ports; each runs in its own process group, which is killed when the module's tests
end. As in a real deployment, the SuperLink serves TLS with a certificate signed by a
CA the fixture makes, and admits only SuperNodes whose public keys were registered
with ``flwr supernode register`` (each node signs its requests with its EC key).
Each SuperNode holds the data of two of the six privfl clients of the tests' app (100
MNIST digits each, from the sample shipped with privfl) in its own folder, as
:func:`privfl.client_data.write_client_folders` writes it; the folder ``all`` holds
every client's file, for the in-process runs the tests compare with.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

with warnings.catch_warnings():
    # flwr 1.42 imports typer, which uses a function that click 8.5 deprecates; the
    # project's pytest settings turn warnings into errors, so import it once here.
    warnings.simplefilter("ignore", DeprecationWarning)
    import flwr.app  # noqa: F401

from privfl.client_data import write_client_folders
from privfl.components import TensorPair
from privfl.data.mnist import images_to_float, load_bundled_mnist
from privfl.data.partition import iid

APP = Path(__file__).parent / "flower_app"
NODES = 3
CLIENTS_PER_NODE = 2
EXAMPLES_PER_CLIENT = 100
START_SECONDS = 60.0


def make_credentials(folder: Path, nodes: int) -> None:
    """Write a CA (``ca.crt``), the SuperLink's certificate for 127.0.0.1
    (``superlink.crt``, ``superlink.key``) and each SuperNode's EC key pair in OpenSSH
    form (``node-<i>``, ``node-<i>.pub``), as Flower 1.42 reads them."""
    folder.mkdir()
    now = datetime.datetime.now(datetime.timezone.utc)

    def certificate(subject: str, key, issuer: x509.Certificate | None, signer, extension):
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer.subject if issuer else name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(extension, critical=False)
            .sign(signer, hashes.SHA256())
        )

    pem, openssh = serialization.Encoding.PEM, serialization.Encoding.OpenSSH
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = certificate("privfl test CA", ca_key, None, ca_key, x509.BasicConstraints(True, None))
    key = ec.generate_private_key(ec.SECP384R1())
    loopback = x509.SubjectAlternativeName(
        [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    )
    (folder / "ca.crt").write_bytes(ca.public_bytes(pem))
    (folder / "superlink.crt").write_bytes(
        certificate("127.0.0.1", key, ca, ca_key, loopback).public_bytes(pem)
    )
    (folder / "superlink.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    for node in range(nodes):
        key = ec.generate_private_key(ec.SECP384R1())
        (folder / f"node-{node}").write_bytes(
            key.private_bytes(
                pem, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
            )
        )
        (folder / f"node-{node}.pub").write_bytes(
            key.public_key().public_bytes(openssh, serialization.PublicFormat.OpenSSH)
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flower_env(home: Path) -> dict[str, str]:
    """The environment of every Flower process: private home, nothing sent out, and
    this interpreter's scripts first on PATH (the SuperLink starts them by name)."""
    scripts = str(Path(sys.executable).parent)
    return dict(
        os.environ,
        FLWR_HOME=str(home),
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        PATH=scripts + os.pathsep + os.environ.get("PATH", ""),
    )


@dataclass
class LocalFederation:
    """The running processes, their folders and logs."""

    root: Path
    address: str
    env: dict[str, str]
    data_dirs: list[Path]
    all_data: Path
    """A folder with every client's file, for the in-process runs."""
    nodes: list[subprocess.Popen] = field(default_factory=list)
    others: list[subprocess.Popen] = field(default_factory=list)

    def start(self, name: str, args: list[str]) -> subprocess.Popen:
        with (self.root / f"{name}.log").open("wb") as log:  # the process has its own copy
            return subprocess.Popen(
                args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    def start_supernode(self, name: str, key: str, data_dir: Path, *more: str) -> subprocess.Popen:
        """Start a SuperNode with the private key ``keys/<key>`` and its data folder."""
        keys = self.root / "keys"
        return self.start(
            name,
            [
                "flower-supernode",
                *("--root-certificates", str(keys / "ca.crt")),
                *("--auth-supernode-private-key", str(keys / key)),
                *("--superlink", self.address),
                *("--host", "127.0.0.1", "--port", str(free_port())),
                # a run's host exits 2 minutes after its last message, not an hour
                *("--node-config", f'data-dir="{data_dir}" idle-timeout=120'),
                *more,
            ],
        )

    def stop_node(self, index: int) -> None:
        """Stop SuperNode ``index`` as its owner would (SIGTERM: it tells the SuperLink
        it leaves), then kill what it started (a ClientApp it waits for, its host)."""
        process = self.nodes[index]
        process.terminate()
        try:
            process.wait(timeout=30)
        finally:
            kill_group(process)

    def kill(self, process: subprocess.Popen) -> None:
        """Kill a process this federation started, with its group."""
        kill_group(process)

    def flwr_run(self, run_dir: Path, timeout: float = 400, **config: object) -> subprocess.Popen:
        """Start ``flwr run`` of the tests' app with ``config`` as run config overrides."""
        overrides = " ".join(
            f"{k}={_toml(v)}" for k, v in {"run-dir": str(run_dir), **config}.items()
        )
        return self.start(
            f"flwr-run-{run_dir.name}",
            ["flwr", "run", str(APP), "local", "--stream", "--run-config", overrides],
        )

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")


def _toml(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value).lower()


def kill_group(process: subprocess.Popen) -> None:
    """Kill ``process`` and every process of its group (it leads one of its own)."""
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def _wait_for(log: Path, text: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_SECONDS
    while text not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{log.name} never said {text!r}:\n{log.read_text()[-3000:]}")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Iterator[LocalFederation]:
    """A SuperLink and three SuperNodes (TLS, node keys, loopback), stopped after the module."""
    root = tmp_path_factory.mktemp("flower")
    home = root / "home"
    home.mkdir()
    keys = root / "keys"
    make_credentials(keys, NODES + 1)  # the last key is never registered
    port = free_port()
    address = f"127.0.0.1:{port}"
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "{address}"\n'
        f'root-certificates = "{keys / "ca.crt"}"\n'
    )
    mnist = load_bundled_mnist()
    count = NODES * CLIENTS_PER_NODE * EXAMPLES_PER_CLIENT
    train = TensorPair(images_to_float(mnist.train_images[:count]), mnist.train_labels[:count])
    partition = iid(count, NODES * CLIENTS_PER_NODE, seed=0)
    write_client_folders(root / "all", train, partition)
    data_dirs = []
    for node in range(NODES):
        folder = root / f"owner-{node}"
        mine = range(node * CLIENTS_PER_NODE, (node + 1) * CLIENTS_PER_NODE)
        source = write_client_folders(folder, train, partition)
        for client in set(range(len(partition))) - set(mine):  # an owner holds its own only
            source.path(client).unlink()
        data_dirs.append(folder)
    fed = LocalFederation(root, address, flower_env(home), data_dirs, root / "all")
    try:
        superlink = fed.start(
            "superlink",
            [
                "flower-superlink",
                "--ssl-ca-certfile",
                str(keys / "ca.crt"),
                "--ssl-certfile",
                str(keys / "superlink.crt"),
                "--ssl-keyfile",
                str(keys / "superlink.key"),
                "--enable-supernode-auth",
                # the app's dependencies are installed here; never fetch any at run time
                "--disable-runtime-dependency-installation",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--database",
                str(root / "superlink.db"),
            ],
        )
        fed.others.append(superlink)
        _wait_for(root / "superlink.log", "Uvicorn running", superlink)
        for node, folder in enumerate(data_dirs):
            register = ["flwr", "supernode", "register", str(keys / f"node-{node}.pub"), "local"]
            subprocess.run(register, env=fed.env, check=True, capture_output=True, timeout=120)
            process = fed.start_supernode(f"node-{node}", f"node-{node}", folder)
            fed.nodes.append(process)
            _wait_for(root / f"node-{node}.log", "SuperNode ID", process)
        yield fed
    finally:
        for process in [*fed.nodes, *fed.others]:
            kill_group(process)

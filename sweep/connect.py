"""Connecting the driver to an existing Ray cluster (``cluster.address``), or one line saying why
it cannot.

Ray's own ``ray.init(address=...)`` against an address where nothing listens retries for
minutes, and against a cluster that requires a token the driver lacks it prints a warning a
second for 20 s and then raises a ConnectionError that does not mention the token. Before it is
called, :func:`check_cluster` asks two quick questions: does anything accept a connection at the
address Ray will use (a TCP connect, 5 s), and does its GCS accept this driver (one
``GcsClient`` handshake, whose token check answers at once)? Either failing is a
:class:`ClusterUnreachable` (a ConfigError: exit 2, one line, what to try). Ray's private API
used here (address resolution, the GCS client, the token setup) is confined to this module.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile

from sweep.config import ConfigError

TCP_TIMEOUT_S = 5.0
LOCAL_HINT = "or cluster.address=null for a local Ray"


class ClusterUnreachable(ConfigError):
    """``cluster.address`` cannot be reached or does not accept this driver; one line."""


def _first(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}".rstrip(": ")[:300]


@contextlib.contextmanager
def _quiet_stderr():
    """File descriptor 2 sent to a temporary file meanwhile: Ray's C++ client logs its failed
    attempts there, and the driver's own message says what they mean."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def bootstrap_address(address: str) -> str | None:
    """The host:port Ray connects to for ``address`` (``auto``: the cluster started on this
    machine or RAY_ADDRESS; a loopback host becomes this machine's address, as Ray does);
    None for a Ray Client address (``ray://``), which Ray connects to itself. Raises
    ClusterUnreachable for an address Ray cannot parse or an ``auto`` that finds nothing."""
    from ray._private import services

    if address.startswith("ray://"):
        return None
    try:
        canonical = services.canonicalize_bootstrap_address(address)
    except ValueError:
        raise ClusterUnreachable(
            f"cluster.address: {address!r} is not an address; allowed: auto, HOST:PORT (the "
            f"head's GCS port, e.g. 127.0.0.1:6379), ray://HOST:PORT, {LOCAL_HINT}") from None
    except ConnectionError as e:  # auto without a running cluster
        raise ClusterUnreachable(
            f"cluster.address: {address}: no running Ray cluster found ({_first(e)}); start "
            f"one (ray start --head), name its HOST:PORT, {LOCAL_HINT}") from None
    if canonical is None:
        raise ClusterUnreachable(f"cluster.address: {address!r} names no cluster; allowed: "
                                 f"auto, HOST:PORT, ray://HOST:PORT, {LOCAL_HINT}")
    return canonical


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def check_cluster(address: str) -> None:
    """ClusterUnreachable (one line: what is wrong, what to try) unless the Ray cluster at
    ``address`` accepts a connection from this driver: something listens at the address Ray
    will use, and its GCS accepts this driver's token (or the absence of one)."""
    target = bootstrap_address(address)
    probe = target or address[len("ray://"):]
    where = address if target in (None, address) else f"{address} (Ray connects to {target})"
    try:
        host, port = _host_port(probe)
    except ValueError:
        raise ClusterUnreachable(f"cluster.address: {address!r} has no port; allowed: "
                                 f"HOST:PORT, auto, ray://HOST:PORT, {LOCAL_HINT}") from None
    try:
        socket.create_connection((host, port), timeout=TCP_TIMEOUT_S).close()
    except OSError as e:
        raise ClusterUnreachable(
            f"cluster.address: nothing answers at {where} ({_first(e)}); start the cluster's "
            f"head there (ray start --head --port={port}), correct the address, "
            f"{LOCAL_HINT}") from None
    if target is None:  # Ray Client: its server speaks another protocol; ray.init checks it
        return
    from ray._private.authentication.authentication_token_setup import (
        maybe_enable_token_auth_if_token_available)
    from ray._raylet import GcsClient
    from ray.exceptions import AuthenticationError

    if address == "auto":  # as ray.init does: only a cluster found here uses the local token
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    try:
        with _quiet_stderr():
            GcsClient(address=target, cluster_id=None)
    except AuthenticationError:
        mode = os.environ.get("RAY_AUTH_MODE", "")
        said = ("this driver's token is not the cluster's" if mode.lower() == "token" else
                "this driver sends no token (RAY_AUTH_MODE is not token)")
        raise ClusterUnreachable(
            f"cluster.address: the Ray cluster at {where} requires an authentication token and "
            f"{said}; run with RAY_AUTH_MODE=token and the cluster's token in RAY_AUTH_TOKEN (or "
            "the file RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token; `ray get-auth-token` on the "
            f"head prints it), {LOCAL_HINT}") from None
    except Exception as e:
        raise ClusterUnreachable(
            f"cluster.address: {where} does not answer as a Ray cluster ({_first(e)}); check "
            f"that a Ray head runs there and that this is its GCS port, {LOCAL_HINT}") from None


def connect(ray, address: str, **init_kwargs) -> None:
    """``ray.init(address=address, **init_kwargs)`` after :func:`check_cluster`; any failure of
    either is a ClusterUnreachable (one line)."""
    check_cluster(address)
    try:
        ray.init(address=address, **init_kwargs)
    except Exception as e:
        raise ClusterUnreachable(
            f"cluster.address: cannot connect to the Ray cluster at {address} ({_first(e)}); "
            "check that its Ray version is this driver's (ray --version) and that it "
            f"accepts this driver, {LOCAL_HINT}") from None

"""A moto S3 server on 127.0.0.1 for the tests (the ``s3`` fixture of tests/conftest.py), and
the environment that points the tool's S3 clients (pyarrow on the driver and on Ray's workers,
boto3 in the tests) at it."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time


def free_port() -> int:
    """A port on 127.0.0.1 where nothing listens (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def aws_env(endpoint: str) -> dict[str, str]:
    """Dummy credentials, a region and ``AWS_ENDPOINT_URL``: what pyarrow's S3 filesystem and
    boto3 read to talk to the server at ``endpoint`` instead of AWS."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}


def keys(client, bucket: str, prefix: str = "") -> list[str]:
    """Every key of ``bucket`` under ``prefix`` (all pages), sorted."""
    out = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return sorted(out)


@contextlib.contextmanager
def moto_server(boto3):
    """(endpoint, boto3 client) of a moto S3 server on 127.0.0.1 started here (``python -m
    moto.server``) and stopped, by its PID, on exit. Raises RuntimeError if it does not answer
    within 60 s."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the moto server did not start") from None
                time.sleep(0.2)
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="test", aws_secret_access_key="test")
        yield endpoint, client
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)

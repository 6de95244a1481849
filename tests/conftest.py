import os

import pytest

# Keep any Ray started by the tests on the loopback interface (must precede Ray's start).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

# Where the fixtures' stalling measures count their attempts (tests/fixtures/stall_measures.py):
# one directory per test process, so that two runs of the suite on one machine do not count
# each other's (set before any Ray or subprocess starts, which inherit it).
if "SWEEP_TEST_ATTEMPTS_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["SWEEP_TEST_ATTEMPTS_DIR"] = tempfile.mkdtemp(prefix="sweep-test-attempts-")
    atexit.register(shutil.rmtree, os.environ["SWEEP_TEST_ATTEMPTS_DIR"], ignore_errors=True)

# Most of the suite's time is spent waiting (Ray starting, sweeps' subprocesses, time limits
# running out), so even on 2 cores two workers finish it ~1.4x sooner; beyond 4 the tests that
# start a 2-CPU Ray each only compete (measured: 4 workers on 2 cores were no faster than 2).
MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (pyproject's addopts): 2 workers up to 4 cores, then one per 2 cores, at most
    MAX_WORKERS."""
    return max(2, min(MAX_WORKERS, (os.cpu_count() or 1) // 2))


def pytest_collection_modifyitems(config, items):
    """The tests marked ``slow`` first (in their order), so that the workers do not end with
    one long test each while the other has nothing left."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray (2 CPUs, 127.0.0.1) shared by the end-to-end tests."""
    import logging

    import ray

    from sweep.driver import check_loopback, loopback_node

    with loopback_node():  # on 127.0.0.1 even if something imported ray before this conftest
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING, _node_ip_address="127.0.0.1")
    check_loopback(ray)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def s3():
    """(endpoint, boto3 client) of a moto S3 server on 127.0.0.1 (tests/s3server.py), one per
    test module; skipped without moto and boto3 (the ``test`` extras)."""
    pytest.importorskip("moto")
    boto3 = pytest.importorskip("boto3")
    from s3server import moto_server

    try:
        with moto_server(boto3) as server:
            yield server
    except RuntimeError as e:
        if "did not start" in str(e):
            pytest.fail(str(e))
        raise

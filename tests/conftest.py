import os

import pytest

# Keep any Ray started by the tests on the loopback interface (must precede Ray's start).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


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

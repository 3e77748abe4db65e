"""Put ``tests/support`` on PYTHONPATH and subprocesses get the torchvision test shim too."""

import contextlib

with contextlib.suppress(Exception):  # a broken shim must not stop the interpreter from starting
    import tv_cpu_shim  # noqa: F401

"""Put ``tests/support`` on PYTHONPATH and subprocesses get the torchvision test shim too."""

try:
    import tv_cpu_shim  # noqa: F401
except Exception:  # a broken shim must not stop the interpreter from starting
    pass

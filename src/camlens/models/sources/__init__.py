"""One module per model source; each defines ``SOURCE`` (see :mod:`camlens.models.registry`)."""

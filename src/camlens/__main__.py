"""``python -m camlens``: the same as the ``camlens`` command."""

from camlens.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

"""``camlens serve``: a local web app and JSON API to explore a model's maps.

Needs the ``serve`` extra (FastAPI, uvicorn, python-multipart): ``pip install "camlens[serve]"``.

Example (in a script; the command line does the same with ``camlens serve --model demo``)::

    from camlens.models import load_model
    from camlens.serve import Engine, create_app
    import uvicorn

    app = create_app(Engine({"demo": load_model("demo")}), workers=2)
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

from camlens.serve.app import Gate, create_app
from camlens.serve.engine import ChoiceError, Choices, Engine

__all__ = ["ChoiceError", "Choices", "Engine", "Gate", "create_app"]

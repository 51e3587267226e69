"""The `model.py` of every Python-backend model: a two-line adapter naming the step it runs.

The build copies `<model>.py` from here to `<repo>/<model>/<version>/model.py`; the repository
itself is all build output.
"""

from pathlib import Path

ADAPTERS_DIR = Path(__file__).resolve().parent


def adapter_source(model: str) -> Path:
    return ADAPTERS_DIR / f"{model}.py"

"""durabook: durable notebooks. A notebook is a workflow; every code cell is a step.

Imports are lazy so that ``%load_ext durabook.kernel`` costs a kernel nothing
beyond the extension itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Attempt",
    "CellState",
    "CellStatus",
    "Client",
    "DurabookError",
    "ErrorInfo",
    "EventTimeout",
    "InstanceStatus",
    "InstanceSummary",
    "RunResult",
    "Status",
    "__version__",
    "sleep",
    "sleep_until",
    "wait_for_event",
]

_LAZY = {
    # the workflow primitives live with the kernel extension: cells import nothing heavy
    "sleep": "durabook_kernel.primitives",
    "sleep_until": "durabook_kernel.primitives",
    "wait_for_event": "durabook_kernel.primitives",
    "EventTimeout": "durabook_kernel.primitives",
    "Client": "durabook.client",
    "DurabookError": "durabook.errors",
    "Attempt": "durabook.models",
    "CellState": "durabook.models",
    "CellStatus": "durabook.models",
    "ErrorInfo": "durabook.models",
    "InstanceStatus": "durabook.models",
    "InstanceSummary": "durabook.models",
    "RunResult": "durabook.models",
    "Status": "durabook.models",
}

if TYPE_CHECKING:
    from durabook_kernel.primitives import EventTimeout, sleep, sleep_until, wait_for_event

    from .client import Client
    from .errors import DurabookError
    from .models import (
        Attempt,
        CellState,
        CellStatus,
        ErrorInfo,
        InstanceStatus,
        InstanceSummary,
        RunResult,
        Status,
    )


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'durabook' has no attribute {name!r}")


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where JupyterLab finds the prebuilt front end (``jupyter labextension develop``)."""
    from pathlib import Path

    return [{"src": str(Path(__file__).parent / "labextension"), "dest": "durabook"}]

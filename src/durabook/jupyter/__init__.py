"""durabook in JupyterLab: the server extension (``/durabook/api`` with Jupyter's
auth, see :mod:`.handlers`) and the prebuilt front end (``labextension/``).

Installing the wheel enables both: the front end lands in
``share/jupyter/labextensions/durabook`` and ``etc/jupyter/jupyter_server_config.d/
durabook.json`` turns this extension on. The engine's home is ``$DURABOOK_HOME``,
else ``.durabook`` in the server's root folder.
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path
from typing import Any

__all__ = ["EngineHost"]

from .host import EngineHost

_HOST_KEY = "durabook_host"  # the EngineHost, in the web app's settings


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "durabook.jupyter"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from .handlers import handlers

    root = Path(serverapp.root_dir).expanduser()
    home = os.environ.get("DURABOOK_HOME") or root / ".durabook"
    host = EngineHost(home)
    serverapp.web_app.settings[_HOST_KEY] = host
    serverapp.web_app.add_handlers(".*$", handlers(host, serverapp.web_app.settings["base_url"]))
    host.start()
    # jupyter_server tells function-style extensions nothing when it stops: close the
    # hosted engine when the process exits (runs stop at their last commit)
    atexit.register(host.close)
    serverapp.log.info("durabook: /durabook/api for the home %s", host.home)

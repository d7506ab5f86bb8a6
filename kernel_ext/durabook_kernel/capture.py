"""A cell's outputs, recorded inside the kernel from the messages it publishes.

Every output a kernel shows goes through its ``Session.send`` on IOPub: streams
(from ipykernel's IO thread), display data, execute results, errors, clear and
update-display messages. :class:`OutputCapture` wraps that one method, so the
driver holds each cell's outputs itself and can make them durable in the step
journal together with the cell's state, before the next cell starts. Outputs
are built as nbformat v4 outputs, the way ``nbformat.v4.output_from_msg`` and
nbclient build them (neighbouring chunks of one stream are joined).

Stdlib only: the kernel imports this.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any

__all__ = ["OutputCapture", "Outputs"]

_OUTPUT_TYPES = {"stream", "display_data", "execute_result", "error"}
_WATCHED = _OUTPUT_TYPES | {"clear_output", "update_display_data"}


def output_from_msg(kind: str, content: dict[str, Any]) -> dict[str, Any]:
    if kind == "stream":
        return {"output_type": "stream", "name": content["name"], "text": content["text"]}
    if kind == "error":
        return {
            "output_type": "error",
            "ename": content["ename"],
            "evalue": content["evalue"],
            "traceback": list(content.get("traceback", [])),
        }
    out: dict[str, Any] = {
        "output_type": kind,
        "data": dict(content.get("data", {})),
        "metadata": dict(content.get("metadata", {})),
    }
    if kind == "execute_result":
        out["execution_count"] = content.get("execution_count")
    return out


class Outputs:
    """One cell's outputs, as nbclient would have recorded them."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self._clear_on_next = False
        self._displays: dict[int, str] = {}  # position -> display_id

    def add(self, kind: str, content: dict[str, Any]) -> None:
        if kind == "clear_output":
            if content.get("wait"):
                self._clear_on_next = True
            else:
                self.clear()
            return
        did = (content.get("transient") or {}).get("display_id")
        if kind == "update_display_data":
            for pos, known in self._displays.items():
                if known == did:
                    self.items[pos]["data"] = dict(content.get("data", {}))
                    self.items[pos]["metadata"] = dict(content.get("metadata", {}))
            return
        if self._clear_on_next:
            self.clear()
        out = output_from_msg(kind, content)
        last = self.items[-1] if self.items else None
        if (
            kind == "stream"
            and last is not None
            and last["output_type"] == "stream"
            and last["name"] == out["name"]
        ):
            last["text"] += out["text"]
            return
        if did:
            self._displays[len(self.items)] = did
        self.items.append(out)

    def clear(self) -> None:
        self.items = []
        self._displays = {}
        self._clear_on_next = False


class OutputCapture:
    """Tees the IOPub output messages of one request into the current cell's Outputs."""

    def __init__(self, kernel: Any, parent_id: str | None) -> None:
        self.kernel = kernel
        self.session = kernel.session
        self.parent_id = parent_id
        self.current = Outputs()
        self._lock = threading.Lock()
        self._original = None

    def install(self) -> None:
        original = self.session.send
        self._original = original
        capture = self

        def send(
            stream: Any,
            msg_or_type: Any,
            content: Any = None,
            parent: Any = None,
            *a: Any,
            **kw: Any,
        ) -> Any:
            with contextlib.suppress(Exception):  # bookkeeping never breaks the output
                capture._see(msg_or_type, content, parent)
            return original(stream, msg_or_type, content, parent, *a, **kw)

        self.session.send = send

    def uninstall(self) -> None:
        if self._original is not None:
            # the instance attribute shadowed the class's method: removing it restores it
            self.session.__dict__.pop("send", None)
            self._original = None

    def _see(self, msg_or_type: Any, content: Any, parent: Any) -> None:
        if isinstance(msg_or_type, dict):
            kind = msg_or_type.get("msg_type") or msg_or_type.get("header", {}).get("msg_type")
            content = msg_or_type.get("content")
            parent = msg_or_type.get("parent_header")
        else:
            kind = msg_or_type
        if kind not in _WATCHED or content is None:
            return
        if self.parent_id is not None:
            pid = (parent or {}).get("header", parent or {}).get("msg_id")
            if pid != self.parent_id:
                return
        with self._lock:
            self.current.add(kind, content)

    def take(self) -> list[dict[str, Any]]:
        with self._lock:
            items = self.current.items
            self.current = Outputs()
        return items

    def drop(self) -> None:
        self.take()

"""Checkpoints read back: which cells are done, and the state to restore.

The state after cell *k* is the fold of the manifests of the committed cells up
to *k*: the newest saved value per name wins, a deletion removes it. A name
whose newest value could not be saved is rebuilt by replaying the cell that
made it when that cell is marked replay, and is otherwise an
:class:`~durabook.errors.UnrestorableState` naming the variable and the cell.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .errors import UnrestorableState
from .models import CellStatus, ErrorInfo, StepRecord, UnserializableVar, VarRef
from .notebook import is_replay_cell, source_hash

__all__ = ["RestorePlan", "committed_prefix", "restore_plan", "step_record"]


@dataclass
class RestorePlan:
    refs: dict[str, dict[str, Any]] = field(default_factory=dict)
    replay: list[dict[str, Any]] = field(default_factory=list)
    unrestorable: dict[str, str] = field(default_factory=dict)  # lenient plans: name -> why

    def to_plan(self) -> dict[str, Any]:
        return {"restore": self.refs, "replay": self.replay, "unrestorable": self.unrestorable}


def committed_prefix(code_cells: list[tuple[int, Any]], latest: dict[int, dict[str, Any]]) -> int:
    """How many code cells, from the top, are committed with the same id and source."""
    n = 0
    for index, cell in code_cells:
        row = latest.get(index)
        if (
            row is None
            or row["status"] != "committed"
            or row["cell_id"] != cell.get("id")
            or row["source_hash"] != source_hash(cell.source)
        ):
            break
        n += 1
    return n


def restore_plan(
    code_cells: list[tuple[int, Any]],
    latest: dict[int, dict[str, Any]],
    upto: int,
    strict: bool = True,
) -> RestorePlan:
    """The state after the first ``upto`` code cells (all committed).

    Strict (a resumed run): a variable that could not be saved and whose cell is
    not marked replay is an :class:`UnrestorableState`. Lenient (``%durabook
    restore``): it is listed in ``unrestorable`` and the rest is restored.
    """
    refs: dict[str, dict[str, Any]] = {}
    origin: dict[str, int] = {}  # name -> index of the cell that saved it
    broken: dict[str, tuple[int, dict[str, Any]]] = {}
    cells_by_index = dict(code_cells)
    for index, _cell in code_cells[:upto]:
        row = latest[index]
        if not row["state"]:
            continue
        state = json.loads(row["state"])
        for name in state.get("deleted", []):
            refs.pop(name, None)
            broken.pop(name, None)
        for name, ref in state.get("vars", {}).items():
            target = ref.get("target")
            held = refs.get(target) if target else None
            if held is not None and held["digest"] == ref["digest"]:
                # an alias of a name saved now or in an earlier cell, with the same
                # value: restored as one object
                group = held.get("group") or f"{origin[target]}:{target}"
                refs[target] = {**held, "group": group}
                ref = {**ref, "group": group}
            refs[name] = ref
            origin[name] = index
            broken.pop(name, None)
        for name, info in state.get("unserializable", {}).items():
            refs.pop(name, None)
            broken[name] = (index, info)
    plan = RestorePlan(refs=refs)
    replay: dict[int, list[str]] = {}
    for name, (index, info) in sorted(broken.items(), key=lambda kv: kv[1][0]):
        cell = cells_by_index[index]
        if not is_replay_cell(cell) and not strict:
            plan.unrestorable[name] = (
                f"{info['type']} made by cell {index} cannot be saved ({info['error']})"
            )
            continue
        if not is_replay_cell(cell):
            raise UnrestorableState(
                f"cannot restore {name!r} ({info['type']}), made by cell {index}: it cannot be "
                f"saved ({info['error']}). Mark cell {index} to be replayed on resume (first "
                "line '# durabook: replay' or tag 'durabook-replay') and resume with "
                "`--notebook` naming the edited notebook, or `del` it before the cell ends.",
                variable=name,
                cell=index,
                type=info["type"],
            )
        replay.setdefault(index, []).append(name)
    plan.replay = [
        {
            "index": i,
            "id": cells_by_index[i].get("id"),
            "source": cells_by_index[i].source,
            "names": names,
        }
        for i, names in sorted(replay.items())
    ]
    return plan


def step_record(
    instance_id: str,
    index: int,
    cell_id: str,
    src_hash: str,
    ok: bool,
    attempt: int,
    content: dict[str, Any],
) -> StepRecord:
    """A finished cell as the kernel reported it (``durabook_step`` content)."""
    manifest = content.get("manifest") or {}
    started = content.get("started_at")
    when = datetime.fromtimestamp(started, timezone.utc) if started else datetime.now(timezone.utc)
    return StepRecord(
        instance_id=instance_id,
        index=index,
        cell_id=cell_id,
        source_hash=src_hash,
        status=CellStatus.COMMITTED if ok else CellStatus.FAILED,
        attempt=attempt,
        started_at=when.replace(tzinfo=None),
        duration_ms=float(content.get("duration_ms") or 0.0),
        cpu_s=content.get("cpu_s"),
        peak_rss_bytes=content.get("peak_rss_bytes"),
        execution_count=content.get("execution_count"),
        vars={k: VarRef(**v) for k, v in manifest.get("vars", {}).items()},
        deleted=manifest.get("deleted", []),
        unserializable={
            k: UnserializableVar(**v) for k, v in manifest.get("unserializable", {}).items()
        },
        error=ErrorInfo(**content["error"]) if content.get("error") else None,
    )

"""Per-cell step options: retries, backoff, timeout, name, memory and CPU limits.

Written in the cell as ``%%step --retries 3 --backoff exponential --delay 2s
--max-delay 1m --timeout 30s --name charge``, or equally as cell metadata
``{"durabook": {"step": {"retries": 3, "backoff": "exponential", "delay": "2s",
"max_delay": "1m", "timeout": "30s", "name": "charge"}}}`` so a UI can edit
them. ``--memory 2G --cpu-seconds 60`` give the cell its own limits (see
:mod:`durabook.kernels.limits`), within the operator's maximums. Both are
checked when an instance is created: a bad option is bad input.
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from durabook_kernel.primitives import parse_duration

from .errors import BadInput
from .kernels.limits import ByteSize, Limits, Seconds, resolve_limits

__all__ = ["StepOptions", "cell_body", "check_step_options", "step_options"]

MAGIC = "%%step"


class StepOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    retries: int = Field(0, ge=0, le=100)
    backoff: Literal["fixed", "linear", "exponential"] = "fixed"
    delay: float = 1.0  # seconds before the first retry
    max_delay: float = 3600.0
    timeout: float | None = None  # seconds; None: no limit
    name: str | None = None
    memory: ByteSize = None  # bytes; None: the run's limit
    cpu_seconds: Seconds = Field(default=None, gt=0)  # this cell's CPU; None: the run's

    @field_validator("delay", "max_delay", "timeout", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> Any:
        return None if v is None else parse_duration(v)

    def delay_before(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (``attempt`` >= 1 failed)."""
        if self.backoff == "exponential":
            d = self.delay * 2 ** (attempt - 1)
        elif self.backoff == "linear":
            d = self.delay * attempt
        else:
            d = self.delay
        return min(d, self.max_delay)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:
        raise ValueError(message)


_parser = _Parser(prog=MAGIC, add_help=False)
_parser.add_argument("--retries", type=int)
_parser.add_argument("--backoff")
_parser.add_argument("--delay")
_parser.add_argument("--max-delay", dest="max_delay")
_parser.add_argument("--timeout")
_parser.add_argument("--name")
_parser.add_argument("--memory")
_parser.add_argument("--cpu-seconds", dest="cpu_seconds")


def _magic_line(source: str) -> str | None:
    first = source.lstrip("\n").split("\n", 1)[0]
    if first.startswith(MAGIC) and (len(first) == len(MAGIC) or first[len(MAGIC)].isspace()):
        return first[len(MAGIC) :]
    return None


def cell_body(source: str) -> str:
    """The code the kernel runs: the cell without its ``%%step`` line."""
    if _magic_line(source) is None:
        return source
    rest = source.lstrip("\n").split("\n", 1)
    return rest[1] if len(rest) > 1 else ""


def step_options(cell: Any, index: int) -> StepOptions | None:
    """A code cell's options (magic line first, then metadata), or None."""
    raw: dict[str, Any] = {}
    meta = cell.get("metadata", {}).get("durabook", {}).get("step")
    try:
        if meta is not None:
            if not isinstance(meta, dict):
                raise ValueError("metadata durabook.step must be an object")
            raw.update(meta)
        line = _magic_line(cell.source)
        if line is not None:
            ns = _parser.parse_args(shlex.split(line))
            raw.update({k: v for k, v in vars(ns).items() if v is not None})
        if not raw:
            return None
        return StepOptions(**raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "options"
        raise BadInput(
            f"cell {index}: invalid %%step option {where}: {err['msg']}", cell=index
        ) from None
    except ValueError as exc:
        raise BadInput(f"cell {index}: invalid %%step options: {exc}", cell=index) from None


def check_step_options(nb: Any) -> None:
    """Every code cell's options parse (cell indexes as in the output notebook)."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            opts = step_options(cell, i)
            if opts is not None and (opts.memory or opts.cpu_seconds):
                resolve_limits(
                    Limits(memory=opts.memory, cpu_seconds=opts.cpu_seconds), f"cell {i}"
                )

"""Process-level state a notebook sets outside its namespace, saved and re-applied.

A pickle of the user namespace misses what cells change in the interpreter
itself. Notebooks commonly set: matplotlib's style and rcParams and its
backend (``%matplotlib``), pandas and numpy display options, scikit-learn's
``set_config``, ``warnings`` filters, ``sys.setrecursionlimit``, ``%config``
settings and other state-setting magics (``%autoreload 2``, ``%precision``,
``%env X=1``, ...), extensions loaded with ``%load_ext``, ``os.environ``, the
working directory and ``sys.path``. Each is an
*aspect* here: ``capture`` returns a small, comparable, picklable value;
``apply`` puts it back in a fresh kernel. After every cell the tracker
compares the snapshot with the last one (a few dictionary comparisons, about
20 us; modules not imported cost nothing) and saves it when it changed. On
restore it is applied after the variables and replayed cells, in a fixed order
(extensions and the backend before rcParams and ``%config``). An aspect that
cannot be re-applied is reported by name, never skipped silently.

Stdlib only at import time: the kernel imports this.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from typing import Any

__all__ = ["ProcessState"]

_MISSING = object()


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, prefix + key + "."))
        else:
            out[prefix + key] = value
    return out


class ProcessState:
    """Captures and re-applies the interpreter state a notebook commonly changes.

    ``magic_lines`` and ``mpl_gui`` are recorded by wrapping
    ``shell.run_line_magic`` and ``shell.enable_matplotlib`` (what ``%matplotlib``
    calls): the effects of ``%config``, ``%autoreload``, ``%precision``, ... live in
    objects that cannot be compared cheaply; the lines that made them can be
    replayed, in order.
    """

    def __init__(self, shell: Any) -> None:
        self.shell = shell
        self.magic_lines: list[tuple[str, str]] = []
        self.mpl_gui: str | None = None
        self._baseline_ext = {*self._extensions(), "durabook_kernel", "durabook.kernel"}
        self._last_rc: dict[str, Any] | None = None
        self._rc_diff: dict[str, Any] = {}
        self._last_pd: dict[str, Any] | None = None
        self._pd_diff: dict[str, Any] = {}
        self._env_base = dict(os.environ)  # what the kernel started with
        self._last_env: dict[str, str] | None = None
        self._env_diff: dict[str, Any] = {}
        self._hook()

    # -- recording what magics did --------------------------------------------------
    def _hook(self) -> None:
        shell = self.shell
        run_line_magic = getattr(shell, "run_line_magic", None)
        if run_line_magic is not None:
            # the method every `%config` goes through (magics resolve lazily by name,
            # so wrapping the magic itself would find the wrapper again)
            def run_line(magic_name: str, line: str, _stack_depth: int = 1) -> Any:
                result = run_line_magic(magic_name, line, _stack_depth=_stack_depth + 1)
                if _sets_state(magic_name, line):
                    self.magic_lines.append((magic_name, line.strip()))
                return result

            shell.run_line_magic = run_line
        enable = getattr(shell, "enable_matplotlib", None)
        if enable is not None:

            def enable_matplotlib(gui: Any = None) -> Any:
                result = enable(gui)
                self.mpl_gui = gui or "inline"
                return result

            shell.enable_matplotlib = enable_matplotlib

    def _extensions(self) -> list[str]:
        manager = getattr(self.shell, "extension_manager", None)
        return sorted(getattr(manager, "loaded", ()) or ())

    # -- capture ---------------------------------------------------------------------
    def capture(self) -> dict[str, Any]:
        snap: dict[str, Any] = {
            "environ": self._environ(),
            "cwd": _cwd(),
            "sys_path": list(sys.path),
            "recursion_limit": sys.getrecursionlimit(),
            "warnings": [_filter_key(f) for f in warnings.filters],
            "extensions": [e for e in self._extensions() if e not in self._baseline_ext],
            "magics": list(self.magic_lines),
        }
        mpl = sys.modules.get("matplotlib")
        if mpl is not None and hasattr(mpl, "rcParams"):
            snap["matplotlib"] = self._matplotlib(mpl)
        np = sys.modules.get("numpy")
        if np is not None and hasattr(np, "get_printoptions"):
            opts = dict(np.get_printoptions())
            snap["numpy"] = {"print": opts, "err": dict(np.geterr())}
        pd = sys.modules.get("pandas")
        config = sys.modules.get("pandas._config.config")
        if pd is not None and config is not None and hasattr(config, "_global_config"):
            snap["pandas"] = self._pandas(config)
        sklearn = sys.modules.get("sklearn")
        if sklearn is not None and hasattr(sklearn, "get_config"):
            snap["sklearn"] = dict(sklearn.get_config())
        return snap

    def _environ(self) -> dict[str, Any]:
        """``os.environ`` as cells changed it (what the kernel started with is not saved)."""
        env = os.environ
        if self._last_env is None or env != self._last_env:
            base = self._env_base
            self._env_diff = {
                "set": {k: v for k, v in env.items() if base.get(k) != v},
                "unset": sorted(k for k in base if k not in env),
            }
            self._last_env = dict(env)
        return self._env_diff

    def _matplotlib(self, mpl: Any) -> dict[str, Any]:
        rc = mpl.rcParams
        if self._last_rc is None or not dict.__eq__(rc, self._last_rc):
            current = dict.copy(rc)
            default = mpl.rcParamsDefault
            self._rc_diff = {
                k: v
                for k, v in current.items()
                if k != "backend" and dict.get(default, k, _MISSING) != v
            }
            self._last_rc = current
        backend = None
        getter = getattr(rc, "_get_backend_or_none", None)
        if getter is not None:
            backend = getter()
        return {"rc": self._rc_diff, "backend": backend, "gui": self.mpl_gui}

    def _pandas(self, config: Any) -> dict[str, Any]:
        flat = _flatten(config._global_config)
        if self._last_pd is None or flat != self._last_pd:
            registered = config._registered_options
            self._pd_diff = {
                k: v for k, v in flat.items() if k in registered and registered[k].defval != v
            }
            self._last_pd = flat
        return self._pd_diff

    # -- apply -----------------------------------------------------------------------
    @staticmethod
    def apply_early(snap: dict[str, Any]) -> list[str]:
        """The environment and where modules are found: before saved variables (modules
        among them, which may read the environment as they import) load."""
        problems: list[str] = []
        env = snap.get("environ") or {}
        os.environ.update(env.get("set", {}))
        for name in env.get("unset", []):
            os.environ.pop(name, None)
        if snap.get("cwd"):
            try:
                os.chdir(snap["cwd"])
            except OSError as exc:
                problems.append(f"working directory: {exc}")
        if "sys_path" in snap:
            sys.path[:] = snap["sys_path"]
        return problems

    def apply(self, snap: dict[str, Any]) -> list[str]:
        """Put the rest of a snapshot back, after the variables; returns what could not
        be re-applied, one line each."""
        problems: list[str] = []

        def attempt(what: str, fn: Any, *args: Any) -> None:
            try:
                fn(*args)
            except Exception as exc:  # reported, never silently dropped
                problems.append(f"{what}: {type(exc).__name__}: {exc}")

        if "recursion_limit" in snap:
            attempt("recursion limit", sys.setrecursionlimit, snap["recursion_limit"])
        if "warnings" in snap:
            attempt("warnings filters", _apply_warnings, snap["warnings"])
        manager = getattr(self.shell, "extension_manager", None)
        for name in snap.get("extensions", []):
            if manager is not None and name not in manager.loaded:
                attempt(f"extension {name}", manager.load_extension, name)
        if "matplotlib" in snap:
            attempt("matplotlib", self._apply_matplotlib, snap["matplotlib"])
        for name, line in snap.get("magics", []):
            attempt(f"%{name} {line}", self.shell.run_line_magic, name, line)
        if "numpy" in snap:
            attempt("numpy options", _apply_numpy, snap["numpy"])
        if "pandas" in snap:
            attempt("pandas options", _apply_pandas, snap["pandas"])
        if "sklearn" in snap:
            attempt("scikit-learn config", _apply_sklearn, snap["sklearn"])
        # what was applied is the new baseline: the next capture sees no change
        self.magic_lines = [(str(m[0]), str(m[1])) for m in snap.get("magics", [])]
        return problems

    def _apply_matplotlib(self, state: dict[str, Any]) -> None:
        import matplotlib

        if state.get("gui"):
            self.shell.enable_matplotlib(state["gui"])
        elif state.get("backend"):
            current = matplotlib.rcParams._get_backend_or_none()  # type: ignore[attr-defined]
            if current != state["backend"]:
                matplotlib.use(state["backend"])
        rc = matplotlib.rcParams
        default = matplotlib.rcParamsDefault
        wanted = state.get("rc", {})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecated keys warn once already
            for key in list(dict.keys(rc)):
                if key == "backend":
                    continue
                target = wanted.get(key, dict.get(default, key, _MISSING))
                if target is not _MISSING and dict.get(rc, key) != target:
                    rc[key] = target


# line magics whose effect is process state, replayed on restore in the order run
_STATE_MAGICS = {"autoreload", "aimport", "precision", "xmode", "colors", "pdb", "autocall"}


def _sets_state(name: str, line: str) -> bool:
    if name in ("config", "env"):
        return "=" in line  # a setting, not a query
    return name in _STATE_MAGICS


def _apply_sklearn(config: dict[str, Any]) -> None:
    import sklearn

    known = sklearn.get_config()
    sklearn.set_config(**{k: v for k, v in config.items() if k in known})


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # deleted under us
        return None


def _filter_key(f: tuple[Any, ...]) -> tuple[Any, ...]:
    action, message, category, module, lineno = f
    return (
        action,
        getattr(message, "pattern", message),
        category,
        getattr(module, "pattern", module),
        lineno,
    )


def _apply_warnings(saved: list[tuple[Any, ...]]) -> None:
    import re

    filters = []
    for action, message, category, module, lineno in saved:
        filters.append(
            (
                action,
                re.compile(message, re.I) if message else None,
                category,
                re.compile(module) if module else None,
                lineno,
            )
        )
    warnings.filters[:] = filters  # type: ignore[index]
    with contextlib.suppress(AttributeError):
        warnings._filters_mutated()  # type: ignore[attr-defined]


def _apply_numpy(state: dict[str, Any]) -> None:
    import numpy as np

    np.set_printoptions(**state.get("print", {}))
    np.seterr(**state.get("err", {}))


def _apply_pandas(diff: dict[str, Any]) -> None:
    import pandas as pd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated options warn when set
        for key, value in diff.items():
            pd.set_option(key, value)

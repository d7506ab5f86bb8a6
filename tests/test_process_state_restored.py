"""Process-level state a notebook sets is the same after a resume as in an uninterrupted run.

matplotlib style, rcParams and backend, pandas and numpy options, warnings
filters, the recursion limit, %config, %load_ext, the working directory and
sys.path and os.environ live outside the namespace; a kill and resume must not revert
them.
"""

from __future__ import annotations

import json
from pathlib import Path

from durabook import Client, Status

from .conftest import outputs_text, write_nb

SETUP = """\
import os, sys, warnings
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
plt.style.use('ggplot')
matplotlib.rcParams['lines.linewidth'] = 3.5
pd.set_option('display.max_rows', 7)
np.set_printoptions(precision=2)
warnings.filterwarnings('ignore', message='quiet please')
sys.setrecursionlimit(2345)
os.chdir(WORK)
sys.path.append('/opt/extra-lib')
os.environ['MY_SETTING'] = 'on'
"""

MAGICS = """\
%matplotlib inline
%config InlineBackend.figure_formats = ['svg']
%load_ext autoreload
"""

KILL = """\
import os, pathlib
_mark = pathlib.Path(MARK)
if not _mark.exists():
    _mark.touch()
    os.kill(os.getpid(), 9)  # the kernel dies here on the first attempt
"""

REPORT = """\
import json, warnings
ip = get_ipython()
print(json.dumps({
    'facecolor': matplotlib.rcParams['axes.facecolor'],
    'linewidth': matplotlib.rcParams['lines.linewidth'],
    'max_rows': pd.get_option('display.max_rows'),
    'precision': np.get_printoptions()['precision'],
    'quiet': any(f[1] is not None and f[1].pattern == 'quiet please' for f in warnings.filters),
    'recursion': sys.getrecursionlimit(),
    'cwd': os.getcwd(),
    'extra_path': '/opt/extra-lib' in sys.path,
    'autoreload': 'autoreload' in ip.extension_manager.loaded,
    'backend': matplotlib.get_backend(),
    'environ': os.environ.get('MY_SETTING'),
}, sort_keys=True))
"""

PLOT = "plt.plot([1, 3, 2])"  # an implicit figure: shown in the %config'd format


def _notebook(tmp_path: Path, mark: Path) -> Path:
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    params = f"WORK = {str(work)!r}\nMARK = {str(mark)!r}"
    return write_nb(tmp_path / "styled.ipynb", [params, SETUP, MAGICS, "x = 1", KILL, REPORT, PLOT])


def _report(output: str) -> tuple[dict[str, object], list[str]]:
    nb = json.loads(Path(output).read_text())
    plot = nb["cells"][6]["outputs"]
    kinds = sorted(k for o in plot for k in o.get("data", {}))
    return json.loads(outputs_text(output)[5]), kinds


def test_process_state_survives_a_kernel_kill(home: Path, tmp_path: Path):
    client = Client()
    # the uninterrupted run
    straight = tmp_path / "straight.mark"
    straight.touch()
    base = client.run(_notebook(tmp_path, straight))
    assert base.status == Status.COMPLETED, base.error
    expected, expected_kinds = _report(base.output or "")
    assert expected["facecolor"] == "#E5E5E5" and expected["recursion"] == 2345
    assert expected["environ"] == "on"
    assert "image/svg+xml" in expected_kinds

    # the same notebook, its kernel SIGKILLed after the settings, then resumed
    res = client.run(_notebook(tmp_path, tmp_path / "kill.mark"))
    assert res.status == Status.FAILED and res.error and res.error.ename == "DeadKernelError"
    done = client.resume(res.id)
    assert done.status == Status.COMPLETED, done.error
    got, kinds = _report(done.output or "")
    assert got == expected
    assert kinds == expected_kinds

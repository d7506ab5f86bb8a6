"""The events IPython and ipykernel fire around a cell fire around each cell under durabook
too, in the same order as under papermill (one execute_request per cell).

matplotlib's inline backend shows implicit figures from ``post_execute``; extensions
(autoreload, profilers, loggers) hook the others.
"""

from __future__ import annotations

import json
from pathlib import Path

import papermill

from durabook import Client, Status

from .conftest import outputs_text, write_nb

REGISTER = """\
seen = []
ip = get_ipython()
for _name in ("pre_execute", "pre_run_cell", "post_execute", "post_run_cell"):
    if _name.endswith("run_cell"):
        ip.events.register(_name, lambda *a, _n=_name: seen.append(_n))
    else:
        ip.events.register(_name, lambda _n=_name: seen.append(_n))
"""

CELLS = [REGISTER, "x = 1", "1 / 1", "print(seen)"]


def test_per_cell_events_match_papermill(home: Path, tmp_path: Path):
    nb = write_nb(tmp_path / "events.ipynb", CELLS)
    res = Client().run(nb)
    assert res.status == Status.COMPLETED
    durabook_seen = outputs_text(res.output or "")[3]

    out = tmp_path / "pm.ipynb"
    papermill.execute_notebook(str(nb), str(out), kernel_name="python3", progress_bar=False)
    papermill_seen = outputs_text(out)[3]
    assert durabook_seen == papermill_seen
    # and it is what it should be: four events around each cell since the registration
    seen = json.loads(durabook_seen.replace("'", '"'))
    per_cell = ["pre_execute", "pre_run_cell", "post_execute", "post_run_cell"]
    assert seen == per_cell[2:] + per_cell * 2 + per_cell[:2]


def test_implicit_figures_are_shown_per_cell(home: Path, tmp_path: Path):
    nb = write_nb(
        tmp_path / "plots.ipynb",
        [
            "import matplotlib.pyplot as plt",
            "plt.plot([1, 2, 3])",  # no plt.show(): post_execute shows it
            "x = 2",
            "plt.figure(); plt.bar(['a', 'b'], [3, 1])",
        ],
    )
    res = Client().run(nb)
    assert res.status == Status.COMPLETED
    cells = json.loads(Path(res.output or "").read_text())["cells"]
    images = [sum("image/png" in o.get("data", {}) for o in c["outputs"]) for c in cells]
    assert images == [0, 1, 0, 1]

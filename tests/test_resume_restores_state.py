"""Resume restores the namespace of the last committed cell in a fresh kernel."""

from __future__ import annotations

import json
from pathlib import Path

from durabook import Client, Status
from durabook.engine import Engine

from .conftest import outputs_text, write_nb

STATE_CELLS = [
    # 0: plain values and containers
    "n = 42\nf = 2.5\ns = 'héllo'\nitems = [1, {'a': (2, 3)}, {4, 5}]\nnothing = None",
    # 1: notebook-defined function, lambda, class and instance
    "def double(v):\n    return 2 * v + n\n"
    "square = lambda v: v * v\n"
    "class Point:\n    def __init__(self, x):\n        self.x = x\n"
    "    def moved(self):\n        return Point(double(self.x))\n"
    "p = Point(3)",
    # 2: modules, numpy, pandas, random draws
    "import math, random\nimport numpy as np\nimport pandas as pd\nimport os.path as osp\n"
    "arr = np.arange(12, dtype='float32').reshape(3, 4)\n"
    "df = pd.DataFrame({'k': ['a', 'b', 'c'], 'v': [1.5, 2.5, 3.5]}).set_index('k')\n"
    "drawn = random.random()\nnp_drawn = float(np.random.rand())\n"
    "st, np_st = random.getstate(), np.random.get_state()\n"
    "expect_next, expect_np_next = random.random(), float(np.random.rand())\n"
    "random.setstate(st); np.random.set_state(np_st); del st, np_st\n"
    "print(drawn, np_drawn)",
    # 3: fails until a file exists
    "assert osp.exists('go.flag'), 'not yet'",
    # 4: everything is back and behaves
    "import json as _j\n"
    "print(_j.dumps({'n': n, 'f': f, 's': s, 'items0': items[0], 'a': items[1]['a'],\n"
    "  'set': sorted(items[2]), 'none': nothing is None, 'double': double(1),\n"
    "  'square': square(7), 'moved': p.moved().x, 'isinst': isinstance(p, Point),\n"
    "  'math': math.sqrt(16), 'arr': arr.sum().item(), 'dtype': str(arr.dtype),\n"
    "  'df': df.loc['b', 'v'], 'idx': df.index.name, 'drawn': drawn, 'np_drawn': np_drawn,\n"
    "  'next': random.random(), 'np_next': float(np.random.rand())}))",
]


def _values(output: str) -> dict[str, object]:
    return json.loads(output.strip().splitlines()[-1])


def test_resume_restores_values_functions_classes_arrays_frames_and_randomness(
    home: Path, tmp_path: Path
):
    nb = write_nb(tmp_path / "state.ipynb", STATE_CELLS)
    client = Client()
    first = client.run(nb)
    assert first.status == Status.FAILED and first.failed_cell == 3

    (tmp_path / "go.flag").touch()
    done = client.resume(first.id)
    assert done.status == Status.COMPLETED, done.error
    texts = outputs_text(done.output)
    got = _values(texts[4])

    # values drawn before the failure are the same; later draws continue the sequence
    assert texts[2] == f"{got['drawn']} {got['np_drawn']}\n"
    with Engine() as eng:
        eng_out = eng.status(first.id)
    assert [c.attempts for c in eng_out.cells] == [1, 1, 1, 2, 1]
    straight = client.run(nb)
    want = _values(outputs_text(straight.output)[4])
    assert want["next"] != got["next"]  # unseeded: a fresh run draws other numbers
    assert (got["next"], got["np_next"]) == _expected_next(done.output)
    assert got["n"] == 42 and got["s"] == "héllo" and got["a"] == [2, 3]
    assert got["double"] == 44 and got["square"] == 49 and got["moved"] == 48
    assert got["isinst"] is True and got["arr"] == 66.0 and got["dtype"] == "float32"
    assert got["df"] == 2.5 and got["idx"] == "k"


def _expected_next(output: str | None) -> tuple[object, object]:
    import nbformat

    assert output
    with Engine() as eng:
        iid = nbformat.read(output, as_version=4).metadata["durabook"]["instance_id"]
        rows = eng.store.steps(iid)
    refs = {}
    for row in rows:
        refs.update(json.loads(row["state"] or "{}").get("vars", {}))
    import base64
    import pickle

    def load(name: str) -> object:
        return pickle.loads(base64.b64decode(refs[name]["inline"]))

    return load("expect_next"), load("expect_np_next")


def test_frames_go_through_arrow_and_arrays_through_npy(home: Path, tmp_path: Path):
    nb = write_nb(tmp_path / "kinds.ipynb", STATE_CELLS[:3])
    res = Client().run(nb)
    assert res.status == Status.COMPLETED
    with Engine() as eng:
        rows = eng.store.steps(res.id)
    kinds = {}
    for row in rows:
        for name, ref in json.loads(row["state"] or "{}").get("vars", {}).items():
            kinds[name] = ref["kind"]
    assert kinds["df"] == "arrow"
    assert kinds["arr"] == "npy"
    assert kinds["np"] == "module" and kinds["osp"] == "module"
    assert kinds["double"] == "cloudpickle" and kinds["square"] == "cloudpickle"
    assert kinds["p"] == "pickle"  # by reference to the restored class

"""The example workflows in notebooks/workflows run end to end with short durations."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from durabook import Client, Status

from .conftest import cli_json, outputs_text

WORKFLOWS = Path(__file__).parent.parent / "notebooks" / "workflows"


def test_billing_waits_for_approval_then_charges_once(home: Path, tmp_path: Path):
    nb = shutil.copy(WORKFLOWS / "billing.ipynb", tmp_path)
    ledger = tmp_path / "ledger.jsonl"
    code, res = cli_json(
        "run",
        str(nb),
        "-q",
        "-p",
        "customer",
        "ada",
        "-p",
        "amount",
        "100",
        "-p",
        "ledger",
        str(ledger),
    )
    assert code == 3 and res["status"] == "waiting"
    assert not ledger.exists()
    code, res = cli_json(
        "send-event", res["id"], "approval", "--data", '{"by": "grace", "approved": true}', "-q"
    )
    assert code == 0 and res["status"] == "completed"
    texts = outputs_text(res["output"])
    assert texts[-1] == "ada: charged 120.00 (approved by grace)\n"
    assert [json.loads(x) for x in ledger.read_text().splitlines()] == [
        {"charge": 120.0, "customer": "ada"}
    ]


def test_billing_without_approval_times_out_and_cancels(home: Path, tmp_path: Path):
    nb = shutil.copy(WORKFLOWS / "billing.ipynb", tmp_path)
    client = Client()
    res = client.run(nb, {"approval_timeout": "0.3s", "ledger": str(tmp_path / "l.jsonl")})
    assert res.status == Status.WAITING
    time.sleep(0.4)
    res = client.resume(res.id)
    assert res.status == Status.COMPLETED
    assert outputs_text(res.output or "")[-1] == "ada: cancelled 144.00 (approved by None)\n"


def test_media_pipeline_sleeps_between_stages(home: Path, tmp_path: Path):
    nb = shutil.copy(WORKFLOWS / "media_pipeline.ipynb", tmp_path)
    client = Client()
    res = client.run(nb, {"settle": "1s", "embargo": "1s"})
    statuses = [res.status]
    while res.status == Status.SLEEPING:
        wake = client.status(res.id).wake_at
        assert wake is not None
        time.sleep(max(0.0, wake.timestamp() - time.time()) + 0.05)
        res = client.resume(res.id)
        statuses.append(res.status)
    assert statuses == [Status.SLEEPING, Status.SLEEPING, Status.COMPLETED]
    assert outputs_text(res.output or "")[-1] == (
        "ingested launch.mp4 -> transcoded 1080p, 720p, 480p -> published\n"
    )

"""Agents' reference replies as `rlhf sft` demonstrations: 'rlhf app export --agent-replies FILE' after a
chat-log import writes redacted prompt-completion rows that 'rlhf sft --data' reads (real SQLite, the real
commands)."""

from __future__ import annotations

import json

from rlhf.align.demonstrations import read_demonstrations
from tests.feedback.test_chatlog import ORDER, SAMPLE, app, leaks


def test_agent_replies_export_as_redacted_sft_rows(tmp_path):
    db = tmp_path / "fb.db"
    out = tmp_path / "agent_replies.jsonl"
    assert app(db, "import", str(SAMPLE), "--customer-column", "customer_id", "--redaction.patterns",
               ORDER).returncode == 0
    result = app(db, "export", "--agent-replies", str(out))
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows and f"wrote {len(rows)} agent reference replies" in result.stdout
    assert all(r["source"] == "agent" and r["author"] == "agent" and r["completion"].strip() for r in rows)
    assert not leaks(out.read_text())  # redacted before storage, so redacted here
    first = rows[0]
    assert first["prompt"][-1] == {"role": "user", "content": first["prompt"][-1]["content"]}
    assert "<PERSON_1>" in json.dumps(rows)
    # the privacy unit for 'rlhf sft --dp': the sample names its customers, so the customer's salted hash
    assert all(r["unit"].startswith("customer:") and "CUST" not in r["unit"] for r in rows)

    demos = read_demonstrations([out], 0.5)
    assert len(demos.train) + len(demos.test) == len(rows) and demos.counts()["by_source"] == {"agent": len(rows)}
    assert sorted(d.unit for d in demos.train + demos.test) == sorted(r["unit"] for r in rows)

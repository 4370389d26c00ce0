"""Locust users for the DIMEE services: each POSTs one text to mobile's /v1/classify, waits for the answer and
sends the next (no think time); the run's policy routes it. Run headless against a running mobile tier:

    .venv/bin/locust -f benchmarks/locustfile.py --headless -u 32 -r 32 --run-time 30s --host http://127.0.0.1:8700

`benchmarks/load_test.py` starts the three services and runs this at 1, 8, 32 and 128 users. Texts: SST-2
validation sentences (DIMEE_LOAD_TEXTS: another JSON-lines file with a "sentence" or "text" field).
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

from locust import FastHttpUser, constant, task

TEXTS_FILE = Path(os.environ.get("DIMEE_LOAD_TEXTS", "/work/shared/glue/sst2/validation.jsonl"))


def _texts(limit: int = 2000) -> list[str]:
    rows = []
    with TEXTS_FILE.open(encoding="utf-8") as handle:
        for line in itertools.islice(handle, limit):
            if line.strip():
                record = json.loads(line)
                rows.append(record.get("sentence") or record.get("text"))
    return [text for text in rows if text]


TEXTS = _texts()


class ClassifyUser(FastHttpUser):
    wait_time = constant(0)

    def on_start(self) -> None:
        self.cursor = itertools.cycle(TEXTS[hash(self) % len(TEXTS) :] + TEXTS[: hash(self) % len(TEXTS)])

    @task
    def classify(self) -> None:
        with self.client.post("/v1/classify", json={"texts": [next(self.cursor)]}, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}")
            elif response.json()["predictions"][0].get("degraded"):
                response.failure("degraded answer")

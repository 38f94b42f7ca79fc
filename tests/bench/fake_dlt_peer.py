"""Stands in for ../shared/bench/dlt_peer.py in the smoke test (no dlt here): prints the line
the real one prints, with the table counts given in FAKE_DLT_TABLES (JSON)."""

import json
import os

print(json.dumps({"tables": json.loads(os.environ.get("FAKE_DLT_TABLES", "{}")),
                  "steps_s": {"extract": 0.1, "normalize": 0.1, "load": 0.1}}))  # fmt: skip

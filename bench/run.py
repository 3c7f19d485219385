"""Run every benchmark under bench/ and print its figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHES = [
    "api_latency.py",
    "billing.py",
    "ingest.py",
    "ingest_cstore.py",
    "dimse_qr.py",
    "tiering.py",
    "simulator.py",
    "slow_clients.py",
    "versus.py",
]

if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    status = 0
    for name in BENCHES:
        print(f"== {name}", flush=True)
        status |= subprocess.call([sys.executable, str(here / name)])  # noqa: S603
    sys.exit(status)

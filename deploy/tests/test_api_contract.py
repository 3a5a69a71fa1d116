"""The backend HTTP API against its OpenAPI document, with schemathesis (property-based).

Starts the real gateway (single node, an API key), loads the document it serves at
/openapi.json and throws generated requests at every operation, valid and invalid: every
answer must be documented (status code, content type, body schema), nothing may answer 5xx,
and requests the document calls invalid must be refused. The seed is fixed, so a run is
reproducible; `ST_MAX_EXAMPLES` raises the number of examples for a longer run.

Not checked: "schema-valid requests are accepted". The gateway is stricter than JSON Schema
can say (reserved event names, payload and batch sizes, the history size), and refuses those
with documented 4xx codes, which the other checks cover.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import unittest
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GATEWAY = Path(os.environ.get("ROOMCAST_GATEWAY_BIN", REPO / "target" / "debug" / "roomcast-gateway"))
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
KEY = "contract-test-key-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ApiContract(unittest.TestCase):
    def test_every_answer_matches_the_openapi_document(self) -> None:
        if not SCHEMATHESIS.exists():
            self.skipTest("schemathesis is not installed (deploy/tests/requirements.txt)")
        api = free_port()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "ROOMCAST_JWT_SECRET": "0123456789abcdef0123456789abcdef",
            "ROOMCAST_API_KEY": KEY,
            "ROOMCAST_LISTEN": "127.0.0.1:0",
            "ROOMCAST_API_LISTEN": f"127.0.0.1:{api}",
            "ROOMCAST_ADMIN_LISTEN": "127.0.0.1:0",
            "ROOMCAST_LOG": "warn",
            # Small limits, so generated payloads reach them.
            "ROOMCAST_PUBLISH_MAX_PAYLOAD": "4096",
            "ROOMCAST_PUBLISH_MAX_BATCH": "5",
            "ROOMCAST_HISTORY_SIZE": "20",
        }
        gateway = subprocess.Popen([str(GATEWAY)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.addCleanup(gateway.wait, 10)
        self.addCleanup(gateway.terminate)
        url = f"http://127.0.0.1:{api}/openapi.json"
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            self.assertIsNone(gateway.poll(), "the gateway exited")
            self.assertLess(time.monotonic(), deadline, "the gateway did not serve /openapi.json")
            time.sleep(0.1)
        examples = os.environ.get("ST_MAX_EXAMPLES", "60")
        run = subprocess.run(
            [
                str(SCHEMATHESIS), "--config-file", str(Path(__file__).parent / "schemathesis.toml"), "run", url,
                "--header", f"Authorization: Bearer {KEY}",
                "--checks", "all",
                "--exclude-checks", "positive_data_acceptance",
                "--max-examples", examples,
                "--seed", "20261202",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        )
        report = run.stdout[-6000:] + run.stderr[-2000:]
        self.assertEqual(run.returncode, 0, report)
        # Every operation of the document was exercised (schemathesis counts /openapi.json's own
        # GET only when it is selected alone).
        document = json.loads((REPO / "gateway" / "openapi.json").read_text())
        operations = sum(len(ops) for path, ops in document["paths"].items() if path != "/openapi.json")
        self.assertRegex(run.stdout, rf"Tested: ({operations}|{operations + 1})\b", report)
        self.assertNotIn("skipped", run.stdout.split("Tested:")[1].splitlines()[0], report)
        self.assertIsNone(gateway.poll(), "the gateway survived the run")


if __name__ == "__main__":
    unittest.main()

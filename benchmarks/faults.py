"""The fault table: the fault tests run once each, their counts written with the run's provenance.

    python -m benchmarks.faults [--only pools,overload] [--out benchmarks/results]

Runs each fault test under pytest in a child process with QUIVER_FAULTS_OUT set: the test
writes its counts there (tests/faults.py's `record`, called beside the line that prints them).
Then writes benchmarks/results/faults-<stamp>.{json,md} (benchmarks/provenance.py): per fault,
requests sent, answered OK, failed by status and lost (sent and never answered), the test's
outcome and its own numbers (times, latencies, memory). A test that fails is reported as
failed, with whatever it recorded before it failed. Minutes long (Ray clusters started and
killed); not run by CI.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchmarks import provenance

ROOT = Path(__file__).resolve().parents[1]

# test file → what the table calls the fault
FAULTS = {
    "test_cluster_loss": "a pool's node crashes under load (`test_cluster_loss`)",
    "test_pools": "the gpu pool's node removed (drained) under load from 4 clients (`test_pools`)",
    "test_replica_failure": "the only replica killed with SIGKILL under load (`test_replica_failure`)",
    "test_router_restart": "router SIGTERM and a new process on the same port, client retrying and checking health "
                           "(`test_router_restart`)",
    "test_overload": "10× the sustainable rate for 10 s (`test_overload`)",
    "test_head_loss": "the Ray head lost (every process SIGKILLed) and restarted from its RocksDB GCS store (`test_head_loss`)",
}


def status(answer: str) -> str:
    """`OK`, `UNAVAILABLE`, ... from the forms the tests keep (`StatusCode.UNAVAILABLE`, `UNAVAILABLE: why`, `OK fp32`)."""
    return answer.split(":")[0].split()[0].removeprefix("StatusCode.")


def rows_of(record: dict) -> list[dict]:
    """One table row per case: test_cluster_loss records two models (pooled, gpuonly) in one line."""
    given = record.get("answers", record.get("answered", {}))
    if isinstance(record["sent"], dict):
        return [rows_of({**record, "fault": f"{record['fault']}/{model}", "sent": sent, "answers": given.get(model, {})})[0]
                for model, sent in record["sent"].items()]
    answers = Counter()
    for answer, n in given.items():
        answers[status(answer)] += n
    details = {k: v for k, v in record.items() if k not in ("fault", "test", "at", "sent", "answers", "answered")}
    if any(answer != status(answer) for answer in given):
        details["answers"] = given
    return [{"fault": record["fault"], "test": record.get("test"), "sent": record["sent"], "ok": answers.pop("OK", 0),
             "failed": dict(answers), "lost": record["sent"] - sum(given.values()), "details": details}]


def run_test(name: str, out: Path) -> dict:
    """Run one test file; its records (lines it appended to OUT) are tagged with its name."""
    out.unlink(missing_ok=True)
    env = {**os.environ, "QUIVER_FAULTS_OUT": str(out)}
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", f"tests/{name}.py"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    summary = next((line for line in reversed(done.stdout.splitlines()) if line.strip()), "")
    print(f"{name}: exit {done.returncode}, {summary}", flush=True)
    records = [json.loads(line) | {"test": name} for line in out.read_text().splitlines()] if out.exists() else []
    return {"test": name, "records": records, "exit": done.returncode, "passed": done.returncode == 0, "seconds": round(time.monotonic() - began, 1),
            "pytest_summary": summary, "output_tail": None if done.returncode == 0 else done.stdout[-4000:]}


def markdown(tests: list[dict], rows: list[dict]) -> str:
    lines = [
        "Each test once, under steady load from client processes, on this shared machine; counts as the tests recorded them "
        "(`tests/faults.py`). lost = sent and never answered.",
        "",
        "| fault | test | sent | answered OK | failed (status) | lost |",
        "|---|---|---:|---:|---:|---:|",
    ]
    outcome = {t["test"]: "passed" if t["passed"] else "**failed**" for t in tests}
    for row in rows:
        test = row["test"]
        failed = ", ".join(f"{n:,} {s}" for s, n in sorted(row["failed"].items())) or "0"
        lines.append(f"| {FAULTS.get(test, test)}: `{row['fault']}` | {outcome.get(test, '?')} | {row['sent']:,} | "
                     f"{row['ok']:,} | {failed} | {row['lost']:,} |")
    missing = [t["test"] for t in tests if not t["records"]]
    if missing:
        lines += ["", f"Recorded no counts: {', '.join(missing)}."]
    lines += ["", "What each test recorded besides its counts:", ""]
    lines += [f"- `{row['fault']}`: {json.dumps(row['details'], ensure_ascii=False)}" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", type=lambda text: [f"test_{t.removeprefix('test_')}" for t in text.split(",")],
                        default=list(FAULTS), help="comma-separated, of " + ", ".join(FAULTS))
    parser.add_argument("--out", type=Path, default=provenance.RESULTS)
    args = parser.parse_args()
    run = provenance.begin()
    with tempfile.TemporaryDirectory(prefix="quiver-faults-") as scratch:
        tests = [run_test(name, Path(scratch) / "faults.jsonl") for name in args.only]
    records = [record for test in tests for record in test["records"]]
    # A test that ran a cycle twice (test_overload) recorded each; its last one is what it asserted on.
    last = {record["fault"]: record for record in records}
    rows = [row for record in last.values() for row in rows_of(record)]
    body = markdown(tests, rows)
    paths = provenance.write("faults", run, {"tests": tests, "records": records, "rows": rows}, body,
                             "Faults under load: what was sent, answered and lost", out=args.out)
    print(body)
    print("written:", *paths)


if __name__ == "__main__":
    main()

"""Run the fault-injection and reliability tests and record how many cases each tried.

    python experiments/reliability.py experiments/reliability.json

Runs tests/test_faults.py, tests/test_reliability.py and tests/test_io.py with pytest and writes,
per test, the cases tried and the failures; `python tools/docs.py` turns the file into the
reliability table of docs/reliability.md, and tests/test_faults.py checks that its counts match
the case lists.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = ("tests/test_faults.py", "tests/test_reliability.py", "tests/test_io.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", help="results JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        f"--junitxml={report}", "-k", "not committed_counts", *FILES],
                       cwd=ROOT, check=False)  # (that test checks this script's output)
        seconds = time.perf_counter() - started
        cases = ET.parse(report).getroot().iter("testcase")
        groups: dict[str, dict[str, object]] = {}
        for case in cases:
            name = case.get("name", "").split("[")[0]
            module = case.get("classname", "").rsplit(".", 1)[-1]
            group = groups.setdefault(name, {"file": f"tests/{module}.py", "test": name,
                                             "cases": 0, "failures": 0})
            group["cases"] += 1  # type: ignore[operator]
            if case.find("failure") is not None or case.find("error") is not None:
                group["failures"] += 1  # type: ignore[operator]
    results = {"tests": list(groups.values()),
               "cases": sum(g["cases"] for g in groups.values()),  # type: ignore[misc]
               "failures": sum(g["failures"] for g in groups.values()),  # type: ignore[misc]
               "seconds": round(seconds)}
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"{results['cases']} cases, {results['failures']} failures, {seconds:.0f} s")


def markdown(results: dict) -> str:
    """`results` (this script's output) as the docs' table: the cases each test tried."""
    lines = ["| test | cases tried | failures |", "|---|---|---|"]
    lines += [f"| `{t['file']}::{t['test']}` | {t['cases']} | {t['failures']} |"
              for t in results["tests"]]
    lines.append(f"| all | {results['cases']} | {results['failures']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""The published numbers are a stored run's: every table the docs' benchmark and fault pages show
sits in a results block, pasted from a file under benchmarks/results/ that the measuring command
wrote with its provenance (benchmarks/provenance.py). No timing is measured here.

A block in README.md or a page under docs/:

    <!-- results: benchmarks/results/routing-2026-12-05T2330.md -->
    ...lines copied from that file...
    <!-- /results -->

`<!-- results: FILE (before CPU flags were recorded) -->` marks a run made before the results
carried the CPU's instruction-set flags: its date and commit are still required.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Every page a reader reads: the README and the documentation site's pages.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"<!-- results: (?P<path>\S+)(?P<note> [^>]*)? -->\n(?P<body>.*?)<!-- /results -->", re.DOTALL)
LEGACY = "(before CPU flags were recorded)"
# Pages whose every table must come from a results block, and sections of other pages.
MEASURED_PAGES = ("docs/benchmarks.md",)
MEASURED_SECTIONS = {"docs/resilience.md": ("## Faults tried", "## The router-restart race", "## Soak")}


def blocks() -> list[re.Match]:
    return [match for page in PAGES for match in BLOCK.finditer(page.read_text())]


def section(text: str, heading: str) -> str:
    start = text.index(heading + "\n")
    following = text.find("\n## ", start + len(heading))
    return text[start: following if following >= 0 else len(text)]


def test_the_docs_cite_results_files() -> None:
    cited = {match["path"] for match in blocks()}
    assert {"routing", "variants", "faults", "process", "hop", "grpc"} <= {Path(path).name.split("-")[0] for path in cited}, cited


def test_every_cited_file_exists_with_its_provenance() -> None:
    for match in blocks():
        path = ROOT / match["path"]
        assert path.is_file(), f"a page cites {match['path']}, which does not exist"
        assert path.parent == ROOT / "benchmarks/results", match["path"]
        meta = json.loads(path.with_suffix(".json").read_text())["meta"]
        commit = meta.get("commit") or meta.get("versions", {}).get("git_commit")
        assert meta.get("date") and commit, f"{path.with_suffix('.json')}: no date or commit in its meta"
        if (match["note"] or "").strip() != LEGACY:
            machine = meta["machine"]
            assert machine.get("cpu") and machine.get("flags") and "isa" in machine, f"{path}: no CPU model or flags"
            assert meta.get("command", "").startswith("python -m benchmarks"), f"{path}: no command line"
            assert meta.get("load_average_start") and meta.get("load_average_end"), f"{path}: no load average"


def test_every_line_of_a_block_is_in_its_file() -> None:
    for match in blocks():
        lines = {line.strip() for line in (ROOT / match["path"]).read_text().splitlines()}
        missing = [line for line in match["body"].splitlines() if line.strip() and line.strip() not in lines]
        assert not missing, f"lines not in {match['path']} (re-paste from the file): {missing[:3]}"


def test_the_measured_pages_show_no_table_outside_a_block() -> None:
    measured = {page: [None] for page in MEASURED_PAGES} | MEASURED_SECTIONS
    for page, headings in measured.items():
        outside = BLOCK.sub("", (ROOT / page).read_text())
        for heading in headings:
            text = outside if heading is None else section(outside, heading)
            rows = [line for line in text.splitlines() if line.startswith("|")]
            assert not rows, f"{page} {heading or ''}: a table that no results file backs: {rows[:2]}"


def test_every_results_path_a_page_names_exists() -> None:
    for page in PAGES:
        for name in set(re.findall(r"benchmarks/results/[\w.{},-]+", page.read_text())):
            stem, _, suffixes = name.partition("{")
            paths = [stem + s for s in suffixes.rstrip("}").split(",")] if suffixes else [name]
            for path in paths:
                assert (ROOT / path.rstrip(".,")).exists(), f"{page.relative_to(ROOT)} names {path}, which does not exist"


def test_a_results_file_written_through_provenance_carries_what_this_check_requires(tmp_path: Path) -> None:
    from benchmarks import provenance

    run = provenance.begin(command="python -m benchmarks.example --seconds 1")
    json_path, md_path = provenance.write("example", run, {"rows": [1]}, "| a | b |\n|---|---|\n| 1 | 2 |", "Example", out=tmp_path)
    meta = json.loads(json_path.read_text())["meta"]
    assert meta["date"] and meta["commit"] and meta["machine"]["cpu"] and meta["load_average_end"]
    assert meta["machine"]["flags"] and set(meta["machine"]["isa"]) <= set(meta["machine"]["flags"])
    text = md_path.read_text()
    assert "`python -m benchmarks.example --seconds 1`" in text and "instruction-set flags:" in text and "| 1 | 2 |" in text


def test_the_fault_tests_counts_reach_the_fault_table(tmp_path: Path, monkeypatch) -> None:
    from benchmarks import faults as table
    from tests import faults

    faults.record("nowhere", sent=1, answers={"OK": 1})  # QUIVER_FAULTS_OUT unset: nothing written
    out = tmp_path / "faults.jsonl"
    monkeypatch.setenv(faults.OUT, str(out))
    faults.record("cluster_loss", sent={"pooled": 3, "gpuonly": 2}, answers={"pooled": {"OK": 3}, "gpuonly": {"UNAVAILABLE": 1}})
    faults.record("replica_kill[wait=0]", sent=4, answered={"OK": 2, "UNAVAILABLE": 2})
    faults.record("head_loss", sent=2, answers={"OK": 1, "UNAVAILABLE: the head is away": 1})
    rows = [row for line in out.read_text().splitlines() for row in table.rows_of(json.loads(line))]
    assert [(r["fault"], r["sent"], r["ok"], r["failed"], r["lost"]) for r in rows] == [
        ("cluster_loss/pooled", 3, 3, {}, 0),
        ("cluster_loss/gpuonly", 2, 0, {"UNAVAILABLE": 1}, 1),
        ("replica_kill[wait=0]", 4, 2, {"UNAVAILABLE": 2}, 0),
        ("head_loss", 2, 1, {"UNAVAILABLE": 1}, 0),
    ]


def test_every_table_in_a_block_has_as_many_cells_in_each_row_as_its_header() -> None:
    for match in blocks():
        table: list[str] = []
        for line in [*match["body"].splitlines(), ""]:
            if line.startswith("|"):
                table.append(line)
                continue
            widths = {row.count("|") for row in table}
            assert len(widths) <= 1, f"{match['path']}: a table whose rows differ in width: {table[:2]}"
            table = []

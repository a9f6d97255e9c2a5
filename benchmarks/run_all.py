"""Run every benchmark (quick variants by default) and rewrite the results table in benchmarks/README.md.

    python -m benchmarks.run_all --quick            # what `make bench` runs (<= 10 min on 2 CPU cores)
    python -m benchmarks.run_all --only search      # one benchmark, full variant
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import MISSING_INPUTS_EXIT, RESULTS_DIR, ROOT

BENCHMARKS = (
    "retrieval", "segmentation", "seg_encoders", "int8", "latency", "search", "server", "import", "world_pack",
    "sdk_latency",
)
README = ROOT / "benchmarks" / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def render_tables(results_dir: Path = RESULTS_DIR) -> str:
    parts: list[str] = []
    for name in BENCHMARKS:
        path = results_dir / f"{name}.json"
        if not path.is_file():
            parts.append(f"### {name}\n\nnot run yet: `python -m benchmarks.bench_{name}`\n")
            continue
        data = json.loads(path.read_text())
        rows = data.get("table") or []
        header = f"### {name}\n\n{data['date_utc']} UTC · {data['hardware']}  \n`{data['command']}`\n"
        if not rows:
            parts.append(header + "\n(no rows)\n")
            continue
        cols = list(dict.fromkeys(k for row in rows for k in row))
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in cols) + " |" for row in rows]
        parts.append(header + "\n" + "\n".join(lines) + "\n")
    return "\n".join(parts)


def update_readme(readme: Path = README, results_dir: Path = RESULTS_DIR) -> None:
    text = readme.read_text()
    start, end = text.index(BEGIN) + len(BEGIN), text.index(END)
    readme.write_text(text[:start] + "\n" + render_tables(results_dir) + "\n" + text[end:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="quick variants")
    parser.add_argument("--only", choices=BENCHMARKS, action="append", help="run only these (repeatable)")
    parser.add_argument("--no-run", action="store_true", help="only re-render the README from existing JSON")
    args = parser.parse_args(argv)
    failed: list[str] = []
    skipped: list[str] = []
    for name in args.only or ([] if args.no_run else BENCHMARKS):
        cmd = [sys.executable, "-m", f"benchmarks.bench_{name}", "--out", str(RESULTS_DIR / f"{name}.json")]
        cmd += ["--quick"] if args.quick else []
        print(f"== {' '.join(cmd[1:])}", flush=True)
        started = time.perf_counter()
        rc = subprocess.call(cmd, cwd=ROOT)
        print(f"== {name}: exit {rc} after {time.perf_counter() - started:.0f} s", flush=True)
        if rc == MISSING_INPUTS_EXIT:
            skipped.append(name)
        elif rc:
            failed.append(name)
    update_readme()
    print(f"results: {RESULTS_DIR}  table: {README}")
    if skipped:
        print(f"skipped (this checkout lacks their inputs, said above; their previous results are kept): "
              f"{', '.join(skipped)}")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Per-photo latency of each SDK next to the Python reference: same photos, same models, same pack, one thread.

    python -m benchmarks.bench_sdk_latency --quick        # 8 photos, 1-photo-per-class pack (< 3 min)
    python -m benchmarks.bench_sdk_latency                # all 160 sample photos, 2 passes

Every SDK runs in its own subprocess, one after the other, with the photos' bytes read into memory first; each
``recognize`` call is timed from those bytes to the top-5 (decode included; decode alone from the SDK's own stage
timing), after untimed warm-up calls:

- Python reference (``coinvision.sdk.Recognizer``): ONNX Runtime (the row every other row is compared with) and
  the TFLite int8 default as an extra row; ``OMP_NUM_THREADS=1``, ``cv2.setNumThreads(1)``, numpy/BLAS limited
  to 1 thread (threadpoolctl), runtime ``num_threads=1``; Pillow decode.
- Kotlin/JVM SDK: ``org.coinvision.sdk.tools.Bench`` run with ``java -cp target/classes:<classpath>`` (the
  classpath from ``mvn dependency:build-classpath``, which fetches the dependency plugin from Maven Central the
  first time; the class is compiled with ``mvn -q -B compile`` when missing or older than the sources); ONNX
  Runtime Java, intra-op 1 / inter-op 1; javax.imageio decode.
- TypeScript SDK: ``node sdk_js/scripts/bench.mjs`` on the built ``dist/node`` entry; onnxruntime-node, intra-op 1 /
  inter-op 1, ``UV_THREADPOOL_SIZE=1``; jpeg-js decode.

The pack is built with ``coinvision pack build`` (ONNX, int8) from the sample catalog: per class, the photos at
even positions in name order (0, 2, 4: 96 photos of 32 coins; ``--quick``: position 0 only). Queries are all
sample photos, so those at odd positions are held out of the pack and their top-1 is a real recognition, not a
self-match. Agreement is each SDK's top-1 (and top-5 list) against the Python ONNX reference's on the same photos;
a row that does not agree is flagged. The 1-minute load average is recorded before and after each SDK's run:
this machine is shared, so the figures carry that load.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import ROOT, write_result

__all__ = ["SDKS", "catalog_and_queries", "main", "summarize"]

SAMPLES = ROOT / "examples" / "sample_coins"
MODELS = ROOT / "models" / "release"
KOTLIN = ROOT / "sdk_kotlin"
JS = ROOT / "sdk_js"
BENCH_CLASS = "org.coinvision.sdk.tools.Bench"
SDKS = ("python-onnx", "python-tflite", "kotlin", "typescript")
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                  "UV_THREADPOOL_SIZE": "1"}


def _rel(path: Path) -> str:
    return str(path.resolve().relative_to(ROOT))


def catalog_and_queries(quick: bool, count: int | None) -> tuple[list[tuple[str, Path]], list[str]]:
    """``[(coin_id, photo)]`` for the pack and the query photos (repo-relative), euro_phone and coins211
    interleaved class by class so that any prefix mixes both."""
    per_set: list[list[tuple[str, list[Path]]]] = []
    for name in ("euro_phone", "coins211"):
        classes = sorted((p for p in (SAMPLES / name / "images").iterdir() if p.is_dir()), key=lambda p: p.name)
        per_set.append([(f"{name}__{c.name}", sorted(c.glob("*.jpg"))) for c in classes])
    catalog = [(coin, photo) for group in per_set for coin, photos in group
               for photo in (photos[:1] if quick else photos[::2])]
    ordered: list[Path] = []
    for rank in range(max(len(photos) for group in per_set for _, photos in group)):
        at_rank = [[photos[rank] for _, photos in group if rank < len(photos)] for group in per_set]
        ordered += [p for pair in zip_longest(*at_rank) for p in pair if p is not None]
    queries = [_rel(p) for p in ordered]
    return catalog, queries[:count] if count else queries


def build_pack(catalog: list[tuple[str, Path]], workdir: Path) -> tuple[Path, list[str]]:
    """``coinvision pack build`` (ONNX, int8, fixed created_at) over a folder of links ``<coin_id>/<photo>``."""
    root = workdir / "catalog"
    for coin, photo in catalog:
        folder = root / coin
        folder.mkdir(parents=True, exist_ok=True)
        (folder / photo.name).symlink_to(photo.resolve())
    out = workdir / "sample.pack"
    exe = Path(sys.executable).with_name("coinvision")
    cmd = [str(exe) if exe.is_file() else "coinvision", "pack", "build", str(root), "--out", str(out),
           "--runtime", "onnx", "--models", str(MODELS), "--threads", "1", "--catalog-id", "sample",
           "--catalog-version", "1", "--created-at", "0"]
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, **ONE_THREAD_ENV}, stdout=subprocess.DEVNULL)
    return out, cmd


# ----------------------------------------------------------------------------------------------- workers


def python_worker(runtime: str, pack: str, photos_file: str, warmup: int, passes: int) -> dict[str, Any]:
    """The Python reference timed in this process (run as a subprocess by :func:`main`)."""
    import cv2
    from coinvision.sdk import Recognizer
    from threadpoolctl import threadpool_limits

    cv2.setNumThreads(1)
    names = [n for n in Path(photos_file).read_text().splitlines() if n.strip()]
    with threadpool_limits(1):
        started = time.perf_counter()
        rec = Recognizer.from_dir(MODELS, runtime=runtime, num_threads=1, pack=pack)
        load_ms = 1000.0 * (time.perf_counter() - started)
        data = [(ROOT / n).read_bytes() for n in names]
        for i in range(warmup):
            rec.recognize(data[i % len(data)], top_k=5)
        photos: list[dict[str, Any]] = [{"file": n, "total_ms": [], "decode_ms": [], "stages_ms": []} for n in names]
        for pass_ in range(passes):
            for entry, raw in zip(photos, data, strict=True):
                t0 = time.perf_counter()
                result = rec.recognize(raw, top_k=5)
                entry["total_ms"].append(1000.0 * (time.perf_counter() - t0))
                entry["decode_ms"].append(result.timings_ms["decode"])
                entry["stages_ms"].append(result.timings_ms)
                if pass_ == 0:
                    entry["top5"] = [[m.coin_id, float(m.score)] for m in result.matches]
                    entry["unknown"] = bool(result.unknown)
    from importlib.metadata import version

    package = "onnxruntime" if runtime == "onnx" else "ai-edge-litert"
    engine = f"{package} {version(package)}"
    return {"sdk": "python", "runtime": runtime, "ort": engine,
            "threads": {"runtime": 1, "cv2": cv2.getNumThreads(), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")},
            "decoder": "Pillow", "load_ms": load_ms, "warmup": warmup, "passes": passes, "photos": photos}


def _kotlin_classpath(log: list[str]) -> tuple[list[str] | None, str]:
    """``java`` command prefix for the Kotlin Bench, compiling it when needed; ``(None, why)`` when it cannot run."""
    mvn, java = shutil.which("mvn"), shutil.which("java")
    if not mvn or not java:
        return None, "mvn or java not on PATH"
    classes = KOTLIN / "target" / "classes"
    bench = classes / Path(*BENCH_CLASS.split(".")).with_suffix(".class")
    newest = max(p.stat().st_mtime for p in (KOTLIN / "src" / "main").rglob("*.kt"))
    if not bench.is_file() or bench.stat().st_mtime < newest:
        log.append("mvn -q -B compile")
        done = subprocess.run([mvn, "-q", "-B", "compile"], cwd=KOTLIN, capture_output=True, text=True)
        if done.returncode or not bench.is_file():
            return None, f"mvn compile failed (run `cd sdk_kotlin && mvn -q -B test` to see why): {done.stdout[-300:]}"
    cp_file = KOTLIN / "target" / "bench-classpath.txt"
    if not cp_file.is_file() or cp_file.stat().st_mtime < (KOTLIN / "pom.xml").stat().st_mtime:
        log.append("mvn -q -B dependency:build-classpath")
        done = subprocess.run([mvn, "-q", "-B", "dependency:build-classpath",
                               f"-Dmdep.outputFile={cp_file}"], cwd=KOTLIN, capture_output=True, text=True)
        if done.returncode or not cp_file.is_file():
            return None, ("mvn dependency:build-classpath failed (it needs Maven Central once, for the plugin): "
                          f"{done.stdout[-300:]}")
    cp = f"{classes}{os.pathsep}{cp_file.read_text().strip()}"
    return [java, "-XX:+UseSerialGC", "-Xmx1g", "-cp", cp, BENCH_CLASS], ""


def _sdk_command(sdk: str, pack: Path, photos_file: Path, warmup: int, passes: int,
                 log: list[str]) -> tuple[list[str] | None, Path, str]:
    common = ["--pack", str(pack), "--photos", str(photos_file), "--warmup", str(warmup), "--passes", str(passes)]
    if sdk.startswith("python-"):
        return ([sys.executable, "-m", "benchmarks.bench_sdk_latency", "--worker", sdk.split("-", 1)[1],
                 "--pack", str(pack), "--photos-file", str(photos_file), "--warmup", str(warmup),
                 "--passes", str(passes)], ROOT, "")
    if sdk == "kotlin":
        prefix, why = _kotlin_classpath(log)
        if prefix is None:
            return None, KOTLIN, why
        return [*prefix, "--models", str(MODELS), "--root", str(ROOT), *common], KOTLIN, ""
    node = shutil.which("node")
    if not node:
        return None, JS, "node not on PATH"
    if not (JS / "dist" / "node" / "index.js").is_file() or not (JS / "node_modules" / "onnxruntime-node").is_dir():
        return None, JS, "sdk_js not built (cd sdk_js && npm install && npm run build)"
    return [node, "scripts/bench.mjs", "--models", str(MODELS), "--root", str(ROOT), *common], JS, ""


# ----------------------------------------------------------------------------------------------- summary


def _stats(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"median_ms": float(np.median(v)), "p95_ms": float(np.percentile(v, 95)), "mean_ms": float(v.mean()),
            "min_ms": float(v.min()), "n": int(v.size)}


def summarize(run: dict[str, Any], reference: dict[str, Any] | None, held_out: set[str]) -> dict[str, Any]:
    """Latency statistics over every timed call and top-1 / top-5 agreement with ``reference``."""
    totals = [t for p in run["photos"] for t in p["total_ms"]]
    no_decode = [t - d for p in run["photos"] for t, d in zip(p["total_ms"], p["decode_ms"], strict=True)]
    decode = [d for p in run["photos"] for d in p["decode_ms"]]
    out: dict[str, Any] = {"total": _stats(totals), "without_decode": _stats(no_decode), "decode": _stats(decode)}
    stage_values: dict[str, list[float]] = {}
    for p in run["photos"]:
        for stages in p.get("stages_ms", []):
            for stage, ms in stages.items():
                stage_values.setdefault(stage, []).append(ms)
    out["sdk_stage_median_ms"] = {stage: float(np.median(v)) for stage, v in stage_values.items()}
    correct = [bool(p["top5"]) and p["top5"][0][0] == "__".join(Path(p["file"]).parts[-4:-1:2])
               for p in run["photos"]]
    out["top1_correct"] = float(np.mean(correct))
    if reference is not None:
        ref = {p["file"]: p for p in reference["photos"]}
        same1, same5, held, diff = [], [], [], 0.0
        for p in run["photos"]:
            r = ref[p["file"]]
            same1.append(p["top5"][0][0] == r["top5"][0][0])
            same5.append([c for c, _ in p["top5"]] == [c for c, _ in r["top5"]])
            if p["file"] in held_out:
                held.append(same1[-1])
            diff = max(diff, abs(p["top5"][0][1] - r["top5"][0][1]))
        out.update(top1_agreement=float(np.mean(same1)), top1_agree_n=f"{sum(same1)}/{len(same1)}",
                   top1_agreement_held_out=float(np.mean(held)) if held else None,
                   top5_identical=float(np.mean(same5)), max_top1_score_diff=diff,
                   disagreements=[p["file"] for p, s in zip(run["photos"], same1, strict=True) if not s])
    return out


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8 photos, 1 pass, 10 warm-up calls, pack of 1 photo/coin")
    parser.add_argument("--photos", type=int, help="query photos (default all 160; quick 8)")
    parser.add_argument("--passes", type=int, help="timed passes over the photos (default 2; quick 1)")
    parser.add_argument("--warmup", type=int,
                        help="untimed warm-up calls per SDK (default 20; quick 10; the JVM JIT needs ~10)")
    parser.add_argument("--sdks", default=",".join(SDKS), help=f"comma-separated subset of {','.join(SDKS)}")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/sdk_latency.json)")
    parser.add_argument("--worker", choices=("onnx", "tflite"), help=argparse.SUPPRESS)
    parser.add_argument("--pack", help=argparse.SUPPRESS)
    parser.add_argument("--photos-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:  # internal: the Python reference in its own process
        json.dump(python_worker(args.worker, args.pack, args.photos_file, args.warmup, args.passes), sys.stdout)
        return 0
    sdks = [s for s in args.sdks.split(",") if s]
    unknown = [s for s in sdks if s not in SDKS]
    if unknown or "python-onnx" not in sdks:
        parser.error(f"--sdks: {unknown or 'python-onnx (the reference) is required'}")
    count = args.photos or (8 if args.quick else None)
    passes = args.passes or (1 if args.quick else 2)
    warmup = args.warmup if args.warmup is not None else (10 if args.quick else 20)

    catalog, queries = catalog_and_queries(args.quick, count)
    in_pack = {_rel(p) for _, p in catalog}
    held_out = {q for q in queries if q not in in_pack}
    build_log: list[str] = []
    runs: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="sdk_latency_") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        pack, pack_cmd = build_pack(catalog, workdir)
        print(f"pack: {len(catalog)} photos of {len({c for c, _ in catalog})} coins, "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        photos_file = workdir / "photos.txt"
        photos_file.write_text("\n".join(queries) + "\n")
        for sdk in sdks:
            cmd, cwd, why = _sdk_command(sdk, pack, photos_file, warmup, passes, build_log)
            if cmd is None:
                skipped[sdk] = why
                print(f"  {sdk}: skipped ({why})", flush=True)
                continue
            load_before, started = _load(), time.perf_counter()
            done = subprocess.run(cmd, cwd=cwd, env={**os.environ, **ONE_THREAD_ENV}, capture_output=True, text=True)
            wall = time.perf_counter() - started
            if done.returncode:
                skipped[sdk] = f"exit {done.returncode}: {(done.stderr or done.stdout)[-500:]}"
                print(f"  {sdk}: FAILED {skipped[sdk]}", flush=True)
                continue
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith('{"sdk"')]
            if not lines:
                skipped[sdk] = f"no JSON result on stdout: {done.stdout[-300:]} {done.stderr[-300:]}"
                print(f"  {sdk}: FAILED {skipped[sdk]}", flush=True)
                continue
            run = json.loads(lines[-1])
            run.update(load_avg_1min={"before": load_before, "after": _load()}, wall_s=wall)
            runs[sdk] = run
            print(f"  {sdk}: {wall:.0f} s, load {load_before} -> {run['load_avg_1min']['after']}", flush=True)

    reference = runs.get("python-onnx")
    if reference is None:
        print(f"the Python reference failed: {skipped.get('python-onnx')}", file=sys.stderr)
        return 1
    labels = {"python-onnx": ("Python (reference)", "ONNX Runtime"),
              "python-tflite": ("Python (reference)", "TFLite int8 (default)"),
              "kotlin": ("Kotlin/JVM", "ONNX Runtime Java"), "typescript": ("TypeScript/Node", "onnxruntime-node")}
    table: list[dict[str, Any]] = []
    for sdk, run in runs.items():
        s = run["summary"] = summarize(run, None if sdk == "python-onnx" else reference, held_out)
        load = run["load_avg_1min"]
        agree = "reference" if sdk == "python-onnx" else f"{s['top1_agreement']:.3f} ({s['top1_agree_n']})"
        table.append({
            "sdk": labels[sdk][0], "runtime": labels[sdk][1] + (f" {run['ort'].split()[-1]}" if "ort" in run else ""),
            "decoder": run["decoder"], "photos x passes": s["total"]["n"],
            "median ms": s["total"]["median_ms"], "p95 ms": s["total"]["p95_ms"], "mean ms": s["total"]["mean_ms"],
            "median ms w/o decode": s["without_decode"]["median_ms"],
            "p95 ms w/o decode": s["without_decode"]["p95_ms"], "decode ms (median)": s["decode"]["median_ms"],
            "top-1 agree vs Python ONNX": agree,
            "top-5 identical": "" if sdk == "python-onnx" else round(s["top5_identical"], 3),
            "top-1 correct": round(s["top1_correct"], 3),
            "load avg 1 min (before-after)": f"{load['before']}-{load['after']}",
        })
    for sdk, why in skipped.items():
        table.append({"sdk": labels[sdk][0], "runtime": labels[sdk][1], "median ms": "skipped",
                      "top-1 agree vs Python ONNX": why[:200]})
    for run in runs.values():  # the per-call stage timings are summarised in summary.sdk_stage_median_ms
        for p in run["photos"]:
            p.pop("stages_ms", None)
    results = {
        "photos": queries, "held_out_of_pack": sorted(held_out), "passes": passes, "warmup": warmup,
        "pack": {"photos": len(catalog), "coins": len({c for c, _ in catalog}), "quant": "int8", "command": pack_cmd,
                 "selection": "per coin the photo at position 0" if args.quick else
                              "per coin the photos at even positions (0, 2, 4) in name order"},
        "models": _rel(MODELS), "cpu_count": os.cpu_count(), "env": ONE_THREAD_ENV, "build_steps": build_log,
        "timing": "wall time of recognize(bytes in memory) -> top-5, decode included; 'without decode' subtracts "
                  "the SDK's own decode timing; statistics over every timed call (photos x passes)",
        "runs": runs, "skipped": skipped,
    }
    path = write_result("sdk_latency", results, table, args.out)
    for row in table:
        print("  " + " | ".join(f"{k}: {v:.1f}" if isinstance(v, float) else f"{k}: {v}" for k, v in row.items()))
    print(f"wrote {path}")
    bad = [sdk for sdk, run in runs.items() if run["summary"].get("top1_agreement", 1.0) < 0.95]
    if bad:
        print(f"top-1 agreement below 0.95: {bad}", file=sys.stderr)
    return 1 if skipped or bad else 0


if __name__ == "__main__":
    sys.exit(main())

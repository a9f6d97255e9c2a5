"""Bulk catalog import: photos/s through ``coinvision catalog import`` into gunicorn with 1 and 2 worker processes.

    python -m benchmarks.bench_import --quick      # euro_phone (40 photos), 1 and 2 workers
    python -m benchmarks.bench_import              # coins211 (120 photos), 1 and 2 workers

For each worker count W a fresh server (SQLite, its own data dir, the release models in ``models/release``, one
ONNX thread per worker) runs as ``gunicorn --workers W --worker-class sync`` - the documented production command,
where each worker process embeds one photo at a time. The import (``run_import``, the CLI's code) keeps ``2 W``
photos in flight so a worker never waits for the client. Before timing, a warm-up import of other photos into
another catalog makes every worker load its models. The timed phase is the uploads (server-side decode, segment,
embed, store, index), then one publish; afterwards the catalog must hold every photo exactly once and exactly one
version. Client and server share the machine's cores; ``load_avg_1m`` is the machine's load when the run started
(other work on the machine slows both).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import ROOT, write_result

__all__ = ["ImportBenchConfig", "main"]

SAMPLE = ROOT / "examples" / "sample_coins"


@dataclass(frozen=True)
class ImportBenchConfig:
    catalog: str = "coins211"  # a folder of examples/sample_coins
    warmup_catalog: str = "euro_phone"
    workers: tuple[int, ...] = (1, 2)
    jobs_per_worker: int = 2
    models_dir: str = str(ROOT / "models" / "release")
    repeats: int = 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_gunicorn(workers: int, data: Path, db_url: str, models: str) -> tuple[subprocess.Popen[bytes], str]:
    import requests

    port = _free_port()
    env = {**os.environ, "COINVISION_DATA_DIR": str(data), "COINVISION_DB_URL": db_url,
           "COINVISION_MODELS_DIR": models, "COINVISION_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [str(Path(sys.executable).parent / "gunicorn"), "--workers", str(workers), "--worker-class", "sync",
           "--timeout", "120", "--bind", f"127.0.0.1:{port}", "--log-level", "warning",
           "coinvision.sync_server.app:create_app()"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if requests.get(url + "/v1/health", timeout=5).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("gunicorn did not start; run it by hand to see why")
        time.sleep(0.3)


def _token(data: Path, db_url: str) -> str:
    out = subprocess.run([sys.executable, "-m", "coinvision.cli.main", "token", "create", "--scope", "maintainer",
                          "--data-dir", str(data), "--db", db_url], capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def _warmup_dir(cfg: ImportBenchConfig, folder: Path, n: int) -> Path:
    """``n`` photos of the warm-up catalog as ``<coin_id>/<image>``: enough requests to reach every worker."""
    import shutil

    from coinvision.cli.pack_commands import scan_catalog

    photos = [(c.record.coin_id, p) for c in scan_catalog(SAMPLE / cfg.warmup_catalog)[0] for p in c.images]
    for coin_id, path in photos[:n]:
        (folder / coin_id).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / coin_id / path.name)
    return folder


def bench_workers(workers: int, cfg: ImportBenchConfig, root: Path) -> dict[str, Any]:
    import requests
    from coinvision.cli.catalog_commands import ImportOptions, run_import
    from coinvision.cli.pack_commands import scan_catalog

    data = root / f"w{workers}"
    db_url = f"sqlite:///{data / 'bench.db'}"
    token = _token(data, db_url)
    proc, url = _start_gunicorn(workers, data, db_url, cfg.models_dir)
    try:
        common = {"server": url, "token": token, "jobs": workers * cfg.jobs_per_worker, "progress": False}
        warm = run_import(ImportOptions(catalog_dir=_warmup_dir(cfg, root / f"warm{workers}", 4 * workers),
                                        catalog_id="warmup",
                                        journal=root / f"warmup{workers}.jsonl", publish=False, **common))
        if warm.failed:
            raise RuntimeError(f"warm-up import failed: {warm.failed[:3]}")
        load = os.getloadavg()[0]
        report = run_import(ImportOptions(catalog_dir=SAMPLE / cfg.catalog, catalog_id="bench",
                                          journal=root / f"bench{workers}.jsonl", **common))
        photos = sum(len(c.images) for c in scan_catalog(SAMPLE / cfg.catalog)[0])
        auth = {"Authorization": f"Bearer {token}"}
        coins = requests.get(f"{url}/v1/catalogs/bench/coins", headers=auth, timeout=30).json()["coins"]
        versions = requests.get(f"{url}/v1/catalogs/bench/versions", headers=auth, timeout=30).json()["versions"]
        stored = sum(c["image_count"] for c in coins)
        if report.failed or report.imported != photos or stored != photos or len(versions) != 1:
            raise RuntimeError(f"import incomplete: {report.imported}/{photos} uploaded, {stored} stored, "
                               f"{len(versions)} versions, failures {report.failed[:3]}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return {"workers": workers, "jobs": workers * cfg.jobs_per_worker, "photos": report.imported,
            "upload_s": round(report.upload_seconds, 2), "photos_per_s": round(report.photos_per_s, 2),
            "total_s_with_publish": round(report.seconds, 2), "no_coin": report.no_coin,
            "load_avg_1m": round(load, 2)}


def _embed_share(args: tuple[str, list[str], Any]) -> tuple[int, float, float]:
    """Embed ``paths`` in this process after loading the models; -> (count, start, end) wall-clock times."""
    from coinvision.sdk.images import load_image
    from coinvision.sync_server.embedding import load_reference_embedder

    models, paths, ready = args
    embedder = load_reference_embedder(Path(models), "onnx", 1)
    embedder.embed(load_image(paths[0]))  # warm-up
    ready.wait()  # every process loaded: they embed side by side
    started = time.time()
    for p in paths:
        embedder.embed(load_image(p))
    return len(paths), started, time.time()


def embed_ceiling(workers: int, cfg: ImportBenchConfig) -> dict[str, Any]:
    """The same photos decoded and embedded in ``workers`` plain processes (no HTTP, no database): the most the
    machine gives the server's work right now, to compare the import with."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from coinvision.cli.pack_commands import scan_catalog

    paths = [str(p) for c in scan_catalog(SAMPLE / cfg.catalog)[0] for p in c.images]
    shares = [paths[i::workers] for i in range(workers)]
    with multiprocessing.Manager() as manager, ProcessPoolExecutor(workers) as pool:
        ready = manager.Barrier(workers)
        parts = list(pool.map(_embed_share, [(cfg.models_dir, s, ready) for s in shares]))
    done = sum(n for n, _, _ in parts)
    seconds = max(end for _, _, end in parts) - min(start for _, start, _ in parts)
    return {"workers": workers, "photos": done, "embed_only_s": round(seconds, 2),
            "embed_only_photos_per_s": round(done / seconds, 2), "load_avg_1m": round(os.getloadavg()[0], 2)}


def run(cfg: ImportBenchConfig) -> list[dict[str, Any]]:
    rows = []
    for workers in cfg.workers:
        ceiling = embed_ceiling(workers, cfg)
        print(f"embedding alone, {workers} process(es): {ceiling['embed_only_photos_per_s']} photos/s",
              flush=True)
        rows.append({"mode": "embed only (no server)", **ceiling})
    with tempfile.TemporaryDirectory(prefix="bench_import_") as tmp:
        for workers in cfg.workers:
            for rep in range(cfg.repeats):
                row = bench_workers(workers, cfg, Path(tmp) / f"r{rep}")
                print(f"{workers} worker(s): {row['photos']} photos in {row['upload_s']} s = {row['photos_per_s']} "
                      f"photos/s (load {row['load_avg_1m']})", flush=True)
                rows.append({"mode": "catalog import", **row})
    for mode, key in (("catalog import", "photos_per_s"), ("embed only (no server)", "embed_only_photos_per_s")):
        mine = [r for r in rows if r["mode"] == mode]
        base = [r[key] for r in mine if r["workers"] == min(cfg.workers)]
        for r in mine:
            r["speedup"] = round(r[key] / (sum(base) / len(base)), 2)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="euro_phone's 40 photos instead of coins211's 120")
    parser.add_argument("--workers", default="1,2", help="comma list of gunicorn worker counts")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--models", default=ImportBenchConfig.models_dir, help="the server's models folder")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    cfg = ImportBenchConfig(workers=tuple(int(w) for w in args.workers.split(",")), repeats=args.repeats,
                            models_dir=args.models,
                            **({"catalog": "euro_phone", "warmup_catalog": "coins211"} if args.quick else {}))
    rows = run(cfg)
    write_result("import", {"config": asdict(cfg), "cpu_count": os.cpu_count(), "rows": rows}, rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

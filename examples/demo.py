"""`make demo`: the whole loop on the bundled sample coins, as a maintainer, a server and a phone would run it.

1. start the sync server (SQLite in a temp dir, loopback, its own process);
2. as a maintainer: create a catalog from the sample's catalog photos, let the server embed + index them, publish;
3. as a device: sync the signed pack into a cache dir, then STOP the server;
4. offline: recognize the sample's query photos with the SDK (TFLite runtime, release models);
5. print a results table + Recall@1/5 and write an HTML report (photo, mask overlay, crop, top matches).

Every number printed is computed in this run. ``python examples/demo.py --help`` for the knobs.
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "sample_coins"
DATASETS = ("coins211", "euro_phone")


@dataclass(frozen=True)
class SampleCoin:
    coin_id: str
    label: str
    country: str
    currency: str
    catalog: tuple[Path, ...]
    queries: tuple[Path, ...]


@dataclass(frozen=True)
class QueryOutcome:
    path: Path
    true_coin: str
    ranked: tuple[tuple[str, float], ...]
    unknown: bool
    coin_found: bool
    timings_ms: dict[str, float]


def load_sample(sample_root: Path, catalog_per_coin: int) -> list[SampleCoin]:
    """Each class of the sample is a coin: its first ``catalog_per_coin`` photos (sorted) go to the catalog,
    the rest are queries."""
    coins = []
    for dataset in DATASETS:
        root = sample_root / dataset
        with open(root / "classes.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        for row in rows:
            images = sorted((root / "images" / row["class_id"]).glob("*.jpg"))
            if len(images) <= catalog_per_coin:
                continue
            coins.append(SampleCoin(
                coin_id=f"{dataset}-{row['class_id']}", label=row.get("name") or row["class_id"],
                country=row.get("country", ""), currency=row.get("currency", ""),
                catalog=tuple(images[:catalog_per_coin]), queries=tuple(images[catalog_per_coin:]),
            ))
    if not coins:
        sys.exit(f"error: no coins with more than {catalog_per_coin} photos under {sample_root}")
    return coins


# ----------------------------------------------------------------------------------------------- server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "coinvision.cli.main", *args], capture_output=True, text=True,
                         check=False)
    if out.returncode:
        raise RuntimeError(f"coinvision {' '.join(args)} failed:\n{out.stderr}")
    return out.stdout.strip().splitlines()[-1]


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen[bytes]
    maintainer_token: str
    device_token: str
    public_key: str


@contextmanager
def sync_server(data_dir: Path, models_dir: Path, log_path: Path, start_timeout_s: float) -> Iterator[RunningServer]:
    """A real ``coinvision serve`` process on a free loopback port; killed on the way out whatever happens."""
    maintainer = _cli("token", "create", "--scope", "maintainer", "--label", "demo", "--data-dir", str(data_dir))
    device = _cli("token", "create", "--scope", "device", "--label", "demo", "--data-dir", str(data_dir))
    public_key = _cli("keys", "public", "--data-dir", str(data_dir))
    port = _free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "coinvision.cli.main", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--data-dir", str(data_dir), "--models", str(models_dir)],
            stdout=log, stderr=subprocess.STDOUT,
        )
    server = RunningServer(f"http://127.0.0.1:{port}", process, maintainer, device, public_key)
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}; see {log_path}")
            try:
                if requests.get(server.url + "/v1/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not answer within {start_timeout_s:.0f} s; see {log_path}")
            time.sleep(0.3)
        yield server
    finally:
        stop_server(server)


def stop_server(server: RunningServer) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()


def _check(resp: requests.Response, what: str) -> dict:
    if not resp.ok:
        raise RuntimeError(f"{what}: HTTP {resp.status_code} {resp.text[:500]}")
    return resp.json()


def publish_catalog(server: RunningServer, catalog_id: str, coins: Sequence[SampleCoin]) -> dict:
    """The maintainer flow over HTTP: catalog, coins with metadata, reference photos (embedded server-side)."""
    from tqdm import tqdm

    auth = {"Authorization": f"Bearer {server.maintainer_token}"}
    url = f"{server.url}/v1/catalogs"
    resp = requests.post(url, json={"id": catalog_id, "name": "coinvision demo"}, headers=auth, timeout=30)
    if resp.status_code != 409:  # 409: it exists already (a re-run on the same data dir)
        _check(resp, "create catalog")
    for coin in tqdm(coins, desc="upload", unit="coin"):
        meta = {"label": coin.label, "country": coin.country, "currency": coin.currency, "denomination": coin.label}
        _check(requests.put(f"{url}/{catalog_id}/coins/{coin.coin_id}", json=meta, headers=auth, timeout=30),
               f"put coin {coin.coin_id}")
        files = [("image", (p.name, p.read_bytes(), "image/jpeg")) for p in coin.catalog]
        _check(requests.post(f"{url}/{catalog_id}/coins/{coin.coin_id}/images", files=files, headers=auth,
                             timeout=300), f"upload photos of {coin.coin_id}")
    return _check(requests.post(f"{url}/{catalog_id}/publish", headers=auth, timeout=300), "publish")


# ------------------------------------------------------------------------------------------- recognize


def recognize_queries(recognizer, coins: Sequence[SampleCoin], top_k: int) -> tuple[list[QueryOutcome],
                                                                                    dict[Path, object]]:
    from coinvision.sdk.images import load_image
    from tqdm import tqdm

    outcomes, results = [], {}
    queries = [(coin.coin_id, path) for coin in coins for path in coin.queries]
    for true_coin, path in tqdm(queries, desc="recognize", unit="photo"):
        result = recognizer.recognize(load_image(path), top_k=top_k)
        results[path] = result
        outcomes.append(QueryOutcome(
            path=path, true_coin=true_coin, ranked=tuple((m.coin_id, float(m.score)) for m in result.matches),
            unknown=bool(result.unknown), coin_found=bool(result.segmentation.found),
            timings_ms={k: float(v) for k, v in result.timings_ms.items()},
        ))
    return outcomes, results


def far_coin(recognizer, sample_root: Path, labels: dict[str, str]) -> str | None:
    """The photo the segmenter's tiles are for (``scenes/far_coin.png``: a 2-euro coin 78 px across in 480x360, too
    small for the whole-photo pass): how its coin was found and what it was named. None without that photo."""
    from coinvision.sdk.images import load_image

    path = sample_root / "scenes" / "far_coin.png"
    if not path.is_file():
        return None
    result = recognizer.recognize(load_image(path))
    seg = result.segmentation
    how = "no coin found" if not seg.found else "found by the tiles" if seg.tiled else "found in the whole photo"
    best = result.matches[0] if result.matches else None
    named = "unknown" if result.unknown or best is None else \
        f"{labels.get(best.coin_id, best.coin_id)} ({best.score:.3f})"
    return f"{how}; answer: {named} (true coin: 2 Euro)"


def recall_at(outcomes: Sequence[QueryOutcome], k: int) -> float:
    """Share of queries whose true coin is among the first k ranked coins (the unknown flag is ignored)."""
    return float(np.mean([o.true_coin in [c for c, _ in o.ranked[:k]] for o in outcomes]))


def print_table(outcomes: Sequence[QueryOutcome], labels: dict[str, str]) -> None:
    from rich.console import Console
    from rich.table import Table

    stages = list(dict.fromkeys(k for o in outcomes for k in o.timings_ms))
    table = Table(title="offline recognition of the sample's query photos (pack synced from the server)")
    table.add_column("photo")
    table.add_column("true coin")
    for i in range(3):
        table.add_column(f"#{i + 1} (cosine)")
    table.add_column("unknown")
    for stage in stages:
        table.add_column(f"{stage} ms", justify="right")
    for o in outcomes:
        tops = [f"{'✓ ' if c == o.true_coin else ''}{labels.get(c, c)} ({s:.3f})" for c, s in o.ranked[:3]]
        tops += [""] * (3 - len(tops))
        table.add_row(f"{o.path.parent.name}/{o.path.name}", labels.get(o.true_coin, o.true_coin), *tops,
                      "yes" if o.unknown else "", *[f"{o.timings_ms.get(s, float('nan')):.1f}" for s in stages])
    Console(width=220).print(table)


# ------------------------------------------------------------------------------------------------ report


def _data_uri(rgb: np.ndarray, size_px: int = 160) -> str:
    h, w = rgb.shape[:2]
    scale = size_px / max(h, w)
    small = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode("ascii") if ok else ""


def _overlay(rgb: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if mask is None:
        return rgb
    out = rgb.copy()
    out[mask] = (0.55 * out[mask] + 0.45 * np.array([0, 255, 0])).astype(np.uint8)
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, (255, 0, 0), max(1, max(rgb.shape[:2]) // 150))
    return out


def write_report(out_html: Path, outcomes: Sequence[QueryOutcome], results: dict[Path, object],
                 coins: Sequence[SampleCoin], summary: dict[str, str]) -> Path:
    from coinvision.sdk.images import load_image

    labels = {c.coin_id: c.label for c in coins}
    first_photo = {c.coin_id: _data_uri(load_image(c.catalog[0]), 96) for c in coins}
    rows = []
    for o in outcomes:
        image = load_image(o.path)
        result = results[o.path]
        crop = getattr(result, "crop", None)
        matches = "".join(
            f'<div class="m{" ok" if c == o.true_coin else ""}"><img src="{first_photo.get(c, "")}">'
            f"<br>{html.escape(labels.get(c, c))}<br>{s:.3f}</div>"
            for c, s in o.ranked[:3]
        )
        status = "unknown" if o.unknown else ("correct" if o.ranked and o.ranked[0][0] == o.true_coin else "wrong")
        rows.append(
            f'<tr class="{status}"><td>{html.escape(o.path.parent.name + "/" + o.path.name)}<br>'
            f"<b>{html.escape(labels.get(o.true_coin, o.true_coin))}</b><br>{status}</td>"
            f'<td><img src="{_data_uri(image)}"></td>'
            f'<td><img src="{_data_uri(_overlay(image, result.segmentation.mask))}"></td>'
            f'<td>{f"<img src={chr(34)}{_data_uri(crop)}{chr(34)}>" if crop is not None else ""}</td>'
            f"<td>{matches}</td></tr>"
        )
    facts = "".join(f"<li>{html.escape(k)}: <b>{html.escape(v)}</b></li>" for k, v in summary.items())
    out_html.write_text(
        "<!doctype html><meta charset=utf-8><title>coinvision demo</title><style>"
        "body{font:14px sans-serif;margin:2em}td{vertical-align:top;padding:4px;border-bottom:1px solid #ddd}"
        ".m{display:inline-block;text-align:center;margin:2px;width:110px}.m.ok{background:#dfd}"
        "tr.wrong td:first-child{background:#fdd}tr.unknown td:first-child{background:#ffd}</style>"
        f"<h1>coinvision demo</h1><ul>{facts}</ul><table><tr><th>query</th><th>photo</th><th>mask</th>"
        f"<th>crop (embedder input)</th><th>top matches</th></tr>{''.join(rows)}</table>"
    )
    return out_html


# -------------------------------------------------------------------------------------------------- main


def run_demo(models_dir: Path, sample_root: Path, out_dir: Path, *, catalog_per_coin: int = 2,
             runtime: str = "tflite", top_k: int = 5, start_timeout_s: float = 120.0) -> dict[str, float]:
    from coinvision.sdk.recognizer import Recognizer
    from coinvision.sdk.sync_client import SyncClient

    started = time.perf_counter()
    coins = load_sample(sample_root, catalog_per_coin)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="coinvision-demo-"))
    try:
        cache_dir = out_dir / "device_cache"
        shutil.rmtree(cache_dir, ignore_errors=True)
        n_catalog = sum(len(c.catalog) for c in coins)
        print(f"[1/5] starting the sync server (SQLite in {work}, log {out_dir / 'server.log'})")
        with sync_server(work / "server", models_dir, out_dir / "server.log", start_timeout_s) as server:
            print(f"      {server.url} up; [2/5] maintainer: {len(coins)} coins, {n_catalog} reference photos")
            version = publish_catalog(server, "demo", coins)
            dupes = version.get("near_duplicates") or []
            print(f"      published v{version['version']}: {version['coin_count']} coins, {version['vector_count']} "
                  f"vectors, {version['pack']['size']} bytes ({version.get('quant', '?')}), "
                  f"{len(dupes)} near-duplicate pair(s) flagged")
            print("[3/5] device: syncing the signed pack")
            client = SyncClient(server.url, "demo", cache_dir, server.public_key, token=server.device_token)
            synced = client.sync()
            print(f"      cached v{synced.version} via {synced.via} ({synced.downloaded_bytes} bytes) "
                  f"in {synced.pack_path}")
            stop_server(server)
            print(f"      server stopped (exit code {server.process.returncode}): the rest runs offline")
        print(f"[4/5] recognizing {sum(len(c.queries) for c in coins)} query photos offline ({runtime})")
        recognizer = Recognizer.from_dir(models_dir, runtime=runtime, pack=client.pack_path)
        outcomes, results = recognize_queries(recognizer, coins, top_k)
        labels = {c.coin_id: c.label for c in coins}
        print_table(outcomes, labels)
        figures = {f"recall@{k}": recall_at(outcomes, k) for k in (1, 5)}
        figures["unknown_rate"] = float(np.mean([o.unknown for o in outcomes]))
        figures["unknown_threshold"] = float(next(iter(results.values())).threshold) if results else float("nan")
        accepted = [o for o in outcomes if not o.unknown]
        # of the answers the phone gives (not "unknown"), how many name the right coin
        figures["accepted_correct"] = float(np.mean([bool(o.ranked) and o.ranked[0][0] == o.true_coin
                                                     for o in accepted])) if accepted else float("nan")
        totals = [o.timings_ms.get("total", float("nan")) for o in outcomes]
        figures["median_total_ms"] = float(np.nanmedian(totals))
        print(f"Recall@1 {figures['recall@1']:.3f}  Recall@5 {figures['recall@5']:.3f}  over {len(outcomes)} "
              f"queries, {len(coins)} catalog coins; flagged unknown: {figures['unknown_rate']:.1%} (cosine below "
              f"{figures['unknown_threshold']:.3f}, calibrated on held-out coins), answers given right: "
              f"{figures['accepted_correct']:.1%}; median pipeline {figures['median_total_ms']:.0f} ms/photo")
        far = far_coin(recognizer, sample_root, labels)
        if far is not None:
            print(f"      a coin far from the camera (scenes/far_coin.png): {far}")
        summary = {
            "models": str(models_dir), "runtime": runtime, "catalog": f"{len(coins)} coins, {n_catalog} photos",
            "queries": str(len(outcomes)), "pack": f"v{synced.version}, {version['pack']['size']} bytes",
            "Recall@1": f"{figures['recall@1']:.3f}", "Recall@5": f"{figures['recall@5']:.3f}",
            "unknown rate": f"{figures['unknown_rate']:.1%} (threshold {figures['unknown_threshold']:.3f})",
            "answers given right": f"{figures['accepted_correct']:.1%}",
            "median pipeline": f"{figures['median_total_ms']:.0f} ms/photo",
            **({"a coin far from the camera (scenes/far_coin.png)": far} if far is not None else {}),
        }
        report = write_report(out_dir / "report.html", outcomes, results, coins, summary)
        print(f"[5/5] visual report: {report}")
        print(f"demo finished in {time.perf_counter() - started:.0f} s")
        return figures
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=ROOT / "models" / "release", help="release models folder")
    parser.add_argument("--sample", type=Path, default=SAMPLE, help="sample dataset root (coins211/, euro_phone/)")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "demo", help="report + device cache folder")
    parser.add_argument("--catalog-per-coin", type=int, default=2, help="photos per coin that go to the catalog")
    parser.add_argument("--runtime", choices=("tflite", "onnx"), default="tflite")
    parser.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args(argv)
    from coinvision.sdk.errors import CoinVisionError

    if not (args.models / "embedder.tflite").is_file():
        print(f"demo needs the release models in {args.models} (see models/README.md)", file=sys.stderr)
        return 1
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    try:
        run_demo(args.models, args.sample, args.out, catalog_per_coin=args.catalog_per_coin, runtime=args.runtime,
                 top_k=args.top_k)
    except (RuntimeError, requests.RequestException, CoinVisionError) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

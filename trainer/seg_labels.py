"""Segmentation labels for real photos: no coin masks exist in our data, so :func:`auto_label` finds the coin
with OpenCV's Hough circle transform (falling back to a border-colour threshold + contour), :func:`refine_label`
grows a Hough circle to the coin's true outline with GrabCut (kept only where it agrees with the circle), and
:func:`label_datasets` / :func:`refine_labels` / :func:`teacher_labels` (a release pipeline's own masks) write the
masks as PNGs with a manifest that :func:`read_label_manifest` reads back.
:func:`contact_sheet` tiles photos and masks for eyeballing.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from coinvision.sdk.errors import DatasetError
from coinvision.sdk.images import load_image
from coinvision.sdk.preprocess import letterbox

__all__ = [
    "MANIFEST_COLUMNS",
    "LabelResult",
    "LabelledImage",
    "TeacherLabelReport",
    "auto_label",
    "contact_sheet",
    "label_datasets",
    "load_mask",
    "read_label_manifest",
    "refine_label",
    "refine_labels",
    "teacher_labels",
]

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("dataset", "file", "mask", "method", "cx", "cy", "radius", "score", "refined")


@dataclass(frozen=True)
class LabelResult:
    """Auto-label of one photo. ``mask`` is None when no confident coin was found (``reason`` says why)."""

    mask: np.ndarray | None  # bool HxW
    method: str  # "hough" | "contour" | "rejected"
    circle: tuple[float, float, float] | None = None  # cx, cy, radius (px)
    score: float = 0.0  # hough: share of the circle's perimeter on an edge; contour: circularity
    reason: str = ""
    refined: bool = False  # the mask is refine_label's GrabCut outline, not the circle / contour itself


def _edge_support(grown_edges: np.ndarray, cx: float, cy: float, r: float) -> float:
    """Share of perimeter samples that land on a (dilated) edge pixel: the circle's confidence."""
    h, w = grown_edges.shape
    angles = np.linspace(0.0, 2.0 * math.pi, 180, endpoint=False)
    xs = np.round(cx + r * np.cos(angles)).astype(int)
    ys = np.round(cy + r * np.sin(angles)).astype(int)
    inside = (xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)
    if inside.sum() < 0.5 * len(angles):  # mostly outside the photo: cannot be confirmed
        return 0.0
    return float((grown_edges[ys[inside], xs[inside]] > 0).mean())


def _outermost_radius(grown: np.ndarray, cx: float, cy: float, r: float, max_r: float) -> tuple[float, float]:
    """Hough often locks onto a coin's inner rim; walk outwards from its radius and keep the outermost circle
    whose edge support is close to the best one (the coin's outline)."""
    radii = np.arange(0.8 * r, min(max_r, 1.4 * r) + 0.5, 0.5)
    support = np.array([_edge_support(grown, cx, cy, float(rad)) for rad in radii])
    best = float(support.max())
    good = np.nonzero(support >= 0.95 * best)[0]
    return float(radii[good[-1]]), float(support[good[-1]])


def _hough_candidate(gray: np.ndarray, edges: np.ndarray) -> tuple[float, float, float, float] | None:
    h, w = gray.shape
    side = min(h, w)
    max_r = 0.62 * max(h, w)
    blurred = cv2.medianBlur(gray, 5)
    circles = cv2.HoughCircles(
        blurred,
        cv2.HOUGH_GRADIENT,
        dp=1.5,
        minDist=side,  # one coin per catalogue photo / crop: the strongest circle
        param1=120,
        param2=30,
        minRadius=int(0.2 * side),
        maxRadius=int(max_r),
    )
    if circles is None:
        return None
    grown = cv2.dilate(edges, np.ones((3, 3), np.uint8))
    best: tuple[float, float, float, float] | None = None
    for cx, cy, r in circles[0][:5]:
        radius, score = _outermost_radius(grown, float(cx), float(cy), float(r), max_r)
        if best is None or score > best[3]:
            best = (float(cx), float(cy), radius, score)
    return best


def _contour_candidate(image: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Foreground = pixels far from the border colour; keep the largest roundish contour, filled."""
    h, w = image.shape[:2]
    lab = cv2.cvtColor(cv2.GaussianBlur(image, (5, 5), 0), cv2.COLOR_RGB2LAB).astype(np.float32)
    border = np.concatenate([lab[:4].reshape(-1, 3), lab[-4:].reshape(-1, 3), lab[:, :4].reshape(-1, 3),
                             lab[:, -4:].reshape(-1, 3)])
    dist = np.linalg.norm(lab - np.median(border, axis=0), axis=2)
    dist8 = np.clip(dist * (255.0 / max(float(dist.max()), 1e-6)), 0, 255).astype(np.uint8)
    _, fg = cv2.threshold(dist8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, np.ones((7, 7), np.uint8))
    contours, _ = cv2.findContours(fg, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return None
    contour = max(contours, key=cv2.contourArea)
    hull = cv2.convexHull(contour)
    area = cv2.contourArea(hull)
    perimeter = cv2.arcLength(hull, True)
    if area < 0.05 * h * w or perimeter <= 0:
        return None
    circularity = 4.0 * math.pi * area / perimeter**2
    mask = np.zeros((h, w), np.uint8)
    cv2.drawContours(mask, [hull], -1, 1, thickness=cv2.FILLED)
    return mask.astype(bool), circularity


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    out = np.zeros(mask.shape, np.uint8)
    cv2.drawContours(out, contours, -1, 1, thickness=cv2.FILLED)
    return out.astype(bool)


def refine_label(image: np.ndarray, circle: tuple[float, float, float], *, inner: float = 0.85,
                 outer: float = 1.15, iterations: int = 3, min_iou: float = 0.85,
                 work_px: int = 128) -> np.ndarray | None:
    """GrabCut outline of the coin, initialised from its Hough ``circle`` (cx, cy, r): certain coin inside
    ``inner * r``, certain background outside ``outer * r``, undecided in between (where a Hough circle that
    clipped the rim, or a polygonal / scalloped edge, lies). The largest component, holes filled, is returned
    only when it agrees with the circle (IoU >= ``min_iou``); ``None`` means keep the circle. GrabCut runs with
    the longer side at most ``work_px`` (speed); the outline is resized back to the photo."""
    src_h, src_w = image.shape[:2]
    scale = min(1.0, work_px / max(src_h, src_w))
    if scale < 1.0:
        small = cv2.resize(image, (max(1, round(src_w * scale)), max(1, round(src_h * scale))),
                           interpolation=cv2.INTER_AREA)
        fg = refine_label(small, (circle[0] * scale, circle[1] * scale, circle[2] * scale), inner=inner,
                          outer=outer, iterations=iterations, min_iou=min_iou, work_px=work_px)
        if fg is None:
            return None
        soft = cv2.resize(fg.astype(np.float32), (src_w, src_h), interpolation=cv2.INTER_LINEAR)
        return soft >= 0.5
    cx, cy, r = circle
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    dist = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
    gc = np.full((h, w), cv2.GC_BGD, np.uint8)
    gc[dist < outer * r] = cv2.GC_PR_BGD
    gc[dist < r] = cv2.GC_PR_FGD
    gc[dist < inner * r] = cv2.GC_FGD
    if not (gc == cv2.GC_BGD).any() or not (gc == cv2.GC_FGD).any():
        return None  # the circle fills the photo: nothing to learn the background from
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(np.ascontiguousarray(image[..., ::-1]), gc, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error:
        return None
    fg = (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)
    fg = cv2.morphologyEx(fg.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)).astype(bool)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(fg.astype(np.uint8), connectivity=8)
    if count <= 1:
        return None
    fg = _fill_holes(labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])))
    disc = dist <= r
    iou = float((fg & disc).sum() / max(1, (fg | disc).sum()))
    return fg if iou >= min_iou else None


def auto_label(image: np.ndarray, *, min_edge_support: float = 0.35, min_circularity: float = 0.8,
               refine: bool = False) -> LabelResult:
    """Coin mask of a single-coin photo: Hough circle when its perimeter is backed by edges, else the
    border-colour contour when it is round enough, else rejected. ``refine``: a Hough circle is replaced by
    :func:`refine_label`'s GrabCut outline where the two agree."""
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    edges = cv2.Canny(cv2.GaussianBlur(gray, (5, 5), 0), 50, 150)
    h, w = gray.shape
    circle = _hough_candidate(gray, edges)
    if circle is not None and circle[3] >= min_edge_support:
        cx, cy, r, score = circle
        if refine:
            refined = refine_label(image, (cx, cy, r))
            if refined is not None:
                return LabelResult(refined, "hough", (cx, cy, r), score, refined=True)
        mask = np.zeros((h, w), np.uint8)
        cv2.circle(mask, (round(cx), round(cy)), round(r), 1, thickness=cv2.FILLED)
        return LabelResult(mask.astype(bool), "hough", (cx, cy, r), score)
    contour = _contour_candidate(image)
    if contour is not None and contour[1] >= min_circularity:
        mask, circularity = contour
        ys, xs = np.nonzero(mask)
        r = math.sqrt(mask.sum() / math.pi)
        return LabelResult(mask, "contour", (float(xs.mean()), float(ys.mean()), r), circularity)
    reason = "no circle with edge support" if circle is None else f"weak circle (edge support {circle[3]:.2f})"
    if contour is not None:
        reason += f"; contour not round (circularity {contour[1]:.2f})"
    return LabelResult(None, "rejected", None, 0.0, reason)


@dataclass(frozen=True)
class LabelledImage:
    dataset: str
    file: str  # relative to the dataset root
    image_path: Path
    mask_path: Path
    method: str
    score: float


def label_datasets(
    roots: Sequence[str | Path], out_dir: str | Path, *, progress: bool = True, refine: bool = False
) -> tuple[list[LabelledImage], list[tuple[str, str, str]]]:
    """Auto-label every image of each dataset; masks go to ``out_dir/<dataset>/<file>.png`` (0/255) and
    ``out_dir/manifest.csv`` lists them. ``refine``: GrabCut-refined outlines (:func:`refine_label`).
    Returns (labelled, rejected as (dataset, file, reason))."""
    from coinvision.trainer.data import load_dataset
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labelled: list[LabelledImage] = []
    rejected: list[tuple[str, str, str]] = []
    rows: list[list[str]] = []
    for root in roots:
        ds = load_dataset(root)
        for img in tqdm(ds.images, desc=f"label {ds.name}", disable=not progress):
            rel = img.path.relative_to(ds.root).as_posix()
            result = auto_label(load_image(img.path), refine=refine)
            if result.mask is None:
                rejected.append((ds.name, rel, result.reason))
                continue
            mask_rel = Path(ds.name) / Path(rel).with_suffix(".png")
            mask_path = out_dir / mask_rel
            mask_path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(mask_path), result.mask.astype(np.uint8) * 255)
            cx, cy, r = result.circle or (0.0, 0.0, 0.0)
            rows.append([ds.name, rel, mask_rel.as_posix(), result.method, f"{cx:.1f}", f"{cy:.1f}", f"{r:.1f}",
                         f"{result.score:.3f}", int(result.refined)])
            labelled.append(LabelledImage(ds.name, rel, img.path, mask_path, result.method, result.score))
    with (out_dir / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(rows)
    with (out_dir / "rejected.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(("dataset", "file", "reason"))
        writer.writerows(rejected)
    log.info("auto-labelled %d images, rejected %d", len(labelled), len(rejected))
    return labelled, rejected


def _manifest_rows(label_dir: Path, out_dir: Path, roots: Sequence[str | Path]
                   ) -> list[tuple[dict[str, str], Path]]:
    """``(row, dataset root)`` for each manifest row whose dataset is among ``roots``; ``out_dir`` must be another
    folder (the labels read are never overwritten)."""
    from coinvision.trainer.data import load_dataset

    if not (label_dir / "manifest.csv").is_file():
        raise DatasetError(f"{label_dir / 'manifest.csv'} does not exist; create the labels with "
                           "`coinvision data seg-labels`")
    if out_dir.resolve() == label_dir.resolve():
        raise DatasetError(f"--out {out_dir} is the label folder itself; write the new labels to another folder")
    dataset_roots = {ds.name: ds.root for ds in (load_dataset(r, verify_images=False) for r in roots)}
    with (label_dir / "manifest.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [(row, dataset_roots[row["dataset"]]) for row in rows if row["dataset"] in dataset_roots]


def _write_label(out_dir: Path, row: dict[str, str], mask: np.ndarray) -> None:
    target = out_dir / row["mask"]
    target.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(target), mask.astype(np.uint8) * 255):
        raise DatasetError(f"could not write {target}; check that the output folder is writable")


def _write_manifest(label_dir: Path, out_dir: Path, rows: Sequence[dict[str, object]]) -> None:
    with (out_dir / "manifest.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    if (label_dir / "rejected.csv").is_file():
        (out_dir / "rejected.csv").write_bytes((label_dir / "rejected.csv").read_bytes())


def refine_labels(label_dir: str | Path, out_dir: str | Path, roots: Sequence[str | Path], *,
                  progress: bool = True) -> tuple[int, int]:
    """Copy of an auto-label folder whose Hough masks are replaced by :func:`refine_label` outlines where it
    agrees with the circle (manifest column ``refined`` = 1); contour labels are copied as they are.
    Returns (refined, kept)."""
    from tqdm import tqdm

    label_dir, out_dir = Path(label_dir), Path(out_dir)
    refined = kept = 0
    out_rows = []
    for row, root in tqdm(_manifest_rows(label_dir, out_dir, roots), desc="refine labels", disable=not progress):
        mask = load_mask(label_dir / row["mask"])
        new = None
        if row["method"] == "hough":
            new = refine_label(load_image(root / row["file"]),
                               (float(row["cx"]), float(row["cy"]), float(row["radius"])))
        refined += new is not None
        kept += new is None
        _write_label(out_dir, row, mask if new is None else new)
        out_rows.append({**{k: row.get(k, "") for k in MANIFEST_COLUMNS}, "refined": int(new is not None)})
    _write_manifest(label_dir, out_dir, out_rows)
    log.info("refined %d labels, kept %d", refined, kept)
    return refined, kept


@dataclass(frozen=True)
class TeacherLabelReport:
    replaced: int  # rows whose mask is now the teacher's (method "teacher")
    kept: int  # rows where the teacher found no coin: the old label stays
    disagreed: int  # replaced rows whose teacher mask overlaps the old label with IoU < 0.5 (another coin or side)


def teacher_labels(label_dir: str | Path, out_dir: str | Path, roots: Sequence[str | Path],
                   segment: Callable[[np.ndarray], np.ndarray | None], *, progress: bool = True
                   ) -> TeacherLabelReport:
    """Copy of a label folder whose masks are ``segment(photo)``'s (e.g. a release's two-pass pipeline,
    ``Segmenter.segment(...).mask``): a fine-tune trained on them keeps the teacher's choices (which coin, which
    side of a two-sided catalogue photo) and its outlines, which the embedder and catalog were built on. The
    scene generator cuts its coin sprites with these masks too. Where the teacher finds no coin the old label
    stays."""
    from tqdm import tqdm

    label_dir, out_dir = Path(label_dir), Path(out_dir)
    replaced = kept = disagreed = 0
    out_rows = []
    for row, root in tqdm(_manifest_rows(label_dir, out_dir, roots), desc="teacher labels", disable=not progress):
        old = load_mask(label_dir / row["mask"])
        new = segment(load_image(root / row["file"]))
        if new is None or not new.any():
            kept += 1
            _write_label(out_dir, row, old)
            out_rows.append({k: row.get(k, "") for k in MANIFEST_COLUMNS})
            continue
        if new.shape != old.shape:
            raise DatasetError(f"{root / row['file']}: the teacher's mask is {new.shape}, the label {old.shape}; "
                               "segment the photo as loaded (coinvision.sdk.images.load_image), not resized")
        replaced += 1
        disagreed += int(np.logical_and(new, old).sum() < 0.5 * np.logical_or(new, old).sum())
        _write_label(out_dir, row, new)
        out_rows.append({**{k: row.get(k, "") for k in MANIFEST_COLUMNS}, "method": "teacher"})
    _write_manifest(label_dir, out_dir, out_rows)
    log.info("teacher labels: %d replaced (%d on another coin), %d kept", replaced, disagreed, kept)
    return TeacherLabelReport(replaced, kept, disagreed)


def read_label_manifest(label_dir: str | Path, dataset_roots: dict[str, Path]) -> list[LabelledImage]:
    """Rows of ``label_dir/manifest.csv`` resolved against ``{dataset name: root}``."""
    label_dir = Path(label_dir)
    path = label_dir / "manifest.csv"
    if not path.is_file():
        raise DatasetError(f"{path} does not exist; create the masks with `coinvision data seg-labels`")
    out: list[LabelledImage] = []
    with path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            root = dataset_roots.get(row["dataset"])
            if root is None:
                continue
            out.append(LabelledImage(row["dataset"], row["file"], root / row["file"], label_dir / row["mask"],
                                     row["method"], float(row["score"])))
    return out


def load_mask(path: str | Path) -> np.ndarray:
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise DatasetError(f"mask {path} is missing or unreadable; re-run the auto-labelling")
    return mask > 127


def contact_sheet(items: Sequence[LabelledImage], out_png: str | Path, *, tile_px: int = 128, cols: int = 10,
                  reference_masks: Sequence[str | Path] | None = None, first_number: int | None = None) -> Path:
    """Image + mask overlay tiles (outside the mask dimmed, outline in green) for eyeballing the labels.

    ``reference_masks`` (one per item, e.g. the unrefined Hough circles) are outlined in red under the green
    one; ``first_number`` writes a running number on each tile (for hand-check lists)."""
    if reference_masks is not None and len(reference_masks) != len(items):
        raise ValueError(f"{len(reference_masks)} reference masks for {len(items)} items; pass one per item")
    tiles = []
    for k, item in enumerate(items):
        image = load_image(item.image_path)
        mask = load_mask(item.mask_path)
        overlay = image.copy()
        overlay[~mask] = (0.35 * overlay[~mask]).astype(np.uint8)  # background dimmed, coin untouched
        if reference_masks is not None:
            ref = load_mask(reference_masks[k]).astype(np.uint8)
            contours, _ = cv2.findContours(ref, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(overlay, contours, -1, (255, 0, 0), 1)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(overlay, contours, -1, (0, 255, 0), 1)
        tile, _ = letterbox(overlay, tile_px)
        label = item.method[0] if first_number is None else f"{first_number + k} {item.method[0]}"
        cv2.putText(tile, label, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0), 1)
        tiles.append(tile)
    if not tiles:
        raise DatasetError("contact sheet: no labelled images to show")
    while len(tiles) % cols:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.hstack(tiles[i : i + cols]) for i in range(0, len(tiles), cols)]
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out_png), cv2.cvtColor(np.vstack(rows), cv2.COLOR_RGB2BGR))
    return out_png


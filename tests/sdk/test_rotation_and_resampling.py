"""Rotation averaging and area resampling: the SDK functions every caller (trainer, converters, Recognizer) uses."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from coinvision.sdk.errors import ModelLoadError
from coinvision.sdk.images import load_image
from coinvision.sdk.model_meta import ModelMetadata, sidecar_path
from coinvision.sdk.preprocess import InputSpec, coin_crop, mean_unit_vector, resize_square, rotation_views
from coinvision.sdk.recognizer import Recognizer, embed_rotations_of
from coinvision.sdk.runtimes import LoadedModel, load_model


def _stripes(size_px: int, period_px: int = 2) -> np.ndarray:
    """Vertical black/white stripes: the pattern bilinear shrinking aliases and area averaging does not."""
    row = ((np.arange(size_px) // (period_px // 2)) % 2 * 255).astype(np.uint8)
    return np.repeat(np.repeat(row[None, :, None], size_px, axis=0), 3, axis=2)


def test_area_resampling_averages_fine_detail_that_bilinear_aliases() -> None:
    stripes = _stripes(480)  # 3x the output size, one-pixel stripes
    area = resize_square(stripes, 160, "area")
    bilinear = resize_square(stripes, 160, "bilinear")
    # each output pixel covers 3 source pixels (1.5 stripe pairs): area gives mid-greys, never pure black/white
    assert area.std() < 50 and area.min() > 0 and area.max() < 255
    assert bilinear.std() > 100  # sampling hits whole stripes: full-contrast aliasing


def test_resize_square_enlarges_bilinearly_and_keeps_the_right_size() -> None:
    small = _stripes(40, 8)
    for mode in ("area", "bilinear"):
        assert resize_square(small, 160, mode).shape == (160, 160, 3)
    np.testing.assert_array_equal(resize_square(small, 160, "area"), resize_square(small, 160, "bilinear"))
    assert resize_square(small, 40, "area") is small
    with pytest.raises(ValueError, match="interpolation='cubic'"):
        resize_square(small, 20, "cubic")


def test_coin_crop_shrinks_with_the_metadata_interpolation(sample_root) -> None:
    image = load_image(next((sample_root / "coins211" / "images").rglob("*.jpg")))
    mask = np.zeros(image.shape[:2], bool)
    h, w = mask.shape
    mask[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = True
    area = coin_crop(image, mask, 32, interpolation="area")
    bilinear = coin_crop(image, mask, 32, interpolation="bilinear")
    assert area.shape == bilinear.shape == (32, 32, 3)
    assert not np.array_equal(area, bilinear)
    with pytest.raises(ValueError, match="interpolation"):
        InputSpec(size_px=32, interpolation="nearest")


def test_rotation_views_turn_about_the_centre() -> None:
    square = np.zeros((33, 33, 3), np.uint8)
    square[2:6, 14:19] = 255  # a mark near the top edge
    views = rotation_views(square, 4)
    assert len(views) == 4
    np.testing.assert_array_equal(views[0], square)
    np.testing.assert_array_equal(views[1], np.rot90(square, 1))  # counter-clockwise: the mark goes left
    assert views[1][14:19, 2:6].min() == 255
    eight = rotation_views(square, 8)
    assert len(eight) == 8
    np.testing.assert_array_equal(eight[2], views[1])  # 90 degrees is an exact permutation in both
    # 45 degrees: the mark moves up-left along the circle, the centre pixel stays where it was
    ys, xs = np.nonzero(eight[1][..., 0] > 127)
    assert ys.mean() < 16 and xs.mean() < 16
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="n_rotations"):
            rotation_views(square, bad)


def test_mean_unit_vector_is_the_normalised_mean_of_unit_rows() -> None:
    vectors = np.array([[3.0, 0.0], [0.0, 0.5]])
    np.testing.assert_allclose(mean_unit_vector(vectors), [np.sqrt(0.5), np.sqrt(0.5)], atol=1e-6)
    batch = np.stack([vectors, vectors[::-1]])
    assert mean_unit_vector(batch).shape == (2, 2)


def _counting(model: LoadedModel, calls: list[int]) -> LoadedModel:
    def predict(square: np.ndarray) -> np.ndarray:
        calls.append(1)
        return model.predict(square)

    return LoadedModel(model.path, model.meta, predict)


@pytest.mark.parametrize("rotations", [1, 4, 8])
def test_recognizer_embeds_the_number_of_rotations_in_the_metadata(tiny_models_dir, sample_root, rotations) -> None:
    seg = load_model(tiny_models_dir / "segmenter.onnx")
    emb = load_model(tiny_models_dir / "embedder.onnx")
    meta = replace(emb.meta, extra={**emb.meta.extra, "embed_rotations": rotations})
    calls: list[int] = []
    rec = Recognizer(seg, _counting(LoadedModel(emb.path, meta, emb.predict), calls))
    assert rec.embed_rotations == rotations
    calls.clear()
    photo = next((sample_root / "euro_phone" / "images").rglob("*.jpg"))
    vector = rec.embed(photo).vector
    assert len(calls) == rotations
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


def test_rotation_averaged_embedding_is_rotation_invariant(tiny_models_dir, sample_root) -> None:
    """A photo turned by 90 degrees embeds to the same vector (4 views: the same set of views, in another order);
    without averaging the random tiny embedder is far from invariant, so the test can fail."""
    seg = load_model(tiny_models_dir / "segmenter.onnx")
    emb = load_model(tiny_models_dir / "embedder.onnx")
    photo = load_image(next((sample_root / "coins211" / "images").rglob("*.jpg")))
    turned = np.ascontiguousarray(np.rot90(photo))
    cosines = {}
    for rotations in (1, 4):
        meta = replace(emb.meta, extra={**emb.meta.extra, "embed_rotations": rotations})
        rec = Recognizer(seg, LoadedModel(emb.path, meta, emb.predict))
        cosines[rotations] = float(rec.embed(photo).vector @ rec.embed(turned).vector)
    assert cosines[4] >= 0.995, cosines
    assert cosines[4] > cosines[1], cosines


def test_bad_embed_rotations_in_metadata_is_a_model_load_error(tiny_models_dir) -> None:
    meta = ModelMetadata.from_json(sidecar_path(tiny_models_dir / "embedder.onnx").read_text())
    assert embed_rotations_of(meta) == 1  # absent: models before rotation averaging
    for bad in (0, 100, "4", 2.5):
        with pytest.raises(ModelLoadError, match="embed_rotations"):
            embed_rotations_of(replace(meta, extra={**meta.extra, "embed_rotations": bad}))

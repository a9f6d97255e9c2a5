"""Request and response bodies of the JSON API as pydantic models, and the :func:`doc` decorator that ties each
route to them. ``/openapi.json`` is generated from these (``openapi.py``) and the tests validate real responses
against the same models (``extra="forbid"``), so the description cannot drift from what the code sends.

Requests are still checked by the routes themselves (their messages name the field and the fix); the request
models here document them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["OpDoc", "Param", "doc"]

F = TypeVar("F", bound=Callable[..., Any])


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------ common
class Error(_Model):
    """Every error: a stable machine code, a message that names the problem and the fix, optional detail."""

    code: str = Field(examples=["catalog_not_found"])
    message: str
    detail: Any = None


class Health(_Model):
    status: Literal["ok"]


class FileRef(_Model):
    url: str = Field(description="download path, relative to the server")
    size: int = Field(description="bytes")
    sha256: str = Field(description="hex sha256 of the file; also its strong ETag")


class DeltaRef(FileRef):
    from_version: int = Field(description="the version a device must hold to apply this delta")


class Version(_Model):
    version: int
    created_at: str = Field(description="ISO 8601, UTC")
    model_fingerprint: str = Field(description="embedder whose vectors the pack holds")
    coin_count: int
    vector_count: int
    quant: Literal["int8", "fp16", "fp32"]
    pack: FileRef
    delta: DeltaRef | None


# ------------------------------------------------------------------ catalogs
class CatalogCreate(_Model):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$", description="used by apps; cannot change")
    name: str | None = Field(default=None, max_length=200, description="for people; default: the id")


class CatalogRename(_Model):
    name: str = Field(min_length=1, max_length=200)


class CatalogRef(_Model):
    id: str
    name: str


class CatalogSummary(CatalogRef):
    coin_count: int
    latest_version: int | None


class CatalogList(_Model):
    catalogs: list[CatalogSummary]


class CatalogDeleted(_Model):
    deleted: str
    photos_removed: int


# ------------------------------------------------------------------ coins and images
class CoinFields(_Model):
    label: str | None = Field(default=None, max_length=200)
    country: str | None = Field(default=None, max_length=100)
    currency: str | None = Field(default=None, max_length=100)
    denomination: str | None = Field(default=None, max_length=100)
    side: str | None = Field(default=None, max_length=32)
    years: str | None = Field(default=None, max_length=100)
    extra: dict[str, str] | None = Field(
        default=None, description="string map copied into the pack record; `coin_group` groups the two sides of a coin"
    )


class Coin(_Model):
    coin_id: str
    label: str
    country: str
    currency: str
    denomination: str
    side: str
    years: str
    extra: dict[str, str]


class CoinWithCount(Coin):
    image_count: int


class CoinListItem(CoinWithCount):
    thumbnail_image_id: int | None = Field(description="a reference image to show (GET /v1/images/{id}/thumbnail)")


class CoinPage(_Model):
    coins: list[CoinListItem]
    total: int = Field(description="coins matching q, over all pages")
    offset: int
    limit: int


class ImageInfo(_Model):
    id: int
    filename: str
    sha256: str  # of the photo's bytes: a resumed bulk import skips what is already here
    width_px: int
    height_px: int
    created_at: str
    model_fingerprint: str


class CoinDetail(CoinWithCount):
    images: list[ImageInfo]


class CatalogDetail(_Model):
    id: str
    name: str
    created_at: str
    coins: list[CoinWithCount]
    versions: list[Version]


class VersionList(_Model):
    versions: list[Version]


class UploadForm(_Model):
    image: list[bytes] = Field(description="1..16 JPEG, PNG or WebP files (judged by their bytes)")
    create: Literal["1", "true"] | None = Field(default=None, description="create the coin if it is missing")
    label: str | None = Field(default=None, description="set where not empty (likewise the other coin fields)")
    country: str | None = None
    currency: str | None = None
    denomination: str | None = None
    side: str | None = None
    years: str | None = None


class UploadedImage(_Model):
    id: int
    filename: str
    sha256: str
    coin_found: bool = Field(description="false: the segmenter found no coin and the whole photo was embedded")
    model_fingerprint: str


class UploadResult(_Model):
    coin_id: str
    coin_created: bool
    coin: Coin
    images: list[UploadedImage]


class CoinDeleted(_Model):
    deleted: str
    images_removed: int
    photos_removed: int


class ImageDeleted(_Model):
    deleted: int
    photo_removed: bool


# ------------------------------------------------------------------ search and review
class SearchPhoto(_Model):
    image: bytes = Field(description="one JPEG, PNG or WebP photo of at most 16 MP")


class SearchEmbedding(_Model):
    embedding: list[float] = Field(description="the query vector a device computed (normalised by the server)")


class Match(_Model):
    coin_id: str
    label: str
    score: float = Field(description="cosine similarity of the coin's best reference, -1..1")
    reference_image_id: int
    thumbnail: str | None = Field(default=None, description="data: URL, with thumbnails=1")


class Segmentation(_Model):
    found: bool
    bbox: list[int] | None
    overlay: str | None = Field(default=None, description="PNG data: URL of the mask overlay, with overlay=1")


class SearchResult(_Model):
    catalog_id: str
    matches: list[Match]
    unknown: bool = Field(description="true when the best score is below `threshold` (or nothing matched)")
    threshold: float | None = Field(description="the embedder's calibrated unknown-coin cosine")
    search_ms: float
    index_size: int
    embed_ms: float | None = Field(default=None, description="photo searches only")
    segmentation: Segmentation | None = Field(default=None, description="photo searches only")


class DuplicatePair(_Model):
    coin_a: str
    coin_b: str
    cosine: float
    image_a: int
    image_b: int


class Duplicates(_Model):
    min_cosine: float
    pairs: list[DuplicatePair]


class EditedCoin(_Model):
    coin_id: str
    fields: list[str]


class PhotoCountChange(_Model):
    coin_id: str
    before: int
    now: int


class Changes(_Model):
    catalog_id: str
    since_version: int | None
    added: list[str]
    removed: list[str]
    edited: list[EditedCoin]
    photos_changed: list[PhotoCountChange]
    without_photos: list[str] = Field(description="coins left out of a pack until they have a photo")
    unchanged: bool


# ------------------------------------------------------------------ publish and sync
class PublishRequest(_Model):
    strict: bool = Field(default=False, description="refuse while near-duplicate pairs remain")


class PublishResult(Version):
    skipped_coins: list[str]
    near_duplicates: list[DuplicatePair]


class PublishReplayed(Version):
    replayed: Literal[True]


class ManifestPayload(Version):
    format: Literal[1]
    catalog_id: str
    issued_at: str
    expires_at: str


class Manifest(_Model):
    payload: ManifestPayload
    signature: str = Field(description="base64 Ed25519 signature over the payload as canonical JSON")
    key_id: str = Field(description="first 16 hex digits of the public key's sha256")


# ------------------------------------------------------------------ route documentation
@dataclass(frozen=True)
class Param:
    name: str
    type: type
    description: str
    default: object = None


@dataclass(frozen=True)
class OpDoc:
    summary: str
    response: type[BaseModel] | None  # None: a binary body (packs, thumbnails)
    status: int = 200
    request: type[BaseModel] | None = None
    request_kind: Literal["json", "multipart", "json-or-multipart"] = "json"
    alt_request: type[BaseModel] | None = None  # the multipart form of a json-or-multipart route
    query: tuple[Param, ...] = ()
    errors: tuple[int, ...] = ()
    extra_responses: dict[int, str] = field(default_factory=dict)
    binary_type: str = "application/octet-stream"
    alt_response: tuple[int, type[BaseModel], str] | None = None


def doc(summary: str, response: type[BaseModel] | None, **kw: Any) -> Callable[[F], F]:
    """Attach an :class:`OpDoc` to a view (put it right under ``@bp.get``/``@bp.post``)."""

    def deco(view: F) -> F:
        view.__openapi__ = OpDoc(summary, response, **kw)  # type: ignore[attr-defined]
        return view

    return deco

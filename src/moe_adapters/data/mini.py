"""The embedded mini benchmark's datasets: real images that ship inside packages, and generated domains.

Every dataset is built offline and deterministically, then written in the prepared format. Each real
source is split three ways, disjoint: a pretraining pool (captioned, used by the `pretrain` step and by
DDAS autoencoder 0), a train split and a test split.

  Digits    scikit-learn's 1,797 handwritten digits (8x8), 10 classes
  Textures  scikit-image's CC0/public-domain images (brick, grass, gravel, moon, hubble, tissue), 6 classes
  Faces     scikit-image's LFW subset: 100 faces and 100 non-faces (25x25), 2 classes
  Shapes    generated: six filled shapes on coloured backgrounds
  Glyphs    generated: letters A-J drawn with the DejaVu Sans font matplotlib ships
  Pretrain  the union of every dataset's pretraining pool, with captions
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .prepared import write_prepared
from .transforms import eval_geometry

SIZE = 32
NUMBER_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
PRETRAIN = "Pretrain"
MINI_DATASETS = ("Digits", "Textures", "Faces", "Shapes", "Glyphs")


def _rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def _resize(img: np.ndarray, size: int = SIZE, resample=Image.BILINEAR) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((size, size), resample))


def _split(n: int, labels: np.ndarray, fractions: tuple[float, float], seed: int) -> dict[str, np.ndarray]:
    """Stratified split of n items into pretrain / train / test index lists (fractions of pretrain, test)."""
    rng = np.random.default_rng(seed)
    out = {"pretrain": [], "train": [], "test": []}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_pre, n_test = int(round(fractions[0] * len(idx))), int(round(fractions[1] * len(idx)))
        out["pretrain"].append(idx[:n_pre])
        out["test"].append(idx[n_pre : n_pre + n_test])
        out["train"].append(idx[n_pre + n_test :])
    return {k: np.sort(np.concatenate(v)) for k, v in out.items()}


def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    imgs = np.stack([_resize((im * 255 / 16).round().astype(np.uint8)) for im in d.images])
    return _rgb(imgs), d.target.astype(np.int64)


def faces() -> tuple[np.ndarray, np.ndarray]:
    from skimage.data import lfw_subset

    x = lfw_subset()  # 100 faces, then 100 non-faces
    imgs = np.stack([_resize((im * 255).round().astype(np.uint8)) for im in x])
    return _rgb(imgs), np.array([0] * 100 + [1] * 100, dtype=np.int64)


TEXTURE_SOURCES = ["brick", "grass", "gravel", "moon", "hubble_deep_field", "immunohistochemistry"]


def textures(per_class: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random 64 px crops of each source image, resized to 32 px; the crop's row band keeps splits apart.

    Returns images, labels and a band per crop (0: pretrain rows, 1: train rows, 2: test rows).
    """
    import skimage.data as sd

    rng = np.random.default_rng(seed)
    imgs, labels, bands = [], [], []
    for c, name in enumerate(TEXTURE_SOURCES):
        src = getattr(sd, name)()
        if src.ndim == 2:
            src = _rgb(src)
        src = src[..., :3]
        h, w = src.shape[:2]
        edges = [0, int(0.2 * h), int(0.7 * h), h]  # pretrain / train / test row bands
        for i in range(per_class):
            band = 0 if i < per_class * 0.2 else (2 if i >= per_class * 0.7 else 1)
            lo, hi = edges[band], edges[band + 1]
            crop = int(rng.integers(48, 97))
            crop = min(crop, hi - lo, w)
            y = int(rng.integers(lo, hi - crop + 1))
            x = int(rng.integers(0, w - crop + 1))
            imgs.append(_resize(np.ascontiguousarray(src[y : y + crop, x : x + crop])))
            labels.append(c)
            bands.append(band)
    return np.stack(imgs), np.array(labels, dtype=np.int64), np.array(bands)


SHAPES = ["circle", "square", "triangle", "star", "cross", "ring"]


def _shape_image(kind: int, rng: np.random.Generator, size: int = 64) -> np.ndarray:
    bg = tuple(int(v) for v in rng.integers(0, 90, 3))  # a dark background and a bright shape, random hues
    fg = tuple(int(v) for v in rng.integers(150, 256, 3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    r = rng.uniform(0.28, 0.42) * size
    cx, cy = rng.uniform(r, size - r, 2)
    rot = rng.uniform(0, 2 * math.pi)

    def poly(n: int, radii: list[float]):
        pts = []
        for i in range(n * len(radii)):
            a = rot + 2 * math.pi * i / (n * len(radii))
            rr = radii[i % len(radii)]
            pts.append((cx + rr * math.cos(a), cy + rr * math.sin(a)))
        d.polygon(pts, fill=fg)

    name = SHAPES[kind]
    if name == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif name == "square":
        poly(4, [r * 1.2])
    elif name == "triangle":
        poly(3, [r * 1.25])
    elif name == "star":
        poly(5, [r * 1.25, r * 0.5])
    elif name == "cross":
        t = r * 0.35
        d.rectangle([cx - r, cy - t, cx + r, cy + t], fill=fg)
        d.rectangle([cx - t, cy - r, cx + t, cy + r], fill=fg)
    elif name == "ring":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
        d.ellipse([cx - r * 0.55, cy - r * 0.55, cx + r * 0.55, cy + r * 0.55], fill=bg)
    return np.asarray(img.resize((SIZE, SIZE), Image.LANCZOS))


GLYPHS = list("OXILTV")


def _glyph_image(kind: int, rng: np.random.Generator, font_path: str, size: int = 64) -> np.ndarray:
    paper = int(rng.integers(200, 256))
    ink = int(rng.integers(0, 70))
    img = Image.new("L", (size, size), paper)
    font = ImageFont.truetype(font_path, int(rng.integers(40, 54)))
    d = ImageDraw.Draw(img)
    box = d.textbbox((0, 0), GLYPHS[kind], font=font)
    w, h = box[2] - box[0], box[3] - box[1]
    x = (size - w) / 2 + rng.uniform(-5, 5) - box[0]  # roughly centred, jittered
    y = (size - h) / 2 + rng.uniform(-5, 5) - box[1]
    d.text((x, y), GLYPHS[kind], fill=ink, font=font)
    img = img.rotate(float(rng.uniform(-10, 10)), resample=Image.BILINEAR, fillcolor=paper)
    img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 0.6))))
    arr = np.asarray(img.resize((SIZE, SIZE), Image.LANCZOS)).astype(np.int16)
    arr = arr + rng.normal(0, 6, arr.shape).round().astype(np.int16)
    return _rgb(np.clip(arr, 0, 255).astype(np.uint8))


def _generated(make: Callable[[int, np.random.Generator], np.ndarray], classes: int, counts: dict, seed: int):
    """Generate per-split images with separate random streams, so splits never share an image."""
    out = {}
    for s, (split, n) in enumerate(counts.items()):
        rng = np.random.default_rng([seed, s])
        labels = np.arange(n) % classes
        out[split] = (np.stack([make(int(c), rng) for c in labels]), labels.astype(np.int64))
    return out


def _font() -> str:
    from matplotlib import font_manager

    return font_manager.findfont("DejaVu Sans", fallback_to_default=False)


def build_splits(name: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The three splits of one mini dataset as (uint8 [N, 32, 32, 3], labels)."""
    if name in ("Digits", "Faces"):
        x, y = {"Digits": digits, "Faces": faces}[name]()
        frac = (0.1, 0.3) if name == "Digits" else (0.2, 0.3)
        idx = _split(len(y), y, frac, seed=sum(map(ord, name)))
        return {k: (x[v], y[v]) for k, v in idx.items()}
    if name == "Textures":
        x, y, band = textures()
        return {k: (x[band == b], y[band == b]) for b, k in enumerate(("pretrain", "train", "test"))}
    if name == "Shapes":
        return _generated(_shape_image, len(SHAPES), {"pretrain": 400, "train": 600, "test": 300}, seed=7)
    if name == "Glyphs":
        font = _font()
        return _generated(
            lambda k, rng: _glyph_image(k, rng, font), len(GLYPHS), {"pretrain": 400, "train": 500, "test": 300}, seed=11
        )
    raise KeyError(f"no mini dataset {name!r} (known: {', '.join([*MINI_DATASETS, PRETRAIN])})")


def _eval_cache(images: np.ndarray, size: int) -> np.ndarray:
    geo = eval_geometry(size)
    return np.stack([np.asarray(geo(Image.fromarray(im))).transpose(2, 0, 1) for im in images])


def prepare(name: str, out: str | Path, protocol: dict, image_size: int = SIZE) -> Path:
    """Build mini dataset `name` (or the pretraining pool, `Pretrain`) into a prepared folder.

    Class names and templates come from the protocol (the packaged mini.yaml by default).
    """
    if name == PRETRAIN:
        return _prepare_pretrain(out, image_size, protocol)
    info = protocol["datasets"].get(name)
    if info is None or name not in MINI_DATASETS:
        raise KeyError(f"no mini dataset {name!r} (known: {', '.join([*MINI_DATASETS, PRETRAIN])})")
    s = build_splits(name)
    # test images in a fixed shuffled order, so an evaluation batch mixes classes as in most real test sets
    order = np.random.default_rng(sum(map(ord, name))).permutation(len(s["test"][1]))
    s["test"] = (s["test"][0][order], s["test"][1][order])
    return write_prepared(
        out,
        name=name,
        classnames=info["classnames"],
        templates=info["templates"],
        test_images=_eval_cache(s["test"][0], image_size),
        test_labels=s["test"][1],
        train_images=s["train"][0],
        train_labels=s["train"][1],
        extra={"source": "mini", "num_pretrain_pool": int(len(s["pretrain"][1]))},
    )


def _prepare_pretrain(out: str | Path, image_size: int, protocol: dict) -> Path:
    """The captioned pretraining pool: every dataset's pretrain split; label = (dataset, class) concept."""
    images, labels, concepts, captions = [], [], [], []
    names = [n for n in protocol["datasets"] if n in MINI_DATASETS]
    for name in names:
        info = protocol["datasets"][name]
        x, y = build_splits(name)["pretrain"]
        offset = len(concepts)
        for c in info["classnames"]:
            concepts.append(f"{name}: {c}")
            captions.append([t.format(c=c) for t in info["templates"]])
        images.append(x)
        labels.append(y + offset)
    x, y = np.concatenate(images), np.concatenate(labels)
    # a small held-out slice doubles as the pool's test split (the pretrain step reports accuracy on it)
    rng = np.random.default_rng(5)
    perm = rng.permutation(len(y))
    test, train = perm[: len(y) // 10], perm[len(y) // 10 :]
    return write_prepared(
        out,
        name=PRETRAIN,
        classnames=concepts,
        templates=["{c}"],
        test_images=_eval_cache(x[test], image_size),
        test_labels=y[test],
        train_images=x[train],
        train_labels=y[train],
        extra={"source": "mini", "captions": captions, "datasets": names},
    )

"""The tiny synthetic dataset: scenes of simple shapes with five captions each.

Explained in ``notebooks/01_preprocessing.ipynb``.

The set is generated deterministically from a seed and written in the same
on-disk format as Flickr8k, Flickr30k and COCO (Karpathy's ``dataset.json``
plus ``images/``), so the code that reads it is the code that reads them.

Scenes hold one shape, or two shapes in a spatial relation. Two-object scenes
come in *minimal pairs*: the partner of a scene either swaps the two objects'
places (so "a red circle left of a blue square" becomes "a blue square left of
a red circle") or swaps their colours. Every caption of a scene has a partner
caption with exactly the same bag of words, so a model that ignores word order
cannot tell the two scenes apart.

Every sentence also stores its ``meaning``, what the caption asserts::

    {"objects": [{"colour": "red", "shape": "circle", "size": "small"}, ...],
     "relation": "left of", "where": None}

``objects`` lists the described objects in the order the caption names them,
with canonical words (``colour`` in ``COLOURS``, ``shape`` in ``SHAPES``,
``size`` "small", "large" or None when the caption names no size);
``relation`` (two objects only) is one of ``RELATION_WORDS``' keys and holds
from ``objects[0]`` to ``objects[1]``; ``where`` (one object only) is one of
``WHERE_PHRASES``' keys or None. :func:`parse_caption` reads the same meaning
from any caption in the set's language and :func:`is_true_of` judges a meaning
against a scene.

Pixels are rasterised with NumPy (4x supersampling for anti-aliased edges) and
written as PNG by the standard library, not by Pillow's drawing routines and
encoder, so the files do not depend on the Pillow version.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import struct
import tempfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = [
    "TinyConfig",
    "COLOURS",
    "SHAPES",
    "make_tiny_dataset",
    "write_tiny_dataset",
    "render_scene",
    "WHERE_PHRASES",
    "parse_caption",
    "is_true_of",
    "load_meanings",
    "stored_config",
    "judge",
]

# Name -> RGB. Six hues far apart, so that the colour word is never ambiguous.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 200),
    "yellow": (240, 200, 20),
    "purple": (130, 60, 170),
    "orange": (255, 127, 14),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
# Backgrounds are never mentioned in captions: a nuisance the model must ignore.
BACKGROUNDS: tuple[tuple[int, int, int], ...] = (
    (250, 250, 250),
    (242, 238, 226),
    (228, 228, 228),
    (226, 236, 245),
)
SIZE_RADIUS = {"small": (6.0, 8.0), "large": (11.0, 14.0)}  # in pixels at 64 px

SHAPE_WORDS = {
    "circle": ("circle", "disc"),
    "square": ("square", "box"),
    "triangle": ("triangle",),
    "diamond": ("diamond", "rhombus"),
}
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
RELATION_WORDS = {
    "left of": ("to the left of", "left of", "on the left of"),
    "right of": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over", "on top of"),
    "below": ("below", "under", "beneath"),
}
# Where a single object is: meaning -> the words appended to its caption.
WHERE_PHRASES = {
    "top left corner": " in the top left corner",
    "top right corner": " in the top right corner",
    "bottom left corner": " in the bottom left corner",
    "bottom right corner": " in the bottom right corner",
    "left": " on the left",
    "right": " on the right",
    "top": " at the top",
    "bottom": " at the bottom",
    "middle": " in the middle",
}
INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}

# Templates: {x} and {y} are noun phrases ("a small red circle"), {rel} a relation.
PAIR_TEMPLATES = (
    "{x} {rel} {y}",
    "there is {x} {rel} {y}",
    "{x} is {rel} {y}",
    "a picture of {x} {rel} {y}",
    "{x} placed {rel} {y}",
    "we see {x} {rel} {y}",
)
SINGLE_TEMPLATES = (
    "{x}{where}",
    "there is {x}{where}",
    "a picture of {x}{where}",
    "{x} on a plain background{where}",
    "just {x}{where}",
    "we see {x}{where}",
)


@dataclass(frozen=True)
class TinyConfig:
    """How the tiny set is made. The defaults produce the committed ``data/tiny``.

    Explained in ``notebooks/01_preprocessing.ipynb``.
    """

    seed: int = 0
    image_size: int = 64
    num_train: int = 600
    num_val: int = 100
    num_test: int = 100
    single_fraction: float = 0.2  # the rest are two-object scenes in minimal pairs
    captions_per_image: int = 5
    supersample: int = 4

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ValueError(f"image_size={self.image_size}: use at least 16 pixels so the shapes stay recognisable")
        if self.num_train < 1 or self.num_val < 0 or self.num_test < 0:
            raise ValueError(
                f"image counts train={self.num_train}, val={self.num_val}, test={self.num_test}: "
                "train needs at least 1 image, val and test at least 0"
            )
        if not 0.0 <= self.single_fraction <= 1.0:
            raise ValueError(f"single_fraction={self.single_fraction} is a fraction; use a value in [0, 1]")
        if self.captions_per_image < 1 or self.supersample < 1:
            raise ValueError("captions_per_image and supersample must be at least 1")


@dataclass(frozen=True)
class _Object:
    colour: str
    shape: str
    size: str
    cx: float
    cy: float
    r: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "colour": self.colour,
            "shape": self.shape,
            "size": self.size,
            "x": round(self.cx, 2),
            "y": round(self.cy, 2),
            "r": round(self.r, 2),
        }


# --------------------------------------------------------------------------- pixels


def _coverage(obj: _Object, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Boolean mask of the supersampled points inside the object."""
    dx, dy = xs - obj.cx, ys - obj.cy
    r = obj.r
    if obj.shape == "circle":
        return dx * dx + dy * dy <= r * r
    if obj.shape == "square":
        h = 0.85 * r
        return (np.abs(dx) <= h) & (np.abs(dy) <= h)
    if obj.shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= 1.15 * r
    if obj.shape == "triangle":
        # Apex up; symmetric about the vertical axis, so a horizontal flip keeps it a triangle.
        top, base, half = -r, 0.8 * r, 0.95 * r
        slope = half / (base - top)
        return (dy <= base) & (np.abs(dx) <= (dy - top) * slope)
    raise ValueError(f"unknown shape {obj.shape!r}; expected one of {SHAPES}")


def render_scene(
    objects: list[_Object] | list[dict[str, Any]],
    background: tuple[int, int, int],
    size: int = 64,
    supersample: int = 4,
) -> np.ndarray:
    """Rasterise shapes onto a plain background; returns an ``(H, W, 3)`` uint8 array.

    Explained in ``notebooks/01_preprocessing.ipynb``.
    """
    s = supersample
    # Sample points at the centres of s x s sub-pixels of every pixel.
    grid = (np.arange(size * s, dtype=np.float64) + 0.5) / s
    xs, ys = np.meshgrid(grid, grid)
    img = np.empty((size, size, 3), dtype=np.float64)
    img[:] = background
    for obj in objects:
        if isinstance(obj, dict):
            obj = _Object(obj["colour"], obj["shape"], obj["size"], obj["x"], obj["y"], obj["r"])
        inside = _coverage(obj, xs, ys).astype(np.float64)
        alpha = inside.reshape(size, s, size, s).mean(axis=(1, 3))[..., None]
        img = img * (1.0 - alpha) + np.asarray(COLOURS[obj.colour], dtype=np.float64) * alpha
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _png_bytes(pixels: np.ndarray) -> bytes:
    """Encode an ``(H, W, 3)`` uint8 array as a PNG file, byte for byte the same everywhere.

    Written out here rather than by Pillow, whose bundled compressor changes with
    its releases: rows unfiltered, compressed by the standard library's zlib
    (level 9), whose output has not changed in decades.
    """
    h, w, _ = pixels.shape
    rows = b"".join(b"\x00" + pixels[y].tobytes() for y in range(h))  # filter type 0 on every row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlacing
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------- geometry
# The rules by which the generator chooses relations and places, shared with is_true_of.
# Scenes are stored with coordinates rounded to 0.01 px; is_true_of allows SLACK px
# so that every stored scene keeps the relations and places it was drawn with.
SLACK = 0.02


def _clearly(relation: str, a: tuple[float, float, float], b: tuple[float, float, float], scale: float,
             slack: float = 0.0) -> bool:
    """Whether object ``a`` = (x, y, r) is clearly ``relation`` object ``b``: apart along the axis, mostly along it."""
    (ax, ay, ra), (bx, by, rb) = a, b
    gap = 3.0 * scale
    along = {"left of": bx - ax, "right of": ax - bx, "above": by - ay, "below": ay - by}[relation]
    across = abs(ay - by) if relation in ("left of", "right of") else abs(ax - bx)
    return along >= ra + rb + gap - slack and across <= 0.5 * along + slack


def _place(cx: float, cy: float, image_size: float, slack: float = 0.0) -> str | None:
    """The ``WHERE_PHRASES`` key for an object centred at (cx, cy); None where no phrase is clearly true."""
    fx, fy, e = cx / image_size, cy / image_size, slack / image_size
    horiz = "left" if fx < 0.35 + e else "right" if fx > 0.65 - e else ""
    vert = "top" if fy < 0.35 + e else "bottom" if fy > 0.65 - e else ""
    mid_x, mid_y = 0.4 - e <= fx <= 0.6 + e, 0.4 - e <= fy <= 0.6 + e
    if horiz and vert:
        return f"{vert} {horiz} corner"
    if horiz and mid_y:
        return horiz
    if vert and mid_x:
        return vert
    if mid_x and mid_y:
        return "middle"
    return None


# --------------------------------------------------------------------------- scenes


class _SceneSampler:
    def __init__(self, cfg: TinyConfig, rng: np.random.Generator):
        self.cfg = cfg
        self.rng = rng
        self.size = float(cfg.image_size)
        self.scale = cfg.image_size / 64.0

    def choice(self, options):
        return options[int(self.rng.integers(len(options)))]

    def radius(self, size: str) -> float:
        lo, hi = SIZE_RADIUS[size]
        return float(self.rng.uniform(lo, hi)) * self.scale

    def place(self, r: float) -> tuple[float, float]:
        m = r + 2.0 * self.scale
        return float(self.rng.uniform(m, self.size - m)), float(self.rng.uniform(m, self.size - m))

    def single(self) -> list[_Object]:
        size = self.choice(("small", "large"))
        r = self.radius(size)
        cx, cy = self.place(r)
        return [_Object(self.choice(tuple(COLOURS)), self.choice(SHAPES), size, cx, cy, r)]

    def pair(self, relation: str, distinct_shapes: bool) -> list[_Object]:
        """Two objects, the first ``relation`` the second, clearly so."""
        while True:
            ca, cb = self.choice(tuple(COLOURS)), self.choice(tuple(COLOURS))
            sa, sb = self.choice(SHAPES), self.choice(SHAPES)
            if ca == cb or (distinct_shapes and sa == sb):
                continue
            za, zb = self.choice(("small", "large")), self.choice(("small", "large"))
            ra, rb = self.radius(za), self.radius(zb)
            # Margins fit the larger object at either place, so swapping places stays in frame.
            (ax, ay), (bx, by) = self.place(max(ra, rb)), self.place(max(ra, rb))
            # Separated along the relation's axis, and mostly along it.
            if _clearly(relation, (ax, ay, ra), (bx, by, rb), self.scale):
                return [_Object(ca, sa, za, ax, ay, ra), _Object(cb, sb, zb, bx, by, rb)]


def _article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _described(obj: _Object, plan: dict[str, Any], key: str) -> dict[str, Any]:
    """The meaning of ``_noun_phrase``: the object's colour and shape, and its size where named."""
    return {"colour": obj.colour, "shape": obj.shape, "size": obj.size if plan[f"{key}_size"] is not None else None}


def _noun_phrase(obj: _Object, plan: dict[str, Any], key: str) -> str:
    words = []
    if plan[f"{key}_size"] is not None:
        words.append(SIZE_WORDS[obj.size][plan[f"{key}_size"] % len(SIZE_WORDS[obj.size])])
    words.append(obj.colour)
    words.append(SHAPE_WORDS[obj.shape][plan[f"{key}_shape"] % len(SHAPE_WORDS[obj.shape])])
    return _article(" ".join(words))


def _plan(sampler: _SceneSampler, templates: tuple[str, ...]) -> dict[str, Any]:
    """Random choices behind one caption, reused for a scene's partner."""
    rng = sampler.rng
    # Sizes are named for both objects or for neither: then "a"/"an" follow the
    # same words in a scene and its partner, and their bags of words stay equal.
    sizes = rng.random() < 0.7
    return {
        "template": int(rng.integers(len(templates))),
        "x_size": int(rng.integers(3)) if sizes else None,
        "y_size": int(rng.integers(3)) if sizes else None,
        "x_shape": int(rng.integers(2)),
        "y_shape": int(rng.integers(2)),
        "rel": int(rng.integers(3)),
        "flip_view": bool(rng.random() < 0.5),  # describe from the second object's view
        "where": bool(rng.random() < 0.5),
        "capital": bool(rng.random() < 0.5),
        "period": bool(rng.random() < 0.3),
    }


def _swap_view(plan: dict[str, Any]) -> dict[str, Any]:
    swapped = {**plan, "flip_view": not plan["flip_view"]}
    for key in ("size", "shape"):
        swapped[f"x_{key}"], swapped[f"y_{key}"] = plan[f"y_{key}"], plan[f"x_{key}"]
    return swapped


def _finish(text: str, plan: dict[str, Any]) -> str:
    if plan["capital"]:
        text = text[0].upper() + text[1:]
    return text + ("." if plan["period"] else "")


def _caption_single(obj: _Object, plan: dict[str, Any], image_size: float) -> tuple[str, dict[str, Any]]:
    """A caption of a one-object scene and its meaning."""
    place = _place(obj.cx, obj.cy, image_size) if plan["where"] else None
    where = WHERE_PHRASES[place] if place is not None else ""
    text = SINGLE_TEMPLATES[plan["template"]].format(x=_noun_phrase(obj, plan, "x"), where=where)
    return _finish(text, plan), {"objects": [_described(obj, plan, "x")], "relation": None, "where": place}


def _caption_pair(objs: list[_Object], relation: str, plan: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A caption of a two-object scene and its meaning (objects in the order the caption names them)."""
    a, b = objs
    # The same plan reads "A rel B" or "B inverse(rel) A"; the partner scene's
    # caption picks its view so that its relation word is the same one.
    x, y, rel = (b, a, INVERSE[relation]) if plan["flip_view"] else (a, b, relation)
    text = PAIR_TEMPLATES[plan["template"]].format(
        x=_noun_phrase(x, plan, "x"),
        y=_noun_phrase(y, plan, "y"),
        rel=RELATION_WORDS[rel][plan["rel"]],
    )
    meaning = {"objects": [_described(x, plan, "x"), _described(y, plan, "y")], "relation": rel, "where": None}
    return _finish(text, plan), meaning


def _scene_record(kind: str, objs: list[_Object], relation: str | None, bg: tuple[int, int, int]):
    scene: dict[str, Any] = {"kind": kind, "background": list(bg), "objects": [o.as_dict() for o in objs]}
    if relation is not None:
        scene["relation"] = relation
    return scene


def _generate_split(sampler: _SceneSampler, n: int) -> list[dict[str, Any]]:
    """Scenes for one split: singles, then minimal pairs (adjacent, same split)."""
    cfg = sampler.cfg
    n_single = int(round(n * cfg.single_fraction))
    n_pairs = (n - n_single) // 2
    n_single = n - 2 * n_pairs
    out: list[dict[str, Any]] = []
    for _ in range(n_single):
        objs = sampler.single()
        bg = sampler.choice(BACKGROUNDS)
        plans = [_plan(sampler, SINGLE_TEMPLATES) for _ in range(cfg.captions_per_image)]
        caps = [_caption_single(objs[0], p, sampler.size) for p in plans]
        out.append({"scene": _scene_record("single", objs, None, bg), "captions": caps, "objs": objs})
    for i in range(n_pairs):
        swap = "swap_places" if i % 2 == 0 else "swap_colours"
        relation = sampler.choice(tuple(RELATION_WORDS))
        objs = sampler.pair(relation, distinct_shapes=swap == "swap_colours")
        bg = sampler.choice(BACKGROUNDS)
        a, b = objs
        if swap == "swap_places":
            # Each object moves to the other's place: the first is now the other side.
            partner = [replace(a, cx=b.cx, cy=b.cy), replace(b, cx=a.cx, cy=a.cy)]
            partner_relation = INVERSE[relation]
        else:
            partner = [replace(a, colour=b.colour), replace(b, colour=a.colour)]
            partner_relation = relation
        plans = [_plan(sampler, PAIR_TEMPLATES) for _ in range(cfg.captions_per_image)]
        caps = [_caption_pair(objs, relation, p) for p in plans]
        if swap == "swap_places":
            # Read the partner from the other view, each object keeping its words:
            # the same bag of words in another order.
            pplans = [_swap_view(p) for p in plans]
        else:
            pplans = plans
        pcaps = [_caption_pair(partner, partner_relation, p) for p in pplans]
        first = len(out)
        out.append({"scene": _scene_record(swap, objs, relation, bg), "captions": caps, "objs": objs})
        out.append(
            {"scene": _scene_record(swap, partner, partner_relation, bg), "captions": pcaps, "objs": partner}
        )
        out[first]["scene"]["partner"], out[first + 1]["scene"]["partner"] = first + 1, first
    return out


def _karpathy_tokens(raw: str) -> list[str]:
    """Karpathy's ``tokens`` field: lower-case words without punctuation."""
    return "".join(c if c.isalnum() or c.isspace() else " " for c in raw.lower()).split()


def make_tiny_dataset(config: TinyConfig = TinyConfig()) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Generate the tiny set in memory: the ``dataset.json`` dict and ``{filename: png bytes}``.

    Explained in ``notebooks/01_preprocessing.ipynb``.
    """
    rng = np.random.default_rng(config.seed)
    sampler = _SceneSampler(config, rng)
    images: list[dict[str, Any]] = []
    files: dict[str, bytes] = {}
    sentid = 0
    for split, n in (("train", config.num_train), ("val", config.num_val), ("test", config.num_test)):
        block = _generate_split(sampler, n)
        base = len(images)
        for j, item in enumerate(block):
            imgid = base + j
            filename = f"{imgid:06d}.png"
            sentences = []
            for raw, meaning in item["captions"]:  # (text, meaning) pairs
                sentences.append({"raw": raw, "tokens": _karpathy_tokens(raw), "imgid": imgid, "sentid": sentid,
                                  "meaning": meaning})
                sentid += 1
            scene = item["scene"]
            if "partner" in scene:
                scene["partner"] += base  # an imgid, like the entry's own
            images.append(
                {
                    "filename": filename,
                    "imgid": imgid,
                    "split": split,
                    "sentids": [s["sentid"] for s in sentences],
                    "sentences": sentences,
                    "scene": scene,
                }
            )
            files[filename] = _png_bytes(
                render_scene(item["objs"], tuple(scene["background"]), config.image_size, config.supersample)
            )
    meta = {"dataset": "tiny", "generator": {"module": "siamese_utils.datasets.tiny", **config.__dict__}}
    return {**meta, "images": images}, files


def dumps_dataset_json(dataset: dict[str, Any]) -> str:
    """Serialise a Karpathy-format dict with one image per line (small, diff-friendly)."""
    head = {k: v for k, v in dataset.items() if k != "images"}
    lines = [json.dumps(img, ensure_ascii=False, separators=(",", ":")) for img in dataset["images"]]
    head_text = json.dumps(head, ensure_ascii=False, separators=(",", ":"))[1:-1]
    return "{" + head_text + ',"images":[\n' + ",\n".join(lines) + "\n]}\n"


def write_tiny_dataset(out_dir: str | os.PathLike, config: TinyConfig = TinyConfig(), overwrite: bool = False) -> Path:
    """Write the tiny set to ``out_dir`` (``dataset.json`` and ``images/``).

    The folder is built next to its destination and moved into place only when
    complete, so a failure never leaves half a dataset. An existing folder is
    replaced only with ``overwrite=True``.

    Explained in ``notebooks/01_preprocessing.ipynb``.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{out} already exists and is not empty; pass overwrite=True (CLI: --overwrite) "
            "to replace it, or choose another folder."
        )
    dataset, files = make_tiny_dataset(config)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        (tmp / "images").mkdir()
        for name, data in files.items():
            (tmp / "images" / name).write_bytes(data)
        # Bytes, not text: the same "\n" line endings on every platform.
        (tmp / "dataset.json").write_bytes(dumps_dataset_json(dataset).encode("utf-8"))
        (tmp / "README.md").write_bytes(_README.format(**config.__dict__).encode("utf-8"))
        if out.exists():
            old = out.with_name(f".{out.name}-old")
            if old.exists():
                shutil.rmtree(old)
            out.rename(old)
            try:
                tmp.rename(out)
            except BaseException:
                old.rename(out)  # put the previous set back
                raise
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


_README = """# The tiny dataset

Synthetic scenes of simple shapes, five captions per image, generated by
`siamese_utils.datasets.tiny` with seed {seed} ({num_train} train / {num_val} val / {num_test} test
images, {image_size}x{image_size} px). Do not edit by hand: regenerate with

    python -m siamese_utils make-tiny --out data/tiny --overwrite

A test checks that this folder is byte-identical to what that command writes.

Format: Karpathy's `dataset.json` (as for Flickr8k, Flickr30k and COCO) and the
images under `images/`. Each entry also carries `scene`, the ground truth it was
drawn from: its objects, their relation, and for two-object scenes the `imgid`
of its `partner`, the scene with the two objects' places or colours swapped
(`kind`: `swap_places` or `swap_colours`), whose captions use the same bags of
words. Each sentence also carries its `meaning`, what the caption asserts:
`objects` (colour, shape, and size or null where the caption names none, in the
caption's order), `relation` (from the first object to the second, or null) and
`where` (a single object's place, or null). See notebooks/01_preprocessing.ipynb.
"""


# --------------------------------------------------------------------------- meaning

_SIZE_OF = {word: size for size, words in SIZE_WORDS.items() for word in words}
_SHAPE_OF = {word: shape for shape, words in SHAPE_WORDS.items() for word in words}
_RELATION_OF = {phrase: rel for rel, phrases in RELATION_WORDS.items() for phrase in phrases}
_PLACE_OF = {phrase.strip(): place for place, phrase in WHERE_PHRASES.items()}


def _alternatives(words) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


def _np_pattern(key: str) -> str:
    # An optional article ("a", "an" or "the", whichever the noun), an optional size, a colour, a shape.
    return (rf"(?:(?:a|an|the) )?(?:(?P<{key}_size>{_alternatives(_SIZE_OF)}) )?"
            rf"(?P<{key}_colour>{_alternatives(COLOURS)}) (?P<{key}_shape>{_alternatives(_SHAPE_OF)})")


def _template_pattern(template: str) -> re.Pattern:
    parts = re.split(r"(\{\w+\})", template)
    fields = {"{x}": _np_pattern("x"), "{y}": _np_pattern("y"), "{rel}": rf"(?P<rel>{_alternatives(_RELATION_OF)})",
              "{where}": rf"(?: (?P<where>{_alternatives(_PLACE_OF)}))?"}
    return re.compile("".join(fields.get(part, re.escape(part)) for part in parts))


_PATTERNS = [_template_pattern(t) for t in PAIR_TEMPLATES + SINGLE_TEMPLATES]
_VOCABULARY = ({"a", "an", "the"} | set(COLOURS) | set(_SIZE_OF) | set(_SHAPE_OF)
               | {w for t in PAIR_TEMPLATES + SINGLE_TEMPLATES for w in re.sub(r"\{\w+\}", " ", t).split()}
               | {w for phrase in list(_RELATION_OF) + list(_PLACE_OF) for w in phrase.split()})


def parse_caption(text: str) -> dict[str, Any]:
    """The meaning of a caption in the tiny set's language (the schema in this module's docstring).

    Case, spacing, a final period, the article ("a", "an", "the" or none) and the
    synonyms ("disc", "big", "under", ...) do not matter; the words must follow one
    of the caption templates. Anything else raises ``ValueError`` ("not a tiny-set caption").

    Explained in ``notebooks/01_preprocessing.ipynb``.
    """
    words = " ".join(str(text).lower().split())
    words = words[:-1].rstrip() if words.endswith(".") else words
    for pattern in _PATTERNS:
        m = pattern.fullmatch(words)
        if m is None:
            continue
        found = m.groupdict()
        keys = ("x", "y") if found.get("y_colour") else ("x",)
        objects = [{"colour": found[f"{k}_colour"], "shape": _SHAPE_OF[found[f"{k}_shape"]],
                    "size": _SIZE_OF[found[f"{k}_size"]] if found[f"{k}_size"] else None} for k in keys]
        relation = _RELATION_OF[found["rel"]] if found.get("rel") else None
        where = _PLACE_OF[found["where"]] if found.get("where") else None
        return {"objects": objects, "relation": relation, "where": where}
    unknown = [w for w in words.split() if w not in _VOCABULARY]
    why = (f"unknown word(s) {', '.join(map(repr, unknown))}" if unknown else
           "its words follow no template; write e.g. 'a small red circle left of a blue square' or "
           "'a green triangle in the top left corner'")
    raise ValueError(f"{text!r} is not a tiny-set caption: {why}")


def _check_meaning(meaning: dict[str, Any]) -> list[dict[str, Any]]:
    objects = meaning.get("objects") or []
    relation, where = meaning.get("relation"), meaning.get("where")
    if relation is not None and (relation not in RELATION_WORDS or len(objects) != 2):
        raise ValueError(f"meaning {meaning!r}: a relation must be one of {list(RELATION_WORDS)}, between two objects")
    if where is not None and (where not in WHERE_PHRASES or len(objects) != 1):
        raise ValueError(f"meaning {meaning!r}: 'where' must be one of {list(WHERE_PHRASES)}, for one object")
    return objects


def is_true_of(meaning: dict[str, Any], scene: dict[str, Any], image_size: float = 64.0) -> bool:
    """Whether a caption's ``meaning`` is true of a stored ``scene`` (its ``dataset.json`` entry's ``scene``).

    True when the scene holds exactly as many objects as the caption describes,
    each described object is a different scene object with the colour, the shape
    and (where named) the size the caption gives it, and the relation and the
    place hold of those objects by the generator's own rules: ``relation``
    clearly (apart along its axis by both radii plus a gap, and mostly along it),
    ``where`` by the thresholds that chose the phrase (``_place``).
    ``image_size``: the scene's size in pixels (``stored_config(split).image_size``);
    comparisons allow ``SLACK`` px for the stored coordinates' rounding. A
    meaning with two objects and no relation asks only that both are there.

    Explained in ``notebooks/01_preprocessing.ipynb``.
    """
    described = _check_meaning(meaning)
    objects = scene["objects"]
    if len(objects) != len(described):
        return False
    scale = image_size / 64.0
    for chosen in itertools.permutations(objects):
        if not all(o["colour"] == d["colour"] and o["shape"] == d["shape"]
                   and (d.get("size") is None or o["size"] == d["size"]) for o, d in zip(chosen, described)):
            continue
        if meaning.get("relation") is not None:
            a, b = ((o["x"], o["y"], o["r"]) for o in chosen)
            if not _clearly(meaning["relation"], a, b, scale, SLACK):
                continue
        if meaning.get("where") is not None and _place(chosen[0]["x"], chosen[0]["y"], image_size, SLACK) != meaning["where"]:
            continue
        return True
    return False


def _stored_document(split) -> dict[str, Any]:
    source = split.source
    fix = "regenerate it with `python -m siamese_utils make-tiny --out data/tiny --overwrite`"
    if source.suffix.lower() != ".json":
        raise ValueError(f"{source}: not the tiny set's dataset.json, so no stored meaning; {fix}")
    doc = json.loads(source.read_text(encoding="utf-8"))
    if not all("meaning" in s for r in split for s in doc["images"][r.index]["sentences"]) or any(
            "scene" not in r.meta for r in split):
        raise ValueError(f"{source}: its sentences carry no stored 'meaning' (or its entries no 'scene'); {fix}")
    return doc


def load_meanings(split) -> list[dict[str, Any]]:
    """The stored meaning of every caption of ``split`` (a ``CaptionedImages``), in ``split.captions`` order.

    ``read_dataset`` keeps an entry's extra fields but not a sentence's, so this
    reads them from ``split.source``. A file without them raises ``ValueError``.

    Explained in ``notebooks/01_preprocessing.ipynb``.
    """
    doc = _stored_document(split)
    return [s["meaning"] for r in split for s in doc["images"][r.index]["sentences"]]


def stored_config(split) -> TinyConfig:
    """The :class:`TinyConfig` that wrote ``split``'s ``dataset.json`` (its ``generator`` record).

    Explained in ``notebooks/01_preprocessing.ipynb``.
    """
    doc = _stored_document(split)
    generator = doc.get("generator", {})
    return TinyConfig(**{k: v for k, v in generator.items() if k in TinyConfig.__dataclass_fields__})


def judge(split) -> Callable[[str, int], bool] | None:
    """A truth judge for a split of the tiny set: ``judge(caption, i)`` says whether ``caption`` is true of image ``i``.

    ``i`` is the image's position in ``split``; the caption is read by :func:`parse_caption` (a caption outside the
    set's language raises its ``ValueError``). ``None`` for a split without stored scenes and meanings (not the
    tiny set). Training asks it to drop swapped-word negatives that are in fact true
    (``siamese_utils.chapters.composition.hard_negatives``).

    Explained in ``notebooks/05_composition.ipynb``.
    """
    try:
        image_size = stored_config(split).image_size
    except (ValueError, OSError):
        return None
    scenes = [record.meta["scene"] for record in split]
    return lambda caption, i: is_true_of(parse_caption(caption), scenes[i], image_size)


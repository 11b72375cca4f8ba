"""Shared fixtures. The environment every test runs in (offline, short setting) is set by the
``conftest.py`` at the repository's root."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# tests/fixtures holds files the tests read, among them a notebook that one test runs in a subprocess;
# nbval must not collect it as one of the series' notebooks.
collect_ignore_glob = ["fixtures/*"]

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "data" / "tiny"


@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    return TINY


@pytest.fixture(scope="session")
def tokenizer():
    from siamese_utils.core.text import load_tokenizer

    return load_tokenizer()


def write_image(path: Path, color=(200, 30, 30), size=(8, 6), fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def karpathy_entry(filename, split="train", captions=("a red thing", "a thing that is red"), **extra):
    return {"filename": filename, "split": split, "sentences": [{"raw": c} for c in captions], **extra}


@pytest.fixture
def make_karpathy(tmp_path):
    """Write DIR/dataset.json (and, by default, the images it names); return DIR."""

    def make(entries, write_images=True, folder="ds"):
        root = tmp_path / folder
        (root / "images").mkdir(parents=True, exist_ok=True)
        for e in entries:
            if write_images and isinstance(e, dict) and isinstance(e.get("filename"), str):
                sub = e.get("filepath") or ""
                write_image(root / "images" / sub / e["filename"])
        (root / "dataset.json").write_text(json.dumps({"images": entries}), encoding="utf-8")
        return root

    return make


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def small_tiny(tmp_path_factory) -> Path:
    """A small tiny-format dataset (48 / 12 / 12 images of 16 px) for quick training runs."""
    from siamese_utils.datasets.tiny import TinyConfig, write_tiny_dataset

    return write_tiny_dataset(tmp_path_factory.mktemp("small") / "tiny",
                              TinyConfig(image_size=16, num_train=48, num_val=12, num_test=12))

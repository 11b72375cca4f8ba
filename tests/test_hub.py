"""The hub importer (siamese_utils.datasets.hub) on small local copies in exactly the two hub schemas, offline.

The hub name is resolved to the local copy at the one boundary, ``load_hub_dataset``: monkeypatched here, or given
the saved folder's path. Nothing contacts a network: name resolution and connections to anything but 127.0.0.1
fail at once.
"""

import io
import json
import socket
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

datasets = pytest.importorskip("datasets")

from siamese_utils import read_dataset  # noqa: E402
from siamese_utils.datasets import hub  # noqa: E402
from siamese_utils.datasets.hub import HUB_SOURCES, HubUnavailable, import_from_hub  # noqa: E402
from siamese_utils.datasets.registry import DownloadError, manual_steps, registry_table  # noqa: E402
from siamese_utils.tools.cli import build_parser, main, train_settings  # noqa: E402

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    """Name resolution and connections to anything but 127.0.0.1 raise at once (nothing is sent)."""
    real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect

    def getaddrinfo(host, *args, **kwargs):
        if host not in LOOPBACK:
            raise AssertionError(f"a test tried to resolve {host!r}: only 127.0.0.1 may be contacted")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(self, address):
        if isinstance(address, tuple) and address[0] not in LOOPBACK:
            raise AssertionError(f"a test tried to connect to {address!r}: only 127.0.0.1 may be contacted")
        return real_connect(self, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)


# --------------------------------------------------------------------------- local copies in the hub schemas


def _picture(i: int, fmt: str | None) -> Image.Image:
    image = Image.new("RGB", (16 + i % 3, 12), (20 * i % 256, 255 - 13 * i % 256, 90))
    if fmt is None:  # an image made in memory: datasets stores it as PNG
        return image
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, quality=90)
    return Image.open(io.BytesIO(buffer.getvalue()))  # format JPEG: datasets stores JPEG bytes


def _captions(i: int) -> list[str]:
    return [f"photo {i} caption {k}: a dog runs on the grass" for k in range(5)]


FLICKR30K_SPLITS = ["train"] * 6 + ["val"] * 2 + ["test"] * 2


def save_flickr30k(folder: Path, splits=FLICKR30K_SPLITS, edit=None) -> Path:
    """nlphuji/flickr30k's schema: one served split, Karpathy's split in the `split` column, five captions a row."""
    n = len(splits)
    columns = {
        "image": [_picture(i, "JPEG") for i in range(n)],
        "caption": [_captions(i) for i in range(n)],
        "sentids": [[str(5 * i + k) for k in range(5)] for i in range(n)],
        "split": list(splits),
        "img_id": [str(i) for i in range(n)],
        "filename": [f"{1000092795 + i}.jpg" for i in range(n)],
    }
    if edit:
        edit(columns)
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Sequence(datasets.Value("string")),
                                  "sentids": datasets.Sequence(datasets.Value("string")),
                                  "split": datasets.Value("string"), "img_id": datasets.Value("string"),
                                  "filename": datasets.Value("string")})
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(columns, features=features)}).save_to_disk(str(folder))
    return folder


def save_flickr8k(folder: Path, sizes=None, edit=None) -> Path:
    """jxie/flickr8k's schema: train / validation / test splits, captions in caption_0 ... caption_4."""
    sizes = sizes or {"train": 6, "validation": 2, "test": 2}
    features = datasets.Features({"image": datasets.Image(),
                                  **{f"caption_{k}": datasets.Value("string") for k in range(5)}})
    parts, start = {}, 0
    for split, n in sizes.items():
        columns = {"image": [_picture(start + i, None) for i in range(n)]}
        for k in range(5):
            columns[f"caption_{k}"] = [_captions(start + i)[k] for i in range(n)]
        if edit:
            edit(split, columns)
        parts[split] = datasets.Dataset.from_dict(columns, features=features)
        start += n
    datasets.DatasetDict(parts).save_to_disk(str(folder))
    return folder


SMALL = {"train": 6, "val": 2, "test": 2}


@pytest.fixture
def small_sources(monkeypatch):
    """The two hub routes with the small copies' split sizes."""
    for name in HUB_SOURCES:
        monkeypatch.setitem(HUB_SOURCES, name, replace(HUB_SOURCES[name], splits=SMALL))
    return HUB_SOURCES


@pytest.fixture
def local_hub(tmp_path, monkeypatch, small_sources):
    """Resolve the hub names to local copies at the boundary; return {repo: folder} to fill."""
    copies: dict[str, Path] = {}
    real = hub.load_hub_dataset
    calls = []

    def load(repo):
        calls.append(repo)
        return real(str(copies[repo]))

    monkeypatch.setattr(hub, "load_hub_dataset", load)
    copies["calls"] = calls
    return copies


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- both schemas end to end


def test_flickr30k_schema_imports_into_what_read_dataset_reads(tmp_path, local_hub, capsys):
    local_hub["nlphuji/flickr30k"] = save_flickr30k(tmp_path / "hub30k")
    assert main(["download", "flickr30k", "--from-hub", "--root", str(tmp_path / "data"), "--no-progress"]) == 0
    data = read_dataset(tmp_path / "data" / "flickr30k")
    assert {s: len(data.split(s)) for s in SMALL} == SMALL
    assert [r.path.name for r in data.split("val")] == ["1000092801.jpg", "1000092802.jpg"]
    assert list(data.split("test")[1].captions) == _captions(9)
    assert data.num_captions == 50
    for record in data:
        with Image.open(record.path) as im:
            assert im.format == "JPEG"
    doc = json.loads((tmp_path / "data" / "flickr30k" / "dataset.json").read_text())
    assert doc["images"][0]["sentences"][0]["tokens"][:3] == ["photo", "0", "caption"]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["flickr30k"]  # no staging left
    out = capsys.readouterr().out
    assert "6 / 2 / 2 images expected" in out and "10 images, 50 captions" in out


def test_flickr8k_schema_with_validation_served(tmp_path, local_hub):
    local_hub["jxie/flickr8k"] = save_flickr8k(tmp_path / "hub8k")
    folder = import_from_hub("flickr8k", tmp_path / "data", progress=False, log=None)
    data = read_dataset(folder)
    assert {s: len(data.split(s)) for s in SMALL} == SMALL
    assert [list(r.captions) for r in data.split("val")] == [_captions(6), _captions(7)]
    assert list(data.split("test")[0].captions) == _captions(8)
    for record in data:  # the copy holds PNG: written as JPEG
        with Image.open(record.path) as im:
            assert im.format == "JPEG" and record.path.suffix == ".jpg"


def test_flickr8k_without_validation_carves_a_seeded_one_from_train(tmp_path, local_hub):
    local_hub["jxie/flickr8k"] = save_flickr8k(tmp_path / "hub8k", sizes={"train": 8, "test": 2})
    first = import_from_hub("flickr8k", tmp_path / "a", progress=False, log=None)
    second = import_from_hub("flickr8k", tmp_path / "b", progress=False, log=None)
    data = read_dataset(first)
    assert {s: len(data.split(s)) for s in SMALL} == SMALL
    assert [r.captions for r in data.split("val")] == [r.captions for r in read_dataset(second).split("val")]
    assert _tree(first) == _tree(second)


def test_a_local_copy_can_be_named_directly(tmp_path, small_sources):
    copy = save_flickr30k(tmp_path / "hub30k")
    source = replace(HUB_SOURCES["flickr30k"], repo=str(copy))
    data = read_dataset(import_from_hub(source, tmp_path / "data", progress=False, log=None))
    assert len(data) == 10


# --------------------------------------------------------------------------- resumable, atomic, not redone


def _breaking(real, after: int, error=ConnectionError("connection reset by peer")):
    """A loader whose stream breaks off after `after` rows, over all splits."""
    count = [0]

    def rows(part):
        for row in part:
            if count[0] == after:
                raise error
            count[0] += 1
            yield row

    def load(repo):
        return {split: rows(part) for split, part in real(repo).items()}

    return load


@pytest.mark.parametrize("schema", ["flickr30k", "flickr8k"])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, small_sources, monkeypatch, schema):
    copy = save_flickr30k(tmp_path / "hub") if schema == "flickr30k" else save_flickr8k(tmp_path / "hub")
    source = replace(HUB_SOURCES[schema], repo=str(copy))
    whole = import_from_hub(source, tmp_path / "whole", progress=False, log=None)

    real = hub.load_hub_dataset
    monkeypatch.setattr(hub, "load_hub_dataset", _breaking(real, after=7))
    with pytest.raises(DownloadError, match="run the command again to continue"):
        import_from_hub(source, tmp_path / "resumed", progress=False, log=None)
    staging = tmp_path / "resumed" / f".{schema}.hub-partial"
    assert not (tmp_path / "resumed" / schema).exists()  # nothing that could pass for the dataset
    assert len((staging / "rows.jsonl").read_text().splitlines()) == 7
    with open(staging / "rows.jsonl", "a") as log:  # a line cut short by a killed process
        log.write('{"hub_split": "te')

    monkeypatch.setattr(hub, "load_hub_dataset", real)
    decoded = []
    monkeypatch.setattr(hub, "_jpeg", lambda image, real_jpeg=hub._jpeg: decoded.append(1) or real_jpeg(image))
    resumed = import_from_hub(source, tmp_path / "resumed", progress=False, log=None)
    assert _tree(resumed) == _tree(whole)
    assert len(decoded) == 3  # the 7 rows read before are not read again
    assert not staging.exists()


def test_a_keyboard_interrupt_keeps_what_was_written(tmp_path, small_sources, monkeypatch):
    source = replace(HUB_SOURCES["flickr30k"], repo=str(save_flickr30k(tmp_path / "hub")))
    monkeypatch.setattr(hub, "load_hub_dataset", _breaking(hub.load_hub_dataset, 3, KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        import_from_hub(source, tmp_path / "data", progress=False, log=None)
    staging = tmp_path / "data" / ".flickr30k.hub-partial"
    assert len((staging / "rows.jsonl").read_text().splitlines()) == 3
    assert len(list((staging / "images").glob("*.jpg"))) == 3
    assert not (tmp_path / "data" / "flickr30k").exists()


def test_a_finished_import_is_not_redone(tmp_path, local_hub, monkeypatch, capsys):
    local_hub["nlphuji/flickr30k"] = save_flickr30k(tmp_path / "hub30k")
    root = tmp_path / "data"
    assert main(["download", "flickr30k", "--from-hub", "--root", str(root), "--no-progress"]) == 0
    before = {p: p.stat().st_mtime_ns for p in (root / "flickr30k").rglob("*")}
    calls = list(local_hub["calls"])
    monkeypatch.setitem(sys.modules, "datasets", None)  # not even the package is needed
    assert main(["download", "flickr30k", "--from-hub", "--root", str(root), "--no-progress"]) == 0
    assert "is complete: nothing to do" in capsys.readouterr().out
    assert local_hub["calls"] == calls  # the hub was not asked again
    assert {p: p.stat().st_mtime_ns for p in (root / "flickr30k").rglob("*")} == before


def test_an_incomplete_target_folder_is_refused_not_overwritten(tmp_path, local_hub, capsys):
    local_hub["nlphuji/flickr30k"] = save_flickr30k(tmp_path / "hub30k")
    target = tmp_path / "data" / "flickr30k"
    target.mkdir(parents=True)
    (target / "notes.txt").write_text("mine")
    assert main(["download", "flickr30k", "--from-hub", "--root", str(tmp_path / "data"), "--no-progress"]) == 2
    assert "move it aside" in capsys.readouterr().err
    assert [p.name for p in target.iterdir()] == ["notes.txt"] and local_hub["calls"] == []


# --------------------------------------------------------------------------- malformed rows and counts


def _no_caption(split, columns):
    if split == "train":
        columns["caption_2"][3] = None


def _bad_image(columns):
    columns["image"][4] = {"bytes": b"this is not a JPEG", "path": None}


def _bad_split(columns):
    columns["split"][7] = "validation2"


@pytest.mark.parametrize("case, expected", [
    ("missing caption", "row 3 of train: caption_2 is missing"),
    ("undecodable image", "row 4 of test: image does not decode"),
    ("unknown split", "row 7 of test: split 'validation2'"),
])
def test_malformed_rows_are_named_by_row_and_install_nothing(tmp_path, small_sources, case, expected, monkeypatch,
                                                             capsys):
    if case == "missing caption":
        copy, name = save_flickr8k(tmp_path / "hub", edit=_no_caption), "flickr8k"
    else:
        copy, name = save_flickr30k(tmp_path / "hub", edit=_bad_image if "image" in case else _bad_split), "flickr30k"
    monkeypatch.setattr(hub, "load_hub_dataset", lambda repo, real=hub.load_hub_dataset: real(str(copy)))
    root = tmp_path / "data"
    assert main(["download", name, "--from-hub", "--root", str(root), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert expected in err and "1 malformed row(s)" in err and "nothing was installed" in err
    assert not root.exists() or list(root.iterdir()) == []  # no dataset, no staging folder


def test_counts_that_differ_name_what_is_missing(tmp_path, small_sources):
    copy = save_flickr30k(tmp_path / "hub", splits=["train"] * 6 + ["val"] + ["test"] * 2)
    source = replace(HUB_SOURCES["flickr30k"], repo=str(copy))
    with pytest.raises(DownloadError, match=r"val has 1 images, expected 2 \(1 missing\)"):
        import_from_hub(source, tmp_path / "data", progress=False, log=None)
    assert list((tmp_path / "data").iterdir()) == []


# --------------------------------------------------------------------------- no package, no hub, bad flags


def test_without_datasets_one_line_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "datasets", None)
    assert main(["download", "flickr8k", "--from-hub", "--root", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install -e ".[hub]"' in err
    assert not (tmp_path / "data" / "flickr8k").exists()


@pytest.mark.parametrize("variable", ["SIAMESE_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_offline_one_line_says_the_hub_is_not_reached(tmp_path, monkeypatch, capsys, variable):
    for v in hub.OFFLINE_VARIABLES:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv(variable, "1")
    assert main(["download", "flickr30k", "--from-hub", "--root", str(tmp_path / "data"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "hub is not reached" in err and variable in err
    assert not (tmp_path / "data" / "flickr30k").exists() and not (tmp_path / "data" / ".flickr30k.hub-partial").exists()


def test_an_unreachable_hub_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    for v in hub.OFFLINE_VARIABLES:
        monkeypatch.delenv(v, raising=False)

    def unreachable(repo, *args, **kwargs):
        raise ConnectionError(f"Couldn't reach '{repo}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(HubUnavailable, match="could not reach nlphuji/flickr30k"):
        hub.load_hub_dataset("nlphuji/flickr30k")
    assert main(["download", "flickr30k", "--from-hub", "--root", str(tmp_path / "data"), "--no-progress"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_script_dataset_is_read_from_its_parquet_conversion(tmp_path, monkeypatch):
    for v in hub.OFFLINE_VARIABLES:
        monkeypatch.delenv(v, raising=False)
    copy = datasets.load_from_disk(str(save_flickr30k(tmp_path / "hub")))
    asked = []

    def load_dataset(repo, streaming=False, revision=None):
        asked.append(revision)
        if revision != "refs/convert/parquet":
            raise RuntimeError("Dataset scripts are no longer supported, but found flickr30k.py")
        return copy

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    parts = hub.load_hub_dataset("nlphuji/flickr30k")
    assert asked == [None, "refs/convert/parquet"] and len(list(parts["test"])) == 10
    asked.clear()
    monkeypatch.setattr(datasets, "load_dataset", lambda repo, streaming=False, revision=None: asked.append(revision)
                        or (_ for _ in ()).throw(ValueError("no such dataset")))
    with pytest.raises(HubUnavailable, match="nor its parquet conversion"):
        hub.load_hub_dataset("nlphuji/flickr30k")
    assert asked == [None, "refs/convert/parquet"]


@pytest.mark.parametrize("argv, message", [
    (["coco", "--from-hub"], "--from-hub takes flickr8k or flickr30k, not 'coco'"),
    (["tiny", "--from-hub"], "not 'tiny'"),
    (["--from-hub"], "give a dataset NAME"),
    (["flickr8k", "--from-hub", "--mirror", "http://127.0.0.1:1"], "--mirror applies to published archives"),
])
def test_bad_flags_are_clear_errors(tmp_path, argv, message, capsys):
    assert main(["download", *argv, "--root", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_list_and_the_request_steps_show_the_hub_route(capsys):
    table = registry_table()
    assert table.loc["flickr30k", "or from the hub"] == "--from-hub: nlphuji/flickr30k"
    assert table.loc["flickr8k", "or from the hub"] == "--from-hub: jxie/flickr8k"
    assert table.loc["coco", "or from the hub"] == "-"
    assert main(["download", "--list"]) == 0
    assert "--from-hub: nlphuji/flickr30k" in capsys.readouterr().out
    assert "download flickr8k --from-hub" in manual_steps("flickr8k")


def test_an_imported_folder_trains_with_the_pretrained_recipe(tmp_path, small_sources):
    source = replace(HUB_SOURCES["flickr30k"], repo=str(save_flickr30k(tmp_path / "hub")))
    folder = import_from_hub(source, tmp_path / "data", progress=False, log=None)
    args = build_parser().parse_args(["train", "--data", str(folder), "--out", str(tmp_path / "run")])
    settings = train_settings(args, tmp_path / "run")
    assert settings.recipe == "locked-image"
    assert settings.model.pretrained and settings.model.image_tower == "efficientnet_lite0"

"""Real datasets: the registry, resumable verified downloads, safe extraction and the readers of Karpathy's
formats. Every download here is served from 127.0.0.1; any other address fails the test before a byte is sent."""

import hashlib
import http.server
import io
import json
import shutil
import socket
import tarfile
import threading
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from siamese_utils.datasets import registry as ds
from siamese_utils import read_dataset
from siamese_utils.tools.cli import main
from siamese_utils.datasets.registry import (
    DATASETS,
    DatasetError,
    DownloadError,
    ManualDownloadRequired,
    UnsafeArchiveError,
    download,
    download_file,
    extract_archive,
    load_dataset,
)

FIXTURES = Path(__file__).parent / "fixtures" / "datasets"
LOOPBACK = ("127.0.0.1", "localhost")


# --------------------------------------------------------------------------- no network but 127.0.0.1


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


def test_the_guard_refuses_real_addresses():
    with pytest.raises(AssertionError, match="only 127.0.0.1"):
        socket.create_connection(("images.cocodataset.org", 80), timeout=1)


# --------------------------------------------------------------------------- a local HTTP server


class Server:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header)
        self.drop_once: dict[str, int] = {}  # path -> bytes sent before the connection is cut, once
        self.ignore_range = False
        self.url = ""


@pytest.fixture
def server():
    state = Server()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            path = self.path.lstrip("/")
            rng = self.headers.get("Range")
            state.requests.append((path, rng))
            body = state.files.get(path)
            if body is None:
                self.send_error(404, "Not Found")
                return
            start = 0
            if rng and not state.ignore_range:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                if start >= len(body):
                    self.send_error(416, "Requested Range Not Satisfiable")
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            cut = state.drop_once.pop(path, None)
            self.wfile.write(body[start:cut] if cut is not None else body[start:])

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}/"
    yield state
    httpd.shutdown()
    httpd.server_close()


# --------------------------------------------------------------------------- archives laid out as published


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _tar(entries: dict[str, bytes], links: dict[str, str] = (), mode="w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in dict(links).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    return buf.getvalue()


def _images(name: str, sub: str = "") -> dict[str, bytes]:
    folder = FIXTURES / name / "images" / sub
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def published_archives() -> dict[str, bytes]:
    """The fixture datasets packed as their real archives: names, folders inside, formats."""
    return {
        "caption_datasets.zip": _zip({f"dataset_{n}.json": (FIXTURES / n / "dataset.json").read_bytes()
                                      for n in ("flickr8k", "flickr30k", "coco")}),
        "train2014.zip": _zip({f"train2014/{k}": v for k, v in _images("coco", "train2014").items()}),
        "val2014.zip": _zip({f"val2014/{k}": v for k, v in _images("coco", "val2014").items()}),
        "Flickr8k_Dataset.zip": _zip({**{f"Flicker8k_Dataset/{k}": v for k, v in _images("flickr8k").items()},
                                      "__MACOSX/Flicker8k_Dataset/._x.jpg": b"resource fork"}),
        "flickr30k-images.tar.gz": _tar({f"flickr30k-images/{k}": v for k, v in _images("flickr30k").items()}),
    }


def fixture_info(name: str, archives: dict[str, bytes]):
    """The registry's entry for ``name`` (real URLs, real extraction rules) with the fixture's sizes, checksums
    and images per split."""
    info = DATASETS[name]
    files = tuple(replace(f, size=len(archives[f.filename]),
                          checksum="sha256:" + hashlib.sha256(archives[f.filename]).hexdigest())
                  for f in info.files)
    data = read_dataset(FIXTURES / name)
    return replace(info, files=files, splits={s: len(data.split(s)) for s in ("train", "val", "test")})


def _flip(data: bytes, at: int = 100) -> bytes:
    """The same bytes with one of them changed: the size is right, the checksum is not."""
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


def _same_tree(a: Path, b: Path) -> None:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert files_a == files_b
    for rel in files_a:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


# --------------------------------------------------------------------------- the registry and the readers


def test_registry_holds_karpathy_splits_and_cites_every_checksum():
    expected = {"flickr8k": (6000, 1000, 1000), "flickr30k": (29000, 1014, 1000), "coco": (113287, 5000, 5000)}
    for name, counts in expected.items():
        info = DATASETS[name]
        assert tuple(info.splits[s] for s in ("train", "val", "test")) == counts
        assert info.files[0].filename == "caption_datasets.zip"
        assert info.files[0].extract == ((f"dataset_{name}.json", "dataset.json"),)
        for f in info.files:
            assert f.checksum and f.source, f.filename  # every file here has a published checksum
    assert DATASETS["coco"].openly_downloadable
    assert not DATASETS["flickr8k"].openly_downloadable and not DATASETS["flickr30k"].openly_downloadable
    # The shipped set's numbers are the generator's.
    tiny = read_dataset(Path(__file__).resolve().parents[1] / "data" / "tiny", check_files=False)
    assert {s: len(tiny.split(s)) for s in ("train", "val", "test")} == dict(DATASETS["tiny"].splits)
    table = ds.registry_table()
    assert list(table.index) == ["tiny", "flickr8k", "flickr30k", "coco"]
    assert table.loc["coco", "access"] == "open" and table.loc["flickr8k", "access"] == "request form"
    assert table.loc["coco", "download"] == ds._human(sum(f.size for f in DATASETS["coco"].files))


def test_a_file_without_size_or_checksum_cannot_enter_the_registry():
    with pytest.raises(ValueError, match="cannot be verified"):
        ds.RemoteFile("x.zip", "http://x/x.zip", size=None, checksum=None, source="")
    with pytest.raises(ValueError, match="ALGORITHM:HEX"):
        ds.RemoteFile("x.zip", "http://x/x.zip", size=1, checksum="crc:zz", source="")


@pytest.mark.parametrize("name, counts", [("flickr8k", (1, 1, 1)), ("flickr30k", (1, 1, 1)), ("coco", (2, 1, 1))])
def test_readers_on_each_karpathy_format(name, counts):
    data = read_dataset(FIXTURES / name)
    assert tuple(len(data.split(s)) for s in ("train", "val", "test")) == counts
    doc = json.loads((FIXTURES / name / "dataset.json").read_text())
    for entry, record in zip(doc["images"], data):
        assert record.captions == tuple(s["raw"] for s in entry["sentences"])
        assert record.meta["imgid"] == entry["imgid"] and record.meta["sentids"] == entry["sentids"]
        assert record.path == FIXTURES / name / "images" / entry.get("filepath", "") / entry["filename"]
        assert record.path.is_file()


def test_coco_restval_counts_as_train_and_filepath_is_honoured():
    data = read_dataset(FIXTURES / "coco")
    train = data.split("train")
    assert sorted(r.split for r in train) == ["restval", "train"]
    restval = next(r for r in train if r.split == "restval")
    assert restval.name == "val2014/COCO_val2014_000000000042.jpg"
    assert restval.path == FIXTURES / "coco" / "images" / "val2014" / "COCO_val2014_000000000042.jpg"
    assert restval.meta["cocoid"] == 42


# --------------------------------------------------------------------------- downloading


def test_coco_downloads_verifies_extracts_and_reads(server, tmp_path):
    archives = published_archives()
    server.files.update(archives)
    info = fixture_info("coco", archives)
    root = tmp_path / "data"
    lines = []
    out = download(info, root, mirror=server.url, progress=False, log=lines.append)
    assert out == root / "coco"
    # The registry's real addresses were rewritten to the mirror; no request carried a Range.
    assert sorted(server.requests) == [("caption_datasets.zip", None), ("train2014.zip", None), ("val2014.zip", None)]
    data = read_dataset(out)
    assert {s: len(data.split(s)) for s in ("train", "val", "test")} == dict(info.splits)
    _same_tree(out, FIXTURES / "coco")
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no staging folder left behind
    assert {p.name for p in (root / "downloads").iterdir() if not p.name.endswith(".verified")} == {
        "caption_datasets.zip", "train2014.zip", "val2014.zip"}

    # A complete dataset is left alone; with it gone, the verified archives are extracted again, not fetched.
    server.requests.clear()
    assert download(info, root, mirror=server.url, progress=False, log=lines.append) == out
    shutil.rmtree(out)
    download(info, root, mirror=server.url, progress=False, log=lines.append)
    assert server.requests == []
    _same_tree(out, FIXTURES / "coco")
    assert load_dataset("coco", root).source == out / "dataset.json"


def test_a_corrupted_archive_is_named_set_aside_and_nothing_is_extracted(server, tmp_path):
    archives = published_archives()
    info = fixture_info("coco", archives)
    good = archives["val2014.zip"]
    server.files.update(archives, **{"val2014.zip": _flip(good)})
    root = tmp_path / "data"
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    with pytest.raises(DownloadError) as e:
        download(info, root, mirror=server.url, progress=False, log=None)
    message = str(e.value)
    expected = info.files[2].checksum.split(":")[1]
    got = hashlib.sha256(server.files["val2014.zip"]).hexdigest()
    assert "val2014.zip" in message and f"sha256 {got}, expected {expected}" in message
    assert "val2014.zip.corrupt" in message and "again" in message
    downloads = root / "downloads"
    assert not (downloads / "val2014.zip").exists() and not (downloads / "val2014.zip.part").exists()
    assert (downloads / "val2014.zip.corrupt").read_bytes() == server.files["val2014.zip"]
    assert (downloads / "train2014.zip").read_bytes() == archives["train2014.zip"]  # good files are kept
    assert sorted(p.name for p in root.iterdir()) == ["downloads", "notes.txt"]  # nothing extracted
    assert (root / "notes.txt").read_text() == "mine"

    # Fixed on the server, the next run fetches only that file again.
    server.files["val2014.zip"] = good
    server.requests.clear()
    download(info, root, mirror=server.url, progress=False, log=None)
    assert server.requests == [("val2014.zip", None)]
    _same_tree(root / "coco", FIXTURES / "coco")


def test_an_incomplete_dataset_folder_is_never_overwritten(server, tmp_path):
    archives = published_archives()
    server.files.update(archives)
    root = tmp_path / "data"
    (root / "coco").mkdir(parents=True)
    (root / "coco" / "dataset.json").write_text('{"images": []}')
    with pytest.raises(DatasetError, match=r"exists but is not a complete coco .*move it aside"):
        download(fixture_info("coco", archives), root, mirror=server.url, progress=False, log=None)
    assert (root / "coco" / "dataset.json").read_text() == '{"images": []}'
    assert server.requests == []


def test_split_sizes_other_than_the_registry_s_install_nothing(server, tmp_path):
    archives = published_archives()
    server.files.update(archives)
    info = fixture_info("coco", archives)
    wrong = replace(info, splits={**info.splits, "test": info.splits["test"] + 1})
    root = tmp_path / "data"
    with pytest.raises(DatasetError, match=r"images per split .* expected"):
        download(wrong, root, mirror=server.url, progress=False, log=None)
    assert sorted(p.name for p in root.iterdir()) == ["downloads"]


def test_a_dropped_connection_resumes_with_a_range_request(server, tmp_path):
    body = published_archives()["train2014.zip"]
    server.files["train2014.zip"] = body
    cut = len(body) // 2
    server.drop_once["train2014.zip"] = cut
    dest = tmp_path / "train2014.zip"
    checksum = "sha256:" + hashlib.sha256(body).hexdigest()
    url = server.url + "train2014.zip"
    with pytest.raises(DownloadError, match=rf"dropped after {cut:,} of {len(body):,} bytes.*resume"):
        download_file(url, dest, len(body), checksum, progress=False, retries=0)
    assert (tmp_path / "train2014.zip.part").stat().st_size == cut and not dest.exists()

    download_file(url, dest, len(body), checksum, progress=False, retries=0)
    assert server.requests == [("train2014.zip", None), ("train2014.zip", f"bytes={cut}-")]
    assert dest.read_bytes() == body and not (tmp_path / "train2014.zip.part").exists()

    # With retries, one call resumes by itself.
    server.requests.clear()
    server.drop_once["train2014.zip"] = cut
    download_file(url, tmp_path / "again.zip", len(body), checksum, progress=False, retries=1)
    assert server.requests == [("train2014.zip", None), ("train2014.zip", f"bytes={cut}-")]
    assert (tmp_path / "again.zip").read_bytes() == body


def test_a_server_that_ignores_range_restarts_the_file_cleanly(server, tmp_path):
    body = published_archives()["val2014.zip"]
    server.files["val2014.zip"] = body
    server.ignore_range = True
    dest = tmp_path / "val2014.zip"
    (tmp_path / "val2014.zip.part").write_bytes(b"x" * 40)  # left by an earlier run
    download_file(server.url + "val2014.zip", dest, len(body), "sha256:" + hashlib.sha256(body).hexdigest(),
                  progress=False)
    assert server.requests == [("val2014.zip", "bytes=40-")]
    assert dest.read_bytes() == body


def test_a_verified_file_is_not_fetched_again(server, tmp_path):
    body = published_archives()["val2014.zip"]
    dest = tmp_path / "val2014.zip"
    dest.write_bytes(body)  # put there by hand: verified in place, no request
    checksum = "md5:" + hashlib.md5(body).hexdigest()
    assert download_file(server.url + "val2014.zip", dest, None, checksum, progress=False) == dest
    assert download_file(server.url + "val2014.zip", dest, None, checksum, progress=False) == dest
    assert server.requests == [] and (tmp_path / "val2014.zip.verified").is_file()
    # A file that changed since its verification is checked again, and set aside if wrong.
    dest.write_bytes(_flip(body))
    with pytest.raises(DownloadError, match=r"md5 .*, expected"):
        download_file(server.url + "val2014.zip", dest, None, checksum, progress=False)
    assert not dest.exists() and (tmp_path / "val2014.zip.corrupt").is_file()


def test_a_full_disk_is_a_clear_error_and_keeps_what_was_received(server, tmp_path, monkeypatch):
    body = published_archives()["val2014.zip"]
    server.files["val2014.zip"] = body
    part = tmp_path / "val2014.zip.part"
    part.write_bytes(body[:10])

    def full_disk(path, mode="r", *args, **kwargs):
        if Path(path) == part and "a" in mode:
            raise OSError(28, "No space left on device")
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(ds, "open", full_disk, raising=False)
    with pytest.raises(DownloadError, match=rf"{part}: cannot write \(No space left on device\).*resume"):
        download_file(server.url + "val2014.zip", tmp_path / "val2014.zip", len(body), None, progress=False)
    assert part.read_bytes() == body[:10] and not (tmp_path / "val2014.zip").exists()


def test_verify_file_checks_size_then_checksum(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"abc")
    ds.verify_file(f, 3, "sha256:" + hashlib.sha256(b"abc").hexdigest())
    with pytest.raises(DownloadError, match=rf"{f}: 3 bytes, expected 4"):
        ds.verify_file(f, 4, None)


def test_http_errors_and_unreachable_mirrors_are_download_errors(server, tmp_path):
    with pytest.raises(DownloadError, match=r"127\.0\.0\.1.*HTTP 404"):
        download_file(server.url + "missing.zip", tmp_path / "m.zip", 10, None, progress=False)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match=rf"could not reach 127\.0\.0\.1:{port}"):
        download_file(f"http://127.0.0.1:{port}/x.zip", tmp_path / "x.zip", 10, None, progress=False, retries=0)


# --------------------------------------------------------------------------- request-form datasets


def test_manual_sets_give_the_steps_without_touching_the_network(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("no request may be made for a request-form dataset")

    monkeypatch.setattr(ds, "_open", no_network)
    for name, archive, form in (("flickr8k", "Flickr8k_Dataset.zip", "https://forms.illinois.edu/sec/1713398"),
                                ("flickr30k", "flickr30k-images.tar.gz", "https://forms.illinois.edu/sec/229675")):
        with pytest.raises(ManualDownloadRequired) as e:
            download(name, tmp_path, progress=False, log=None)
        steps = str(e.value)
        assert form in steps and str(tmp_path / "downloads" / archive) in steps
        assert f"python -m siamese_utils download {name} --root {tmp_path}" in steps
    assert list(tmp_path.iterdir()) == []


def test_a_manual_file_put_in_place_is_checked_and_installed(server, tmp_path):
    archives = published_archives()
    server.files["caption_datasets.zip"] = archives["caption_datasets.zip"]
    info = fixture_info("flickr30k", archives)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    (downloads / "flickr30k-images.tar.gz").write_bytes(archives["flickr30k-images.tar.gz"])
    download(info, tmp_path, mirror=server.url, progress=False, log=None)
    assert server.requests == [("caption_datasets.zip", None)]  # the manual file is never requested
    _same_tree(tmp_path / "flickr30k", FIXTURES / "flickr30k")

    # Flickr8k: the archive's folder is "Flicker8k_Dataset"; the macOS resource forks are left out.
    info8 = fixture_info("flickr8k", archives)
    (downloads / "Flickr8k_Dataset.zip").write_bytes(_flip(archives["Flickr8k_Dataset.zip"]))
    with pytest.raises(DownloadError, match=r"Flickr8k_Dataset\.zip: sha256 .*forms\.illinois\.edu/sec/1713398"):
        download(info8, tmp_path, mirror=server.url, progress=False, log=None)
    assert not (tmp_path / "flickr8k").exists()
    (downloads / "Flickr8k_Dataset.zip").write_bytes(archives["Flickr8k_Dataset.zip"])
    download(info8, tmp_path, mirror=server.url, progress=False, log=None)
    _same_tree(tmp_path / "flickr8k", FIXTURES / "flickr8k")


# --------------------------------------------------------------------------- safe extraction

UNSAFE = {
    "zip ../": ("evil.zip", lambda: _zip({"ok/a.txt": b"a", "../evil.txt": b"x"}), "../evil.txt"),
    "zip absolute": ("evil.zip", lambda: _zip({"ok/a.txt": b"a", "/tmp/evil.txt": b"x"}), "/tmp/evil.txt"),
    "tar ../": ("evil.tar", lambda: _tar({"ok/a.txt": b"a", "ok/../../evil.txt": b"x"}, mode="w"),
                "ok/../../evil.txt"),
    "tar absolute": ("evil.tar.gz", lambda: _tar({"ok/a.txt": b"a", "/tmp/evil.txt": b"x"}), "/tmp/evil.txt"),
    "tar symlink out": ("evil.tar.gz", lambda: _tar({"ok/a.txt": b"a"}, links={"ok/link": "../../outside"}),
                        "ok/link"),
}


@pytest.mark.parametrize("case", list(UNSAFE))
def test_unsafe_archives_are_refused_naming_the_member(case, tmp_path):
    filename, build, member = UNSAFE[case]
    archive = tmp_path / "in" / filename
    archive.parent.mkdir()
    archive.write_bytes(build())
    work = tmp_path / "work"
    work.mkdir()
    target = work / "target"
    with pytest.raises(UnsafeArchiveError) as e:
        extract_archive(archive, target)
    assert repr(member) in str(e.value) and str(archive) in str(e.value) and "Nothing was extracted" in str(e.value)
    assert list(work.iterdir()) == []  # not the target, not a staging folder
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(["in", filename, "work"])
    if filename.startswith("evil.tar") and hasattr(tarfile, "data_filter"):
        # The standard library's own filter (Python >= 3.11.4) refuses it too, or (absolute) re-roots it inside.
        with tarfile.open(archive) as tf:
            if member.startswith("/"):
                assert tarfile.data_filter(tf.getmember(member), str(target)).name == member.lstrip("/")
            else:
                with pytest.raises(tarfile.FilterError):
                    tarfile.data_filter(tf.getmember(member), str(target))


def test_a_safe_archive_extracts_whole_and_an_existing_target_is_refused(tmp_path):
    archive = tmp_path / "good.tar.gz"
    archive.write_bytes(_tar({"a/b.txt": b"b", "c.txt": b"c"}, links={"a/link": "b.txt"}))
    out = extract_archive(archive, tmp_path / "out")
    assert (out / "a" / "b.txt").read_bytes() == b"b" and (out / "a" / "link").read_bytes() == b"b"
    with pytest.raises(FileExistsError, match="already exists"):
        extract_archive(archive, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.tar.gz", "out"]


def test_an_unsafe_archive_from_the_mirror_installs_nothing(server, tmp_path):
    archives = published_archives()
    archives["val2014.zip"] = _zip({"val2014/a.jpg": b"x", "../../escape.jpg": b"x"})
    server.files.update(archives)
    root = tmp_path / "data"
    with pytest.raises(UnsafeArchiveError, match=r"val2014\.zip.*'\.\./\.\./escape\.jpg'"):
        download(fixture_info("coco", archives), root, mirror=server.url, progress=False, log=None)
    assert sorted(p.name for p in root.iterdir()) == ["downloads"]
    assert not list(tmp_path.rglob("escape.jpg"))


# --------------------------------------------------------------------------- load_dataset and the command line


def test_load_dataset_says_how_to_get_what_is_missing(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'mscoco'; known: tiny, flickr8k, flickr30k, coco"):
        load_dataset("mscoco", tmp_path)
    with pytest.raises(DatasetError, match=r"coco is not there yet.*python -m siamese_utils download coco --root "):
        load_dataset("coco", tmp_path)
    with pytest.raises(DatasetError, match=r"(?s)flickr8k is not there yet.*forms\.illinois\.edu/sec/1713398"):
        load_dataset("flickr8k", tmp_path)
    with pytest.raises(DatasetError, match="make-tiny --out"):
        load_dataset("tiny", tmp_path)
    shutil.copytree(FIXTURES / "coco", tmp_path / "coco")
    (tmp_path / "coco" / "images" / "val2014" / "COCO_val2014_000000000074.jpg").unlink()
    with pytest.raises(DatasetError, match=r"(?s)COCO_val2014_000000000074.*To get coco again, move .* aside"):
        load_dataset("coco", tmp_path)


def test_the_shipped_tiny_set_is_complete_as_it_is(tmp_path, server):
    shutil.copytree(Path(__file__).resolve().parents[1] / "data" / "tiny", tmp_path / "tiny")
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "tiny").rglob("*")}
    lines = []
    assert download("tiny", tmp_path, mirror=server.url, progress=False, log=lines.append) == tmp_path / "tiny"
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "tiny").rglob("*")} == before
    assert lines == [] and server.requests == []


def test_cli_list(capsys):
    assert main(["download", "--list"]) == 0
    out = capsys.readouterr().out
    for name in DATASETS:
        assert name in out
    assert "113287" in out and "request form" in out


@pytest.mark.parametrize("argv, message", [
    (["download", "imagenet"], "error: unknown dataset 'imagenet'; known: tiny, flickr8k, flickr30k, coco"),
    (["download", "coco", "--mirror", "ftp://host/x"], "error: mirror 'ftp://host/x' is not an http:// or https://"),
    (["download", "coco", "--mirror", "host/datasets"], "error: mirror 'host/datasets' is not an http"),
    (["download"], "error: give a dataset NAME or --list"),
])
def test_cli_bad_input_exits_2(argv, message, tmp_path, capsys):
    assert main([*argv, "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_cli_manual_set_exits_2_with_the_steps(tmp_path, capsys):
    assert main(["download", "flickr30k", "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: flickr30k's images are handed out by their authors")
    assert "https://forms.illinois.edu/sec/229675" in err and "flickr30k-images.tar.gz" in err


def test_cli_failed_download_exits_1_and_the_mirror_replaces_the_real_addresses(server, tmp_path, capsys):
    assert main(["download", "coco", "--root", str(tmp_path), "--mirror", server.url, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "HTTP 404" in err and len(err.strip().splitlines()) == 1
    assert server.requests == [("caption_datasets.zip", None)]


def test_cli_success(server, tmp_path, capsys, monkeypatch):
    archives = published_archives()
    server.files.update(archives)
    monkeypatch.setitem(DATASETS, "coco", fixture_info("coco", archives))
    assert main(["download", "coco", "--root", str(tmp_path), "--mirror", server.url, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'coco'}: 4 images, 8 captions" in out

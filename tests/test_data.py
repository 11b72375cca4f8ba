"""Reading datasets: Karpathy's dataset.json, CSV, and every bad input with a clear error."""

import io
import json
import struct

import numpy as np
import pytest
from PIL import Image

from siamese_utils.core.data import (
    DatasetError,
    ImageDataset,
    ImageTextDataset,
    load_image,
    read_captions_csv,
    read_dataset,
    to_rgb,
)
from conftest import karpathy_entry, write_image


# --------------------------------------------------------------------------- Karpathy JSON


def test_tiny_set_reads_through_the_karpathy_reader(tiny_dir):
    data = read_dataset(tiny_dir)
    assert data.source == tiny_dir / "dataset.json"
    assert len(data) == 800 and data.num_captions == 4000
    first = data[0]
    assert first.path == tiny_dir / "images" / "000000.png" and first.split == "train"
    assert len(data.captions) == 4000
    assert data.txt_to_img.tolist()[:7] == [0, 0, 0, 0, 0, 1, 1]
    assert "scene" in first.meta


def test_coco_filepath_and_restval(make_karpathy):
    root = make_karpathy(
        [
            karpathy_entry("a.jpg", "train", filepath="train2014"),
            karpathy_entry("b.jpg", "restval", filepath="val2014"),
            karpathy_entry("c.jpg", "val", filepath="val2014"),
            karpathy_entry("d.jpg", "test", filepath="val2014", captions=["x"] * 7),
        ]
    )
    data = read_dataset(root)
    assert data[0].path == root / "images" / "train2014" / "a.jpg"
    assert data[0].name == "train2014/a.jpg"
    train = data.split("train")
    assert [r.name for r in train] == ["train2014/a.jpg", "val2014/b.jpg"]  # restval counts as train
    assert len(data.split("test")[0].captions) == 7  # any number of captions per image
    assert data.summary().loc["train", "images"] == 2
    with pytest.raises(ValueError, match="unknown split 'restval'"):
        data.split("restval")


def test_extra_fields_are_kept(make_karpathy):
    root = make_karpathy([karpathy_entry("a.jpg", cocoid=42)])
    assert read_dataset(root)[0].meta["cocoid"] == 42


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"split": "train", "sentences": [{"raw": "x"}]}, r'images\[0\]: missing "filename"'),
        (karpathy_entry("a.jpg", "training"), r"images\[0\] \(a.jpg\): \"split\" is 'training'"),
        ({"filename": "a.jpg", "split": "train"}, r'images\[0\] \(a.jpg\): no "sentences"'),
        ({"filename": "a.jpg", "split": "train", "sentences": [{"tokens": ["x"]}]}, r'sentences\[0\] has no "raw"'),
        (karpathy_entry("a.jpg", captions=["a cat", "   "]), r"sentences\[1\] is an empty caption"),
        ({"filename": "a.jpg", "split": "train", "sentences": [{"raw": 7}]}, r'sentences\[0\] "raw" must be text, found 7'),
        ("a.jpg", r"images\[0\]: expected an object, found str"),
    ],
)
def test_bad_entries_are_named(make_karpathy, entry, message):
    root = make_karpathy([entry])
    with pytest.raises(DatasetError, match=message) as err:
        read_dataset(root)
    assert str(root / "dataset.json") in str(err.value)
    assert "Fix these entries in dataset.json" in str(err.value)


def test_an_image_listed_twice(make_karpathy):
    root = make_karpathy([karpathy_entry("a.jpg"), karpathy_entry("b.jpg"), karpathy_entry("a.jpg", "test")])
    with pytest.raises(DatasetError, match=r"images\[2\] \(a.jpg\): a.jpg is listed twice \(also images\[0\]"):
        read_dataset(root)


def test_all_problems_reported_at_once(make_karpathy):
    root = make_karpathy([karpathy_entry(f"{i}.jpg", "nope") for i in range(15)])
    with pytest.raises(DatasetError, match="15 problem") as err:
        read_dataset(root)
    assert "and 5 more" in str(err.value)


def test_missing_dataset_json(tmp_path):
    with pytest.raises(DatasetError, match="no dataset.json .* or captions.csv"):
        read_dataset(tmp_path)
    with pytest.raises(DatasetError, match="no such file or folder"):
        read_dataset(tmp_path / "nowhere")


def test_invalid_json_names_the_line(tmp_path):
    (tmp_path / "dataset.json").write_text('{"images": [\n{"filename": "a.jpg",\n')
    with pytest.raises(DatasetError, match=r"not valid JSON \(line 3") as err:
        read_dataset(tmp_path)
    assert "download it again" in str(err.value)


def test_not_karpathy_format(tmp_path):
    (tmp_path / "dataset.json").write_text('{"annotations": []}')
    with pytest.raises(DatasetError, match='with an "images" list'):
        read_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text('{"images": []}')
    with pytest.raises(DatasetError, match="empty"):
        read_dataset(tmp_path)


def test_missing_image_files_are_listed(make_karpathy):
    root = make_karpathy([karpathy_entry("a.jpg"), karpathy_entry("b.jpg", filepath="sub")], write_images=False)
    write_image(root / "images" / "a.jpg")
    with pytest.raises(DatasetError, match=r"(?s)1 problem.*images\[1\] \(b\.jpg\): .*sub/b\.jpg is missing") as err:
        read_dataset(root)
    assert "Put the missing images under" in str(err.value)
    assert read_dataset(root, check_files=False)[1].name == "sub/b.jpg"


def test_missing_image_folder(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"images": [karpathy_entry("a.jpg")]}))
    with pytest.raises(DatasetError, match="the image folder .*images does not exist"):
        read_dataset(tmp_path)


# --------------------------------------------------------------------------- CSV


def _csv(tmp_path, text, images=("a.jpg", "b.jpg", "c.jpg")):
    for name in images:
        write_image(tmp_path / "images" / name)
    (tmp_path / "captions.csv").write_text(text, encoding="utf-8")
    return tmp_path


def test_csv_with_splits(tmp_path):
    root = _csv(tmp_path, "image,caption,split\na.jpg,a red thing,train\na.jpg,\"red, square\",train\nb.jpg,blue,test\n")
    data = read_dataset(root)
    assert [r.captions for r in data] == [("a red thing", "red, square"), ("blue",)]
    assert [r.split for r in data] == ["train", "test"]
    assert data[1].path == root / "images" / "b.jpg"


def test_csv_without_splits_is_split_by_seed(tmp_path):
    names = [f"{i}.jpg" for i in range(50)]
    root = _csv(tmp_path, "image,caption\n" + "".join(f"{n},caption {n}\n" for n in names), images=names)
    a = read_captions_csv(root / "captions.csv", val_fraction=0.2, test_fraction=0.1, seed=3)
    b = read_dataset(root, val_fraction=0.2, test_fraction=0.1, seed=3)
    assert [r.split for r in a] == [r.split for r in b]
    assert [len(a.split(s)) for s in ("train", "val", "test")] == [35, 10, 5]
    c = read_dataset(root, val_fraction=0.2, test_fraction=0.1, seed=4)
    assert [r.split for r in a] != [r.split for r in c]
    with pytest.raises(ValueError, match="add up to less than 1"):
        read_dataset(root, val_fraction=0.6, test_fraction=0.5)


@pytest.mark.parametrize(
    "text, message",
    [
        ("file,text\na.jpg,x\n", r"header naming the columns 'image' and 'caption'.*found \['file', 'text'\]"),
        ("a.jpg,a red thing\n", r"header naming the columns 'image' and 'caption'"),
        ("", r"found an empty file"),
        ("image,caption\na.jpg,x\nb.jpg,  \n", r"line 3 \(b.jpg\): empty caption"),
        ("image,caption\n,x\n", r"line 2: empty 'image' field"),
        ("image,caption,split\na.jpg,x,dev\n", r"line 2 \(a.jpg\): split 'dev'"),
        ("image,caption,split\na.jpg,x,train\na.jpg,y,test\n", r"line 3 \(a.jpg\).*an image belongs to one split"),
        ("image,caption\n", r"no caption rows below the header"),
    ],
)
def test_bad_csv(tmp_path, text, message):
    root = _csv(tmp_path, text)
    with pytest.raises(DatasetError, match=message) as err:
        read_dataset(root)
    assert str(root / "captions.csv") in str(err.value)


def test_csv_from_a_spreadsheet_with_a_byte_order_mark(tmp_path):
    root = _csv(tmp_path, "\ufeffimage,caption\r\na.jpg,a red thing\r\n")
    assert read_dataset(root)[0].captions == ("a red thing",)


def test_csv_that_is_not_utf8(tmp_path):
    root = _csv(tmp_path, "")
    (root / "captions.csv").write_bytes("image,caption\na.jpg,un caf\u00e9 cr\u00e8me\n".encode("latin-1"))
    with pytest.raises(DatasetError, match="not UTF-8 text .*save the file as UTF-8"):
        read_dataset(root)


def test_csv_missing_images(tmp_path):
    root = _csv(tmp_path, "image,caption\na.jpg,x\nzzz.jpg,y\n")
    with pytest.raises(DatasetError, match=r"line 3 \(zzz.jpg\): .*zzz\.jpg is missing"):
        read_dataset(root)


# --------------------------------------------------------------------------- images


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


def test_grayscale_loads_as_rgb(tmp_path):
    p = _save(Image.new("L", (4, 3), 77), tmp_path / "g.png")
    img = load_image(p)
    assert img.mode == "RGB" and img.size == (4, 3)
    assert np.asarray(img)[0, 0].tolist() == [77, 77, 77]


def test_rgba_transparency_becomes_white_not_black(tmp_path):
    arr = np.zeros((2, 2, 4), dtype=np.uint8)  # fully transparent black ...
    arr[0, 0] = [255, 0, 0, 255]  # ... except one opaque red pixel
    arr[1, 1] = [0, 0, 255, 128]  # and one half-transparent blue one
    p = _save(Image.fromarray(arr, "RGBA"), tmp_path / "a.png")
    out = np.asarray(load_image(p))
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 1].tolist() == [255, 255, 255]
    assert out[1, 1].tolist() == [127, 127, 255]
    la = _save(Image.fromarray(arr[..., [0, 3]], "LA"), tmp_path / "la.png")
    assert np.asarray(load_image(la))[0, 1].tolist() == [255, 255, 255]


def test_palette_with_and_without_transparency(tmp_path):
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.putpixel((1, 0), 1)
    plain = _save(pal, tmp_path / "p.png")
    assert np.asarray(load_image(plain)).tolist() == [[[0, 0, 0], [10, 200, 30]]]
    see_through = _save(pal, tmp_path / "pt.png", transparency=0)
    assert np.asarray(load_image(see_through)).tolist() == [[[255, 255, 255], [10, 200, 30]]]


def test_cmyk_jpeg(tmp_path):
    p = _save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / "c.jpg", quality=95)
    assert Image.open(p).mode == "CMYK"
    r, g, b = np.asarray(load_image(p))[4, 4].tolist()
    assert r > 230 and g < 25 and b < 25  # red


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 32896, 65535]], dtype=np.uint16)
    p = _save(Image.fromarray(arr), tmp_path / "d.png")
    assert Image.open(p).mode.startswith("I")
    assert np.asarray(load_image(p))[0, :, 0].tolist() == [0, 128, 255]


def test_exif_rotation_is_applied(tmp_path):
    arr = np.zeros((2, 4, 3), dtype=np.uint8)  # 4 wide, 2 high; red top-left pixel
    arr[0, 0] = [255, 0, 0]
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    p = _save(img, tmp_path / "r.png", exif=exif)
    out = load_image(p)
    assert out.size == (2, 4)  # now 2 wide, 4 high
    assert np.asarray(out)[0, 1].tolist() == [255, 0, 0]  # top-left went to top-right


def test_bad_image_files_have_clear_errors(tmp_path):
    good = write_image(tmp_path / "good.jpg", fmt="JPEG", size=(64, 64))
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:300])
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(png, format="PNG")
    cut_png = tmp_path / "cut.png"
    cut_png.write_bytes(png.getvalue()[:60])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    for path, message in [
        (truncated, "truncated or corrupt"),
        (cut_png, "truncated or corrupt"),
        (text, "not an image file"),
        (tmp_path / "gone.jpg", "image file not found"),
    ]:
        with pytest.raises(DatasetError, match=message) as err:
            load_image(path)
        assert str(path) in str(err.value)


def test_an_image_too_large_to_trust(tmp_path, monkeypatch):
    p = write_image(tmp_path / "huge.png", size=(64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 is more than twice this: refused
    with pytest.raises(DatasetError, match="huge.png: .*MAX_IMAGE_PIXELS"):
        load_image(p)


def test_check_images_lists_every_bad_file(make_karpathy):
    root = make_karpathy([karpathy_entry("a.png"), karpathy_entry("b.png"), karpathy_entry("c.png")])
    (root / "images" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13))
    (root / "images" / "c.png").write_text("oops")
    data = read_dataset(root)
    with pytest.raises(DatasetError, match=r"(?s)2 problem.*images\[1\] \(b.png\): .*images\[2\] \(c.png\): ") as err:
        data.check_images()
    assert "remove their entries" in str(err.value)


def test_to_rgb_keeps_rgb_untouched():
    img = Image.new("RGB", (2, 2), (1, 2, 3))
    assert to_rgb(img) is img


# --------------------------------------------------------------------------- torch datasets


def test_pairs_dataset_one_item_per_caption(tiny_dir):
    data = read_dataset(tiny_dir).split("val")
    ds = ImageTextDataset(data, transform=lambda im, cap: (np.asarray(im), cap.upper()))
    assert len(ds) == 500
    item = ds[7]
    assert item["image_index"] == 1 and item["caption_index"] == 7
    assert item["caption"] == data[1].captions[2].upper()
    assert item["image"].shape == (64, 64, 3)


def test_images_are_decoded_once_when_cached(tiny_dir, monkeypatch):
    import siamese_utils.core.data as data_mod

    calls = []
    real = data_mod.load_image
    monkeypatch.setattr(data_mod, "load_image", lambda p: calls.append(p) or real(p))
    data = read_dataset(tiny_dir).split("test")
    ds = ImageTextDataset(data)  # 100 images: cached by default
    assert ds.images.cache and len(calls) == 100
    for j in range(len(ds)):
        ds[j]
    assert len(calls) == 100
    lazy = ImageDataset(data, cache_images=False)
    assert not lazy.images.cache
    lazy[3]
    lazy[3]
    assert len(calls) == 102


def test_caching_surfaces_a_bad_image_at_once(make_karpathy):
    root = make_karpathy([karpathy_entry("a.png"), karpathy_entry("b.png")])
    (root / "images" / "b.png").write_text("oops")
    data = read_dataset(root)
    with pytest.raises(DatasetError, match="b.png: not an image"):
        ImageTextDataset(data, cache_images=True)
    ds = ImageTextDataset(data, cache_images=False)  # lazy: fails when the item is read
    with pytest.raises(DatasetError, match="b.png"):
        ds[2]

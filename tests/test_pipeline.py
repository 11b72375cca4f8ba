"""Training at scale on one process (chapter 09): the image pipelines (memory, disk cache, streaming), the disk
cache's life cycle, persistent workers, channels-last and torch.compile: same pixels, same batches, same flips,
the same weights as chapter 03's `fit`, clear errors."""

import multiprocessing
import re
import shutil

import numpy as np
import pytest
import torch

from siamese_utils.chapters.scaling import pipelines as P
from siamese_utils.chapters.scaling.pipelines import DiskImages, StreamedImages, build_image_cache
from siamese_utils.chapters.scaling.train import TrainStep, fit_at_scale
from siamese_utils.core import data as D
from siamese_utils.core import train as T
from siamese_utils.core.data import DatasetError, read_dataset
from siamese_utils.core.models import ModelConfig, build_model
from siamese_utils.core.runtime import seed_everything
from siamese_utils.core.transforms import CaptionAwareHorizontalFlip
from siamese_utils.tools.cli import main

# The seed CNN trains from scratch (not frozen): every pair goes through the caption-aware flip.
SMALL = ModelConfig(image_tower="seed_cnn", text_tower="gru", embed_dim=16, word_dim=8, text_hidden=8,
                    vocab_size=30522)
FAST = dict(num_epochs=2, batch_size=16, image_size=16, lr=3e-3, warmup_epochs=0.5)
RUNTIME = T.Runtime(eval_batch_size=64)


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def train_split(small_tiny):
    return read_dataset(small_tiny).split("train")


@pytest.fixture
def copy_of_tiny(small_tiny, tmp_path):
    """A private copy of the small dataset, to change its images."""
    return shutil.copytree(small_tiny, tmp_path / "tiny")


@pytest.fixture
def decodes(monkeypatch):
    """Counts the images the pipelines decode from now on."""
    count = {"n": 0}
    original = P.load_image

    def counting(path):
        count["n"] += 1
        return original(path)

    monkeypatch.setattr(P, "load_image", counting)
    return count


def _images(split, pipeline, cache_dir, **runtime):
    return P.load_split_images(split, 16, T.Runtime(images=pipeline, **runtime), cache_dir)


@pytest.mark.parametrize("epoch_seed", [None, 5])  # torch's running generator, or fit's per-(epoch, caption) seeds
def test_the_three_pipelines_give_the_same_pixels_and_the_same_first_batch(train_split, tokenizer, tmp_path,
                                                                           epoch_seed):
    memory = _images(train_split, "memory", tmp_path)
    disk = _images(train_split, "disk", tmp_path)
    stream = _images(train_split, "stream", tmp_path)
    assert isinstance(disk, DiskImages) and isinstance(stream, StreamedImages)
    assert torch.equal(disk[:], memory) and torch.equal(stream[3:7], memory[3:7]) and torch.equal(stream[5], memory[5])
    batches = []
    for images in (memory, disk, stream):  # the random flip included: the same draws, the same pairs
        dataset = D.ImageTextDataset(train_split, CaptionAwareHorizontalFlip(0.5, "swap"), images=images)
        dataset.set_epoch_seed(epoch_seed)
        loader = D.make_loader(dataset, 32, shuffle=True, seed=7, collate_fn=D.Collator(tokenizer, 32))
        torch.manual_seed(0)
        batches.append(next(iter(loader)))
    first = batches[0]
    for other in batches[1:]:
        assert torch.equal(other.images, first.images) and other.captions == first.captions
        assert torch.equal(other.caption_index, first.caption_index)
    assert not torch.equal(first.images, memory[first.image_index])  # some pairs were flipped


def test_frozen_tower_features_are_the_same_from_every_pipeline(train_split, tmp_path):
    tower = build_model(SMALL).image_tower.eval()
    features = [T.encode_image_tensors(tower, _images(train_split, p, tmp_path), torch.device("cpu"), 20)
                for p in ("memory", "disk", "stream")]
    assert torch.equal(features[0], features[1]) and torch.equal(features[0], features[2])


# --------------------------------------------------------------------------- fit_at_scale on one process


def _fit(data_dir, tokenizer, at_scale=True, runtime=RUNTIME, **options):
    data = read_dataset(data_dir)
    config = T.TrainConfig(**FAST)
    seed_everything(config.seed)
    train = fit_at_scale if at_scale else T.fit
    return train(build_model(SMALL), data.split("train"), data.split("val"), config, tokenizer, runtime=runtime,
                 progress=False, log=None, **options)


def _assert_same_run(result, reference):
    assert not result.model.is_frozen("image")  # the flip was active
    columns = [c for c in reference.history.columns if c != "seconds"]
    assert len(reference.history) == FAST["num_epochs"]
    assert result.history[columns].equals(reference.history[columns])
    ours, theirs = result.model.state_dict(), reference.model.state_dict()
    assert ours.keys() == theirs.keys()
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key


@pytest.fixture(scope="module")
def plain_run(small_tiny, tokenizer):
    """Chapter 03's `fit`, on one process with images in memory: the run every variant below must repeat."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit(small_tiny, tokenizer, at_scale=False)
    finally:
        torch.set_num_threads(before)


def test_fit_at_scale_on_one_process_is_chapter_03s_fit_to_the_bit(plain_run, small_tiny, tokenizer):
    _assert_same_run(_fit(small_tiny, tokenizer), plain_run)


def test_training_from_the_disk_cache_repeats_training_from_memory_to_the_bit(plain_run, small_tiny, tokenizer,
                                                                              tmp_path):
    _assert_same_run(_fit(small_tiny, tokenizer, runtime=T.Runtime(eval_batch_size=64, images="disk"),
                          cache_dir=tmp_path), plain_run)
    assert len(list(tmp_path.glob("*.npy"))) == 2  # train and val, cached


def test_persistent_workers_and_a_resume_with_other_runtime_settings_repeat_the_plain_run(plain_run, small_tiny,
                                                                                           tokenizer, tmp_path):
    """Flips included: each pair's draw depends on the epoch and the caption alone, not on the worker that loads
    it, and workers kept alive across epochs see every new epoch's seed."""
    streamed = T.Runtime(eval_batch_size=64, images="stream", num_workers=2, persistent_workers=True,
                         prefetch_factor=3)
    _assert_same_run(_fit(small_tiny, tokenizer, runtime=streamed), plain_run)
    assert not multiprocessing.active_children()  # the persistent workers stopped with the run
    # Interrupted after one epoch of chapter 03's fit, resumed by fit_at_scale with other runtime settings.
    _fit(small_tiny, tokenizer, at_scale=False, out_dir=tmp_path / "run", stop_after=1)
    other = T.Runtime(eval_batch_size=5, images="disk", num_workers=2, persistent_workers=True, amp=False)
    resumed = _fit(small_tiny, tokenizer, runtime=other, out_dir=tmp_path / "run", resume=True,
                   cache_dir=tmp_path / "cache")
    _assert_same_run(resumed, plain_run)
    assert T.load_checkpoint(tmp_path / "run")["epoch"] == 2
    assert not multiprocessing.active_children()


# --------------------------------------------------------------------------- the disk cache's life cycle


def test_disk_cache_is_reused_not_rebuilt(train_split, tmp_path, decodes):
    first = build_image_cache(train_split, 16, tmp_path)
    assert decodes["n"] == len(train_split)
    stamp = first.path.stat().st_mtime_ns
    second = build_image_cache(train_split, 16, tmp_path)
    assert decodes["n"] == len(train_split) and second.path == first.path and second.path.stat().st_mtime_ns == stamp
    assert first.path.parent == tmp_path and [p.name for p in tmp_path.iterdir()] == [first.path.name]
    other_size = build_image_cache(train_split, 8, tmp_path)  # another size is another cache, kept beside it
    assert other_size.path != first.path and first.path.exists()


def test_disk_cache_is_rebuilt_when_an_image_changes(copy_of_tiny, tmp_path, decodes):
    split = read_dataset(copy_of_tiny).split("train")
    old = build_image_cache(split, 16, tmp_path / "cache")
    before = old[0].clone()
    from PIL import Image

    Image.new("RGB", (16, 16), (0, 255, 0)).save(split[0].path)  # a new picture under the same name
    decodes["n"] = 0
    new = build_image_cache(split, 16, tmp_path / "cache")
    assert decodes["n"] == len(split) and new.path != old.path and not old.path.exists()  # the stale file is gone
    assert not torch.equal(new[0], before) and torch.equal(new[:], T.prepare_images(split, 16))


def test_an_interrupted_cache_build_is_never_reused(train_split, tmp_path, monkeypatch, decodes):
    original = P.load_image

    def killed_after_five(path):
        if decodes["n"] >= 5:
            raise KeyboardInterrupt
        decodes["n"] += 1
        return original(path)

    monkeypatch.setattr(P, "load_image", killed_after_five)
    with pytest.raises(KeyboardInterrupt):
        build_image_cache(train_split, 16, tmp_path)
    assert list(tmp_path.iterdir()) == []  # no half-written cache under any name
    monkeypatch.setattr(P, "load_image", original)
    cache = build_image_cache(train_split, 16, tmp_path)
    assert torch.equal(cache[:], T.prepare_images(train_split, 16))
    # A process killed outright leaves a truncated file behind: it is not taken for a cache either.
    data = cache.path.read_bytes()
    cache.path.write_bytes(data[: len(data) // 2])
    counted = {"n": 0}

    def counting(path):
        counted["n"] += 1
        return original(path)

    monkeypatch.setattr(P, "load_image", counting)
    rebuilt = build_image_cache(train_split, 16, tmp_path)
    assert counted["n"] == len(train_split) and torch.equal(rebuilt[:], T.prepare_images(train_split, 16))


def test_disk_images_reopen_the_file_in_workers_instead_of_copying_it(train_split, tmp_path):
    import pickle

    cache = build_image_cache(train_split, 16, tmp_path)
    cache[0]  # opened here
    clone = pickle.loads(pickle.dumps(cache))
    assert clone._array is None and len(pickle.dumps(cache)) < 1000
    assert torch.equal(clone[2], cache[2])
    assert isinstance(cache.array, np.memmap)


def _corrupt(copy_of_tiny):
    data = read_dataset(copy_of_tiny)
    bad = data.split("train")[3].path
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return data.split("train"), bad


def test_a_corrupt_image_is_named_when_caching_and_when_streaming(copy_of_tiny, tmp_path):
    split, bad = _corrupt(copy_of_tiny)
    with pytest.raises(DatasetError, match=bad.name):
        build_image_cache(split, 16, tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
    with pytest.raises(DatasetError, match=bad.name):
        StreamedImages(split, 16)[3]
    with pytest.raises(DatasetError, match=bad.name):  # the same from a worker process
        build_image_cache(split, 16, tmp_path / "cache", num_workers=1)
    assert not multiprocessing.active_children()  # its worker stopped, though the error still refers to it


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize("settings, message", [
    ({"images": "ram"}, "images='ram'; use one of 'memory', 'disk', 'stream'"),
    ({"prefetch_factor": 0}, "prefetch_factor=0 must be a positive"),
    ({"channels_last": "yes"}, "channels_last='yes' must be True or False"),
    ({"persistent_workers": 1}, "persistent_workers=1 must be True or False"),
    ({"compile": ""}, "compile='': use False, True"),
])
def test_bad_pipeline_settings_are_named(settings, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        T.Runtime(**settings)


def test_checkpoints_that_stored_the_pipeline_settings_in_the_recipe_still_load():
    old = {**T.TrainConfig().to_dict(), "images": "disk", "persistent_workers": True, "prefetch_factor": 4,
           "channels_last": True, "compile": "eager"}
    assert T.TrainConfig.from_dict(old) == T.TrainConfig()


@pytest.mark.parametrize("flags, message", [
    (["--images", "ram"], "argument --images: invalid choice: 'ram'"),
    (["--compile", "nosuch"], "'nosuch' is not a torch.compile backend"),
    (["--prefetch-factor", "0"], "--prefetch-factor"),
])
def test_bad_cli_values_are_named(small_tiny, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--data", str(small_tiny), "--out", str(tmp_path / "run"), *flags])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- channels-last and torch.compile


def _one_step(runtime, images, ids, mask, index):
    torch.manual_seed(0)
    model = build_model(SMALL)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    loss = TrainStep(model, T.TrainConfig(**FAST), runtime)(images, ids, mask, index)
    loss.backward()
    return loss.detach(), {k: p.grad for k, p in model.named_parameters()}


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 2000, (6, 5), generator=g)
    return torch.randn(6, 3, 16, 16, generator=g), ids, torch.ones_like(ids), torch.arange(6)


def test_channels_last_gives_the_same_loss_and_gradients():
    batch = _batch()
    loss, grads = _one_step(T.Runtime(), *batch)
    loss_cl, grads_cl = _one_step(T.Runtime(channels_last=True), *batch)
    torch.testing.assert_close(loss_cl, loss, atol=1e-6, rtol=1e-6)
    for k in grads:  # summed in another order: the 6,272-feature projection differs by a few 1e-6
        torch.testing.assert_close(grads_cl[k], grads[k], atol=1e-5, rtol=1e-4)
    assert grads_cl["image_tower.layers.0.weight"].is_contiguous(memory_format=torch.channels_last)


def test_compiled_towers_give_the_same_loss_and_unknown_backends_are_named():
    batch = _batch()
    loss, grads = _one_step(T.Runtime(), *batch)
    loss_c, grads_c = _one_step(T.Runtime(compile="eager"), *batch)  # dynamo's tracing, no codegen
    torch.testing.assert_close(loss_c, loss, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grads_c["text_proj.weight"], grads["text_proj.weight"], atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="no backend 'nosuch'"):
        TrainStep(build_model(SMALL), T.TrainConfig(**FAST), T.Runtime(compile="nosuch"))


def test_a_compiler_that_fails_is_reported_with_what_to_do():
    import torch._dynamo

    @torch._dynamo.register_backend(name="always_fails")
    def always_fails(gm, example_inputs):
        raise RuntimeError("no C compiler here")

    torch._dynamo.reset()
    step = TrainStep(build_model(SMALL), T.TrainConfig(**FAST), T.Runtime(compile="always_fails"))
    with pytest.raises(RuntimeError, match="failed on the first batch .*train without compiling"):
        step(*_batch())


def test_chapter_03s_fit_points_to_fit_at_scale_for_these_settings(small_tiny, tokenizer):
    for runtime in (T.Runtime(channels_last=True), T.Runtime(compile="eager"), T.Runtime(persistent_workers=True)):
        with pytest.raises(ValueError, match="fit_at_scale"):
            _fit(small_tiny, tokenizer, at_scale=False, runtime=runtime)

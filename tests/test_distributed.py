"""Multi-process training: two CPU processes (Gloo, 127.0.0.1) compute the contrastive loss on their
gathered batch; its value and every parameter's gradient (after DistributedDataParallel's averaging)
equal the single-process ones on the concatenated batch; `fit_at_scale` runs, splits every epoch between
the processes, flips each pair as one process would, writes one checkpoint from rank 0 and resumes.

The two processes are started once for the module (that is most of the time these tests take); each
writes what it saw to a file, and the tests check the files."""

import copy
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from siamese_utils.chapters.scaling import distributed as D
from siamese_utils.core.losses import contrastive_loss
from siamese_utils.core.train import TrainConfig

SMALL = dict(image_tower="seed_cnn", text_tower="gru", embed_dim=16, word_dim=8, text_hidden=8, vocab_size=30522)
WORLD = 2
PER_RANK = 4
GRAD_LOSSES = ("infonce", "hinge")
FIT = TrainConfig(num_epochs=2, batch_size=16, image_size=16, lr=3e-3, warmup_epochs=0.5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _global_batch():
    """8 pairs of 16-px images and short captions; images 0 and 1 appear on both processes."""
    g = torch.Generator().manual_seed(0)
    images = torch.randn(WORLD * PER_RANK, 3, 16, 16, generator=g)
    input_ids = torch.randint(1000, 2000, (WORLD * PER_RANK, 6), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[::3, 4:] = 0
    image_index = torch.tensor([0, 1, 2, 3, 0, 5, 1, 7])
    return images, input_ids, attention_mask, image_index


def _gradient_check(rank: int, out) -> None:
    from siamese_utils.chapters.scaling.train import TrainStep
    from siamese_utils.core.models import ModelConfig, build_model
    from siamese_utils.core.train import Runtime, TrainConfig

    images, input_ids, attention_mask, image_index = _global_batch()
    mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    for name in GRAD_LOSSES:
        torch.manual_seed(0)
        model = build_model(ModelConfig(**SMALL))
        reference = copy.deepcopy(model)
        # One process, the whole batch.
        img_emb, txt_emb = reference(images, input_ids, attention_mask)
        ref_loss = contrastive_loss(name, img_emb, txt_emb, image_index, logit_scale=reference.logit_scale)
        ref_loss.backward()
        # Two processes, half each, through what `fit_at_scale` runs: TrainStep in DistributedDataParallel.
        config = TrainConfig(loss=name, batch_size=WORLD * PER_RANK)
        step = torch.nn.parallel.DistributedDataParallel(TrainStep(model, config, Runtime(amp=False)),
                                                         find_unused_parameters=name != "infonce")
        loss = step(images[mine], input_ids[mine], attention_mask[mine], image_index[mine])
        loss.backward()
        local = contrastive_loss(name, *model(images[mine], input_ids[mine], attention_mask[mine]),
                                 image_index[mine], logit_scale=model.logit_scale)
        torch.save({"loss": loss.detach(), "local_loss": local.detach(), "ref_loss": ref_loss.detach(),
                    "grads": {k: p.grad for k, p in model.named_parameters()},
                    "ref_grads": {k: p.grad for k, p in reference.named_parameters()}},
                   out / f"grads-{name}-rank{rank}.pt")


def _fit_run(rank: int, out, data_dir) -> None:
    from siamese_utils.chapters.scaling.train import fit_at_scale
    from siamese_utils.core import train as T
    from siamese_utils.core.data import ImageTextDataset, read_dataset
    from siamese_utils.core.models import ModelConfig, build_model
    from siamese_utils.core.runtime import seed_everything
    from siamese_utils.core.text import load_tokenizer

    seen: list[tuple[int, torch.Tensor, str]] = []  # every pair this process loaded: caption index, image, caption
    original = ImageTextDataset.__getitem__

    def recording(self, j):
        item = original(self, j)
        seen.append((int(j), item["image"].clone(), item["caption"]))
        return item

    ImageTextDataset.__getitem__ = recording
    data = read_dataset(data_dir)
    results = []
    for resume, stop_after in ((False, 1), (True, None)):  # interrupted after one epoch, then resumed
        seed_everything(FIT.seed)
        model = build_model(ModelConfig(**SMALL))  # the seed CNN, trained: every pair goes through the flip
        results.append(fit_at_scale(model, data.split("train"), data.split("val"), FIT, load_tokenizer(),
                                    runtime=T.Runtime(eval_batch_size=64), out_dir=out / "run", resume=resume,
                                    stop_after=stop_after, progress=False, log=None))
    torch.save({"seen": seen, "history_rows": [len(r.history) for r in results],
                "val_metrics": [r.val_metrics for r in results]}, out / f"fit-rank{rank}.pt")


def _worker(rank: int, port: int, out, data_dir) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", SIAMESE_OFFLINE="1")
    torch.set_num_threads(1)
    with D.process_group("cpu") as ctx:
        assert (ctx.rank, ctx.world_size, ctx.backend) == (rank, WORLD, "gloo")
        _gradient_check(rank, out)
        _fit_run(rank, out, data_dir)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, small_tiny):
    out = tmp_path_factory.mktemp("ddp")
    # Forked, not spawned: the children start with this process's imports instead of repeating them.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    mp.start_processes(_worker, args=(_free_port(), out, small_tiny), nprocs=WORLD, join=True, start_method="fork")
    assert not D.is_distributed()  # nothing leaks into this process
    return out


@pytest.mark.parametrize("name", GRAD_LOSSES)
def test_gathered_loss_and_gradients_equal_one_process_on_the_whole_batch(two_processes, name):
    for rank in range(WORLD):
        r = torch.load(two_processes / f"grads-{name}-rank{rank}.pt")
        torch.testing.assert_close(r["loss"], r["ref_loss"], atol=1e-6, rtol=1e-6)
        # The negatives really came from the other process: the local batch alone gives another loss.
        assert abs(float(r["local_loss"]) - float(r["ref_loss"])) > 1e-3
        assert r["grads"].keys() == r["ref_grads"].keys()
        for key, ref in r["ref_grads"].items():
            got = r["grads"][key]
            if ref is None:  # the temperature, unused by the hinge loss, gets no gradient either way
                assert got is None or not got.any(), key
                continue
            assert got is not None, key
            torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5, msg=lambda m, key=key: f"{name} {key}: {m}")


def _seen(out):
    return [torch.load(out / f"fit-rank{rank}.pt")["seen"] for rank in range(WORLD)]


def test_fit_gives_each_process_a_disjoint_share_of_every_epoch(two_processes, small_tiny):
    from siamese_utils.core.data import read_dataset

    pairs = read_dataset(small_tiny).split("train").num_captions
    seen = [[j for j, _, _ in s] for s in _seen(two_processes)]
    per_epoch = pairs // WORLD
    for rank in range(WORLD):
        assert len(seen[rank]) == FIT.num_epochs * per_epoch
    for e in range(FIT.num_epochs):
        a, b = (set(s[e * per_epoch:(e + 1) * per_epoch]) for s in seen)
        assert len(a) == len(b) == per_epoch and not a & b
    assert seen[0][:per_epoch] != seen[0][per_epoch:]  # reshuffled for the second epoch


def test_every_pair_is_flipped_as_one_process_would_flip_it(two_processes, small_tiny):
    """The flip of a pair depends on the epoch and the caption alone, not on the process that loads it."""
    from siamese_utils.core import train as T
    from siamese_utils.core.data import read_dataset
    from siamese_utils.core.models import ModelConfig, build_model
    from siamese_utils.core.runtime import epoch_seed

    split = read_dataset(small_tiny).split("train")
    images = T.prepare_images(split, FIT.image_size)
    pairs, features = T.training_pairs(build_model(ModelConfig(**SMALL)), split, images, FIT, torch.device("cpu"))
    assert not features and pairs.transform is not None  # pixels, through the caption-aware flip
    per_epoch = split.num_captions // WORLD
    flipped = 0
    for e in range(FIT.num_epochs):
        pairs.set_epoch_seed(epoch_seed(FIT.seed, e))  # as fit does on one process
        for seen in _seen(two_processes):
            for j, image, caption in seen[e * per_epoch:(e + 1) * per_epoch]:
                expected = pairs[j]
                assert torch.equal(image, expected["image"]) and caption == expected["caption"], (e, j)
                flipped += not torch.equal(image, images[split.txt_to_img[j]])
    assert 0.3 < flipped / (FIT.num_epochs * WORLD * per_epoch) < 0.7  # about half of the pairs, flipped


def test_only_rank_zero_validates_and_its_checkpoint_resumes_and_loads(two_processes):
    from siamese_utils.core.train import load_checkpoint, load_model

    main, other = (torch.load(two_processes / f"fit-rank{rank}.pt") for rank in range(WORLD))
    assert main["history_rows"] == [1, 2]  # one epoch, then resumed for the second
    assert other["history_rows"] == [0, 0] and other["val_metrics"] == [{}, {}]
    state = load_checkpoint(two_processes / "run")
    assert state["epoch"] == 2 and len(state["history"]) == 2
    assert (two_processes / "run" / "history.csv").is_file()
    model = load_model(two_processes / "run")
    assert not model.training


def test_without_a_process_group_everything_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = D.init_from_env("cpu")
    assert (ctx.rank, ctx.world_size, ctx.backend) == (0, 1, None) and D.world_size() == 1 and D.is_main_process()
    x = torch.randn(3, 4, requires_grad=True)
    assert D.all_gather_with_grad(x) is x
    emb = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    assert torch.equal(D.gathered_contrastive_loss("hinge", emb, emb), contrastive_loss("hinge", emb, emb))


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not a number"),
    ({"WORLD_SIZE": "2"}, "RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set"),
    ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"},
     "RANK=2 must be below WORLD_SIZE=2"),
])
def test_bad_torchrun_environment_is_named(monkeypatch, env, message):
    for name in D.ENV_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        D.init_from_env("cpu")

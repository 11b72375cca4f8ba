"""The training loop: reproducibility, checkpoints, resuming, feature caching and the schedule."""

import dataclasses
import json
import re

import pytest
import torch

from siamese_utils.core import train as T
from siamese_utils.core.data import ImageTextDataset, read_dataset
from siamese_utils.core.metrics import METRIC_KEYS
from siamese_utils.core.models import ModelConfig, build_model
from siamese_utils.core.runtime import seed_everything

SMALL = ModelConfig(image_tower="seed_cnn", text_tower="gru", embed_dim=16, word_dim=8, text_hidden=8,
                    vocab_size=30522)
FAST = dict(num_epochs=3, batch_size=16, image_size=16, lr=3e-3, warmup_epochs=0.5)
RUNTIME = T.Runtime(eval_batch_size=64)


@pytest.fixture(autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _run(data_dir, tokenizer, model_config=SMALL, out_dir=None, resume=False, stop_after=None, runtime=RUNTIME,
         **train):
    data = read_dataset(data_dir)
    config = T.TrainConfig(**{**FAST, **train})
    seed_everything(config.seed)
    model = build_model(model_config)
    return T.fit(model, data.split("train"), data.split("val"), config, tokenizer, runtime=runtime, out_dir=out_dir,
                 resume=resume, stop_after=stop_after, progress=False, log=None)


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_gives_identical_history_and_weights(small_tiny, tokenizer):
    """Two runs with one seed (and one thread count) agree to the bit: weights, losses, metrics."""
    a = _run(small_tiny, tokenizer)
    b = _run(small_tiny, tokenizer)
    assert _same_weights(_weights(a.model), _weights(b.model))
    columns = [c for c in a.history.columns if c != "seconds"]
    assert a.history[columns].equals(b.history[columns])
    c = _run(small_tiny, tokenizer, seed=1)
    assert not _same_weights(_weights(a.model), _weights(c.model))


def test_history_has_loss_temperature_and_validation_recall(small_tiny, tokenizer):
    result = _run(small_tiny, tokenizer)
    h = result.history
    assert list(h["epoch"]) == [1, 2, 3]
    assert {"loss", "temperature", "lr", "seconds"} <= set(h.columns)
    assert {f"val_{k}" for k in METRIC_KEYS} <= set(h.columns)
    assert h["loss"].iloc[-1] < h["loss"].iloc[0]  # it learns something
    assert h["temperature"].iloc[-1] != pytest.approx(0.07, abs=1e-6)  # InfoNCE trains the temperature
    assert result.val_metrics == {k: h[f"val_{k}"].iloc[-1] for k in METRIC_KEYS}


def test_resume_after_an_interruption_equals_an_uninterrupted_run(small_tiny, tokenizer, tmp_path):
    """Stopped after epoch 1 and resumed from its checkpoint: same weights and history as one run."""
    whole = _run(small_tiny, tokenizer, out_dir=tmp_path / "whole")
    _run(small_tiny, tokenizer, out_dir=tmp_path / "cut", stop_after=1)
    state = T.load_checkpoint(tmp_path / "cut" / "model.pt")
    assert state["epoch"] == 1 and len(state["history"]) == 1
    resumed = _run(small_tiny, tokenizer, out_dir=tmp_path / "cut", resume=True)
    assert _same_weights(_weights(whole.model), _weights(resumed.model))
    columns = [c for c in whole.history.columns if c != "seconds"]
    assert whole.history[columns].equals(resumed.history[columns])
    assert (tmp_path / "cut" / "history.csv").read_text().count("\n") == 4  # header + 3 epochs


def test_resume_with_other_runtime_settings_equals_an_uninterrupted_run(small_tiny, tokenizer, tmp_path):
    """The runtime is not the recipe: loader workers and evaluation batches may change on resume, the result may not.

    The model trains its image tower, so every pair goes through the random flip: its draws depend on the epoch
    and the caption alone, not on which process loads the pair.
    """
    whole = _run(small_tiny, tokenizer, out_dir=tmp_path / "whole")
    _run(small_tiny, tokenizer, out_dir=tmp_path / "cut", stop_after=1)
    other = T.Runtime(num_workers=2, eval_batch_size=5, amp=False)
    resumed = _run(small_tiny, tokenizer, out_dir=tmp_path / "cut", resume=True, runtime=other)
    assert not resumed.model.is_frozen("image")
    assert _same_weights(_weights(whole.model), _weights(resumed.model))
    columns = [c for c in whole.history.columns if c != "seconds"]
    assert whole.history[columns].equals(resumed.history[columns])


def test_a_frozen_image_tower_resumes_with_other_runtime_settings_to_the_same_weights(small_tiny, tokenizer, tmp_path):
    """With cached features, the evaluation batch size sets only validation batches, never the feature pass."""
    frozen = ModelConfig.from_dict({**SMALL.to_dict(), "freeze_image": True})
    whole = _run(small_tiny, tokenizer, model_config=frozen, out_dir=tmp_path / "whole")
    _run(small_tiny, tokenizer, model_config=frozen, out_dir=tmp_path / "cut", stop_after=1)
    resumed = _run(small_tiny, tokenizer, model_config=frozen, out_dir=tmp_path / "cut", resume=True,
                   runtime=T.Runtime(num_workers=1, eval_batch_size=3))
    assert _same_weights(_weights(whole.model), _weights(resumed.model))


def test_fit_leaves_chapter_08_settings_to_fit_at_scale(small_tiny, tokenizer):
    with pytest.raises(ValueError, match="images='disk'.*fit_at_scale"):
        _run(small_tiny, tokenizer, runtime=T.Runtime(images="disk"))


def test_resume_refuses_other_settings_and_missing_checkpoints(small_tiny, tokenizer, tmp_path):
    _run(small_tiny, tokenizer, out_dir=tmp_path, stop_after=1)
    with pytest.raises(ValueError, match=r"trained with another model or recipe \(lr\)"):
        _run(small_tiny, tokenizer, out_dir=tmp_path, resume=True, lr=1e-2)
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        _run(small_tiny, tokenizer, out_dir=tmp_path / "empty", resume=True)


@pytest.mark.parametrize("loss", ["cosine", "hinge", "hardest"])
def test_every_loss_trains(small_tiny, tokenizer, loss):
    result = _run(small_tiny, tokenizer, loss=loss, num_epochs=2, hardest_warmup_epochs=1)
    assert result.history["loss"].notna().all()
    assert all(t == pytest.approx(0.07) for t in result.history["temperature"])  # only InfoNCE moves it


def test_hardest_negative_warm_up_uses_the_sum_first(small_tiny, tokenizer, monkeypatch):
    calls = []
    real = T.contrastive_loss

    def spy(name, *args, hardest=True, **kw):
        calls.append(hardest)
        return real(name, *args, hardest=hardest, **kw)

    monkeypatch.setattr(T, "contrastive_loss", spy)
    _run(small_tiny, tokenizer, loss="hardest", num_epochs=3, hardest_warmup_epochs=2)
    steps = len(calls) // 3
    assert calls == [False] * (2 * steps) + [True] * steps


def test_frozen_image_tower_features_are_computed_once(small_tiny, tokenizer, monkeypatch):
    """With a frozen image tower, training steps run only the projection, never the tower."""
    config = ModelConfig.from_dict({**SMALL.to_dict(), "freeze_image": True})
    counter = {"tower": 0}
    original = build_model

    def counting_build(cfg):
        model = original(cfg)
        model.image_tower.register_forward_hook(lambda *a: counter.__setitem__("tower", counter["tower"] + 1))
        return model

    monkeypatch.setattr(T, "build_model", counting_build, raising=False)
    data = read_dataset(small_tiny)
    model = counting_build(config)
    before = {k: v.clone() for k, v in model.image_tower.state_dict().items()}
    T.fit(model, data.split("train"), data.split("val"), T.TrainConfig(**FAST), tokenizer, runtime=RUNTIME, progress=False, log=None)
    # one pass over the 48 train and one over the 12 val images (one batch each), none per step
    assert counter["tower"] == 2
    assert _same_weights(before, model.image_tower.state_dict())
    with pytest.raises(ValueError, match="needs a frozen image tower"):
        T.fit(build_model(SMALL), data.split("train"), data.split("val"),
              T.TrainConfig(**FAST, cache_features=True), tokenizer, progress=False, log=None)


def test_schedule_warms_up_then_decays_to_zero():
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=1.0)
    sched = T.make_scheduler(opt, T.TrainConfig(num_epochs=4, warmup_epochs=1), steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[25] == pytest.approx(0.5, abs=0.06)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] < 0.01
    constant = T.make_scheduler(torch.optim.AdamW([param], lr=1.0),
                                T.TrainConfig(warmup_epochs=0, schedule="constant"), 10)
    assert constant.get_last_lr() == [1.0]


def test_optimizer_skips_weight_decay_on_biases_and_temperature():
    model = build_model(SMALL)
    opt = T.make_optimizer(model, T.TrainConfig(weight_decay=0.1))
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    assert id(model.logit_scale) not in decayed and id(model.image_proj.bias) not in decayed
    assert id(model.image_proj.weight) in decayed
    assert opt.param_groups[1]["weight_decay"] == 0.0


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(loss="triplet"), "loss='triplet'; use one of 'cosine', 'hinge', 'hardest', 'infonce'"),
        (dict(num_epochs=0), "num_epochs=0 must be a positive integer"),
        (dict(batch_size=1), "at least 2 pairs"),
        (dict(lr=-1.0), "lr=-1.0 must be a positive number"),
        (dict(schedule="step"), "schedule='step'"),
        (dict(grad_clip=0.0), "grad_clip=0.0"),
        (dict(num_workers=-1), "num_workers=-1"),
        (dict(images="cloud"), "images='cloud'; use one of 'memory', 'disk', 'stream'"),
        (dict(prefetch_factor=0), "prefetch_factor=0 must be a positive integer"),
        (dict(compile=""), "compile=''"),
    ],
)
def test_settings_reject_bad_values(settings, message):
    runtime = {f.name for f in dataclasses.fields(T.Runtime)}
    with pytest.raises(ValueError, match=re.escape(message)):
        (T.Runtime if set(settings) <= runtime else T.TrainConfig)(**settings)


def test_recipe_and_runtime_are_apart_and_old_checkpoints_still_read():
    recipe, runtime = {f.name for f in dataclasses.fields(T.TrainConfig)}, {f.name for f in dataclasses.fields(T.Runtime)}
    assert not recipe & runtime
    assert {"num_workers", "images", "compile", "channels_last", "prefetch_factor", "persistent_workers"} <= runtime
    # a checkpoint of the previous layout stored both in its "train_config"
    old = {**T.TrainConfig(lr=1e-3).to_dict(), **T.Runtime(num_workers=3).to_dict()}
    assert T.TrainConfig.from_dict(old) == T.TrainConfig(lr=1e-3)
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['lrr'\] for TrainConfig"):
        T.TrainConfig.from_dict({"lrr": 1})


def test_train_config_round_trips_and_refuses_unknown_keys():
    config = T.TrainConfig(loss="hardest", num_epochs=7)
    assert T.TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['epochs'\] for TrainConfig"):
        T.TrainConfig.from_dict({"epochs": 3})


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_gives_the_same_model(tmp_path, small_tiny, tokenizer):
    result = _run(small_tiny, tokenizer, out_dir=tmp_path, num_epochs=1)
    loaded = T.load_model(tmp_path)  # a run folder or the file itself
    assert loaded.config == SMALL and not loaded.training
    assert _same_weights(_weights(result.model), _weights(loaded))
    state = torch.load(tmp_path / "model.pt", weights_only=True)  # plain data only
    assert state["format"] == T.CHECKPOINT_FORMAT and state["version"] == T.CHECKPOINT_VERSION
    assert state["train_config"] == T.TrainConfig(**{**FAST, "num_epochs": 1}).to_dict()
    assert set(state) >= {"model_config", "model", "optimizer", "scheduler", "epoch", "history"}


def test_loading_what_is_not_our_checkpoint_says_so(tmp_path):
    bare = tmp_path / "bare.pt"
    torch.save(build_model(SMALL).state_dict(), bare)
    with pytest.raises(T.CheckpointError, match=r"bare.pt: not a siamese_utils checkpoint .*load_state_dict"):
        T.load_checkpoint(bare)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(T.CheckpointError, match=r"notes.pt: not a file written by torch.save \(it starts with b'not '\)"):
        T.load_checkpoint(text)
    with pytest.raises(T.CheckpointError, match=r"missing.pt: no such checkpoint"):
        T.load_checkpoint(tmp_path / "missing.pt")


def test_newer_format_and_truncated_files_are_refused(tmp_path):
    model = build_model(SMALL)
    path = T.save_checkpoint(tmp_path / "model.pt", model)
    state = torch.load(path, weights_only=True)
    state["version"] = T.CHECKPOINT_VERSION + 1
    newer = tmp_path / "newer.pt"
    torch.save(state, newer)
    with pytest.raises(T.CheckpointError, match=r"newer.pt: checkpoint format version 2 is newer .* upgrade"):
        T.load_checkpoint(newer)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(T.CheckpointError, match="truncated.pt: cannot read it"):
        T.load_checkpoint(truncated)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(T.CheckpointError, match="empty.pt: not a file written by torch.save"):
        T.load_checkpoint(empty)


def test_checkpoint_with_code_in_it_is_not_executed(tmp_path):
    """weights_only=True: a pickle that would run code is refused, not run."""

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pt"
    torch.save({"format": T.CHECKPOINT_FORMAT, "version": 1, "payload": Evil()}, path)
    with pytest.raises(T.CheckpointError, match="evil.pt: cannot read it"):
        T.load_checkpoint(path)


def test_checkpoint_whose_weights_do_not_fit_its_config(tmp_path):
    path = T.save_checkpoint(tmp_path / "model.pt", build_model(SMALL))
    state = torch.load(path, weights_only=True)
    state["model_config"]["embed_dim"] = 32
    torch.save(state, path)
    with pytest.raises(T.CheckpointError, match="weights do not fit the model it describes"):
        T.load_model(path)
    state["model_config"]["colour"] = "red"
    torch.save(state, path)
    with pytest.raises(T.CheckpointError, match=r"model settings cannot be used .*'colour'"):
        T.load_model(path)


def test_saving_is_atomic(tmp_path, monkeypatch):
    """A save that fails half-way leaves the previous checkpoint whole."""
    model = build_model(SMALL)
    path = T.save_checkpoint(tmp_path / "model.pt", model, epoch=1)
    before = path.read_bytes()

    def failing_save(obj, f, *a, **kw):
        with open(f, "wb") as fh:
            fh.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        T.save_checkpoint(path, model, epoch=2)
    assert path.read_bytes() == before


def test_progress_bar_does_not_change_the_batches(small_tiny, tokenizer):
    """The epoch with a progress bar sees the same batches, in the same order, as a plain loop."""
    from siamese_utils.core.data import Collator, make_loader

    split = read_dataset(small_tiny).split("train")
    dataset = ImageTextDataset(split, images=T.prepare_images(split, 16))
    config = T.TrainConfig(**FAST)
    plain = [b.caption_index for b in make_loader(dataset, 16, shuffle=True, seed=3, collate_fn=Collator(tokenizer))]
    for progress in (False, True):
        model = build_model(SMALL)
        batches = []
        collate = Collator(tokenizer)

        def recording_collate(items, batches=batches, collate=collate):
            batches.append(collate(items))
            return batches[-1]

        loader = make_loader(dataset, 16, shuffle=True, seed=3, collate_fn=recording_collate)
        optimizer = T.make_optimizer(model, config)
        T.train_one_epoch(model, loader, optimizer, T.make_scheduler(optimizer, config, 3), config, 0,
                          torch.device("cpu"), progress=progress)
        assert [b.caption_index.tolist() for b in batches] == [p.tolist() for p in plain]


def test_freezing_after_building_keeps_the_config_and_the_feature_cache_in_step(small_tiny, tokenizer):
    model = build_model(ModelConfig.from_dict({**SMALL.to_dict(), "freeze_image": True}))
    model.freeze(image=False)
    assert model.config.freeze_image is False and not model.is_frozen("image")
    split = read_dataset(small_tiny).split("val")
    images, cpu = T.prepare_images(split, 16), torch.device("cpu")
    assert T.training_pairs(model, split, images, T.TrainConfig(), cpu)[1] is False  # so the image tower trains
    model = build_model(SMALL).freeze(image=True)
    assert model.config.freeze_image is True and T.training_pairs(model, split, images, T.TrainConfig(), cpu)[1] is True


def test_fit_with_checkpoints_needs_a_model_built_from_a_config(small_tiny, tokenizer, tmp_path):
    from siamese_utils.core.models import DualEncoder

    reference = build_model(SMALL)
    bare = DualEncoder(reference.image_tower, reference.text_tower, embed_dim=16)
    data = read_dataset(small_tiny)
    with pytest.raises(ValueError, match=r"build the model with build_model\(config\)"):
        T.fit(bare, data.split("train"), data.split("val"), T.TrainConfig(**FAST), tokenizer, out_dir=tmp_path,
              progress=False, log=None)
    assert not (tmp_path / "model.pt").exists()

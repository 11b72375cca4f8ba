"""How many image-text pairs per second does one training step process, and how much of the GPU does it use?

Two parts.

1. The reference recipe for real data, timed from synthetic tensors already on
   the device: a ResNet-50 image tower (torchvision, random weights) and a
   BERT-base text tower (``transformers.BertModel(BertConfig())``, random
   weights: nothing is downloaded), each projected to 256 dimensions and
   normalised, symmetric InfoNCE (``siamese_utils.core.losses.info_nce_loss``) and
   fused AdamW; batch 256, 224 px, 32 tokens. Four variants: float32 (TF32
   matmuls and convolutions on CUDA), bf16 autocast, bf16 + channels-last, and
   bf16 + channels-last + ``torch.compile``. Each gets a fresh model, warm-up
   steps, then ``--repeats`` windows of ``--steps`` timed steps between
   ``torch.cuda.synchronize()`` calls; the median window gives pairs/s.
   FLOPs per step are counted once, on one eager step (forward, backward; the
   optimizer's elementwise work is not counted), with
   ``torch.utils.flop_counter.FlopCounterMode``; model-FLOPs utilisation
   (MFU) is achieved FLOP/s over the GPU's dense peak for the variant's
   precision, from a small table by GPU name (``n/a`` on a CPU or an unknown
   GPU).
2. The project's own training path: a ``siamese_utils`` ``DualEncoder`` from
   ``build_model(ModelConfig(...))`` (ResNet-50 and the project's GRU text
   tower) trained by ``siamese_utils.core.train.train_one_epoch`` with
   chapter 09's ``TrainStep`` under ``Runtime(channels_last=True, amp=True,
   compile=...)``, fed as ``fit_at_scale`` feeds it: ``load_split_images``
   for each image pipeline (``images="memory"``, ``"disk"``, ``"stream"``:
   decoded in the loader's ``--workers`` processes every epoch), an
   ``ImageTextDataset`` with the caption-aware flip (seeded per epoch and
   caption), ``make_loader`` with pinned memory on CUDA; and, as the
   bound a loader cannot beat, from batches already on the device. Each
   pipeline's one-off setup (decoding once, writing the cache) is timed
   apart. ``train_one_epoch`` reads the loss back every step (a
   synchronisation), so a step is timed from one batch request to the next.

``--tiny`` (the default without CUDA) shrinks everything for a smoke run on a
CPU: ResNet-18, a 2-layer BERT of width 128, the seed's CNN and a small GRU
for the DualEncoder, batch 8, 64 px, two steps per variant (one warm-up, one
timed), and no ``torch.compile`` unless
``--compile``. Its numbers say that the script works, not how fast a GPU is:
on a CPU without native bf16 (AVX2 only), the backward pass of bf16
convolutions in the default memory format takes seconds per step whatever the
image size (channels-last is several times faster), so most of a tiny run is
spent in the ``bf16 autocast`` variant (``--image-tower mobilenet_v3_small``
makes it quick). Reference figures from one H200
(batch 256, PyTorch 2.11): 1,677 / 1,808 / 2,604 / 4,565 pairs/s for the four
variants (see benchmarks/RESULTS.md).

    python benchmarks/gpu_step.py [--tiny | --full] [--compile | --no-compile] [--data data/tiny] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
import transformers
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import siamese_utils as su
from siamese_utils.core.data import CaptionedImages
from siamese_utils.core.losses import info_nce_loss
from siamese_utils.chapters.towers import quiet_transformers
from siamese_utils.chapters.scaling.pipelines import load_split_images
from siamese_utils.chapters.scaling.train import TrainStep
from siamese_utils.core.data import ImageTextDataset
from siamese_utils.core.runtime import epoch_seed
from siamese_utils.core.train import Runtime, TrainConfig, make_optimizer, make_scheduler, train_one_epoch
from siamese_utils.core.transforms import CaptionAwareHorizontalFlip

# Dense peak TFLOP/s by GPU name (longest match first): (bf16/fp16 tensor cores, TF32, plain fp32).
# Vendor data sheets; SXM parts for H100/H200, whose PCIe/NVL parts are slower.
PEAK_TFLOPS: dict[str, tuple[float, float | None, float]] = {
    "H100 PCIe": (756.0, 378.0, 51.0),
    "H100 NVL": (835.0, 418.0, 60.0),
    "H200": (989.0, 495.0, 67.0),
    "H100": (989.0, 495.0, 67.0),
    "A100": (312.0, 156.0, 19.5),
    "L4": (121.0, 60.0, 30.3),
    "T4": (65.0, None, 8.1),  # fp16 tensor cores; no bf16 or TF32
}


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    autocast: bool
    channels_last: bool
    compile: bool


VARIANTS = [
    Variant("fp32, eager", False, False, False),
    Variant("{amp} autocast", True, False, False),
    Variant("{amp} + channels-last", True, True, False),
    Variant("{amp} + channels-last + torch.compile", True, True, True),
]


@dataclasses.dataclass(frozen=True)
class Size:
    image_tower: str
    bert: dict
    batch_size: int
    image_size: int
    tokens: int
    warmup: int
    steps: int
    repeats: int
    pipeline_steps: int
    pipeline_image_tower: str  # the DualEncoder's (a siamese_utils tower name)
    gru: dict  # word_dim and text_hidden of the DualEncoder's GRU text tower


FULL = Size("resnet50", {}, 256, 224, 32, warmup=5, steps=10, repeats=3, pipeline_steps=20,
            pipeline_image_tower="resnet50", gru={})
TINY = Size("resnet18", {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                         "intermediate_size": 512}, 8, 64, 32, warmup=1, steps=1, repeats=1, pipeline_steps=1,
            pipeline_image_tower="seed_cnn", gru={"word_dim": 64, "text_hidden": 128})


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The GPU's dense peak FLOP/s for ``precision`` (``"amp"``, ``"tf32"``, ``"fp32"``); ``None`` if unknown."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key in name:
            value = PEAK_TFLOPS[key][{"amp": 0, "tf32": 1, "fp32": 2}[precision]]
            return None if value is None else value * 1e12
    return None


class TwoTowers(nn.Module):
    """The reference recipe: a torchvision ResNet and a randomly initialised BERT, projected and normalised."""

    def __init__(self, image_tower: str, bert_overrides: dict, embed_dim: int = 256):
        super().__init__()
        self.image = torchvision.models.get_model(image_tower, weights=None)
        head = "fc" if hasattr(self.image, "fc") else "classifier"  # ResNets: fc; most others: classifier[-1]
        if isinstance(getattr(self.image, head), nn.Sequential):
            image_dim = getattr(self.image, head)[-1].in_features
            getattr(self.image, head)[-1] = nn.Identity()
        else:
            image_dim = getattr(self.image, head).in_features
            setattr(self.image, head, nn.Identity())
        with quiet_transformers():
            self.text = transformers.BertModel(transformers.BertConfig(**bert_overrides), add_pooling_layer=False)
        self.image_proj = nn.Linear(image_dim, embed_dim)
        self.text_proj = nn.Linear(self.text.config.hidden_size, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, images, input_ids, attention_mask):
        img_emb = F.normalize(self.image_proj(self.image(images)), dim=-1)
        hidden = self.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
        return img_emb, F.normalize(self.text_proj(hidden), dim=-1)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def adamw(params, device: torch.device) -> tuple[torch.optim.AdamW, str]:
    """Fused AdamW where this PyTorch build has it for ``device``, else the multi-tensor one."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=1e-4, fused=True), "fused"
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, lr=1e-4, foreach=True), "foreach"


def amp_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def time_recipe(variant: Variant, size: Size, device: torch.device, count_flops: bool, image_tower: str) -> dict:
    """Pairs/s of the reference recipe's training step for one variant (and its FLOPs per step if asked)."""
    torch.manual_seed(0)
    model = TwoTowers(image_tower, size.bert).to(device)
    b, s = size.batch_size, size.image_size
    images = torch.randn(b, 3, s, s, device=device)
    input_ids = torch.randint(1000, model.text.config.vocab_size, (b, size.tokens), device=device)
    attention_mask = torch.ones(b, size.tokens, dtype=torch.long, device=device)
    if variant.channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer, kind = adamw(model.parameters(), device)
    dtype = amp_dtype(device)
    scaler = torch.amp.GradScaler("cuda") if variant.autocast and dtype == torch.float16 else None
    forward = torch.compile(model) if variant.compile else model

    def step():
        autocast = torch.autocast(device.type, dtype=dtype) if variant.autocast else contextlib.nullcontext()
        with autocast:
            img_emb, txt_emb = forward(images, input_ids, attention_mask)
        loss = info_nce_loss(img_emb.float(), txt_emb.float(), model.logit_scale)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    flops = None
    if count_flops:  # one eager step, counted: matmuls and convolutions, forward and backward
        with FlopCounterMode(display=False) as counter:
            step()
        flops = counter.get_total_flops()
    for _ in range(size.warmup):
        step()
    windows = []
    for _ in range(size.repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(size.steps):
            step()
        synchronize(device)
        windows.append(time.perf_counter() - start)
    seconds = statistics.median(windows) / size.steps
    return {"variant": variant.name.format(amp=str(dtype).removeprefix("torch.").replace("bfloat16", "bf16")
                                           .replace("float16", "fp16")),
            "pairs_per_s": b / seconds, "step_ms": 1000 * seconds, "optimizer": kind, "flops_per_step": flops,
            "precision": "amp" if variant.autocast else ("tf32" if device.type == "cuda" else "fp32")}


class StepClock:
    """Wraps a loader and notes when each batch is asked for: step ``k`` runs from request ``k`` to ``k + 1``."""

    def __init__(self, batches):
        self.batches, self.marks, self.sizes = batches, [], []

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        batches = iter(self.batches)
        while True:
            self.marks.append(time.perf_counter())
            try:
                batch = next(batches)
            except StopIteration:
                return
            self.sizes.append(len(batch))
            yield batch


def train_settings(size: Size, workers: int, images: str, compile_: bool) -> tuple[TrainConfig, Runtime]:
    """The recipe and runtime ``fit_at_scale`` would get for this size: mixed precision (on CUDA), channels-last,
    the ``images`` pipeline."""
    recipe = TrainConfig(batch_size=size.batch_size, image_size=size.image_size, max_length=size.tokens,
                         loss="infonce", flip="swap")
    runtime = Runtime(num_workers=workers, amp=True, images=images, channels_last=True, compile=compile_)
    return recipe, runtime


def time_pipeline(size: Size, device: torch.device, data: Path, workers: int, compile_: bool,
                  tiny: bool) -> list[dict]:
    """``train_one_epoch`` on a DualEncoder, fed by each image pipeline of ``fit_at_scale``, and from batches on
    the device.

    As ``fit_at_scale`` builds it: ``load_split_images`` (``"memory"``:
    decoded once into RAM; ``"disk"``: once into a uint8 cache file;
    ``"stream"``: decoded in the loader's workers every time), an
    ``ImageTextDataset`` with the caption-aware flip, ``make_loader`` with
    ``workers`` processes and pinned memory on CUDA, and ``TrainStep`` for
    channels-last and compiling. The one-off setup (decoding, caching) is
    timed apart.
    """
    split = su.read_dataset(data).split("train")
    if len(split) == 0:
        raise SystemExit(f"{data}: its train split has no images; give a dataset folder with a train split")
    steps = size.warmup + size.pipeline_steps
    if tiny:  # only the images the few steps use, so that decoding the split once stays quick
        split = CaptionedImages(split.records[:steps * size.batch_size], split.source, split.name)
    tokenizer = su.load_tokenizer()
    collate = su.Collator(tokenizer, size.tokens)
    order = torch.randperm(split.num_captions, generator=torch.Generator().manual_seed(0))
    indices = order[torch.arange(steps * size.batch_size) % len(order)].tolist()
    model_config = su.ModelConfig(image_tower=size.pipeline_image_tower, text_tower="gru", embed_dim=256, **size.gru)
    label = f"DualEncoder ({size.pipeline_image_tower} + gru), train_one_epoch"

    def run(batches, config: TrainConfig, runtime: Runtime, how: str, setup_s: float | None) -> dict:
        su.seed_everything(0)
        model = su.build_model(model_config).to(device)
        model.to(memory_format=torch.channels_last)  # as fit_at_scale does with channels_last
        optimizer = make_optimizer(model, config)
        scheduler = make_scheduler(optimizer, config, steps)
        clock = StepClock(batches)
        train_one_epoch(model, clock, optimizer, scheduler, config, 0, device, features=False, progress=False,
                        step=TrainStep(model, config, runtime))
        timed = clock.sizes[size.warmup:]
        seconds = clock.marks[-1] - clock.marks[size.warmup]
        return {"variant": f"{label}, {how}", "pairs_per_s": sum(timed) / seconds, "step_ms": 1000 * seconds / len(timed),
                "optimizer": "AdamW (make_optimizer)", "flops_per_step": None, "setup_s": setup_s,
                "precision": "amp" if runtime.amp and device.type == "cuda" else "fp32"}

    rows = []
    pinned = ", pinned" if device.type == "cuda" else ""
    with tempfile.TemporaryDirectory() as cache_dir:
        for images in ("memory", "disk", "stream"):
            config, runtime = train_settings(size, workers, images, compile_)
            start = time.perf_counter()
            pixels = load_split_images(split, config.image_size, runtime, cache_dir)
            setup_s = time.perf_counter() - start
            pairs = ImageTextDataset(split, CaptionAwareHorizontalFlip(0.5, config.flip), images=pixels)
            pairs.set_epoch_seed(epoch_seed(config.seed, 0))  # as fit_at_scale seeds the first epoch
            loader = su.make_loader(torch.utils.data.Subset(pairs, indices), size.batch_size, shuffle=False,
                                    collate_fn=collate, num_workers=workers, pin_memory=device.type == "cuda")
            rows.append(run(loader, config, runtime, f'images="{images}" ({workers} workers{pinned})', setup_s))
            if images == "memory":  # two of these batches, collated once and moved to the device: no loader at all
                resident = [collate([pairs[j] for j in indices[i * size.batch_size:(i + 1) * size.batch_size]])
                            .to(device) for i in range(2)]
                rows.insert(0, run([resident[i % 2] for i in range(steps)], config, runtime, "batches on the device",
                                   None))
            del pixels, pairs, loader
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--tiny", action="store_true", help="small models for a CPU smoke run (default without CUDA)")
    mode.add_argument("--full", action="store_true", help="the reference sizes (default with CUDA)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="time the torch.compile variant (default: with --full only)")
    parser.add_argument("--image-tower", help="the recipe's torchvision image model (default: resnet50, with "
                        "--tiny resnet18; e.g. mobilenet_v3_small for a quicker smoke run on a CPU without bf16)")
    parser.add_argument("--data", type=Path, default=Path("data/tiny"), help="dataset folder (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="DataLoader worker processes (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on a CPU (default: %(default)s)")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the siamese_utils training-loop part")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.workers < 0 or args.threads < 1:
        parser.error(f"--workers must be >= 0 and --threads >= 1, got {args.workers} and {args.threads}")
    if not args.no_pipeline and not (args.data / "dataset.json").is_file() and not args.data.is_file():
        parser.error(f"--data {args.data}: no dataset there (no dataset.json); give a dataset folder, "
                     "e.g. data/tiny, or pass --no-pipeline")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tiny = args.tiny or (not args.full and device.type != "cuda")
    size = TINY if tiny else FULL
    image_tower = args.image_tower or size.image_tower
    if image_tower not in torchvision.models.list_models(module=torchvision.models):
        parser.error(f"--image-tower {image_tower}: not a torchvision classification model; choose one of "
                     f"{', '.join(torchvision.models.list_models(module=torchvision.models))}")
    use_compile = args.compile if args.compile is not None else not tiny
    started = time.perf_counter()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the fp32 variant: TF32 tensor cores, as measured on the H200
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
        where = f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
    else:
        torch.set_num_threads(args.threads)
        where = f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads, " \
                f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"
    print(f"{'tiny' if tiny else 'full'} sizes: {image_tower} + BERT "
          f"({'2 layers of width 128' if tiny else 'base'}), batch {size.batch_size}, {size.image_size} px, "
          f"{size.tokens} tokens; torch {torch.__version__}; {where}", flush=True)

    rows = []
    for i, variant in enumerate(VARIANTS):
        if variant.compile and not use_compile:
            continue
        row = time_recipe(variant, size, device, count_flops=i == 0, image_tower=image_tower)
        rows.append(row)
        print(f"  {row['variant']}: {row['pairs_per_s']:,.1f} pairs/s", flush=True)
    flops = rows[0]["flops_per_step"]
    for row in rows:
        row["flops_per_step"] = flops
        peak = peak_flops(device, row["precision"])
        row["mfu"] = None if peak is None else flops * row["pairs_per_s"] / size.batch_size / peak
    if not args.no_pipeline:
        for row in time_pipeline(size, device, args.data, args.workers, use_compile, tiny):
            row["mfu"] = None
            rows.append(row)
            setup = "" if row["setup_s"] is None else f" (one-off setup {row['setup_s']:.2f} s)"
            print(f"  {row['variant']}: {row['pairs_per_s']:,.1f} pairs/s{setup}", flush=True)

    print(f"\nFLOPs per step (FlopCounterMode, one eager step of the recipe): {flops / 1e9:,.2f} GFLOP, "
          f"{flops / size.batch_size / 1e9:,.2f} GFLOP per pair\n")
    print("| variant | pairs/s | ms/step | MFU |")
    print("|---|---:|---:|---:|")
    for row in rows:
        mfu = "n/a" if row["mfu"] is None else f"{100 * row['mfu']:.1f} %"
        print(f"| {row['variant']} | {row['pairs_per_s']:,.1f} | {row['step_ms']:,.1f} | {mfu} |")
    print(f"\nbenchmark took {time.perf_counter() - started:.0f} s")
    if args.json is not None:
        result = {"mode": "tiny" if tiny else "full", "device": where, "torch": torch.__version__,
                  "image_tower": image_tower,
                  "batch_size": size.batch_size, "image_size": size.image_size, "tokens": size.tokens,
                  "flops_per_step": flops, "rows": rows}
        tmp = args.json.with_name(f".{args.json.name}.tmp")
        tmp.write_text(json.dumps(result, indent=2), encoding="utf-8")
        os.replace(tmp, args.json)


if __name__ == "__main__":
    main()

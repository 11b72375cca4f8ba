"""The environment of every test run, whatever the shell exports.

Loaded by pytest before it collects anything (it sits at the root), so it also
holds for ``python -m pytest notebooks/03_contrastive_training.ipynb``; the
kernels that nbval starts for the notebooks inherit these variables.
"""

import os

# Offline: nothing may reach a model hub. Set before transformers or huggingface_hub
# are imported anywhere, since they read these at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["SIAMESE_OFFLINE"] = "1"  # torchvision's ImageNet weights: the local cache only
# Every notebook's short setting (SMOKE in its parameters cell): a test run never waits for a
# full one, with or without CI=true in the environment.
os.environ["SIAMESE_SMOKE"] = "1"
os.environ.setdefault("MPLBACKEND", "Agg")

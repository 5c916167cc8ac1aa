"""The speed benchmarks' input handling (their figures come from running them, not from tests)."""

from __future__ import annotations

import sys

import pytest

from benchmarks import vs_brecq


def test_vs_brecq_refuses_a_folder_that_is_not_the_brecq_checkout(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        vs_brecq.main(["--brecq", str(tmp_path / "nowhere")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "quant/block_recon.py" in err and vs_brecq.BRECQ_COMMIT in err

    (tmp_path / "quant").mkdir()
    (tmp_path / "quant" / "block_recon.py").write_text("def block_reconstruction():\n    device = 'cuda:1'\n")
    with pytest.raises(vs_brecq.CheckoutError, match="expected one line"):
        vs_brecq.load_brecq(str(tmp_path))


def test_vs_brecq_loads_block_recon_with_the_device_replaced(tmp_path, monkeypatch):
    pkg = tmp_path / "quant"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "block_recon.py").write_text(
        "import torch\n\ndef block_reconstruction():\n    device = 'cuda'\n    return torch.zeros(1).to(device).device.type\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "quant", raising=False)
    mod = vs_brecq.load_brecq(str(tmp_path))
    assert mod.block_reconstruction() == "cpu"
    assert mod.__file__ == str(pkg / "block_recon.py")


@pytest.mark.parametrize("argv", [["--stages", "weights"], ["--precisions", "fp16"], ["--iters", "2"]])
def test_vs_brecq_rejects_bad_options(argv, capsys):
    with pytest.raises(SystemExit) as e:
        vs_brecq.main(["--brecq", "/x", *argv])
    assert e.value.code == 2
    assert "error" in capsys.readouterr().err

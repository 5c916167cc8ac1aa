"""Weights files that load and fit the model but hold NaN/Inf values: refused, with the file and
the first non-finite tensor named, by the checkpoint check (suite validation) and wherever a run
loads weights, before any work."""

from __future__ import annotations

import re

import pytest
import torch
from harness_helpers import write_suite

from mgrq import zoo
from mgrq.cli import main
from mgrq.errors import CheckpointError
from mgrq.runner.suite import load_suite


@pytest.fixture
def nan_ckpt(tmp_path):
    """The committed tiny_vit weights with 3 NaN/Inf values in ``head.weight``."""
    sd = zoo.load_state_dict_file(zoo.tiny_weights_path("tiny_vit"))
    sd["head.weight"][0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    path = tmp_path / "nan.pth"
    torch.save(sd, path)
    return path


def test_non_finite_checkpoint_is_refused_before_any_work(tmp_path, nan_ckpt, capsys):
    expected = f"checkpoint {nan_ckpt}: tensor head.weight holds 3 NaN/Inf value(s); expected finite weights"
    with pytest.raises(CheckpointError, match=re.escape(expected)):
        zoo.check_checkpoint("tiny_vit", nan_ckpt)
    with pytest.raises(CheckpointError, match=re.escape(expected)):
        zoo.create_model("tiny_vit", nan_ckpt)
    suite = write_suite(tmp_path / "ck.yaml", checkpoints={"tiny_vit": str(nan_ckpt)})
    with pytest.raises(CheckpointError, match=re.escape(f"ck.yaml: checkpoints.tiny_vit: {expected}")):
        load_suite(suite).with_options()
    assert main(["quantize", "--model", "tiny_vit", "--method", "percentile", "--w-bits", "4", "--a-bits", "4",
                 "--checkpoint", str(nan_ckpt), "--quiet"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {expected}"]
    zoo.check_checkpoint("tiny_vit", zoo.tiny_weights_path("tiny_vit"))  # finite weights pass

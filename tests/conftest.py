import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def set_fused_attn(model: torch.nn.Module, fused: bool) -> None:
    """Switch timm's fused attention (F.scaled_dot_product_attention) on or off in place."""
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused

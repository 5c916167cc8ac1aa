import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import pytest  # noqa: E402
import torch  # noqa: E402

REQUIRE_GPU_ENV = "MGRQ_REQUIRE_GPU"

# Under pytest-xdist (`nox -s tests` runs 2 workers on 2 cores) each worker takes its share of the
# cores for torch's in-process work, so that two workers do not fight over the same cores with
# two OpenMP pools each. Tests that need a given count set it themselves (``one_thread``).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
if _WORKERS > 1:
    from mgrq.runner.executors import cpu_count  # the CPUs this process may use (affinity)

    torch.set_num_threads(max(1, cpu_count() // _WORKERS))


def require_cuda() -> torch.device:
    """The CUDA device for a ``gpu`` test. Without one the test is skipped, unless
    ``MGRQ_REQUIRE_GPU=1`` (set by ``nox -s tests_gpu``): then it fails, so that a GPU session on a
    machine without a usable GPU cannot pass with every check skipped."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if os.environ.get(REQUIRE_GPU_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
        pytest.fail(f"no CUDA device available, and {REQUIRE_GPU_ENV}={os.environ[REQUIRE_GPU_ENV]} requires one",
                    pytrace=False)
    pytest.skip(f"needs a CUDA device (set {REQUIRE_GPU_ENV}=1 to fail instead of skipping)")


@pytest.fixture(name="require_cuda")
def _require_cuda_fixture() -> torch.device:
    """Fixture form of :func:`require_cuda`: request it first in a ``gpu`` test."""
    return require_cuda()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def set_fused_attn(model: torch.nn.Module, fused: bool) -> None:
    """Switch timm's fused attention (F.scaled_dot_product_attention) on or off in place."""
    for m in model.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = fused


@pytest.fixture
def one_thread():
    """Run the test with one torch thread (restored after): on a shared 2-core machine two
    OpenMP threads waiting for each other make the engine's many small kernels much slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def figs(monkeypatch) -> dict:
    """Each figure of the report code, by stem, as it is saved."""
    import reports.plots as plots

    seen: dict = {}
    real_save = plots._save

    def spy(fig, dest, stem):
        seen[stem] = fig
        return real_save(fig, dest, stem)

    monkeypatch.setattr(plots, "_save", spy)
    return seen

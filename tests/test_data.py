"""Data: MNIST-5k split, ImageNet-layout folders of real photos with timm preprocessing, calibration."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from mgrq import data
from mgrq.errors import DataError
from mgrq.evaluate import evaluate

PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "cat", "immunohistochemistry"]


def make_image_folder(root: Path, n_classes: int = 3, per_class: int = 2) -> Path:
    """An ImageNet-layout folder of real photos from skimage.data (train/ and val/)."""
    import skimage.data

    photos = [getattr(skimage.data, n)() for n in PHOTOS]
    for split in ("train", "val"):
        for c in range(n_classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True)
            for i in range(per_class):
                img = photos[(c * per_class + i) % len(photos)]
                if img.ndim == 2:
                    img = np.stack([img] * 3, -1)
                Image.fromarray(img[:, :, :3]).resize((96, 80)).save(d / f"img{i}.JPEG")
    return root


def test_mnist_split_is_fixed_and_disjoint():
    s = data.mnist_split_indices()
    assert len(s["train"]) == 4000 and len(s["heldout"]) == 1000
    assert not set(s["train"].tolist()) & set(s["heldout"].tolist())
    assert set(s["fit"].tolist()) | set(s["tune"].tolist()) == set(s["train"].tolist())
    assert torch.equal(s["train"], data.mnist_split_indices()["train"])


def test_mnist_bundle_shapes_and_labels():
    b = data.mnist_bundle()
    img, label = b.val[0]
    assert img.shape == (1, 32, 32) and 0 <= label < 10
    assert len(b.train) == 4000 and len(b.val) == 1000
    assert abs(float(b.train.images.mean())) < 0.2  # normalized
    tune = data.mnist_bundle("tune")
    assert len(tune.train) == 3500 and len(tune.val) == 500
    assert not set(tune.train_ids) & {f"mnist:{i}" for i in data.mnist_split_indices()["tune"].tolist()}


def test_calibration_sampling_is_seeded_and_hashed():
    b = data.mnist_bundle()
    a1, a2 = data.sample_calibration(b, 32, 0), data.sample_calibration(b, 32, 0)
    c = data.sample_calibration(b, 32, 1)
    assert a1.images.shape == (32, 1, 32, 32)
    assert a1.ids == a2.ids and a1.ids_hash == a2.ids_hash
    assert a1.ids_hash != c.ids_hash and len(set(a1.ids)) == 32
    with pytest.raises(ValueError, match="calib=5000: expected 1..4000"):
        data.sample_calibration(b, 5000, 0)


def test_imagenet_folder_with_real_photos_and_timm_preprocessing(tmp_path):
    root = make_image_folder(tmp_path / "imnet")
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=3).eval()
    b = data.imagenet_bundle(root, model, num_classes=3)
    assert len(b.train) == 6 and len(b.val) == 6
    img, label = b.val[0]
    assert img.shape == (3, 224, 224) and label == 0
    cfg = b.data_config
    assert cfg["crop_pct"] == model.pretrained_cfg["crop_pct"]
    assert cfg["interpolation"] == model.pretrained_cfg["interpolation"]
    assert list(cfg["mean"]) == list(model.pretrained_cfg["mean"])
    calib = data.sample_calibration(b, 4, 0)
    assert all(i.startswith("n0000000") for i in calib.ids)  # relative file paths are the ids
    # top-1 against an independent count over the whole split in one batch (evaluate: 4 + 2 images)
    images = torch.stack([b.val[i][0] for i in range(len(b.val))])
    labels = torch.tensor([b.val[i][1] for i in range(len(b.val))])
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]
    with torch.no_grad():
        expected = 100.0 * float((model(images).argmax(-1) == labels).float().mean())
    model.blocks[0].train()  # mixed training flags come back as they were
    flags = [mod.training for mod in model.modules()]
    m = evaluate(model, b.val, batch_size=4, device="cpu", progress=False)
    assert [mod.training for mod in model.modules()] == flags
    assert m["n"] == 6 and m["top1"] == pytest.approx(expected)
    assert m["top5"] == 100.0  # only 3 classes: top-5 is top-3, always a hit
    # and a known value: a model that always ranks class 2 > 1 > 0 is right on 2 of 6 images
    const = _ConstantLogits(torch.tensor([0.0, 1.0, 2.0]))
    m = evaluate(const, b.val, batch_size=4, device="cpu", progress=False)
    assert m == {"top1": pytest.approx(100.0 / 3), "top5": 100.0, "n": 6.0}


def test_an_eval_limit_spreads_over_the_classes_of_a_class_sorted_val_folder(tmp_path):
    """val/ is listed class by class: `--eval-limit 3` of 3 classes x 2 images keeps one image of
    each class, not the two of class 0 and one of class 1."""
    from mgrq.run import _subset, eval_subset
    from mgrq.spec import RunSpec

    root = make_image_folder(tmp_path / "imnet")
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=3).eval()
    val = data.imagenet_bundle(root, model, num_classes=3).val
    assert [val.samples[i][1] for i in range(len(val))] == [0, 0, 1, 1, 2, 2]
    sub = _subset(val, 3)
    assert len(sub) == 3 and [sub[i][1] for i in range(3)] == [0, 1, 2]
    assert _subset(val, 6) is val and _subset(val, None) is val
    assert eval_subset(1000, 7) == [0, 142, 285, 428, 571, 714, 857]
    assert eval_subset(50_000, 1000) == list(range(0, 50_000, 50))  # ImageNet val: one image per class
    # a limited cell hashes apart from one of before the spread (which kept the first N)
    spec = RunSpec(model="tiny_vit", method="percentile", w_bits=4, a_bits=4, eval_limit=10)
    legacy = {**spec.to_dict()}
    legacy.pop("device")
    import hashlib
    import json
    assert spec.content_hash != hashlib.sha256(json.dumps(legacy, sort_keys=True, default=str).encode()).hexdigest()[:12]


class _ConstantLogits(torch.nn.Module):
    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(x.shape[0], -1)


def test_imagenet_errors_name_path_and_layout(tmp_path):
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=3)
    with pytest.raises(DataError, match=r"nope: folder not found; expected layout ROOT/train/<class>"):
        data.imagenet_bundle(tmp_path / "nope", model, 3)
    root = make_image_folder(tmp_path / "a")
    import shutil

    shutil.rmtree(root / "val")
    with pytest.raises(DataError, match=r"a/val: folder not found"):
        data.imagenet_bundle(root, model, 3)
    root = make_image_folder(tmp_path / "b")
    for f in (root / "train" / "n00000001").iterdir():
        f.unlink()
    with pytest.raises(DataError, match=r"n00000001: class folder has no images"):
        data.imagenet_bundle(root, model, 3)
    root = make_image_folder(tmp_path / "c", n_classes=2)
    with pytest.raises(DataError, match="2 class folders, but the model has 3 outputs"):
        data.imagenet_bundle(root, model, 3)
    (tmp_path / "d" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no class folders"):
        data.imagenet_bundle(tmp_path / "d", model, 3)


def test_corrupt_image_is_named_in_this_process_and_from_loader_workers(tmp_path):
    root = make_image_folder(tmp_path / "imnet")
    bad = root / "val" / "n00000000" / "0bad.jpg"  # sorts first: item 0 of val
    bad.write_text("not an image")
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=3).eval()
    b = data.imagenet_bundle(root, model, 3)
    expected = (rf"^data root: image {re.escape(str(bad))} cannot be decoded \(UnidentifiedImageError: .*\); "
                r"expected a readable image file$")
    with pytest.raises(DataError, match=expected):
        b.val[0]
    with pytest.raises(DataError, match=expected) as raised:  # a worker's exception comes back wrapped
        evaluate(model, b.val, batch_size=4, device="cpu", workers=1, progress=False)
    # its loader process is gone although the traceback (held here) still references the loop: it
    # ignores SIGTERM, so one left behind would make the process hang at exit
    assert raised.traceback and _loader_processes() == []


def _loader_processes() -> list:
    import multiprocessing

    from mgrq.evaluate import is_loader_process

    return [p for p in multiprocessing.active_children() if is_loader_process(p.pid)]


def test_loader_processes_left_behind_are_killed_at_exit():
    """A loader iterator abandoned without being shut down keeps its processes, which ignore
    SIGTERM: multiprocessing's exit handler would wait for them forever. Ours kills them first."""
    import signal

    from mgrq.evaluate import _kill_leftover_workers, loader

    before = signal.getsignal(signal.SIGCHLD)
    it = iter(loader(_SigtermDisposition(), 1, workers=1))
    next(it)
    (proc,) = _loader_processes()
    try:
        _kill_leftover_workers()
        proc.join(timeout=10)
        assert not proc.is_alive() and _loader_processes() == []
        del it
    finally:
        signal.signal(signal.SIGCHLD, before)  # torch installs its handler once per process


def test_class_folders_are_checked_up_front(tmp_path):
    """check_imagenet_root (suite validation, dry runs, quantize) lists the class folders, not the
    images: a wrong count or train/ and val/ that differ fail before any model or image is loaded."""
    from mgrq import zoo

    root = make_image_folder(tmp_path / "two", n_classes=2, per_class=1)
    assert zoo.num_classes("deit_tiny_patch16_224") == 1000
    with pytest.raises(DataError, match=r"s.yaml: .*two/train: 2 class folders, but model deit_tiny_patch16_224 has 1000 outputs; "
                                        r"expected one folder per class"):
        data.check_imagenet_root(root, "deit_tiny_patch16_224", "s.yaml: ", num_classes=1000)
    assert data.check_imagenet_root(root, "deit_tiny_patch16_224", num_classes=2) == root
    (root / "val" / ".ipynb_checkpoints").mkdir()  # a hidden folder (Jupyter's, an editor's) is no class
    assert data.check_imagenet_root(root, "deit_tiny_patch16_224", num_classes=2) == root
    assert data.class_folders(root / "val") == ["n00000000", "n00000001"]
    (root / "val" / ".ipynb_checkpoints").rmdir()
    for c in range(5):
        (root / "train" / f"extra{c}").mkdir()
    (root / "val" / "n00000001").rename(root / "val" / "typo")
    differ = (r"two: train/ and val/ have different class folders \(only in train/: extra0, extra1, extra2 and 3 "
              r"more; only in val/: typo\); expected the same class folders in both")
    with pytest.raises(DataError, match=differ):
        data.check_imagenet_root(root, "deit_tiny_patch16_224")
    jpeg = (root / "train" / "n00000000" / "img0.JPEG").read_bytes()
    for c in range(1, 5):
        (root / "train" / f"extra{c}").rmdir()
    (root / "val" / "zz").mkdir()
    for f in (root / "train" / "extra0" / "a.jpg", root / "val" / "zz" / "a.jpg"):
        f.write_bytes(jpeg)
    with pytest.raises(DataError, match=r"only in train/: extra0, n00000001; only in val/: typo, zz\)"):
        data.imagenet_bundle(root, timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=3), 3)


def test_an_imagenet_tune_split_is_carved_from_train_and_kept_from_calibration(tmp_path):
    """eval_split='tune' on an ImageNet folder evaluates on 10 train/ images per class (fixed seed,
    the same split for the same folder), never on val/, and calibration draws from the other
    train/ images only; a class with too few images to leave any for calibration is named."""
    from mgrq.zoo import data_bundle_for

    root = make_image_folder(tmp_path / "imnet", n_classes=3, per_class=13)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=3).eval()
    b = data_bundle_for("deit_tiny_patch16_224", model, root, "tune")
    tune = [b.val.dataset.samples[i] for i in b.val.indices]
    assert len(tune) == 30 and sorted(lab for _, lab in tune) == [0] * 10 + [1] * 10 + [2] * 10
    assert set(b.train_ids).isdisjoint(rel for rel, _ in tune) and len(b.train_ids) == 9
    assert b.val.dataset.root == root / "train" and b.data_config["eval_split"] == "tune"
    assert "eval=tune: 10 train/ images per class" in b.source
    again = data_bundle_for("deit_tiny_patch16_224", model, root, "tune")
    assert again.val.indices == b.val.indices
    cal = data.sample_calibration(b, 9, 0)
    assert set(cal.ids) == set(b.train_ids)
    held = data_bundle_for("deit_tiny_patch16_224", model, root, "heldout")
    assert "eval_split" not in held.data_config and len(held.train_ids) == 39 and len(held.val) == 39
    (sorted((root / "train" / "n00000001").iterdir())[0]).unlink()
    for f in sorted((root / "train" / "n00000001").iterdir())[10:]:
        f.unlink()
    few = r"train/n00000001: 10 images; the tune split takes 10 per class from train/ and calibration needs the rest"
    with pytest.raises(DataError, match=few + ": expected more than 10"):
        data_bundle_for("deit_tiny_patch16_224", model, root, "tune")
    with pytest.raises(DataError, match="^w: .*" + few):  # the same, before any work (quantize, suite run)
        data.check_class_images(root, "w: ", tune=True)
    data.check_class_images(root, "w: ")  # without the tune split, 10 images are plenty
    from mgrq.cli import main

    ckpt = tmp_path / "deit.pth"
    torch.save(model.state_dict(), ckpt)
    assert main(["quantize", "--model", "deit_tiny_patch16_224", "--method", "percentile", "--w-bits", "4",
                 "--a-bits", "4", "--data-root", str(root), "--checkpoint", str(ckpt), "--eval-split", "tune"]) == 2


def test_the_tune_split_needs_no_val_folder(tmp_path, capsys):
    """A sweep on the tune split never reads val/: a machine that runs it may hold train/ only
    (no held-out image within reach). Held-out runs on the same folder name the missing val/."""
    import shutil

    from mgrq.cli import main
    from mgrq.zoo import data_bundle_for

    root = make_image_folder(tmp_path / "imnet", n_classes=3, per_class=11)
    shutil.rmtree(root / "val")
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=3).eval()
    b = data_bundle_for("deit_tiny_patch16_224", model, root, "tune")
    assert len(b.val) == 30 and len(b.train_ids) == 3
    assert data.check_imagenet_root(root, "m", eval_split="tune") == root
    data.check_class_images(root, tune=True)
    with pytest.raises(DataError, match=rf"data root {re.escape(str(root))}: folder {re.escape(str(root / 'val'))} "
                                        "not found; expected layout"):
        data_bundle_for("deit_tiny_patch16_224", model, root, "heldout")
    ckpt = tmp_path / "deit.pth"
    torch.save(model.state_dict(), ckpt)
    run = ["quantize", "--model", "deit_tiny_patch16_224", "--method", "percentile", "--w-bits", "8", "--a-bits", "8",
           "--data-root", str(root), "--checkpoint", str(ckpt), "--calib", "2", "--eval-limit", "6", "--quiet",
           "--record", str(tmp_path / "r.json")]
    assert main([*run, "--eval-split", "tune"]) == 0, capsys.readouterr().err
    rec = json.loads((tmp_path / "r.json").read_text())
    assert rec["status"] == "done" and rec["metrics"]["n_eval"] == 6 and "eval=tune" in rec["data"]["source"]
    capsys.readouterr()
    assert main(run) == 2  # held out: val/ is needed, and named before any work
    assert f"folder {root / 'val'} not found" in capsys.readouterr().err
    from harness_helpers import write_suite  # a suite's up-front checks: the same

    suite = write_suite(tmp_path / "sweep.yaml", models=["deit_tiny_patch16_224"], data={"eval_split": "tune"},
                        calibration={"n": 2})
    dry = ["suite", "run", str(suite), "--data-root", str(root), "--checkpoint", f"deit_tiny_patch16_224={ckpt}",
           "--out", str(tmp_path / "runs"), "--dry-run"]
    assert main(dry) == 0, capsys.readouterr().err
    held = write_suite(tmp_path / "held.yaml", models=["deit_tiny_patch16_224"])
    assert main([*dry[:2], str(held), *dry[3:]]) == 2
    assert f"folder {root / 'val'} not found" in capsys.readouterr().err


def test_a_calibration_size_beyond_train_is_named_up_front(tmp_path, capsys):
    """A calibration draw larger than train/ (less the tune split) used to fail every job on its
    draw, after the model and the FP evaluation; it is found before any work, reading only as
    many class folders as the count needs."""
    from harness_helpers import write_suite

    from mgrq.cli import main

    root = make_image_folder(tmp_path / "two", n_classes=2, per_class=12)
    data.check_class_images(root, "w: ", calib=(24, "x"))
    with pytest.raises(DataError, match=r"^w: .*two/train: 24 images calibration can draw from; x draws calib=25: "
                                        r"expected at most 24$"):
        data.check_class_images(root, "w: ", calib=(25, "x"))
    data.check_class_images(root, "w: ", tune=True, calib=(4, "x"))
    with pytest.raises(DataError, match=r"train: 4 images calibration can draw from, beside the 10 per class of the tune "
                                        r"split; x draws calib=5"):
        data.check_class_images(root, "w: ", tune=True, calib=(5, "x"))
    ckpt = tmp_path / "deit.pth"
    torch.save(timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=2).state_dict(), ckpt)
    assert main(["quantize", "--model", "deit_tiny_patch16_224", "--method", "percentile", "--w-bits", "4",
                 "--a-bits", "4", "--data-root", str(root), "--checkpoint", str(ckpt)]) == 2  # its default: 32
    assert "24 images calibration can draw from; method percentile (its default) draws calib=32" in capsys.readouterr().err
    suite = write_suite(tmp_path / "inet.yaml", models=["deit_tiny_patch16_224"], calibration={"n": 16},
                        data={"root": str(root)}, checkpoints={"deit_tiny_patch16_224": str(ckpt)})
    assert main(["suite", "run", str(suite), "--out", str(tmp_path / "runs"), "--dry-run"]) == 0
    capsys.readouterr()
    assert main(["suite", "run", str(suite), "--out", str(tmp_path / "runs"), "--dry-run", "--calib", "100"]) == 2
    assert "24 images calibration can draw from; --calib draws calib=100" in capsys.readouterr().err


def test_empty_class_folders_and_a_flat_val_folder_are_named_up_front(tmp_path, capsys):
    """Every class folder must hold an image, checked before any work by `quantize` and by a
    suite's dry run (each folder read up to its first image); a val/ that holds the images
    themselves (the official archive's layout) gets a hint."""
    from mgrq.cli import main

    root = make_image_folder(tmp_path / "two", n_classes=2, per_class=1)
    data.check_class_images(root)
    (root / "val" / "n00000001" / "img0.JPEG").rename(root / "val" / "n00000001" / "notes.txt")
    with pytest.raises(DataError, match=r"^w: .*two/val/n00000001: class folder has no images \(.*\.jpeg.*\); "
                                        r"expected layout"):
        data.check_class_images(root, "w: ")
    ckpt = tmp_path / "deit.pth"
    torch.save(timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=2).state_dict(), ckpt)
    args = ["--data-root", str(root), "--checkpoint"]
    assert main(["quantize", "--model", "deit_tiny_patch16_224", "--method", "percentile", "--w-bits", "4",
                 "--a-bits", "4", *args, str(ckpt)]) == 2
    assert "n00000001: class folder has no images" in capsys.readouterr().err
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\ndescription: d\nmodels: [deit_tiny_patch16_224]\nbits: [W4A4]\nmethods: [percentile]\n")
    assert main(["suite", "run", str(suite), "--dry-run", *args, f"deit_tiny_patch16_224={ckpt}"]) == 2
    assert "error: --data-root: " in (err := capsys.readouterr().err) and "n00000001: class folder has no images" in err

    flat = make_image_folder(tmp_path / "flat", n_classes=2, per_class=1)
    for d in (flat / "val").iterdir():
        for f in d.iterdir():
            f.rename(flat / "val" / f"{d.name}_{f.name}")
        d.rmdir()
    with pytest.raises(DataError, match=r"flat/val: no class folders \(it holds the images directly, as the "
                                        r"official validation archive unpacks: sort them into one folder per class"):
        data.check_imagenet_root(flat, "deit_tiny_patch16_224")


def test_image_files_are_decoded_by_loader_processes_with_the_same_batches(tmp_path, monkeypatch):
    """Image files evaluated on a GPU are decoded by loader processes ($MGRQ_DATA_WORKERS, else
    the CPUs this process may use less one, at most 8, at most one per batch); images held in
    memory use none, and so does evaluation on a CPU (the model's threads use the cores). The
    batches do not depend on them."""
    import os

    from torch.utils.data import Subset

    import mgrq.evaluate as ev
    from mgrq.errors import ConfigError

    root = make_image_folder(tmp_path / "imnet", per_class=4)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=3).eval()
    val = data.imagenet_bundle(root, model, 3).val
    monkeypatch.delenv("MGRQ_DATA_WORKERS", raising=False)
    cpus = len(os.sched_getaffinity(0))
    assert ev.data_workers(val, 4) == max(0, min(8, cpus - 1, 3))  # 12 images: 3 batches of 4
    assert ev.data_workers(Subset(data.mnist_bundle().val, range(100)), 4) == 0
    monkeypatch.setenv("MGRQ_DATA_WORKERS", "2")
    assert ev.data_workers(val, 4) == 2 and ev.data_workers(val, 12) == 1
    serial, parallel = (list(ev.loader(val, 4, workers=n)) for n in (0, 2))
    assert len(serial) == 3 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                                    for a, b in zip(serial, parallel, strict=True))
    used = []
    real = ev.loader
    monkeypatch.setattr(ev, "loader", lambda d, b, w=None, pin=False: used.append(w) or real(d, b, w, pin))
    evaluate(model, val, batch_size=4, device="cpu", progress=False)
    assert used == [0]  # on a CPU, whatever $MGRQ_DATA_WORKERS says
    monkeypatch.setenv("MGRQ_DATA_WORKERS", "many")
    with pytest.raises(ConfigError, match=r"MGRQ_DATA_WORKERS='many': expected a non-negative integer"):
        ev.data_workers(val, 4)


class _SigtermDisposition(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        import signal

        return torch.tensor(float(signal.getsignal(signal.SIGTERM) == signal.SIG_IGN)), i


def test_loader_processes_ignore_sigterm_and_leave_it_to_the_job():
    """SLURM signals the whole job on a requeue or cancel: a worker must not die first and fail
    the cell before the job's handler stops it as unfinished."""
    from mgrq.evaluate import loader

    (ignored, _), = list(loader(_SigtermDisposition(), 2, workers=1))
    assert ignored.tolist() == [1.0, 1.0]


def test_a_model_with_nan_outputs_fails_its_evaluation_instead_of_scoring():
    """argmax over NaN logits picks a class anyway, so a method that broke its model would be
    recorded as a poor but real accuracy: evaluation raises instead, naming how many images."""
    from mgrq.errors import EvaluationError
    from mgrq.zoo import create_model

    model = create_model("tiny_vit")
    subset = torch.utils.data.Subset(data.mnist_bundle().val, range(40))
    assert 0 <= evaluate(model, subset, progress=False)["top1"] <= 100
    with torch.no_grad():
        model.head.bias[3] = float("nan")  # every image's logit of class 3
    with pytest.raises(EvaluationError, match=r"eval: the model's outputs are NaN or Inf for 40 of 40 images"):
        evaluate(model, subset, progress=False)

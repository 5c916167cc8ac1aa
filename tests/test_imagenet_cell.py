"""One cell of the `imagenet-w4a4` suite end to end, the way a cluster user runs it: an
ImageNet-layout folder (real photos from ``skimage.data``, cropped into a few classes), a real
timm architecture (DeiT-T) loaded from a local weights file made here (3-class head), the
model's own timm preprocessing, the run record, and the report with the published rows."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

from mgrq.cli import main

PHOTOS = {"cat": "chelsea", "coffee": "coffee", "rocket": "rocket"}  # class -> skimage.data photo


@pytest.fixture(scope="module")
def imagenet_folder(tmp_path_factory):
    """train/<class>/ 11 crops each, val/<class>/ 2 crops each, JPEG, from real photos."""
    from PIL import Image
    from skimage import data

    root = tmp_path_factory.mktemp("inet")
    rng = np.random.default_rng(0)
    for cls, photo in PHOTOS.items():
        img = getattr(data, photo)()
        h, w = img.shape[:2]
        for split, n in (("train", 11), ("val", 2)):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                s = int(rng.integers(min(h, w) // 2, min(h, w)))
                y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
                crop = Image.fromarray(img[y:y + s, x:x + s]).resize((112, 112), Image.BICUBIC)
                crop.save(root / split / cls / f"{photo}_{i:02d}.jpg", quality=90)
    return root


@torch.no_grad()
def fit_head(model: torch.nn.Module, root) -> None:
    """Ridge-regression head on the (random) backbone's features of the train images."""
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    tf = create_transform(**resolve_data_config({}, model=model), is_training=False)
    xs, ys = [], []
    for ci, cls in enumerate(sorted(PHOTOS)):
        for f in sorted((root / "train" / cls).iterdir())[:4]:
            xs.append(tf(Image.open(f).convert("RGB")))
            ys.append(ci)
    feats = model.forward_head(model.forward_features(torch.stack(xs)), pre_logits=True)  # [N, 192]
    x = torch.cat([feats, torch.ones(len(feats), 1)], 1)
    y = torch.nn.functional.one_hot(torch.tensor(ys), 3).float()
    w = torch.linalg.solve(x.T @ x + 1e-3 * torch.eye(x.shape[1]), x.T @ y)  # [193, 3]
    model.head.weight.copy_(w[:-1].T)
    model.head.bias.copy_(w[-1])


def test_one_imagenet_w4a4_cell_end_to_end(tmp_path, imagenet_folder, capsys):
    import timm
    from timm.data import create_transform, resolve_data_config

    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=3).eval()
    fit_head(model, imagenet_folder)  # a linear probe, so the FP accuracy means something
    ckpt = tmp_path / "deit_tiny_3class.pth"
    torch.save(model.state_dict(), ckpt)
    out = tmp_path / "runs"
    code = main(["suite", "run", "imagenet-w4a4", "--data-root", str(imagenet_folder),
                 "--checkpoint", f"deit_tiny_patch16_224={ckpt}", "--only", r"^deit_tiny_patch16_224\.percentile\.",
                 "--calib", "2", "--out", str(out), "--label", "cell", "--executor", "debug",
                 "--threads", "1", "--no-mirror", "--no-pdf"])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "1 cell: 1 done, 0 skipped (done before), 0 failed" in text
    (path,) = (out / "imagenet-w4a4" / "cell").glob("deit_tiny_patch16_224.percentile.w4a4.s0-*/record.json")
    rec = json.loads(path.read_text())
    assert rec["status"] == "done"
    assert rec["spec"]["data_root"] == str(imagenet_folder.resolve())
    assert rec["spec"]["checkpoint"] == str(ckpt.resolve())
    assert rec["data"]["source"] == f"image folder {imagenet_folder.resolve()}"
    cfg = rec["data"]["config"]
    assert cfg["input_size"] == [3, 224, 224] and cfg["interpolation"] == "bicubic"
    assert rec["calibration"]["n"] == 2 and rec["metrics"]["n_eval"] == 6.0
    from mgrq.data import hash_ids  # the evaluated images by name: val/'s paths, class by class

    val = sorted(str(p.relative_to(imagenet_folder / "val")) for p in (imagenet_folder / "val").rglob("*.*"))
    assert len(val) == 6 and rec["data"]["eval_ids_hash"] == hash_ids(val)
    assert rec["method"]["info"]["points"] > 50  # every linear, matmul and the patch embedding

    # The FP accuracy in the record equals timm's own pipeline on the same folder and weights.
    from PIL import Image

    ref = timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=3)
    ref.load_state_dict(torch.load(ckpt, weights_only=True))
    ref.eval()
    ref_cfg = resolve_data_config({}, model=ref)  # DeiT's own eval preprocessing (crop_pct etc.)
    assert cfg == {k: list(v) if isinstance(v, tuple) else v for k, v in ref_cfg.items()}
    tf = create_transform(**ref_cfg, is_training=False)
    classes = sorted(PHOTOS)
    correct = n = 0
    for ci, cls in enumerate(classes):
        for f in sorted((imagenet_folder / "val" / cls).iterdir()):
            with torch.no_grad():
                pred = ref(tf(Image.open(f).convert("RGB"))[None]).argmax(-1).item()
            correct += int(pred == ci)
            n += 1
    assert n == 6 and rec["metrics"]["fp_top1"] == pytest.approx(100.0 * correct / n)
    assert rec["metrics"]["fp_top1"] > 50  # the probe separates the photos

    md = (out / "imagenet-w4a4" / "cell" / "report" / "main.md").read_text()
    q = f"{rec['metrics']['top1']:.2f}"
    assert f"| Percentile | 4/4 | {q} |" in md or f"| Percentile | 4/4 | **{q}** |" in md
    assert "| RepQ-ViT † | 4/4 | 57.43 |" in md  # published DeiT-T W4A4, marked as published

    # the class folders are checked against each head before anything runs: the suite's other
    # models (timm's 1000 classes, no --checkpoint) do not fit 3 folders, unless --only leaves them out
    capsys.readouterr()
    argv = ["suite", "run", "imagenet-w4a4", "--data-root", str(imagenet_folder), "--dry-run",
            "--checkpoint", f"deit_tiny_patch16_224={ckpt}"]
    assert main(argv) == 2
    assert "train: 3 class folders, but model vit_small_patch16_224 has 1000 outputs" in capsys.readouterr().err
    # the reconstruction methods draw 1,024 images at paper scale: 33 train/ images do not hold them
    assert main([*argv, "--only", "^deit_tiny_patch16_224[.]"]) == 2
    assert "train: 33 images calibration can draw from; method qdrop draws calib=1024" in capsys.readouterr().err
    assert main([*argv, "--only", "^deit_tiny_patch16_224[.]", "--calib", "8"]) == 0
    assert main(["quantize", "--model", "deit_small_patch16_224", "--method", "percentile", "--w-bits", "4",
                 "--a-bits", "4", "--data-root", str(imagenet_folder)]) == 2
    assert "3 class folders, but model deit_small_patch16_224 has 1000 outputs" in capsys.readouterr().err

    # the tune split: 10 train/ images per class, never val/; calibration from the other train/ images
    tuned = tmp_path / "tune.json"
    assert main(["quantize", "--model", "deit_tiny_patch16_224", "--method", "percentile", "--w-bits", "4",
                 "--a-bits", "4", "--data-root", str(imagenet_folder), "--checkpoint", str(ckpt), "--calib", "3",
                 "--eval-split", "tune", "--record", str(tuned), "--quiet"]) == 0
    t = json.loads(tuned.read_text())
    assert t["spec"]["eval_split"] == "tune" and t["metrics"]["n_eval"] == 30.0
    assert t["data"]["eval_ids_hash"] not in (None, rec["data"]["eval_ids_hash"])  # train/ images, not val/
    assert "eval=tune: 10 train/ images per class" in t["data"]["source"] and t["data"]["config"]["eval_split"] == "tune"

    # on another machine the folder and the weights file lie elsewhere: `rerun --data-root --checkpoint`
    # runs the record there, the weights compared by content, the images by name, the hash as if
    # nothing had moved (it takes the paths)
    moved = tmp_path / "elsewhere"
    shutil.copytree(imagenet_folder, moved / "inet")
    shutil.copy(ckpt, moved / "w.pth")
    capsys.readouterr()
    argv = ["rerun", str(tuned), "--quiet", "--data-root", str(moved / "inet"), "--checkpoint", str(moved / "w.pth")]
    assert main([*argv, "--record", str(tmp_path / "again.json")]) == 0
    out = capsys.readouterr().out
    assert "same as the record, bit for bit: top1 " in out and "differs" not in out
    assert f"note: spec.data_root {imagenet_folder} -> {moved / 'inet'} (--data-root)" in out
    assert f"note: spec.checkpoint {ckpt} -> {moved / 'w.pth'} (--checkpoint)" in out
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["spec"]["data_root"] == str(moved / "inet") and again["hash"] != t["hash"]
    assert again["metrics"] == t["metrics"] and again["data"]["eval_ids_hash"] == t["data"]["eval_ids_hash"]
    # other weights at the new place: named by their SHA-256, exit 1
    sd = torch.load(ckpt, weights_only=True)
    torch.save({**sd, "head.bias": sd["head.bias"] + 1.0}, moved / "w.pth")
    assert main(argv) == 1
    assert f"differs from the record: weights sha256 {t['weights']['sha256'][:16]} -> " in capsys.readouterr().out
    # a folder that is not there: one line naming it, nothing run
    assert main([*argv[:4], str(tmp_path / "nowhere")]) == 2
    out, err = capsys.readouterr()
    assert f"data root {tmp_path / 'nowhere'}: folder not found" in err and err.count("\n") == 1 and "rerun of" not in out


@pytest.mark.imagenet
def test_deit_small_on_real_imagenet_matches_the_published_fp_row(tmp_path):
    """With a real ImageNet (MGRQ_IMAGENET=/path, ImageNet layout) and timm's pretrained weights
    in the hub cache: DeiT-S's FP top-1 on the 50,000 validation images through our pipeline is
    the published one (79.85, RepQ-ViT's table), and W8A8 with the basic method loses < 1 point.
    Run with ``MGRQ_IMAGENET=/data/imagenet pytest -m imagenet`` (a GPU makes it minutes)."""
    import os

    root = os.environ.get("MGRQ_IMAGENET")
    if not root:
        pytest.skip("set MGRQ_IMAGENET to an ImageNet-layout folder")
    rec_path = tmp_path / "deit_s_w8a8.json"
    code = main(["quantize", "--model", "deit_small_patch16_224", "--method", "percentile",
                 "--w-bits", "8", "--a-bits", "8", "--data-root", root, "--record", str(rec_path)])
    assert code == 0
    m = json.loads(rec_path.read_text())["metrics"]
    assert m["n_eval"] == 50000
    assert abs(m["fp_top1"] - 79.85) < 0.3, m
    assert m["fp_top1"] - m["top1"] < 1.0, m


# The file each timm model's plain name loaded in timm 0.4.12 (RepQ-ViT's version; its and
# PTQ4ViT's published FP rows were measured on these), read from timm's v0.4.12 sources.
TIMM_0_4_12 = {
    "vit_small_patch16_224": "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0--imagenet2012-steps_20k-"
                             "lr_0.03-res_224.npz",
    "vit_base_patch16_224": "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--imagenet2012-steps_20k-"
                            "lr_0.01-res_224.npz",
    "deit_tiny_patch16_224": "deit_tiny_patch16_224-a1311bcf.pth",
    "deit_small_patch16_224": "deit_small_patch16_224-cd65a155.pth",
    "deit_base_patch16_224": "deit_base_patch16_224-b5f2ef4d.pth",
    "swin_tiny_patch4_window7_224": "swin_tiny_patch4_window7_224.pth",
    "swin_small_patch4_window7_224": "swin_small_patch4_window7_224.pth",
    "swin_base_patch4_window7_224": "swin_base_patch4_window7_224_22kto1k.pth",
}


def test_each_timm_model_loads_the_weights_the_published_rows_were_measured_with():
    """The zoo pins a pretrained tag per timm model: the one whose weights file is the file timm
    0.4.12 loaded for the plain name. timm 1.x's own defaults differ for ViT-B (augreg2) and
    Swin-S (22k fine-tuned), which would put another model beside the papers' rows."""
    import timm

    from mgrq import zoo

    timm_models = {n: e for n, e in zoo.ZOO.items() if not e.tiny}
    assert set(timm_models) == set(TIMM_0_4_12)
    for name, entry in timm_models.items():
        cfg = timm.models.get_pretrained_cfg(str(entry.timm_name))
        assert str(cfg.url).rsplit("/", 1)[-1] == TIMM_0_4_12[name], (name, entry.timm_name, cfg.url)
        assert str(entry.timm_name) in entry.description  # `mgrq models` shows the tag


def test_hub_weights_are_checked_offline_before_any_work_and_load_from_the_cache(tmp_path, monkeypatch, capsys):
    """Offline, a timm model without --checkpoint needs its pretrained weights in the HF hub cache:
    missing, `quantize` and a suite (dry run included) stop before any work, naming the model, the
    hub id and how to fill the cache; cached (a real safetensors file laid out as the hub cache
    holds it), timm loads them from there."""
    import timm
    from huggingface_hub import constants
    from safetensors.torch import save_file

    from mgrq import zoo

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    root = tmp_path / "inet"
    for split in ("train", "val"):  # 1000 class folders fit the model's head; no image is opened before the check
        for i in range(1000):
            (root / split / f"n{i:08d}").mkdir(parents=True)
            (root / split / f"n{i:08d}" / "a.JPEG").touch()
    name, hub_id = "deit_tiny_patch16_224", "timm/deit_tiny_patch16_224.fb_in1k"
    assert main(["quantize", "--model", name, "--method", "percentile", "--w-bits", "4", "--a-bits", "4",
                 "--data-root", str(root)]) == 2
    err = capsys.readouterr().err
    assert f"model {name}: its timm pretrained weights ({hub_id}) are not in the HF hub cache" in err
    assert "expected --checkpoint PATH, or the cache filled first" in err and "pretrained=True" in err
    suite = tmp_path / "s.yaml"
    suite.write_text(f"name: s\ndescription: d\nmodels: [{name}]\nbits: [W4A4]\nmethods: [percentile]\n")
    assert main(["suite", "run", str(suite), "--data-root", str(root), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"{suite}: model {name}: its timm pretrained weights ({hub_id})" in err
    assert f"expected --checkpoint {name}=PATH (or checkpoints.{name} in the file)" in err
    two = tmp_path / "two.yaml"  # every model missing is named at once, with one command for all
    two.write_text(f"name: two\ndescription: d\nmodels: [{name}, vit_small_patch16_224]\nbits: [W4A4]\n"
                   "methods: [percentile]\n")
    assert main(["suite", "run", str(two), "--data-root", str(root), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"models {name}, vit_small_patch16_224: their timm pretrained weights are not in the HF hub cache" in err
    assert "('deit_tiny_patch16_224.fb_in1k', 'vit_small_patch16_224.augreg_in21k_ft_in1k')" in err

    # timm reads torch's old URL cache only under TIMM_USE_OLD_CACHE when the model has a hub id
    old = tmp_path / "torch-hub" / "checkpoints" / "deit_tiny_patch16_224-a1311bcf.pth"
    old.parent.mkdir(parents=True)
    old.write_bytes(b"")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torch-hub"))
    assert zoo.cached_pretrained(name) is None
    monkeypatch.setenv("TIMM_USE_OLD_CACHE", "1")
    assert zoo.cached_pretrained(name) == str(old)
    monkeypatch.delenv("TIMM_USE_OLD_CACHE")

    repo = tmp_path / "hub" / f"models--{hub_id.replace('/', '--')}"
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    torch.manual_seed(0)
    sd = timm.create_model(name, pretrained=False).state_dict()
    save_file(sd, str(snap / "model.safetensors"))
    assert zoo.cached_pretrained(name) == str(snap / "model.safetensors")
    assert zoo.weights_file(name, None) == snap / "model.safetensors"  # the record's weights.file (and its sha256)
    assert zoo.weights_digest(snap / "model.safetensors") == hashlib.sha256(
        (snap / "model.safetensors").read_bytes()).hexdigest()
    # as the hub lays it out: the snapshot's file links to blobs/<its sha256>, read from the name
    blob = repo / "blobs" / hashlib.sha256((snap / "model.safetensors").read_bytes()).hexdigest()
    blob.parent.mkdir()
    (snap / "model.safetensors").rename(blob)
    (snap / "model.safetensors").symlink_to(blob)
    assert zoo.weights_digest(snap / "model.safetensors") == blob.name
    other = tmp_path / "elsewhere" / "blobs" / ("ab" * 32)  # a blob name that is not its bytes' hash:
    other.parent.mkdir(parents=True)  # the name is what is read, not 0.3 GB of bytes
    other.write_bytes(b"not the weights")
    (tmp_path / "elsewhere" / "w.bin").symlink_to(other)
    assert zoo.weights_digest(tmp_path / "elsewhere" / "w.bin") == "ab" * 32
    zoo.check_pretrained_cached(name)  # no error now
    assert main(["suite", "run", str(suite), "--data-root", str(root), "--dry-run"]) == 0
    model = zoo.create_model(name)
    assert all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # online, a job may download: not checked
    (snap / "model.safetensors").unlink()
    zoo.check_pretrained_cached(name)

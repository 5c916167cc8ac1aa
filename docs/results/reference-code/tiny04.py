"""The tiny zoo in timm 0.4.12, for the reference drivers (``ref_repq.py``, ``ref_ptq4vit.py``):
``load(EXPORT.pt)`` builds the model an ``export.py`` file names, loads its checkpoint (already in
timm 0.4.12's key names) and returns ``(data, model)``, the model in eval mode. Only the buffers
that both timm releases compute from the shapes may be missing."""
import torch
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer

VIT = dict(img_size=32, patch_size=4, in_chans=1, num_classes=10, embed_dim=96, depth=4, num_heads=3,
           mlp_ratio=4.0, qkv_bias=True)
BUILD = {
    "tiny_vit": lambda: VisionTransformer(**VIT),
    "tiny_deit": lambda: VisionTransformer(**VIT, distilled=True),
    "tiny_swin": lambda: SwinTransformer(img_size=32, patch_size=2, in_chans=1, num_classes=10, window_size=4,
                                         embed_dim=48, depths=(2, 2, 2), num_heads=(3, 6, 12), mlp_ratio=4.0),
}


def load(export: str) -> tuple[dict, torch.nn.Module]:
    data = torch.load(export)
    model = BUILD[data["model"]]()
    missing, unexpected = model.load_state_dict(data["state_dict"], strict=False)
    assert not unexpected and all(k.endswith(("relative_position_index", "attn_mask")) for k in missing), \
        (missing, unexpected)
    return data, model.eval()

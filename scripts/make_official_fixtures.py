"""Run the official networks with seeded weights and write the port fixtures of every network.

For each of cdkd's networks this builds the official network (Open-CD at :data:`OPENCD_COMMIT`)
from its config, fills every parameter and BatchNorm statistic with values drawn from a seed
(``tests/models/official_fixtures.py`` says how), runs it in eval mode on one seeded input pair and
writes ``tests/fixtures/official/<model>.pt``: the state dict's keys, shapes and dtypes, the
seed, the input, the official outputs, the config and this command. The tests regenerate the
state dict from the seed, convert it with ``cdkd.models.convert`` and compare outputs; they
never need the official code.

BAN and TTP are reduced builds of the same official classes (fewer and narrower ViT blocks, a
MiT-b0 side branch for BAN; a 4-block 64-wide SAM encoder at 64 px for TTP), paired with the
same reduction on the cdkd side (``cdkd_kwargs`` in the fixture); :data:`SPECS` lists them.

The official code is needed at hand, outside this repository, and is never imported by the
tests. Environment (a scratch folder, nothing installed into the project's environment):

    git archive 790a197 of github.com/likyoo/open-cd  ->  SCRATCH/src
    pip install --no-deps --target SCRATCH/site mmengine==0.10.7 mmcv-lite==2.1.0 \\
        mmsegmentation==1.2.2 mmdet==3.3.0 mmpretrain==1.2.0 addict yapf termcolor ftfy regex \\
        platformdirs prettytable wcwidth zipp model-index ordered-set einops \\
        "importlib_metadata<8" peft transformers accelerate psutil tokenizers

Usage (from the repository root, with the project's Python):
    python scripts/make_official_fixtures.py --scratch /work/scratch/opencd [MODEL ...]

Workarounds applied here (the official networks themselves are untouched): mmcv-lite has no
compiled ``mmcv._ext``, so a stand-in module whose functions raise when called is registered
(the change-detection networks never call those ops); torchvision weight downloads are refused,
and the configs' ``pretrained=True`` switches and Pretrained ``init_cfg`` entries are cleared;
IFN's backbone builds ``vgg16`` without weights.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import types
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "models"))

from official_fixtures import (  # noqa: E402
    FIXTURE_DIR,
    FORMAT,
    SCHEME,
    generate_state_dict,
)

OPENCD_REPO = "https://github.com/likyoo/open-cd"
OPENCD_COMMIT = "790a1972b538baaaffd4c3022a4d9afaa3f861e5"
#: Side of the square input pair every non-reduced network runs on.
INPUT_SIZE = 64


@dataclass(frozen=True)
class Spec:
    """How to build one cdkd network's official counterpart.

    Attributes:
        config: Open-CD config, relative to its ``configs/`` folder.
        overrides: dotted config keys set before building (``mmengine`` ``merge_from_dict``).
        cdkd_kwargs: constructor overrides of the cdkd network matching a reduced build.
        note: what the reduced build changes, for the record.
    """

    config: str
    overrides: dict[str, Any] = field(default_factory=dict)
    cdkd_kwargs: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def _ban(config: str, patch: int) -> Spec:
    """Reduced BAN: a 3-block 64-wide ViT at 2x2 tokens and the MiT-b0 side branch."""
    side = 2 * patch
    return Spec(
        config=config,
        overrides={
            "model.encoder_resolution.size": (side, side),
            "model.image_encoder.img_size": (side, side),
            "model.image_encoder.embed_dims": 64,
            "model.image_encoder.num_heads": 2,
            "model.image_encoder.num_layers": 3,
            "model.image_encoder.out_indices": (0, 1, 2),
            "model.decode_head.ban_cfg.clip_channels": 64,
            "model.decode_head.ban_cfg.side_enc_cfg.embed_dims": 32,
            "model.decode_head.ban_cfg.side_enc_cfg.num_layers": [2, 2, 2, 2],
            "model.decode_head.ban_dec_cfg.in_channels": [32, 64, 160, 256],
        },
        cdkd_kwargs={
            "encoder_resolution": side,
            "encoder_taps": (0, 1, 2),
            "encoder_overrides": {"embed_dim": 64, "num_heads": 2},
            "side_encoder": "mit_b0",
        },
        note=(
            f"reduced: ViT 3 blocks x 64 channels, 2 heads, taps (0, 1, 2), encoder input "
            f"{side} px (2x2 tokens); side branch MiT-b0 (embed 32, depths 2/2/2/2) instead of "
            "MiT-b2; everything else as the config"
        ),
    )


SPECS: dict[str, Spec] = {
    "fc_ef": Spec("fcsn/fc_ef_256x256_40k_levircd.py"),
    "fc_siam_conc": Spec("fcsn/fc_siam_conc_256x256_40k_levircd.py"),
    "fc_siam_diff": Spec("fcsn/fc_siam_diff_256x256_40k_levircd.py"),
    "snunet_c16": Spec("snunet/snunet_c16_256x256_40k_levircd.py"),
    "hanet": Spec("hanet/hanet_256x256_40k_levircd.py"),
    "cgnet": Spec("cgnet/cgnet_256x256_40k_levircd.py", {"model.backbone.pretrained": False}),
    "ifn": Spec("ifn/ifn_256x256_40k_levircd.py"),
    "tinycd": Spec("tinycd/tinycd_256x256_40k_levircd.py", {"model.backbone.pretrained": False}),
    "lightcdnet_s": Spec("lightcdnet/lightcdnet_s_256x256_40k_levircd.py"),
    "bit_r18": Spec("bit/bit_r18_256x256_40k_levircd.py"),
    "stanet_base": Spec("stanet/stanet_base_256x256_40k_levircd.py"),
    "changestar_farseg": Spec("changestar/changestar_farseg_1x96_256x256_40k_levircd.py"),
    "changestar_upernet": Spec("changestar/changestar_upernet_1x96_256x256_40k_levircd.py"),
    "changeformer_b0": Spec("changeformer/changeformer_mit-b0_256x256_40k_levircd.py"),
    "changeformer_b1": Spec("changeformer/changeformer_mit-b1_256x256_40k_levircd.py"),
    "changer_b0": Spec("changer/changer_ex_mit-b0_512x512_40k_levircd.py"),
    "changer_b1": Spec("changer/changer_ex_mit-b1_512x512_40k_levircd.py"),
    "changer_r18": Spec("changer/changer_ex_r18_512x512_40k_levircd.py"),
    "changer_s50": Spec("changer/changer_ex_s50_512x512_40k_levircd.py"),
    "ban_vit_b": _ban("ban/ban_vit-b16-clip_mit-b2_512x512_40k_levircd.py", 16),
    "ban_vit_b_in21k": _ban("ban/ban_vit-b16-in21k_mit-b2_512x512_40k_levircd.py", 16),
    "ban_vit_l": _ban("ban/ban_vit-l14-clip_mit-b2_512x512_40k_levircd.py", 14),
    "ttp_sam_l": Spec(
        "ttp/ttp_vit-sam-l_512x512_300e_levircd.py",
        overrides={
            "model.backbone.encoder_cfg.img_size": INPUT_SIZE,
            "model.backbone.encoder_cfg.arch": {
                "_delete_": True,
                "embed_dims": 64,
                "num_layers": 4,
                "num_heads": 2,
                "feedforward_channels": 256,
                "global_attn_indexes": [1, 3],
            },
            "model.backbone.encoder_cfg.out_channels": 32,
            "model.backbone.encoder_cfg.window_size": 3,
            "model.neck.necks.1.backbone_channel": 64,
            "model.neck.necks.1.in_channels": [16, 32, 64, 64],
            "model.decode_head.out_size": (16, 16),
        },
        cdkd_kwargs={
            "img_size": INPUT_SIZE,
            "out_size": 16,
            "encoder_overrides": {
                "depth": 4,
                "embed_dim": 64,
                "num_heads": 2,
                "mlp_ratio": 4.0,
                "global_attn_indexes": (1, 3),
                "window_size": 3,
                "neck_chans": 32,
            },
        },
        note=(
            "reduced: SAM encoder 4 blocks x 64 channels, 2 heads, MLP 256, global attention at "
            "blocks 1 and 3, window 3 (4x4 tokens, padded), neck 32 channels, built at 64 px; "
            "SimpleFPN from 64 channels; head grid 16x16"
        ),
    ),
}


def _stand_in_ext() -> types.ModuleType:
    """A module standing in for mmcv's compiled ops: any function raises when called."""

    class StandIn(types.ModuleType):
        def __getattr__(self, name: str) -> Callable[..., Any]:
            if name.startswith("__"):
                raise AttributeError(name)

            def refuse(*args: Any, **kwargs: Any) -> Any:
                raise RuntimeError(f"mmcv._ext.{name} is not available (mmcv-lite)")

            return refuse

    return StandIn("mmcv._ext")


def _refuse_download(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("a download was attempted while building an official network")


def setup_official(scratch: Path) -> Any:
    """Put the scratch environment first on the path, apply the workarounds, return the
    Open-CD model registry."""
    sys.path[:0] = [str(scratch / "site"), str(scratch / "src")]
    sys.modules["mmcv._ext"] = _stand_in_ext()
    import torch.hub
    import torchvision

    torch.hub.load_state_dict_from_url = _refuse_download
    torchvision.models._api.WeightsEnum.get_state_dict = _refuse_download

    import opencd.models.backbones.ifn as ifn
    from mmengine.registry import init_default_scope

    ifn.vgg16 = lambda pretrained=False, **kwargs: torchvision.models.vgg16(weights=None)
    init_default_scope("opencd")
    from opencd.registry import MODELS

    return MODELS


def _clear_init(cfg: Any) -> None:
    """Drop every Pretrained ``init_cfg`` / ``pretrained`` path below ``cfg`` (in place)."""
    if isinstance(cfg, dict):
        for key, value in list(cfg.items()):
            pretrained = key == "pretrained" and isinstance(value, str)
            if pretrained or (key == "init_cfg" and value is not None):
                cfg[key] = None
            else:
                _clear_init(value)
    elif isinstance(cfg, list | tuple):
        for item in cfg:
            _clear_init(item)


def _flatten(output: Any) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output.detach().float().contiguous()]
    return [t for item in output for t in _flatten(item)]


def _is_drawn(key: str, params: set[str]) -> bool:
    """Parameters and BatchNorm statistics are drawn; other buffers are stored as they are."""
    return key in params or key.rsplit(".", 1)[-1] in (
        "running_mean",
        "running_var",
        "num_batches_tracked",
    )


def make_fixture(name: str, spec: Spec, scratch: Path, models: Any, command: str) -> Path:
    """Build, fill, run and record one official network."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(scratch / "src" / "configs" / spec.config))
    cfg.merge_from_dict(spec.overrides)
    model_cfg = cfg.model
    model_cfg.pop("data_preprocessor", None)
    _clear_init(model_cfg)
    seed = zlib.crc32(name.encode())
    torch.manual_seed(seed)
    net = models.build(model_cfg).eval()

    own = net.state_dict(keep_vars=True)
    keys = list(own)
    shapes = [tuple(own[k].shape) for k in keys]
    dtypes = [str(own[k].dtype).removeprefix("torch.") for k in keys]
    aliases: dict[str, str] = {}
    first: dict[int, str] = {}
    for key in keys:
        first.setdefault(id(own[key]), key)
        if first[id(own[key])] != key:
            aliases[key] = first[id(own[key])]
    params = {k for k in keys if isinstance(own[k], torch.nn.Parameter)}
    fixed = {
        k: own[k].detach().clone() for k in keys if k not in aliases and not _is_drawn(k, params)
    }
    state = generate_state_dict(keys, shapes, dtypes, seed, fixed, aliases)
    net.load_state_dict(state, strict=True)

    g = torch.Generator().manual_seed(seed + 1)
    inputs = torch.randn(1, 6, INPUT_SIZE, INPUT_SIZE, generator=g)
    with torch.no_grad():
        outputs = _flatten(net._forward(inputs))
        names = [f"decode_head.{i}" for i in range(len(outputs))]
        aux = getattr(net, "auxiliary_head", None)
        if aux is not None:
            heads = aux if isinstance(aux, torch.nn.ModuleList) else [aux]
            feats = net.extract_feat(inputs)
            for index, head in enumerate(heads):
                extra = _flatten(head.forward(feats))
                names += [f"auxiliary_head.{index}.{i}" for i in range(len(extra))]
                outputs += extra
    for out in outputs:
        if not torch.isfinite(out).all():
            raise RuntimeError(f"{name}: the official output is not finite")

    fixture = {
        "format": FORMAT,
        "scheme": SCHEME,
        "model": name,
        "source": {
            "repo": OPENCD_REPO,
            "commit": OPENCD_COMMIT,
            "config": f"configs/{spec.config}",
            "overrides": {k: repr(v) for k, v in spec.overrides.items()},
            "class": f"{type(net).__module__}.{type(net).__name__}",
            "note": spec.note,
            "command": command,
            "torch": str(torch.__version__),
            "output_names": names,
        },
        "cdkd_kwargs": spec.cdkd_kwargs,
        "seed": seed,
        "keys": keys,
        "shapes": [list(s) for s in shapes],
        "dtypes": dtypes,
        "fixed": fixed,
        "aliases": aliases,
        "inputs": inputs,
        "outputs": outputs,
    }
    path = FIXTURE_DIR / f"{name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, path)
    total = sum(math.prod(s) for s in shapes)
    shown = ", ".join(f"{n} {tuple(o.shape)}" for n, o in zip(names, outputs, strict=True))
    counts = f"{len(keys)} keys, {total / 1e6:.3f} M values, {len(fixed)} fixed"
    print(f"{name}: {counts}, {len(aliases)} aliases; {shown}")
    return path


def main() -> None:
    """Write the fixtures of the named networks (all by default)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, required=True, help="folder with src/ and site/")
    parser.add_argument("models", nargs="*", help=f"networks (default: all {len(SPECS)})")
    args = parser.parse_args()
    unknown = sorted(set(args.models) - set(SPECS))
    if unknown:
        parser.error(f"unknown networks: {', '.join(unknown)}")
    command = shlex.join(["python", "scripts/make_official_fixtures.py", *sys.argv[1:]])
    models = setup_official(args.scratch)
    torch.set_grad_enabled(False)
    for name in args.models or list(SPECS):
        path = make_fixture(name, SPECS[name], args.scratch, models, command)
        print(f"  -> {path.relative_to(ROOT)} ({path.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()

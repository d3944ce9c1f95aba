"""The pretrained parts of each network: which module, which released weights, how converted."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Source:
    """A released weight file: library, tag, and its Hugging Face hub location.

    Attributes:
        library: ``timm`` or ``smp``.
        tag: the library's name of the weights (``resnet18d.ra2_in1k``, ``mit_b1.imagenet``).
        repo_id: hub repository holding the file.
        revision: hub revision (smp pins one; timm uses ``main``).
        filename: the file in the repository.
    """

    library: str
    tag: str
    repo_id: str
    revision: str | None = None
    filename: str = "model.safetensors"

    def __str__(self) -> str:
        return f"{self.library} {self.tag}"


@dataclass(frozen=True)
class Part:
    """A pretrained part of a network.

    Attributes:
        name: key of the part in ``model.backbone_weights={name: PATH}``.
        module: path of the part inside the network (``""``: the network itself).
        kind: how a file is converted to the part's keys (a key of
            :data:`~cdkd.models.pretrained.convert.CONVERTERS`).
        tag: library and weight tag, ``timm:<model>.<tag>`` or ``smp:<encoder>``.
        reference: the official recipe starts from these weights (Changer-R18/S50 do not).
        freeze: the part is frozen once its weights are loaded (IFN's VGG-16).
    """

    name: str
    module: str
    kind: str
    tag: str
    reference: bool = True
    freeze: bool = False

    @property
    def source(self) -> Source:
        """Where the library downloads these weights from."""
        library, tag = self.tag.split(":", 1)
        if library == "smp":
            from segmentation_models_pytorch.encoders import encoders

            settings = encoders[tag]["pretrained_settings"]["imagenet"]
            return Source("smp", f"{tag}.imagenet", settings["repo_id"], settings["revision"])
        import timm

        cfg = timm.models.get_pretrained_cfg(tag)
        repo = cfg.hf_hub_id if cfg is not None else None
        if not repo:
            raise ValueError(f"timm tag '{tag}' names no hub repository")
        return Source("timm", tag, repo + tag if repo.endswith("/") else repo)


def _resnet_part(reference: bool = True) -> Part:
    return Part("backbone", "backbone", "resnet_v1c", "timm:resnet18d.ra2_in1k", reference)


def _mit_part(variant: str, module: str = "backbone", name: str = "backbone") -> Part:
    return Part(name, module, "mit", f"smp:{variant}")


#: Pretrained parts of every network that has any (the others train from scratch).
PARTS: dict[str, tuple[Part, ...]] = {
    "stanet_base": (_resnet_part(),),
    "ifn": (Part("backbone", "encoder", "vgg", "timm:vgg16.tv_in1k", freeze=True),),
    "bit_r18": (_resnet_part(),),
    "changestar_farseg": (_resnet_part(),),
    "changestar_upernet": (_resnet_part(),),
    "changeformer_b0": (_mit_part("mit_b0"),),
    "changeformer_b1": (_mit_part("mit_b1"),),
    "tinycd": (Part("backbone", "", "efficientnet", "timm:efficientnet_b4.ra2_in1k"),),
    "changer_b0": (_mit_part("mit_b0"),),
    "changer_b1": (_mit_part("mit_b1"),),
    "changer_r18": (_resnet_part(reference=False),),
    "changer_s50": (Part("backbone", "backbone", "timm", "timm:resnest50d.in1k", False),),
    "cgnet": (Part("backbone", "encoder", "vgg", "timm:vgg16_bn.tv_in1k"),),
    "ban_vit_b": (
        Part("encoder", "encoder", "vit", "timm:vit_base_patch16_clip_quickgelu_224.openai"),
        _mit_part("mit_b2", "branch.mit", "side"),
    ),
    "ban_vit_b_in21k": (
        Part("encoder", "encoder", "vit", "timm:vit_base_patch16_224.augreg_in21k"),
        _mit_part("mit_b2", "branch.mit", "side"),
    ),
    "ban_vit_l": (
        Part("encoder", "encoder", "vit", "timm:vit_large_patch14_clip_quickgelu_336.openai"),
        _mit_part("mit_b2", "branch.mit", "side"),
    ),
    "ttp_sam_l": (Part("encoder", "encoder", "sam", "timm:samvit_large_patch16.sa1b"),),
}


def parts_of(model: str) -> tuple[Part, ...]:
    """The pretrained parts of ``model`` (empty for networks trained from scratch)."""
    return PARTS.get(model, ())


def random_parts(model: str, loaded: Mapping[str, Any]) -> list[Part]:
    """Parts the reference recipe starts from pretrained weights that ``loaded`` lacks."""
    return [p for p in parts_of(model) if p.reference and p.name not in loaded]

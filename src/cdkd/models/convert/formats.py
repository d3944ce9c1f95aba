"""Which project wrote a checkpoint, and the networks it holds in cdkd's keys.

Formats told apart by their contents:

- ``cdkd``: a cdkd (Lightning) training checkpoint: ``hyper_parameters`` recording the model,
  the network's keys under ``net.`` in ``state_dict``;
- ``mmengine``: a checkpoint saved by Open-CD or the official MTKD code (mmengine's runner):
  ``state_dict`` beside ``meta``, ``optimizer``, ``message_hub`` ...; ``meta["cfg"]`` may hold
  the config text;
- ``opencd``: a bare state dict with Open-CD's key names (every key below ``backbone``,
  ``neck``, ``decode_head``, ``auxiliary_head`` or ``image_encoder``, or some below one of
  the last four, which no cdkd network uses);
- ``state``: any other bare state dict (cdkd's own keys, or a release format a network class
  converts itself, such as the TinyCD authors' ``_backbone.*``).

An official MTKD student checkpoint holds its three teachers as submodules: keys
``teacher_s.*``, ``teacher_m.*`` and ``teacher_l.*`` (two of them for the two-teacher
ablation) beside the student's own. :func:`read_checkpoint` separates them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cdkd.errors import CheckpointError
from cdkd.models.convert.opencd import from_opencd
from cdkd.models.weight_files import load_checkpoint_file

CDKD, MMENGINE, OPENCD, STATE = "cdkd", "mmengine", "opencd", "state"
#: Name of the network that is not a teacher (the only one of a checkpoint without teachers).
STUDENT = "student"
#: The official MTKD code's teacher submodules and the CAR bucket each was trained on.
TEACHER_BUCKETS = {"teacher_s": "small", "teacher_m": "medium", "teacher_l": "large"}
#: Top-level modules of Open-CD's segmentors, and those of them no cdkd network has.
OPENCD_ROOTS = frozenset({"backbone", "neck", "decode_head", "auxiliary_head", "image_encoder"})
_OPENCD_ONLY = OPENCD_ROOTS - {"backbone"}
#: Entries of an mmengine checkpoint besides its state dict.
_MMENGINE_KEYS = frozenset({"meta", "optimizer", "message_hub", "param_schedulers"})
#: Attribute under which cdkd's LightningModules hold the network; a training checkpoint's
#: ``state_dict`` keys carry it as a prefix.
NETWORK_PREFIX = "net."


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file as read: its format, its networks' state dicts, what it records.

    ``networks`` maps ``student`` (the network of a single-network checkpoint too) and each
    teacher found (``teacher_s`` ...) to its state dict in the file's own key names;
    ``config`` is the config text of an mmengine checkpoint's ``meta``; ``recorded_model``
    the model a cdkd checkpoint was trained for.
    """

    path: Path
    format: str
    networks: dict[str, dict[str, torch.Tensor]]
    config: str | None = None
    recorded_model: str | None = None
    hparams: dict[str, Any] = field(default_factory=dict)

    @property
    def teachers(self) -> dict[str, str]:
        """Teacher submodule -> the CAR bucket it was trained on, for each teacher found."""
        return {name: TEACHER_BUCKETS[name] for name in self.networks if name != STUDENT}

    @property
    def opencd_keys(self) -> bool:
        """Whether the networks carry Open-CD's key names (converted by :func:`to_cdkd`)."""
        return self.format in (MMENGINE, OPENCD)

    def describe(self) -> str:
        """A short phrase for messages: the format and the teachers found."""
        names = {CDKD: "cdkd checkpoint", MMENGINE: "mmengine checkpoint"}
        names |= {OPENCD: "Open-CD state dict", STATE: "state dict"}
        teachers = f" with teachers {', '.join(self.teachers)}" if self.teachers else ""
        return names[self.format] + teachers


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read ``path`` and detect its format (see the module docstring).

    Raises :class:`CheckpointError` naming the file when it is missing, unreadable or holds
    no state dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    obj = load_checkpoint_file(path)
    config: str | None = None
    if _is_cdkd(obj):
        hparams = dict(obj["hyper_parameters"])
        recorded = str(hparams["model"])
        state = _tensors(path, obj["state_dict"])
        net = NETWORK_PREFIX
        if any(k.startswith(net) for k in state):
            state = {k[len(net) :]: v for k, v in state.items() if k.startswith(net)}
        return Checkpoint(path, CDKD, {STUDENT: state}, None, recorded, hparams)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        meta = obj.get("meta")
        if isinstance(meta, Mapping) and isinstance(meta.get("cfg"), str):
            config = meta["cfg"]
        wrapped_by_mmengine = bool(_MMENGINE_KEYS & set(obj))
        obj = obj["state_dict"]
    elif isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        wrapped_by_mmengine = False
        obj = obj["model"]
    else:
        wrapped_by_mmengine = False
    networks = _split_teachers(_tensors(path, obj))
    fmt = STATE
    if _has_opencd_keys(networks[STUDENT]):
        fmt = MMENGINE if wrapped_by_mmengine else OPENCD
    return Checkpoint(path, fmt, networks, config)


def to_cdkd(checkpoint: Checkpoint, model: str, network: str = STUDENT) -> dict[str, torch.Tensor]:
    """One network of ``checkpoint`` in cdkd's keys, for the cdkd network ``model``.

    Open-CD keys are renamed by :func:`cdkd.models.convert.opencd.from_opencd`; other state
    dicts are returned as they are (a network class converts its authors' format itself).
    """
    if network not in checkpoint.networks:
        found = ", ".join(checkpoint.networks)
        raise CheckpointError(f"{checkpoint.path}: no network '{network}' (found: {found})")
    state = checkpoint.networks[network]
    if not checkpoint.opencd_keys:
        return state
    try:
        return from_opencd(model, state)
    except KeyError as exc:
        raise CheckpointError(
            f"{checkpoint.path}: Open-CD checkpoints of model '{model}' cannot be read yet "
            "(no key mapping for this network)"
        ) from exc


def _is_cdkd(obj: Any) -> bool:
    hparams = obj.get("hyper_parameters") if isinstance(obj, Mapping) else None
    return (
        isinstance(hparams, Mapping)
        and "model" in hparams
        and isinstance(obj.get("state_dict"), Mapping)
    )


def _tensors(path: Path, obj: Any) -> dict[str, torch.Tensor]:
    """``obj`` as a state dict of tensors, or one line naming ``path``."""
    if (
        not isinstance(obj, Mapping)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise CheckpointError(f"{path}: does not contain a state dict of tensors")
    return dict(obj)


def _root(key: str) -> str:
    return key.split(".", 1)[0]


def _has_opencd_keys(state: Mapping[str, torch.Tensor]) -> bool:
    roots = {_root(k) for k in state} - set(TEACHER_BUCKETS)
    return bool(roots) and (roots <= OPENCD_ROOTS or bool(roots & _OPENCD_ONLY))


def _split_teachers(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The student's keys and each ``teacher_*`` submodule's, without its prefix."""
    networks: dict[str, dict[str, torch.Tensor]] = {STUDENT: {}}
    for key, value in state.items():
        root, _, rest = key.partition(".")
        if root in TEACHER_BUCKETS and rest:
            networks.setdefault(root, {})[rest] = value
        else:
            networks[STUDENT][key] = value
    order = [STUDENT, *(t for t in TEACHER_BUCKETS if t in networks)]
    return {name: networks[name] for name in order}


def _type(pattern: str) -> str:
    """A config's ``type='X'`` (either quote, with or without a registry scope)."""
    return rf"""type\s*=\s*['"](?:\w+\.)?(?:{pattern})['"]"""


def _dims(value: int) -> str:
    return rf"embed_dims\s*=\s*{value}\b"


_BAN = _type("(?:Distill)?BAN")
_IN21K = r"i(?:n)?21k"
#: How each network shows in an Open-CD / MTKD config text: every ``required`` pattern
#: occurs and no ``forbidden`` one does. Written from the networks' configs in Open-CD and
#: the official MTKD code (``configs/_base_/models/*.py`` and the per-model files).
SIGNATURES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "ban_vit_b": ((_BAN, _dims(768)), (_IN21K,)),
    "ban_vit_b_in21k": ((_BAN, _dims(768), _IN21K), ()),
    "ban_vit_l": ((_BAN, _dims(1024)), ()),
    "bit_r18": ((_type("BITHead"),), ()),
    "cgnet": ((_type("CGNet"),), ()),
    "changeformer_b0": ((_type("MixVisionTransformer"), _dims(32)), ()),
    "changeformer_b1": ((_type("MixVisionTransformer"), _dims(64)), ()),
    "changer_b0": ((_type("IA_MixVisionTransformer"), _dims(32)), ()),
    "changer_b1": ((_type("IA_MixVisionTransformer"), _dims(64)), ()),
    "changer_r18": ((_type("IA_ResNetV1c"),), ()),
    "changer_s50": ((_type("IA_ResNeSt"),), ()),
    "changestar_farseg": ((_type("ChangeStarHead"), _type("FarSegHead")), ()),
    "changestar_upernet": ((_type("ChangeStarHead"), _type("UPerHead")), ()),
    "fc_ef": ((_type("FC_EF"),), ()),
    "fc_siam_conc": ((_type("FC_Siam_conc"),), ()),
    "fc_siam_diff": ((_type("FC_Siam_diff"),), ()),
    "hanet": ((_type("HAN"),), ()),
    "ifn": ((_type("IFN"),), ()),
    "lightcdnet_s": ((_type("LightCDNet"),), ()),
    "snunet_c16": ((_type("SNUNet_ECAM"),), ()),
    "stanet_base": ((_type("STAHead"),), ()),
    "tinycd": ((_type("TinyCD"),), ()),
    "ttp_sam_l": ((_type("(?:Distill)?TimeTravellingPixels"),), ()),
}


def recognise(config: str) -> list[str]:
    """The cdkd networks whose signature (:data:`SIGNATURES`) a config text shows."""
    return [
        name
        for name, (required, forbidden) in SIGNATURES.items()
        if all(re.search(p, config) for p in required)
        and not any(re.search(p, config) for p in forbidden)
    ]


def check_architecture(checkpoint: Checkpoint, model: str) -> None:
    """Refuse a checkpoint recorded for another architecture than ``model``.

    A cdkd checkpoint names its model; an mmengine checkpoint's config text is recognised by
    :func:`recognise` (a text that shows no known network is not checked).
    """
    if checkpoint.recorded_model is not None and checkpoint.recorded_model != model:
        raise CheckpointError(
            f"{checkpoint.path}: checkpoint is for model '{checkpoint.recorded_model}', "
            f"not '{model}'"
        )
    if checkpoint.config is None:
        return
    found = recognise(checkpoint.config)
    if found and model not in found:
        raise CheckpointError(
            f"{checkpoint.path}: its config describes {' / '.join(found)}, not model '{model}'"
        )

"""Loading MedSAM2 checkpoints: the official ``{"model": state_dict}`` file, weights only, strict.

Without a config, the architecture is recognised from the checkpoint's keys: EfficientTAM (Efficient MedSAM2,
ViT trunk; Ti or S by its width) or else SAM 2.1 Hiera-T (MedSAM2).

Every failure is a :class:`CheckpointError` whose message is a sentence a user can act on.
"""

from __future__ import annotations

import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import torch

from ..weights import CHECKPOINT_FILENAME, missing_checkpoint_message
from .config import EFFICIENTTAM_S_512, EFFICIENTTAM_TI_512, MEDSAM2_T512, MedSAM2Config
from .medsam2 import MedSAM2


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, unsafe or of another architecture."""


def read_state_dict(path: str | Path) -> Dict[str, torch.Tensor]:
    """The state_dict of an official checkpoint file, read without executing any code from it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(missing_checkpoint_message(path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's notes on pickle protocols are not for users
            content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # The weights-only unpickler names the class or function it refused ("... GLOBAL os.system ..."), but
        # not for every kind of file (a plain pickle gets a generic message): look at the pickle ourselves.
        code = re.search(r"\bglobal\s+([\w.]+)", str(error), re.IGNORECASE)
        unsafe = code.group(1) if code else _code_in_pickle(path)
        if unsafe:
            raise CheckpointError(
                f"Refused to load {path} because it is unsafe: besides weights it holds Python code ({unsafe}) that "
                f"would run when loaded; nothing from it was executed, so use the official {CHECKPOINT_FILENAME}."
            ) from error
        raise CheckpointError(_damaged_message(path, error)) from error
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as error:
        raise CheckpointError(_damaged_message(path, error)) from error
    if not isinstance(content, Mapping) or not isinstance(content.get("model"), Mapping):
        found = f"keys {sorted(content)[:5]}" if isinstance(content, Mapping) else type(content).__name__
        raise CheckpointError(
            f"{path} is not a MedSAM2 checkpoint: expected a dictionary with a 'model' state_dict, found {found}."
        )
    state_dict = dict(content["model"])
    if not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise CheckpointError(f"{path} is not a MedSAM2 checkpoint: its 'model' entry holds non-tensor values.")
    return state_dict


# Modules whose functions a weights-only checkpoint may name: the tensors' own rebuilding functions.
SAFE_PICKLE_MODULES = ("torch", "collections", "_codecs", "numpy")


def _code_in_pickle(path: Path) -> Optional[str]:
    """The first function or class outside SAFE_PICKLE_MODULES that the pickle in ``path`` (a torch zip file's
    data.pkl, or the file itself) would import when loaded, found by reading its opcodes (nothing is executed);
    None when it names none or is not a pickle at all."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((item for item in archive.namelist() if item.endswith("data.pkl")), None)
            data = archive.read(name) if name else b""
    except (zipfile.BadZipFile, OSError):
        data = path.read_bytes()
    strings: List[str] = []
    memo: Dict[object, object] = {}
    try:
        for opcode, argument, _ in pickletools.genops(data):
            if opcode.name in ("GLOBAL", "INST"):
                named = str(argument).replace(" ", ".")
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                named = f"{strings[-2]}.{strings[-1]}"
            else:
                if isinstance(argument, str) and ("UNICODE" in opcode.name or "STRING" in opcode.name):
                    strings.append(str(argument))
                elif opcode.name in ("MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT") and strings:
                    memo[len(memo) if opcode.name == "MEMOIZE" else argument] = strings[-1]
                elif opcode.name in ("BINGET", "LONG_BINGET", "GET") and isinstance(memo.get(argument), str):
                    strings.append(memo[argument])
                continue
            if named.split(".")[0] not in SAFE_PICKLE_MODULES:
                return named
    except (ValueError, EOFError, UnicodeDecodeError):
        pass  # not (or no longer) a pickle: damaged, not unsafe
    return None


def _damaged_message(path: Path, error: BaseException) -> str:
    # torch's own words are left out: its unpickling errors advise turning weights_only off, which would run
    # whatever code the file holds.
    size = path.stat().st_size
    return (
        f"The checkpoint {path} ({size:,} bytes) is damaged or not a PyTorch file ({error.__class__.__name__}). "
        "Download it again."
    )


def load_model(
    path: str | Path, config: Optional[MedSAM2Config] = None, device: torch.device | str = "cpu"
) -> MedSAM2:
    """Build the network for ``config`` (None: :func:`recognised_config`) and load the checkpoint strictly;
    returns it in eval mode."""
    state_dict = read_state_dict(path)
    model = MedSAM2(config or recognised_config(state_dict))
    check_compatible(state_dict, model.state_dict(), path)
    model.load_state_dict(state_dict, strict=True)
    return model.to(device).eval()


def check_compatible(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], path) -> None:
    """Raise a CheckpointError naming missing/unexpected/mis-shaped keys and what the checkpoint looks like."""
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        key for key in set(expected) & set(state_dict) if tuple(expected[key].shape) != tuple(state_dict[key].shape)
    )
    if not (missing or unexpected or mismatched):
        return
    problems: List[str] = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if mismatched:
        examples = ", ".join(
            f"{key} {list(state_dict[key].shape)} instead of {list(expected[key].shape)}" for key in mismatched[:3]
        )
        problems.append(f"{len(mismatched)} tensors of another shape (e.g. {examples})")
    raise CheckpointError(
        f"The checkpoint {path} does not fit the configured architecture: {'; '.join(problems)}. "
        f"{describe_architecture(state_dict)}"
    )


def recognised_config(state_dict: Mapping[str, torch.Tensor]) -> MedSAM2Config:
    """The built-in config of the checkpoint's family, from its keys: EfficientTAM-S or -Ti (by the ViT's
    width) where the neck has EfficientTAM's convolutions, else MedSAM2's SAM 2.1 Hiera-T. A checkpoint of
    neither then fails :func:`check_compatible` with a sentence saying what it looks like."""
    if "image_encoder.neck.convs.0.conv_1x1.weight" not in state_dict:
        return MEDSAM2_T512
    patch = state_dict.get("image_encoder.trunk.patch_embed.proj.weight")
    small = patch is not None and patch.shape[0] == EFFICIENTTAM_S_512.trunk.embed_dim
    return EFFICIENTTAM_S_512 if small else EFFICIENTTAM_TI_512


_HIERA_VARIANTS = {(96, 12): "Hiera-T (tiny)", (96, 16): "Hiera-S (small)", (112, 24): "Hiera-B+ (base plus)",
                   (144, 48): "Hiera-L (large)"}


def describe_architecture(state_dict: Mapping[str, torch.Tensor]) -> str:
    """A guess, from key names and shapes, of which model a state_dict belongs to."""
    keys = set(state_dict)
    if any(key.startswith("image_encoder.blocks.") for key in keys):
        return "It looks like a SAM (version 1) checkpoint, not SAM 2 / MedSAM2."
    patch = state_dict.get("image_encoder.trunk.patch_embed.proj.weight")
    if patch is None:
        return "It does not look like a SAM 2 family checkpoint."
    blocks = {int(key.split(".")[3]) for key in keys if key.startswith("image_encoder.trunk.blocks.")}
    width, depth = int(patch.shape[0]), len(blocks)
    if any(".conv_1x1." in key for key in keys):
        return (
            f"It looks like an EfficientTAM (Efficient MedSAM2) checkpoint with a ViT trunk of width {width} and "
            f"{depth} blocks; the built-in ones are EfficientTAM-Ti (width {EFFICIENTTAM_TI_512.trunk.embed_dim}) "
            f"and -S (width {EFFICIENTTAM_S_512.trunk.embed_dim}), 12 blocks, at 512 px. If it is a model of another "
            "size, pass its config file (--config)."
        )
    trunk = _HIERA_VARIANTS.get((width, depth), f"a Hiera trunk of width {width} with {depth} blocks")
    version = "SAM 2.1" if "no_obj_embed_spatial" in keys else "SAM 2.0"
    neck = state_dict.get("image_encoder.neck.convs.0.conv.weight")
    neck_text = f", decoder width {int(neck.shape[0])}" if neck is not None else ""
    return (
        f"It looks like a {version} checkpoint with {trunk}{neck_text}; MedSAM2 is SAM 2.1 Hiera-T at 512 px. "
        "If it is a model of another size, pass its config file (--config)."
    )

"""Which parameters travel between server and nodes: the trainable ones, never the frozen VLM.

With SmolVLA's defaults (``train_expert_only``, ``freeze_vision_encoder``, ``train_state_proj``)
those are the action expert and the projections (state_proj, action_in/out_proj,
action_time_mlp_in/out): ~100M of the ~450M parameters. The VLM is identical on every node
(from the base checkpoint, or from the same seeded initialisation) and never changes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from zk0cli.core.errors import Zk0Error

if TYPE_CHECKING:
    import torch

VLM_PREFIX = "model.vlm_with_expert.vlm."  # SmolVLA's frozen vision-language model


def trainable_names(policy: torch.nn.Module) -> list[str]:
    """Names of the parameters that train (and travel), in the policy's own order."""
    return [name for name, _ in trainable_parameters(policy)]


def trainable_parameters(policy: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    params = [(name, param) for name, param in policy.named_parameters() if param.requires_grad]
    leaked = [name for name, _ in params if name.startswith(VLM_PREFIX)]
    if leaked:  # only possible if someone unfroze the VLM: it must never go on the wire
        raise Zk0Error(
            f"{len(leaked)} VLM parameters are trainable (e.g. {leaked[0]})",
            hint="build the policy with SmolVLA's defaults (train_expert_only=True)",
        )
    return params


def get_trainable(policy: torch.nn.Module) -> OrderedDict[str, torch.Tensor]:
    """fp32 CPU copies of the trainable parameters, safe to serialise or keep as a reference."""
    import torch

    return OrderedDict(
        (name, param.detach().to(device="cpu", dtype=torch.float32, copy=True))
        for name, param in trainable_parameters(policy)
    )


def set_trainable(policy: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load ``state`` into the trainable parameters; names and shapes must match exactly."""
    import torch

    named = trainable_parameters(policy)
    check_matches(named, state)
    with torch.no_grad():
        for name, param in named:
            param.copy_(torch.as_tensor(state[name]).to(device=param.device, dtype=param.dtype))


def read_checkpoint_trainable(policy: torch.nn.Module, directory: Path) -> OrderedDict[str, torch.Tensor]:
    """The trainable parameters saved in a LeRobot checkpoint dir (``model.safetensors``), fp32,
    checked against ``policy``'s names and shapes."""
    from safetensors.torch import load_file

    path = Path(directory) / "model.safetensors"
    try:
        saved = load_file(str(path))
    except (OSError, ValueError, RuntimeError) as exc:
        raise Zk0Error(
            f"cannot read the checkpoint {path}: {exc}",
            hint="the checkpoint is damaged; resume from an earlier one by removing this one's directory",
        ) from None
    named = trainable_parameters(policy)
    state = OrderedDict((name, saved[name].float()) for name, _ in named if name in saved)
    check_matches(named, state)
    return state


def check_matches(named: Sequence[tuple[str, torch.Tensor]], state: Mapping[str, torch.Tensor]) -> None:
    """Raise a Zk0Error unless ``state`` has exactly these names with these shapes."""
    names = [name for name, _ in named]
    missing = [name for name in names if name not in state]
    known = set(names)
    unexpected = [name for name in state if name not in known]
    if missing or unexpected:
        detail = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise Zk0Error(
            f"trainable parameters do not match the policy ({len(missing)} missing, "
            f"{len(unexpected)} unexpected: {detail})",
            hint=_SAME_POLICY_HINT,
        )
    for name, param in named:
        shape = tuple(state[name].shape)
        if shape != tuple(param.shape):
            raise Zk0Error(
                f"shape mismatch for {name}: got {shape}, the policy has {tuple(param.shape)}",
                hint=_SAME_POLICY_HINT,
            )


_SAME_POLICY_HINT = "server and nodes must build the same policy (same base, backbone and chunk size)"

"""What each parameter is, read from the structure of the model, not from its name.

One table drives both the optimiser groups (`pgolf.optim.groups`) and the export plan
(`pgolf.quant`): a linear layer or embedding carries its role (`CastedLinear(..., role=...)`,
`role_embedding(...)`), and every parameter a module owns directly (scales, mixes, gains, skip
weights, gate vectors) is a "control" tensor. A new module therefore can never fall silently into
the wrong group: its linears are matrices unless it says otherwise, and its loose parameters are
controls.
"""

from __future__ import annotations

from torch import nn

ROLES: tuple[str, ...] = ("matrix", "embedding", "head", "table", "gate", "control")
"""matrix: 2-D weights inside blocks (Muon; low-bit export); embedding: the token table; head: an
untied output head; table: side embedding tables (bigram hash, value embeddings); gate: small gate
projections; control: vectors and scalars owned directly by a module (Adam; kept in float)."""


def param_roles(model: nn.Module) -> dict[str, str]:
    """Parameter name (as in `named_parameters`) -> role; every parameter gets exactly one."""
    roles: dict[str, str] = {}
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            name = f"{module_name}.{param_name}" if module_name else param_name
            tagged = isinstance(module, (nn.Linear, nn.Embedding))
            role = getattr(module, "role", None) if tagged else "control"
            if role not in ROLES:
                raise ValueError(f"parameter {name} of {type(module).__name__} has no valid role ({role!r}); "
                                 f"construct it with role= one of {ROLES}")
            roles[name] = role
    return roles


def params_by_role(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Role -> the parameters with that role, in `named_parameters` order (shared ones once)."""
    roles = param_roles(model)
    out: dict[str, list[nn.Parameter]] = {r: [] for r in ROLES}
    for name, p in model.named_parameters():
        out[roles[name]].append(p)
    return out

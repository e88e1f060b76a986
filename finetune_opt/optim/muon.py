"""Muon for the hidden weight matrices, AdamW for everything else, as one torch optimizer.

Muon (Jordan et al. 2024; Liu et al. 2025, "Muon is Scalable for LLM Training") orthogonalises
the momentum of a 2-D weight with a Newton-Schulz iteration. It is meant for the *hidden* matrices
only: embeddings and output heads are 2-D too, but their rows are per-token / per-class vectors,
not a linear map between hidden states, so they stay with AdamW, as do norms and biases. Hence
the split is by module type and name, never by `ndim == 2`.

`adjust_lr_fn="match_rms_adamw"` (Moonshot's rule, the default here) scales Muon's update to
AdamW's RMS, so one learning rate and weight decay serve both halves.
"""

import math

import torch
from torch import nn

from finetune_opt.optim.closure import loss_from_closure
from finetune_opt.optim.param_groups import build_param_groups

# Sub-modules that are output heads in HF models (sequence classification, LM, QA, MLM heads).
HEAD_NAMES = ("classifier", "score", "lm_head", "qa_outputs", "cls")


def _is_hidden_matrix_module(module: nn.Module) -> bool:
    # transformers' GPT-2 style Conv1D is a Linear with a transposed weight.
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def muon_parameter_names(model: nn.Module) -> set[str]:
    """Trainable weights of hidden linear layers: not embeddings, not heads, not biases/norms."""
    excluded = set()
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = getattr(model, getter, lambda: None)()
        if module is not None:
            excluded.add(id(module))
    names = set()
    for module_name, module in model.named_modules():
        head = any(part in HEAD_NAMES for part in module_name.split("."))
        if head or id(module) in excluded or not _is_hidden_matrix_module(module):
            continue
        if module.weight.requires_grad and module.weight.ndim == 2:
            names.add(f"{module_name}.weight" if module_name else "weight")
    return names


def muon_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """A `muon` group of hidden matrices, then the usual AdamW decay / no-decay groups."""
    hidden = muon_parameter_names(model)
    by_name = dict(model.named_parameters())
    muon_ids = {id(by_name[n]) for n in hidden}
    groups = []
    for group in build_param_groups(model, weight_decay):
        rest = [p for p in group["params"] if id(p) not in muon_ids]
        if rest:
            groups.append({**group, "params": rest, "use_muon": False})
    muon = [by_name[n] for n in by_name if n in hidden]
    if muon:
        groups.insert(0, {"params": muon, "weight_decay": weight_decay, "group_name": "muon", "use_muon": True})
    return groups


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer facade over torch.optim.Muon and torch.optim.AdamW sharing group dicts and
    state, so LR schedulers, Accelerate, checkpoints and the Trainer see a single optimizer."""

    def __init__(self, params, lr=5e-5, weight_decay=0.01, momentum=0.95, nesterov=True, ns_steps=5,
                 adjust_lr_fn="match_rms_adamw", adamw_betas=(0.9, 0.999), adamw_eps=1e-8, foreach=True):
        groups = [g if isinstance(g, dict) else {"params": [g]} for g in params]
        for g in groups:  # explicit params without a role: Muon for 2-D, AdamW otherwise
            g.setdefault("use_muon", all(p.ndim == 2 for p in g["params"]))
            if not g["use_muon"]:  # recorded under the spec's names, so results report them
                g.update(adamw_betas=adamw_betas, adamw_eps=adamw_eps)
        self.muon = torch.optim.Muon([g for g in groups if g["use_muon"]], lr=lr,
                                     weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                                     ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn) \
            if any(g["use_muon"] for g in groups) else None
        self.adamw = torch.optim.AdamW([g for g in groups if not g["use_muon"]], lr=lr, betas=adamw_betas,
                                       eps=adamw_eps, weight_decay=weight_decay, foreach=foreach) \
            if not all(g["use_muon"] for g in groups) else None
        super().__init__(groups, dict(lr=lr, weight_decay=weight_decay))
        self._link()
        # load_state_dict replaces the group dicts and the state: point the halves at the new ones.
        self.register_load_state_dict_post_hook(lambda opt: opt._link())

    def _link(self):
        for half, use_muon in ((self.muon, True), (self.adamw, False)):
            if half is not None:
                half.param_groups = [g for g in self.param_groups if g["use_muon"] == use_muon]
                half.state = self.state

    @torch.no_grad()
    def step(self, closure=None):
        loss = loss_from_closure(closure)
        for half in (self.muon, self.adamw):
            if half is not None:
                half.step()
        return loss


def newton_schulz_flops(shape, group) -> int:
    """Matmul FLOPs of Muon's quintic Newton-Schulz for an m x n matrix (m <= n after transpose):
    per iteration X X^T (2m^2n), (XX^T)^2 (2m^3), and (aI + bA + cA^2) X (2m^2n)."""
    if not group.get("use_muon"):
        return 0
    m, n = sorted(shape[:2])
    return group["ns_steps"] * (4 * m * m * n + 2 * m ** 3)


def muon_state_bytes(shape, dtype, group) -> int:
    """Muon keeps one momentum buffer; the AdamW half two moments."""
    return (1 if group.get("use_muon") else 2) * math.prod(shape) * dtype.itemsize


def muon_traffic_bytes(shape, dtype, group) -> int:
    """Muon: read p, g, m; write p, m (the Newton-Schulz matmuls are counted as FLOPs);
    AdamW: read p, g, m, v; write p, m, v."""
    return (5 if group.get("use_muon") else 7) * math.prod(shape) * dtype.itemsize

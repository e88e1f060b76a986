"""Muon for the hidden weight matrices, AdamW for everything else, as one torch optimizer.

Muon (Jordan et al. 2024; Liu et al. 2025, "Muon is Scalable for LLM Training") orthogonalises
the momentum of a 2-D weight with a Newton-Schulz iteration. It is meant for the *hidden* matrices
only. The split is one structural rule, the reference recipes' (modded-nanogpt's "hidden matrices
are the blocks' matrices"): Muon takes the weight of every linear layer (nn.Linear, GPT-2's Conv1D)
inside the model's repeated blocks, the entries of its nn.ModuleLists (where every Hugging Face
model keeps its layers). Everything outside them goes to AdamW: embeddings, and heads with their
dense layers (BERT's pooler.dense, DistilBERT's pre_classifier, RoBERTa's classifier.dense, the MLM
transform), whatever they are called; norms and biases too. A model without a ModuleList (a plain
nn.Sequential) is one block whose last linear layer is its output layer, which goes to AdamW.

`adjust_lr_fn="match_rms_adamw"` (Moonshot's rule, the default here) scales Muon's update to
AdamW's RMS, so one learning rate and weight decay serve both halves. Both rules read a matrix's
(out, in) shape: a Conv1D weight, stored (in, out), is stepped as its transpose.
"""

import math

import torch
from torch import nn

from finetune_opt.optim.closure import loss_from_closure
from finetune_opt.optim.param_groups import build_param_groups


def _is_conv1d(module: nn.Module) -> bool:
    # transformers' GPT-2 style Conv1D is a Linear with a transposed weight (in, out).
    return type(module).__name__ == "Conv1D"


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or _is_conv1d(module)


def block_lists(model: nn.Module) -> list[str]:
    """Names of the ModuleLists holding the repeated blocks (outermost only; "" for the model)."""
    lists = [name for name, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    return [n for n in lists if not any(n.startswith(f"{o}.") for o in lists if o != n and o)] or [""]


def muon_parameter_names(model: nn.Module) -> set[str]:
    """Trainable weights of the linear layers inside the repeated blocks (see the module doc)."""
    lists = block_lists(model)
    linears = [(name, m) for name, m in model.named_modules() if _is_linear(m)]
    if lists == [""] and linears:
        linears = linears[:-1]  # one block: its last linear layer is the output layer
    embeddings = {id(getattr(model, g, lambda: None)()) for g in ("get_input_embeddings", "get_output_embeddings")}
    names = set()
    for name, module in linears:
        inside = lists == [""] or any(name.startswith(f"{b}.") for b in lists)
        if inside and id(module) not in embeddings and module.weight.requires_grad and module.weight.ndim == 2:
            names.add(f"{name}.weight" if name else "weight")
    return names


def describe_split(model: nn.Module) -> str:
    """One line for `finetune-opt inspect`: where the blocks are, and the matrices outside them."""
    hidden, lists = muon_parameter_names(model), block_lists(model)
    blocks = "no ModuleList: the whole model but its output layer" if lists == [""] else \
        ", ".join(f"{b}.*" for b in lists)
    outside = [n for n, p in model.named_parameters() if p.requires_grad and p.ndim == 2 and n not in hidden]
    return (f"muon split: Muon takes the linear weights inside the repeated blocks ({blocks}): {len(hidden)}; "
            f"AdamW every other weight, incl. these matrices: {', '.join(outside)}")


def conv1d_weight_names(model: nn.Module) -> set[str]:
    return {f"{name}.weight" for name, m in model.named_modules() if _is_conv1d(m)}


def muon_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The Muon groups of hidden matrices (`muon`; GPT-2's Conv1D weights in `muon_conv1d`, stepped
    transposed), then the usual AdamW decay / no-decay groups."""
    hidden, transposed = muon_parameter_names(model), conv1d_weight_names(model)
    by_name = dict(model.named_parameters())
    muon_ids = {id(by_name[n]) for n in hidden}
    groups = []
    for group in build_param_groups(model, weight_decay):
        rest = [p for p in group["params"] if id(p) not in muon_ids]
        if rest:
            groups.append({**group, "params": rest, "use_muon": False})
    for group_name, stored_transposed in (("muon_conv1d", True), ("muon", False)):
        params = [by_name[n] for n in by_name if n in hidden and (n in transposed) == stored_transposed]
        if params:
            groups.insert(0, {"params": params, "weight_decay": weight_decay, "group_name": group_name,
                              "use_muon": True, "stored_transposed": stored_transposed})
    return groups


class _LogicalShapeMuon(torch.optim.Muon):
    """torch's Muon, with the weights of `stored_transposed` groups (Conv1D, stored (in, out))
    handed to its step as (out, in) views: adjust_lr_fn reads `param.shape`, and "original"'s
    sqrt(max(1, out/in)) would otherwise halve c_fc's update and double mlp.c_proj's. The views
    write through to the weights and the state keeps the stored layout; Newton-Schulz and
    match_rms_adamw are transpose-symmetric, so their results are unchanged."""

    def _init_group(self, group, params_with_grad, grads, muon_momentum_bufs):
        has_complex = super()._init_group(group, params_with_grad, grads, muon_momentum_bufs)
        if group.get("stored_transposed"):
            for tensors in (params_with_grad, grads, muon_momentum_bufs):
                tensors[:] = [t.T for t in tensors]
        return has_complex


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer facade over torch.optim.Muon and torch.optim.AdamW sharing group dicts and
    state, so LR schedulers, Accelerate, checkpoints and the Trainer see a single optimizer."""

    def __init__(self, params, lr=5e-5, weight_decay=0.01, momentum=0.95, nesterov=True, ns_steps=5,
                 adjust_lr_fn="match_rms_adamw", adamw_betas=(0.9, 0.999), adamw_eps=1e-8, foreach=True,
                 fused=False):
        groups = [g if isinstance(g, dict) else {"params": [g]} for g in params]
        for g in groups:  # explicit params without a role: Muon for 2-D, AdamW otherwise
            g.setdefault("use_muon", all(p.ndim == 2 for p in g["params"]))
            if not g["use_muon"]:  # recorded under the spec's names, so results report them
                g.update(adamw_betas=adamw_betas, adamw_eps=adamw_eps)
        self.muon = _LogicalShapeMuon([g for g in groups if g["use_muon"]], lr=lr,
                                     weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                                     ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn) \
            if any(g["use_muon"] for g in groups) else None
        self.adamw = torch.optim.AdamW([g for g in groups if not g["use_muon"]], lr=lr, betas=adamw_betas,
                                       eps=adamw_eps, weight_decay=weight_decay, foreach=foreach, fused=fused) \
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

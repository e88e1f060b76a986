"""Float64 reference implementations of each registry entry's update rule, written from the papers.

Each reference takes `params` (name -> float64 tensor), `grads` (a list over steps of name -> grad),
the hyperparameters, `weight_decays` (name -> the decay its group applies) and `roles` (name ->
"muon" for Muon's hidden matrices), and returns the parameters after all steps. `REFERENCES` maps
every registry name to one; a registry entry without a reference fails the parity test.
"""

import math

import torch


def adam(params, grads, hp, weight_decays, roles=None, *, decoupled):
    """Kingma & Ba 2015, Algorithm 1 (+ AMSGrad, Reddi et al. 2018); decoupled: Loshchilov &
    Hutter 2019, Algorithm 2, with decay p *= 1 - lr*wd."""
    (b1, b2), eps, lr = hp["betas"], hp["eps"], hp["lr"]
    p = {k: v.clone().double() for k, v in params.items()}
    m = {k: torch.zeros_like(v) for k, v in p.items()}
    v = {k: torch.zeros_like(x) for k, x in p.items()}
    v_max = {k: torch.zeros_like(x) for k, x in p.items()}
    for t, step_grads in enumerate(grads, start=1):
        for k, g in step_grads.items():
            g = g.double()
            if decoupled:  # decay the weights, not the gradient
                p[k] = p[k] * (1 - lr * weight_decays[k])
            else:  # coupled L2: the decay term goes through the adaptive scaling
                g = g + weight_decays[k] * p[k]
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g * g
            if hp.get("amsgrad"):
                v_max[k] = torch.maximum(v_max[k], v[k])
            v_hat = (v_max[k] if hp.get("amsgrad") else v[k]) / (1 - b2 ** t)
            p[k] = p[k] - lr * (m[k] / (1 - b1 ** t)) / (v_hat.sqrt() + eps)
    return p


def sgd(params, grads, hp, weight_decays, roles=None):
    """Momentum SGD (Sutskever et al. 2013) as PyTorch defines it: b_1 = g_1,
    b_t = mu b_{t-1} + (1 - dampening) g_t; Nesterov uses g + mu b; L2 added to the gradient."""
    mu, damp, lr = hp["momentum"], hp["dampening"], hp["lr"]
    p = {k: v.clone().double() for k, v in params.items()}
    buf = {}
    for step_grads in grads:
        for k, g in step_grads.items():
            g = g.double() + weight_decays[k] * p[k]
            if mu:
                buf[k] = g.clone() if k not in buf else mu * buf[k] + (1 - damp) * g
                g = g + mu * buf[k] if hp["nesterov"] else buf[k]
            p[k] = p[k] - lr * g
    return p


def adafactor(params, grads, hp, weight_decays, roles=None):
    """Shazeer & Stern 2018, Algorithms 4 (matrices) and 5 (vectors): beta2_t = 1 - t^c (c =
    beta2_decay), relative step rho_t = min(lr, 1/sqrt(t)) scaled by max(eps2, RMS(X_{t-1})),
    factored V_t = R_t C_t / sum(R_t), update clipped by max(1, RMS(U)/d). torch's choices: eps1
    is the dtype's epsilon and floors V (as eps1^2, rsqrt), decay is decoupled p *= 1 - lr*wd."""
    lr, c, d, eps2 = hp["lr"], hp["beta2_decay"], hp["d"], hp["eps"]
    eps1 = torch.finfo(torch.float64).eps
    p = {k: v.clone().double() for k, v in params.items()}
    row, col, var = {}, {}, {}
    for t, step_grads in enumerate(grads, start=1):
        for k, g in step_grads.items():
            g = g.double()
            weight = t ** c  # 1 - beta2_t
            rho = min(lr, 1 / math.sqrt(t))
            alpha = max(eps2, p[k].pow(2).mean().sqrt().item()) * rho
            p[k] = p[k] * (1 - lr * weight_decays[k])
            if g.dim() > 1:
                row[k] = (1 - weight) * row.get(k, 0) + weight * (g * g).mean(dim=-1, keepdim=True)
                col[k] = (1 - weight) * col.get(k, 0) + weight * (g * g).mean(dim=-2, keepdim=True)
                v_hat = row[k] @ col[k] / row[k].mean(dim=-2, keepdim=True).clamp(min=eps1)
            else:
                var[k] = (1 - weight) * var.get(k, 0) + weight * g * g
                v_hat = var[k]
            u = g / v_hat.clamp(min=eps1 * eps1).sqrt()
            u = u / max(1.0, u.pow(2).mean().sqrt().item() / d)
            p[k] = p[k] - alpha * u
    return p


def lion(params, grads, hp, weight_decays, roles=None):
    """Chen et al. 2023, Algorithm 2."""
    (b1, b2), lr = hp["betas"], hp["lr"]
    p = {k: v.clone().double() for k, v in params.items()}
    m = {k: torch.zeros_like(v) for k, v in p.items()}
    for step_grads in grads:
        for k, g in step_grads.items():
            g = g.double()
            c = b1 * m[k] + (1 - b1) * g
            p[k] = p[k] - lr * (torch.sign(c) + weight_decays[k] * p[k])
            m[k] = b2 * m[k] + (1 - b2) * g
    return p


def _orthogonalise(x, steps, coefficients=(3.4445, -4.7750, 2.0315)):
    """Jordan et al. 2024: quintic Newton-Schulz towards U V^T, in float64 here."""
    a, b, c = coefficients
    transpose = x.shape[0] > x.shape[1]
    x = x.T if transpose else x
    x = x / x.norm().clamp(min=1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if transpose else x


def muon(params, grads, hp, weight_decays, roles):
    """Muon (Jordan et al. 2024) on `roles[k] == "muon"` matrices: Nesterov momentum,
    orthogonalised, lr scaled by 0.2*sqrt(max(A, B)) to match AdamW's RMS (Liu et al. 2025, eq. 4),
    decoupled decay; AdamW (Loshchilov & Hutter) with adamw_betas / adamw_eps on the rest."""
    mu, lr = hp["momentum"], hp["lr"]
    rest = {k: v for k, v in params.items() if roles.get(k) != "muon"}
    adam_hp = {"lr": lr, "betas": hp["adamw_betas"], "eps": hp["adamw_eps"]}
    out = adam(rest, [{k: g[k] for k in rest} for g in grads], adam_hp, weight_decays, decoupled=True)
    for k in params:
        if roles.get(k) != "muon":
            continue
        p, buf = params[k].clone().double(), torch.zeros_like(params[k], dtype=torch.float64)
        scale = (0.2 * math.sqrt(max(p.shape)) if hp["adjust_lr_fn"] == "match_rms_adamw"
                 else math.sqrt(max(1, p.shape[0] / p.shape[1])))
        for step_grads in grads:
            g = step_grads[k].double()
            buf = mu * buf + (1 - mu) * g
            update = (1 - mu) * g + mu * buf if hp["nesterov"] else buf
            p = p * (1 - lr * weight_decays[k]) - lr * scale * _orthogonalise(update, hp["ns_steps"])
        out[k] = p
    return out


def schedule_free_adamw(params, grads, hp, weight_decays, roles=None, *, averaged=False, algorithm_1=False):
    """Schedule-free AdamW as the authors' `schedulefree` package runs it (AdamWScheduleFree, its
    default variant; Defazio et al. 2024): gradients at y_t = (1-b1) z_t + b1 x_t,
    z_{t+1} = z_t - gamma_t (g / (sqrt(v_t / (1 - b2^t)) + eps) + wd y_t), x_{t+1} = (1-c) x_t + c z_{t+1}
    with c = w_t / sum w, w_t = t^r * max_lr^weight_lr_power; gamma_t warms up linearly.
    algorithm_1=True: the paper's literal Algorithm 1 instead, whose gamma_t carries the bias
    correction sqrt(1 - b2^t) (so the denominator is sqrt(v_t) + eps) and whose weights are
    gamma_t^2. Returns y (what the parameters hold while training) or, with averaged=True, x
    (what eval() puts in them)."""
    (b1, b2), eps, lr = hp["betas"], hp["eps"], hp["lr"]
    x = {k: v.clone().double() for k, v in params.items()}
    z = {k: v.clone() for k, v in x.items()}
    v = {k: torch.zeros_like(t) for k, t in x.items()}
    weight_sum, lr_max = 0.0, 0.0
    for t, step_grads in enumerate(grads, start=1):
        gamma = lr * min(1.0, t / hp["warmup_steps"]) if hp["warmup_steps"] else lr
        correction = 1 - b2 ** t
        lr_max = max(lr_max, gamma)
        weight = (gamma * correction ** 0.5) ** 2 if algorithm_1 else t ** hp["r"] * lr_max ** hp["weight_lr_power"]
        weight_sum += weight
        c = weight / weight_sum
        for k, g in step_grads.items():
            y = (1 - b1) * z[k] + b1 * x[k]
            g = g.double()
            v[k] = b2 * v[k] + (1 - b2) * g * g
            if algorithm_1:
                normalised = correction ** 0.5 * g / (v[k].sqrt() + eps)
                z[k] = z[k] - gamma * (normalised + correction ** 0.5 * weight_decays[k] * y)
            else:
                z[k] = z[k] - gamma * (g / ((v[k] / correction).sqrt() + eps) + weight_decays[k] * y)
            x[k] = (1 - c) * x[k] + c * z[k]
    if averaged:
        return x
    return {k: (1 - b1) * z[k] + b1 * x[k] for k in x}


REFERENCES = {
    "adam_l2": lambda *a: adam(*a, decoupled=False),
    "adamw": lambda *a: adam(*a, decoupled=True),
    "adamw_fused": lambda *a: adam(*a, decoupled=True),
    "sgd": sgd,
    "adafactor": adafactor,
    "lion": lion,
    "muon": muon,
    "adamw_schedule_free": schedule_free_adamw,
    # Low-bit states quantise AdamW's moments: the reference is AdamW itself, the tolerance the
    # quantisation error.
    "adamw_8bit": lambda *a: adam(*a, decoupled=True),
    "adamw_4bit": lambda *a: adam(*a, decoupled=True),
    "adamw_bnb_8bit": lambda *a: adam(*a, decoupled=True),
    "paged_adamw_8bit": lambda *a: adam(*a, decoupled=True),
    "lion_bnb_8bit": lion,
}

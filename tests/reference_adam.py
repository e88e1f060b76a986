"""Float64 reference implementations of the update rules, written from the papers' formulas."""

import torch


def reference_adam(params, grads_per_step, *, lr, betas, eps, weight_decays, decoupled, amsgrad):
    """params: list of float64 tensors; grads_per_step: list over steps of lists of grads;
    weight_decays: one per param. Returns the params after all steps."""
    b1, b2 = betas
    p = [x.clone().double() for x in params]
    m = [torch.zeros_like(x) for x in p]
    v = [torch.zeros_like(x) for x in p]
    v_max = [torch.zeros_like(x) for x in p]
    for t, grads in enumerate(grads_per_step, start=1):
        for i, g in enumerate(grads):
            g = g.double()
            if decoupled:  # Loshchilov & Hutter: decay the weights, not the gradient
                p[i] = p[i] * (1 - lr * weight_decays[i])
            else:  # coupled L2: the decay term goes through the adaptive scaling
                g = g + weight_decays[i] * p[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            m_hat = m[i] / (1 - b1**t)
            if amsgrad:  # Reddi et al.: non-increasing second moment
                v_max[i] = torch.maximum(v_max[i], v[i])
                v_hat = v_max[i] / (1 - b2**t)
            else:
                v_hat = v[i] / (1 - b2**t)
            p[i] = p[i] - lr * m_hat / (v_hat.sqrt() + eps)
    return p

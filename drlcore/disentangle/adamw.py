"""AdamW for the small VAE: ``torch.optim.AdamW``'s numbers, bit for bit, in less time.

Why not torch's own. On the transfer (``drl run``'s fine-tuning, 1.6 M parameters, batch 64,
one thread), torch's single-tensor AdamW step took about as long as the forward and backward
passes together: seven passes over every parameter-sized array, two fresh allocations per
parameter, and per-parameter Python checks. ``fused=True`` is one pass, but it rounds
differently (1 ulp per step), and the fine-tuning is chaotic: on 1,304 blood cells that choice
moved the early-stopping epoch from 79 to 51 and the weights by up to 0.4. A faster optimiser
is only acceptable here if it gives the same weights exactly.

How. The update runs over chunks of each parameter that stay in the L2 cache, so the moments,
gradient and parameter come from memory once per step instead of once per pass. Within a
chunk the arithmetic is torch's single-tensor path (``torch/optim/adam.py``), rounding for
rounding:

    exp_avg = lerp(exp_avg, grad, 1 - beta1)          torch: fma(w, grad - m, m)
    exp_avg_sq = exp_avg_sq * beta2                    (rounded)
    exp_avg_sq = exp_avg_sq + (1 - beta2) * grad**2    torch: fma((1 - beta2) * grad, grad, v)
    denom = sqrt(exp_avg_sq) / sqrt(bias_c2) + eps     (sqrt by torch: not correctly rounded)
    param = param + (-step_size * exp_avg) / denom     torch's addcdiv

The two elementwise halves are numba kernels with IEEE semantics (no fast-math, the fused
multiply-adds spelled out where torch's vector code has them); the square root stays torch's
(its float sqrt, MKL's vector maths presumably, differs from the correctly rounded one numba
would give on ~0.7% of values). Without numba, the same
chunks go through the seven torch ops (slower, the same numbers). ``tests/test_adamw.py``
compares both paths with ``torch.optim.AdamW`` bit for bit; a torch upgrade that changes its
arithmetic fails there rather than silently changing trained models.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["AdamW"]

_KERNELS: tuple | None = None  # (moments, update) numba kernels, or () when numba is missing


def _kernels() -> tuple:
    global _KERNELS
    if _KERNELS is None:
        try:
            from drlcore.disentangle._adamw_kernels import moments, update

            # Compiled (or loaded from numba's cache) here, on the types step() passes, so that
            # a machine where numba cannot compile falls back now, not in the middle of training.
            one = np.ones(1, dtype=np.float32)
            f = np.float32(0.5)
            moments(one, one.copy(), one.copy(), f, f, f)
            update(one.copy(), one, one, f, f, f, f, False)
            _KERNELS = (moments, update)
        except Exception:  # noqa: BLE001 - no numba, or it cannot compile here: torch ops
            _KERNELS = ()
    return _KERNELS


class AdamW:
    """``torch.optim.AdamW(params, lr, betas, eps, weight_decay)`` (no amsgrad, no maximize)
    with ``zero_grad`` and ``step``: the same weights bit for bit, faster (module docstring)."""

    # Elements per chunk: the chunk of parameter, gradient, both moments and the root buffer
    # (5 x 128 KB) stays in a 2 MB L2 cache (32K was the fastest of 8K-256K). A multiple of
    # torch's widest vector loop (2 x 16 floats), so every element meets the same vector or
    # scalar code in torch's ops as it would in a whole-tensor call.
    CHUNK = 1 << 15

    def __init__(self, params, lr: float, weight_decay: float = 0.0,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 use_numba: bool = True):
        self.params = list(params)
        if any(not p.is_contiguous() for p in self.params):
            raise ValueError("adamw.AdamW updates parameters in place through flat views; "
                             "a non-contiguous parameter needs torch.optim.AdamW")
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, betas, eps
        # Per parameter, as torch: a parameter without a gradient takes no step.
        self.steps = [0] * len(self.params)
        self.exp_avg = [torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
                        for p in self.params]
        self.exp_avg_sq = [torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
                           for p in self.params]
        largest = max((p.numel() for p in self.params), default=0)
        first = self.params[0] if self.params else torch.empty(0)
        self._root = torch.empty(min(largest, self.CHUNK), dtype=first.dtype,
                                 device=first.device)
        self._kernels = (_kernels() if use_numba and all(
            p.dtype == torch.float32 and p.device.type == "cpu" for p in self.params) else ())
        self._views: dict[int, tuple] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2, lr = self.betas[0], self.betas[1], self.lr
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            self.steps[i] += 1
            # torch keeps the count in a float32 tensor and reads it back as a Python float:
            # exact below 2**24 steps. Bias corrections in double, as torch computes them.
            step = float(self.steps[i])
            step_size = lr / (1 - beta1 ** step)
            bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
            flat, grad = p.detach().view(-1), p.grad.detach().reshape(-1)
            if self._kernels:
                self._step_numba(i, flat, grad, step_size, bias_correction2_sqrt)
            else:
                self._step_torch(flat, grad, self.exp_avg[i], self.exp_avg_sq[i], step_size,
                                 bias_correction2_sqrt)

    def _step_torch(self, flat, grad, m, v, step_size, bias_correction2_sqrt) -> None:
        beta1, beta2 = self.betas
        lr, eps, wd = self.lr, self.eps, self.weight_decay
        n = flat.numel()
        for start in range(0, n, self.CHUNK):
            end = min(n, start + self.CHUNK)
            pc, gc, mc, vc = flat[start:end], grad[start:end], m[start:end], v[start:end]
            if wd != 0:
                pc.mul_(1 - lr * wd)
            mc.lerp_(gc, 1 - beta1)
            vc.mul_(beta2).addcmul_(gc, gc, value=1 - beta2)
            denom = torch.sqrt(vc, out=self._root[:end - start])
            denom.div_(bias_correction2_sqrt).add_(eps)
            pc.addcdiv_(mc, denom, value=-step_size)

    def _chunks(self, i: int, flat: torch.Tensor) -> list[tuple]:
        """Parameter ``i``'s chunks as array views (parameter, moments, root buffer), made once:
        slicing them anew for each of ~50 chunks every step cost more than the kernels' own
        Python calls. Remade should the parameter's storage change."""
        key = (flat.data_ptr(), flat.numel())
        cached = self._views.get(i)
        if cached is not None and cached[0] == key:
            return cached[1]
        m, v = self.exp_avg[i], self.exp_avg_sq[i]
        pn, mn, vn, rn = flat.numpy(), m.numpy(), v.numpy(), self._root.numpy()
        chunks = []
        for start in range(0, flat.numel(), self.CHUNK):
            end = min(flat.numel(), start + self.CHUNK)
            chunks.append((start, end, pn[start:end], mn[start:end], vn[start:end], v[start:end],
                           self._root[:end - start], rn[:end - start]))
        self._views[i] = (key, chunks)
        return chunks

    def _step_numba(self, i, flat, grad, step_size, bias_correction2_sqrt) -> None:
        moments, update = self._kernels
        beta1, beta2 = self.betas
        lr, wd = self.lr, self.weight_decay
        f32 = np.float32
        # The scalars as torch's float32 kernels see them (a Python number becomes float32).
        w1, b2, w2 = f32(1 - beta1), f32(beta2), f32(1 - beta2)
        c2, eps, neg = f32(bias_correction2_sqrt), f32(self.eps), f32(-step_size)
        decay, decayed = f32(1 - lr * wd), wd != 0
        gn = grad.numpy()
        for start, end, pc, mc, vc, v_t, root_t, root in self._chunks(i, flat):
            moments(gn[start:end], mc, vc, w1, b2, w2)
            torch.sqrt(v_t, out=root_t)
            update(pc, mc, root, c2, eps, neg, decay, decayed)

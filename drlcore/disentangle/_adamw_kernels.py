"""The numba halves of ``adamw.AdamW``'s step (imported only when an optimiser is made: numba is
a heavy import). Module-level functions, so numba's on-disk cache finds them in the next process
(kernels defined inside a function were recompiled every time). IEEE arithmetic throughout (no
fast-math, so no contraction; error_model "numpy": a division by zero gives IEEE inf as torch's
does, and without Python's zero check per element the loops vectorise); ``fma`` marks the one-rounding multiply-adds torch's vectorised
kernels use. ``adamw`` documents which torch op each line reproduces."""

from __future__ import annotations

import numba
from llvmlite import ir
from numba.extending import intrinsic


@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c with one rounding (llvm.fma)."""

    def codegen(context, builder, signature, args):
        ty = args[0].type
        fn = builder.module.declare_intrinsic("llvm.fma", [ty], ir.FunctionType(ty, [ty] * 3))
        return builder.call(fn, args)

    return a(a, b, c), codegen


@numba.njit(cache=True, nogil=True, error_model="numpy")
def moments(grad, exp_avg, exp_avg_sq, w1, beta2, w2):
    for i in range(grad.size):
        g = grad[i]
        exp_avg[i] = fma(w1, g - exp_avg[i], exp_avg[i])  # exp_avg.lerp_(grad, w1)
        # exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=w2)
        exp_avg_sq[i] = fma(w2 * g, g, exp_avg_sq[i] * beta2)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def update(param, exp_avg, root, bias_correction2_sqrt, eps, neg_step_size, decay, decayed):
    for i in range(param.size):
        p = param[i] * decay if decayed else param[i]  # param.mul_(1 - lr * weight_decay)
        # param.addcdiv_(exp_avg, root / bias_correction2_sqrt + eps, value=neg_step_size)
        param[i] = p + (neg_step_size * exp_avg[i]) / (root[i] / bias_correction2_sqrt + eps)

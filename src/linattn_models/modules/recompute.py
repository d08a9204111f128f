"""linear(fn(*inputs)) without keeping fn's output for the backward.

A linear layer keeps its input for the weight gradient. When that input is a cheap elementwise function of
tensors autograd keeps anyway (the gated norm's output from o and the gate; SwiGLU's from the two branches),
keeping it is pure cost: B·T·in_features values per layer (4 KB per token and layer for the 370M RetNet's
o_proj and down_proj each). Here the backward recomputes fn (one fused kernel on GPUs) instead.

Under torch.compile this is bypassed (plain linear(fn(*inputs))): dynamo cannot trace the backward's
torch.autograd.grad, and the compiler's own partitioner (min-cut rematerialisation, the default of the
inductor backend) already recomputes cheap elementwise producers such as fn in the backward instead of saving
them, which is what this helper does by hand in eager mode.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class _LinearRecompute(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fn, weight, *inputs):
        a = fn(*inputs)  # grad mode is off inside forward: nothing of fn is recorded
        y = F.linear(a, weight)  # autocast (if on) casts as nn.Linear would
        dev = a.device.type
        ctx.cast = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
        ctx.fn = fn
        ctx.save_for_backward(weight, *inputs)
        return y

    @staticmethod
    def backward(ctx, dy):
        weight, *inputs = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiate the plain computation, graph and all
            return _double_differentiable_backward(ctx, dy, weight, inputs)
        leaves = [x.detach().requires_grad_(ctx.needs_input_grad[2 + i]) if x is not None else None
                  for i, x in enumerate(inputs)]
        with torch.enable_grad():
            a = ctx.fn(*leaves)
        w = weight.to(ctx.cast) if ctx.cast is not None else weight
        if ctx.cast is not None:
            a_mm = a.detach().to(ctx.cast)
            dy = dy.to(ctx.cast)
        else:
            a_mm = a.detach()
        da = dy @ w
        dw = None
        if ctx.needs_input_grad[1]:
            dw = (dy.reshape(-1, dy.shape[-1]).t() @ a_mm.reshape(-1, a_mm.shape[-1])).to(weight.dtype)
        need = [x for x in leaves if x is not None and x.requires_grad]
        grads = iter(torch.autograd.grad(a, need, da.to(a.dtype)) if need else ())
        return (None, dw) + tuple(next(grads) if x is not None and x.requires_grad else None for x in leaves)


def _double_differentiable_backward(ctx, dy, weight, inputs):
    """The backward as ordinary autograd ops (fn recomputed with its graph), so a gradient penalty through the
    layer keeps its second-order terms; costs fn's output kept, which create_graph keeps anyway."""
    need = [i for i, x in enumerate([weight, *inputs]) if x is not None and ctx.needs_input_grad[1 + i]]
    a = ctx.fn(*inputs)
    w = weight.to(ctx.cast) if ctx.cast is not None else weight
    y = F.linear(a.to(ctx.cast) if ctx.cast is not None else a, w)
    wrt = [[weight, *inputs][i] for i in need]
    got = iter(torch.autograd.grad(y, wrt, dy.to(y.dtype), create_graph=True, allow_unused=True) if wrt else ())
    out = [next(got) if i in need else None for i in range(1 + len(inputs))]
    return (None,) + tuple(out)


def linear_recomputing_input(linear, fn, *inputs):
    """linear(fn(*inputs)), fn's output recomputed in the backward instead of kept. fn must be a deterministic
    function of `inputs` alone: parameters it uses are passed among them (their gradients come back through
    autograd like any input's; a parameter read inside fn would get none). Falls back to the plain
    call for anything but a bias-free nn.Linear without hooks (a LoRA or quantised layer must see its input),
    or when no gradient is wanted, and under torch.compile (module docstring: the partitioner does it)."""
    plain = (torch.compiler.is_compiling() or type(linear) is not nn.Linear or linear.bias is not None
             or linear._forward_hooks or linear._forward_pre_hooks or nn.modules.module._global_forward_hooks
             or nn.modules.module._global_forward_pre_hooks or not torch.is_grad_enabled()
             or not (linear.weight.requires_grad or any(x is not None and x.requires_grad for x in inputs)))
    if plain:
        return linear(fn(*inputs))
    return _LinearRecompute.apply(fn, linear.weight, *inputs)

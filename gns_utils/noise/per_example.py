"""Per-example gradients of one batch: ``|G|^2`` and ``tr Σ`` with ``B_small = 1`` (A.2).

* :func:`per_example_estimate`  ``torch.func`` per-example gradients (``method="func"``), or
  per-layer norms from one batched backward for nets of ``nn.Linear`` / ``nn.Conv2d``
  layers (``method="layerwise"``); ``"auto"`` picks the second where it applies.

The helpers here (norms, per-example gradient functions, the layerwise products) are shared
with :mod:`gns_utils.noise.monitors` and :mod:`gns_utils.noise.hessian`.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from gns_utils.noise.estimate import NoiseEstimate, two_batch_estimates

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
ParamDict = dict[str, torch.Tensor]

__all__ = ["per_example_estimate"]


def _row_norms(t: torch.Tensor) -> torch.Tensor:
    """Euclidean norms of the rows of ``t`` (1-D result) — reducing over rows runs in parallel."""
    rows = t.reshape(t.shape[0], -1) if t.dim() >= 2 else t.reshape(1, -1)
    norms: torch.Tensor = torch.linalg.vector_norm(rows, dim=1, dtype=_accumulation_dtype(rows))
    return norms


def _accumulation_dtype(t: torch.Tensor) -> torch.dtype:
    """float32 for half-precision tensors (their sums and norms would round to 3–4 digits), else their own."""
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype


def _total_sq_norm(row_norms: list[torch.Tensor]) -> torch.Tensor:
    """Sum of squares, in float64, of the per-row norms of several tensors (0-dim tensor)."""
    device = row_norms[0].device
    flat = torch.cat([r.to(device) for r in row_norms]).to(torch.float64)
    return torch.dot(flat, flat)


def _split_state(model: nn.Module) -> tuple[ParamDict, ParamDict]:
    """Trainable parameters and everything else (frozen parameters, buffers), detached."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    consts = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    consts.update(dict(model.named_buffers()))
    if not params:
        raise ValueError("the model has no parameters with requires_grad=True")
    return params, consts


def _train_mode_batchnorm(model: nn.Module) -> str:
    """'' or why per-example gradients are undefined: a BatchNorm in train mode couples the examples."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            return (f"module {name or type(module).__name__!r} is a BatchNorm in train mode; per-example "
                    "gradients need model.eval() (running statistics)")
    return ""


def _check_functional(model: nn.Module) -> None:
    """Per-example gradients are undefined with batch statistics: refuse train-mode BatchNorm."""
    reason = _train_mode_batchnorm(model)
    if reason:
        raise ValueError(reason)


def _check_batch(inputs: torch.Tensor, targets: torch.Tensor, chunk_size: int, minimum: int) -> int:
    n = len(inputs)
    if len(targets) != n:
        raise ValueError(f"inputs and targets differ in length: {n} vs {len(targets)}")
    if n < minimum:
        raise ValueError(f"need at least {minimum} examples, got {n}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return n


def _per_example_grad_fn(model: nn.Module, loss_fn: LossFn) -> Callable[..., ParamDict]:
    """``f(params, consts, x_chunk, y_chunk)`` → dict of per-example gradients ``[c, *shape]``."""

    def example_loss(params: ParamDict, consts: ParamDict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (params, consts), (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0))

    return vmap(grad(example_loss), in_dims=(None, None, 0, 0), randomness="different")


def _sq_norms_per_example(grads: ParamDict) -> torch.Tensor:
    """``|g_i|^2`` for each example of a chunk, float64, shape ``[c]``."""
    total: torch.Tensor | None = None
    for g in grads.values():
        sq = torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1).to(torch.float64).square()
        total = sq if total is None else total + sq
    if total is None:
        raise ValueError("no per-example gradients to take norms of")
    return total


def per_example_estimate(
    model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
    chunk_size: int = 16, units_per_example: float = 1.0, accumulate_grad: bool = False,
    method: str = "auto",
) -> NoiseEstimate:
    """``|G|^2`` and ``tr Σ`` from per-example gradients of one batch (A.2 with ``B_small = 1``).

    With per-example gradients ``g_i`` and ``ĝ = mean_i g_i``, the small squared norm is
    ``mean_i |g_i|^2`` (unbiased for ``|G|^2 + tr Σ``, i.e. ``|G_1|^2``), the big one
    ``|ĝ|^2``; ``b_small = units_per_example``, ``b_big = n·units_per_example``. The result
    equals the textbook unbiased sample estimates ``tr Σ ≈ Σ|g_i − ĝ|^2/(n−1)`` and
    ``|G|^2 ≈ |ĝ|^2 − tr Σ / n``. Only running sums are kept (``Σ|g_i|^2`` in float64
    and ``Σ g_i``), never all per-example gradients at once.

    Methods:

    * ``"func"``: ``torch.func`` (``functional_call`` + ``vmap(grad)``) over chunks of
      ``chunk_size`` examples; works for any architecture whose operations ``vmap`` can run
      (``nn.LSTM`` in float32 on CPU, through vmap's slow fallback for the fused RNN kernel;
      where vmap cannot batch a recurrent module, e.g. in float64, a ValueError names the
      micro-batch alternatives), but materialises ``chunk_size × #params`` numbers per chunk and is ~11×
      a training step on CPU. For recurrent nets, micro-batches are usually the cheaper
      source (:func:`gns_utils.checkpoint_noise_scale`, :class:`GradientNoiseMonitor`).
    * ``"layerwise"``: one ordinary batched forward/backward; hooks on ``nn.Linear`` and
      ``nn.Conv2d`` (groups = 1, zero padding) capture each layer's input ``a`` and output
      gradient ``δ``, and ``|g_i|^2`` is assembled per layer from ``δ_iᵀ a_i`` (outer
      products, or Gram matrices ``(δδᵀ)⊙(aaᵀ)`` when cheaper), chunked over examples.
      Requires every trainable parameter to belong to such a layer, each layer to run once
      per forward and its parameters to be used only by it; about 1.7–2× a plain step
      of the paper's CNN at batch 128 on CPU (``benchmarks/noise_overhead.py``).
    * ``"auto"`` (default): ``"layerwise"`` when the model qualifies, else ``"func"``.

    Both assume ``loss_fn(outputs, targets)`` is the plain mean over examples of a
    per-example loss (``loss_fn(out[i:i+1], y[i:i+1])``), e.g. ``F.cross_entropy``.
    Buffers are used unchanged (BatchNorm must be in eval mode, else ValueError); dropout
    in train mode draws an independent mask per example, as in an ordinary batch.

    Args:
        model: the network.
        loss_fn: ``loss_fn(outputs, targets)``, a mean-reduced loss such as ``F.cross_entropy``.
        inputs: batch of ``n ≥ 2`` examples along dim 0.
        targets: their targets along dim 0.
        chunk_size: examples per vectorised chunk.
        units_per_example: batch units per example (1 for images; the tokens per
            sequence for a language model whose loss is a mean over tokens).
        accumulate_grad: also add the batch-mean gradient ``ĝ`` to each parameter's
            ``.grad`` (as ``loss.backward()`` would), so a training step can use it
            instead of its own backward.
        method: ``"auto"``, ``"layerwise"`` or ``"func"`` (see above).

    Returns:
        A :class:`NoiseEstimate` (python floats).

    Raises:
        ValueError: fewer than 2 examples, mismatched lengths, bad ``chunk_size`` or
            ``method``, a model ``"layerwise"`` cannot handle, a recurrent module vmap cannot
            batch, train-mode BatchNorm, or a non-finite gradient norm.
    """
    n = _check_batch(inputs, targets, chunk_size, minimum=2)
    _check_functional(model)
    if method not in ("auto", "layerwise", "func"):
        raise ValueError(f"method must be 'auto', 'layerwise' or 'func', got {method!r}")
    reason = _layerwise_unsupported(model)
    if method == "layerwise" and reason:
        raise ValueError(f"method='layerwise' cannot handle this model: {reason}")
    use_layerwise = method == "layerwise" or (method == "auto" and not reason)
    sums = _layerwise_sums if use_layerwise else _func_sums
    try:
        sum_sq, mean_grad = sums(model, loss_fn, inputs, targets, chunk_size)
    except RuntimeError as err:
        recurrent = [name for name, m in model.named_modules() if isinstance(m, nn.RNNBase)]
        if use_layerwise or not recurrent:
            raise
        raise ValueError(f"torch.func could not take per-example gradients through the recurrent module "
                         f"{recurrent[0]!r} ({err}); vmap batches nn.LSTM/GRU/RNN only on some kernels (float32 on "
                         "CPU). Measure the noise from micro-batches instead: gns_utils.checkpoint_noise_scale at "
                         "one point, GradientNoiseMonitor during training") from err
    if accumulate_grad:
        _add_to_grad(model, mean_grad)
    small = float(sum_sq) / n
    big = float(_dict_sq_norm(mean_grad))
    return two_batch_estimates(small, big, units_per_example, n * units_per_example)


def _func_sums(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
               chunk_size: int) -> tuple[torch.Tensor, ParamDict]:
    """``(Σ_i |g_i|^2, ĝ)`` with ``torch.func`` per-example gradients, chunk by chunk."""
    params, consts = _split_state(model)
    grad_fn = _per_example_grad_fn(model, loss_fn)
    sum_sq = torch.zeros((), dtype=torch.float64, device=inputs.device)
    sum_grad = {k: torch.zeros_like(v) for k, v in params.items()}
    chunks = zip(inputs.split(chunk_size), targets.split(chunk_size))  # type: ignore[no-untyped-call]  # torch: untyped
    for x, y in chunks:
        grads = grad_fn(params, consts, x, y)
        sum_sq += _sq_norms_per_example(grads).sum()
        for k, g in grads.items():
            sum_grad[k] += g.sum(0)
        del grads
    return sum_sq, {k: v / len(inputs) for k, v in sum_grad.items()}


def _conv_padding(conv: nn.Conv2d) -> tuple[int, int] | None:
    """Explicit symmetric zero padding of a Conv2d, or None when unfold cannot express it."""
    if conv.padding_mode != "zeros" or conv.groups != 1:
        return None
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        total = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
        return None if any(t % 2 for t in total) else (total[0] // 2, total[1] // 2)
    return tuple(conv.padding)  # type: ignore[return-value]


def _layerwise_unsupported(model: nn.Module, layer_types: tuple[type, ...] = (nn.Linear, nn.Conv2d)) -> str:
    """Why the layerwise per-example norms over ``layer_types`` cannot handle ``model`` ('' when they can)."""
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    owner: dict[int, str] = {}
    for name, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        if not isinstance(module, layer_types):
            allowed = " and ".join(t.__name__ for t in layer_types)
            return f"module {name!r} ({type(module).__name__}) has trainable parameters; only {allowed} may"
        if isinstance(module, nn.Conv2d) and _conv_padding(module) is None:
            return f"Conv2d {name!r} has groups > 1, non-zero padding mode or asymmetric 'same' padding"
        for p in own:
            if id(p) in owner:
                return f"a parameter is shared by {owner[id(p)]!r} and {name!r}"
            owner[id(p)] = name
    held = " or ".join(t.__name__ for t in layer_types)
    return "" if set(owner) == trainable else f"some trainable parameters are not held by a {held}"


def _layer_operands(module: nn.Module, a: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(δ, a)`` reshaped to ``[n, T, out]`` and ``[n, T, in]`` so that ``g_i = δ_iᵀ a_i``."""
    n = a.shape[0]
    if isinstance(module, nn.Conv2d):
        return delta.reshape(n, delta.shape[1], -1).transpose(1, 2), _conv_patches(module, a)
    return delta.reshape(n, -1, delta.shape[-1]), a.reshape(n, -1, a.shape[-1])


def _conv_patches(conv: nn.Conv2d, a: torch.Tensor) -> torch.Tensor:
    """im2col of a Conv2d input as a ``[n, P, C·kh·kw]`` view of a ``[n, C·kh·kw, P]`` copy.

    Built from strided windows (``F.unfold`` is far slower on CPU); that memory layout
    copies about 3× faster than ``[n, P, C·kh·kw]``.
    """
    padding = _conv_padding(conv)
    if padding is None:
        raise ValueError("Conv2d with groups > 1, a non-zero padding mode or asymmetric 'same' padding has no patches")
    (ph, pw), (kh, kw), (dh, dw), (sh, sw) = padding, conv.kernel_size, conv.dilation, conv.stride
    padded = torch.nn.functional.pad(a, (pw, pw, ph, ph))
    windows = padded.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)[..., ::dh, ::dw]
    n, c, out_h, out_w = windows.shape[:4]
    return windows.permute(0, 1, 4, 5, 2, 3).reshape(n, c * kh * kw, out_h * out_w).transpose(1, 2)


def _products_sq_norm_and_sum(d: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``|δ_iᵀ a_i|_F^2`` per example (float64) and ``Σ_i δ_iᵀ a_i`` (``[out, in]``).

    Outer products are materialised per example, or, when cheaper, the norms come from
    Gram matrices ``Σ (δ_i δ_iᵀ) ⊙ (a_i a_iᵀ)`` (``T² (out + in) < T·out·in``).
    """
    t, d_out, d_in = a.shape[1], d.shape[2], a.shape[2]
    if t == 1:
        d1, a1 = d[:, 0], a[:, 0]
        sq = d1.square().sum(1).double() * a1.square().sum(1).double()
        return sq, d1.T @ a1
    if t * t * (d_out + d_in) < t * d_out * d_in:
        sq = (torch.bmm(d, d.transpose(1, 2)) * torch.bmm(a, a.transpose(1, 2))).sum((1, 2)).double()
        return sq, d.reshape(-1, d_out).T @ a.reshape(-1, d_in)
    prod = torch.bmm(d.transpose(1, 2), a)
    return torch.linalg.vector_norm(prod.reshape(len(prod), -1), dim=1).double().square(), prod.sum(0)


def _layerwise_sums(model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor,
                    chunk_size: int) -> tuple[torch.Tensor, ParamDict]:
    """``(Σ_i |g_i|^2, ĝ)`` from one batched forward/backward with per-layer hooks (see ``method``).

    Autograd is asked only for the gradients ``δ`` of the layers' outputs, never for the
    parameters' (so parameter hooks, e.g. a :class:`GradientNoiseMonitor`, do not fire);
    the weight gradients are assembled here from ``δ`` and the layers' inputs.
    """
    captured: dict[nn.Linear | nn.Conv2d, tuple[torch.Tensor, torch.Tensor]] = {}

    def forward_hook(module: nn.Linear | nn.Conv2d, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if module in captured:
            raise ValueError(f"{type(module).__name__} ran twice in one forward; use method='func'")
        captured[module] = (args[0].detach(), output)

    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))
              and any(p.requires_grad for p in m.parameters(recurse=False))]
    handles = [m.register_forward_hook(forward_hook) for m in layers]
    try:
        loss = loss_fn(model(inputs), targets)
    finally:
        for h in handles:
            h.remove()
    modules = list(captured)
    deltas = torch.autograd.grad(loss, [captured[m][1] for m in modules])
    n = len(inputs)
    per_example = torch.zeros(n, dtype=torch.float64, device=inputs.device)
    grads: dict[int, torch.Tensor] = {}
    for module, delta in zip(modules, deltas):
        a = captured[module][0]
        # frozen weights or biases are left out of both sums, as the batch gradient leaves them out
        train_weight = module.weight.requires_grad
        weight_grad = torch.zeros_like(module.weight).reshape(module.weight.shape[0], -1) if train_weight else None
        bias = module.bias
        bias_grad = torch.zeros_like(bias) if bias is not None and bias.requires_grad else None
        for lo in range(0, n, chunk_size):
            d, x = _layer_operands(module, a[lo:lo + chunk_size], delta[lo:lo + chunk_size])
            sq = torch.zeros(len(d), dtype=torch.float64, device=d.device)
            if weight_grad is not None:
                sq, chunk_grad = _products_sq_norm_and_sum(d, x)
                weight_grad += chunk_grad
            if bias_grad is not None:
                per_bias = d.sum(1)
                sq = sq + torch.linalg.vector_norm(per_bias, dim=1).double().square()
                bias_grad += per_bias.sum(0)
            per_example[lo:lo + chunk_size] += sq
        if weight_grad is not None:
            grads[id(module.weight)] = weight_grad.reshape(module.weight.shape)
        if bias_grad is not None:
            grads[id(module.bias)] = bias_grad
    mean_grad = {k: grads.get(id(p), torch.zeros_like(p)) for k, p in model.named_parameters() if p.requires_grad}
    # δ is the gradient of the batch *mean* loss, so g_i = n · δ_iᵀ a_i
    return per_example.sum() * n * n, mean_grad


def _dict_sq_norm(tensors: ParamDict) -> torch.Tensor:
    return _total_sq_norm([_row_norms(t) for t in tensors.values()])


def _add_to_grad(model: nn.Module, grads: ParamDict) -> None:
    for name, p in model.named_parameters():
        if name in grads:
            g = grads[name].to(p.dtype)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.add_(g)

"""MAML and first-order MAML (Finn, Abbeel & Levine, 2017) on ``torch.func``.

Model-agnostic meta-learning looks for initial weights ``theta`` from which a few gradient
steps on a new task's handful of examples already give a good model.

* **Inner loop** (one task ``T_i``, its support set): ``theta'_i = theta - alpha * grad L_train(theta)``,
  repeated ``steps`` times (:func:`sgd_step`, :func:`inner_adapt`).
* **Outer loop** (a meta-batch of tasks, their held-out query sets):
  ``theta <- theta - beta * grad_theta sum_i L_query(theta'_i)`` (here with Adam, as in the paper).

By the chain rule, one inner step gives ``grad_theta L(theta') = (I - alpha H) grad_theta' L(theta')``
with ``H`` the Hessian of the support loss. Second-order MAML keeps the ``-alpha H`` term by
differentiating through the inner gradient (``create_graph=True``); **first-order MAML**
(``first_order=True``) detaches the inner gradient, which drops the term and leaves
``grad_theta L(theta') ~ grad_theta' L(theta')``.

Two ways to run a meta-batch, giving the same numbers:

* ``mode="loop"``: a plain Python loop over tasks with :func:`inner_adapt` (easy to read;
  measured faster on a CPU);
* ``mode="vmap"``: every task adapted at once by ``torch.func.vmap`` over
  :func:`inner_adapt_functional` (``torch.func.grad`` inside, so it composes with ``vmap``;
  measured much faster on a GPU).

``mode="auto"`` (the default) takes the faster one for the device: vmap on CUDA, loop elsewhere.

**Batch norm** is handled as in the paper's code: no running averages are kept, so every
forward pass normalises with the statistics of the batch it sees (the support set during
adaptation, the query set when scoring). :func:`maml_conv4` builds such a network, and
:func:`drop_running_stats` converts any model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from .fewshot import FewShotMethod

Params = dict[str, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]
MODES = ("auto", "loop", "vmap")


# ----------------------------------------------------------------------------- the inner loop


def sgd_step(params: Params, grads: Params, inner_lr: float) -> Params:
    """One plain gradient step on every entry: ``theta' = theta - alpha * g``."""
    return {name: value - inner_lr * grads[name] for name, value in params.items()}


def inner_adapt(
    model: nn.Module,
    params: Params,
    loss_fn: Callable[[Params], Tensor],
    inner_lr: float,
    steps: int,
    first_order: bool = False,
) -> Params:
    """``steps`` gradient steps on ``loss_fn(params)``, starting from ``params``; the adapted params.

    ``loss_fn`` typically evaluates ``torch.func.functional_call(model, params, inputs)`` on a
    task's support set. With ``first_order=False`` the graph through each inner gradient is
    kept (``create_graph=True``), so a loss computed later from the adapted parameters
    back-propagates into ``params`` *including* the Hessian term. With ``first_order=True`` the
    inner gradients are constants (detached): the adapted parameters still depend on ``params``,
    but only through the identity, ``d theta' / d theta = I``.

    ``model`` is not called here; it is part of the signature so that callers (and the
    reinforcement-learning notebook) can pass closures that need it.
    """
    _check_inner(inner_lr, steps)
    names = list(params)
    # Evaluation code runs under no_grad; adaptation still needs gradients.
    with torch.enable_grad():
        params = {k: (v if v.requires_grad else v.detach().requires_grad_(True)) for k, v in params.items()}
        for _ in range(steps):
            loss = loss_fn(params)
            grads = torch.autograd.grad(loss, [params[k] for k in names], create_graph=not first_order)
            params = sgd_step(params, dict(zip(names, grads, strict=True)), inner_lr)
    return params


def inner_adapt_functional(
    loss_fn: Callable[[Params], Tensor],
    params: Params,
    inner_lr: float,
    steps: int,
    first_order: bool = False,
) -> Params:
    """The same inner loop with ``torch.func.grad``, so that it can run under ``torch.func.vmap``.

    ``torch.func.grad`` composes with ordinary autograd: the adapted parameters it returns stay
    differentiable with respect to ``params`` (second order), unless ``first_order`` detaches
    the inner gradients.
    """
    _check_inner(inner_lr, steps)
    grad_fn = torch.func.grad(loss_fn)
    for _ in range(steps):
        grads = grad_fn(params)
        if first_order:
            grads = {k: g.detach() for k, g in grads.items()}
        params = sgd_step(params, grads, inner_lr)
    return params


def _check_inner(inner_lr: float, steps: int) -> None:
    if not (isinstance(inner_lr, (int, float)) and math.isfinite(inner_lr) and inner_lr > 0):
        raise ValueError(f"inner_lr (alpha)={inner_lr} must be a positive number such as 0.01.")
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 0:
        raise ValueError(f"steps={steps} must be a whole number >= 0 (0 means no adaptation).")


# ----------------------------------------------------------------------------- meta-batches


@dataclass
class TaskBatch:
    """A meta-batch of ``T`` tasks, stacked: ``support_x`` is ``(T, n_support, ...)``, etc."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor

    @property
    def n_tasks(self) -> int:
        return len(self.support_x)

    def to(self, device: torch.device | str) -> TaskBatch:
        return TaskBatch(*(t.to(device) for t in (self.support_x, self.support_y, self.query_x, self.query_y)))

    def task(self, i: int) -> TaskBatch:
        """Task ``i`` alone, as a batch of one."""
        return TaskBatch(*(t[i : i + 1] for t in (self.support_x, self.support_y, self.query_x, self.query_y)))


def resolve_mode(mode: str, device: torch.device | str) -> str:
    """``"auto"`` becomes the faster path for ``device``: ``"vmap"`` on CUDA, ``"loop"`` elsewhere."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}.")
    if mode == "auto":
        return "vmap" if torch.device(device).type == "cuda" else "loop"
    return mode


def adapted_query_losses(
    model: nn.Module,
    params: Params,
    batch: TaskBatch,
    loss: LossFn,
    inner_lr: float,
    steps: int,
    first_order: bool = False,
    mode: str = "auto",
) -> Tensor:
    """Each task's query loss after adapting ``params`` on its support set: shape ``(T,)``.

    The result is differentiable with respect to ``params``: its mean is the MAML meta-loss.
    """
    mode = resolve_mode(mode, batch.support_x.device)

    def task_query_loss(p: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor, functional: bool) -> Tensor:
        def support_loss(q: Params) -> Tensor:
            return loss(functional_call(model, q, (sx,)), sy)

        if functional:
            adapted = inner_adapt_functional(support_loss, p, inner_lr, steps, first_order)
        else:
            adapted = inner_adapt(model, p, support_loss, inner_lr, steps, first_order)
        return loss(functional_call(model, adapted, (qx,)), qy)

    if mode == "loop":
        return torch.stack(
            [
                task_query_loss(params, batch.support_x[i], batch.support_y[i], batch.query_x[i], batch.query_y[i], False)
                for i in range(batch.n_tasks)
            ]
        )
    per_task = vmap(task_query_loss, in_dims=(None, 0, 0, 0, 0, None), randomness="different")
    return per_task(params, batch.support_x, batch.support_y, batch.query_x, batch.query_y, True)


def meta_gradient(
    model: nn.Module,
    params: Params,
    batch: TaskBatch,
    loss: LossFn,
    inner_lr: float,
    steps: int,
    first_order: bool = False,
    mode: str = "auto",
) -> tuple[Tensor, Params]:
    """The meta-loss (mean query loss after adaptation) and its gradient with respect to ``params``."""
    meta_loss = adapted_query_losses(model, params, batch, loss, inner_lr, steps, first_order, mode).mean()
    names = list(params)
    grads = torch.autograd.grad(meta_loss, [params[k] for k in names], allow_unused=True)
    grads = [torch.zeros_like(params[k]) if g is None else g for k, g in zip(names, grads, strict=True)]
    return meta_loss.detach(), dict(zip(names, grads, strict=True))


def parameters_of(model: nn.Module) -> Params:
    """The model's trainable parameters as a ``Params`` dict (the tensors themselves, not copies)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


# ----------------------------------------------------------------------------- the learner


class MAML:
    """Meta-learns the initial weights of ``model`` with (first-order) MAML.

    ``inner_lr`` is alpha, ``outer_lr`` is beta (Adam's step size, as in the paper),
    ``inner_steps`` the number of adaptation steps during meta-training, ``loss`` the task
    loss (``F.mse_loss`` for regression, ``F.cross_entropy`` for classification), ``mode`` the
    way the meta-batch is run (``"auto"``, ``"loop"`` or ``"vmap"``).
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float,
        outer_lr: float = 1e-3,
        inner_steps: int = 1,
        first_order: bool = False,
        loss: LossFn = F.mse_loss,
        mode: str = "auto",
    ) -> None:
        _check_inner(inner_lr, inner_steps)
        if not (isinstance(outer_lr, (int, float)) and math.isfinite(outer_lr) and outer_lr > 0):
            raise ValueError(f"outer_lr (beta)={outer_lr} must be a positive number such as 0.001.")
        resolve_mode(mode, "cpu")
        self.model, self.inner_lr, self.outer_lr = model, float(inner_lr), float(outer_lr)
        self.inner_steps, self.first_order, self.loss, self.mode = int(inner_steps), bool(first_order), loss, mode
        self.optimizer = torch.optim.Adam(model.parameters(), lr=outer_lr)

    @property
    def params(self) -> Params:
        return parameters_of(self.model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def meta_step(self, batch: TaskBatch) -> float:
        """One outer update on a meta-batch; returns the meta-loss before the update."""
        batch = batch.to(self.device)
        self.optimizer.zero_grad(set_to_none=True)
        losses = adapted_query_losses(
            self.model, self.params, batch, self.loss, self.inner_lr, self.inner_steps, self.first_order, self.mode
        )
        meta_loss = losses.mean()
        meta_loss.backward()
        self.optimizer.step()
        return float(meta_loss.detach())

    def adapt(self, x: Tensor, y: Tensor, steps: int | None = None, inner_lr: float | None = None) -> Params:
        """Weights adapted to one task's support set (detached: for evaluation)."""
        steps = self.inner_steps if steps is None else steps
        inner_lr = self.inner_lr if inner_lr is None else inner_lr
        start = {k: v.detach() for k, v in self.params.items()}

        def support_loss(p: Params) -> Tensor:
            return self.loss(functional_call(self.model, p, (x,)), y)

        adapted = inner_adapt(self.model, start, support_loss, inner_lr, steps, first_order=True)
        return {k: v.detach() for k, v in adapted.items()}

    def forward(self, params: Params, x: Tensor) -> Tensor:
        """The model's output with the given (e.g. adapted) weights."""
        return functional_call(self.model, params, (x,))


class MAMLClassifier(FewShotMethod):
    """A meta-trained classifier used through the course's few-shot interface.

    :meth:`process_support_set` adapts the meta-learned weights to the episode's support set
    with ``steps`` gradient steps of size ``inner_lr``; :meth:`scores` returns the adapted
    network's logits for the query images. The output layer must have ``n_way`` units.
    """

    def __init__(self, model: nn.Module, inner_lr: float, steps: int) -> None:
        _check_inner(inner_lr, steps)
        self.model, self.inner_lr, self.steps = model, float(inner_lr), int(steps)
        self.device = next(model.parameters()).device
        self.adapted: Params | None = None

    def process_support_set(self, support_images: Tensor, support_labels: Tensor) -> None:
        start = {k: v.detach() for k, v in parameters_of(self.model).items()}

        def support_loss(p: Params) -> Tensor:
            return F.cross_entropy(functional_call(self.model, p, (support_images,)), support_labels)

        adapted = inner_adapt(self.model, start, support_loss, self.inner_lr, self.steps, first_order=True)
        self.adapted = {k: v.detach() for k, v in adapted.items()}

    def scores(self, query_images: Tensor) -> Tensor:
        if self.adapted is None:
            raise RuntimeError("call process_support_set before scores.")
        with torch.no_grad():
            return functional_call(self.model, self.adapted, (query_images,))


# ----------------------------------------------------------------------------- networks


def drop_running_stats(model: nn.Module) -> nn.Module:
    """Make every batch-norm layer use the current batch's statistics, always (as in MAML's code).

    Without running averages there are no buffers to update, which also lets ``vmap`` run the
    network on many tasks at once.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.track_running_stats = False
            module.running_mean = None
            module.running_var = None
            module.num_batches_tracked = None
    return model


def maml_conv4(n_way: int, hidden: int = 64) -> nn.Sequential:
    """Conv-4 (batch norm on batch statistics) followed by a linear ``n_way``-way output layer."""
    from .nets import Conv4

    if n_way < 2:
        raise ValueError(f"n_way={n_way} must be at least 2.")
    return drop_running_stats(nn.Sequential(Conv4(hidden=hidden), nn.Linear(hidden, n_way)))


def sinusoid_net(hidden: Sequence[int] = (40, 40)) -> nn.Sequential:
    """The paper's regressor: 1 -> 40 -> 40 -> 1 with ReLU."""
    from .nets import mlp

    return mlp([1, *hidden, 1])

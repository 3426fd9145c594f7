"""MAML and first-order MAML (Finn, Abbeel & Levine, 2017) on ``torch.func``.

Model-agnostic meta-learning looks for initial weights ``theta`` from which a few gradient
steps on a new task's handful of examples already give a good model.

* **Inner loop** (one task ``T_i``, its support set): ``theta'_i = theta - alpha * grad L_train(theta)``,
  repeated ``steps`` times (:func:`sgd_step`, :func:`inner_adapt`).
* **Outer loop** (a meta-batch of tasks, their held-out query sets):
  ``theta <- theta - beta * grad_theta sum_i L_query(theta'_i)`` (here with Adam, as in the paper).

By the chain rule, one inner step gives ``grad_theta L(theta') = (I - alpha H) grad_theta' L(theta')``
with ``H`` the Hessian of the support loss. With ``s`` steps through the iterates
``theta^(0) = theta, ..., theta^(s) = theta'`` the factors multiply first step first,
``grad_theta L(theta') = (I - alpha H^(0)) (I - alpha H^(1)) ... (I - alpha H^(s-1)) grad_theta' L(theta')``
with ``H^(j)`` the support-loss Hessian at ``theta^(j)``: the transpose of the Jacobian
``d theta' / d theta``, whose product runs the other way. Second-order MAML keeps the ``-alpha H`` terms by
differentiating through the inner gradient (``create_graph=True``); **first-order MAML**
(``first_order=True``) detaches the inner gradients, which drops those terms and leaves
``grad_theta L(theta') ~ grad_theta' L(theta')``.

Two ways to run a meta-batch, giving the same numbers:

* ``mode="loop"``: a plain Python loop over tasks with :func:`inner_adapt` (easy to read;
  measured faster on a CPU);
* ``mode="vmap"``: every task adapted at once by ``torch.func.vmap`` over
  :func:`inner_adapt_functional` (``torch.func.grad`` inside, so it composes with ``vmap``;
  measured much faster on a GPU).

* ``mode="compiled"``: the vmap path as one function of the weights,
  ``torch.func.grad_and_value`` of the mean query loss, compiled by ``torch.compile``
  (:func:`compiled_meta_gradient`). The first meta-step pays for the compilation (about two
  minutes for Conv-4 on the course's 2-core CPU); after it, the same meta-gradient comes with
  fewer launches and less Python per step.

``mode="auto"`` (the default) takes the faster one for the device (:func:`resolve_mode`): vmap
on CUDA; on a CPU the loop for convolutional networks and vmap for small MLPs. ``"compiled"``
is only taken by name.

**Batch norm** is handled as in the paper's code: no running averages are kept, so every
forward pass normalises with the statistics of the batch it sees (the support set during
adaptation, the query set when scoring). :func:`maml_conv4` builds such a network, and
:func:`drop_running_stats` converts any model.
"""

from __future__ import annotations

import json
import math
import time
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from . import validation
from .fewshot import FewShotMethod, declared_image_shape
from .side_by_side import PAPER as _PUBLISHED

if TYPE_CHECKING:
    from .training import History

Params = dict[str, Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]
MODES = ("auto", "loop", "vmap", "compiled")


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
        params = {
            k: (v if v.requires_grad else v.detach().requires_grad_(True))
            for k, v in params.items()
        }
        for _ in range(steps):
            loss = loss_fn(params)
            grads = torch.autograd.grad(
                loss, [params[k] for k in names], create_graph=not first_order
            )
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


def _check_inner(inner_lr: float, steps: int) -> tuple[float, int]:
    """alpha and the number of inner steps, as a float and an int (0 steps: no adaptation)."""
    return validation.positive_number("inner_lr (alpha)", inner_lr, 0.01), validation.whole_number(
        "steps", steps, 0
    )


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
        return TaskBatch(
            *(t.to(device) for t in (self.support_x, self.support_y, self.query_x, self.query_y))
        )

    def task(self, i: int) -> TaskBatch:
        """Task ``i`` alone, as a batch of one."""
        return TaskBatch(
            *(t[i : i + 1] for t in (self.support_x, self.support_y, self.query_x, self.query_y))
        )


def resolve_mode(mode: str, device: torch.device | str, model: nn.Module | None = None) -> str:
    """The path to run a meta-batch on: ``"auto"`` becomes the faster one for ``device`` and ``model``.

    Measured with ``benchmarks/bench_maml.py`` on the course's shared 2-core CPU (one torch
    thread, load average about 2-3, Conv-4, meta-batch 32, 5-way 1-shot, one inner step): with
    15 queries per class the loop took 5.3 s per second-order meta-step against 15.1 s for vmap
    (first order 6.1 s against 15.7 s); with 1 query per class (the paper's training tasks) the
    two were even (1.31 s against 1.28 s second order, 0.74 s against 0.87 s first order; on
    the idle machine, 1.62 s against 1.69 s and 0.76 s against 0.83 s). For
    the sinusoid MLP vmap was about 5x faster (32 ms against 152 ms, meta-batch 25). On a GPU,
    vmap is reported about 10x faster than the loop for Conv-4 at meta-batch 32 (not measured
    here). So ``"auto"`` picks ``vmap`` on CUDA and, on other devices, ``loop`` for
    convolutional networks and ``vmap`` otherwise. Both stay selectable by name. On the idle
    machine on 2026-12-04 (``--modes loop vmap compiled``) vmap came out at 1.21 s against the
    loop's 1.58 s second order (0.97 s against 0.88 s first order): the two stay within the
    benchmark's run-to-run spread, and the loop holds one task's graph at a time. ``"compiled"``
    took 1.19 s and 0.65 s after 74 s and 53 s of compiling, so it is never chosen by ``"auto"``
    (a notebook's short run would spend most of its time compiling) but pays in long runs.
    """
    validation.one_of("mode", mode, MODES)
    if mode != "auto":
        return mode
    if torch.device(device).type == "cuda":
        return "vmap"
    has_conv = model is not None and any(
        isinstance(m, nn.modules.conv._ConvNd) for m in model.modules()
    )
    return "loop" if has_conv else "vmap"


def _adapt_on_support(
    model: nn.Module,
    params: Params,
    loss: LossFn,
    support_x: Tensor,
    support_y: Tensor,
    inner_lr: float,
    steps: int,
    first_order: bool,
    functional: bool,
) -> Params:
    """One task's adapted parameters: ``steps`` inner steps on its support loss.

    ``functional=True`` takes the ``torch.func.grad`` path that works inside ``vmap``; otherwise
    the autograd path of :func:`inner_adapt` (the readable per-task loop).
    """

    def support_loss(q: Params) -> Tensor:
        return loss(functional_call(model, q, (support_x,)), support_y)

    if functional:
        return inner_adapt_functional(support_loss, params, inner_lr, steps, first_order)
    return inner_adapt(model, params, support_loss, inner_lr, steps, first_order)


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
    ``mode="compiled"`` computes these per-task losses on the vmap path (compiling pays only for
    the whole meta-gradient, :func:`compiled_meta_gradient`).
    """
    mode = resolve_mode(mode, batch.support_x.device, model)
    if mode == "compiled":
        mode = "vmap"

    def task_query_loss(
        p: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor, functional: bool
    ) -> Tensor:
        adapted = _adapt_on_support(
            model, p, loss, sx, sy, inner_lr, steps, first_order, functional
        )
        return loss(functional_call(model, adapted, (qx,)), qy)

    if mode == "loop":
        return torch.stack(
            [
                task_query_loss(
                    params,
                    batch.support_x[i],
                    batch.support_y[i],
                    batch.query_x[i],
                    batch.query_y[i],
                    False,
                )
                for i in range(batch.n_tasks)
            ]
        )
    per_task = vmap(task_query_loss, in_dims=(None, 0, 0, 0, 0, None), randomness="different")
    return per_task(params, batch.support_x, batch.support_y, batch.query_x, batch.query_y, True)


class CompileError(RuntimeError):
    """``torch.compile`` could not build the meta-step (no C++ compiler, an unsupported op...)."""


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_meta_gradient(
    model: nn.Module, loss: LossFn, inner_lr: float, steps: int, first_order: bool = False
) -> Callable[[Params, TaskBatch], tuple[Tensor, Params]]:
    """``f(params, batch) -> (meta_loss, grads)``: :func:`meta_gradient`'s vmap path, compiled.

    The meta-loss is written as a pure function of the weights (``torch.func.grad_and_value``
    of the mean over tasks of ``vmap``-ed adaptation and query loss), so ``torch.compile`` can
    trace the whole meta-step, inner gradients, Hessian-vector terms and outer gradient
    together, into one graph. It is built once per model and setting and kept while the model
    lives; a new shape of batch compiles again. ``params`` may require grad or not: the result
    does not depend on it.
    """
    inner_lr, steps = _check_inner(inner_lr, steps)
    key = (loss, inner_lr, steps, bool(first_order))
    cache = _COMPILED.setdefault(model, {})
    if key in cache:
        return cache[key]

    def mean_query_loss(p: Params, sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        tasks = TaskBatch(sx, sy, qx, qy)
        return adapted_query_losses(
            model, p, tasks, loss, inner_lr, steps, first_order, "vmap"
        ).mean()

    step = torch.compile(torch.func.grad_and_value(mean_query_loss))

    def run(params: Params, batch: TaskBatch) -> tuple[Tensor, Params]:
        plain = {k: v.detach() for k, v in params.items()}
        try:
            grads, meta_loss = step(
                plain, batch.support_x, batch.support_y, batch.query_x, batch.query_y
            )
        except MemoryError:
            raise
        except Exception as exc:  # inductor's failures come as many exception types
            first = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise CompileError(
                f"torch.compile could not build the MAML meta-step ({type(exc).__name__}: {first}); "
                "run with --mode vmap (or mode='vmap'), the same meta-gradient uncompiled"
            ) from exc
        return meta_loss.detach(), dict(grads)

    cache[key] = run
    return run


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
    if mode == "compiled":
        return compiled_meta_gradient(model, loss, inner_lr, steps, first_order)(params, batch)
    meta_loss = adapted_query_losses(
        model, params, batch, loss, inner_lr, steps, first_order, mode
    ).mean()
    names = list(params)
    grads = torch.autograd.grad(meta_loss, [params[k] for k in names], allow_unused=True)
    grads = [
        torch.zeros_like(params[k]) if g is None else g for k, g in zip(names, grads, strict=True)
    ]
    return meta_loss.detach(), dict(zip(names, grads, strict=True))


def saved_tensor_bytes(fn: Callable[[], object]) -> int:
    """Bytes autograd holds for the backward pass of ``fn()``'s result, once ``fn()`` returns.

    This is the memory a meta-gradient needs beyond the weights: every tensor saved by an
    operation of the graph that is still alive when the meta-loss is ready, each storage
    counted once. Second-order MAML keeps the graph of every inner step (it will differentiate
    through them), so this grows with the number of inner steps; first-order MAML lets the
    inner gradients' graphs go as soon as each gradient is computed.
    """
    import weakref

    saved: list[weakref.ref] = []

    def pack(t: Tensor) -> Tensor:
        # Keep a detached view (same storage): handing autograd back ``t`` itself would tie an
        # output to its own grad_fn in a reference cycle that no garbage collector can break,
        # and every call would leak its whole graph (200 MB a call for Conv-4 in notebook 07).
        # Nothing here ever runs the backward pass, so the detached values change nothing.
        view = t.detach()
        saved.append(weakref.ref(view))
        return view

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    storages = {}
    for ref in saved:
        t = ref()
        if t is not None:
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    del result
    return int(sum(storages.values()))


@dataclass(frozen=True)
class GradientAgreement:
    """Cosines between meta-gradients: see :func:`first_order_agreement`."""

    first_vs_second: tuple[float, ...]  # per meta-batch: first-order against second-order
    second_across: float  # second order, meta-batch 0 against meta-batch 1
    first_across: float  # first order, meta-batch 0 against meta-batch 1


def first_order_agreement(
    model: nn.Module,
    batches: Sequence[TaskBatch],
    loss: LossFn,
    inner_lr: float,
    steps: int = 1,
) -> GradientAgreement:
    """How far first-order MAML's meta-gradient points from the true one, against batch noise.

    For each of two (or more) independent meta-batches, the second-order and the first-order
    meta-gradients of ``model`` are flattened into one vector each. ``first_vs_second`` is their
    cosine per batch; ``second_across`` and ``first_across`` compare meta-batch 0 with meta-batch 1
    within one order. If the two orders disagree on the same batch while each agrees with itself
    across batches, first order is not a noisy estimate of the meta-gradient but follows a
    different direction.
    """
    if len(batches) < 2:
        raise ValueError(
            f"first_order_agreement needs two meta-batches or more, got {len(batches)}"
        )
    params = parameters_of(model)
    flat: dict[bool, list[Tensor]] = {False: [], True: []}
    for batch in batches:
        for first_order in (False, True):
            _, grads = meta_gradient(
                model, params, batch, loss, inner_lr, steps, first_order, mode="loop"
            )
            flat[first_order].append(torch.cat([g.reshape(-1) for g in grads.values()]))

    def cosine(a: Tensor, b: Tensor) -> float:
        return float(F.cosine_similarity(a, b, dim=0))

    return GradientAgreement(
        tuple(cosine(s, f) for s, f in zip(flat[False], flat[True], strict=True)),
        cosine(flat[False][0], flat[False][1]),
        cosine(flat[True][0], flat[True][1]),
    )


def parameters_of(model: nn.Module) -> Params:
    """The model's trainable parameters as a ``Params`` dict (the tensors themselves, not copies)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


# ----------------------------------------------------------------------------- the learner


class MAML:
    """Meta-learns the initial weights of ``model`` with (first-order) MAML.

    ``inner_lr`` is alpha, ``outer_lr`` is beta (Adam's step size, as in the paper),
    ``inner_steps`` the number of adaptation steps during meta-training, ``loss`` the task
    loss (``F.mse_loss`` for regression, ``F.cross_entropy`` for classification), ``mode`` the
    way the meta-batch is run (``"auto"``, ``"loop"``, ``"vmap"`` or ``"compiled"``).
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
        inner_lr, inner_steps = _check_inner(inner_lr, inner_steps)
        outer_lr = validation.positive_number("outer_lr (beta)", outer_lr, 0.001)
        first_order = validation.boolean("first_order", first_order)
        resolve_mode(mode, "cpu")
        self.model, self.inner_lr, self.outer_lr = model, inner_lr, outer_lr
        self.inner_steps, self.first_order, self.loss, self.mode = (
            inner_steps,
            first_order,
            loss,
            mode,
        )
        self.optimizer = torch.optim.Adam(model.parameters(), lr=self.outer_lr)

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

        def losses(tasks: TaskBatch, mode: str) -> Tensor:
            return adapted_query_losses(
                self.model,
                self.params,
                tasks,
                self.loss,
                self.inner_lr,
                self.inner_steps,
                self.first_order,
                mode,
            )

        mode = resolve_mode(self.mode, self.device, self.model)
        if mode == "compiled":  # the whole meta-gradient in one compiled call
            meta_loss, grads = meta_gradient(
                self.model,
                self.params,
                batch,
                self.loss,
                self.inner_lr,
                self.inner_steps,
                self.first_order,
                "compiled",
            )
            for name, p in self.params.items():
                p.grad = grads[name].to(p.dtype)
            self.optimizer.step()
            return float(meta_loss)
        if mode == "loop":
            # One task's graph at a time: the gradient of the mean is the mean of the tasks'
            # gradients, and memory stays that of one task (16 second-order 20-way 5-shot tasks
            # of 5 inner steps held together took over 23 GB).
            meta_loss = 0.0
            for i in range(batch.n_tasks):
                task = TaskBatch(
                    batch.support_x[i : i + 1],
                    batch.support_y[i : i + 1],
                    batch.query_x[i : i + 1],
                    batch.query_y[i : i + 1],
                )
                loss = losses(task, "loop")[0] / batch.n_tasks
                loss.backward()
                meta_loss += float(loss.detach())
        else:
            mean = losses(batch, self.mode).mean()
            mean.backward()
            meta_loss = float(mean.detach())
        self.optimizer.step()
        return meta_loss

    def adapt(
        self, x: Tensor, y: Tensor, steps: int | None = None, inner_lr: float | None = None
    ) -> Params:
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
    network's logits for the query images. The output layer must have ``n_way`` units, and the
    images the shape the network declares (:func:`maml_conv4`: ``(1, 28, 28)``).

    ``query_group`` says how many queries of each class are scored in one batch. Batch norm
    normalises a query batch with that batch's own statistics (transductive, as in the paper's
    code), so what the network predicts for one image depends on the others in its batch, and a
    network meta-trained on query sets of ``q`` images per class scores best on batches made
    the same way. With ``query_group=q``, :meth:`scores` reads the queries in the course's
    episode order (class by class, the same number of each: ``Episode.query_images``) and scores
    them ``q`` of each class at a time, as the paper's test does with its ``K`` queries per class;
    ``None`` scores all of them in one batch. A network without batch norm gives the same
    scores either way.
    """

    def __init__(
        self, model: nn.Module, inner_lr: float, steps: int, query_group: int | None = None
    ) -> None:
        self.inner_lr, self.steps = _check_inner(inner_lr, steps)
        if query_group is not None:
            query_group = validation.whole_number("query_group", query_group, 1)
        self.query_group = query_group
        self.model, self.image_shape = model, declared_image_shape(model)
        self.device = next(model.parameters()).device
        self.adapted: Params | None = None
        self.n_way = 0

    def process_support_set(self, support_images: Tensor, support_labels: Tensor) -> None:
        start = {k: v.detach() for k, v in parameters_of(self.model).items()}
        adapted = _adapt_on_support(
            self.model,
            start,
            F.cross_entropy,
            support_images,
            support_labels,
            self.inner_lr,
            self.steps,
            first_order=True,
            functional=False,
        )
        self.adapted = {k: v.detach() for k, v in adapted.items()}
        self.n_way = int(torch.unique(support_labels).numel())

    def scores(self, query_images: Tensor) -> Tensor:
        with torch.no_grad():
            if self.query_group is None:
                return functional_call(self.model, self.adapted, (query_images,))
            n_way, total = self.n_way, len(query_images)
            if total % n_way:
                raise ValueError(
                    f"query_group={self.query_group} needs the same number of queries of each of the "
                    f"{n_way} classes, class by class, but got {total} query images; pass the "
                    "episode's query_images, or query_group=None to score them in one batch."
                )
            per_class = query_images.reshape(n_way, total // n_way, *query_images.shape[1:])
            out = []
            for start in range(0, per_class.shape[1], self.query_group):
                group = per_class[:, start : start + self.query_group]  # (n_way, q, ...)
                logits = functional_call(self.model, self.adapted, (group.flatten(0, 1),))
                out.append(logits.reshape(n_way, group.shape[1], -1))
            return torch.cat(out, dim=1).flatten(0, 1)


# ----------------------------------------------------------------------------- networks


class BatchStatNorm(nn.Module):
    """Batch norm that always normalises with the current batch's statistics (no running averages).

    ``y = (x - mean) / sqrt(var + eps) * weight + bias``, mean and (biased) variance over every
    dimension but the channels, exactly what ``nn.BatchNorm2d`` computes in training mode. It is
    written with plain tensor operations on purpose: under ``torch.func.vmap`` the second-order
    gradient through PyTorch's fused batch-norm kernel came out wrong (it disagreed with finite
    differences and with the loop by about 1e-3 relative, in float64, torch 2.13), while these
    elementary operations batch correctly. Parameter names match ``nn.BatchNorm2d`` (``weight``,
    ``bias``), so state dicts are interchangeable. ``scale=False`` drops ``weight`` and keeps the
    shift alone, as the batch norm of the paper's code does (:class:`StridedConv4`).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, scale: bool = True) -> None:
        super().__init__()
        self.num_features, self.eps = num_features, eps
        # scale=False keeps only the shift (no weight), as the paper's code's batch norm does
        self.weight = nn.Parameter(torch.ones(num_features)) if scale else None
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: Tensor) -> Tensor:
        dims = [d for d in range(x.dim()) if d != 1]
        mean = x.mean(dim=dims, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
        shape = [1, -1] + [1] * (x.dim() - 2)
        normed = (x - mean) / torch.sqrt(var + self.eps)
        if self.weight is not None:
            normed = normed * self.weight.view(shape)
        return normed + self.bias.view(shape)


def drop_running_stats(model: nn.Module) -> nn.Module:
    """Make every batch-norm layer use the current batch's statistics, always (as in MAML's code).

    Each ``nn.BatchNorm*d`` is replaced by a :class:`BatchStatNorm` with the same scale and shift.
    Without running averages there are no buffers to update, which also lets ``vmap`` run the
    network on many tasks at once.
    """
    for name, child in list(model.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            norm = BatchStatNorm(child.num_features, child.eps)
            if child.affine:
                norm = norm.to(device=child.weight.device, dtype=child.weight.dtype)
                with torch.no_grad():
                    norm.weight.copy_(child.weight)
                    norm.bias.copy_(child.bias)
            setattr(model, name, norm)
        else:
            drop_running_stats(child)
    return model


def maml_conv4(n_way: int, hidden: int = 64) -> nn.Sequential:
    """Conv-4 (batch norm on batch statistics) followed by a linear ``n_way``-way output layer."""
    from .nets import Conv4

    n_way = validation.whole_number("n_way", n_way, 2)
    return drop_running_stats(nn.Sequential(Conv4(hidden=hidden), nn.Linear(hidden, n_way)))


class StridedConv4(nn.Module):
    """The Omniglot network of the paper's code (``cbfinn/maml``): four blocks of 3x3 convolution
    with stride 2 (no max-pooling), batch norm on batch statistics with a learned shift only (no
    scale, ``eps`` 0.001), ReLU; then the mean over the last feature map.

    A ``(batch, 1, 28, 28)`` image shrinks 28 -> 14 -> 7 -> 4 -> 2 and is averaged to a
    ``(batch, hidden)`` embedding. The convolutions start Glorot-uniform with zero biases, as
    there. Each block computes a quarter of the positions of a max-pooling Conv-4 block of the
    same input, so a meta-step costs several times less.
    """

    def __init__(self, in_channels: int = 1, hidden: int = 64) -> None:
        super().__init__()
        channels, layers = [in_channels] + [hidden] * 4, []
        for a, b in zip(channels[:-1], channels[1:]):
            conv = nn.Conv2d(a, b, kernel_size=3, stride=2, padding=1)
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
            layers += [conv, BatchStatNorm(b, eps=1e-3, scale=False), nn.ReLU()]
        self.blocks = nn.Sequential(*layers)
        self.out_features = hidden
        self.image_shape = (in_channels, 28, 28)

    def forward(self, images: Tensor) -> Tensor:
        return self.blocks(images).mean(dim=(2, 3))


#: The Omniglot networks ``--net`` chooses between: ``conv4`` (this course's Conv-4, as in
#: Vinyals et al.: max-pooling, batch norm with scale and shift) and ``strided`` (the paper's code).
NETS = ("conv4", "strided")


def maml_strided_conv4(n_way: int, hidden: int = 64) -> nn.Sequential:
    """:class:`StridedConv4` followed by a linear ``n_way``-way output layer whose weights start
    from a standard normal and biases at zero, as in the paper's code."""
    n_way = validation.whole_number("n_way", n_way, 2)
    head = nn.Linear(hidden, n_way)
    nn.init.normal_(head.weight, std=1.0)
    nn.init.zeros_(head.bias)
    return nn.Sequential(StridedConv4(hidden=hidden), head)


def omniglot_net(n_way: int, net: str = "conv4") -> nn.Sequential:
    """The MAML network named ``net`` (one of :data:`NETS`) with an ``n_way``-way output layer."""
    validation.one_of("net", net, NETS)
    return maml_conv4(n_way) if net == "conv4" else maml_strided_conv4(n_way)


def sinusoid_net(hidden: Sequence[int] = (40, 40)) -> nn.Sequential:
    """The paper's regressor: 1 -> 40 -> 40 -> 1 with ReLU."""
    from .nets import mlp

    return mlp([1, *hidden, 1])


# ----------------------------------------------------------------------------- sinusoid regression


@dataclass
class SinusoidTasks:
    """The paper's regression tasks: ``y = A sin(x - phase)``, A ~ U[0.1, 5], phase ~ U[0, pi], x ~ U[-5, 5]."""

    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)

    def sample_functions(
        self, n_tasks: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``n_tasks`` amplitudes and phases, each ``(n_tasks,)``."""
        n_tasks = validation.whole_number("n_tasks", n_tasks, 1)
        u = torch.rand(2, n_tasks, generator=generator)
        amplitude = self.amplitude[0] + (self.amplitude[1] - self.amplitude[0]) * u[0]
        phase = self.phase[0] + (self.phase[1] - self.phase[0]) * u[1]
        return amplitude, phase

    def sample_x(
        self, n_tasks: int, n_points: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """Inputs ``(n_tasks, n_points, 1)`` uniform in ``x_range``."""
        low, high = self.x_range
        return low + (high - low) * torch.rand(n_tasks, n_points, 1, generator=generator)

    @staticmethod
    def evaluate(amplitude: Tensor, phase: Tensor, x: Tensor) -> Tensor:
        """``A sin(x - phase)`` for each task's inputs ``x`` ``(n_tasks, n_points, 1)``."""
        return amplitude.view(-1, 1, 1) * torch.sin(x - phase.view(-1, 1, 1))

    def sample(
        self, n_tasks: int, k_support: int, k_query: int, generator: torch.Generator | None = None
    ) -> tuple[TaskBatch, Tensor, Tensor]:
        """A meta-batch (``k_support`` training and ``k_query`` held-out points per task), amplitudes, phases."""
        k_support, k_query = (
            validation.whole_number("k_support", k_support, 1),
            validation.whole_number("k_query", k_query, 1),
        )
        amplitude, phase = self.sample_functions(n_tasks, generator)
        x = self.sample_x(n_tasks, k_support + k_query, generator)
        y = self.evaluate(amplitude, phase, x)
        batch = TaskBatch(x[:, :k_support], y[:, :k_support], x[:, k_support:], y[:, k_support:])
        return batch, amplitude, phase


def pretrain_jointly(
    model: nn.Module,
    tasks: SinusoidTasks,
    steps: int,
    n_tasks: int = 25,
    k: int = 10,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> list[float]:
    """The paper's baseline: one regressor trained on points of all tasks mixed together (MSE, Adam).

    It learns the *average* function (close to zero, since phases are spread over [0, pi]) and
    is then fine-tuned on a new task's K points exactly like MAML's initialisation.
    ``should_stop()`` turning true ends the loop early (fewer losses than ``steps``); a loss
    that is not finite raises :class:`helpers.runs.NonFiniteLoss` (a :class:`helpers.training.Loop`).
    """
    from .training import Loop

    generator = validation.torch_generator(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    device = next(model.parameters()).device

    def step(number: int) -> tuple[float, None]:
        batch, _, _ = tasks.sample(n_tasks, k, 1, generator)
        loss = F.mse_loss(model(batch.support_x.to(device)), batch.support_y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss.detach()), None

    return (
        Loop(steps, should_stop=should_stop, progress=progress, desc="pretraining").run(step).loss
    )


def train_maml(
    learner: MAML,
    sample_batch: Callable[[], TaskBatch],
    meta_steps: int,
    progress: bool = True,
    desc: str = "meta-training",
    callback: Callable[[int, float], None] | None = None,
    time_limit: float | None = None,
    should_stop: Callable[[], bool] | None = None,
    first_step: int = 1,
) -> list[float]:
    """Run ``meta_steps`` outer updates on meta-batches from ``sample_batch()``; the meta-losses.

    The course's shared :class:`helpers.training.Loop`: ``callback(step, loss)`` runs after
    each step (for live plots); ``time_limit`` (seconds) stops early, keeping what was learned,
    and so does ``should_stop()`` turning true (checked before each step: the training
    commands' Ctrl-C and SIGTERM). A meta-loss that is not a finite number raises
    :class:`helpers.runs.NonFiniteLoss`. Steps are numbered from ``first_step`` (a continued
    run counts on).
    """
    from .training import Loop

    on_step = None if callback is None else (lambda step, history: callback(step, history.loss[-1]))
    loop = Loop(
        meta_steps,
        first_step=first_step,
        max_seconds=time_limit,
        should_stop=should_stop,
        loss_name="meta-loss",
        on_step=on_step,
        progress=progress,
        desc=desc,
    )
    return loop.run(lambda step: (learner.meta_step(sample_batch()), None)).loss


def adaptation_curve(
    model: nn.Module,
    params: Params,
    batch: TaskBatch,
    inner_lr: float,
    steps: int,
    loss: LossFn = F.mse_loss,
) -> np.ndarray:
    """Mean query loss over the batch's tasks after 0, 1, ..., ``steps`` inner steps: ``(steps + 1,)``.

    Every task is adapted independently from ``params`` on its own support set (all tasks at
    once with ``vmap``; no meta-gradient is needed, so nothing is kept for the outer loop).
    """
    _check_inner(inner_lr, steps)
    start = {k: v.detach() for k, v in params.items()}

    def curve(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
        def support_loss(p: Params) -> Tensor:
            return loss(functional_call(model, p, (sx,)), sy)

        p, values = start, [loss(functional_call(model, start, (qx,)), qy)]
        grad_fn = torch.func.grad(support_loss)
        for _ in range(steps):
            p = sgd_step(p, grad_fn(p), inner_lr)
            values.append(loss(functional_call(model, p, (qx,)), qy))
        return torch.stack(values)

    with torch.no_grad():
        per_task = vmap(curve)(batch.support_x, batch.support_y, batch.query_x, batch.query_y)
    return per_task.mean(0).cpu().numpy()


def adapt_predictions(
    model: nn.Module,
    params: Params,
    support_x: Tensor,
    support_y: Tensor,
    x: Tensor,
    inner_lr: float,
    steps: Sequence[int],
    loss: LossFn = F.mse_loss,
) -> dict[int, Tensor]:
    """The model's outputs on ``x`` after each number of inner steps in ``steps`` (one task)."""
    out, p, done = {}, {k: v.detach() for k, v in params.items()}, 0

    def support_loss(q: Params) -> Tensor:
        return loss(functional_call(model, q, (support_x,)), support_y)

    for target in sorted(steps):
        if target > done:
            p = {
                k: v.detach()
                for k, v in inner_adapt(
                    model, p, support_loss, inner_lr, target - done, True
                ).items()
            }
            done = target
        with torch.no_grad():
            out[target] = functional_call(model, p, (x,))
    return out


# ----------------------------------------------------------------------------- Omniglot


#: The paper's Omniglot settings (Finn et al. 2017, section 5.2 and appendix A).
PAPER_OMNIGLOT = {
    5: dict(
        inner_lr=0.4, train_steps=1, eval_steps=3, meta_batch=32, meta_lr=1e-3, meta_steps=60000
    ),
    20: dict(
        inner_lr=0.1, train_steps=5, eval_steps=5, meta_batch=16, meta_lr=1e-3, meta_steps=60000
    ),
}
#: Reported accuracies (%), Finn et al. (2017) Table 1: (n_way, k_shot) -> MAML, first-order MAML.
#: Read from the one table of published numbers, :data:`helpers.side_by_side.PAPER`.
PAPER_OMNIGLOT_ACCURACY = {
    setting: (_PUBLISHED["MAML"][setting], _PUBLISHED["first-order MAML"][setting])
    for setting in _PUBLISHED["MAML"]
}
#: Reported sinusoid MSE, K = 5, after 1 / 5 / 10 steps (read from the paper's figure and text).
PAPER_SINUSOID_MSE = {
    "maml": {1: 0.67, 5: 0.38, 10: 0.35},
    "pretrained": {1: 2.41, 5: 2.23, 10: 2.19},
}


def episodes_to_batch(episodes: Sequence) -> TaskBatch:
    """Stack same-shaped :class:`helpers.episodes.Episode` objects into one :class:`TaskBatch`."""
    return TaskBatch(
        torch.stack([e.support_images for e in episodes]),
        torch.stack([e.support_labels for e in episodes]),
        torch.stack([e.query_images for e in episodes]),
        torch.stack([e.query_labels for e in episodes]),
    )


@dataclass
class OmniglotRun:
    """Settings of one Omniglot meta-training run (defaults: the paper's 5-way 1-shot)."""

    n_way: int = 5
    k_shot: int = 1
    n_query: int = 1
    inner_lr: float = 0.4
    train_steps: int = 1
    eval_steps: int = 3
    meta_batch: int = 32
    meta_lr: float = 1e-3
    meta_steps: int = 60000
    first_order: bool = False
    mode: str = "auto"
    minutes: float | None = None
    val_every: int = 100
    val_episodes: int = 100
    seed: int = 0
    meta_lr_half_life: float | None = None
    val_query_group: int = 0
    net: str = "conv4"


def meta_lr_at(run: OmniglotRun, step: int) -> float:
    """Adam's step size at meta-step ``step`` (from 1): ``meta_lr``, halved every
    ``meta_lr_half_life`` meta-steps (smoothly, ``meta_lr * 0.5 ** ((step - 1) / half_life)``),
    or constant (the paper) when that is ``None``."""
    if run.meta_lr_half_life is None:
        return float(run.meta_lr)
    return float(run.meta_lr) * 0.5 ** ((int(step) - 1) / float(run.meta_lr_half_life))


#: Query images per class in the validation episodes: 15 (the usual protocol) where the
#: support set leaves that many of a class's 20 drawings, else all that are left.
VAL_QUERIES = 15


def validation_queries(k_shot: int) -> int:
    """Queries per class of the validation episodes for ``k_shot`` (``k_shot + queries <= 20``)."""
    from .episodes import OMNIGLOT_DRAWINGS

    return min(VAL_QUERIES, OMNIGLOT_DRAWINGS - int(k_shot))


def check_omniglot_run(run: OmniglotRun, name: Callable[[str], str] = str) -> None:
    """Raise ``ValueError`` (one sentence) unless ``run`` can train; ``name`` spells each setting
    in the message (``str`` for the field, :func:`helpers.commands.flag` for the option)."""
    from .episodes import OMNIGLOT_CLASSES, OMNIGLOT_DRAWINGS

    for field_name in ("inner_lr", "meta_lr"):
        validation.positive_number(
            name(field_name), getattr(run, field_name), 0.4 if field_name == "inner_lr" else 0.001
        )
    if run.minutes is not None:
        validation.positive_number(name("minutes"), run.minutes, 20)
    if run.meta_lr_half_life is not None:
        validation.positive_number(name("meta_lr_half_life"), run.meta_lr_half_life, 1000)
    for field_name, low in (
        ("train_steps", 0),
        ("eval_steps", 0),
        ("meta_batch", 1),
        ("meta_steps", 1),
        ("val_every", 1),
        ("val_episodes", 1),
        ("k_shot", 1),
        ("n_query", 1),
        ("val_query_group", 0),
    ):
        validation.whole_number(name(field_name), getattr(run, field_name), low)
    validation.whole_number(
        name("n_way"),
        run.n_way,
        2,
        min(OMNIGLOT_CLASSES["vinyals-train"], OMNIGLOT_CLASSES["vinyals-val"]),
    )
    if run.k_shot + run.n_query > OMNIGLOT_DRAWINGS:
        raise ValueError(
            f"{name('k_shot')} {run.k_shot} plus {name('n_query')} {run.n_query} is {run.k_shot + run.n_query} "
            f"images per class, but every Omniglot class has {OMNIGLOT_DRAWINGS}; use at most {OMNIGLOT_DRAWINGS} together."
        )
    validation.seed(run.seed, name("seed"))
    validation.one_of(name("net"), run.net, NETS)
    resolve_mode(run.mode, "cpu")


def train_omniglot(
    run: OmniglotRun,
    out: str | Path | None = None,
    progress: bool = True,
    command: str = "",
    hardware: str = "",
    device: torch.device | str | None = None,
    files=None,
    init: str | Path | None = None,
) -> tuple[nn.Module, dict]:
    """Meta-train a Conv-4 on Omniglot (Vinyals train classes), validating on the Vinyals val classes.

    ``init`` (a checkpoint of this function with the same ``n_way``) starts the run from its
    weights instead of a random initialisation, with a fresh optimiser (a warm start: 20-way
    5-shot from the 20-way 1-shot network, or more meta-steps for a run that ended at
    ``minutes``); the record says so in ``init_from``, with that run's meta-steps and time.

    Keeps the weights with the best validation accuracy and saves them, atomically, every time
    the validation improves, to ``out`` (with a ``.json`` of settings, hardware, wall time and
    accuracy) when ``out`` is given; another run's checkpoint there is protected as
    :class:`helpers.checkpoints.Saver` says. ``files`` (a :class:`helpers.commands.RunFiles`,
    from the command) adds Ctrl-C / SIGTERM handling and ``--resume``: the run continues from
    its saved state exactly as if it had not stopped.
    """
    from . import checkpoints, runs
    from .device import hardware_description, pick_device, seed_everything
    from .episodes import omniglot_dataset, sample_episodes
    from .fewshot import evaluate
    from .training import DeviceEpisodeSampler, History, KeepBest, Loop, save_weights

    check_omniglot_run(run)
    started = time.perf_counter()
    seed_everything(run.seed)
    device = torch.device(device) if device is not None else pick_device()
    model = omniglot_net(run.n_way, run.net).to(device)
    learner = MAML(
        model,
        run.inner_lr,
        run.meta_lr,
        run.train_steps,
        run.first_order,
        F.cross_entropy,
        run.mode,
    )
    sampler = DeviceEpisodeSampler(
        omniglot_dataset("vinyals-train"), run.n_way, run.k_shot, run.n_query, device, seed=run.seed
    )
    val_query = validation_queries(run.k_shot)
    val = sample_episodes(
        omniglot_dataset("vinyals-val"),
        run.n_way,
        run.k_shot,
        val_query,
        run.val_episodes,
        seed=run.seed + 1,
    )
    saver = (
        files.saver
        if files is not None
        else (checkpoints.Saver(out, checkpoints.new_run_id()) if out is not None else None)
    )
    history = History()  # one meta-loss per meta-step; the validations
    # the best starts below any accuracy at -1 (what the records say before the first validation)
    keep = KeepBest(
        lambda: {k: v.detach().clone() for k, v in model.state_dict().items()},
        saver,
        lambda: record("interrupted", loop.elapsed()),
        value=-1.0,
    )
    init_from = None
    if init is not None:
        init_from = warm_start(model, init, run.n_way, run.net)
    wall_before = 0.0
    state = files.state if files is not None else None
    if state:
        model.load_state_dict(state["model"])
        learner.optimizer.load_state_dict(state["optimizer"])
        runs.set_generator_state(sampler.rng, state["sampler"])
        history = _history_from_state(state["losses"], state["history"], state["train_seconds"])
        best = state["best"]
        keep.step, keep.value, keep.ci95, keep.state = (
            int(best["step"]),
            float(best["accuracy"]),
            float(best["ci95"]),
            state["best_state"],
        )
        wall_before = float(state["wall_seconds"])
        runs.set_rng_state(state["rng"])
        print(
            f"resuming {files.resume_file} at meta-step {history.n_episodes} of {run.meta_steps}",
            flush=True,
        )
    description = hardware_description(device) + (f"; {hardware}" if hardware else "")
    val_batching = f", {run.val_query_group} of each class per batch" if run.val_query_group else ""
    val_text = (
        f"omniglot/vinyals-val, {run.val_episodes} episodes {run.n_way}-way {run.k_shot}-shot, "
        f"{val_query} queries per class{val_batching}"
    )

    def curves() -> dict[str, list]:
        """The validations as the records and the resume state keep them."""
        return {
            "step": list(history.val_episode),
            "val_accuracy": list(history.val_accuracy),
            "val_ci95": list(history.val_ci95),
        }

    def best_so_far() -> dict:
        return {"accuracy": keep.value, "ci95": keep.ci95, "step": keep.step}

    def record(status: str, train_seconds: float) -> dict:
        done, best = history.n_episodes, best_so_far()
        return checkpoints.make_record(
            "maml",
            command=command,
            hardware=description,
            settings=dict(run.__dict__),
            status=status,
            run_id=saver.run_id if saver is not None else None,
            validation=val_text,
            val_score=checkpoints.score(best["accuracy"], best["ci95"], best["step"])
            if best["step"]
            else None,
            history=curves(),
            results={"meta_steps_done": done, "best_step": best["step"]},
            **({"init_from": init_from} if init_from else {}),
            wall_seconds=wall_before + time.perf_counter() - started,
            train_seconds=train_seconds,
            meta_steps_done=done,
            seconds_per_meta_step=round(train_seconds / max(1, done), 3),
            best_step=best["step"],
            val_accuracy=round(best["accuracy"], 4),
            val_ci95=round(best["ci95"], 4),
            val_episodes=run.val_episodes,
            val_split=f"omniglot/vinyals-val, {val_query} queries per class{val_batching}",
            train_split="omniglot/vinyals-train",
            meta_loss_every_10=[
                round(float(np.mean(history.loss[i : i + 10])), 4) for i in range(0, done, 10)
            ],
        )

    def validate(step: int):
        classifier = MAMLClassifier(
            model, run.inner_lr, run.eval_steps, query_group=run.val_query_group or None
        )
        result = evaluate(classifier, val, progress=False)
        # one line per validation, with or without the progress bar: a run in the background
        # (--no-progress, output to a log) then shows how far it is and how it is doing
        print(f"step {step}: validation {result}", flush=True)
        return result

    def save_resumable(history: History) -> None:
        files.save_state(
            {
                "model": model.state_dict(),
                "optimizer": learner.optimizer.state_dict(),
                "sampler": runs.generator_state(sampler.rng),
                "rng": runs.rng_state(),
                "losses": list(history.loss),
                "history": curves(),
                "best": best_so_far(),
                "best_state": keep.state,
                "train_seconds": history.seconds,
                "wall_seconds": wall_before + time.perf_counter() - started,
            },
            record("resumable", history.seconds),
        )

    loop = Loop(
        run.meta_steps - history.n_episodes,
        history=history,
        validate=validate,
        val_every=run.val_every,
        keep=keep,
        max_seconds=None if run.minutes is None else 60 * run.minutes,
        should_stop=runs.stop_requested if files is not None else None,
        save_resumable=save_resumable if files is not None else None,
        loss_name="meta-loss",
        progress=progress,
        desc="meta-training",
    )

    def meta_step(step: int):
        for group in learner.optimizer.param_groups:
            group["lr"] = meta_lr_at(run, step)
        return learner.meta_step(episodes_to_batch(sampler.take(run.meta_batch))), None

    try:
        loop.run(meta_step)
    except runs.NonFiniteLoss as exc:
        if files is None:
            raise
        from .commands import nonfinite, own_checkpoint

        raise nonfinite(
            exc,
            "the step sizes --inner-lr or --meta-lr are probably too large",
            saver.path if own_checkpoint(files) else None,
        ) from None
    if history.interrupted:  # a stop request: the resume state is saved
        from .commands import own_checkpoint

        raise files.interrupted(
            f"meta-step {history.n_episodes} of {run.meta_steps}", command, own_checkpoint(files)
        )
    train_seconds = history.seconds
    if not history.val_episode or history.val_episode[-1] != history.n_episodes:
        loop.validation(history.n_episodes)
    # Stopped by --minutes before --meta-steps: the state at the end is kept, so that --resume with
    # a larger --minutes goes on exactly as one longer run would (the minutes are the run's total).
    unfinished = files is not None and history.n_episodes < run.meta_steps
    if unfinished:
        save_resumable(history)
    model.load_state_dict(keep.state)
    meta = record("complete", train_seconds)
    if saver is not None:
        meta = save_weights(saver, keep.state, meta, step=history.n_episodes)
    if unfinished:
        from .commands import resume_command

        print(
            f"stopped at the time limit, meta-step {history.n_episodes} of {run.meta_steps}: "
            f"{files.resume_file} keeps the run; continue it with a larger --minutes and: "
            f"{resume_command(command)}",
            flush=True,
        )
    elif files is not None:
        files.finish()
    return model, meta


def check_init(init: str | Path, n_way: int, net: str | None = None) -> dict:
    """The record of ``init``, a checkpoint to warm-start an ``n_way`` run from (before any
    weights or data are loaded); ``ValueError`` (one sentence) unless it is a checkpoint of the
    omniglot command with the same ``n_way`` (another one's output layer has another shape) and,
    when ``net`` is given, the same network (:data:`NETS`; a record without one is Conv-4)."""
    from . import checkpoints

    record = checkpoints.read_record(init) if Path(init).is_file() else None
    if record is None or "n_way" not in record.get("settings", {}):
        raise ValueError(
            f"--init {init} is not a checkpoint of python -m helpers.maml omniglot "
            "(no such .pt, or no .json record beside it); give one that --out wrote."
        )
    if record["settings"]["n_way"] != n_way:
        raise ValueError(
            f"--init {init} is a {record['settings']['n_way']}-way network, but --n-way is "
            f"{n_way}; start from a {n_way}-way checkpoint or leave --init out."
        )
    init_net = record["settings"].get("net", "conv4")
    if net is not None and init_net != net:
        raise ValueError(
            f"--init {init} is a {init_net} network, but --net is {net}; start from a {net} "
            f"checkpoint or give --net {init_net}."
        )
    return record


def training_budget(record: dict) -> tuple[int, int]:
    """``(meta_steps, tasks)`` behind a checkpoint's weights, from its record: its own meta-steps
    and tasks, plus those of the run a warm start began from (``init_from``), so a continued run
    is compared with others by all the training its weights had."""
    from .checkpoints import earlier_runs

    steps = int(record["meta_steps_done"])
    tasks = steps * int(record["settings"]["meta_batch"])
    for source in earlier_runs(record):
        earlier = int(source.get("meta_steps_done") or 0)
        steps += earlier
        tasks += earlier * int((source.get("settings") or {}).get("meta_batch") or 0)
    return steps, tasks


def omniglot_runs(
    directory: str | Path, n_way: int, k_shot: int, first_order: bool = False
) -> list[Path]:
    """The Omniglot checkpoints in ``directory`` trained for one setting (``maml_omniglot_*.pt``
    whose record says this ``n_way``, ``k_shot`` and order, continued runs included), best
    validation accuracy first.

    The choice is made on the validation classes, never on the test ones, so a notebook that
    takes the first may report its test accuracy honestly. Scores are compared only where they
    were measured alike, because batch norm scores a query against the batch in front of it:

    1. if every run has a re-validation (``python -m helpers.maml test CKPT --split vinyals-val``,
       kept as ``results.val``) on the same episodes, batched as in its test, that ranks them;
    2. else, if every run validated during training on the same episodes (the same ``--seed``,
       since the validation episodes are drawn from it, and ``--val-episodes``) with the same
       batching (``--val-query-group``), their best validations rank them;
    3. else they rank by those validations all the same, with a warning that names the command
       of 1.

    A checkpoint without a validation score comes last.
    """
    from . import checkpoints

    found = []
    for path in sorted(Path(directory).glob("maml_omniglot_*.pt")):
        if path.name.endswith(".resume.pt"):
            continue
        record = checkpoints.read_record(path)
        settings = (record or {}).get("settings") or {}
        if (settings.get("n_way"), settings.get("k_shot"), bool(settings.get("first_order"))) != (
            n_way,
            k_shot,
            bool(first_order),
        ):
            continue
        found.append((path, record))

    def protocol(test: dict) -> tuple:
        return tuple(test.get(k) for k in ("split", "episodes", "n_query", "seed", "k_shot"))

    revalidated = [((record.get("results") or {}).get("val") or {}) for _, record in found]
    same_episodes = {protocol(test) for test in revalidated}
    if found and all(revalidated) and len(same_episodes) == 1:
        scores = [float(test["accuracy"]) for test in revalidated]
    else:
        measured = {  # what draws and batches the training validations
            (s.get("seed"), s.get("val_episodes"), s.get("val_query_group") or 0)
            for s in (record["settings"] for _, record in found)
        }
        if len(measured) > 1:
            warnings.warn(
                f"the {n_way}-way {k_shot}-shot runs in {directory} validated on different "
                "episodes or with different batch-norm batchings, so their validations are not "
                "alike; re-validate each with python -m helpers.maml test CHECKPOINT --split "
                "vinyals-val to rank them on the same episodes.",
                stacklevel=2,
            )
        scores = [((record.get("val_score") or {}).get("value")) for _, record in found]
        scores = [-1.0 if score is None else float(score) for score in scores]
    ranked = sorted(
        zip(scores, (path for path, _ in found)), key=lambda item: (-item[0], item[1].name)
    )
    return [path for _, path in ranked]


def warm_start(model: nn.Module, init: str | Path, n_way: int, net: str = "conv4") -> dict:
    """Copy the weights of the checkpoint ``init`` into ``model``; what the record keeps of it.

    Refuses what :func:`check_init` refuses.
    """
    init = Path(init)
    check_init(init, n_way, net)
    source, source_record = load_omniglot_checkpoint(init)
    settings = source_record["settings"]
    model.load_state_dict(
        {k: v.to(next(model.parameters()).device) for k, v in source.state_dict().items()}
    )
    return {
        "checkpoint": str(init),
        "run_id": source_record.get("run_id"),
        "sha256": (source_record.get("weights") or {}).get("sha256"),
        "settings": {
            **{
                k: settings.get(k)
                for k in ("n_way", "k_shot", "first_order", "inner_lr", "train_steps", "meta_batch")
            },
            "net": settings.get("net", "conv4"),
        },
        "meta_steps_done": source_record.get("meta_steps_done"),
        "train_seconds": source_record.get("train_seconds"),
        "val_accuracy": source_record.get("val_accuracy"),
        # kept so that a warm start of a warm start counts its whole budget
        "init_from": source_record.get("init_from"),
    }


def _history_from_state(losses: Sequence[float], validations: dict, seconds: float) -> History:
    """A :class:`helpers.training.History` from the meta-losses and validations a resume state keeps."""
    from .training import History

    return History(
        episode=list(range(1, len(losses) + 1)),
        loss=[float(v) for v in losses],
        accuracy=[math.nan] * len(losses),
        val_episode=[int(v) for v in validations["step"]],
        val_accuracy=[float(v) for v in validations["val_accuracy"]],
        val_ci95=[float(v) for v in validations["val_ci95"]],
        seconds=float(seconds),
    )


def load_omniglot_checkpoint(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[nn.Module, dict]:
    """A MAML network and its metadata from a checkpoint written by :func:`train_omniglot`: the
    network its record names (``settings.net``, Conv-4 when it names none)."""
    from . import checkpoints

    command = "python -m helpers.maml omniglot --out " + str(path)
    record = checkpoints.read_record(path)
    if record is None or "n_way" not in record.get("settings", {}):
        where = "no record" if record is None else "a record without settings.n_way"
        raise checkpoints.MissingCheckpoint(
            f"{checkpoints.record_path(path)} is missing or incomplete ({where}): expected the record of a MAML Conv-4 "
            f"checkpoint that says its n_way; {checkpoints.how_to_make(record, command)}."
        )
    model = omniglot_net(record["settings"]["n_way"], record["settings"].get("net", "conv4"))
    _, record = checkpoints.load(
        path,
        checkpoints.torch_reader(model),
        f"a {record['settings']['n_way']}-way MAML Conv-4",
        command,
    )
    return model.to(device), record


def sinusoid_report(
    models: dict[str, tuple[nn.Module, Params]],
    shots: Sequence[int] = (5, 10),
    steps: int = 10,
    n_tasks: int = 600,
    inner_lr: float = 0.01,
    n_eval_points: int = 100,
    seed: int = 1234,
) -> dict[str, dict[int, list[float]]]:
    """Mean-squared error on ``n_tasks`` new sinusoids after 0..``steps`` steps, per model and K.

    Each task is adapted on its K points and scored on ``n_eval_points`` fresh points in [-5, 5].
    Returns ``{name: {K: [mse after 0 steps, after 1 step, ...]}}``.
    """
    seed = validation.seed(seed)
    tasks, out = SinusoidTasks(), {name: {} for name in models}
    for k in shots:
        batch, _, _ = tasks.sample(
            n_tasks, k, n_eval_points, torch.Generator().manual_seed(seed + k)
        )
        for name, (model, params) in models.items():
            device = next(model.parameters()).device
            out[name][k] = [
                float(v) for v in adaptation_curve(model, params, batch.to(device), inner_lr, steps)
            ]
    return out


def train_sinusoid(
    meta_steps: int = 70000,
    meta_batch: int = 25,
    k: int = 10,
    inner_lr: float = 0.01,
    inner_steps: int = 1,
    outer_lr: float = 1e-3,
    first_order: bool = False,
    minutes: float | None = None,
    seed: int = 0,
    progress: bool = True,
    files=None,
    command: str = "",
) -> tuple[MAML, nn.Module, dict]:
    """Meta-train the paper's sinusoid regressor, and a jointly pretrained baseline for as many steps.

    ``files`` (from the command) adds Ctrl-C / SIGTERM handling and ``--resume``: a run stopped
    during meta-training continues exactly; one stopped during the (seeded) pretraining keeps
    its meta-trained weights and pretrains again from the start, with the same result.
    """
    from . import checkpoints, runs
    from .device import seed_everything
    from .training import History, Loop

    seed_everything(seed)
    tasks, generator = SinusoidTasks(), validation.torch_generator(seed)
    learner = MAML(sinusoid_net(), inner_lr, outer_lr, inner_steps, first_order, F.mse_loss)
    history = History()  # the meta-losses; seconds: the meta-training time
    state = files.state if files is not None else None
    if state:
        learner.model.load_state_dict(state["model"])
        learner.optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        history = _history_from_state(
            state["losses"], {"step": [], "val_accuracy": [], "val_ci95": []}, state["maml_seconds"]
        )
        runs.set_rng_state(state["rng"])
    stop = runs.stop_requested if files is not None else None
    settings = dict(
        meta_steps=meta_steps,
        meta_batch=meta_batch,
        k=k,
        inner_lr=inner_lr,
        inner_steps=inner_steps,
        outer_lr=outer_lr,
        first_order=first_order,
        minutes=minutes,
        seed=seed,
    )

    def save_state(phase: str) -> None:
        files.save_state(
            {
                "phase": phase,
                "model": learner.model.state_dict(),
                "optimizer": learner.optimizer.state_dict(),
                "generator": generator.get_state() if phase == "maml" else state_generator,
                "losses": list(history.loss),
                "maml_seconds": history.seconds,
                "rng": rng_after_maml if phase == "pretrain" else runs.rng_state(),
            },
            checkpoints.make_record(
                "maml", command=command, hardware="", settings=settings, status="resumable"
            ),
        )

    def stopped(phase: str, done: int, of: int) -> Exception:
        what = "meta-step" if phase == "maml" else "pretraining step"
        return files.interrupted(f"{what} {done} of {of}", command, False)

    if not state or state.get("phase", "maml") == "maml":
        loop = Loop(
            meta_steps - history.n_episodes,
            history=history,
            max_seconds=None if minutes is None else 60 * minutes,
            should_stop=stop,
            save_resumable=(lambda h: save_state("maml")) if files is not None else None,
            loss_name="meta-loss",
            progress=progress,
            desc="meta-training",
        )
        loop.run(
            lambda step: (learner.meta_step(tasks.sample(meta_batch, k, k, generator)[0]), None)
        )
        if history.interrupted:
            raise stopped("maml", history.n_episodes, meta_steps)
    state_generator, rng_after_maml = generator.get_state(), runs.rng_state()
    seed_everything(seed + 1)
    pretrained = sinusoid_net()
    start = time.perf_counter()
    done = pretrain_jointly(
        pretrained,
        tasks,
        history.n_episodes,
        meta_batch,
        k,
        outer_lr,
        seed + 1,
        progress,
        should_stop=stop,
    )
    if files is not None and len(done) < history.n_episodes:
        save_state("pretrain")
        raise stopped("pretrain", len(done), history.n_episodes)
    losses = history.loss
    meta = {
        "settings": settings,
        "meta_steps_done": len(losses),
        "maml_seconds": round(history.seconds, 1),
        "pretrain_seconds": round(time.perf_counter() - start, 1),
        "meta_loss_every_100": [
            round(float(np.mean(losses[i : i + 100])), 4) for i in range(0, len(losses), 100)
        ],
    }
    return learner, pretrained, meta


def load_sinusoid_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """A sinusoid regressor (MAML's or the pretrained baseline's) and its metadata."""
    from . import checkpoints

    model = sinusoid_net()
    _, record = checkpoints.load(
        path,
        checkpoints.torch_reader(model),
        "a sinusoid regressor (MLP 1-40-40-1)",
        "python -m helpers.maml sinusoid --out " + str(path).replace("_pretrained", ""),
    )
    return model, record


# ----------------------------------------------------------------------------- the command

PROG = "python -m helpers.maml"


def build_parser():
    """``python -m helpers.maml omniglot ...`` and ``python -m helpers.maml sinusoid ...``."""
    from .commands import Parser, add_run_options

    parser = Parser(
        PROG,
        description="Meta-train MAML on Omniglot or on the paper's sinusoids, or test an Omniglot "
        "checkpoint on new episodes. Ctrl-C or SIGTERM saves a training run; --resume continues it.",
    )
    sub = parser.add_subparsers(dest="task", required=True, parser_class=Parser)
    om = sub.add_parser(
        "omniglot", help="Conv-4 on Omniglot; defaults are the paper's 5-way 1-shot settings"
    )
    defaults = OmniglotRun()
    for name, value in defaults.__dict__.items():
        flag = "--" + name.replace("_", "-")
        if name == "seed":
            continue  # add_run_options has it
        if isinstance(value, bool):
            om.add_argument(flag, action="store_true")
        elif name == "minutes":
            om.add_argument(
                flag, type=float, default=None, help="stop after this many minutes of training"
            )
        elif name == "meta_lr_half_life":
            om.add_argument(
                flag,
                type=float,
                default=None,
                help="halve --meta-lr every this many meta-steps (smoothly); default: constant, "
                "as in the paper",
            )
        elif name == "val_query_group":
            om.add_argument(
                flag,
                type=int,
                default=value,
                help="score the validation queries this many of each class per batch (batch norm "
                "normalises with the batch in front of it; the test scores --n-query of each class "
                "per batch); default 0: all of an episode's queries in one batch",
            )
        elif name == "mode":
            om.add_argument(flag, choices=MODES, default=value)
        elif name == "net":
            om.add_argument(
                flag,
                choices=NETS,
                default=value,
                help="conv4: this course's Conv-4 (max-pooling); strided: the paper's code's "
                "Omniglot network (stride-2 convolutions, batch norm with a shift only, mean over "
                "the last map)",
            )
        else:
            om.add_argument(flag, type=type(value), default=value)
    om.add_argument(
        "--paper",
        action="store_true",
        help="the paper's alpha, inner steps, meta-batch and meta-steps for --n-way (flags given explicitly win)",
    )
    om.add_argument(
        "--out",
        type=Path,
        default=Path("data/checkpoints/maml_omniglot.pt"),
        help="the checkpoint to write",
    )
    om.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start from the weights of this checkpoint of the same --n-way (a warm start, fresh optimiser) instead of random ones",
    )
    om.add_argument("--no-progress", action="store_true")
    si = sub.add_parser(
        "sinusoid", help="the paper's sinusoid regression (and the jointly pretrained baseline)"
    )
    si.add_argument("--meta-steps", type=int, default=70000)
    si.add_argument("--meta-batch", type=int, default=25)
    si.add_argument("--k", type=int, default=10)
    si.add_argument("--inner-lr", type=float, default=0.01)
    si.add_argument("--minutes", type=float, default=None)
    si.add_argument(
        "--out",
        type=Path,
        required=True,
        help="MAML weights; the baseline goes beside it with _pretrained",
    )
    si.add_argument("--no-progress", action="store_true")
    for p in (om, si):
        p.add_argument(
            "--hardware", default="", help="a note on the machine, added to the recorded hardware"
        )
        add_run_options(p)
    te = sub.add_parser(
        "test",
        help="test an Omniglot checkpoint on new episodes and keep the result in its record",
    )
    te.add_argument("checkpoint", type=Path, help="a checkpoint written by the omniglot command")
    te.add_argument("--episodes", type=int, default=600, help="test episodes (the paper: 600)")
    te.add_argument("--n-query", type=int, default=15, help="queries per class in an episode")
    te.add_argument(
        "--k-shot", type=int, default=None, help="shots per class (default: the checkpoint's)"
    )
    te.add_argument(
        "--query-group",
        type=int,
        default=None,
        help="queries of each class scored in one batch, which batch norm normalises together "
        "(default: as many as the checkpoint trained with, as the paper's test does; 0: all of "
        "an episode's queries in one batch)",
    )
    te.add_argument(
        "--split",
        default="vinyals-test",
        help="the Omniglot split of the classes (vinyals-val: a re-validation, kept as "
        "results.val, by which the notebooks choose among the runs of a setting)",
    )
    te.add_argument("--seed", type=int, default=100, help="seed of the episodes")
    te.add_argument("--device", default=None, help="cpu, cuda, cuda:N or mps")
    te.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    te.add_argument("--no-progress", action="store_true")
    te.add_argument("--debug", action="store_true", help="show Python's traceback on failure")
    return parser


def evaluate_command(args, device: torch.device) -> dict:
    """``python -m helpers.maml test CHECKPOINT``: accuracy on new episodes, kept in the record.

    The checkpoint adapts to each episode as it was set to (its inner learning rate and test
    steps), and its batch norm scores the queries in batches made like its training query sets
    (``query_group``: that many of each class, as in the paper's test) unless ``--query-group``
    says otherwise. The result goes to the record's ``results.test`` (``results.test_5shot``
    for another number of shots, ``..._one_batch`` or ``..._group3`` for another grouping,
    ``results.val`` on the validation classes; the weights are not touched), so the README and
    the notebooks read a number that a command measured.
    """
    from . import checkpoints
    from .episodes import omniglot_dataset, sample_episodes
    from .fewshot import evaluate

    model, record = load_omniglot_checkpoint(args.checkpoint, device)
    settings = record["settings"]
    k_shot = settings["k_shot"] if args.k_shot is None else args.k_shot
    group = settings["n_query"] if args.query_group is None else args.query_group
    classes = omniglot_dataset(args.split)
    episodes = sample_episodes(
        classes, settings["n_way"], k_shot, args.n_query, args.episodes, seed=args.seed
    )
    learner = MAMLClassifier(
        model, settings["inner_lr"], settings["eval_steps"], query_group=group or None
    )
    start = time.perf_counter()
    result = evaluate(learner, episodes, progress=not args.no_progress, desc="testing")
    test = {
        "accuracy": round(result.mean, 5),
        "ci95": round(result.ci95, 5),
        "episodes": args.episodes,
        "split": f"omniglot/{args.split}",
        "n_way": settings["n_way"],
        "k_shot": k_shot,
        "n_query": args.n_query,
        "query_group": group,
        "seed": args.seed,
        "adaptation": f"{settings['eval_steps']} steps of {settings['inner_lr']}",
        "seconds": round(time.perf_counter() - start, 1),
    }
    key = result_key(k_shot, group, settings, args.split)
    checkpoints.update_record(args.checkpoint, results={**(record.get("results") or {}), key: test})
    batches = (
        "all queries of an episode in one batch"
        if not group
        else f"{group} {'query' if group == 1 else 'queries'} of each class per batch"
    )
    print(
        f"{args.checkpoint}: {100 * result.mean:.1f} ± {100 * result.ci95:.1f} % on {args.episodes} "
        f"{settings['n_way']}-way {k_shot}-shot episodes of omniglot/{args.split}, {batches} "
        f"(results.{key} of its record)"
    )
    return test


def result_key(k_shot: int, query_group: int, settings: dict, split: str = "vinyals-test") -> str:
    """The record's key for a test at ``k_shot`` shots and ``query_group`` queries of each class
    per batch (0: one batch) on the classes of ``split``: ``test`` at the checkpoint's own shots
    and training queries on the test classes, else ``test_5shot``, ``test_one_batch``,
    ``test_5shot_group3`` and so on; ``val`` (``val_5shot``, ...) on the validation classes,
    which is what :func:`omniglot_runs` may rank by, and the split's name for any other."""
    base = {"vinyals-test": "test", "vinyals-val": "val"}.get(split, split.replace("-", "_"))
    key = base if k_shot == settings["k_shot"] else f"{base}_{k_shot}shot"
    if query_group != settings["n_query"]:
        key += "_one_batch" if query_group == 0 else f"_group{query_group}"
    return key


def _omniglot_settings(args) -> dict:
    defaults = OmniglotRun()
    settings = {k: getattr(args, k) for k in defaults.__dict__}
    if args.paper:
        explicit = {
            k for k, v in settings.items() if v != getattr(defaults, k)
        }  # flags given win over --paper
        settings.update({k: v for k, v in PAPER_OMNIGLOT[args.n_way].items() if k not in explicit})
    return settings


def validate_arguments(args) -> None:
    """Every argument, checked before any data is loaded (``ValueError``)."""
    from . import commands

    commands.run_options(args)  # seed, threads, device (test has no --resume or --overwrite)
    if args.task == "test":
        commands.whole(args, "episodes", 1)
        commands.whole(args, "n_query", 1)
        commands.whole(args, "query_group", 0)
        if args.k_shot is not None:
            commands.whole(args, "k_shot", 1)
        if not Path(args.checkpoint).is_file():
            raise ValueError(
                f"there is no checkpoint {args.checkpoint}; give the .pt file that "
                "python -m helpers.maml omniglot --out wrote."
            )
        return
    if args.task == "sinusoid":
        commands.positive(args, "inner_lr", example=0.01)
        commands.positive(args, "minutes", example=17)
        commands.whole(args, "meta_steps", 1)
        commands.whole(args, "meta_batch", 1)
        commands.whole(args, "k", 1)
    else:
        if args.paper and args.n_way not in PAPER_OMNIGLOT:
            raise ValueError(
                f"--paper knows the paper's settings for --n-way 5 and 20, not {validation.show(args.n_way)}."
            )
        check_omniglot_run(OmniglotRun(**_omniglot_settings(args)), commands.flag)
        if args.init is not None:
            check_init(args.init, args.n_way, _omniglot_settings(args)["net"])
    commands.writable_target(Path(args.out))


def train_command(args, device: torch.device, command: str) -> dict:
    from . import checkpoints, commands

    if args.task == "test":
        return evaluate_command(args, device)
    if args.task == "omniglot":
        settings = _omniglot_settings(args)
        files = commands.RunFiles(args.out, args, settings)
        _, meta = train_omniglot(
            OmniglotRun(**settings),
            args.out,
            progress=not args.no_progress,
            command=command,
            hardware=args.hardware,
            device=device,
            files=files,
            init=args.init,
        )
        print(
            json.dumps(
                {
                    k: v
                    for k, v in meta.items()
                    if k not in ("history", "meta_loss_every_10", "settings")
                },
                indent=2,
            )
        )
        print(f"checkpoint: {files.saver.path}")
        return meta
    from .device import hardware_description

    settings = {
        k: getattr(args, k)
        for k in ("meta_steps", "meta_batch", "k", "inner_lr", "minutes", "seed")
    }
    files = commands.RunFiles(args.out, args, settings)
    learner, pretrained, meta = train_sinusoid(
        args.meta_steps,
        args.meta_batch,
        args.k,
        args.inner_lr,
        minutes=args.minutes,
        seed=args.seed,
        progress=not args.no_progress,
        files=files,
        command=command,
    )
    report = sinusoid_report(
        {
            "maml": (learner.model, learner.params),
            "pretrained": (pretrained, parameters_of(pretrained)),
        }
    )
    test = "600 new tasks per K, adapted with alpha=0.01 on K points, MSE on 100 fresh points"
    written = {}
    for name, model, saver in (
        ("maml", learner.model, files.saver),
        (
            "pretrained",
            pretrained,
            checkpoints.Saver(
                args.out.with_name(args.out.stem + "_pretrained.pt"), files.run_id, args.overwrite
            ),
        ),
    ):
        record = checkpoints.make_record(
            "maml",
            command=command,
            hardware=hardware_description(device) + (f"; {args.hardware}" if args.hardware else ""),
            settings=meta["settings"],
            validation=f"test MSE after 1 step at K=5 ({test})",
            val_score=checkpoints.score(report[name][5][1], metric="mse", higher_is_better=False),
            history={"meta_loss_every_100": meta["meta_loss_every_100"]},
            results={"test_mse": report},
            wall_seconds=commands.wall_seconds(files, args),
            train_seconds=meta["maml_seconds"] + meta["pretrain_seconds"],
            run_id=files.run_id,
            **{k: v for k, v in meta.items() if k != "settings"},
            test_mse=report,
            test=test,
            model=name,
        )
        written[name] = saver.save(checkpoints.torch_writer(model.state_dict()), record)
    files.finish()
    print(
        json.dumps(
            {
                k: v
                for k, v in written["maml"].items()
                if k not in ("meta_loss_every_100", "history", "results")
            },
            indent=1,
        )
    )
    return written["maml"]


def main(argv: Sequence[str] | None = None) -> dict:
    """Command line: ``python -m helpers.maml omniglot --n-way 5 --k-shot 1 --minutes 20 --out ...``.

    Every failure is one line on stderr with exit status 2; see ``--help``.
    """
    from .commands import main as run_command

    return run_command(PROG, build_parser(), validate_arguments, train_command, argv)


if __name__ == "__main__":
    main()

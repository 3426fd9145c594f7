"""Tests of helpers.maml: the meta-gradient is right, first order drops exactly the Hessian term,
vmap and the loop agree, and meta-learning beats joint pretraining on sinusoids."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from helpers import maml
from helpers.fewshot import FewShotMethod

ROOT = Path(__file__).resolve().parent.parent


def smooth_net(seed: int = 0) -> nn.Module:
    """A tiny tanh MLP in float64: smooth, so finite differences converge."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(1, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 1)
    ).double()


def smooth_batch(n_tasks: int = 3, seed: int = 1) -> maml.TaskBatch:
    g = torch.Generator().manual_seed(seed)
    batch, _, _ = maml.SinusoidTasks().sample(n_tasks, 5, 7, g)
    return maml.TaskBatch(
        *(t.double() for t in (batch.support_x, batch.support_y, batch.query_x, batch.query_y))
    )


def test_sgd_step_exact_values():
    params = {"w": torch.tensor([1.0, -2.0]), "b": torch.tensor(3.0)}
    grads = {"w": torch.tensor([0.5, 0.5]), "b": torch.tensor(-1.0)}
    out = maml.sgd_step(params, grads, 0.1)
    assert torch.allclose(out["w"], torch.tensor([0.95, -2.05]))
    assert torch.allclose(out["b"], torch.tensor(3.1))


@pytest.mark.parametrize("steps", [1, 2])
def test_second_order_meta_gradient_matches_central_finite_differences(steps):
    net, batch = smooth_net(), smooth_batch()
    params = maml.parameters_of(net)
    _, grads = maml.meta_gradient(
        net, params, batch, F.mse_loss, 0.05, steps, first_order=False, mode="loop"
    )

    def meta_loss(flat: torch.Tensor) -> float:
        p, i = {}, 0
        for name, value in params.items():
            p[name] = flat[i : i + value.numel()].view_as(value)
            i += value.numel()
        with torch.no_grad():
            return float(
                maml.adapted_query_losses(
                    net, p, batch, F.mse_loss, 0.05, steps, mode="loop"
                ).mean()
            )

    flat = torch.cat([v.detach().reshape(-1) for v in params.values()])
    eps, numeric = 1e-5, torch.zeros_like(flat)
    for i in range(len(flat)):
        plus, minus = flat.clone(), flat.clone()
        plus[i] += eps
        minus[i] -= eps
        numeric[i] = (meta_loss(plus) - meta_loss(minus)) / (2 * eps)
    analytic = torch.cat([g.reshape(-1) for g in grads.values()])
    relative = (analytic - numeric).norm() / numeric.norm()
    assert relative < 1e-6, relative
    # ...and first order is measurably different, so the test would catch a dropped Hessian term
    _, fo = maml.meta_gradient(
        net, params, batch, F.mse_loss, 0.05, steps, first_order=True, mode="loop"
    )
    assert (
        torch.cat([g.reshape(-1) for g in fo.values()]) - numeric
    ).norm() / numeric.norm() > 1e-4


class Direct(nn.Module):
    """A 'model' whose parameters are the vector theta itself."""

    def __init__(self, theta: torch.Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(theta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.theta


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_first_order_drops_exactly_the_hessian_term_on_a_quadratic(steps):
    # support loss 1/2 th^T A th - b^T th (Hessian A); query loss 1/2 |th - c|^2
    g = torch.Generator().manual_seed(0)
    m = torch.randn(4, 4, generator=g, dtype=torch.float64)
    a = m @ m.T + torch.eye(4, dtype=torch.float64)
    b, c = (
        torch.randn(4, generator=g, dtype=torch.float64),
        torch.randn(4, generator=g, dtype=torch.float64),
    )
    model, alpha = Direct(torch.randn(4, generator=g, dtype=torch.float64)), 0.05
    theta = maml.parameters_of(model)

    def support_loss(p):
        t = functional_call(model, p, (None,))
        return 0.5 * t @ a @ t - b @ t

    expected_adapted = theta["theta"].detach()
    for _ in range(steps):
        expected_adapted = expected_adapted - alpha * (a @ expected_adapted - b)
    residual = expected_adapted - c
    jacobian = torch.linalg.matrix_power(torch.eye(4, dtype=torch.float64) - alpha * a, steps)

    for first_order, expected in ((False, jacobian @ residual), (True, residual)):
        adapted = maml.inner_adapt(
            model, theta, support_loss, alpha, steps, first_order=first_order
        )
        assert torch.allclose(adapted["theta"], expected_adapted, atol=1e-12)
        outer = 0.5 * ((adapted["theta"] - c) ** 2).sum()
        (grad,) = torch.autograd.grad(outer, [theta["theta"]])
        assert torch.allclose(grad, expected, atol=1e-12), (first_order, grad, expected)


def test_two_step_meta_gradient_multiplies_the_factors_first_step_first():
    # theta^(j+1) = theta^(j) - alpha grad L(theta^(j)); with H^(j) the support Hessian at theta^(j),
    # the meta-gradient is (I - alpha H^(0)) (I - alpha H^(1)) grad_q(theta^(2)). A quartic support loss
    # makes the Hessian change between the steps, and the two factors do not commute.
    def task_loss(theta: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t1, t2 = theta[0], theta[1]
        return 0.25 * t1**4 + t1 * t2 + t2**2 - target @ theta

    model, alpha = Direct(torch.tensor([1.2, -0.4], dtype=torch.float64)), 0.2
    support_target = torch.tensor([0.5, -1.0], dtype=torch.float64)
    query_target = torch.tensor([-1.0, 2.0], dtype=torch.float64)
    batch = maml.TaskBatch(
        torch.zeros(1, 1), support_target[None], torch.zeros(1, 1), query_target[None]
    )
    _, grads = maml.meta_gradient(
        model, maml.parameters_of(model), batch, task_loss, alpha, 2, mode="loop"
    )

    eye = torch.eye(2, dtype=torch.float64)
    iterates, factors = [model.theta.detach()], []
    for _ in range(2):
        theta = iterates[-1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(task_loss(theta, support_target), [theta])
        factors.append(
            eye
            - alpha
            * torch.autograd.functional.hessian(lambda t: task_loss(t, support_target), theta)
        )
        iterates.append((theta - alpha * g).detach())
    adapted = iterates[-1].clone().requires_grad_(True)
    (query_grad,) = torch.autograd.grad(task_loss(adapted, query_target), [adapted])
    stated = factors[0] @ factors[1] @ query_grad
    reversed_order = factors[1] @ factors[0] @ query_grad

    assert not torch.allclose(
        factors[0] @ factors[1], factors[1] @ factors[0], atol=1e-3
    )  # order matters here
    assert (stated - reversed_order).norm() > 0.1, (stated, reversed_order)
    assert torch.allclose(grads["theta"], stated, atol=1e-12), (grads["theta"], stated)
    assert not torch.allclose(grads["theta"], reversed_order, atol=1e-3)


def test_first_order_graph_does_not_go_through_the_inner_gradient():
    net, batch = smooth_net(), smooth_batch(1)
    params = maml.parameters_of(net)

    def support_loss(p):
        return F.mse_loss(functional_call(net, p, (batch.support_x[0],)), batch.support_y[0])

    for first_order in (True, False):
        adapted = maml.inner_adapt(net, params, support_loss, 0.1, 1, first_order=first_order)
        name = "2.weight"
        v = torch.randn_like(adapted[name])
        # vector-Jacobian product of theta' = theta - alpha g(theta): v (I - alpha H) in general
        (vjp,) = torch.autograd.grad((adapted[name] * v).sum(), [params[name]])
        if first_order:
            assert torch.equal(vjp, v)  # identity: nothing flows back through g
        else:
            assert not torch.allclose(vjp, v)  # the Hessian term is present


@pytest.mark.parametrize("first_order", [False, True])
def test_vmap_and_loop_give_the_same_meta_gradient(first_order):
    net, batch = smooth_net(), smooth_batch(4)
    params = maml.parameters_of(net)
    loss_loop, g_loop = maml.meta_gradient(
        net, params, batch, F.mse_loss, 0.05, 3, first_order, mode="loop"
    )
    loss_vmap, g_vmap = maml.meta_gradient(
        net, params, batch, F.mse_loss, 0.05, 3, first_order, mode="vmap"
    )
    assert abs(float(loss_loop - loss_vmap)) < 1e-12
    for name in g_loop:
        assert torch.allclose(g_loop[name], g_vmap[name], atol=1e-10, rtol=0), name


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("mode", ["loop", "vmap"])
def test_meta_step_leaves_the_meta_gradient_of_the_whole_batch(first_order, mode):
    """The loop's meta-step backpropagates one task at a time (to hold one task's graph); the
    gradient it leaves is still that of the batch's mean meta-loss, as is vmap's."""
    net, batch = smooth_net(), smooth_batch(4)
    loss, expected = maml.meta_gradient(
        net, maml.parameters_of(net), batch, F.mse_loss, 0.05, 3, first_order, mode="vmap"
    )
    learner = maml.MAML(net, 0.05, 1e-3, 3, first_order, F.mse_loss, mode)
    assert abs(learner.meta_step(batch) - float(loss)) < 1e-12
    for name, p in net.named_parameters():  # the step leaves .grad set (zeroed only at the next)
        assert torch.allclose(p.grad, expected[name], atol=1e-10, rtol=0), name


def smooth_conv_net() -> nn.Module:
    """Conv, batch norm (batch statistics), softplus, average pool: smooth, so finite differences work."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.Softplus(),
        nn.AvgPool2d(2),
        nn.Conv2d(3, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.Softplus(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(12, 4),
    ).double()
    return maml.drop_running_stats(net)


def test_meta_gradient_through_batch_norm_matches_finite_differences_in_loop_and_vmap():
    net = smooth_conv_net()
    g = torch.Generator().manual_seed(0)
    batch = maml.TaskBatch(
        torch.rand(2, 4, 1, 8, 8, generator=g, dtype=torch.float64),
        torch.arange(4).repeat(2, 1),
        torch.rand(2, 8, 1, 8, 8, generator=g, dtype=torch.float64),
        torch.arange(4).repeat(2, 2),
    )
    params = maml.parameters_of(net)
    _, loop = maml.meta_gradient(net, params, batch, F.cross_entropy, 0.4, 2, mode="loop")
    _, vec = maml.meta_gradient(net, params, batch, F.cross_entropy, 0.4, 2, mode="vmap")
    for name in loop:
        assert torch.allclose(loop[name], vec[name], atol=1e-10, rtol=0), name
    # finite differences on the batch-norm scales and the first conv's bias
    for name in ("1.weight", "0.bias", "5.bias"):
        for idx in range(params[name].numel()):

            def meta_loss(delta, name=name, idx=idx):
                p = {k: v.detach().clone() for k, v in params.items()}
                p[name].view(-1)[idx] += delta
                with torch.no_grad():
                    return float(
                        maml.adapted_query_losses(
                            net, p, batch, F.cross_entropy, 0.4, 2, mode="loop"
                        ).mean()
                    )

            numeric = (meta_loss(1e-6) - meta_loss(-1e-6)) / 2e-6
            assert abs(numeric - float(loop[name].view(-1)[idx])) < 1e-6 * max(1.0, abs(numeric)), (
                name,
                idx,
            )


def test_batch_stat_norm_equals_training_mode_batch_norm():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    ours = maml.drop_running_stats(nn.Sequential(bn))[0]
    assert isinstance(ours, maml.BatchStatNorm)
    x = torch.randn(6, 4, 5, 5)
    assert torch.allclose(
        ours(x),
        nn.BatchNorm2d(4).train().requires_grad_(False).forward(x) * bn.weight.view(1, -1, 1, 1)
        + bn.bias.view(1, -1, 1, 1),
        atol=1e-5,
    )


@pytest.mark.parametrize("first_order", [False, True])
def test_the_compiled_meta_step_equals_the_plain_loop(first_order):
    """mode="compiled" (torch.compile of grad_and_value over the vmap path) changes the speed,
    never the numbers: its meta-loss and meta-gradient are the loop's, through batch norm and two
    inner steps, and a MAML meta-step with it leaves the same gradient and takes the same step."""
    g = torch.Generator().manual_seed(1)
    batch = maml.TaskBatch(
        torch.rand(3, 4, 1, 8, 8, generator=g, dtype=torch.float64),
        torch.arange(4).repeat(3, 1),
        torch.rand(3, 8, 1, 8, 8, generator=g, dtype=torch.float64),
        torch.arange(4).repeat_interleave(2).repeat(3, 1),
    )
    nets = {"loop": smooth_conv_net(), "compiled": smooth_conv_net()}
    results = {
        mode: maml.meta_gradient(
            net, maml.parameters_of(net), batch, F.cross_entropy, 0.3, 2, first_order, mode
        )
        for mode, net in nets.items()
    }
    (loss_loop, loop), (loss_fast, fast) = results["loop"], results["compiled"]
    assert abs(float(loss_loop - loss_fast)) < 1e-12 and set(fast) == set(loop)
    for name in loop:
        assert torch.allclose(fast[name], loop[name], atol=1e-10, rtol=1e-9), name
    # the learner's meta-step (the compiled function is reused: same network, same setting)
    losses = {
        mode: maml.MAML(net, 0.3, 1e-2, 2, first_order, F.cross_entropy, mode).meta_step(batch)
        for mode, net in nets.items()
    }
    assert abs(losses["loop"] - losses["compiled"]) < 1e-12
    for (name, a), b in zip(
        nets["loop"].named_parameters(), nets["compiled"].parameters(), strict=True
    ):
        assert torch.allclose(a.grad, b.grad, atol=1e-10, rtol=1e-9), name
        # Adam moves a weight by about its step size whatever the gradient's size, so a gradient
        # that is zero up to rounding (a convolution's bias before batch norm) moves it at random
        if a.grad.abs().max() > 1e-8:
            assert torch.allclose(a, b, atol=1e-10, rtol=1e-9), name


@pytest.mark.parametrize("net_name", maml.NETS)
def test_conv4_meta_gradients_agree_between_loop_and_vmap_in_float64(net_name):
    torch.manual_seed(0)
    net = maml.omniglot_net(5, net_name).double()
    g = torch.Generator().manual_seed(0)
    batch = maml.TaskBatch(
        torch.rand(2, 5, 1, 28, 28, generator=g, dtype=torch.float64),
        torch.arange(5).repeat(2, 1),
        torch.rand(2, 5, 1, 28, 28, generator=g, dtype=torch.float64),
        torch.arange(5).repeat(2, 1),
    )
    params = maml.parameters_of(net)
    for first_order in (False, True):
        _, loop = maml.meta_gradient(
            net, params, batch, F.cross_entropy, 0.4, 1, first_order, mode="loop"
        )
        _, vec = maml.meta_gradient(
            net, params, batch, F.cross_entropy, 0.4, 1, first_order, mode="vmap"
        )
        for name in loop:
            assert torch.allclose(loop[name], vec[name], atol=1e-10, rtol=0), (first_order, name)


def test_shift_only_batch_norm_is_torchs_batch_norm_without_a_weight():
    torch.manual_seed(0)
    norm = maml.BatchStatNorm(3, eps=1e-3, scale=False)
    with torch.no_grad():
        norm.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    expected = F.batch_norm(x, None, None, None, norm.bias.double(), training=True, eps=1e-3)
    assert torch.allclose(norm.double()(x), expected, atol=1e-12)
    assert [name for name, _ in norm.named_parameters()] == ["bias"]


def test_the_strided_network_is_the_papers_shape():
    """Stride-2 blocks shrink 28 -> 14 -> 7 -> 4 -> 2; the mean over that map is the embedding."""
    torch.manual_seed(0)
    net = maml.maml_strided_conv4(5)
    body = net[0]
    x = torch.rand(6, 1, 28, 28)
    sizes = []
    h = x
    for layer in body.blocks:
        h = layer(h)
        if isinstance(layer, nn.Conv2d):
            sizes.append(h.shape[-1])
    assert sizes == [14, 7, 4, 2]
    assert torch.allclose(body(x), h.mean(dim=(2, 3)))
    assert net(x).shape == (6, 5) and body.image_shape == (1, 28, 28)
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    norms = [m for m in net.modules() if isinstance(m, maml.BatchStatNorm)]
    assert len(norms) == 4 and all(m.weight is None and m.eps == 1e-3 for m in norms)
    # the output layer starts from a standard normal, as in the paper's code
    assert 0.8 < net[1].weight.std().item() < 1.2 and net[1].bias.abs().max() == 0
    with pytest.raises(ValueError, match="net"):
        maml.omniglot_net(5, "resnet")


def test_second_order_memory_grows_with_inner_steps_first_order_does_not():
    net, batch = smooth_net(), smooth_batch(2)
    params = maml.parameters_of(net)

    def held(steps, first_order):
        return maml.saved_tensor_bytes(
            lambda: maml.adapted_query_losses(
                net, params, batch, F.mse_loss, 0.05, steps, first_order, "loop"
            ).mean()
        )

    second = [held(s, False) for s in (1, 2, 3)]
    first = [held(s, True) for s in (1, 2, 3)]
    assert second[0] < second[1] < second[2]
    assert second[2] - second[1] == pytest.approx(
        second[1] - second[0], rel=0.05
    )  # linear in the steps
    assert first[0] == first[1] == first[2]


def test_measuring_the_saved_tensors_frees_the_graph_afterwards():
    """saved_tensor_bytes once leaked every graph it measured (200 MB a call in notebook 07)."""
    import gc
    import weakref

    weight = torch.randn(3, 3, requires_grad=True)
    saved_outputs = []

    def loss():
        hidden = torch.tanh(torch.randn(4, 3) @ weight)  # tanh saves its own output for backward
        saved_outputs.append(weakref.ref(hidden))
        return hidden.square().sum()

    assert maml.saved_tensor_bytes(loss) > 0
    gc.collect()
    assert saved_outputs[0]() is None, "a tensor of the measured graph is still alive"


def test_batch_norm_uses_the_current_batch_statistics():
    net = maml.maml_conv4(5)
    assert list(net.buffers()) == []
    x = torch.rand(10, 1, 28, 28)
    train_out = net.train()(x)
    eval_out = net.eval()(x)
    assert torch.allclose(train_out, eval_out)
    # the output for an image depends on the rest of its batch (transductive, as in MAML's code)
    assert not torch.allclose(net(x[:5])[0], net(x)[0])


def test_auto_mode_picks_the_faster_path_per_device():
    assert maml.resolve_mode("auto", "cpu", maml.maml_conv4(5)) == "loop"
    assert maml.resolve_mode("auto", "cpu", maml.sinusoid_net()) == "vmap"
    assert maml.resolve_mode("auto", "cuda", maml.maml_conv4(5)) == "vmap"
    assert maml.resolve_mode("vmap", "cpu") == "vmap"
    with pytest.raises(ValueError, match="mode"):
        maml.resolve_mode("fast", "cpu")


def test_bad_settings_raise_one_line_value_errors():
    net = smooth_net()
    with pytest.raises(ValueError, match="inner_lr"):
        maml.MAML(net, inner_lr=-0.1)
    with pytest.raises(ValueError, match="outer_lr"):
        maml.MAML(net, inner_lr=0.1, outer_lr=0.0)
    with pytest.raises(ValueError, match="steps"):
        maml.inner_adapt(net, maml.parameters_of(net), lambda p: p["0.weight"].sum(), 0.1, -1)
    with pytest.raises(ValueError, match="k_support"):
        maml.SinusoidTasks().sample(2, 0, 5)


def test_sinusoid_sampler_ranges():
    tasks = maml.SinusoidTasks()
    g = torch.Generator().manual_seed(0)
    batch, amplitude, phase = tasks.sample(2000, 10, 5, g)
    assert batch.support_x.shape == (2000, 10, 1) and batch.query_y.shape == (2000, 5, 1)
    assert (
        amplitude.min() >= 0.1
        and amplitude.max() <= 5.0
        and amplitude.max() > 4.9
        and amplitude.min() < 0.2
    )
    assert phase.min() >= 0 and phase.max() <= math.pi and phase.max() > 3.1 and phase.min() < 0.05
    x = torch.cat([batch.support_x, batch.query_x], 1)
    y = torch.cat([batch.support_y, batch.query_y], 1)
    assert x.min() >= -5 and x.max() <= 5
    assert torch.allclose(y, amplitude.view(-1, 1, 1) * torch.sin(x - phase.view(-1, 1, 1)))
    assert (y.abs() <= amplitude.view(-1, 1, 1) + 1e-6).all()


def test_short_meta_training_beats_the_jointly_pretrained_network():
    torch.manual_seed(0)
    tasks = maml.SinusoidTasks()
    learner = maml.MAML(
        maml.sinusoid_net(), inner_lr=0.01, outer_lr=1e-3, inner_steps=1, loss=F.mse_loss
    )
    g = torch.Generator().manual_seed(1)
    maml.train_maml(learner, lambda: tasks.sample(10, 10, 10, g)[0], 600, progress=False)
    torch.manual_seed(0)
    pretrained = maml.sinusoid_net()
    maml.pretrain_jointly(pretrained, tasks, 600, n_tasks=10, k=10, seed=2, progress=False)

    test, _, _ = tasks.sample(200, 10, 50, torch.Generator().manual_seed(3))
    mse_maml = maml.adaptation_curve(learner.model, learner.params, test, 0.01, 5)
    mse_pre = maml.adaptation_curve(pretrained, maml.parameters_of(pretrained), test, 0.01, 5)
    assert mse_maml.shape == (6,)
    assert mse_maml[1] < mse_pre[1] and mse_maml[5] < mse_pre[5], (mse_maml, mse_pre)
    assert mse_maml[5] < mse_maml[0]  # adaptation helps the meta-learned start


def test_adapt_predictions_agrees_with_adaptation_curve():
    net = smooth_net()
    batch = smooth_batch(1)
    params = maml.parameters_of(net)
    outs = maml.adapt_predictions(
        net, params, batch.support_x[0], batch.support_y[0], batch.query_x[0], 0.05, [0, 1, 4]
    )
    curve = maml.adaptation_curve(net, params, batch, 0.05, 4)
    for steps in (0, 1, 4):
        assert math.isclose(
            float(F.mse_loss(outs[steps], batch.query_y[0])), float(curve[steps]), rel_tol=1e-9
        )


def test_classifier_implements_the_few_shot_interface():
    torch.manual_seed(0)
    net = maml.maml_conv4(5)
    method = maml.MAMLClassifier(net, inner_lr=0.05, steps=3)
    assert isinstance(method, FewShotMethod)
    support = torch.rand(5, 1, 28, 28)
    labels = torch.arange(5)
    method.process_support_set(support, labels)
    scores = method.scores(torch.rand(15, 1, 28, 28))
    assert scores.shape == (15, 5)
    # the adapted weights fit the support set better than the (random) starting weights
    before = F.cross_entropy(net(support), labels)
    after = F.cross_entropy(method.scores(support), labels)
    assert after < before
    # adaptation did not touch the meta-learned weights
    assert all(p.grad is None for p in net.parameters())


def test_classifier_scores_queries_in_groups_of_each_class():
    """query_group=q scores the class-by-class queries q of each class per batch (batch norm
    then sees batches made like the training query sets); None scores them in one batch."""
    torch.manual_seed(0)
    net = maml.maml_conv4(3)
    support, labels = torch.rand(3, 1, 28, 28), torch.arange(3)
    queries = torch.rand(3 * 4, 1, 28, 28)  # 4 queries of each class, class by class
    whole = maml.MAMLClassifier(net, 0.4, 1)
    whole.process_support_set(support, labels)
    adapted = whole.adapted
    expected = torch.empty(12, 3)
    for group in ([0, 4, 8], [1, 5, 9], [2, 6, 10], [3, 7, 11]):  # one query of each class
        expected[group] = functional_call(net, adapted, (queries[group],))
    one = maml.MAMLClassifier(net, 0.4, 1, query_group=1)
    one.process_support_set(support, labels)
    assert torch.allclose(one.scores(queries), expected, atol=1e-6)
    assert torch.allclose(whole.scores(queries), functional_call(net, adapted, (queries,)))
    # batch norm makes the batch matter: one batch of all twelve scores differently
    assert not torch.allclose(whole.scores(queries), expected, atol=1e-3)
    three = maml.MAMLClassifier(net, 0.4, 1, query_group=3)  # groups of 3 and then 1 per class
    three.process_support_set(support, labels)
    first = [0, 1, 2, 4, 5, 6, 8, 9, 10]
    assert torch.allclose(
        three.scores(queries)[first], functional_call(net, adapted, (queries[first],)), atol=1e-6
    )
    four = maml.MAMLClassifier(net, 0.4, 1, query_group=4)
    four.process_support_set(support, labels)
    assert torch.allclose(four.scores(queries), whole.scores(queries), atol=1e-6)
    with pytest.raises(ValueError, match="same number of queries of each of the 3 classes"):
        one.scores(queries[:7])
    with pytest.raises(ValueError, match="query_group"):
        maml.MAMLClassifier(net, 0.4, 1, query_group=0)


def test_classifier_groups_change_nothing_without_batch_norm():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 16), nn.ReLU(), nn.Linear(16, 5))
    net.image_shape = (1, 28, 28)
    support, labels = torch.rand(10, 1, 28, 28), torch.arange(5).repeat_interleave(2)
    queries = torch.rand(5 * 6, 1, 28, 28)
    scores = []
    for group in (None, 1, 2, 4):
        method = maml.MAMLClassifier(net, 0.1, 2, query_group=group)
        method.process_support_set(support, labels)
        scores.append(method.scores(queries))
    assert all(torch.allclose(scores[0], other, atol=1e-6) for other in scores[1:])


@pytest.mark.usefixtures("needs_data")
def test_episode_queries_come_class_by_class():
    """The order MAMLClassifier's query_group relies on."""
    from helpers.episodes import omniglot_dataset, sample_episodes

    for episode in sample_episodes(omniglot_dataset("vinyals-test"), 5, 1, 3, 4, seed=0):
        assert torch.equal(episode.query_labels, torch.arange(5).repeat_interleave(3))


@pytest.mark.usefixtures("needs_data")
def test_omniglot_command_trains_saves_and_reloads(tmp_path, capsys):
    out = tmp_path / "maml_tiny.pt"
    maml.main(
        [
            "omniglot",
            "--meta-steps",
            "3",
            "--meta-batch",
            "2",
            "--val-every",
            "2",
            "--val-episodes",
            "4",
            "--threads",
            "1",
            "--hardware",
            "test",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    # without the bar, each validation still prints one line (a background run's log shows it)
    assert "step 2: validation" in capsys.readouterr().out
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["meta_steps_done"] == 3 and meta["settings"]["n_way"] == 5
    assert meta["command"].startswith("python -m helpers.maml omniglot")
    assert 0 <= meta["val_accuracy"] <= 1
    model, _ = maml.load_omniglot_checkpoint(out)
    assert model(torch.rand(4, 1, 28, 28)).shape == (4, 5)


@pytest.mark.usefixtures("needs_data")
def test_the_command_trains_the_strided_network_and_keeps_it_apart(tmp_path, capsys):
    out = tmp_path / "maml_strided.pt"
    common = ["--meta-steps", "2", "--meta-batch", "2", "--val-every", "2", "--val-episodes", "2"]
    maml.main(
        ["omniglot", *common, "--net", "strided", "--threads", "1"]
        + ["--out", str(out), "--no-progress"]
    )
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["settings"]["net"] == "strided"
    model, _ = maml.load_omniglot_checkpoint(out)
    assert isinstance(model[0], maml.StridedConv4)
    # a warm start must begin from the same network: one line, before any training
    with pytest.raises(SystemExit) as exit_info:
        maml.main(["omniglot", *common, "--init", str(out), "--out", str(tmp_path / "b.pt")])
    assert exit_info.value.code == 2
    assert "is a strided network, but --net is conv4" in capsys.readouterr().err
    maml.main(
        ["omniglot", *common, "--net", "strided", "--init", str(out), "--threads", "1"]
        + ["--out", str(tmp_path / "c.pt"), "--no-progress"]
    )
    assert isinstance(maml.load_omniglot_checkpoint(tmp_path / "c.pt")[0][0], maml.StridedConv4)
    with pytest.raises(SystemExit):
        maml.main(["omniglot", "--net", "resnet", "--out", str(tmp_path / "d.pt")])


@pytest.mark.usefixtures("needs_data")
def test_validation_can_batch_its_queries_as_the_test_does(tmp_path, capsys):
    """--val-query-group 1: the kept weights' validation equals an independent grouped evaluate."""
    from helpers.episodes import omniglot_dataset, sample_episodes
    from helpers.fewshot import evaluate

    out = tmp_path / "maml_grouped.pt"
    common = ["--meta-steps", "3", "--meta-batch", "2", "--val-every", "1", "--val-episodes", "3"]
    maml.main(
        ["omniglot", *common, "--val-query-group", "1", "--seed", "4", "--threads", "1"]
        + ["--out", str(out), "--no-progress"]
    )
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["settings"]["val_query_group"] == 1
    assert meta["validation"].endswith("15 queries per class, 1 of each class per batch")
    model, _ = maml.load_omniglot_checkpoint(out)
    val = sample_episodes(omniglot_dataset("vinyals-val"), 5, 1, 15, 3, seed=5)
    grouped = evaluate(maml.MAMLClassifier(model, 0.4, 3, query_group=1), val, progress=False)
    one_batch = evaluate(maml.MAMLClassifier(model, 0.4, 3), val, progress=False)
    assert abs(meta["val_accuracy"] - grouped.mean) < 1e-4
    assert abs(meta["val_ci95"] - grouped.ci95) < 1e-4
    # the batching changes the episodes' scores (the best step's here, for this seed)
    assert not np.allclose(grouped.accuracies, one_batch.accuracies)
    with pytest.raises(SystemExit):
        maml.main(["omniglot", "--val-query-group", "-1", "--out", str(tmp_path / "x.pt")])
    assert "--val-query-group" in capsys.readouterr().err


@pytest.mark.usefixtures("needs_data")
def test_the_test_command_keeps_the_measured_accuracy_in_the_record(tmp_path, capsys):
    import shutil

    from helpers import checkpoints
    from helpers.episodes import omniglot_dataset, sample_episodes
    from helpers.fewshot import evaluate

    committed = ROOT / "data" / "checkpoints" / "maml_omniglot_5w1s.pt"
    path = tmp_path / committed.name
    shutil.copy(committed, path)
    shutil.copy(committed.with_suffix(".json"), path.with_suffix(".json"))
    test = maml.main(
        ["test", str(path), "--episodes", "3", "--n-query", "2", "--threads", "1", "--no-progress"]
    )
    record = checkpoints.read_record(path)
    assert record["results"]["test"] == test and record["results"]["meta_steps_done"] == 3162
    assert checkpoints.file_sha256(path) == record["weights"]["sha256"]  # weights untouched
    model, meta = maml.load_omniglot_checkpoint(path)
    episodes = sample_episodes(omniglot_dataset("vinyals-test"), 5, 1, 2, 3, seed=100)
    # by default one query of each class per batch, as the checkpoint trained (--n-query 1)
    expected = evaluate(
        maml.MAMLClassifier(model, 0.4, meta["settings"]["eval_steps"], query_group=1),
        episodes,
        progress=False,
    )
    assert abs(test["accuracy"] - expected.mean) < 1e-4 and test["episodes"] == 3
    assert test["query_group"] == 1
    assert (
        "on 3 5-way 1-shot episodes of omniglot/vinyals-test, 1 query of each class per batch"
        in capsys.readouterr().out
    )
    # --query-group 0 scores all of an episode's queries at once, kept under its own key
    one_batch = maml.main(
        ["test", str(path), "--episodes", "3", "--n-query", "2", "--query-group", "0"]
        + ["--threads", "1", "--no-progress"]
    )
    record = checkpoints.read_record(path)
    assert record["results"]["test_one_batch"] == one_batch and record["results"]["test"] == test
    expected = evaluate(
        maml.MAMLClassifier(model, 0.4, meta["settings"]["eval_steps"]), episodes, progress=False
    )
    assert abs(one_batch["accuracy"] - expected.mean) < 1e-4 and one_batch["query_group"] == 0
    assert (
        "all queries of an episode in one batch (results.test_one_batch" in capsys.readouterr().out
    )
    # on the validation classes: a re-validation, kept apart from the test as results.val
    val = maml.main(
        ["test", str(path), "--split", "vinyals-val", "--episodes", "3", "--n-query", "2"]
        + ["--threads", "1", "--no-progress"]
    )
    record = checkpoints.read_record(path)
    assert record["results"]["val"] == val and record["results"]["test"] == test
    val_episodes = sample_episodes(omniglot_dataset("vinyals-val"), 5, 1, 2, 3, seed=100)
    expected = evaluate(
        maml.MAMLClassifier(model, 0.4, meta["settings"]["eval_steps"], query_group=1),
        val_episodes,
        progress=False,
    )
    assert abs(val["accuracy"] - expected.mean) < 1e-4 and val["split"] == "omniglot/vinyals-val"
    assert "episodes of omniglot/vinyals-val" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        maml.main(["test", str(path), "--query-group", "-1"])
    assert "--query-group" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        maml.main(["test", str(tmp_path / "missing.pt")])
    assert exit_info.value.code == 2
    assert "there is no checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        maml.main(["test", str(path), "--episodes", "0"])


def test_sinusoid_command_writes_both_checkpoints(tmp_path):
    out = tmp_path / "maml_sin.pt"
    maml.main(["sinusoid", "--meta-steps", "5", "--threads", "1", "--out", str(out)])
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["meta_steps_done"] == 5 and meta["model"] == "maml"
    assert (
        set(meta["test_mse"]) == {"maml", "pretrained"} and len(meta["test_mse"]["maml"]["5"]) == 11
    )
    baseline, base_meta = maml.load_sinusoid_checkpoint(tmp_path / "maml_sin_pretrained.pt")
    assert base_meta["model"] == "pretrained"
    assert baseline(torch.zeros(3, 1)).shape == (3, 1)


def test_init_starts_from_the_weights_of_another_checkpoint(tmp_path, capsys):
    """A warm start: with a vanishing meta learning rate the run ends where its --init began,
    which a random initialisation with the same seed does not; the record names the source."""
    common = ["--meta-batch", "2", "--val-every", "1", "--val-episodes", "2", "--threads", "1"]
    source = tmp_path / "source.pt"
    maml.main(["omniglot", "--meta-steps", "2", "--seed", "3", *common, "--out", str(source)])
    warm = tmp_path / "warm.pt"
    maml.main(
        ["omniglot", "--meta-steps", "1", "--meta-lr", "1e-12", *common, "--init", str(source)]
        + ["--out", str(warm)]
    )
    cold = tmp_path / "cold.pt"
    maml.main(["omniglot", "--meta-steps", "1", "--meta-lr", "1e-12", *common, "--out", str(cold)])
    weights = {p: maml.load_omniglot_checkpoint(p)[0].state_dict() for p in (source, warm, cold)}
    for name, value in weights[source].items():
        if value.is_floating_point():
            assert torch.allclose(weights[warm][name], value, atol=1e-8), name
    assert any(
        not torch.allclose(weights[cold][n], v)
        for n, v in weights[source].items()
        if v.is_floating_point()
    )
    record = json.loads(warm.with_suffix(".json").read_text())
    source_record = json.loads(source.with_suffix(".json").read_text())
    assert record["init_from"]["run_id"] == source_record["run_id"]
    assert record["init_from"]["meta_steps_done"] == 2 and "--init" in record["command"]
    assert "init_from" not in source_record
    # the budget behind the warm start's weights: its 1 meta-step and the source's 2, 2 tasks each
    assert maml.training_budget(record) == (3, 6) and maml.training_budget(source_record) == (2, 4)
    # a warm start of the warm start keeps the whole chain: 1 + 1 + 2 meta-steps
    chain = tmp_path / "chain.pt"
    maml.main(["omniglot", "--meta-steps", "1", *common, "--init", str(warm), "--out", str(chain)])
    chain_record = json.loads(chain.with_suffix(".json").read_text())
    assert chain_record["init_from"]["init_from"]["run_id"] == source_record["run_id"]
    assert maml.training_budget(chain_record) == (4, 8)
    # the runs of a setting, best validation first (names need the maml_omniglot_ prefix)
    scores = {}
    for path in (source, warm, cold, chain):
        named = tmp_path / f"maml_omniglot_{path.stem}.pt"
        named.write_bytes(path.read_bytes())
        named.with_suffix(".json").write_text(path.with_suffix(".json").read_text())
        scores[named] = json.loads(named.with_suffix(".json").read_text())["val_score"]["value"]
    resume = tmp_path / "maml_omniglot_chain.resume.pt"  # never a candidate
    resume.write_bytes(chain.read_bytes())
    ranked = maml.omniglot_runs(tmp_path, 5, 1)
    assert sorted(ranked) == sorted(scores)
    assert [scores[p] for p in ranked] == sorted(scores.values(), reverse=True)
    assert (
        maml.omniglot_runs(tmp_path, 5, 5) == [] and maml.omniglot_runs(tmp_path, 5, 1, True) == []
    )
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # a 20-way run cannot start from a 5-way network
        maml.main(
            ["omniglot", "--n-way", "20", "--init", str(source), "--out", str(tmp_path / "x.pt")]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "is a 5-way network, but --n-way is 20" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit):
        maml.main(
            ["omniglot", "--init", str(tmp_path / "none.pt"), "--out", str(tmp_path / "y.pt")]
        )
    assert "is not a checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize(("alpha", "sign"), [(0.25, 1.0), (1.0, -1.0)])
def test_first_order_agreement_is_the_sign_of_one_minus_alpha_h_for_one_weight(alpha, sign):
    # y = w x with x = 1 and a squared error: H = 2, so the second-order meta-gradient is the
    # first-order one times (1 - 2 alpha); from w = 0, support target t and query target 5t/3
    # give w' = 2 alpha t and a first-order gradient 2 (w' - 5t/3), nonzero for both alphas
    net = nn.Linear(1, 1, bias=False).double()
    nn.init.zeros_(net.weight)
    ones = torch.ones(1, 2, 1, dtype=torch.float64)

    def batch(t):
        return maml.TaskBatch(ones, t * ones, ones, 5 * t / 3 * ones)

    agreement = maml.first_order_agreement(net, [batch(3.0), batch(-3.0)], F.mse_loss, alpha)
    assert agreement.first_vs_second == pytest.approx((sign, sign), abs=1e-12)
    # the batches' gradients are mirror images: each order disagrees with itself across them
    assert agreement.second_across == pytest.approx(-1.0, abs=1e-12)
    assert agreement.first_across == pytest.approx(-1.0, abs=1e-12)
    same = maml.first_order_agreement(net, [batch(3.0), batch(3.0)], F.mse_loss, alpha)
    assert (same.second_across, same.first_across) == pytest.approx((1.0, 1.0), abs=1e-12)
    with pytest.raises(ValueError, match="two meta-batches"):
        maml.first_order_agreement(net, [batch(3.0)], F.mse_loss, alpha)


@pytest.mark.parametrize(
    ("k_shot", "query_group", "split", "key"),
    [
        (1, 1, "vinyals-test", "test"),
        (5, 1, "vinyals-test", "test_5shot"),
        (1, 0, "vinyals-test", "test_one_batch"),
        (5, 3, "vinyals-test", "test_5shot_group3"),
        (1, 1, "vinyals-val", "val"),
        (5, 0, "vinyals-val", "val_5shot_one_batch"),
        (1, 1, "evaluation", "evaluation"),
    ],
)
def test_each_test_protocol_has_its_own_key_in_the_record(k_shot, query_group, split, key):
    assert maml.result_key(k_shot, query_group, {"k_shot": 1, "n_query": 1}, split) == key


def _fake_run(directory, name, val, group=0, revalidation=None, n_way=5, k_shot=1, seed=0):
    """A record beside an empty weights file: all that omniglot_runs reads."""
    path = directory / f"maml_omniglot_{name}.pt"
    path.write_bytes(b"")
    settings = {
        "n_way": n_way, "k_shot": k_shot, "first_order": True, "val_query_group": group,
        "seed": seed, "val_episodes": 100,
    }  # fmt: skip
    record = {"settings": settings, "val_score": {"value": val}, "results": {}}
    if revalidation is not None:
        accuracy, val_seed = revalidation
        record["results"]["val"] = {
            "accuracy": accuracy, "split": "omniglot/vinyals-val", "episodes": 600,
            "n_query": 15, "seed": val_seed, "k_shot": k_shot,
        }  # fmt: skip
    path.with_suffix(".json").write_text(json.dumps(record))
    return path


def test_the_committed_runs_of_each_setting_rank_alike():
    # the notebooks choose among them: no setting may mix validations that are not alike
    directory = ROOT / "data" / "checkpoints"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for n_way in (5, 20):
            for k_shot in (1, 5):
                for first_order in (False, True):
                    assert maml.omniglot_runs(directory, n_way, k_shot, first_order)


def test_runs_of_a_setting_rank_by_validations_measured_alike(tmp_path):
    # one batching: the training validations rank them, and no warning
    a = _fake_run(tmp_path, "a", 0.95, group=1)
    b = _fake_run(tmp_path, "b", 0.97, group=1)
    _fake_run(tmp_path, "other", 0.99, group=1, n_way=20)  # another setting: never a candidate
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert maml.omniglot_runs(tmp_path, 5, 1, True) == [b, a]
    # another batching joins: not alike, so a one-line warning naming the command that fixes it
    c = _fake_run(tmp_path, "c", 0.96, group=0)
    with pytest.warns(UserWarning, match="--split vinyals-val") as caught:
        assert maml.omniglot_runs(tmp_path, 5, 1, True) == [b, c, a]
    assert len(str(caught[0].message).splitlines()) == 1
    # every run re-validated on the same episodes: those scores rank them, whatever the batching
    _fake_run(tmp_path, "a", 0.95, group=1, revalidation=(0.98, 100))
    _fake_run(tmp_path, "b", 0.97, group=1, revalidation=(0.96, 100))
    _fake_run(tmp_path, "c", 0.96, group=0, revalidation=(0.97, 100))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert maml.omniglot_runs(tmp_path, 5, 1, True) == [a, c, b]
    # one of them re-validated on other episodes: not alike, back to the warning and rule 2
    _fake_run(tmp_path, "c", 0.96, group=0, revalidation=(0.99, 7))
    with pytest.warns(UserWarning):
        assert maml.omniglot_runs(tmp_path, 5, 1, True) == [b, c, a]


def test_training_validations_drawn_from_other_seeds_are_not_alike(tmp_path):
    # the same batching, but each run's seed drew its own validation episodes: a warning
    a = _fake_run(tmp_path, "a", 0.95, group=1, seed=0)
    b = _fake_run(tmp_path, "b", 0.97, group=1, seed=3)
    with pytest.warns(UserWarning, match="different episodes") as caught:
        assert maml.omniglot_runs(tmp_path, 5, 1, True) == [b, a]
    assert len(caught) == 1
    # re-validated on the same episodes, the re-validations rank them, silently
    _fake_run(tmp_path, "a", 0.95, group=1, seed=0, revalidation=(0.97, 100))
    _fake_run(tmp_path, "b", 0.97, group=1, seed=3, revalidation=(0.96, 100))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert maml.omniglot_runs(tmp_path, 5, 1, True) == [a, b]

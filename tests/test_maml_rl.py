"""Tests for helpers.maml_rl: the navigation tasks, the policy gradient, and MAML's inner step."""

from __future__ import annotations

import math

import pytest
import torch

from helpers.maml import parameters_of
from helpers.maml_rl import (
    GaussianMLPPolicy,
    PointNavigation,
    RLSettings,
    Trajectories,
    adaptation_returns,
    advantages,
    baseline_features,
    discounted_returns,
    fit_linear_baseline,
    goal_reward,
    log_probs,
    meta_loss,
    meta_train,
    policy_gradient_loss,
    policy_gradient_step,
    rollout,
    sample_goals,
)


@pytest.fixture(autouse=True)
def one_thread():
    """These networks are tiny: one thread is much faster than two contending on a busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- environment


def test_goals_lie_in_the_unit_square_and_are_seeded():
    goals = sample_goals(1000, torch.Generator().manual_seed(0))
    assert goals.shape == (1000, 2)
    assert goals.min() >= -0.5 and goals.max() <= 0.5
    assert goals.min() < -0.45 and goals.max() > 0.45  # the whole square is used
    assert torch.equal(goals, sample_goals(1000, torch.Generator().manual_seed(0)))


def test_actions_are_clipped_to_a_tenth():
    env = PointNavigation(torch.tensor([[0.4, 0.4], [0.4, 0.4]]))
    env.reset()
    obs, _, _ = env.step(torch.tensor([[5.0, -5.0], [0.03, -0.2]]))
    assert torch.allclose(obs, torch.tensor([[0.1, -0.1], [0.03, -0.1]]))


@pytest.mark.parametrize("kind", ["squared", "distance"])
def test_reward_is_minus_the_squared_or_plain_distance(kind):
    goals = torch.tensor([[0.3, 0.4], [-0.2, 0.0]])
    env = PointNavigation(goals, reward=kind)
    env.reset()
    _, rewards, _ = env.step(torch.zeros(2, 2))  # stay at the origin: distances 0.5 and 0.2
    expected = torch.tensor([0.25, 0.04]) if kind == "squared" else torch.tensor([0.5, 0.2])
    assert torch.allclose(rewards, -expected)
    assert torch.allclose(goal_reward(torch.zeros(2, 2), goals, kind), -expected)


def test_episode_ends_within_a_hundredth_of_the_goal_and_then_stays_put():
    env = PointNavigation(torch.tensor([[0.05, 0.0], [0.3, 0.0]]))
    env.reset()
    obs, rewards, finished = env.step(torch.tensor([[0.045, 0.0], [0.045, 0.0]]))
    assert finished.tolist() == [True, False]  # 0.005 from the first goal, 0.255 from the second
    assert rewards[0] == pytest.approx(-(0.005**2))
    obs2, rewards2, _ = env.step(torch.tensor([[0.1, 0.1], [0.1, 0.0]]))
    assert torch.equal(obs2[0], obs[0])  # a finished robot does not move ...
    assert rewards2[0] == 0  # ... and earns nothing
    assert obs2[1, 0] == pytest.approx(0.145)


def test_not_reaching_when_further_than_the_radius():
    env = PointNavigation(torch.tensor([[0.05, 0.0]]))
    env.reset()
    _, _, finished = env.step(torch.tensor([[0.0395, 0.0]]))  # 0.0105 away
    assert not finished.item()


def test_horizon_ends_every_episode():
    env = PointNavigation(torch.tensor([[0.4, 0.4]]), horizon=3)
    env.reset()
    for t in range(3):
        _, _, finished = env.step(torch.zeros(1, 2))
        assert finished.item() == (t == 2)
    with pytest.raises(RuntimeError, match="horizon"):
        env.step(torch.zeros(1, 2))


def test_vectorised_environment_equals_each_environment_alone():
    g = torch.Generator().manual_seed(1)
    goals = sample_goals(6, g)
    goals[0] = torch.tensor([0.02, 0.01])  # one that finishes early
    actions = 0.15 * torch.randn(20, 6, 2, generator=g)
    together = PointNavigation(goals, horizon=20)
    together.reset()
    out_together = [together.step(a) for a in actions]
    for i in range(6):
        alone = PointNavigation(goals[i : i + 1], horizon=20)
        alone.reset()
        for t, a in enumerate(actions[:, i : i + 1]):
            obs, reward, finished = alone.step(a)
            assert torch.equal(obs[0], out_together[t][0][i])
            assert torch.equal(reward[0], out_together[t][1][i])
            assert torch.equal(finished[0], out_together[t][2][i])


def test_bad_environment_settings_name_the_parameter():
    with pytest.raises(ValueError, match="reward"):
        PointNavigation(torch.zeros(1, 2), reward="cubed")
    with pytest.raises(ValueError, match="horizon"):
        PointNavigation(torch.zeros(1, 2), horizon=0)
    with pytest.raises(ValueError, match="n_trajectories"):
        RLSettings(n_trajectories=1)


# ----------------------------------------------------------------------------- policy and rollouts


def test_log_probs_match_torch_distributions():
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(init_std=0.3)
    obs, actions = torch.randn(7, 2), torch.randn(7, 2)
    mean, std = policy(obs)
    expected = torch.distributions.Normal(mean, std).log_prob(actions).sum(-1)
    assert torch.allclose(
        log_probs(policy, parameters_of(policy), obs, actions), expected, atol=1e-6
    )


def test_rollout_records_what_the_environment_did():
    torch.manual_seed(0)
    policy = GaussianMLPPolicy()
    goals = torch.tensor([[0.05, 0.05], [0.4, -0.3]])
    traj = rollout(
        policy,
        parameters_of(policy),
        goals,
        3,
        horizon=15,
        generator=torch.Generator().manual_seed(0),
    )
    assert traj.positions.shape == (2, 3, 16, 2) and traj.rewards.shape == (2, 3, 15)
    steps = traj.positions[:, :, 1:] - traj.positions[:, :, :-1]
    clipped = traj.actions.clamp(-0.1, 0.1) * traj.mask.unsqueeze(-1)
    assert torch.allclose(steps, clipped, atol=1e-6)  # positions follow the clipped actions
    expected = goal_reward(traj.positions[:, :, 1:], goals[:, None, None], "squared") * traj.mask
    assert torch.allclose(traj.rewards, expected)
    assert torch.equal(traj.returns, traj.rewards.sum(-1))


def test_rollout_with_one_policy_per_goal_equals_separate_rollouts():
    torch.manual_seed(0)
    policies = [GaussianMLPPolicy(init_std=0.2) for _ in range(3)]
    goals = sample_goals(3, torch.Generator().manual_seed(2))
    together = rollout(
        policies[0], [parameters_of(p) for p in policies], goals, 4, horizon=30, deterministic=True
    )
    for i, policy in enumerate(policies):
        alone = rollout(
            policy, parameters_of(policy), goals[i : i + 1], 4, horizon=30, deterministic=True
        )
        assert torch.allclose(together.positions[i], alone.positions[0], atol=1e-6)


# ----------------------------------------------------------------------------- the estimator


def test_discounted_returns_by_hand():
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    assert torch.allclose(
        discounted_returns(rewards, 0.5), torch.tensor([[1 + 1 + 0.75, 2 + 1.5, 3.0]])
    )
    assert torch.allclose(discounted_returns(rewards, 1.0), torch.tensor([[6.0, 5.0, 3.0]]))


def test_linear_baseline_recovers_returns_that_are_linear_in_its_features():
    g = torch.Generator().manual_seed(0)
    obs = torch.rand(2, 5, 10, 2, generator=g)
    coef = torch.randn(2, 8, generator=g)
    returns = torch.einsum("tnhf,tf->tnh", baseline_features(obs), coef)
    mask = torch.ones(2, 5, 10)
    assert torch.allclose(fit_linear_baseline(obs, returns, mask, reg=1e-9), returns, atol=1e-3)


def test_normalised_advantages_have_mean_zero_and_unit_std_per_task():
    torch.manual_seed(0)
    policy = GaussianMLPPolicy()
    traj = rollout(policy, parameters_of(policy), sample_goals(3), 5, horizon=20)
    adv = advantages(traj)
    for i in range(3):
        valid = adv[i][traj.mask[i].bool()]
        assert valid.mean().abs() < 1e-4 and valid.std(unbiased=False) == pytest.approx(1, abs=1e-3)


def test_policy_gradient_points_to_the_best_action_of_a_one_step_bandit():
    # Horizon 1: one action from the origin; reward -|a - goal|^2 is best at a = goal.
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(init_std=0.03)
    params = parameters_of(policy)
    goal = torch.tensor([[0.06, -0.04]])
    mean = policy(torch.zeros(1, 2))[0][0].detach()
    traj = rollout(
        policy, params, goal, 4000, horizon=1, generator=torch.Generator().manual_seed(0)
    )
    loss = policy_gradient_loss(policy, params, traj, advantages(traj))
    (grad_bias,) = torch.autograd.grad(loss, [params["mean.4.bias"]])  # the bias shifts the mean
    ascent = -grad_bias
    cosine = torch.nn.functional.cosine_similarity(ascent, goal[0] - mean, dim=0)
    assert cosine > 0.95


def test_inner_step_raises_the_return_of_its_own_task_on_average():
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(init_std=0.5)
    goals = sample_goals(8, torch.Generator().manual_seed(3))
    result = adaptation_returns(
        policy, goals, inner_lr=0.1, max_steps=1, settings=RLSettings(horizon=30), seed=0
    )
    before, after = result.mean_returns
    assert after > before + 0.1 * abs(before)
    assert (result.returns[1] > result.returns[0]).float().mean() >= 0.75


def test_inner_step_keeps_the_graph_unless_first_order():
    torch.manual_seed(0)
    policy = GaussianMLPPolicy()
    params = parameters_of(policy)
    traj = rollout(policy, params, sample_goals(1), 4, horizon=10)
    second = policy_gradient_step(policy, params, traj, 0.1)
    first = policy_gradient_step(policy, params, traj, 0.1, first_order=True)
    for k in params:
        assert torch.allclose(second[k], first[k])  # same step ...
    # First order: d theta' / d theta = I exactly; second order adds -alpha * Hessian.
    (g1,) = torch.autograd.grad(first["log_std"].sum(), params["log_std"])
    (g2,) = torch.autograd.grad(second["log_std"].sum(), params["log_std"])
    assert torch.equal(g1, torch.ones(2))
    assert not torch.allclose(g2, torch.ones(2))


def test_meta_loss_is_differentiable_and_zero_steps_is_plain_policy_gradient():
    torch.manual_seed(0)
    policy = GaussianMLPPolicy()
    params = parameters_of(policy)
    settings = RLSettings(n_trajectories=3, horizon=8)
    goals = sample_goals(2)
    loss, sampled = meta_loss(policy, params, goals, 0.1, 1, settings)
    assert len(sampled) == 2 and isinstance(sampled[0], Trajectories)
    grads = torch.autograd.grad(loss, list(params.values()))
    assert all(torch.isfinite(g).all() for g in grads)
    loss0, sampled0 = meta_loss(policy, params, goals, 0.1, 0, settings)
    assert len(sampled0) == 1


def test_pretraining_learns_to_stay_near_the_middle():
    # With no inner step the best a goal-blind policy can do is head for the average goal,
    # the origin; a short run must at least beat its own start.
    torch.manual_seed(0)
    policy = GaussianMLPPolicy()
    history = meta_train(
        policy,
        25,
        meta_batch=5,
        inner_steps=0,
        outer_lr=0.01,
        settings=RLSettings(n_trajectories=10, horizon=20),
        progress=False,
    )
    assert sum(history.post_return[-5:]) / 5 > sum(history.post_return[:5]) / 5


def test_meta_train_rejects_bad_step_sizes():
    policy = GaussianMLPPolicy()
    with pytest.raises(ValueError, match="inner_lr"):
        meta_train(policy, 1, inner_lr=-0.1, progress=False)
    with pytest.raises(ValueError, match="outer_lr"):
        meta_train(policy, 1, outer_lr=math.nan, progress=False)


def test_checkpoint_round_trip(tmp_path):
    from helpers.maml_rl import load_policy, save_policy

    torch.manual_seed(0)
    policy = GaussianMLPPolicy(init_std=0.4)
    save_policy(policy, tmp_path / "p.pt", {"command": "test"})
    loaded, record = load_policy(tmp_path / "p.pt")
    assert (
        record["command"] == "test" and record["weights"]["file"] == "p.pt"
    )  # the record names its weights
    obs = torch.randn(5, 2)
    for a, b in zip(policy(obs), loaded(obs)):
        assert torch.equal(a, b)


def test_maml_outer_step_raises_the_return_after_adaptation():
    # A short seeded MAML run: the post-adaptation return rises, and ends above the return
    # before adaptation (the inner step has become useful).
    torch.manual_seed(0)
    policy = GaussianMLPPolicy()
    history = meta_train(
        policy,
        15,
        meta_batch=5,
        inner_lr=0.1,
        outer_lr=0.01,
        inner_steps=1,
        settings=RLSettings(n_trajectories=10, horizon=30),
        seed=0,
        progress=False,
    )
    first, last = sum(history.post_return[:3]) / 3, sum(history.post_return[-3:]) / 3
    assert last > first + 0.3 * abs(first)
    assert last > sum(history.pre_return[-3:]) / 3


def test_panel_reports_bad_settings_even_inside_a_kernel(monkeypatch):
    # Inside Jupyter, ipywidgets' Output.__exit__ swallows exceptions (it prints a traceback);
    # notebook 08's panel relies on Panel catching them first and answering in one line.
    import ipywidgets.widgets.widget_output as widget_output

    from helpers import widgets

    class FakeShell:
        def showtraceback(self, *args, **kwargs):
            pass

    monkeypatch.setattr(widget_output, "get_ipython", lambda: FakeShell())

    def on_run(values):
        widgets.check_positive("alpha", values["alpha"])

    panel = widgets.Panel("t", {"alpha": widgets.float_box("alpha", 0.1)}, on_run)
    assert panel.run() is True and panel.message.value == ""
    panel.controls["alpha"].value = -0.1
    assert panel.run() is False and "alpha=-0.1" in panel.message.value


@pytest.mark.parametrize("stop_after", [5, 10])  # inside a chunk of 10 iterations, and at its end
def test_the_command_stopped_and_resumed_is_the_uninterrupted_run(
    tmp_path, capsys, monkeypatch, stop_after
):
    from helpers import checkpoints, maml_rl, runs

    real_step = maml_rl.meta_train_step
    calls = {"n": 0, "stop_after": None}

    def step(*args, **kwargs):
        loss = real_step(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == calls["stop_after"]:
            runs.request_stop(
                "SIGINT"
            )  # what Ctrl-C does: the loop stops before the next iteration
        return loss

    monkeypatch.setattr(maml_rl, "meta_train_step", step)

    def run(name, *extra):
        argv = [
            "--out",
            str(tmp_path / f"{name}.pt"),
            "--iterations",
            "13",
            "--meta-batch",
            "2",
            "--trajectories",
            "2",
            "--eval-goals",
            "2",
            "--select-goals",
            "2",
            "--threads",
            "1",
            *extra,
        ]
        try:
            maml_rl.main(argv)
            return 0
        except SystemExit as stop:
            return stop.code

    assert run("whole") == 0
    calls.update(n=0, stop_after=stop_after)
    assert run("split") == 130
    err = capsys.readouterr().err
    assert f"stopped at iteration {stop_after} of 13" in err and "--resume" in err
    calls["stop_after"] = None
    assert run("split", "--resume") == 0
    whole, split = (checkpoints.read_record(tmp_path / f"{n}.pt") for n in ("whole", "split"))
    for key in (
        "history",
        "selection_curve",
        "kept_iteration",
        "validation_return_after_steps",
        "val_score",
    ):
        assert whole[key] == split[key], key
    a, b = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("whole", "split"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [row[0] for row in whole["selection_curve"]] == [
        10,
        13,
    ]  # scored every 10 iterations and at the end

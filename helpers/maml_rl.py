"""MAML for reinforcement learning: 2D point navigation (Finn, Abbeel & Levine, 2017, section 5.3).

In reinforcement learning a *task* is an environment and its *data* are trajectories that the
policy collects itself. Here every task is the same point robot, started at the origin, asked
to reach a different goal in the unit square ``[-0.5, 0.5]^2``. The robot sees only its own
position, never the goal, so the only way to find the goal is to try, look at the rewards, and
adapt: exactly what MAML's inner loop does.

* :class:`PointNavigation`: many environments stepped at once in torch (one goal each);
  actions clipped to ``[-0.1, 0.1]``, reward minus the (squared) distance to the goal, an
  episode ends within 0.01 of the goal or after 100 steps.
* :class:`GaussianMLPPolicy`: a 2 -> 100 -> 100 -> 2 ReLU network for the mean action and a
  learned standard deviation per action dimension.
* :func:`rollout` collects trajectories; :func:`advantages` turns their rewards into
  advantages with a linear baseline; :func:`policy_gradient_loss` is the REINFORCE
  surrogate whose gradient is the policy gradient.
* :func:`adapt` is the inner loop: sample trajectories of a task, take one policy-gradient
  step with ``helpers.maml.inner_adapt`` (repeated for more steps, with fresh trajectories).
* :func:`meta_train_step` is the outer loop: the post-adaptation trajectories' surrogate,
  differentiated through the inner step, averaged over a meta-batch of goals, one Adam step.
  The paper takes a TRPO step instead (a natural-gradient step inside a KL trust region, found
  by conjugate gradient and line search); a plain gradient step with Adam is simpler and needs
  a smaller step size beta.

With ``inner_steps=0`` the outer loop becomes ordinary policy-gradient training on all goals
jointly: that is the *pretrained* baseline of the paper.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from . import validation
from .maml import Params, inner_adapt, parameters_of
from .nets import mlp

MAX_ACTION = 0.1
HORIZON = 100
GOAL_RADIUS = 0.01
GOAL_LOW, GOAL_HIGH = -0.5, 0.5
REWARDS = ("squared", "distance")

#: Average return of MAML on 2D navigation after 0, 1, 2, 3 policy-gradient steps (Finn et al.
#: 2017, appendix). Their released code scored each step with minus the *Euclidean* distance,
#: so these numbers compare with ``reward="distance"``.
PAPER_MAML_RETURNS = {0: -40.41, 1: -11.68, 2: -3.33, 3: -3.23}


# ----------------------------------------------------------------------------- the tasks


def sample_goals(n_goals: int, generator: torch.Generator | None = None) -> Tensor:
    """``n_goals`` goals drawn uniformly from the unit square ``[-0.5, 0.5]^2``: shape ``(n_goals, 2)``."""
    n_goals = validation.whole_number("n_goals", n_goals, 1)
    return GOAL_LOW + (GOAL_HIGH - GOAL_LOW) * torch.rand(n_goals, 2, generator=generator)


def goal_reward(positions: Tensor, goals: Tensor, reward: str = "squared") -> Tensor:
    """Reward of standing at ``positions`` ``(..., 2)`` when aiming for ``goals`` ``(..., 2)``.

    ``"squared"``: minus the squared distance (the paper's text); ``"distance"``: minus the
    Euclidean distance (the paper's released code, which produced its numbers).
    """
    squared = ((positions - goals) ** 2).sum(-1)
    return -squared if reward == "squared" else -squared.sqrt()


class PointNavigation:
    """``n`` point robots on a plane, each with its own goal, stepped together.

    Every robot starts at the origin and observes its position ``(x, y)``. An action
    ``(dx, dy)`` is clipped to ``[-max_action, max_action]`` and added to the position; the
    reward is :func:`goal_reward` of the new position. A robot is *finished* once it is within
    ``goal_radius`` of its goal (it then stays put and earns 0) or after ``horizon`` steps.
    """

    def __init__(
        self,
        goals: Tensor,
        horizon: int = HORIZON,
        reward: str = "squared",
        max_action: float = MAX_ACTION,
        goal_radius: float = GOAL_RADIUS,
    ) -> None:
        goals = torch.as_tensor(goals, dtype=torch.float32)
        if goals.ndim != 2 or goals.shape[1] != 2:
            raise ValueError(f"goals must have shape (n, 2); got {tuple(goals.shape)}.")
        _check_whole("horizon", horizon, 1)
        validation.one_of("reward", reward, REWARDS)
        validation.positive_number("max_action", max_action, 0.1)
        validation.number_in_range("goal_radius", goal_radius, 0, example=0.01)
        self.goals, self.horizon, self.reward = goals, int(horizon), reward
        self.max_action, self.goal_radius = float(max_action), float(goal_radius)
        self.reset()

    @property
    def n_envs(self) -> int:
        return len(self.goals)

    def reset(self) -> Tensor:
        """Put every robot back at the origin; returns the observations ``(n, 2)``."""
        self.positions = torch.zeros_like(self.goals)
        self.reached = torch.zeros(self.n_envs, dtype=torch.bool, device=self.goals.device)
        self.t = 0
        return self.positions.clone()

    @property
    def finished(self) -> Tensor:
        """``(n,)`` bool: goal reached, or the horizon used up."""
        return self.reached | (self.t >= self.horizon)

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Move every unfinished robot; returns ``(observations (n, 2), rewards (n,), finished (n,))``.

        A robot that was already finished before this step does not move and earns 0.
        """
        if self.t >= self.horizon:
            raise RuntimeError(
                f"the episode is over after horizon={self.horizon} steps; call reset()."
            )
        moving = ~self.finished
        moves = actions.clamp(-self.max_action, self.max_action)
        self.positions = torch.where(moving[:, None], self.positions + moves, self.positions)
        rewards = goal_reward(self.positions, self.goals, self.reward) * moving
        distance = (self.positions - self.goals).norm(dim=-1)
        self.reached = self.reached | (moving & (distance < self.goal_radius))
        self.t += 1
        return self.positions.clone(), rewards, self.finished


# ----------------------------------------------------------------------------- the policy


class GaussianMLPPolicy(nn.Module):
    """pi(a | s) = Normal(mean(s), std): an MLP (two hidden layers of 100, ReLU) for the mean.

    ``log_std`` is a learned parameter (one per action dimension), so the inner step can also
    change how much the policy explores.
    """

    def __init__(self, hidden: Sequence[int] = (100, 100), init_std: float = 1.0) -> None:
        super().__init__()
        validation.positive_number("init_std", init_std, 1.0)
        self.mean = mlp([2, *hidden, 2])
        self.log_std = nn.Parameter(torch.full((2,), math.log(init_std)))

    def forward(self, observations: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation of the action, each of shape ``(..., 2)``."""
        mean = self.mean(observations)
        return mean, self.log_std.exp().expand_as(mean)


def log_probs(policy: nn.Module, params: Params, observations: Tensor, actions: Tensor) -> Tensor:
    """log pi_theta(a | s) for every step: ``(..., 2)`` observations and actions give ``(...)``."""
    mean, std = functional_call(policy, params, (observations,))
    z = (actions - mean) / std
    return (-0.5 * z**2 - std.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


# ----------------------------------------------------------------------------- trajectories


@dataclass
class Trajectories:
    """``N`` trajectories for each of ``T`` tasks, ``H`` steps long, padded after the goal.

    ``positions`` ``(T, N, H + 1, 2)`` holds the start and every position after a step; the
    observation before step ``t`` is ``positions[:, :, t]``. ``actions`` ``(T, N, H, 2)`` are
    the sampled (unclipped) actions, ``rewards`` ``(T, N, H)`` the rewards, and ``mask``
    ``(T, N, H)`` is 1 for steps that really happened and 0 after a robot reached its goal.
    """

    goals: Tensor
    positions: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor

    @property
    def observations(self) -> Tensor:
        return self.positions[:, :, :-1]

    @property
    def returns(self) -> Tensor:
        """The undiscounted return of every trajectory, ``(T, N)``."""
        return self.rewards.sum(-1)

    @property
    def mean_return(self) -> float:
        return float(self.returns.mean())

    def task(self, i: int) -> Trajectories:
        """Task ``i`` alone (``T = 1``)."""
        return Trajectories(
            *(
                t[i : i + 1]
                for t in (self.goals, self.positions, self.actions, self.rewards, self.mask)
            )
        )


def _policy_outputs(
    policy: nn.Module, params: Params, observations: Tensor, per_task: bool
) -> tuple[Tensor, Tensor]:
    """Mean and std for observations ``(T, N, 2)``: one shared ``params``, or (``per_task``)
    parameters stacked along a first axis of length ``T``, run on their own task by ``vmap``."""
    if not per_task:
        return functional_call(policy, params, (observations,))
    return vmap(lambda p, o: functional_call(policy, p, (o,)))(params, observations)


def rollout(
    policy: nn.Module,
    params: Params | Sequence[Params],
    goals: Tensor,
    n_trajectories: int,
    horizon: int = HORIZON,
    reward: str = "squared",
    generator: torch.Generator | None = None,
    deterministic: bool = False,
) -> Trajectories:
    """Run ``n_trajectories`` episodes on each of the ``T`` goals ``(T, 2)``, all at once.

    ``params`` is one ``Params`` dict (the same policy on every goal) or a list of ``T`` dicts
    (each goal its own adapted policy). ``deterministic=True`` takes the mean action (for
    drawing paths); otherwise actions are sampled from the Gaussian. No gradients are kept:
    :func:`policy_gradient_loss` recomputes the log-probabilities it needs.
    """
    _check_whole("n_trajectories", n_trajectories, 1)
    goals = torch.as_tensor(goals, dtype=torch.float32)
    n_tasks = len(goals)
    if not isinstance(params, dict) and len(params) != n_tasks:
        raise ValueError(
            f"got {len(params)} parameter sets for {n_tasks} goals; give one dict, or one per goal."
        )
    device = goals.device
    per_task = not isinstance(params, dict)
    if per_task:
        params = {k: torch.stack([p[k].detach() for p in params]) for k in params[0]}
    env = PointNavigation(goals.repeat_interleave(n_trajectories, dim=0), horizon, reward)
    positions, actions, rewards, mask = [env.reset()], [], [], []
    with torch.no_grad():
        for _ in range(horizon):
            moving = ~env.finished
            obs = positions[-1].view(n_tasks, n_trajectories, 2)
            mean, std = _policy_outputs(policy, params, obs, per_task)
            action = mean
            if not deterministic:
                noise = torch.randn(mean.shape, generator=generator).to(device)
                action = mean + std * noise
            action = action.reshape(-1, 2)
            obs, r, _ = env.step(action)
            positions.append(obs)
            actions.append(action)
            rewards.append(r)
            mask.append(moving.float())
            if bool(env.finished.all()):
                break
    # Pad to the full horizon so every batch has the same shape.
    for _ in range(horizon - len(actions)):
        positions.append(positions[-1])
        actions.append(torch.zeros_like(actions[-1]))
        rewards.append(torch.zeros_like(rewards[-1]))
        mask.append(torch.zeros_like(mask[-1]))
    shape = (n_tasks, n_trajectories)
    return Trajectories(
        goals=goals,
        positions=torch.stack(positions, 1).view(*shape, horizon + 1, 2),
        actions=torch.stack(actions, 1).view(*shape, horizon, 2),
        rewards=torch.stack(rewards, 1).view(*shape, horizon),
        mask=torch.stack(mask, 1).view(*shape, horizon),
    )


# ----------------------------------------------------------------------------- the policy gradient


def discounted_returns(rewards: Tensor, gamma: float = 0.99) -> Tensor:
    """Reward-to-go ``G_t = r_t + gamma r_{t+1} + gamma^2 r_{t+2} + ...`` along the last axis."""
    validation.number_in_range("gamma", gamma, 0, 1)
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[..., 0])
    for t in reversed(range(rewards.shape[-1])):
        running = rewards[..., t] + gamma * running
        out[..., t] = running
    return out


def baseline_features(observations: Tensor) -> Tensor:
    """Features of the linear baseline: ``[s, s^2, t, t^2, t^3, 1]`` with ``t`` = step / 100.

    ``observations`` ``(..., H, 2)`` gives ``(..., H, 8)``.
    """
    horizon = observations.shape[-2]
    t = (torch.arange(horizon, dtype=observations.dtype, device=observations.device) / 100).view(
        -1, 1
    )
    t = t.expand(*observations.shape[:-1], 1)
    return torch.cat([observations, observations**2, t, t**2, t**3, torch.ones_like(t)], dim=-1)


def fit_linear_baseline(
    observations: Tensor, returns: Tensor, mask: Tensor, reg: float = 1e-5
) -> Tensor:
    """Value estimates ``b(s_t)`` from a ridge regression of ``returns`` on :func:`baseline_features`.

    One regression per task (first axis) over the valid steps of its trajectories:
    ``observations`` ``(T, N, H, 2)``, ``returns`` and ``mask`` ``(T, N, H)``; returns ``(T, N, H)``.
    """
    features = baseline_features(observations)
    n_tasks, n_features = features.shape[0], features.shape[-1]
    x = (features * mask.unsqueeze(-1)).reshape(n_tasks, -1, n_features)
    y = (returns * mask).reshape(n_tasks, -1, 1)
    gram = x.transpose(1, 2) @ x + reg * torch.eye(n_features, dtype=x.dtype, device=x.device)
    coef = torch.linalg.solve(gram, x.transpose(1, 2) @ y)  # (T, F, 1)
    return (features @ coef.unsqueeze(1)).squeeze(-1) * mask


def advantages(trajectories: Trajectories, gamma: float = 0.99, normalize: bool = True) -> Tensor:
    """A_t = G_t - b(s_t), per task; normalised to mean 0 and std 1 over each task's valid steps.

    Normalising makes the step size alpha independent of the scale of the rewards.
    """
    mask = trajectories.mask
    returns = discounted_returns(trajectories.rewards, gamma)
    adv = (returns - fit_linear_baseline(trajectories.observations, returns, mask)) * mask
    if normalize:
        count = mask.sum(dim=(1, 2), keepdim=True).clamp(min=1)
        mean = adv.sum(dim=(1, 2), keepdim=True) / count
        var = (((adv - mean) * mask) ** 2).sum(dim=(1, 2), keepdim=True) / count
        adv = (adv - mean) / (var.sqrt() + 1e-8) * mask
    return adv.detach()


def policy_gradient_loss(
    policy: nn.Module, params: Params, trajectories: Trajectories, advantage: Tensor
) -> Tensor:
    """The REINFORCE surrogate ``-mean_t log pi_theta(a_t | s_t) A_t`` over the valid steps.

    Its gradient is minus the policy-gradient estimate, so a gradient *descent* step on it
    makes actions with positive advantage more likely.
    """
    valid = trajectories.mask.bool()  # only the steps that happened (faster than masking)
    logp = log_probs(policy, params, trajectories.observations[valid], trajectories.actions[valid])
    return -(logp * advantage[valid]).sum() / valid.sum().clamp(min=1)


# ----------------------------------------------------------------------------- inner and outer loops


@dataclass
class RLSettings:
    """What a task's data looks like: trajectories per step, horizon, reward, discount."""

    n_trajectories: int = 20
    horizon: int = HORIZON
    reward: str = "squared"
    gamma: float = 0.99

    def __post_init__(self) -> None:
        _check_whole("n_trajectories", self.n_trajectories, 2)
        _check_whole("horizon", self.horizon, 1)
        validation.one_of("reward", self.reward, REWARDS)
        validation.number_in_range("gamma", self.gamma, 0, 1)


def policy_gradient_step(
    policy: nn.Module,
    params: Params,
    trajectories: Trajectories,
    inner_lr: float,
    gamma: float = 0.99,
    first_order: bool = False,
) -> Params:
    """theta' = theta - alpha grad L(theta) on one task's trajectories (``T = 1``), via ``inner_adapt``."""
    advantage = advantages(trajectories, gamma)

    def loss_fn(p: Params) -> Tensor:
        return policy_gradient_loss(policy, p, trajectories, advantage)

    return inner_adapt(policy, params, loss_fn, inner_lr, steps=1, first_order=first_order)


def adapt(
    policy: nn.Module,
    params: Params,
    goals: Tensor,
    inner_lr: float,
    steps: int,
    settings: RLSettings | None = None,
    first_order: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Params | list[Params], list[Trajectories]]:
    """The inner loop on each goal: ``steps`` times, sample trajectories, take a policy-gradient step.

    Returns the adapted parameters (``params`` itself when ``steps == 0``, else one dict per
    goal) and the trajectories sampled before each step (``steps`` of them).
    """
    settings = settings or RLSettings()
    _check_whole("steps", steps, 0)
    current: Params | list[Params] = params
    sampled = []
    for _ in range(steps):
        trajectories = rollout(
            policy,
            current,
            goals,
            settings.n_trajectories,
            settings.horizon,
            settings.reward,
            generator,
        )
        sampled.append(trajectories)
        current = [
            policy_gradient_step(
                policy,
                current if isinstance(current, dict) else current[i],
                trajectories.task(i),
                inner_lr,
                settings.gamma,
                first_order,
            )
            for i in range(len(goals))
        ]
    return current, sampled


def meta_loss(
    policy: nn.Module,
    params: Params,
    goals: Tensor,
    inner_lr: float,
    inner_steps: int,
    settings: RLSettings | None = None,
    first_order: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, list[Trajectories]]:
    """The outer objective: each goal's post-adaptation surrogate, averaged over the meta-batch.

    Differentiable with respect to ``params`` through the inner step(s) (second order unless
    ``first_order``). Also returns every batch of trajectories, the post-adaptation one last.
    """
    settings = settings or RLSettings()
    adapted, sampled = adapt(
        policy, params, goals, inner_lr, inner_steps, settings, first_order, generator
    )
    post = rollout(
        policy,
        adapted,
        goals,
        settings.n_trajectories,
        settings.horizon,
        settings.reward,
        generator,
    )
    advantage = advantages(post, settings.gamma)
    if isinstance(adapted, dict):  # no inner step: ordinary policy gradient on all goals jointly
        loss = policy_gradient_loss(policy, adapted, post, advantage)
    else:
        loss = torch.stack(
            [
                policy_gradient_loss(policy, adapted[i], post.task(i), advantage[i : i + 1])
                for i in range(len(goals))
            ]
        ).mean()
    return loss, [*sampled, post]


@dataclass
class MetaHistory:
    """Per meta-iteration: mean return before adaptation and after the last inner step, and time."""

    pre_return: list[float] = field(default_factory=list)
    post_return: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


def meta_train(
    policy: nn.Module,
    iterations: int,
    meta_batch: int = 20,
    inner_lr: float = 0.1,
    outer_lr: float = 1e-3,
    inner_steps: int = 1,
    settings: RLSettings | None = None,
    first_order: bool = False,
    seed: int = 0,
    history: MetaHistory | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    progress: bool = True,
    callback: Callable[[int, MetaHistory], None] | None = None,
    generator: torch.Generator | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> MetaHistory:
    """MAML-RL: ``iterations`` outer steps, each on ``meta_batch`` fresh goals (``inner_steps=0``: pretraining).

    The outer step is one Adam step of size ``outer_lr`` (beta) on :func:`meta_loss`. Pass
    ``history`` and ``optimizer`` back in to continue a run; ``callback(i, history)`` is called
    after every iteration (for live plots). ``generator`` (default: a fresh one seeded with
    ``seed``) draws goals and actions; ``should_stop()`` turning true ends the loop before the
    next iteration. A loss that is not finite raises :class:`helpers.runs.NonFiniteLoss`. The
    loop is the course's shared :class:`helpers.training.Loop`, one step an iteration.
    """
    from .training import Loop

    _check_whole("iterations", iterations, 0)
    _check_whole("meta_batch", meta_batch, 1)
    _check_whole("inner_steps", inner_steps, 0)

    validation.positive_number("inner_lr (alpha)", inner_lr, 0.1)
    validation.positive_number("outer_lr (beta)", outer_lr, 0.001)
    settings = settings or RLSettings()
    history = history or MetaHistory()
    optimizer = optimizer or torch.optim.Adam(policy.parameters(), lr=float(outer_lr))
    generator = generator if generator is not None else validation.torch_generator(seed)
    first = len(history.pre_return) + 1

    def step(number: int) -> tuple[float, None]:
        loss = meta_train_step(
            policy,
            optimizer,
            generator,
            meta_batch,
            inner_lr,
            inner_steps,
            settings,
            first_order,
            history,
            number,
        )
        if callback is not None:
            callback(number - first, history)
        return loss, None

    Loop(
        iterations,
        first_step=first,
        should_stop=should_stop,
        progress=progress,
        leave=True,
        desc="MAML meta-training" if inner_steps else "pretraining (no inner step)",
        postfix=lambda _: {
            "before": f"{history.pre_return[-1]:.1f}",
            "after": f"{history.post_return[-1]:.1f}",
        },
    ).run(step)
    return history


def meta_train_step(
    policy: nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator | None,
    meta_batch: int,
    inner_lr: float,
    inner_steps: int,
    settings: RLSettings,
    first_order: bool,
    history: MetaHistory,
    number: int,
) -> float:
    """Meta-iteration ``number``: :func:`meta_loss` on ``meta_batch`` fresh goals, one step of
    ``optimizer``; the returns before and after adaptation and the seconds go into ``history``.
    Returns the meta-loss; one that is not finite raises :class:`helpers.runs.NonFiniteLoss`
    before the step (a NaN gradient would spoil the policy)."""
    from .runs import check_finite

    start = time.perf_counter()
    goals = sample_goals(meta_batch, generator).to(next(policy.parameters()).device)
    loss, sampled = meta_loss(
        policy,
        parameters_of(policy),
        goals,
        inner_lr,
        inner_steps,
        settings,
        first_order,
        generator,
    )
    value = check_finite(number, float(loss.detach()))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    history.pre_return.append(sampled[0].mean_return)
    history.post_return.append(sampled[-1].mean_return)
    history.seconds.append(time.perf_counter() - start)
    return value


@dataclass
class Adaptation:
    """What :func:`adaptation_returns` measured on ``T`` goals, step by step.

    ``returns[k]`` ``(T,)`` is each goal's average return after ``k`` steps, ``trajectories[k]``
    the trajectories behind it, ``params[k]`` the policy that drew them (after step 0 one
    dict per goal).
    """

    returns: Tensor
    trajectories: list[Trajectories]
    params: list[Params | list[Params]]

    @property
    def mean_returns(self) -> list[float]:
        """The average return over all goals after 0, 1, ... steps."""
        return [float(r.mean()) for r in self.returns]


def adaptation_returns(
    policy: nn.Module,
    goals: Tensor,
    inner_lr: float,
    max_steps: int = 3,
    settings: RLSettings | None = None,
    seed: int = 0,
) -> Adaptation:
    """Average return on each goal after 0, 1, ..., ``max_steps`` policy-gradient steps.

    The trajectories sampled after step ``k`` are both scored and used for step ``k + 1``, as
    in the paper. Evaluation needs no meta-gradient, so the inner steps are first-order and the
    adapted weights are detached.
    """
    settings = settings or RLSettings()
    _check_whole("max_steps", max_steps, 0)
    generator = validation.torch_generator(seed)
    current: Params | list[Params] = {k: v.detach() for k, v in parameters_of(policy).items()}
    sampled, params = [], []
    for step in range(max_steps + 1):
        trajectories = rollout(
            policy,
            current,
            goals,
            settings.n_trajectories,
            settings.horizon,
            settings.reward,
            generator,
        )
        sampled.append(trajectories)
        params.append(current)
        if step < max_steps:
            current = [
                {
                    k: v.detach()
                    for k, v in policy_gradient_step(
                        policy,
                        current if isinstance(current, dict) else current[i],
                        trajectories.task(i),
                        inner_lr,
                        settings.gamma,
                        first_order=True,
                    ).items()
                }
                for i in range(len(goals))
            ]
    return Adaptation(torch.stack([t.returns.mean(1) for t in sampled]), sampled, params)


# ----------------------------------------------------------------------------- checkpoints


MAML_RL_COMMAND = "python -m helpers.maml_rl --inner-steps 1 --iterations 300 --max-minutes 19"


def save_policy(policy: GaussianMLPPolicy, path: str | Path, record: dict, saver=None) -> dict:
    """Write the policy's weights to ``path`` and ``record`` (command, time, results) beside it
    as JSON, as one atomic pair (through ``saver``, a :class:`helpers.checkpoints.Saver`, when
    a command's run decides where it may save). Returns the record as written."""
    from . import checkpoints

    writer = checkpoints.torch_writer({k: v.detach().cpu() for k, v in policy.state_dict().items()})
    return (
        saver.save(writer, record)
        if saver is not None
        else checkpoints.write_pair(path, writer, record)
    )


def load_policy(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[GaussianMLPPolicy, dict]:
    """A policy saved by :func:`save_policy`, and its JSON record.

    ``wall_time_s`` (the name earlier records used, and notebook 08 reads) is filled in from
    the schema's ``wall_seconds`` when a record has only the latter. A missing, truncated or
    mismatched file raises :class:`helpers.checkpoints.CheckpointError` in one sentence.
    """
    from . import checkpoints

    policy = GaussianMLPPolicy()
    _, record = checkpoints.load(
        path,
        checkpoints.torch_reader(policy),
        "a 2-D navigation policy (GaussianMLPPolicy 100-100)",
        f"{MAML_RL_COMMAND} --out {path}",
    )
    if "wall_time_s" not in record and record.get("wall_seconds") is not None:
        record["wall_time_s"] = record["wall_seconds"]
    return policy.to(device), record


PROG = "python -m helpers.maml_rl"
NOT_SETTINGS = ("out", "hardware", "resume", "overwrite", "debug", "started")


def build_parser():
    from .commands import Parser, add_run_options

    parser = Parser(
        PROG,
        description="Train a 2-D navigation policy with MAML-RL (or the pretrained baseline with "
        "--inner-steps 0) and save it with its record. Ctrl-C or SIGTERM saves the run; --resume continues it.",
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--meta-batch", type=int, default=20)
    parser.add_argument(
        "--inner-steps", type=int, default=1, help="0 trains the pretrained baseline"
    )
    parser.add_argument("--inner-lr", type=float, default=0.1)
    parser.add_argument("--outer-lr", type=float, default=0.01)
    parser.add_argument("--trajectories", type=int, default=20)
    parser.add_argument("--reward", choices=REWARDS, default="distance")
    parser.add_argument("--first-order", action="store_true")
    parser.add_argument("--eval-goals", type=int, default=40)
    parser.add_argument("--select-goals", type=int, default=20)
    parser.add_argument(
        "--max-minutes", type=float, default=20.0, help="stop meta-training after this long"
    )
    parser.add_argument(
        "--hardware", default="", help="a note on the machine, added to the recorded hardware"
    )
    add_run_options(parser)
    parser.set_defaults(device="cpu")  # the policy is tiny: the CPU is the fastest place for it
    return parser


def validate_arguments(args) -> None:
    from . import commands

    commands.run_options(args)
    commands.positive(args, "inner_lr", example=0.1)
    commands.positive(args, "outer_lr", example=0.01)
    commands.positive(args, "max_minutes", example=19)
    for dest, low in (
        ("iterations", 1),
        ("meta_batch", 1),
        ("inner_steps", 0),
        ("trajectories", 2),
        ("eval_goals", 1),
        ("select_goals", 1),
    ):
        commands.whole(args, dest, low)
    commands.writable_target(Path(args.out))


def train_command(args, device: torch.device, command: str) -> dict:
    """Meta-train (a :class:`helpers.training.Loop`), keep the best policy on the selection goals every 10 iterations, save."""
    from . import checkpoints, commands, runs
    from .device import hardware_description, seed_everything
    from .fewshot import confidence_interval
    from .training import History, KeepBest, Loop

    settings = {k: v for k, v in vars(args).items() if k not in NOT_SETTINGS}
    files = commands.RunFiles(args.out, args, settings)
    seed_everything(args.seed)
    rl = RLSettings(n_trajectories=args.trajectories, reward=args.reward)
    policy = GaussianMLPPolicy().to(device)
    history, optimizer = MetaHistory(), torch.optim.Adam(policy.parameters(), lr=args.outer_lr)
    # Plain Adam at a fixed beta first learns fast and then drifts away again (no trust region,
    # unlike the paper's TRPO), so beta decays along a cosine and the weights kept are those with
    # the best return after one step on selection goals, checked every 10 iterations.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.iterations)
    select_goals = sample_goals(
        args.select_goals, torch.Generator().manual_seed(20_000 + args.seed)
    )
    select_steps = max(1, args.inner_steps)
    keep = KeepBest(
        lambda: copy.deepcopy(policy.state_dict()), state=copy.deepcopy(policy.state_dict())
    )
    selection: list = []
    seconds_before, chunk_generator = 0.0, None
    if files.state:
        state = files.state
        policy.load_state_dict(state["policy"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        history = MetaHistory(**state["history"])
        keep.value, keep.step, keep.state = state["best"][0], state["best"][1], state["best"][2]
        selection, seconds_before = state["selection"], state["seconds"]
        chunk_generator = torch.Generator()
        chunk_generator.set_state(state["chunk_generator"])
        runs.set_rng_state(state["rng"])
        print(
            f"resuming {files.resume_file} at iteration {len(history.pre_return)} of {args.iterations}",
            flush=True,
        )

    def chunk_start(number: int) -> torch.Generator:
        # Each chunk of 10 iterations draws its goals and actions from its own seed, kept apart from every evaluation seed.
        return torch.Generator().manual_seed(1_000_000 + args.seed * 10_007 + (number - 1) // 10)

    def step(number: int) -> tuple[float, None]:
        nonlocal chunk_generator
        if (number - 1) % 10 == 0:
            chunk_generator = chunk_start(number)
        loss = meta_train_step(
            policy,
            optimizer,
            chunk_generator,
            args.meta_batch,
            args.inner_lr,
            args.inner_steps,
            rl,
            args.first_order,
            history,
            number,
        )
        schedule.step()
        return loss, None

    def validate(number: int) -> float:
        score = adaptation_returns(
            policy, select_goals, args.inner_lr, select_steps, rl, seed=2
        ).mean_returns[-1]
        selection.append([number, round(score, 3)])
        return score

    def report(trained: History) -> None:
        print(
            f"iteration {len(history.pre_return)}: return before {history.pre_return[-1]:.2f}, after {history.post_return[-1]:.2f}, "
            f"selection goals after {select_steps} step(s) {trained.val_accuracy[-1]:.2f}",
            flush=True,
        )

    def save_resumable(trained: History) -> None:
        record = checkpoints.make_record(
            "maml_rl",
            command=command,
            hardware=hardware_description(device),
            settings=settings,
            status="resumable",
            train_seconds=trained.seconds,
        )
        generator = (
            chunk_generator
            if chunk_generator is not None
            else chunk_start(len(history.pre_return) + 1)
        )
        files.save_state(
            {
                "policy": policy.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "history": history.__dict__,
                "best": [keep.value, keep.step, keep.state],
                "selection": selection,
                "seconds": trained.seconds,
                "chunk_generator": generator.get_state(),
                "rng": runs.rng_state(),
                "wall_seconds": commands.wall_seconds(files, args),
            },
            record,
        )

    # The time budget is looked at every 10 iterations, after the selection goals have been scored.
    loop = Loop(
        args.iterations - len(history.pre_return),
        history=History(seconds=seconds_before),
        first_step=len(history.pre_return) + 1,
        validate=validate,
        val_every=10,
        keep=keep,
        max_seconds=60 * args.max_minutes,
        budget_every=10,
        should_stop=runs.stop_requested,
        save_resumable=save_resumable,
        on_validation=report,
    )
    try:
        trained = loop.run(step)
    except runs.NonFiniteLoss as exc:
        raise commands.nonfinite(
            exc, "the step sizes --inner-lr or --outer-lr are probably too large", None
        ) from None
    if trained.interrupted:
        raise files.interrupted(
            f"iteration {len(history.pre_return)} of {args.iterations}", command, False
        )
    seconds = trained.seconds
    policy.load_state_dict(keep.state)
    # Held-out goals from a seed no training or selection batch used.
    goals = sample_goals(args.eval_goals, torch.Generator().manual_seed(10_000 + args.seed))
    result = adaptation_returns(policy, goals, args.inner_lr, 3, rl, seed=1)
    returns_after_steps = {
        str(k): dict(zip(("mean", "ci95"), confidence_interval(r.tolist())))
        for k, r in enumerate(result.returns)
    }
    selection_text = (
        f"every 10 iterations, mean return after {select_steps} step(s) on {args.select_goals} goals "
        f"from sample_goals(seed={20_000 + args.seed})"
    )
    record = checkpoints.make_record(
        "maml_rl",
        command=command,
        hardware=hardware_description(device) + (f"; {args.hardware}" if args.hardware else ""),
        settings=settings,
        run_id=files.run_id,
        validation=selection_text,
        val_score=checkpoints.score(keep.value, step=keep.step, metric="return"),
        history={
            "pre_return": [round(x, 3) for x in history.pre_return],
            "post_return": [round(x, 3) for x in history.post_return],
        },
        results={
            "iterations_done": len(history.pre_return),
            "kept_iteration": keep.step,
            "validation_return_after_steps": returns_after_steps,
        },
        wall_seconds=commands.wall_seconds(files, args),
        train_seconds=seconds,
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        iterations_done=len(history.pre_return),
        kept_iteration=keep.step,
        selection=selection_text,
        selection_curve=selection,
        validation_goals=f"{args.eval_goals} goals from sample_goals(seed={10_000 + args.seed})",
        validation_return_after_steps=returns_after_steps,
    )
    written = save_policy(policy, args.out, record, saver=files.saver)
    files.finish()
    print(
        json.dumps(
            {
                k: v
                for k, v in written.items()
                if k not in ("history", "selection_curve", "settings", "results")
            },
            indent=2,
        )
    )
    return written


def _main(argv: Sequence[str] | None = None) -> dict:
    """Train a checkpoint: ``python -m helpers.maml_rl --inner-steps 1 --out data/checkpoints/x.pt``."""
    from .commands import main as run_command

    return run_command(PROG, build_parser(), validate_arguments, train_command, argv)


main = _main


def _check_whole(name: str, value: object, low: int) -> None:
    validation.whole_number(name, value, low)


if __name__ == "__main__":
    _main()

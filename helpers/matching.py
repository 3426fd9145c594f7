"""Matching Networks (Vinyals et al. 2016): cosine attention over the support set, with or
without full context embeddings (FCE).

The whole method in one line: a query's label distribution is the attention-weighted sum of
the support set's one-hot labels,

    y_hat = sum_i a(x_hat, x_i) y_i,   a(x_hat, x_i) = softmax_i( s * cos( f(x_hat), g(x_i) ) ).

The paper's kernel is ``s = 1``. Cosines are bounded, so with ``s = 1`` the softmax stays nearly
flat and training stalls (notebook 04, section 2.1); the training command therefore learns ``s``
(``--scale 10`` is its starting value, ``--scale 1 --fixed-scale`` reproduces the paper's kernel).

Without FCE, ``f`` and ``g`` are the same Conv-4 encoder applied to one image at a time.
With FCE, both see the whole support set S:

* ``g(x_i, S) = h_fwd_i + h_bwd_i + g'(x_i)``: a bidirectional LSTM reads the support
  embeddings ``g'(x_i)`` as a sequence, and the skip connection adds ``g'(x_i)`` back
  (:class:`SupportContextEncoder`);
* ``f(x_hat, S) = attLSTM(f'(x_hat), g(S), T)``: an LSTM that, for T processing steps,
  re-reads g(S) through dot-product attention (:class:`AttentionLSTM`).

:class:`MatchingNetwork` implements :class:`helpers.fewshot.FewShotMethod`, so the shared
``evaluate`` works on it, and its :meth:`~MatchingNetwork.episode_loss` is the training step
that :func:`helpers.training.train_episodic` takes. Run ``python -m helpers.matching --help`` for the
command that trains the committed checkpoints.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import validation
from .episodes import Episode
from .fewshot import (
    EvalResult,
    FewShotMethod,
    confidence_interval,
    cosine_similarity,
    declared_image_shape,
)
from .nets import Conv4

# --------------------------------------------------------------------------------------------
# The attention kernel
# --------------------------------------------------------------------------------------------


def attention_weights(
    query_embeddings: torch.Tensor,
    support_embeddings: torch.Tensor,
    scale: float | torch.Tensor = 1.0,
) -> torch.Tensor:
    """``a(x_hat, x_i) = softmax_i( s * c(f(x_hat), g(x_i)) )``: ``(q, s)``, each row sums to 1.

    ``c`` is the cosine of every query ``(q, d)`` with every support ``(s, d)``
    (:func:`helpers.fewshot.cosine_similarity`); ``scale`` (s, a temperature's inverse) sharpens
    the softmax: the paper's kernel is ``s = 1``.
    """
    return (scale * cosine_similarity(query_embeddings, support_embeddings)).softmax(dim=-1)


def label_distribution(
    attention: torch.Tensor, support_labels: torch.Tensor, n_way: int
) -> torch.Tensor:
    """``y_hat = sum_i a(x_hat, x_i) y_i``: attention ``(q, s)`` times one-hot labels ``(s, n_way)``.

    Row ``j`` is query ``j``'s probability for each class: a convex combination of one-hot
    vectors, so it is non-negative and sums to 1.
    """
    one_hot = F.one_hot(support_labels, n_way).to(attention.dtype)
    return attention @ one_hot


def log_label_distribution(
    similarities: torch.Tensor, support_labels: torch.Tensor, n_way: int
) -> torch.Tensor:
    """``log y_hat`` computed stably from the similarities ``(q, s)`` -> ``(q, n_way)``.

    ``y_hat_k`` sums the attention of class k's support images, so
    ``log y_hat_k = logsumexp_{i: y_i = k} c_i - logsumexp_i c_i``: the same numbers as
    ``label_distribution(...).log()`` without ever taking the log of a tiny sum.
    """
    log_attention = similarities.log_softmax(dim=-1)
    member = F.one_hot(support_labels, n_way).T.bool()  # (n_way, s)
    masked = log_attention.unsqueeze(1).masked_fill(~member, float("-inf"))  # (q, n_way, s)
    return masked.logsumexp(dim=-1)


# --------------------------------------------------------------------------------------------
# Full context embeddings
# --------------------------------------------------------------------------------------------


class SupportContextEncoder(nn.Module):
    """g(x_i, S) = h_fwd_i + h_bwd_i + g'(x_i): a bidirectional LSTM with a skip connection.

    The LSTM reads the support embeddings ``g'(x_1), ..., g'(x_s)`` forwards and backwards,
    so each output knows about every other support image; adding ``g'(x_i)`` back keeps the
    image's own embedding as the starting point (the LSTM learns a correction).
    """

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.dim = dim
        self.lstm = nn.LSTM(input_size=dim, hidden_size=dim, bidirectional=True, batch_first=True)

    def forward(self, support_embeddings: torch.Tensor) -> torch.Tensor:
        """``(s, d)`` embeddings g'(x_i), in support-set order -> ``(s, d)`` embeddings g(x_i, S)."""
        states, _ = self.lstm(support_embeddings.unsqueeze(0))  # (1, s, 2d): forward | backward
        h_forward, h_backward = states[0, :, : self.dim], states[0, :, self.dim :]
        return h_forward + h_backward + support_embeddings


class AttentionLSTM(nn.Module):
    """f(x_hat, S) = attLSTM(f'(x_hat), g(S), T): T steps of an LSTM that reads g(S) by attention.

    One processing step, for all queries at once::

        h_hat_t, c_t = LSTM(f'(x_hat), [h_{t-1}, r_{t-1}], c_{t-1})
        h_t          = h_hat_t + f'(x_hat)
        r_t          = sum_i a(h_t, g(x_i)) g(x_i),   a(h, g(x_i)) = softmax_i(h^T g(x_i))

    The LSTM's input is always the query's own embedding f'(x_hat); its hidden state is the
    concatenation ``[h, r]`` (2d numbers) and its output ``h_hat`` has d numbers, so the cell
    is written out here rather than taken from ``nn.LSTMCell``. States start at zero, so the
    first read ``r_0`` is the plain average of g(S).
    """

    def __init__(self, dim: int = 64, processing_steps: int = 5) -> None:
        super().__init__()
        self.dim, self.processing_steps = dim, check_processing_steps(processing_steps)
        self.input_gates = nn.Linear(dim, 4 * dim)  # W x + b for the four gates
        self.state_gates = nn.Linear(2 * dim, 4 * dim, bias=False)  # U [h, r]

    def lstm_step(
        self, query: torch.Tensor, h: torch.Tensor, r: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``h_hat_t, c_t = LSTM(f'(x_hat), [h_{t-1}, r_{t-1}], c_{t-1})``: an ordinary LSTM cell."""
        gates = self.input_gates(query) + self.state_gates(torch.cat([h, r], dim=-1))
        input_gate, forget_gate, candidate, output_gate = gates.chunk(4, dim=-1)
        c = forget_gate.sigmoid() * c + input_gate.sigmoid() * candidate.tanh()
        h_hat = output_gate.sigmoid() * c.tanh()
        return h_hat, c

    @staticmethod
    def read(h: torch.Tensor, support_context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``r = sum_i softmax_i(h^T g(x_i)) g(x_i)``: returns ``r`` ``(q, d)`` and the weights ``(q, s)``."""
        weights = (h @ support_context.T).softmax(dim=-1)
        return weights @ support_context, weights

    def forward(
        self,
        query_embeddings: torch.Tensor,
        support_context: torch.Tensor,
        return_reads: bool = False,
    ):
        """``(q, d)`` embeddings f'(x_hat) and ``(s, d)`` g(S) -> ``(q, d)`` embeddings f(x_hat, S).

        With ``return_reads=True`` also returns the list of T read-attention matrices ``(q, s)``
        (the weights used to form ``r_0 ... r_{T-1}``), to look at what each step attended to.
        """
        h = torch.zeros_like(query_embeddings)
        c = torch.zeros_like(query_embeddings)
        reads = []
        for _ in range(self.processing_steps):
            r, weights = self.read(h, support_context)  # r_{t-1} from h_{t-1}
            reads.append(weights)
            h_hat, c = self.lstm_step(query_embeddings, h, r, c)
            h = h_hat + query_embeddings  # the skip connection keeps f'(x_hat) in the output
        return (h, reads) if return_reads else h


def check_scale(scale: float) -> float:
    """The attention scale s as a float, if it is a positive finite number (the paper's is 1)."""
    return validation.positive_number("scale", scale, 10)


def check_processing_steps(processing_steps: int) -> int:
    """T, the attention LSTM's processing steps, as an int, if it is a whole number >= 1."""
    return validation.whole_number("processing_steps", processing_steps, 1)


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class MatchingNetwork(FewShotMethod, nn.Module):
    """A Matching Network: Conv-4 embeddings, optional full context embeddings, cosine attention.

    * ``fce=False``: f = g = Conv-4 (the paper's Omniglot model).
    * ``fce=True``: g = :class:`SupportContextEncoder` over Conv-4 embeddings and
      f = :class:`AttentionLSTM` with ``processing_steps`` T.
    * ``scale``: s in ``softmax(s * cosine)``, 1 by default (the paper's kernel); with
      ``learn_scale=True`` it is a parameter that training adjusts (stored as ``log s``).

    As a :class:`~helpers.fewshot.FewShotMethod`: ``process_support_set`` embeds the support
    set once and ``scores`` returns ``y_hat`` ``(n_query_total, n_way)``, the probability of
    each class. Call ``.eval()`` before evaluating so batch norm uses its running statistics.
    """

    def __init__(
        self,
        encoder: nn.Module | None = None,
        fce: bool = False,
        processing_steps: int = 5,
        scale: float = 1.0,
        learn_scale: bool = False,
    ) -> None:
        nn.Module.__init__(self)
        self.encoder = encoder if encoder is not None else Conv4()
        self.image_shape = declared_image_shape(self.encoder)
        dim = getattr(self.encoder, "out_features", 64)
        self.fce = validation.boolean("fce", fce)
        self.processing_steps = check_processing_steps(processing_steps)
        scale = check_scale(scale)
        learn_scale = validation.boolean("learn_scale", learn_scale)
        # the attention is softmax(s * cosine); s is stored as log s, so that it stays positive
        # when it is learned, and it is saved in the checkpoint either way
        self.log_scale = nn.Parameter(
            torch.tensor(float(np.log(scale))), requires_grad=bool(learn_scale)
        )
        if self.fce:
            self.support_context = SupportContextEncoder(dim)
            self.query_context = AttentionLSTM(dim, processing_steps)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if (
            "log_scale" not in state_dict
        ):  # saved before the scale existed: the paper's kernel, s = 1
            state_dict = {**state_dict, "log_scale": torch.tensor(0.0)}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @property
    def scale(self) -> torch.Tensor:
        """``s`` in ``softmax(s * cosine)``: 1 is the paper's kernel, larger is sharper."""
        return self.log_scale.exp()

    @property
    def device(self) -> torch.device:  # follows the weights wherever .to() puts them
        return next(self.parameters()).device

    @device.setter
    def device(self, value: torch.device | str) -> None:  # evaluate() and the loop may set it
        self.to(value)

    # ---- the two embeddings ----------------------------------------------------------------
    def embed_support(self, support_images: torch.Tensor) -> torch.Tensor:
        """g(x_i, S) for ``(s, 1, H, W)`` images -> ``(s, d)`` (g'(x_i) alone without FCE)."""
        return self.support_in_context(self.encoder(support_images))

    def embed_queries(
        self, query_images: torch.Tensor, support_context: torch.Tensor
    ) -> torch.Tensor:
        """f(x_hat, S) for ``(q, 1, H, W)`` images -> ``(q, d)`` (f'(x_hat) alone without FCE)."""
        return self.queries_in_context(self.encoder(query_images), support_context)

    def support_in_context(self, support_embeddings: torch.Tensor) -> torch.Tensor:
        """g'(x_i) ``(s, d)`` -> g(x_i, S): the bidirectional LSTM with FCE, unchanged without."""
        return self.support_context(support_embeddings) if self.fce else support_embeddings

    def queries_in_context(
        self, query_embeddings: torch.Tensor, support_context: torch.Tensor
    ) -> torch.Tensor:
        """f'(x_hat) ``(q, d)`` -> f(x_hat, S): the attention LSTM with FCE, unchanged without."""
        return (
            self.query_context(query_embeddings, support_context) if self.fce else query_embeddings
        )

    def similarities(
        self, support_images: torch.Tensor, query_images: torch.Tensor
    ) -> torch.Tensor:
        """``c(f(x_hat, S), g(x_i, S))``: cosine of every query with every support image, ``(q, s)``.

        Support and query images go through Conv-4 in one batch, so that in training mode batch
        norm normalises both with the same statistics.
        """
        n_support = len(support_images)
        embeddings = self.encoder(torch.cat([support_images, query_images]))
        support_context = self.support_in_context(embeddings[:n_support])
        return cosine_similarity(
            self.queries_in_context(embeddings[n_support:], support_context), support_context
        )

    def forward(
        self,
        support_images: torch.Tensor,
        support_labels: torch.Tensor,
        query_images: torch.Tensor,
        n_way: int | None = None,
    ) -> torch.Tensor:
        """``log y_hat``: ``(q, n_way)`` log-probabilities of each class for each query."""
        n_way = n_way or int(support_labels.max()) + 1
        return log_label_distribution(
            self.scale * self.similarities(support_images, query_images), support_labels, n_way
        )

    def attention(self, support_images: torch.Tensor, query_images: torch.Tensor) -> torch.Tensor:
        """The attention ``a(x_hat, x_i)`` of every query over the support set, ``(q, s)``."""
        return (self.scale * self.similarities(support_images, query_images)).softmax(dim=-1)

    # ---- the shared few-shot interface -------------------------------------------------------
    def process_support_set(
        self, support_images: torch.Tensor, support_labels: torch.Tensor
    ) -> None:
        with torch.no_grad():
            self._support_context = self.embed_support(support_images)
        self._support_labels = support_labels
        self._n_way = int(support_labels.max()) + 1

    def scores(self, query_images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            queries = self.embed_queries(query_images, self._support_context)
            attention = attention_weights(queries, self._support_context, self.scale)
            return label_distribution(attention, self._support_labels, self._n_way)

    def episode_loss(self, episode: Episode) -> tuple[torch.Tensor, torch.Tensor]:
        """The training step (:func:`helpers.training.train_episodic`): ``-mean log y_hat[true class]``
        over the episode's queries, and their accuracy."""
        log_probabilities = self(
            episode.support_images, episode.support_labels, episode.query_images, episode.n_way
        )
        loss = F.nll_loss(log_probabilities, episode.query_labels)
        accuracy = (log_probabilities.argmax(dim=-1) == episode.query_labels).float().mean()
        return loss, accuracy


def evaluate_embedded(
    model: MatchingNetwork,
    embeddings: torch.Tensor,
    episodes,
    progress: bool = True,
    desc: str = "evaluating",
):
    """The same numbers as ``helpers.fewshot.evaluate(model.eval(), episodes)``, much faster.

    Without FCE an image's embedding does not depend on the episode, and with FCE only the two
    LSTMs do; so ``embeddings`` are the Conv-4 embeddings of every image of the dataset the
    episodes came from, computed once (``helpers.fewshot.embed_in_batches(model.encoder,
    dataset.images)``). Each episode's ``support_indices`` and ``query_indices`` pick its rows,
    and only the FCE LSTMs and the attention run per episode.
    """
    from tqdm.auto import tqdm

    episodes = validation.episodes(episodes)
    device = model.device
    embeddings = embeddings.to(device)
    accuracies = []
    with torch.no_grad():
        for episode in tqdm(list(episodes), desc=desc, disable=not progress, leave=False):
            rows = torch.from_numpy(
                np.concatenate([episode.support_indices, episode.query_indices])
            ).to(device)
            n_support = len(episode.support_indices)
            support = model.support_in_context(embeddings[rows[:n_support]])
            queries = model.queries_in_context(embeddings[rows[n_support:]], support)
            labels = episode.support_labels.to(device)
            y_hat = label_distribution(
                attention_weights(queries, support, model.scale), labels, episode.n_way
            )
            accuracies.append(
                float((y_hat.argmax(dim=-1).cpu() == episode.query_labels.cpu()).float().mean())
            )
    mean, ci95 = confidence_interval(accuracies)
    return EvalResult(mean, ci95, np.array(accuracies))


# --------------------------------------------------------------------------------------------
# The training command behind the committed checkpoints
# --------------------------------------------------------------------------------------------

PROG = "python -m helpers.matching"
#: arguments that are not settings of the run (where to save, how to talk)
NOT_SETTINGS = ("out", "hardware", "no_progress", "resume", "overwrite", "debug", "started")


def build_parser():
    """The options of ``python -m helpers.matching``."""
    from .commands import Parser, add_run_options

    parser = Parser(
        PROG,
        description="Train a Matching Network episodically on Omniglot and save the best-validation weights "
        "with a record (.json: command, hardware, time, validation). Ctrl-C or SIGTERM saves the run; --resume continues it.",
    )
    parser.add_argument("--fce", action="store_true", help="use full context embeddings")
    parser.add_argument("--processing-steps", type=int, default=5, help="T of the attention LSTM")
    parser.add_argument(
        "--scale",
        type=float,
        default=10.0,
        help="s in softmax(s * cosine), its starting value when learned (the paper: 1)",
    )
    parser.add_argument(
        "--fixed-scale", action="store_true", help="keep s fixed instead of learning it"
    )
    parser.add_argument("--n-way", type=int, default=20)
    parser.add_argument("--k-shot", type=int, default=1)
    parser.add_argument("--n-query", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=6000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--lr-halve-every", type=int, default=2000, help="episodes between halvings"
    )
    parser.add_argument("--train-split", default="vinyals-train")
    parser.add_argument("--val-split", default="vinyals-val")
    parser.add_argument("--val-every", type=int, default=500)
    parser.add_argument("--val-episodes", type=int, default=200)
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="time budget: stop (validate, save) after it",
    )
    parser.add_argument(
        "--hardware", default=None, help="a note on the machine, added to the recorded hardware"
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar (print each validation instead)"
    )
    parser.add_argument(
        "--keep",
        choices=("best", "last"),
        default=None,
        help="weights to save; default: 'last' when the validation classes are inside the training split, else 'best'",
    )
    parser.add_argument(
        "--out", required=True, help="checkpoint path, e.g. data/checkpoints/matching_fce.pt"
    )
    add_run_options(parser)
    return parser


def validate_arguments(args) -> None:
    """Every argument of the command, checked before any data is loaded (``ValueError``)."""
    from pathlib import Path

    from . import commands

    commands.run_options(args)
    commands.positive(args, "lr", example=0.001)
    commands.positive(args, "scale", example=10)
    commands.positive(args, "max_minutes", example=30)
    for dest in ("processing_steps", "episodes", "lr_halve_every", "val_episodes", "val_every"):
        commands.whole(args, dest, 1)
    commands.omniglot_episodes(args.train_split, args.n_way, args.k_shot, args.n_query)
    commands.omniglot_episodes(args.val_split, args.n_way, args.k_shot, args.n_query)
    commands.writable_target(Path(args.out))


def train_command(args, device: torch.device, command: str) -> dict:
    """Train as the arguments say; save (atomically, keep-best) and record the run."""
    from . import checkpoints, commands
    from .device import hardware_description
    from .episodes import omniglot_dataset, sample_episodes
    from .training import DeviceEpisodeSampler, report_validation

    settings = {k: v for k, v in vars(args).items() if k not in NOT_SETTINGS}
    files = commands.RunFiles(args.out, args, settings)
    torch.manual_seed(args.seed)
    model = MatchingNetwork(
        fce=args.fce,
        processing_steps=args.processing_steps,
        scale=args.scale,
        learn_scale=not args.fixed_scale,
    ).to(device)
    train = omniglot_dataset(args.train_split)
    val = omniglot_dataset(args.val_split)
    overlap = bool(set(train.class_names) & set(val.class_names))
    keep = args.keep or ("last" if overlap else "best")
    settings["keep"] = keep
    # the images live on the training device and episodes are gathered there
    sampler = DeviceEpisodeSampler(
        train, args.n_way, args.k_shot, args.n_query, device=device, seed=args.seed
    )
    val_episodes = [
        e.to(device)
        for e in sample_episodes(
            val, args.n_way, args.k_shot, args.n_query, args.val_episodes, seed=args.seed + 1
        )
    ]
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.lr_halve_every, gamma=0.5)
    record = checkpoints.make_record(
        "matching",
        command=command,
        hardware=hardware_description(device) + (f"; {args.hardware}" if args.hardware else ""),
        settings=settings,
        run_id=files.run_id,
        validation=f"{args.val_episodes} {args.n_way}-way {args.k_shot}-shot episodes of {args.val_split}"
        + (
            " (these classes are inside the training split: a monitor, not a held-out score)"
            if overlap
            else " (held-out classes)"
        ),
        arguments=settings,
        torch=torch.__version__,
        keep=keep,
    )
    history = commands.episodic_run(
        files,
        args,
        command,
        method=model,
        sampler=sampler,
        optimizer=optimizer,
        scheduler=scheduler,
        val_episodes=val_episodes,
        record=record,
        keep=keep,
        device=device,
        on_validation=lambda h: report_validation(h, f"scale {model.scale.item():.2f}"),
    )
    # the loop wrote the kept weights and their record; add the whole run's wall time and curves
    saved_scale = torch.load(files.saver.path, map_location="cpu", weights_only=True)[
        "log_scale"
    ].exp()
    checkpoints.update_record(
        files.saver.path,
        wall_seconds=round(commands.wall_seconds(files, args), 1),
        interrupted=False,
        episodes_total=history.n_episodes,  # "episodes_trained" counts those behind the saved weights
        scale=round(float(saved_scale), 4),
        history=history.blocks(10),  # means over blocks of 10 episodes: a small file
        results={"episodes_total": history.n_episodes, "scale": round(float(saved_scale), 4)},
    )
    files.finish()
    print(
        f"best validation: {history.best_validation()}; {history.n_episodes} episodes in {history.seconds:.0f} s; "
        f"checkpoint {files.saver.path}"
    )
    return {"checkpoint": str(files.saver.path), "episodes": history.n_episodes}


def main(argv: list[str] | None = None) -> dict:
    """Train a Matching Network episodically on Omniglot and save the best-validation weights.

    The checkpoints in ``data/checkpoints/matching_*.pt`` were made with this command; its
    ``.json`` records the exact arguments, the hardware, the wall time and the validation
    accuracy. Ctrl-C or SIGTERM saves the run (``--resume`` continues it); every failure is
    one line on stderr with exit status 2.
    """
    from .commands import main as run_command

    return run_command(PROG, build_parser(), validate_arguments, train_command, argv)


if __name__ == "__main__":
    main()

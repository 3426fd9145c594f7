"""Prototypical Networks (Snell, Swersky and Zemel, 2017).

An encoder f_theta maps every image to a point. Each class of an episode is summarised by one
point, its *prototype*: the mean of its support embeddings (:func:`helpers.fewshot.prototypes`),

    c_k = 1/|S_k| * sum_{(x_i, y_i) in S_k} f_theta(x_i).

A query x is scored against class k by the negative squared Euclidean distance to c_k, and a
softmax over the N classes turns the scores into p(y = k | x). Training minimises the
negative log-probability of each query's true class, averaged over the episode's queries.

In the zero-shot form there are no support images: each class comes with a metadata vector
v_k (attributes, a description) and a learned map g_phi gives the prototype, c_k = g_phi(v_k).

Run ``python -m helpers.protonet --help`` for the training command that made the course's
checkpoints.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import fewshot, validation
from .fewshot import FewShotMethod, cosine_similarity, declared_image_shape

DISTANCES = ("euclidean", "cosine")


def check_distance(distance: str, name: str = "distance") -> str:
    """``distance`` if it is one of :data:`DISTANCES`; else one sentence naming it."""
    return validation.one_of(name, distance, DISTANCES)


def squared_euclidean(queries: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """``d[i, k] = ||queries[i] - prototypes[k]||^2``: shape ``(n_query, n_way)``."""
    differences = queries[:, None, :] - prototypes[None, :, :]
    return differences.pow(2).sum(dim=-1)


def class_scores(
    queries: torch.Tensor,
    prototypes: torch.Tensor,
    distance: str = "euclidean",
    cosine_scale: float = 1.0,
) -> torch.Tensor:
    """Logits ``(n_query, n_way)``: ``-d(f(x), c_k)`` (Euclidean) or ``cosine_scale * cos(f(x), c_k)`` (cosine)."""
    check_distance(distance)
    if distance == "euclidean":
        return -squared_euclidean(queries, prototypes)
    return cosine_scale * cosine_similarity(queries, prototypes)


def prototypical_loss(
    queries: torch.Tensor,
    query_labels: torch.Tensor,
    prototypes: torch.Tensor,
    distance: str = "euclidean",
    cosine_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, accuracy)``: the mean of ``-log p(y = true class | x)`` over the queries.

    With Euclidean distance each query's term is ``d(f(x), c_y) + log sum_k' exp(-d(f(x), c_k'))``.
    """
    logits = class_scores(queries, prototypes, distance, cosine_scale)
    loss = F.cross_entropy(logits, query_labels)
    accuracy = (logits.argmax(dim=1) == query_labels).float().mean()
    return loss, accuracy


def as_linear_classifier(prototypes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights ``w_k = 2 c_k`` and biases ``b_k = -c_k . c_k`` of the equivalent linear layer.

    ``-||x - c_k||^2 = 2 c_k . x - c_k . c_k - x . x``, and the last term is the same for every
    class, so it cancels in the softmax: the Euclidean ProtoNet is a linear classifier on f(x).
    """
    return 2 * prototypes, -(prototypes * prototypes).sum(dim=1)


class ProtoNet(FewShotMethod):
    """A Prototypical Network as a :class:`helpers.fewshot.FewShotMethod`.

    ``process_support_set`` embeds the support images and stores one prototype per class;
    ``scores`` returns ``-d(f(x), c_k)`` (or the scaled cosine) for each query and class;
    ``episode_loss`` is its training step, so :func:`helpers.training.train_episodic` trains
    its ``encoder``.
    Images must have the shape the encoder declares (a Conv-4: ``(1, 28, 28)``).
    """

    def __init__(
        self,
        encoder: nn.Module,
        distance: str = "euclidean",
        cosine_scale: float = 1.0,
        device: torch.device | None = None,
    ) -> None:
        self.distance = check_distance(distance)
        self.cosine_scale = validation.positive_number("cosine_scale", cosine_scale, 10)
        self.encoder, self.image_shape = encoder, declared_image_shape(encoder)
        self.device = (
            torch.device(device) if device is not None else next(encoder.parameters()).device
        )
        self.prototypes: torch.Tensor | None = None

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images.to(self.device))

    def process_support_set(
        self, support_images: torch.Tensor, support_labels: torch.Tensor
    ) -> None:
        self.prototypes = fewshot.prototypes(self.embed(support_images), support_labels)

    def scores(self, query_images: torch.Tensor) -> torch.Tensor:
        return class_scores(
            self.embed(query_images), self.prototypes, self.distance, self.cosine_scale
        )

    def episode_loss(self, episode) -> tuple[torch.Tensor, torch.Tensor]:
        """The training step (:func:`helpers.training.train_episodic`): ``(loss, accuracy)`` on one episode.

        Support and query images go through the encoder together, in one batch (in training
        mode batch norm then normalises both with the same statistics); the prototypes are the
        support embeddings' class means and the loss is :func:`prototypical_loss` of the queries.
        """
        n_support = len(episode.support_images)
        embeddings = self.encoder(torch.cat([episode.support_images, episode.query_images]))
        prototypes = fewshot.prototypes(
            embeddings[:n_support], episode.support_labels, episode.n_way
        )
        return prototypical_loss(
            embeddings[n_support:],
            episode.query_labels,
            prototypes,
            self.distance,
            self.cosine_scale,
        )


class ZeroShotProtoNet(nn.Module, FewShotMethod):
    """The zero-shot form: prototypes from class metadata, ``c_k = g_phi(v_k)``.

    ``image_encoder`` is f_theta and ``metadata_encoder`` is g_phi (by default a linear map
    from ``metadata_dim`` to ``embedding_dim``). Its "support set" is one metadata vector
    ``(n_way, metadata_dim)`` per class, labelled ``0 .. n_way - 1``; there are no images.
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        metadata_dim: int,
        embedding_dim: int,
        metadata_encoder: nn.Module | None = None,
        distance: str = "euclidean",
    ) -> None:
        nn.Module.__init__(self)
        check_distance(distance)
        validation.whole_number("metadata_dim", metadata_dim, 1)
        validation.whole_number("embedding_dim", embedding_dim, 1)
        self.image_encoder = image_encoder
        self.image_shape = declared_image_shape(image_encoder)
        self.metadata_encoder = (
            metadata_encoder
            if metadata_encoder is not None
            else nn.Linear(metadata_dim, embedding_dim)
        )
        self.distance = distance
        self.prototypes: torch.Tensor | None = None

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return next(self.parameters()).device

    @device.setter
    def device(self, value) -> None:  # evaluation may set it; the module's parameters decide
        pass

    def class_prototypes(self, metadata: torch.Tensor) -> torch.Tensor:
        """``(n_way, embedding_dim)`` prototypes ``g_phi(v_k)`` from metadata ``(n_way, metadata_dim)``."""
        return self.metadata_encoder(metadata.to(self.device).float())

    def loss(
        self, metadata: torch.Tensor, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, accuracy)`` of classifying ``images`` among the classes described by ``metadata``."""
        return prototypical_loss(
            self.image_encoder(images), labels, self.class_prototypes(metadata), self.distance
        )

    def check_support(
        self, support_images, support_labels
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Here the "support images" are the classes' metadata vectors ``(n_way, metadata_dim)``."""
        metadata = validation.vectors(
            "support_images (the metadata vectors)", support_images, device=self.device
        )
        labels = validation.labels(
            "support_labels",
            support_labels,
            len(metadata),
            images_name="support_images",
            device=metadata.device,
        )
        return metadata, labels, int(labels.max()) + 1

    def check_queries(self, query_images) -> torch.Tensor:
        """Images of the shape the image encoder declares; with none declared, any finite input."""
        if self.image_shape is None:
            return validation.vectors("query_images", query_images, device=self.device)
        return validation.images("query_images", query_images, self.image_shape, device=self.device)

    def process_support_set(
        self, support_images: torch.Tensor, support_labels: torch.Tensor
    ) -> None:
        """``support_images`` here are the classes' metadata vectors ``(n_way, metadata_dim)``."""
        self.prototypes = fewshot.prototypes(self.class_prototypes(support_images), support_labels)

    def scores(self, query_images: torch.Tensor) -> torch.Tensor:
        return class_scores(
            self.image_encoder(query_images.to(self.device)), self.prototypes, self.distance
        )


# ----------------------------------------------------------------------------- evaluation on cached embeddings


def episode_accuracy_from_embeddings(
    embeddings: torch.Tensor, episode, distance: str = "euclidean", cosine_scale: float = 1.0
) -> float:
    """Accuracy on one episode, reading support and query embeddings by the episode's image rows.

    ``embeddings`` are :func:`helpers.fewshot.embed_in_batches` of the dataset the episode came from.
    """
    support = embeddings[torch.as_tensor(episode.support_indices, device=embeddings.device)]
    queries = embeddings[torch.as_tensor(episode.query_indices, device=embeddings.device)]
    prototypes = fewshot.prototypes(support, episode.support_labels, episode.n_way)
    predictions = class_scores(queries, prototypes, distance, cosine_scale).argmax(dim=1)
    return float((predictions == episode.query_labels.to(embeddings.device)).float().mean())


def evaluate_from_embeddings(
    embeddings: torch.Tensor,
    episodes,
    distance: str = "euclidean",
    cosine_scale: float = 1.0,
    progress: bool = True,
    desc: str = "evaluating",
):
    """:func:`helpers.fewshot.evaluate` for a ProtoNet whose dataset was embedded once.

    ``episodes`` is any iterable of episodes of the embedded dataset (an
    :class:`~helpers.episodes.EpisodeSampler`'s ``take`` list, or
    :func:`helpers.episodes.sampled_episodes`, which carries no pixels).
    """
    from tqdm.auto import tqdm

    from .fewshot import EvalResult, confidence_interval

    episodes = validation.episodes(episodes)
    accuracies = [
        episode_accuracy_from_embeddings(embeddings, e, distance, cosine_scale)
        for e in tqdm(episodes, desc=desc, disable=not progress, leave=False)
    ]
    if not accuracies:
        raise ValueError("evaluate_from_embeddings needs at least one episode.")
    import numpy as np

    mean, ci95 = confidence_interval(accuracies)
    return EvalResult(mean, ci95, np.array(accuracies))


# ----------------------------------------------------------------------------- zero-shot example data

#: Seven-segment display codes of the digits 0-9: which of the segments a (top), b (upper
#: right), c (lower right), d (bottom), e (lower left), f (upper left) and g (middle) are lit.
#: A class description from another domain (a calculator display), usable as metadata v_k.
SEVEN_SEGMENT = {
    0: "abcdef",
    1: "bc",
    2: "abdeg",
    3: "abcdg",
    4: "bcfg",
    5: "acdfg",
    6: "acdefg",
    7: "abc",
    8: "abcdefg",
    9: "abcdfg",
}


def seven_segment_vectors(digits=range(10)) -> torch.Tensor:
    """``(len(digits), 7)`` 0/1 metadata vectors, one column per segment a..g."""
    return torch.tensor([[float(s in SEVEN_SEGMENT[d]) for s in "abcdefg"] for d in digits])


def train_zero_shot(
    model: ZeroShotProtoNet,
    images: torch.Tensor,
    labels: torch.Tensor,
    metadata: torch.Tensor,
    steps: int,
    per_class: int = 10,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Train f_theta and g_phi together on seen classes; return the loss of each step.

    Each step draws ``per_class`` images of every class in ``metadata`` (rows = classes
    ``0 .. n - 1`` of ``labels``) and classifies them against the prototypes ``g_phi(v_k)``.
    ``images`` is uint8 ``(n, H, W)``.
    """
    from tqdm.auto import tqdm

    steps = validation.whole_number("steps", steps, 1)
    per_class = validation.whole_number("per_class", per_class, 1)
    lr = validation.positive_number("lr", lr, 0.001)
    generator = validation.torch_generator(seed)
    members = [torch.nonzero(labels == k).flatten() for k in range(len(metadata))]
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    device = model.device
    batch_labels = torch.arange(len(metadata)).repeat_interleave(per_class).to(device)
    losses = []
    model.train()
    for _ in tqdm(range(steps), desc="zero-shot training", disable=not progress, leave=False):
        rows = torch.cat(
            [m[torch.randint(len(m), (per_class,), generator=generator)] for m in members]
        )
        batch = images[rows].to(device).unsqueeze(1).float().div_(255.0)
        loss, _ = model.loss(metadata, batch, batch_labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    return losses


# ----------------------------------------------------------------------------- t-SNE map


def tsne_map(
    query_embeddings,
    query_labels,
    prototypes,
    class_names,
    predictions=None,
    random_state: int = 0,
    ax=None,
    class_means=None,
):
    """t-SNE of query embeddings with their prototypes (stars); misclassified queries are
    boxed with an arrow to the prototype of their true class.

    ``query_embeddings (n, dim)``, ``query_labels (n,)``, ``prototypes (n_way, dim)``;
    ``predictions`` (default: nearest prototype). ``class_means (n_way, dim)``, if given, are
    mapped too and drawn as crosses joined to their class's prototype by a dotted line: with one
    shot, how far a star lies from its cross shows how atypical the single support drawing is.
    Returns the axes and the 2-D points (queries, then prototypes, then any class means).
    """
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Rectangle
    from sklearn.manifold import TSNE

    queries = torch.as_tensor(query_embeddings).detach().cpu().float()
    prototypes = torch.as_tensor(prototypes).detach().cpu().float()
    labels = torch.as_tensor(query_labels).cpu().numpy()
    if predictions is None:
        predictions = class_scores(queries, prototypes).argmax(1)
    predictions = torch.as_tensor(predictions).cpu().numpy()
    blocks = [queries.numpy(), prototypes.numpy()]
    if class_means is not None:
        class_means = torch.as_tensor(class_means).detach().cpu().float()
        if class_means.shape != prototypes.shape:
            raise ValueError(
                f"tsne_map: class_means has shape {tuple(class_means.shape)}, "
                f"but the prototypes have {tuple(prototypes.shape)}; give one mean per class."
            )
        blocks.append(class_means.numpy())
    points = np.concatenate(blocks)
    perplexity = min(30.0, (len(points) - 1) / 3)
    xy = TSNE(
        n_components=2, perplexity=perplexity, init="pca", random_state=random_state
    ).fit_transform(points)
    n, n_way = len(queries), len(prototypes)
    query_xy, proto_xy, mean_xy = xy[:n], xy[n : n + n_way], xy[n + n_way :]
    ax = ax or plt.subplots(figsize=(8, 7))[1]
    colours = plt.get_cmap("tab10" if len(prototypes) <= 10 else "tab20")
    span = np.ptp(xy, axis=0).max()
    for k, name in enumerate(class_names):
        mine = labels == k
        ax.scatter(*query_xy[mine].T, s=18, color=colours(k % colours.N), alpha=0.8)
        ax.scatter(
            *proto_xy[k],
            s=320,
            marker="*",
            color=colours(k % colours.N),
            edgecolor="black",
            linewidth=1.2,
            label=name,
            zorder=3,
        )
        if len(mean_xy):
            ax.scatter(
                *mean_xy[k],
                s=90,
                marker="X",
                color=colours(k % colours.N),
                edgecolor="black",
                linewidth=0.8,
                zorder=3,
            )
            ax.plot(
                *np.stack([proto_xy[k], mean_xy[k]]).T,
                ":",
                color=colours(k % colours.N),
                lw=1.5,
                zorder=2,
            )
    box = 0.035 * span
    for i in np.flatnonzero(predictions != labels):
        x, y = query_xy[i]
        ax.add_patch(
            Rectangle(
                (x - box / 2, y - box / 2),
                box,
                box,
                fill=False,
                edgecolor="red",
                linewidth=1.5,
                zorder=4,
            )
        )
        ax.annotate(
            "",
            xy=proto_xy[labels[i]],
            xytext=(x, y),
            arrowprops=dict(arrowstyle="->", color="red", lw=1, alpha=0.8),
            zorder=2,
        )
    ax.set(
        xticks=[],
        yticks=[],
        title="t-SNE of query embeddings (dots) and prototypes (stars); red: misclassified → true prototype"
        + ("\ncrosses: each class's mean over all its drawings" if len(mean_xy) else ""),
    )
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), title="class (prototype)")
    return ax, xy


def support_atypicality(embeddings, labels, episodes):
    """How atypical each class's support set is, and how many of its queries go wrong.

    For every class of every episode: the distance from its prototype to the mean embedding of
    *all* the class's images in the dataset, divided by the average distance of one of its
    images to that mean (so about 1 for a 1-shot prototype that is a typical drawing, more for an
    odd one); and the fraction of its queries that the nearest prototype labels wrongly.
    ``embeddings (n_images, dim)`` are those of the whole dataset (:func:`evaluate_from_embeddings`
    uses the same table), ``labels (n_images,)`` its class labels, ``episodes`` drawn from it
    (each with ``support_indices`` and ``query_indices``). Returns two NumPy arrays, atypicality
    and error rate, with one entry per (episode, class).
    """
    import numpy as np

    embeddings = torch.as_tensor(embeddings).detach().cpu().float()
    labels = torch.as_tensor(np.asarray(labels)).long().cpu()
    if len(labels) != len(embeddings):
        raise ValueError(
            f"support_atypicality: {len(embeddings)} embeddings but {len(labels)} labels."
        )
    means = fewshot.prototypes(embeddings, labels)
    spread = (embeddings - means[labels]).norm(dim=1)
    typical = torch.zeros(len(means)).index_add_(0, labels, spread) / torch.bincount(
        labels, minlength=len(means)
    ).clamp(min=1)
    atypicality, errors = [], []
    for episode in validation.episodes(episodes):
        support_rows = torch.as_tensor(np.asarray(episode.support_indices)).long()
        query_rows = torch.as_tensor(np.asarray(episode.query_indices)).long()
        support_labels = torch.as_tensor(episode.support_labels).cpu().long()
        query_labels = torch.as_tensor(episode.query_labels).cpu().long()
        n_way = int(support_labels.max()) + 1
        protos = fewshot.prototypes(embeddings[support_rows], support_labels)
        predictions = class_scores(embeddings[query_rows], protos).argmax(dim=1)
        classes = torch.empty(n_way, dtype=torch.long)
        classes[support_labels] = labels[support_rows]
        atypicality.append((protos - means[classes]).norm(dim=1) / typical[classes])
        wrong = torch.zeros(n_way).index_add_(
            0, query_labels, (predictions != query_labels).float()
        )
        errors.append(wrong / torch.bincount(query_labels, minlength=n_way).clamp(min=1))
    if not atypicality:
        raise ValueError("support_atypicality needs at least one episode.")
    return torch.cat(atypicality).numpy(), torch.cat(errors).numpy()


# ----------------------------------------------------------------------------- interactive panel


#: What each setting of the ProtoNet panel (:func:`helpers.panels.protonet_training`) may be, and the name a message gives it.
PANEL_CONSTRAINTS = {
    "lr": ("learning rate", validation.Positive(0.001)),
    "episodes": ("episodes", validation.Whole(1)),
    "distance": ("distance", validation.OneOf(*DISTANCES)),
    "train_n_way": ("train N", validation.Whole(2)),
    "test_n_way": ("test N", validation.Whole(2)),
    "k_shot": ("K (shots)", validation.Whole(1)),
}


def check_panel_settings(values: dict, train_dataset, test_dataset, n_query: int) -> None:
    """Raise ``ValueError`` (one sentence) unless the panel's settings can run."""
    from .episodes import check_episode_settings

    for key, (name, constraint) in PANEL_CONSTRAINTS.items():
        constraint.check(name, values[key])
    check_episode_settings(train_dataset, values["train_n_way"], values["k_shot"], n_query)
    check_episode_settings(test_dataset, values["test_n_way"], values["k_shot"], n_query)


# ----------------------------------------------------------------------------- training command


PROG = "python -m helpers.protonet"


def build_parser() -> argparse.ArgumentParser:
    from .commands import Parser, add_run_options

    parser = Parser(
        PROG,
        description="Train a Prototypical Network (Conv-4) on Omniglot with episodes, as in Snell et al. (2017), "
        "and save a checkpoint with its record (.json: command, hardware, time, validation accuracy). "
        "Ctrl-C or SIGTERM saves the run; --resume continues it.",
    )
    parser.add_argument(
        "--n-way", type=int, default=60, help="classes per training episode (paper: 60)"
    )
    parser.add_argument(
        "--k-shot", type=int, default=1, help="support images per class; match the test shot"
    )
    parser.add_argument(
        "--n-query", type=int, default=5, help="query images per class in training episodes"
    )
    parser.add_argument("--episodes", type=int, default=20000, help="training episodes")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument(
        "--lr-step", type=int, default=2000, help="halve the learning rate every this many episodes"
    )
    parser.add_argument("--distance", choices=DISTANCES, default="euclidean")
    parser.add_argument(
        "--cosine-scale", type=float, default=1.0, help="multiplier of the cosine scores"
    )
    parser.add_argument(
        "--train-split",
        default="vinyals-trainval",
        help="Omniglot split to train on (1,200 characters x 4 rotations)",
    )
    parser.add_argument(
        "--val-split", default="vinyals-val", help="Omniglot split for periodic validation"
    )
    parser.add_argument("--val-way", type=int, default=20)
    parser.add_argument("--val-query", type=int, default=15)
    parser.add_argument("--val-episodes", type=int, default=200)
    parser.add_argument("--val-every", type=int, default=500)
    parser.add_argument(
        "--keep",
        choices=("best", "last"),
        default=None,
        help="weights to save; default: 'last' when the validation classes are inside the training split, else 'best'",
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop (validate, save) after this much training time",
    )
    parser.add_argument("--checkpoint", default="data/checkpoints/protonet_omniglot.pt")
    parser.add_argument(
        "--note",
        default="",
        help="free text stored in the checkpoint record (e.g. how busy the machine was)",
    )
    parser.add_argument("--no-progress", action="store_true")
    add_run_options(parser)
    return parser


def validate_arguments(args: argparse.Namespace) -> None:
    """Every argument of the command, checked before any data is loaded (``ValueError``)."""
    from . import commands

    commands.run_options(args)
    commands.positive(args, "lr", example=0.001)
    commands.positive(args, "cosine_scale", example=10)
    commands.positive(args, "max_minutes", example=30)
    for dest in ("episodes", "lr_step", "val_episodes", "val_every"):
        commands.whole(args, dest, 1)
    commands.omniglot_episodes(args.train_split, args.n_way, args.k_shot, args.n_query)
    commands.omniglot_episodes(
        args.val_split,
        args.val_way,
        args.k_shot,
        args.val_query,
        ("--val-way", "--k-shot", "--val-query"),
    )
    commands.writable_target(Path(args.checkpoint))


#: arguments that are not settings of the run (where to save, how to talk)
NOT_SETTINGS = ("checkpoint", "note", "no_progress", "resume", "overwrite", "debug", "started")


def train_command(args: argparse.Namespace, device: torch.device, command: str) -> dict:
    from . import checkpoints, commands
    from .device import hardware_description
    from .episodes import omniglot_dataset, sample_episodes
    from .nets import Conv4
    from .training import DeviceEpisodeSampler, report_validation

    settings = {k: v for k, v in vars(args).items() if k not in NOT_SETTINGS}
    files = commands.RunFiles(args.checkpoint, args, settings)
    torch.manual_seed(args.seed)
    train = omniglot_dataset(args.train_split)
    val = omniglot_dataset(args.val_split)
    overlap = bool(set(train.class_names) & set(val.class_names))
    keep = args.keep or ("last" if overlap else "best")
    settings["keep"] = keep
    encoder = Conv4().to(device)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.lr_step, gamma=0.5)
    sampler = DeviceEpisodeSampler(
        train, args.n_way, args.k_shot, args.n_query, device=device, seed=args.seed
    )
    val_episodes = [
        e.to(device)
        for e in sample_episodes(
            val, args.val_way, args.k_shot, args.val_query, args.val_episodes, seed=12345
        )
    ]
    record = checkpoints.make_record(
        "protonet",
        command=command,
        hardware=hardware_description(device) + (f"; {args.note}" if args.note else ""),
        settings=settings,
        run_id=files.run_id,
        validation=f"{args.val_episodes} episodes {args.val_way}-way {args.k_shot}-shot {args.val_query} queries from {args.val_split}"
        + (
            " (these classes are inside the training split: a monitor, not a held-out score)"
            if overlap
            else " (held-out classes)"
        ),
        note=args.note,
        torch=torch.__version__,
        model="Conv4 (4 x [conv3x3 64, batch norm, ReLU, max-pool 2]) -> 64-d",
    )
    print(
        f"training on {train}\nvalidating on {val} ({'seen' if overlap else 'held-out'} classes); keeping the {keep} weights"
    )
    print(f"command: {command}", flush=True)
    history = commands.episodic_run(
        files,
        args,
        command,
        method=ProtoNet(encoder, args.distance, args.cosine_scale),
        sampler=sampler,
        optimizer=optimizer,
        scheduler=scheduler,
        val_episodes=val_episodes,
        record=record,
        keep=keep,
        device=device,
        on_validation=report_validation,
    )
    wall = commands.wall_seconds(files, args)
    info = {
        "episodes": len(history.episode),
        "wall_seconds": round(wall, 1),
        "episodes_per_second": round(history.episodes_per_second, 2),
        "interrupted": False,
        "checkpoint": str(files.saver.path),
    }
    checkpoints.update_record(
        files.saver.path,
        wall_seconds=round(wall, 1),
        episodes_per_second=info["episodes_per_second"],
        interrupted=False,
        history=history.blocks(50),
        results={"episodes_total": history.n_episodes},
        val_curve={
            "episode": history.val_episode,
            "accuracy": [round(a, 4) for a in history.val_accuracy],
        },
    )
    files.finish()
    print(f"done: {len(history.episode)} episodes in {wall:.0f} s; checkpoint {files.saver.path}")
    return info


def main(argv: list[str] | None = None) -> dict:
    """``python -m helpers.protonet ...``: see ``--help``; every failure is one line (exit status 2)."""
    from .commands import main as run_command

    return run_command(PROG, build_parser(), validate_arguments, train_command, argv)


if __name__ == "__main__":
    main()

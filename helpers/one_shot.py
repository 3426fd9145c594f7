"""One-shot learning with a pretrained embedding: the "employee database" on Omniglot.

The story: a company wants a door camera that recognises its staff. Training a classifier
over the staff would need many photos of each person and a retraining every time someone
joins. Instead we take a network that already learned to tell *many other* faces apart
(here: 964 Omniglot characters of the 30 background alphabets), cut off its softmax layer,
and keep what is left as an embedding ``f``. The database stores one embedding per person;
a new face is identified by its nearest stored embedding. Adding a person costs one photo
and no training at all.

Everything here speaks :class:`helpers.fewshot.FewShotMethod`, so the same episodes measure
the database, the pixel baseline and the "retrain a softmax on the one-shot set" contrast.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import CHECKPOINT_DIR, validation
from .episodes import FewShotDataset, float_images
from .fewshot import (
    FewShotMethod,
    cosine_similarity,
    declared_image_shape,
    embed_in_batches,
    prototypes,
)
from .nets import Conv4

METRICS = ("cosine", "euclidean")
ONE_SHOT_CHECKPOINT = CHECKPOINT_DIR / "oneshot_conv4_background.pt"


def check_metric(metric: str) -> str:
    """``metric`` if it is one of :data:`METRICS`; else one sentence naming it."""
    return validation.one_of("metric", metric, METRICS)


def similarity(queries: torch.Tensor, stored: torch.Tensor, metric: str = "cosine") -> torch.Tensor:
    """``(n_query, n_stored)`` similarity: cosine, or minus the Euclidean distance.

    Higher always means "more alike", so the nearest stored embedding is the ``argmax``.
    """
    check_metric(metric)
    if metric == "cosine":
        return cosine_similarity(queries, stored)
    return -torch.cdist(queries, stored)


# --------------------------------------------------------------------------------------------
# pretraining: an ordinary softmax classifier over the background characters


class SoftmaxClassifier(nn.Module):
    """Conv-4 embedding followed by one linear layer: plain supervised classification.

    ``embed(images)`` is the ``(batch, 64)`` output of Conv-4: after pretraining it is all
    we keep (the linear ``head`` only knew the background classes).
    """

    def __init__(self, n_classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.encoder = Conv4(hidden=hidden)
        self.head = nn.Linear(self.encoder.out_features, n_classes)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(images))


def _shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels (zero padding): cheap augmentation."""
    if max_shift == 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4)
    dx = torch.randint(0, 2 * max_shift + 1, (n, 1, 1), generator=generator)
    dy = torch.randint(0, 2 * max_shift + 1, (n, 1, 1), generator=generator)
    rows = dy + torch.arange(h).view(1, h, 1)
    cols = dx + torch.arange(w).view(1, 1, w)
    return padded[torch.arange(n).view(n, 1, 1), 0, rows, cols].unsqueeze(1)


def split_per_class(
    dataset: FewShotDataset, val_per_class: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of training and validation images: ``val_per_class`` held out of every class."""
    rng = validation.numpy_rng(seed)
    train, val = [], []
    for c in range(dataset.n_classes):
        members = rng.permutation(dataset.members(c))
        val.append(members[:val_per_class])
        train.append(members[val_per_class:])
    return np.concatenate(train), np.concatenate(val)


@dataclass
class PretrainResult:
    model: SoftmaxClassifier
    history: dict[str, list[float]] = field(default_factory=dict)
    val_accuracy: float = float("nan")
    seconds: float = 0.0
    #: when ``should_stop()`` ended training early: everything ``resume=`` needs to go on
    stopped_state: dict | None = None


def pretrain_classifier(
    dataset: FewShotDataset,
    epochs: int = 20,
    lr: float = 1e-3,
    batch_size: int = 128,
    val_per_class: int = 4,
    max_shift: int = 2,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = True,
    max_minutes: float | None = None,
    should_stop=None,
    resume: dict | None = None,
) -> PretrainResult:
    """Train :class:`SoftmaxClassifier` on every class of ``dataset`` (transfer-learning source).

    ``val_per_class`` images of each class are held out to measure ordinary classification
    accuracy (the same classes, unseen drawings) after every epoch. ``max_minutes`` stops
    training after the first epoch that ends past that training time. Returns the model and
    its history. One step of the shared :class:`helpers.training.Loop` is one batch.

    ``should_stop()`` (the command's Ctrl-C and SIGTERM) is checked before every batch; when
    it turns true the result carries ``stopped_state``, and passing that back as ``resume``
    continues from the same batch exactly. A loss that is not finite raises
    :class:`helpers.runs.NonFiniteLoss`.
    """
    from . import runs
    from .training import History, Loop

    validation.whole_number("epochs", epochs, 1)
    validation.positive_number("lr", lr, 0.002)
    validation.whole_number("batch_size", batch_size, 1)
    validation.whole_number("val_per_class", val_per_class, 0, int(dataset.class_sizes().min()) - 1)
    validation.whole_number("max_shift", max_shift, 0)
    torch.manual_seed(validation.seed(seed))
    generator = torch.Generator().manual_seed(seed)
    train_idx, val_idx = split_per_class(dataset, val_per_class, seed)
    images = float_images(dataset.images)
    labels = torch.from_numpy(dataset.labels)
    model = SoftmaxClassifier(dataset.n_classes).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=epochs)
    history: dict[str, list[float]] = {"loss": [], "train accuracy": [], "val accuracy": []}
    batches = -(-len(train_idx) // batch_size)  # per epoch
    first_step, seconds_before = 1, 0.0

    def shuffled():
        return train_idx[torch.randperm(len(train_idx), generator=generator).numpy()]

    if resume is not None:
        model.load_state_dict(resume["model"])
        optimiser.load_state_dict(resume["optimiser"])
        scheduler.load_state_dict(resume["scheduler"])
        generator.set_state(resume["generator"])
        history, seconds_before = resume["history"], float(resume["seconds"])
        order, (total, correct, loss_sum) = resume["order"], resume["sums"]
        first_step = int(resume["epoch"]) * batches + int(resume["next_batch"]) // batch_size + 1
        runs.set_rng_state(resume["rng"])
    else:
        order, total, correct, loss_sum = shuffled(), 0, 0, 0.0  # the first epoch's order

    def step(number: int) -> tuple[float, float]:
        nonlocal order, total, correct, loss_sum
        epoch, b = divmod(number - 1, batches)
        batch = order[b * batch_size : (b + 1) * batch_size]
        x = _shift(images[batch], max_shift, generator).to(device)
        y = labels[batch].to(device)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        value, right = float(loss.detach()), int((logits.argmax(1) == y).sum())
        loss_sum += value * len(batch)
        correct += right
        total += len(batch)
        if b == batches - 1:  # the epoch's last batch
            scheduler.step()
            history["loss"].append(loss_sum / total)
            history["train accuracy"].append(correct / total)
            if (
                epoch + 1 < epochs
            ):  # drawn here, so that a run stopped between epochs has the next one's order
                order, total, correct, loss_sum = shuffled(), 0, 0, 0.0
        return value, right / len(batch)

    def validate(number: int) -> float:
        accuracy = (
            classification_accuracy(model, images[val_idx], labels[val_idx], device)
            if len(val_idx)
            else float("nan")
        )
        history["val accuracy"].append(accuracy)
        if progress:
            print(
                f"epoch {len(history['loss'])}: loss {history['loss'][-1]:.3f}, val accuracy {accuracy:.3f}, "
                f"{loop.elapsed():.0f} s",
                flush=True,
            )
        return accuracy

    stopped: list[dict] = []

    def save_resumable(trained: History) -> None:
        epoch, b = divmod(loop.last_step, batches)
        stopped.append(
            {
                "model": model.state_dict(),
                "optimiser": optimiser.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(),
                "history": history,
                "epoch": epoch,
                "order": torch.as_tensor(order),
                "next_batch": b * batch_size,
                "sums": [total, correct, loss_sum],
                "seconds": trained.seconds,
                "rng": runs.rng_state(),
            }
        )

    loop = Loop(
        epochs * batches - first_step + 1,
        history=History(seconds=seconds_before),
        first_step=first_step,
        validate=validate,
        val_every=batches,
        max_seconds=None if max_minutes is None else 60 * max_minutes,
        budget_every=batches,
        should_stop=should_stop,
        save_resumable=save_resumable,
        progress=progress,
        desc="pretraining",
        leave=True,
    )
    model.train()
    trained = loop.run(step)
    if stopped:
        return PretrainResult(
            model, history, float("nan"), trained.seconds, stopped_state=stopped[0]
        )
    model.eval()
    return PretrainResult(model, history, history["val accuracy"][-1], trained.seconds)


def classification_accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device | str = "cpu",
    batch_size: int = 512,
) -> float:
    """Fraction of ``images`` whose largest logit is their label (in eval mode, in batches)."""
    predictions = embed_in_batches(model, images, batch_size, device).argmax(1).cpu()
    return int((predictions == labels).sum()) / len(images)


def save_encoder(model: SoftmaxClassifier, path: str | Path, record: dict, saver=None) -> dict:
    """Save only the Conv-4 embedding (the head is useless for new classes) and a ``.json``, atomically.

    ``saver`` (a :class:`helpers.checkpoints.Saver`) decides where a command's run may save;
    without one the pair is written at ``path``. Returns the record as written.
    """
    from . import checkpoints

    writer = checkpoints.torch_writer(
        {k: v.detach().cpu().clone() for k, v in model.encoder.state_dict().items()}
    )
    if saver is not None:
        return saver.save(writer, record)
    return checkpoints.write_pair(path, writer, record)


ONE_SHOT_COMMAND = (
    "python -m helpers.one_shot --epochs 30 --batch-size 128 --lr 2e-3 --max-minutes 6"
)


def load_encoder(
    path: str | Path = ONE_SHOT_CHECKPOINT, device: torch.device | str = "cpu"
) -> Conv4:
    """The pretrained Conv-4 embedding, in eval mode, with gradients switched off.

    A missing, truncated or mismatched file raises :class:`helpers.checkpoints.CheckpointError`
    (one sentence: which file, what was expected, the command that makes it).
    """
    from . import checkpoints

    encoder = Conv4()
    checkpoints.load(
        path,
        checkpoints.torch_reader(encoder),
        "a pretrained Conv-4 embedding",
        f"{ONE_SHOT_COMMAND} --out {path}",
    )
    encoder.to(device).eval()
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder


def checkpoint_record(path: str | Path = ONE_SHOT_CHECKPOINT) -> dict:
    """What the ``.json`` beside a checkpoint says: command, hardware, time, accuracy.

    ``wall_time_s`` (the name earlier records used, and notebook 03 reads) is filled in from
    the schema's ``wall_seconds`` when a record has only the latter.
    """
    from . import checkpoints

    record = checkpoints.read_record(path)
    if record is None:
        raise checkpoints.MissingCheckpoint(
            f"no record {checkpoints.record_path(path)}: expected the record of a pretrained "
            f"Conv-4 embedding; make it with `{ONE_SHOT_COMMAND} --out {path}`."
        )
    if "wall_time_s" not in record and record.get("wall_seconds") is not None:
        record["wall_time_s"] = record["wall_seconds"]
    return record


class CachedEncoder(nn.Module):
    """A frozen encoder that remembers the embedding of every image it has seen.

    Evaluation draws the same evaluation images again and again (hundreds of episodes, two
    similarities); with the weights fixed their embeddings never change, so each distinct
    image is run through the network once. A speed trick only: the numbers are identical.
    """

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.out_features = getattr(encoder, "out_features", 64)
        self.memory: dict[bytes, torch.Tensor] = {}

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        keys = [image.cpu().numpy().tobytes() for image in images]
        missing = [i for i, k in enumerate(keys) if k not in self.memory]
        if missing:
            self.encoder.eval()
            fresh = self.encoder(images[missing]).cpu()
            for i, row in zip(missing, fresh):
                self.memory[keys[i]] = row
        return torch.stack([self.memory[k] for k in keys]).to(images.device)


# --------------------------------------------------------------------------------------------
# the database: one stored embedding per class, identification by the nearest one


class EmbeddingDatabase:
    """A database of one (or a few) stored embeddings per class, searched by similarity.

    >>> db = EmbeddingDatabase(encoder, metric="cosine")     # doctest: +SKIP
    >>> db.add("Alice", alice_photo)                         # one image, no training
    >>> db.identify(query_images)                            # names of the nearest entries

    The encoder is never trained here: ``add`` only runs it forward and appends a row.
    """

    def __init__(self, encoder: nn.Module, metric: str = "cosine") -> None:
        check_metric(metric)
        self.encoder, self.metric = encoder, metric
        self.names: list[str] = []
        self.keys = torch.empty(0, getattr(encoder, "out_features", 64))

    def __len__(self) -> int:
        return len(self.names)

    def add(self, name: str, image: torch.Tensor) -> None:
        """Store the embedding of one ``(1, H, W)`` (or ``(1, 1, H, W)``) image under ``name``."""
        image = image.reshape(1, 1, *image.shape[-2:])
        key = embed_in_batches(self.encoder, image).cpu()
        self.keys = torch.cat([self.keys.to(key.dtype), key])
        self.names.append(name)

    def similarities(self, query_images: torch.Tensor) -> torch.Tensor:
        """``(n_query, len(self))`` similarity of each query to each stored entry."""
        if not self.names:
            raise ValueError("the database is empty: add at least one class before identifying.")
        return similarity(
            embed_in_batches(self.encoder, query_images).cpu(), self.keys, self.metric
        )

    def identify(self, query_images: torch.Tensor) -> list[str]:
        """The name of the nearest stored entry for every query."""
        best = self.similarities(query_images).argmax(dim=1)
        return [self.names[i] for i in best.tolist()]

    def ranked(self, query_image: torch.Tensor, top: int = 5) -> list[tuple[int, str, float]]:
        """The ``top`` nearest entries of one query: ``(row, name, similarity)``, best first."""
        sims = self.similarities(query_image.reshape(1, 1, *query_image.shape[-2:]))[0]
        order = sims.argsort(descending=True)[:top]
        return [(int(i), self.names[i], float(sims[i])) for i in order]


class NearestEmbedding(FewShotMethod):
    """The database as a few-shot method: support images are the stored entries.

    With ``k_shot > 1`` each class keeps the mean of its embeddings (for one shot, the single
    embedding). Scores are similarities, so ``predict`` returns the nearest class.
    """

    def __init__(self, encoder: nn.Module, metric: str = "cosine") -> None:
        self.encoder, self.metric = encoder, check_metric(metric)
        self.image_shape = declared_image_shape(encoder)
        self.device = next(encoder.parameters()).device

    def process_support_set(
        self, support_images: torch.Tensor, support_labels: torch.Tensor
    ) -> None:
        self.keys = prototypes(embed_in_batches(self.encoder, support_images), support_labels)

    def scores(self, query_images: torch.Tensor) -> torch.Tensor:
        return similarity(embed_in_batches(self.encoder, query_images), self.keys, self.metric)


class RetrainedSoftmax(FewShotMethod):
    """The contrast: a fresh softmax classifier trained on the support set alone.

    Every episode (every time the "staff list" changes) a new Conv-4 + linear layer is
    trained from scratch for ``steps`` Adam steps on the ``n_way * k_shot`` support images,
    which is all the labelled data there is. With one image per class it memorises them.
    """

    image_shape = (1, 28, 28)  # the Conv-4 of its SoftmaxClassifier

    def __init__(
        self, steps: int = 50, lr: float = 1e-2, device: torch.device | str = "cpu", seed: int = 0
    ) -> None:
        self.steps = validation.whole_number("steps", steps, 1)
        self.lr = validation.positive_number("lr", lr, 0.01)
        self.device, self.seed = torch.device(device), validation.seed(seed)

    def process_support_set(
        self, support_images: torch.Tensor, support_labels: torch.Tensor
    ) -> None:
        torch.manual_seed(self.seed)
        n_way = int(support_labels.max()) + 1
        self.model = SoftmaxClassifier(n_way).to(self.device)
        optimiser = torch.optim.Adam(self.model.parameters(), lr=self.lr)
        self.model.train()
        for _ in range(self.steps):
            loss = F.cross_entropy(self.model(support_images), support_labels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        # batch norm's running averages lag far behind after a few dozen steps; re-estimate
        # them on the support set so evaluation sees the statistics the weights were fitted to
        with torch.no_grad():
            for module in self.model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.reset_running_stats()
                    module.momentum = None  # cumulative average: one pass gives the exact mean
            self.model(support_images)
        self.model.eval()
        self.final_loss = float(loss.detach())

    @torch.no_grad()
    def scores(self, query_images: torch.Tensor) -> torch.Tensor:
        return self.model(query_images).softmax(dim=-1)


def evaluate_lake_runs(method: FewShotMethod, runs: Sequence) -> np.ndarray:
    """Accuracy of ``method`` on each of Lake et al.'s 20-way one-shot runs (one per run)."""
    accuracies = []
    for run in runs:
        support = float_images(run.train_images).to(method.device)
        query = float_images(run.test_images).to(method.device)
        method.process_support_set(support, torch.arange(len(support), device=method.device))
        with torch.no_grad():
            predictions = method.predict(query).cpu().numpy()
        accuracies.append(float((predictions == run.answers).mean()))
    return np.array(accuracies)


PROG = "python -m helpers.one_shot"
NOT_SETTINGS = ("out", "hardware", "no_progress", "resume", "overwrite", "debug", "started")


def build_parser():
    from .commands import Parser, add_run_options

    parser = Parser(
        PROG,
        description="Pretrain the Conv-4 embedding of notebook 03: a softmax classifier over the 964 "
        "Omniglot background characters (or those of the alphabets not held out), saved without its head. Ctrl-C or SIGTERM saves the run; --resume continues it.",
    )
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--val-per-class",
        type=int,
        default=4,
        help="drawings of each character held out for validation",
    )
    parser.add_argument(
        "--max-shift",
        type=int,
        default=2,
        help="random shifts of up to this many pixels (augmentation)",
    )
    parser.add_argument(
        "--hold-out-alphabets",
        type=int,
        default=0,
        help="leave out of training the background alphabets that python -m helpers.siamese "
        "--validation-alphabets N --seed S holds out to choose its best round (N of them; S is "
        "--hold-out-seed), so that a twin whose tower starts from this classifier is chosen on "
        "alphabets it never saw",
    )
    parser.add_argument(
        "--hold-out-seed",
        type=int,
        default=0,
        help="the --seed of the Siamese run whose validation alphabets --hold-out-alphabets leaves out",
    )
    parser.add_argument("--out", default=str(ONE_SHOT_CHECKPOINT))
    parser.add_argument("--max-minutes", type=float, default=None)
    parser.add_argument(
        "--hardware", default=None, help="a note on the machine, added to the recorded hardware"
    )
    parser.add_argument("--no-progress", action="store_true")
    add_run_options(parser)
    parser.set_defaults(threads=1)
    return parser


def validate_arguments(args) -> None:
    from . import commands
    from .episodes import OMNIGLOT_DRAWINGS

    commands.run_options(args)
    commands.positive(args, "lr", example=0.002)
    commands.positive(args, "max_minutes", example=6)
    commands.whole(args, "epochs", 1)
    commands.whole(args, "batch_size", 1)
    commands.whole(args, "val_per_class", 0, OMNIGLOT_DRAWINGS - 1)
    commands.whole(args, "max_shift", 0, 13)
    commands.whole(args, "hold_out_alphabets", 0, 29)
    commands.whole(args, "hold_out_seed", 0, 2**32 - 1)
    commands.writable_target(Path(args.out))


def background_classes(hold_out: int = 0, seed: int = 0) -> tuple[FewShotDataset, list[str]]:
    """Omniglot's background characters, without those of the ``hold_out`` alphabets that
    ``python -m helpers.siamese --validation-alphabets hold_out --seed seed`` validates on;
    and the names of those alphabets (sorted). The draw is that run's first one, made by
    :func:`helpers.episodes.held_out_alphabets` from a generator seeded as it is."""
    from .episodes import held_out_alphabets, omniglot_dataset

    dataset = omniglot_dataset("background")
    alphabets = [name.split("/")[0] for name in dataset.class_names]  # "Alphabet/characterNN"
    held_out = sorted(map(str, held_out_alphabets(alphabets, hold_out, validation.numpy_rng(seed))))
    if not held_out:
        return dataset, []
    kept = [c for c, alphabet in enumerate(alphabets) if alphabet not in held_out]
    return dataset.subset(kept, f"{dataset.name} without {len(held_out)} alphabets"), held_out


def train_command(args, device: torch.device, command: str) -> dict:
    """Train, save (atomically) and record the embedding the arguments describe."""
    import platform

    from . import checkpoints, commands, runs
    from .device import hardware_description

    settings = {k: v for k, v in vars(args).items() if k not in NOT_SETTINGS}
    files = commands.RunFiles(args.out, args, settings)
    dataset, held_out = background_classes(args.hold_out_alphabets, args.hold_out_seed)
    characters = f"{dataset.n_classes} background characters"
    accuracy_key = (
        f"val_accuracy_{dataset.n_classes}_way"  # val_accuracy_964_way without --hold-out-alphabets
    )
    try:
        result = pretrain_classifier(
            dataset,
            args.epochs,
            args.lr,
            args.batch_size,
            args.val_per_class,
            args.max_shift,
            args.seed,
            device=device,
            max_minutes=args.max_minutes,
            progress=not args.no_progress,
            should_stop=runs.stop_requested,
            resume=files.state,
        )
    except runs.NonFiniteLoss as exc:
        raise commands.nonfinite(
            exc, "the learning rate --lr is probably too large", None
        ) from None
    record = checkpoints.make_record(
        "one_shot",
        command=command,
        hardware=hardware_description(device) + (f"; {args.hardware}" if args.hardware else ""),
        settings=settings,
        run_id=files.run_id,
        validation=f"{dataset.n_classes}-way classification of {args.val_per_class} held-out drawings of each of the {characters}",
        val_score=checkpoints.score(result.val_accuracy),
        history={k: [round(v, 4) for v in vals] for k, vals in result.history.items()},
        results={
            "epochs_run": len(result.history["loss"]),
            accuracy_key: round(result.val_accuracy, 4),
        },
        wall_seconds=commands.wall_seconds(files, args),
        train_seconds=result.seconds,
        what=f"Conv-4 embedding of a softmax classifier over the {dataset.n_classes} Omniglot "
        + (
            f"background characters of {30 - len(held_out)} of the 30 background alphabets of "
            f"Lake et al. (held out: the {len(held_out)} validation alphabets of python -m "
            f"helpers.siamese --validation-alphabets {len(held_out)} --seed {args.hold_out_seed}; "
            if held_out
            else "background characters (30 background alphabets of Lake et al.; "
        )
        + "no evaluation alphabet seen)",
        held_out_alphabets=held_out,
        python=platform.python_version(),
        torch=torch.__version__,
        epochs_run=len(result.history["loss"]),
        **{accuracy_key: round(result.val_accuracy, 4) if result.stopped_state is None else None},
        val_note=f"{args.val_per_class} held-out drawings of each of the {characters}",
    )
    if result.stopped_state is not None:
        files.save_state(
            {**result.stopped_state, "wall_seconds": commands.wall_seconds(files, args)}, record
        )
        state = result.stopped_state
        raise files.interrupted(
            f"epoch {state['epoch'] + 1} of {args.epochs} (batch {state['next_batch'] // args.batch_size})",
            command,
            False,
        )
    written = save_encoder(result.model, args.out, record, saver=files.saver)
    files.finish()
    print(
        json.dumps(
            {
                "wall_seconds": written["wall_seconds"],
                accuracy_key: written[accuracy_key],
                "checkpoint": str(files.saver.path),
            }
        )
    )
    return written


def main(argv: Sequence[str] | None = None) -> dict:
    """Train and save the committed checkpoint: ``python -m helpers.one_shot --epochs 12``."""
    from .commands import main as run_command

    return run_command(PROG, build_parser(), validate_arguments, train_command, argv)


if __name__ == "__main__":
    main()

"""Bring the committed checkpoint records (data/checkpoints/*.json) to the one schema of
helpers.checkpoints, once: ``python tools/migrate_checkpoint_records.py``.

Every key a notebook reads is kept; the schema's keys are added in front (method, run id,
the weights' SHA-256, status, wall and training seconds, settings, validation text and score,
history, results, when the weights were committed). The old names for the wall time
(``wall_time_s``) go: ``one_shot.checkpoint_record`` and ``maml_rl.load_policy`` give them
back to the notebooks that read them. Kept, because they mean something else or a notebook
reads the file itself: ``wall_minutes`` (notebook 05 reads the Siamese record directly) and
``maml_seconds`` / ``pretrain_seconds`` (the two phases of the sinusoid run). Running it again
changes nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from helpers import checkpoints  # noqa: E402

FOLDER = ROOT / "data" / "checkpoints"
METHODS = (
    ("protonet_", "protonet"),
    ("matching_", "matching"),
    ("maml_rl_", "maml_rl"),
    ("maml_", "maml"),
    ("oneshot_", "one_shot"),
    ("siamese_", "siamese"),
    ("zeroshot_", "zero_shot"),
)


def committed_at(path: Path) -> str | None:
    done = subprocess.run(
        ["git", "log", "-1", "--format=%cI", "--", path.name],
        cwd=path.parent,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip() or None


def weights_of(json_path: Path) -> Path:
    for suffix in (".pt", ".keras"):
        if json_path.with_suffix(suffix).exists():
            return json_path.with_suffix(suffix)
    raise FileNotFoundError(f"no weights beside {json_path}")


def schema_part(name: str, rec: dict) -> dict:
    """The schema's keys for one legacy record (``name``: the file's stem)."""
    method = next(m for prefix, m in METHODS if name.startswith(prefix))
    wall = rec.get("wall_seconds")
    train = rec.get("train_seconds")
    settings = rec.get("settings") or rec.get("arguments") or {}
    validation = rec.get("validation", "")
    val_score, history, results = None, rec.get("history", {}), {}
    if method in ("protonet", "matching"):
        val_score = checkpoints.score(rec["val_accuracy"], rec.get("val_ci95"), rec.get("episode"))
        if method == "protonet":
            history = {
                "val_episode": rec["val_curve"]["episode"],
                "val_accuracy": rec["val_curve"]["accuracy"],
            }
        results = {
            k: rec[k]
            for k in (
                "episodes_trained",
                "episodes_total",
                "scale",
                "test_accuracy_percent",
                "test_protocol",
            )
            if k in rec
        }
    elif method == "maml" and "sinusoid" in name:
        train = round(rec["maml_seconds"] + rec["pretrain_seconds"], 1)
        test = rec["test"]
        validation = f"test MSE after 1 step at K=5 ({test})"
        val_score = checkpoints.score(
            rec["test_mse"][rec["model"]]["5"][1], metric="mse", higher_is_better=False
        )
        history = {"meta_loss_every_100": rec["meta_loss_every_100"]}
        results = {"test_mse": rec["test_mse"], "meta_steps_done": rec["meta_steps_done"]}
    elif method == "maml":
        s = settings
        queries = min(15, 20 - s["k_shot"])
        validation = f"omniglot/vinyals-val, {rec['val_episodes']} episodes {s['n_way']}-way {s['k_shot']}-shot, {queries} queries per class"
        val_score = checkpoints.score(rec["val_accuracy"], rec["val_ci95"], rec["best_step"])
        results = {"meta_steps_done": rec["meta_steps_done"], "best_step": rec["best_step"]}
    elif method == "maml_rl":
        wall = train = rec["wall_time_s"]  # measured around the training loop
        validation = rec["selection"]
        best = max(rec["selection_curve"], key=lambda point: point[1])
        val_score = checkpoints.score(best[1], step=best[0], metric="return")
        results = {
            k: rec[k]
            for k in ("iterations_done", "kept_iteration", "validation_return_after_steps")
        }
    elif method == "one_shot":
        wall = train = rec["wall_time_s"]  # measured around the training loop
        validation = f"964-way classification of {settings['val_per_class']} held-out drawings of each of the 964 background characters"
        val_score = checkpoints.score(rec["val_accuracy_964_way"])
        results = {
            k: rec[k]
            for k in (
                "epochs_run",
                "val_accuracy_964_way",
                "test_accuracy_percent",
                "test_protocol",
            )
            if k in rec
        }
    elif method == "siamese":
        wall = train = round(60 * rec["wall_minutes"], 1)  # measured around the training rounds
        settings = {
            "minutes": 18.0,
            "learning_rate": rec["learning_rate"],
            "batch_size": rec["batch_size"],
            "seed": rec["seed"],
            "features": 256,
            "validation_alphabets": len(rec["validation_alphabets"]),
        }
        val_score = checkpoints.score(rec["best_validation_20way_accuracy"])
        history = {
            key: [entry.get(key) for entry in rec["log"]]
            for key in ("round", "loss", "pair_accuracy", "val_20way", "minutes")
        }
        results = {
            k: rec[k]
            for k in ("rounds", "best_validation_20way_accuracy", "lake_runs_20way_one_shot")
            if k in rec
        }
    elif method == "zero_shot":
        settings = {"encoder": rec["encoder"]}
        validation = "none: the vectors are the encoder's output, nothing is trained"
    return {
        "schema": checkpoints.SCHEMA_VERSION,
        "method": method,
        "run_id": f"committed-{name}",
        "weights": None,
        "status": "complete",
        "command": rec["command"],
        "hardware": rec["hardware"],
        "wall_seconds": wall,
        "train_seconds": train,
        "settings": settings,
        "validation": validation,
        "val_score": val_score,
        "history": history,
        "results": results,
        "saved_at": None,
    }


def migrate(json_path: Path) -> bool:
    rec = json.loads(json_path.read_text())
    weights = weights_of(json_path)
    if rec.get("schema") == checkpoints.SCHEMA_VERSION:
        new = dict(rec)
    else:
        new = {
            **schema_part(json_path.stem, rec),
            **{k: v for k, v in rec.items() if k not in checkpoints.SCHEMA_KEYS},
        }
        new.pop("wall_time_s", None)
    new["weights"] = {
        "file": weights.name,
        "sha256": checkpoints.file_sha256(weights),
        "bytes": weights.stat().st_size,
    }
    new["saved_at"] = new.get("saved_at") or committed_at(weights)
    text = json.dumps(checkpoints.jsonable(new), indent=2, allow_nan=False) + "\n"
    if text == json_path.read_text():
        return False
    json_path.write_text(text)
    return True


if __name__ == "__main__":
    for path in sorted(FOLDER.glob("*.json")):
        print(f"{path.name}: {'migrated' if migrate(path) else 'already in the schema'}")

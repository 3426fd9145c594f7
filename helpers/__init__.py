"""helpers: the tested package that every notebook of the meta-learning course imports.

Modules, lowest first: the base (``validation``, the declared constraints on parameters,
images and labels, each failure one sentence; ``device``;
``runs``, clean stops, finite losses, random state; ``datasets``; ``checkpoints``, the record
schema and the atomic save / load pair) -> ``episodes`` -> ``fewshot`` (the shared interface,
evaluation, and the ideas several methods share: cosine similarity, prototypes, batched
embedding) -> ``nets`` -> ``training`` -> ``commands`` (the scaffold of the
``python -m helpers.<method>`` training commands) -> ``side_by_side`` -> the methods
(``protonet``, ``matching``, ``maml``, ``maml_rl``, ``one_shot``, ``siamese``, ``zero_shot``)
-> ``plots`` and ``exercises`` -> ``widgets`` -> ``panels`` (every notebook's
interactive panel, one function each). Nothing lower imports anything higher
(``tests/test_layers.py`` checks it).
"""

from pathlib import Path

__version__ = "0.1.0"

#: The committed checkpoints (``data/checkpoints/`` beside ``helpers/``). Notebooks find them
#: here, never through the working directory, so they run from any folder (Colab, nbgrader).
CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "data" / "checkpoints"

#: Where the course lives; the Colab badge and the Colab install cell of every notebook use it.
COURSE_REPO = "https://github.com/meta-learning-course/course"


def show_source(obj) -> object:
    """Display the source of a helpers function or class in a notebook, syntax-highlighted.

    Notebooks call this next to each formula so the reader sees exactly the code that runs.
    """
    import inspect

    from IPython.display import Code

    return Code(inspect.getsource(obj), language="python")

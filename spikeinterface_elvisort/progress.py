"""Progress bars: one per long stage, with a plain name, shown only with ``verbose=True`` and only on a terminal
(tqdm's ``disable=None``: redirected to a file, the bars would become very long lines; the log's stage lines stay)."""

from __future__ import annotations

import sys

# the bar of each training stage (``TrainConfig.stage``), in words
STAGE_NAMES = {
    "vae": "training the beta-VAE",
    "dec": "refining the clusters (DEC)",
    "classifier": "training the classifier",
    "final classifier": "training the classifier on the units",
    "supervised": "training on the given labels",
    "fine-tune": "fine-tuning the classifier",
    "ssae": "training the autoencoders",
    "atom": "training the autoencoders on the clusters",
    "cleaner": "training the noise cleaner",
}


def bar(iterable=None, *, name: str, verbose: bool, total: int | None = None, unit: str = "it"):
    """A tqdm bar named ``name`` (a training stage of :data:`STAGE_NAMES` is put in words), shown when ``verbose``
    and the standard error is a terminal, removed when done."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=STAGE_NAMES.get(name, name), unit=unit, leave=False,
                disable=None if verbose else True)


def on_terminal() -> bool:
    """Whether the standard error is a terminal: SpikeInterface's own bars (``progress_bar``) are shown only then."""
    return bool(getattr(sys.stderr, "isatty", lambda: False)())

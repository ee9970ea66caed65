"""The context-free level of a task: the validation loss of the best model that ignores the context and
predicts from token frequencies alone. A trained model whose loss is not clearly below it has learned
nothing about the context yet.

For text it is the cross-entropy of the tokens the trainer's evaluation scores
(:meth:`~memnets.data.TextTask.val_batches`) under the training split's unigram distribution, add-one
smoothed and counted from up to ``UNIGRAM_TOKENS`` training tokens; for MQAR it is ``ln(vocab_size / 2)``,
uniform over the values an answer can take (:mod:`memnets.data.mqar`).
"""

from __future__ import annotations

import math

import numpy as np

from .mqar import MQARTask
from .text import TextTask

UNIGRAM_TOKENS = 1 << 24


def context_free_loss(task: MQARTask | TextTask, batch_size: int, eval_batches: int) -> float:
    """The context-free validation loss (nats/token) of ``task`` on the batches the trainer evaluates."""
    if isinstance(task, MQARTask):
        return math.log(task.vocab_size // 2)
    train = np.asarray(task.train[: min(len(task.train), UNIGRAM_TOKENS)], dtype=np.int64)
    counts = np.bincount(train, minlength=task.vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    labels = [lab.numpy().ravel() for _, lab in task.val_batches(batch_size, eval_batches)]
    return float(-logp[np.concatenate(labels)].mean())

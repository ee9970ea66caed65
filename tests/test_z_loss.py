"""``train.z_loss`` (PaLM's z-loss, used by ParaRNN): 0 leaves the objective as before, > 0 adds
weight · mean over the predicted tokens of logsumexp(logits)² (written out here), in training only, and
the config check names the key."""

import pytest
import torch
from helpers import ROOT, TINY_MQAR

from memnets.config import load_config
from memnets.trainer import IGNORE, Trainer
from memnets.validation import ConfigError

MQAR = str(ROOT / "configs/mqar/attention.yaml")


def _trainer(tmp_path, *overrides):
    return Trainer(load_config(MQAR, [*TINY_MQAR, "train.steps=1", f"run.dir={tmp_path}", *overrides]))


def test_z_loss_zero_is_the_plain_objective_and_positive_adds_the_term(tmp_path):
    plain, weighted = _trainer(tmp_path / "a"), _trainer(tmp_path / "b", "train.z_loss=0.01")
    try:
        weighted.model.load_state_dict(plain.model.state_dict())
        ids, labels = plain.task.train_batch(0, 8)
        assert (labels == IGNORE).any() and (labels != IGNORE).any()  # the mean must skip ignored positions
        plain.model.train()
        weighted.model.train()
        loss0, aux0 = plain._loss(plain.model, ids, labels)
        loss1, aux1 = weighted._loss(weighted.model, ids, labels)
        assert aux0 is None  # attention has no aux loss: z_loss 0 changes nothing
        torch.testing.assert_close(loss0, loss1)
        with torch.no_grad():
            logits = plain.model(ids).float()
            want = torch.stack(
                [
                    torch.logsumexp(logits[b, t], -1) ** 2
                    for b in range(ids.shape[0])
                    for t in range(ids.shape[1])
                    if labels[b, t] != IGNORE
                ]
            ).mean()
        torch.testing.assert_close(aux1.detach(), 0.01 * want)
        (g,) = torch.autograd.grad(aux1, weighted.model.head.weight)
        assert g.abs().sum() > 0
        weighted.model.eval()  # evaluation losses are the cross-entropy alone
        assert weighted._loss(weighted.model, ids, labels)[1] is None
        assert "aux_loss" in weighted.train_step() and "aux_loss" not in plain.train_step()
    finally:
        plain.close()
        weighted.close()


def test_z_loss_must_be_non_negative():
    with pytest.raises(ConfigError, match="train.z_loss"):
        load_config(MQAR, [*TINY_MQAR, "train.z_loss=-0.1"])

import torch

from memnets.config import MQARConfig
from memnets.data.mqar import IGNORE, TEST_SEED_OFFSET, MQARTask, accuracy_by_pairs, generate_mqar


def test_answers_are_recoverable_from_the_context():
    n, T = 6, 64
    b = generate_mqar(200, T, n, 128, seed=3)
    for ids, labels in zip(b.input_ids, b.labels):
        keys, values = ids[0 : 2 * n : 2], ids[1 : 2 * n : 2]
        assert len(set(keys.tolist())) == n and len(set(values.tolist())) == n
        assert (keys >= 1).all() and (keys < 64).all() and (values >= 64).all() and (values < 128).all()
        pos = (labels != IGNORE).nonzero()[:, 0]
        assert len(pos) == n, "every key is queried exactly once"
        assert (pos >= 2 * n).all()
        for key in keys.tolist():
            assert (ids == key).sum() == 2, "a key appears only in its pair and its query, never as filler"
        pair = dict(zip(keys.tolist(), values.tolist()))
        for p in pos.tolist():
            assert pair[ids[p].item()] == labels[p].item(), (
                "the label is the value paired with the queried key"
            )
            assert ids[p + 1].item() == labels[p].item(), "the answer follows its query in the input"


def test_power_law_puts_queries_near_the_context():
    b = generate_mqar(500, 256, 4, 512, seed=0, power_a=0.01, random_non_queries=False)
    pos = (b.labels != IGNORE).nonzero()[:, 1].float()
    assert pos.median() < 256 / 2, "most queries fall in the first half"


def test_train_and_test_seeds_are_disjoint_and_deterministic():
    cfg = MQARConfig(vocab_size=128, num_kv_pairs=[2, 4], num_test=50)
    task = MQARTask(cfg, seq_len=32, seed=0)
    a, b = task.train_batch(5, 16), task.train_batch(5, 16)
    assert torch.equal(a[0], b[0]), "a batch is a function of (seed, step)"
    assert not torch.equal(task.train_batch(6, 16)[0], a[0])
    test = task.test_set()
    assert test.input_ids.shape == (100, 32) and sorted(test.num_kv_pairs.unique().tolist()) == [2, 4]
    train_rows = {tuple(r) for s in range(200) for r in task.train_batch(s, 16)[0].tolist()}
    assert not any(tuple(r) in train_rows for r in test.input_ids.tolist())
    assert TEST_SEED_OFFSET == 2**31


def test_accuracy_per_number_of_pairs_on_a_hand_built_case():
    labels = torch.tensor([[IGNORE, 5, IGNORE, 6], [7, IGNORE, 8, 9]])
    preds = torch.tensor([[0, 5, 0, 0], [7, 1, 8, 9]])
    pairs = torch.tensor([2, 3])
    acc = accuracy_by_pairs(preds, labels, pairs)
    assert acc == {"accuracy": 4 / 5, "accuracy_kv2": 1 / 2, "accuracy_kv3": 3 / 3}

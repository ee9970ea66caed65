import itertools

import pytest
import torch
from mixer_checks import state_tensors

import memnets
from memnets.model import ModelConfig
from memnets.validation import ConfigError


def tiny(**kw) -> memnets.LM:
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, num_heads=2, **kw)
    return memnets.build_model(cfg)


def test_forward_shapes_and_registry():
    assert "attention" in memnets.list_mixers()
    model = tiny()
    ids = torch.randint(0, 64, (3, 17))
    assert model(ids).shape == (3, 17, 64)


@pytest.mark.parametrize(("window", "positions"), [(None, 0), (5, 0), (None, 32)])
def test_generate_greedy_matches_full_forward_argmax(window, positions):
    model = tiny(mixer_options={"attention": {"window": window}}, max_position_embeddings=positions).eval()
    prompt = torch.randint(0, 64, (2, 7))
    out = model.generate(prompt, max_new_tokens=12, temperature=0.0)
    for t in range(prompt.shape[1], out.shape[1]):
        logits = model(out[:, :t])
        assert torch.equal(out[:, t], logits[:, -1].argmax(-1)), f"token {t} differs from full-forward argmax"


@pytest.mark.parametrize("window", [None, 4])
def test_attention_step_equals_forward(window):
    mixer = memnets.build_mixer("attention", d_model=32, num_heads=4, window=window).double()
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    y, _ = mixer(x)
    state, ys = None, []
    for t in range(x.shape[1]):
        yt, state = mixer.step(x[:, t], state)
        ys.append(yt)
    torch.testing.assert_close(torch.stack(ys, 1), y)
    # a sequence split in two pieces equals one call
    y1, s = mixer(x[:, :6])
    y2, _ = mixer(x[:, 6:], s)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y)


#: a channel-gated variant (``gates: channel``) of each memory family, held to the same contract
CHANNEL_GATED = {
    f"{name}-channel": (name, {"gates": "channel", "gate_rank": 4})
    for name in ("titans", "titans_mac", "titans_mag", "moneta", "yaad", "memora", "omeganet", "atlas", "tnt")
}
MIXERS = {name: (name, {}) for name in memnets.list_mixers()} | CHANNEL_GATED


@pytest.mark.parametrize("lengths", [[3, 0, 4], [6, 1], [7, 0]])
@pytest.mark.parametrize("mixer_id", MIXERS)
def test_packed_equals_each_sequence_alone(mixer_id, lengths):
    """Every mixer: a packed batch (empty sequences included) gives each sequence the output it gets
    alone. The recurrent mixers that return one state for a packed batch return the last sequence's
    own (what running it alone leaves; not every mixer runs an empty sequence alone); gated_deltanet and
    mom return one per sequence (as fla) and attention its cache of the whole stream."""
    torch.manual_seed(0)
    name, options = MIXERS[mixer_id]
    mixer = memnets.build_mixer(name, d_model=32, num_heads=2, **options).double()
    bounds = [0, *itertools.accumulate(lengths)]
    x = torch.randn(1, bounds[-1], 32, dtype=torch.float64)
    with torch.no_grad():
        y, state = mixer(x, cu_seqlens=torch.tensor(bounds))
        alone = [mixer(x[:, lo:hi]) for lo, hi in itertools.pairwise(bounds) if hi > lo]
    torch.testing.assert_close(y, torch.cat([a[0] for a in alone], 1))
    if name in ("attention", "gated_deltanet", "mom") or lengths[-1] == 0:
        return
    got, want = state_tensors(state), state_tensors(alone[-1][1])
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], msg=f"{name}: {key}")


def test_attention_packed_equals_padded():
    mixer = memnets.build_mixer("attention", d_model=16, num_heads=2).double()
    a, b = torch.randn(1, 5, 16, dtype=torch.float64), torch.randn(1, 9, 16, dtype=torch.float64)
    packed, _ = mixer(torch.cat([a, b], 1), cu_seqlens=torch.tensor([0, 5, 14]))
    torch.testing.assert_close(packed[:, :5], mixer(a)[0])
    torch.testing.assert_close(packed[:, 5:], mixer(b)[0])


def test_hybrid_pattern_and_option_errors():
    model = tiny(mixer=["attention", "attention"], mixer_options={"attention": {"window": 3}})
    assert [b.mixer.window for b in model.blocks] == [3, 3]
    with pytest.raises(ConfigError, match="did you mean 'window'"):
        tiny(mixer_options={"attention": {"windo": 3}})
    with pytest.raises(ConfigError, match=r"unknown mixer 'atention'.*did you mean 'attention'"):
        tiny(mixer="atention")
    with pytest.raises(ConfigError, match="window"):
        tiny(mixer_options={"attention": {"window": "big"}})


def test_absolute_positions_are_bounded_and_reset_per_packed_sequence():
    model = tiny(max_position_embeddings=8).eval()
    with pytest.raises(ValueError, match="beyond model.max_position_embeddings=8"):
        model(torch.randint(0, 64, (1, 9)))
    a, b = torch.randint(0, 64, (1, 5)), torch.randint(0, 64, (1, 7))
    packed = model(torch.cat([a, b], 1), cu_seqlens=torch.tensor([0, 5, 12]))
    torch.testing.assert_close(packed[:, 5:], model(b))


def test_auto_backend_logs_why_no_kernel_ran(monkeypatch, caplog):
    """On a device where ``auto`` could run the Triton kernels, a mixer they do not cover logs the
    reason beside the path it runs; an explicit request for an unsupported backend raises."""
    from memnets import dispatch

    monkeypatch.setattr(dispatch, "triton_available", lambda device: True)
    monkeypatch.setattr(dispatch, "_announced", set())
    run = lambda *inputs, **options: (inputs[0], None)
    op = dispatch.MemoryOp("an op", run, run, triton=run, supports=lambda **config: "memory depth 3")
    with caplog.at_level("INFO", logger=dispatch.log.name):
        chosen = dispatch.MemoryDispatch("mixer", op).backend("auto", torch.device("cpu"))
    assert chosen == "chunked"
    assert (
        "running the chunked backend (asked for auto on cpu; the Triton kernels do not cover memory depth 3)"
        in caplog.text
    )
    with pytest.raises(ValueError, match="backend='triton' is not implemented"):
        dispatch.MemoryDispatch("mixer", dispatch.MemoryOp("an op", run, run)).check("triton")


@pytest.mark.parametrize(
    "mixer,chunks",
    [
        ("attention", False),
        ("titans", False),
        ("mom", False),
        ("paragru", False),
        ("titans", True),
        ("omeganet", True),
        ("atlas", True),
        ("yaad", True),
    ],
)
def test_checkpointed_blocks_give_the_same_loss_and_gradients(mixer, chunks):
    """train.activation_checkpointing re-runs each block in the backward, train.memory_recompute each
    memory chunk step (alone and inside a block's re-run): the loss (with the mixers' auxiliary losses,
    which the re-run sets again) and every gradient equal the plain forward's; the re-run repeats the
    same float64 operations in the same order, so they match to round-off."""
    torch.manual_seed(0)
    model = tiny(mixer=mixer).double().train()
    ids = torch.randint(0, 64, (2, 21))
    grads, losses = [], []
    settings = [(False, False), (True, False)] + ([(False, True), (True, True)] if chunks else [])
    for blocks, steps in settings:
        model.checkpoint_blocks, model.recompute_memory_chunks = blocks, steps
        model.zero_grad()
        logits = model(ids)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten())
        if model.aux_loss is not None:
            loss = loss + model.aux_loss
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert len(grads[0]) == len(list(model.parameters()))
    for loss, grad in zip(losses[1:], grads[1:]):
        torch.testing.assert_close(loss, losses[0], rtol=1e-12, atol=0)
        assert grad.keys() == grads[0].keys()
        for name in grads[0]:
            torch.testing.assert_close(grad[name], grads[0][name], rtol=1e-10, atol=1e-12, msg=name)


def test_recomputed_memory_chunks_keep_fewer_tensors():
    """With train.memory_recompute the chunk steps of two Titans layers over 8 chunks save nothing for
    the backward: the storages a saved-tensor hook sees (the checkpoint's own hooks take over inside
    the steps; the chunk-start states the checkpoints hold are not counted here, benchmarks/RESULTS.md
    §28 counts them) shrink to what the rest of the model saves."""
    torch.manual_seed(0)
    model = tiny(mixer="titans").train()
    ids = torch.randint(0, 64, (1, 128))

    def saved_bytes(recompute: bool) -> int:
        model.recompute_memory_chunks = recompute
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(ids).sum()
        return sum(storages.values())

    plain, recomputed = saved_bytes(False), saved_bytes(True)
    assert recomputed < 0.5 * plain, (recomputed, plain)  # 0.37 when written

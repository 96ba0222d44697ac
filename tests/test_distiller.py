"""The batched distiller bank: Adam parity, clipping, independence of groups, NaN resets."""

import pytest
import torch

from core.config import EsampConfig
from core.esamp.distiller import DistillerBank, pretrain, weights_dtype


def reference_distiller(bank: DistillerBank, g: int) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(p[g].clone()) for p in bank.params]


def reference_forward(params, x):
    for b in range(len(params) // 3):
        gate, up, down = params[3 * b: 3 * b + 3]
        x = x + (torch.nn.functional.silu(x @ gate) * (x @ up)) @ down
    return x


def test_one_group_matches_torch_adam_with_grad_clipping():
    cfg = EsampConfig(intermediate=8, distiller="residual")
    bank = DistillerBank(1, 6, cfg, seed=0)
    ref = reference_distiller(bank, 0)
    opt = torch.optim.Adam(ref, lr=cfg.lr, eps=cfg.eps)
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        s, h = torch.randn(1, 3, 6, generator=g), torch.randn(1, 3, 6, generator=g) * 10
        bank.update(bank.forward(s), h, torch.ones(1, 3, dtype=torch.bool))
        loss = (h[0] - reference_forward(ref, s[0])).square().sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref, cfg.grad_clip)
        opt.step()
    for p, q in zip(bank.params, ref):
        assert torch.allclose(p[0], q.detach(), atol=1e-6)


def test_groups_do_not_share_state():
    cfg = EsampConfig(intermediate=8)
    bank = DistillerBank(2, 4, cfg, seed=1)
    before = [p[1].clone() for p in bank.params]
    s, h = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    mask = torch.tensor([[True, True, True], [False, False, False]])  # only group 0 trains
    bank.update(bank.forward(s), h, mask)
    assert all(torch.equal(p[1], b) for p, b in zip(bank.params, before))
    assert bank.steps == [1, 0]


def test_loss_falls_on_a_fixed_mapping():
    bank = DistillerBank(1, 16, EsampConfig(), seed=2)
    g = torch.Generator().manual_seed(2)
    s = torch.randn(1, 8, 16, generator=g)
    h = torch.tanh(s @ torch.randn(16, 16, generator=g))
    losses = [bank.update(bank.forward(s), h, torch.ones(1, 8, dtype=torch.bool))[0].item() for _ in range(200)]
    assert losses[-1] < 0.5 * losses[0]


def test_distillers_in_a_bfloat16_models_dtype_keep_bfloat16_weights_and_learn_as_float32_ones():
    """With ``distiller_dtype="model"`` the weights and Adam state in bfloat16 (the reference's model bank
    keeps the model's dtype), what goes in and out float32, and the same learning as a float32 bank's."""
    model = EsampConfig(distiller_dtype="model")
    assert weights_dtype(model, torch.bfloat16) == torch.bfloat16
    assert weights_dtype(EsampConfig(), torch.bfloat16) == torch.float32  # the default
    assert weights_dtype(model, torch.float32) == weights_dtype(model, torch.float16) == torch.float32
    with pytest.raises(ValueError, match="distiller_dtype"):
        EsampConfig(distiller_dtype="bfloat16")
    g = torch.Generator().manual_seed(2)
    s = torch.randn(1, 8, 64, generator=g)
    h = torch.tanh(s @ torch.randn(64, 64, generator=g) / 8)
    rows = torch.ones(1, 8, dtype=torch.bool)
    curves = {}
    for dtype in (torch.float32, torch.bfloat16):
        bank = DistillerBank(1, 64, EsampConfig(), seed=2, dtype=dtype)
        assert {x.dtype for x in bank.params + bank.m + bank.v} == {dtype}
        assert bank.nbytes_per_distiller == 3 * sum(p[0].numel() for p in bank.params) * dtype.itemsize
        losses = []
        for _ in range(100):
            pred = bank.forward(s)
            assert pred.dtype == torch.float32
            losses.append(bank.update(pred, h, rows)[0].item())
        assert bank.params[0].grad is None and {x.dtype for x in bank.params + bank.m + bank.v} == {dtype}
        curves[dtype] = losses
    f32, bf16 = curves[torch.float32], curves[torch.bfloat16]
    assert f32[-1] < 0.5 * f32[0] and bf16[-1] < 0.5 * bf16[0]
    assert all(abs(a - b) <= 0.05 * a for a, b in zip(f32, bf16))  # the same curve, to bfloat16's roundings


def test_a_runs_distillers_follow_its_models_dtype():
    from core.esamp.head import LMHead
    from core.esamp.steerer import Steerer

    weight = torch.randn(40, 8)  # a head in each dtype stands for a model in it: the dtype is what is tested
    default, model = EsampConfig(between_words=False), EsampConfig(distiller_dtype="model", between_words=False)
    for dtype, cfg, want in [(torch.bfloat16, default, torch.float32), (torch.bfloat16, model, torch.bfloat16),
                             (torch.float32, model, torch.float32)]:
        steerer = Steerer(1, 2, LMHead(weight.to(dtype)), cfg, 1.0)
        assert steerer.bank.dtype == want and {p.dtype for p in steerer.bank.params} == {want}


def test_a_non_finite_loss_resets_only_that_distiller_and_is_counted():
    bank = DistillerBank(2, 4, EsampConfig(intermediate=8), seed=3)
    s, h = torch.randn(2, 2, 4), torch.randn(2, 2, 4)
    h[1, 0, 0] = float("nan")
    keep = [p[0].clone() for p in bank.params]
    loss, bad = bank.update(bank.forward(s), h, torch.ones(2, 2, dtype=torch.bool))
    assert bad.tolist() == [False, True]
    bank.handle_bad(bad)
    assert bank.resets.tolist() == [0, 1]
    assert all(torch.isfinite(p).all() for p in bank.params)
    assert not all(torch.equal(p[0], k) for p, k in zip(bank.params, keep))  # group 0 did learn
    assert bank.steps == [1, 0]


def test_memory_per_distiller_is_small():
    # 2 blocks x 3 matrices x 576 x width floats, times 3 (weights, Adam m and v), 4 bytes each
    assert DistillerBank(1, 576, EsampConfig(), seed=0).nbytes_per_distiller == 2 * 3 * 576 * 64 * 3 * 4
    bank = DistillerBank(1, 576, EsampConfig(intermediate=384), seed=0)
    assert bank.nbytes_per_distiller == 2 * 3 * 576 * 384 * 3 * 4


def test_the_default_design_predicts_in_hs_space_and_starts_at_the_final_norm_of_s():
    """normed: h_hat = final_norm(x + blocks(x)) with x = 16 s / rms(s), down projections at 0 at first."""
    from core.esamp.distiller import DESIGNS
    from core.esamp.head import FinalNorm

    norm = FinalNorm(torch.tensor([1.0, 2.0, 3.0, 4.0]), eps=1e-6)
    bank = DistillerBank(1, 4, EsampConfig(intermediate=8), seed=4, norm=norm)
    assert bank.design == DESIGNS["normed"] and all(not p[0].any() for p in bank.params[2::3])
    s = torch.randn(1, 3, 4) * 50  # a raw residual stream: large
    torch.testing.assert_close(bank.forward(s).detach(), norm(s))  # RMS norm ignores the scale of x
    h = torch.randn(1, 3, 4)
    for _ in range(3):
        bank.update(bank.forward(s), h, torch.ones(1, 3, dtype=torch.bool))
    x = 16 * s / s.square().mean(-1, keepdim=True).add(1e-6).sqrt()
    expected = norm(reference_forward([p[0] for p in bank.params], x[0]))
    torch.testing.assert_close(bank.forward(s).detach()[0], expected, rtol=1e-5, atol=1e-5)


def test_every_named_design_exists():
    from core.config import DISTILLERS
    from core.esamp.distiller import DESIGNS

    assert set(DESIGNS) == set(DISTILLERS)


def test_a_bank_starts_every_group_from_the_initial_weights_and_a_reset_returns_there():
    cfg = EsampConfig(intermediate=8)
    g = torch.Generator().manual_seed(4)
    m = torch.randn(6, 6, generator=g)  # a fixed map the pretraining can learn
    s = torch.randn(200, 6, generator=g)
    h = torch.tanh(s @ m)
    initial = pretrain(s, h, cfg, steps=50)
    bank = DistillerBank(3, 6, cfg, seed=2, initial=initial)
    assert all(torch.equal(p[k], w) for p, w in zip(bank.params, initial) for k in range(3))
    bank.update(bank.forward(s[None, :4].expand(3, -1, -1)), h[None, :4].expand(3, -1, -1),
                torch.ones(3, 4, dtype=torch.bool))  # every group moves away from it, on its own rows
    assert not torch.equal(bank.params[0][0], initial[0])
    bank.handle_bad(torch.tensor([False, True, False]))  # a NaN reset of group 1: back to the start
    assert torch.equal(bank.params[0][1], initial[0]) and not torch.equal(bank.params[0][0], initial[0])
    with torch.no_grad():  # pretrained on the map: it predicts unseen states of it better than a fresh one
        unseen = torch.randn(1, 50, 6, generator=g)
        errors = [(DistillerBank(1, 6, cfg, seed=2, initial=w).forward(unseen)[0] - torch.tanh(unseen[0] @ m)).norm()
                  for w in (initial, None)]
    assert errors[0] < errors[1]


def test_initial_weights_of_another_shape_are_refused():
    initial = pretrain(torch.randn(20, 6), torch.randn(20, 6), EsampConfig(intermediate=8), steps=1)
    import pytest

    with pytest.raises(ValueError, match="do not fit this design and width"):
        DistillerBank(1, 6, EsampConfig(intermediate=16), initial=initial)


def _step_alone(bank: DistillerBank, s, h, mask):
    loss, bad = bank.update(bank.forward(s), h, mask)
    bank.handle_bad(bad)
    return loss


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("order", [("a", "b"), ("b", "a")])  # slots in one range (views), or not (copies)
def test_runs_sharing_a_bank_learn_exactly_as_with_banks_of_their_own(order, dtype):
    """Two leases of different sizes (groups, rows), stepped together (one forward, one update), a third
    that joins later in a released lease's slots: each distiller's weights, Adam steps, losses and NaN
    resets are those of a DistillerBank of its own with the same seed, to the weights' roundings."""
    from core.esamp.distiller import SharedBank

    cfg = EsampConfig(intermediate=8)
    shared = SharedBank(6, cfg, dtype=dtype)
    runs = {"a": (2, 3, 11), "b": (1, 5, 12)}  # groups, rows a group, seed
    leases = {k: shared.lease(g, seed) for k, (g, _, seed) in runs.items()}
    own = {k: DistillerBank(g, 6, cfg, seed=seed, dtype=dtype) for k, (g, _, seed) in runs.items()}
    gen = torch.Generator().manual_seed(0)
    for step in range(6):
        data = {k: (torch.randn(g, m, 6, generator=gen), torch.randn(g, m, 6, generator=gen) * 3,
                    torch.rand(g, m, generator=gen) > 0.3) for k, (g, m, _) in runs.items()}
        if step == 2:
            data["a"][1][1] = float("nan")  # run a's second distiller gets a non-finite loss: reset, counted
        if step == 3:
            data["b"][2][:] = False  # run b trains on no row this step: no Adam step
        shared.predict([(leases[k], data[k][0]) for k in order])
        losses = {}
        for k in runs:
            s, h, mask = data[k]
            losses[k] = leases[k].update(leases[k].forward(s), h, mask)
        shared.learn()
        for k in runs:
            leases[k].handle_bad(losses[k][1])
            expected = _step_alone(own[k], *data[k])
            torch.testing.assert_close(losses[k][0], expected, equal_nan=True)
    for k in runs:
        for mine, theirs in zip(leases[k].params, own[k].params):
            torch.testing.assert_close(mine, theirs)
        assert leases[k].steps == own[k].steps and leases[k].resets.tolist() == own[k].resets.tolist()
    assert leases["a"].resets.tolist() == [0, 1]

    slots = leases["a"].slots
    leases["a"].release()
    late = shared.lease(2, 13)  # takes the freed slots, fresh: as a new bank of its own
    assert late.slots == slots and late.resets.tolist() == [0, 0] and late.steps == [0, 0]
    for mine, theirs in zip(late.params, DistillerBank(2, 6, cfg, seed=13, dtype=dtype).params):
        assert torch.equal(mine, theirs)


def test_a_shared_bank_grows_and_lets_its_storage_go_when_the_last_run_ends():
    from core.esamp.distiller import SharedBank

    shared = SharedBank(4, EsampConfig(intermediate=8))
    leases = [shared.lease(3, seed) for seed in range(3)]
    assert shared.leased == 9 and shared.groups >= 9 and len({s for x in leases for s in x.slots}) == 9
    with pytest.raises(RuntimeError, match="predicts in its bank's step"):
        leases[0].forward(torch.zeros(3, 2, 4))  # a shared distiller is only stepped with the others
    for lease in leases:
        lease.release()
        lease.release()  # once only
    assert shared.leased == 0 and shared.groups == 0 and shared.params[0].numel() == 0
    del lease, leases
    fresh = shared.lease(1, 0)
    assert shared.leased == 1 and fresh.slots == [0]


def test_a_prediction_whose_update_runs_elsewhere_makes_no_graph():
    """With the update off the critical path (a worker thread here, a CUDA side stream on GPUs) the step's
    prediction is made with no autograd graph: the update recomputes its own, and a graph of the main
    stream still alive at its backward made torch warn of an extra stream synchronisation on the H100."""
    from core.esamp.candidates import Candidates
    from core.esamp.head import LMHead
    from core.esamp.steerer import Steerer

    g = torch.Generator().manual_seed(0)
    head = LMHead(torch.randn(40, 8, generator=g))
    steerer = Steerer(1, 3, head, EsampConfig(beta=1.0, between_words=False, overlap=True), 1.0)
    assert steerer.background is not None
    for step in range(3):
        s, h = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
        cand = Candidates.from_filtered(head.logits(h), filters_active=False)
        steerer.propose(cand, s, h, torch.full((3,), step + 1))
        pred = steerer._step.pred
        assert pred.grad_fn is None and not pred.requires_grad
        assert not any(p.requires_grad for p in steerer.bank.params)
        before = [p.clone() for p in steerer.bank.params]
        steerer.learn(torch.ones(3, dtype=torch.bool))
        steerer.settle()
        assert any(not torch.equal(a, b) for a, b in zip(before, steerer.bank.params))  # it still trains
    bank = steerer.bank
    s = torch.randn(1, 3, 8, generator=g)
    assert torch.equal(bank.infer(s), bank.forward(s).detach())  # the same prediction, without the graph

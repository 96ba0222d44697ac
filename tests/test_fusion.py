"""ESamp's fusion and signals on hand-made tensors."""

import math
from dataclasses import replace

import torch

import core.esamp.candidates as candidates
from core.esamp.budget import bounded, kl
from core.esamp.candidates import EXACT_TOP, TIE_SLACK, TOP_P_ROWS, TOP_P_WIDTHS, Candidates, select
from core.esamp.filters import MinP, StepFilters, TopK, TopP, apply_filters, build_filters
from core.esamp.fusion import fuse, level, novelty
from core.esamp.head import LMHead
from core.esamp.signals import PendingSignals, base_logprobs

INF = float("inf")


def step_signals(cand, fused, raw, tokens, top=5):
    return PendingSignals(cand, fused, None, None, raw, top).resolve(tokens)


def head_3x2():
    # V=3 tokens, H=2: token 0 points along x, token 1 along y, token 2 along -x.
    return LMHead(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))


def test_fusion_adds_beta_times_w_dot_error_over_temperature():
    head = head_3x2()
    h = torch.tensor([[2.0, 1.0]])
    h_hat = torch.tensor([[1.0, 1.0]])  # e = (1, 0)
    T, beta = 2.0, 0.5
    l_ref = head.logits(h) / T  # [1, 0.5, -1]
    cand = Candidates.from_filtered(l_ref, filters_active=False)
    out = fuse(cand, h, h_hat, head, beta, T)
    # w.e = [1, 0, -1]; change = beta * w.e / T = [0.25, 0, -0.25]
    assert torch.allclose(out, torch.tensor([[1.25, 0.5, -1.25]]))


def test_fusion_equals_the_closed_form_1_plus_beta_l_ref_minus_beta_l_dist():
    g = torch.Generator().manual_seed(0)
    W, b = torch.randn(50, 8, generator=g), torch.randn(50, generator=g)
    head = LMHead(W, b)
    h, h_hat = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    T, beta = 0.7, 0.25
    l_ref, l_dist = head.logits(h) / T, head.logits(h_hat) / T
    out = fuse(Candidates.from_filtered(l_ref, False), h, h_hat, head, beta, T)
    assert torch.allclose(out, (1 + beta) * l_ref - beta * l_dist, atol=1e-5)


def test_softcapped_head_uses_the_closed_form_on_capped_logits():
    g = torch.Generator().manual_seed(1)
    head = LMHead(torch.randn(30, 6, generator=g) * 5, softcap=3.0)
    h, h_hat = torch.randn(2, 6, generator=g), torch.randn(2, 6, generator=g)
    l_ref, l_dist = head.logits(h), head.logits(h_hat)
    out = fuse(Candidates.from_filtered(l_ref, False), h, h_hat, head, 0.4, 1.0)
    assert torch.allclose(out, 1.4 * l_ref - 0.4 * l_dist, atol=1e-5)


def test_tokens_outside_the_candidate_set_stay_impossible():
    g = torch.Generator().manual_seed(2)
    head = LMHead(torch.randn(1000, 16, generator=g))
    h, h_hat = torch.randn(3, 16, generator=g), torch.randn(3, 16, generator=g)
    l_ref = head.logits(h)
    filtered = l_ref.masked_fill(l_ref < torch.topk(l_ref, 7).values[:, -1:], -INF)  # top-7
    cand = Candidates.from_filtered(filtered, filters_active=True)
    assert cand.ids.shape == (3, 7)  # candidate-only projection: 7 rows of W per row, not 1000
    full = cand.dense(fuse(cand, h, h_hat, head, 1.0, 1.0))
    assert torch.equal(torch.isfinite(full), torch.isfinite(filtered))
    # and on the candidates it agrees with the full-vocabulary computation
    dense = fuse(Candidates.from_filtered(filtered, False), h, h_hat, head, 1.0, 1.0)
    assert torch.allclose(full[torch.isfinite(full)], dense[torch.isfinite(dense)], atol=1e-4)


def test_rows_with_fewer_survivors_are_padded_with_impossible_candidates():
    filtered = torch.full((2, 20), -INF)  # survivors: two in row 0, one in row 1
    filtered[0, :2] = torch.tensor([0.0, 1.0])
    filtered[1, 0] = 0.0
    cand = Candidates.from_filtered(filtered, filters_active=True)
    assert cand.ids.shape == (2, 2)
    assert math.isinf(cand.logits[1, 1]) and cand.logits[1, 1] < 0
    head = LMHead(torch.eye(20, 2))
    out = fuse(cand, torch.ones(2, 2), torch.zeros(2, 2), head, 0.5, 1.0)
    assert math.isinf(out[1, 1])


def test_a_non_finite_prediction_leaves_the_row_unguided():
    head = head_3x2()
    h = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    h_hat = torch.tensor([[float("nan"), 0.0], [0.0, 0.0]])
    l_ref = head.logits(h)
    out = fuse(Candidates.from_filtered(l_ref, False), h, h_hat, head, 1.0, 1.0)
    assert torch.equal(out[0], l_ref[0])
    assert not torch.equal(out[1], l_ref[1])


def test_novelty_is_the_error_norm_and_its_ratio_to_h():
    err, rel = novelty(torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 0.0]]))
    assert err.tolist() == [5.0] and rel.tolist() == [1.0]


def test_step_signals_on_a_two_token_distribution():
    # reference p = [0.5, 0.5]; fused p = [0.8, 0.2]; the chosen token is 0.
    ref = torch.tensor([[0.0, 0.0]])
    fused = torch.tensor([[math.log(0.8), math.log(0.2)]])
    sig = step_signals(Candidates(None, ref), fused, ref, torch.tensor([0]), top=3)
    assert math.isclose(sig["logp_ref"].item(), math.log(0.5), rel_tol=1e-6)
    assert math.isclose(sig["logp_new"].item(), math.log(0.8), rel_tol=1e-6)
    assert math.isclose(sig["entropy_ref"].item(), math.log(2), rel_tol=1e-6)
    # H = -(0.8 ln 0.8 + 0.2 ln 0.2) = 0.5004
    assert math.isclose(sig["entropy_new"].item(), 0.50040242, rel_tol=1e-5)
    # KL(new || ref) = 0.8 ln(0.8 / 0.5) + 0.2 ln(0.2 / 0.5) = 0.3760 - 0.1833 = 0.1927
    assert math.isclose(sig["kl"].item(), 0.19274, rel_tol=1e-4)
    assert sig["top_ids"].tolist() == [[0, 1, -1]]  # padded to `top` with id -1
    assert torch.allclose(sig["top_p_new"], torch.tensor([[0.8, 0.2, 0.0]]))


def test_logp_base_is_under_the_unfiltered_model_at_t1():
    # T=0.5 and top-k 2 leave tokens 0 and 1; the base log p of token 1 is over all four raw logits.
    raw = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    filtered = apply_filters(build_filters(temperature=0.5, top_k=2), raw)
    cand = Candidates.from_filtered(filtered, True)
    sig = step_signals(cand, cand.logits, raw, torch.tensor([1]))
    assert math.isclose(sig["logp_base"].item(), 1.0 - torch.logsumexp(raw, -1).item(), rel_tol=1e-6)
    assert math.isclose(sig["logp_ref"].item(), math.log(1 / (1 + math.exp(2.0))), rel_tol=1e-6)  # (2-4) = -2


def test_every_recorded_signal_is_a_token_field_and_the_step_computes_each():
    from core.trace import TOKEN_SIGNALS

    assert set(TOKEN_SIGNALS) == {"logp_ref", "logp_new", "logp_base", "entropy_ref", "entropy_new", "novelty",
                                  "rel_novelty", "kl"}
    ref = torch.tensor([[0.0, 1.0]])
    assert set(step_signals(Candidates(None, ref), ref, ref, torch.tensor([1]))) >= set(TOKEN_SIGNALS)


def test_a_top_k_bound_gives_the_same_candidates_as_counting_and_keeps_ties():
    torch.manual_seed(0)
    raw = torch.randn(3, 50)
    filtered = apply_filters(build_filters(top_k=5, top_p=0.6), raw)  # top-p leaves some rows fewer than 5
    counted, bounded = Candidates.from_filtered(filtered, True), Candidates.from_filtered(filtered, True, bound=5)
    assert bounded.ids.shape == (3, 5)
    for r in range(3):  # the same finite candidates; the bound only pads more -inf
        assert set(counted.ids[r][counted.logits[r].isfinite()].tolist()) == \
            set(bounded.ids[r][bounded.logits[r].isfinite()].tolist())
    tied = torch.tensor([[3.0, 2.0, 2.0] + [1.0] * 20])  # top-k 2 keeps both tokens tied at 2.0
    cand = Candidates.from_filtered(apply_filters(build_filters(top_k=2), tied), True, bound=2)
    assert sorted(cand.ids[0].tolist()) == [0, 1, 2]


def test_top_k_candidates_straight_from_the_raw_logits_equal_filtering_first():
    torch.manual_seed(1)
    raw = torch.randn(4, 300) * 3
    for temperature in (1.0, 0.7):
        filters = build_filters(temperature=temperature, top_k=20)
        slow = Candidates.from_filtered(apply_filters(filters, raw), True, bound=20)
        fast = Candidates.top_k(raw, 20, temperature)
        assert torch.equal(fast.dense(fast.logits), slow.dense(slow.logits))  # the same tensor to sample from
        assert torch.equal(fast.dense(fast.logits), apply_filters(filters, raw))
    # A tie with the k-th value keeps the tied tokens too, in that row only; the others pad with -inf.
    tied = torch.tensor([[3.0, 2.0, 2.0] + [1.0] * 20, [5.0, 4.0, 3.0] + [0.0] * 20])
    for temperature in (1.0, 0.7):
        cand = Candidates.top_k(tied, 2, temperature)
        filtered = apply_filters(build_filters(temperature=temperature, top_k=2), tied)
        assert cand.ids.shape == (2, 3) and torch.equal(cand.dense(cand.logits), filtered)
    out = torch.randn(2, 23)  # the model's logits, once read: the tensor to sample from is written into them
    assert cand.dense(cand.logits, out) is out and torch.equal(out, filtered)
    many = torch.tensor([[3.0] + [2.0] * 30])  # ties past 4k tokens: filter the full logits
    assert Candidates.top_k(many, 2) is None
    # Ties running past the first window (k + TIE_SLACK) but not past 4k: a second, wider pass.
    k = 2 * TIE_SLACK
    long_tie = torch.cat([torch.arange(200.0, 200.0 - k + 1, -1), torch.full((k,), 1.0), torch.zeros(1000)])[None]
    cand = Candidates.top_k(long_tie, k)
    assert cand.ids.shape == (1, 2 * k - 1)
    assert torch.equal(cand.dense(cand.logits), apply_filters(build_filters(top_k=k), long_tie))
    assert Candidates.top_k(raw, 200) is None  # most of the vocabulary: a full projection is cheaper


def test_top_p_candidates_straight_from_the_raw_logits_equal_filtering_first():
    """Top-p alone takes its candidates a few rows at a time from the raw logits (no (R, V) temporary):
    the same tensor to sample from as filtering all of them first, at any temperature. Each row's nucleus
    is looked for among its likeliest tokens stage by stage (``TOP_P_WIDTHS``), a row wider than the last
    stage is filtered the long way alone, and one that holds most of the vocabulary sends the step to the
    full logits."""
    torch.manual_seed(3)
    rows = 2 * TOP_P_ROWS + 3  # more than one slice, and a short last one
    raw = torch.randn(rows, 5000) * torch.linspace(2.5, 8.0, rows)[:, None]  # nuclei of hundreds to a few
    for temperature in (1.0, 0.7):
        step = StepFilters.of(temperature=temperature, top_p=0.9)
        fast = Candidates.top_p(raw, step.first, temperature)
        assert fast is not None and fast.ids.shape[1] < 1024
        assert torch.equal(fast.dense(fast.logits), apply_filters(step.filters, raw))
        assert torch.equal(select(step, raw).ids, fast.ids)  # select takes the shortcut
    torch.manual_seed(4)
    # nuclei of a few tokens (the first stage), ~2,400 and ~1,300 (the last), ~4,700 (past it: the long way)
    raw = torch.randn(5, 20000) * torch.tensor([6.0, 2.5, 5.0, 2.0, 3.0])[:, None]
    raw[0, 0] = raw[0].max() + 1  # row 0's likeliest token has id 0, the id the narrower stages pad with
    for temperature in (1.0, 0.8):  # (the same nuclei at each: raw * T / T)
        step, tempered = StepFilters.of(temperature=temperature, top_p=0.9), raw * temperature
        sizes = torch.isfinite(apply_filters(step.filters, tempered)).sum(-1).tolist()
        assert sizes[0] < TOP_P_WIDTHS[0] and TOP_P_WIDTHS[-2] < min(sizes[1], sizes[4])
        assert max(sizes[1], sizes[4]) < TOP_P_WIDTHS[-1] < sizes[3]
        long_way = []
        step.first.sorted = lambda x, f=step.first.sorted: long_way.append(len(x)) or f(x)
        mixed = Candidates.top_p(tempered, step.first, temperature)
        assert mixed is not None and mixed.ids.shape[1] > TOP_P_WIDTHS[-1] and long_way == [1]
        assert torch.equal(mixed.dense(mixed.logits), apply_filters(step.filters, tempered))
        assert mixed.ids[0, 0] == 0 and mixed.ids[0, -1] == 0  # padding with a candidate's id, written by none
    flat = torch.cat([raw[:3], torch.randn(1, 20000) * 0.5])  # a nucleus of most of the vocabulary
    assert Candidates.top_p(flat, step.first, 0.8) is None
    slow = select(step, flat)
    assert torch.equal(slow.dense(slow.logits), apply_filters(step.filters, flat))


def test_min_p_and_filters_after_the_first_run_on_its_candidates_as_on_the_whole_vocabulary(monkeypatch):
    """Min-p alone takes its candidates straight from the raw logits (the tokens near enough to the top),
    and with several filters the first one's candidates go through the others: the same tensor to sample
    from as filtering the whole vocabulary, at any temperature, with no (R, V) filtering on the way."""
    torch.manual_seed(5)
    raw = torch.randn(2 * TOP_P_ROWS + 3, 5000) * torch.linspace(3.0, 8.0, 2 * TOP_P_ROWS + 3)[:, None]
    full = []  # the widths apply_filters sees: never the whole vocabulary's
    spy = candidates.apply_filters
    monkeypatch.setattr(candidates, "apply_filters", lambda filters, x: full.append(x.shape[-1]) or spy(filters, x))
    for settings in (dict(min_p=0.1), dict(min_p=0.02), dict(min_p=1.0), dict(top_k=50, top_p=0.9),
                     dict(top_k=50, min_p=0.1), dict(top_k=500, top_p=0.5, min_p=0.05), dict(top_p=0.9, min_p=0.1)):
        for temperature in (1.0, 0.7):
            step = StepFilters.of(temperature=temperature, **settings)
            full.clear()
            cand = select(step, raw)
            assert cand.ids is not None and 5000 not in full, settings
            assert torch.equal(cand.dense(cand.logits), spy(step.filters, raw)), (settings, temperature)
    step = StepFilters.of(min_p=0.1)
    assert isinstance(step.first, MinP) and step.rest == ()
    assert [type(f) for f in (StepFilters.of(top_k=5, top_p=0.9, min_p=0.1).first,
                              *StepFilters.of(top_k=5, top_p=0.9, min_p=0.1).rest)] == [TopK, TopP, MinP]
    # A token at the bound's last bit is the rule's to decide: one float32 step under T log(min_p) below the
    # top, which the rule's own arithmetic keeps (a shortcut without MIN_P_SLACK left it out).
    top = 13.37
    under = torch.nextafter(torch.tensor(top + 1.3 * math.log(0.25)), torch.tensor(-math.inf))
    edge = torch.cat([torch.tensor([top]), under[None], torch.full((38,), -80.0)])[None]
    kept = spy(build_filters(temperature=1.3, min_p=0.25), edge)
    cand = select(StepFilters.of(temperature=1.3, min_p=0.25), edge)
    assert torch.isfinite(kept[0, 1]) and cand.ids is not None and torch.equal(cand.dense(cand.logits), kept)
    flat = torch.zeros(2, 400)  # every token ties with the top: most of the vocabulary, filter it whole
    assert Candidates.min_p(flat, MinP(0.1)) is None
    whole = select(StepFilters.of(min_p=0.1), flat)
    assert whole.ids is None and torch.equal(whole.logits, flat)


def test_a_bfloat16_heads_candidates_get_float32_logits_and_base_log_probs():
    torch.manual_seed(2)
    weight = torch.randn(400, 16).bfloat16()
    head, h = LMHead(weight), torch.randn(3, 16) * 4
    raw = (h.bfloat16() @ weight.T).float()  # what a bfloat16 model hands over: bfloat16 values
    exact32 = h @ weight.float().T  # float32 throughout
    for temperature in (1.0, 0.7):
        cand = Candidates.top_k(raw, 20, temperature).exact(head, h, temperature, raw)
        assert torch.allclose(cand.logits, exact32.gather(-1, cand.ids) / temperature, atol=1e-5)
        want = exact32.gather(-1, cand.ids) - torch.logsumexp(exact32, -1, keepdim=True)
        # the candidates' own mass is float32; the other 380 tokens' comes from the bfloat16 logits
        assert torch.allclose(base_logprobs(raw, cand), want, atol=2e-3)
        assert (base_logprobs(raw, Candidates.top_k(raw, 20, temperature)) - want).abs().max() > 5e-3
        # A row's padding, however wide and whatever it repeats (top-p pads with token 0 past its guess),
        # moves no candidate's log p: a run padded to a wider row elsewhere records the same numbers.
        kept = torch.isfinite(cand.logits)
        for pad_ids in (torch.zeros(3, 40, dtype=torch.long), torch.arange(360, 400).expand(3, 40)):
            pad = torch.full((3, 40), -INF)
            wide = Candidates(torch.cat([cand.ids, pad_ids], -1), torch.cat([cand.logits, pad], -1), cand.vocab,
                              torch.cat([cand.base, raw.gather(-1, pad_ids)], -1))
            assert torch.allclose(base_logprobs(raw, wide)[:, :cand.ids.shape[1]][kept],
                                  base_logprobs(raw, cand)[kept], atol=1e-5, rtol=0)
    # No filter: the most likely tokens of each row float32, the rest the model's own rounding.
    whole = Candidates.from_filtered(raw, filters_active=False).exact(head, h, 1.0, raw)
    top = torch.topk(raw, EXACT_TOP, dim=-1).indices
    assert torch.allclose(whole.logits.gather(-1, top), exact32.gather(-1, top), atol=1e-5)
    assert torch.equal(whole.logits.scatter(-1, top, 0.0), raw.scatter(-1, top, 0.0))
    # the likely tokens' log p: float32 values over a normaliser whose tail carries only the rounding
    assert torch.allclose(base_logprobs(raw, whole).gather(-1, top), torch.log_softmax(exact32, -1).gather(-1, top),
                          atol=2e-3)
    f32 = Candidates.top_k(raw, 20)
    assert f32.exact(LMHead(weight.float()), h, 1.0, raw) is f32  # a float32 model's logits are exact already


def test_base_log_probs_reuse_top_ps_log_sum_exp_and_agree_with_their_own_pass(monkeypatch):
    """Top-p's first stage sums every row's whole vocabulary at T = 1 (``Candidates.lse``), so the trace's
    log p under the model takes no pass of its own: the same values, within float32's rounding of the
    whole, for a float32 model and for a bfloat16 one (float32 candidates, the rest from the model's own)."""
    import core.esamp.signals as signals

    torch.manual_seed(6)
    for dtype in (torch.float32, torch.bfloat16):
        weight = torch.randn(3000, 16).to(dtype)
        rows = 2 * TOP_P_ROWS + 3  # nuclei of a few tokens to hundreds
        head, h = LMHead(weight), torch.randn(rows, 16) * torch.linspace(1.0, 4.0, rows)[:, None]
        raw = (h.to(dtype) @ weight.T).float()
        step = StepFilters.of(top_p=0.9)
        cand = select(step, raw).exact(head, h, 1.0, raw)
        assert cand.lse is not None and (cand.base is None) == (dtype == torch.float32)
        passes = []
        monkeypatch.setattr(signals, "_logsumexp_rows", lambda *a, f=signals._logsumexp_rows, **k: passes.append(1)
                            or f(*a, **k))
        reused = base_logprobs(raw, cand)
        assert passes == []
        own = base_logprobs(raw, replace(cand, lse=None))
        assert len(passes) == 1
        kept = torch.isfinite(cand.logits)
        assert torch.allclose(reused[kept], own[kept], atol=1e-5, rtol=0)  # a few float32 steps at most
        monkeypatch.undo()
    assert select(StepFilters.of(temperature=0.7, top_p=0.9), raw).lse is None  # tempered: not the model's own


def test_the_packed_projection_computes_only_the_kept_entries_and_agrees_with_the_dense_one():
    """Top-p or min-p leave most of a padded (R, K), or of the whole vocabulary, empty: the fusion
    projects only the candidates (one row of W per kept entry), the same values as the dense paths."""
    torch.manual_seed(3)
    for dtype in (torch.float32, torch.bfloat16):
        head, x = LMHead(torch.randn(3000, 16).to(dtype)), torch.randn(4, 16)
        keep = torch.rand(4, 3000) < 0.02  # 2% of the vocabulary: packed
        whole = head.project(x, None, keep)  # float32 math on the model's weights, like the candidates' gather
        assert torch.allclose(whole[keep], (x @ head.weight.float().T)[keep], rtol=1e-5, atol=1e-4)
        assert not whole[~keep].any()  # never computed
        ids = torch.stack([torch.randperm(3000)[:200] for _ in range(4)])
        some = torch.zeros(4, 200, dtype=torch.bool)
        some[:, :30] = True  # a padded (R, K) with most entries padding
        assert torch.allclose(head.project(x, ids, some)[some], head.project(x, ids)[some], rtol=1e-5, atol=1e-5)
        assert torch.allclose(head.project(x, ids, torch.ones_like(some)), head.project(x, ids))  # most kept: dense
        two = torch.stack([x, -2 * x])  # two vectors a row (the fusion's e rides along), a row by row and packed
        by_row, packed = (head._project_kept(two, some, ids, by_row=b) for b in (True, False))
        assert torch.allclose(by_row, packed, rtol=1e-5, atol=1e-5) and not by_row[:, ~some].any()
        alone = head._project_kept(two[:, 1:2], some[1:2], ids[1:2], by_row=True)  # a row's values: its own only
        assert torch.equal(alone[:, 0], by_row[:, 1])
    # fusion under top-p: candidates only, the same fused logits as projecting everything
    raw = torch.randn(4, 3000) * 3
    cand = select(StepFilters.of(top_p=0.5), raw)
    e = torch.randn(4, 16)
    fused = fuse(cand, e, torch.zeros(4, 16), head, 0.5, 1.0)
    dense = cand.logits + 0.5 * head.project(e, cand.ids)
    assert torch.allclose(fused[torch.isfinite(fused)], dense[torch.isfinite(dense)], rtol=1e-4, atol=1e-3)
    assert torch.equal(torch.isfinite(fused), torch.isfinite(cand.logits))


def test_the_budget_bounds_each_rows_push_and_leaves_the_paper_fusion_where_it_does_not_bind():
    # Two tokens, p_ref = [0.5, 0.5], the error pointing at token 0 with w.e / T = [2, -2] per unit of β.
    # At β = 1: p_new ∝ [e^2, e^-2] = [0.982, 0.018], KL = 0.982 ln(1.964) + 0.018 ln(0.036) = 0.603 nats.
    head = LMHead(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    h, h_hat = torch.tensor([[0.0, 1.0]]), torch.tensor([[-2.0, 1.0]])  # e = (2, 0)
    cand = Candidates.from_filtered(head.logits(h), filters_active=False)  # [0, 0]
    paper = fuse(cand, h, h_hat, head, 1.0, 1.0)
    assert torch.allclose(paper, torch.tensor([[2.0, -2.0]]))
    kl_paper = kl(torch.log_softmax(paper, -1), torch.log_softmax(cand.logits, -1))
    assert math.isclose(kl_paper.item(), 0.603, abs_tol=1e-3)
    assert torch.equal(fuse(cand, h, h_hat, head, 1.0, 1.0, max_kl=0.7), paper)  # 0.603 <= 0.7: not bound
    bound = fuse(cand, h, h_hat, head, 1.0, 1.0, max_kl=0.1)
    moved = kl(torch.log_softmax(bound, -1), torch.log_softmax(cand.logits, -1)).item()
    assert 0.1 - 1e-3 < moved <= 0.1  # bound: as far as the budget lets it, never further
    assert bound[0, 0] > 0 > bound[0, 1]  # the same direction, a smaller step
    assert torch.equal(fuse(cand, h, h_hat, head, 1.0, 1.0, max_kl=0.0), cand.logits)  # ε = 0: no push at all
    assert torch.equal(fuse(cand, h, h_hat, head, 0.0, 1.0, max_kl=0.1), cand.logits)  # β = 0: none either


def test_the_budget_holds_on_every_row_of_a_filtered_batch():
    g = torch.Generator().manual_seed(3)
    head = LMHead(torch.randn(200, 16, generator=g))
    h, h_hat = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g) * 3  # untrained: large errors
    l_ref = head.logits(h)
    filtered = l_ref.masked_fill(l_ref < torch.topk(l_ref, 20).values[:, -1:], -INF)
    cand = Candidates.from_filtered(filtered, filters_active=True)
    for eps in (0.05, 0.3, 1.0):
        fused = fuse(cand, h, h_hat, head, 2.0, 1.0, max_kl=eps)
        moved = kl(torch.log_softmax(fused, -1), torch.log_softmax(cand.logits, -1))
        assert (moved <= eps + 1e-6).all() and (moved > 0).all()
        assert torch.equal(torch.isfinite(fused), torch.isfinite(cand.logits))  # the candidates stay the candidates
    # β_t is the largest within the budget: a looser budget never pushes less
    pushes = [kl(torch.log_softmax(fuse(cand, h, h_hat, head, 2.0, 1.0, max_kl=e), -1),
                 torch.log_softmax(cand.logits, -1)) for e in (0.05, 0.3, 1.0)]
    assert (pushes[0] <= pushes[1] + 1e-6).all() and (pushes[1] <= pushes[2] + 1e-6).all()


def entropy(logits):
    return -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).nan_to_num().sum(-1)


def test_a_push_along_the_reference_logits_is_a_temperature_and_leveling_takes_all_of_it_out():
    # A distiller that predicts the mean state: l_dist flat, so δ = β (l_ref - l_dist) is l_ref scaled and
    # shifted, and the paper's fusion is π_ref^(1+β) (normalised): the same tokens at a lower temperature.
    l_ref = torch.tensor([[2.0, 1.0, 0.0, -INF], [0.5, -0.5, -1.0, -3.0]])
    delta = torch.where(torch.isfinite(l_ref), 0.7 * l_ref + 5.0, torch.zeros_like(l_ref))
    assert (entropy(l_ref + delta) < entropy(l_ref)).all()  # sharper
    leveled = level(l_ref, delta)
    kept = torch.isfinite(l_ref)
    assert torch.allclose(torch.log_softmax(l_ref + leveled, -1)[kept], torch.log_softmax(l_ref, -1)[kept], atol=1e-5)
    assert torch.equal(leveled[~kept], torch.zeros(1))  # outside the candidates: nothing


def test_leveling_keeps_the_entropy_to_first_order_and_moves_mass_as_the_push_does():
    g = torch.Generator().manual_seed(4)
    l_ref = torch.randn(16, 40, generator=g) * 2
    l_ref[:, 30:] = -INF  # a filter's impossible tokens
    delta = torch.where(torch.isfinite(l_ref), torch.randn(16, 40, generator=g) + 0.8 * l_ref, torch.zeros(1))
    leveled = level(l_ref, delta)
    t = 1e-3  # dH/dt at t = 0: -Cov_p(δ, l), which leveling makes 0
    rate = (entropy(l_ref + t * leveled) - entropy(l_ref - t * leveled)) / (2 * t)
    paper_rate = (entropy(l_ref + t * delta) - entropy(l_ref - t * delta)) / (2 * t)
    assert rate.abs().max() < 1e-3 < paper_rate.abs().min()
    # what is left is the push's own part: uncorrelated with l_ref, the rest of δ unchanged
    other = torch.where(torch.isfinite(l_ref), torch.randn(16, 40, generator=g), torch.zeros(1))
    other = level(l_ref, other)
    assert torch.allclose(level(l_ref, other), other, atol=1e-5)  # leveling twice: the same
    assert torch.allclose(level(l_ref, other + 3 * torch.where(torch.isfinite(l_ref), l_ref, torch.zeros(1))),
                          other, atol=1e-4)


def test_the_leveled_fusion_is_bounded_too_and_one_candidate_is_left_alone():
    g = torch.Generator().manual_seed(5)
    head = LMHead(torch.randn(200, 16, generator=g))
    h, h_hat = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g) * 3
    l_ref = head.logits(h)
    filtered = l_ref.masked_fill(l_ref < torch.topk(l_ref, 20).values[:, -1:], -INF)
    cand = Candidates.from_filtered(filtered, filters_active=True)
    fused = fuse(cand, h, h_hat, head, 2.0, 1.0, max_kl=0.2, keep_entropy=True)
    moved = kl(torch.log_softmax(fused, -1), torch.log_softmax(cand.logits, -1))
    assert (moved <= 0.2 + 1e-6).all() and (moved > 0).all()
    assert torch.equal(torch.isfinite(fused), torch.isfinite(cand.logits))
    one = Candidates.from_filtered(l_ref.masked_fill(l_ref < l_ref.max(-1, keepdim=True).values, -INF), True)
    assert torch.equal(fuse(one, h, h_hat, head, 2.0, 1.0, keep_entropy=True), one.logits)


def test_unguided_rows_sample_from_the_models_own_logits_in_bfloat16_and_record_float32():
    """β = 0 is the model's own sampling in every dtype: a bfloat16 model's candidates are recorded with
    float32 values (Candidates.exact), but an unguided row samples from the model's own logits."""
    from core.config import EsampConfig, RunConfig, SamplingConfig
    from core.esamp.steerer import Pipeline

    g = torch.Generator().manual_seed(5)
    head = LMHead(torch.randn(300, 16, generator=g).to(torch.bfloat16),  # a bfloat16 head: not exact
                  starts=torch.rand(300, generator=g) < 0.6)
    h = torch.randn(4, 16, generator=g)
    raw = (h.to(torch.bfloat16) @ head.weight.T).float()  # (R, V) the model's own logits, bfloat16 values
    sampling = SamplingConfig(n=2, top_k=0, top_p=0.9, temperature=0.8)
    want = apply_filters(build_filters(temperature=0.8, top_p=0.9), raw)
    for config in (RunConfig(method="plain", sampling=sampling),  # β = 0, its distiller in shadow
                   RunConfig(method="plain", sampling=sampling, esamp=EsampConfig(shadow=False)),
                   RunConfig(sampling=sampling, esamp=EsampConfig(beta=1.0, warmup_steps=3))):  # held: warm-up
        pipeline = Pipeline(config, head, prompts=2)
        prop = pipeline.propose(raw, torch.randn(4, 16, generator=g), h, torch.full((4,), 2))
        assert not torch.equal(prop.cand.logits, raw.gather(-1, prop.cand.ids) / 0.8)  # recorded: float32
        assert torch.equal(pipeline.to_sample(prop), want), config.method  # sampled: the model's own
        pipeline.learn(torch.ones(4, dtype=torch.bool))


def test_between_words_the_push_moves_word_starts_only_within_the_budget():
    g = torch.Generator().manual_seed(6)
    head = LMHead(torch.randn(200, 16, generator=g))
    h, h_hat = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g) * 3  # untrained: large errors
    l_ref = head.logits(h)
    cand = Candidates.from_filtered(l_ref.masked_fill(l_ref < torch.topk(l_ref, 20).values[:, -1:], -INF), True)
    starts = torch.rand(cand.logits.shape, generator=g) < 0.6
    starts[0] = False  # a row where every candidate continues a word: left as it is
    p_ref = torch.softmax(cand.logits, -1)
    for eps, leveled in ((0.05, False), (0.3, True), (1.0, True)):
        fused = fuse(cand, h, h_hat, head, 2.0, 1.0, max_kl=eps, keep_entropy=leveled, starts=starts)
        p_new = torch.softmax(fused, -1)
        moved = kl(torch.log_softmax(fused, -1), torch.log_softmax(cand.logits, -1))
        assert (moved <= eps + 1e-6).all() and (moved[1:] > 0).all() and torch.equal(fused[0], cand.logits[0])
        # every piece that continues a word keeps its own probability; the word starts keep their total
        assert torch.allclose(torch.where(starts, 0, p_new), torch.where(starts, 0, p_ref), atol=1e-6)
        assert torch.allclose((p_new * starts).sum(-1), (p_ref * starts).sum(-1), atol=1e-5)
        assert torch.equal(torch.isfinite(fused), torch.isfinite(cand.logits))
    # unbounded with every candidate a word start: the fusion itself (as log-probabilities)
    everywhere = torch.ones_like(starts)
    assert torch.allclose(torch.softmax(fuse(cand, h, h_hat, head, 1.0, 1.0, starts=everywhere), -1),
                          torch.softmax(fuse(cand, h, h_hat, head, 1.0, 1.0), -1), atol=1e-5)
    for beta, eps in ((0.0, 0.3), (1.0, 0.0)):  # β = 0 and ε = 0: exactly the reference
        assert torch.equal(fuse(cand, h, h_hat, head, beta, 1.0, max_kl=eps, starts=starts), cand.logits)


def test_bounded_takes_one_budget_per_row():
    g = torch.Generator().manual_seed(7)
    ref, direction = torch.randn(6, 30, generator=g) * 2, torch.randn(6, 30, generator=g) * 3
    budgets = torch.tensor([0.0, 0.05, 0.1, 0.3, 1.0, 100.0])
    t = bounded(ref, direction, 2.0, budgets)
    moved = kl(torch.log_softmax(ref + t[:, None] * direction, -1), torch.log_softmax(ref, -1))
    assert (moved <= budgets + 1e-6).all() and t[0] == 0 and t[-1] == 2.0
    assert torch.equal(bounded(ref[1:2], direction[1:2], 2.0, 0.05), t[1:2])  # a row's own budget, as alone


def test_a_beta_and_a_bound_per_row_fuse_each_row_as_its_own_scalars_do():
    """A β ladder stepped as one run: each row's β and bound (as tensors) give that row exactly what
    fusing it alone with its own numbers gives; a row at β = 0 comes back as it went in."""
    g = torch.Generator().manual_seed(8)
    head = LMHead(torch.randn(200, 16, generator=g))
    h, h_hat = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g) * 3
    l_ref = head.logits(h)
    cand = Candidates.from_filtered(l_ref.masked_fill(l_ref < torch.topk(l_ref, 20).values[:, -1:], -INF), True)
    starts = torch.rand(cand.logits.shape, generator=g) < 0.6
    betas, bounds = [0.0, 0.0, 0.25, 0.25, 0.5, 0.5, 1.5, 1.5], [0.0, 0.0, 0.1, 0.1, 0.2, 0.2, 0.6, 0.6]
    for words in (None, starts):
        for with_bound, leveled in ((False, False), (True, False), (True, True)):
            kl_rows = torch.tensor(bounds) if with_bound else None
            fused = fuse(cand, h, h_hat, head, torch.tensor(betas), 0.7, max_kl=kl_rows, keep_entropy=leveled,
                         starts=words)
            for r, (b, k) in enumerate(zip(betas, bounds)):
                if b == 0:
                    continue
                one = Candidates(cand.ids[r:r + 1], cand.logits[r:r + 1], cand.vocab)
                alone = fuse(one, h[r:r + 1], h_hat[r:r + 1], head, b, 0.7, max_kl=k if with_bound else None,
                             keep_entropy=leveled, starts=None if words is None else words[r:r + 1])
                assert torch.allclose(fused[r:r + 1], alone, atol=1e-5, rtol=0), (r, words is None, with_bound)
            assert not torch.isnan(fused).any()
            at_zero = fused[:2] if words is None else torch.log_softmax(fused[:2], -1)
            want = cand.logits[:2] if words is None else torch.log_softmax(cand.logits[:2], -1)
            assert torch.allclose(at_zero, want, atol=1e-6)  # β = 0: no push


def _nuclei(g, rows: int, vocab: int, widths: list[int]) -> Candidates:
    """Padded candidates whose rows hold ``widths[r]`` tokens each (a top-p step's ragged nuclei)."""
    logits = torch.full((rows, max(widths)), -INF)
    for r, w in enumerate(widths):
        logits[r, :w] = torch.sort(torch.randn(w, generator=g) * 2, descending=True).values
    ids = torch.stack([torch.randperm(vocab, generator=g)[:max(widths)] for _ in range(rows)])
    return Candidates(ids, logits, vocab)


def test_rows_fuse_at_their_own_width_as_they_would_padded_to_the_widest(monkeypatch):
    """Under top-p one wide nucleus pads every row to its width; the fusion works on groups of rows at
    the width they need (``Candidates.by_width``), and each row comes out as the padded block gives it."""
    g = torch.Generator().manual_seed(9)
    assert _nuclei(g, 2, 2000, [5, 1100]).by_width() is None  # too small a block to split
    monkeypatch.setattr(candidates, "GROUP_ELEMENTS", 0)  # split this one, a few rows wide
    head = LMHead(torch.randn(2000, 16, generator=g))
    widths = [3, 40, 128, 129, 300, 1100, 7, 60]
    cand = _nuclei(g, len(widths), 2000, widths)
    groups = cand.by_width()
    assert {w: sorted(rows.tolist()) for rows, w in groups} == {128: [0, 1, 2, 6, 7], 512: [3, 4], 1100: [5]}
    assert _nuclei(g, 2, 2000, [5, 200]).by_width() is None  # no width under half of K: as it is
    h, h_hat = torch.randn(8, 16, generator=g), torch.randn(8, 16, generator=g) * 3
    starts = torch.rand(cand.logits.shape, generator=g) < 0.6
    beta = torch.tensor([0.25, 0.5, 1.0, 1.5] * 2)
    for kwargs in (dict(), dict(max_kl=beta * 0.4, keep_entropy=True, starts=starts)):
        fused = fuse(cand, h, h_hat, head, beta, 0.9, **kwargs)
        assert torch.equal(torch.isfinite(fused), torch.isfinite(cand.logits))
        for r in range(len(widths)):  # each row alone, at the block's full width
            one = Candidates(cand.ids[r:r + 1], cand.logits[r:r + 1], cand.vocab)
            alone = fuse(one, h[r:r + 1], h_hat[r:r + 1], head, beta[r:r + 1], 0.9,
                         **{k: v[r:r + 1] if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()})
            assert torch.allclose(fused[r:r + 1], alone, atol=1e-5, rtol=0), r


def test_pushes_of_several_runs_fuse_together_as_each_alone():
    """An engine step's runs fuse as one block (``together``): every run's rows come back at its own
    width, as its own push gives them; pushes of another kind (one β for every row) fuse on their own."""
    from core.esamp.fusion import Push, together

    g = torch.Generator().manual_seed(10)
    head = LMHead(torch.randn(3000, 16, generator=g))

    def push(widths, beta, max_kl):
        cand = _nuclei(g, len(widths), 3000, widths)
        rows = len(widths)
        return Push(cand, torch.randn(rows, 16, generator=g), torch.randn(rows, 16, generator=g) * 3, head, beta, 1.0,
                    None, max_kl, True, torch.rand(cand.logits.shape, generator=g) < 0.6)

    pushes = [push([5, 50, 20], torch.tensor([0.25, 0.5, 1.0]), torch.tensor([0.1, 0.2, 0.4])),
              push([700, 9], torch.tensor([1.0, 0.25]), torch.tensor([0.4, 0.1])),
              push([30, 31, 2, 200], 0.5, 0.2),  # one β for every row: fused on its own
              push([1, 64], torch.tensor([0.5, 0.5]), torch.tensor([0.2, 0.2]))]
    for push_, got in zip(pushes, together(pushes)):
        assert got.shape == push_.cand.logits.shape
        assert torch.allclose(got, push_.run(), atol=1e-5, rtol=0)
        assert torch.equal(torch.isfinite(got), torch.isfinite(push_.cand.logits))
    assert [p.kind() for p in pushes].count(pushes[0].kind()) == 3

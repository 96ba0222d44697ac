"""The fork from plain sampling on hand-made traces (a known fork position), and on real ladders of
the embedded model on both backends: a fork only ever falls where fusion changed the distribution."""

import pytest

from core import RunConfig, SamplingConfig, beta_ladder
from core.trace import Candidate, PromptTrace, RunTrace, Sample, Timings, Token
from viz.charts import fork_figure
from viz.fork import fork_position, fork_sentence, forks


def tok(i: int, moved: bool = False) -> Token:
    return Token(id=i, text=f" w{i}", logp_ref=-1.0, logp_new=-0.5 if moved else -1.0, entropy_ref=1.0,
                 entropy_new=1.0, novelty=0.3, rel_novelty=0.9, top=[Candidate(i, f" w{i}", 0.4, 0.6)])


def trace(config: RunConfig, answers: list[list[int]], moved_from: int = 99) -> RunTrace:
    samples = [Sample(0, k, "".join(f" w{i}" for i in ids), "length",
                      [tok(i, moved=j >= moved_from) for j, i in enumerate(ids)]) for k, ids in enumerate(answers)]
    return RunTrace(config=config, model="m", backend="transformers", device="cpu", dtype="float32",
                    prompts=[PromptTrace("p", 3)], samples=samples, timings=Timings(1.0, 1, 1.0))


LADDER = beta_ladder(RunConfig(sampling=SamplingConfig(n=3, max_new_tokens=5, seed=4)), [0, 1])


def test_the_fork_is_the_first_token_that_differs():
    assert fork_position([1, 2, 3], [1, 2, 4]) == 2
    assert fork_position([1, 2, 3], [1, 2, 3]) is None
    assert fork_position([1, 2], [1, 2, 3]) == 2 and fork_position([], [5]) == 0  # one answer ended first


def test_forks_of_a_hand_made_ladder():
    plain = trace(LADDER[0], [[1, 2, 3, 4, 5], [1, 2, 3, 4, 5], [7, 8, 9]])
    esamp = trace(LADDER[1], [[1, 2, 6, 6, 6], [1, 2, 3, 4, 5], [7, 8, 9, 10]], moved_from=1)
    found = forks(plain, esamp)
    assert [f.position for f in found] == [2, None, 3]
    first = found[0]
    assert first.prefix == " w1 w2" and (first.plain.id, first.esamp.id) == (3, 6)
    assert first.esamp.top[0].p_new == 0.6  # the candidates at the fork, before and after fusion
    assert found[2].plain is None and found[2].esamp.id == 10  # plain had ended; ESamp went on
    assert fork_sentence("β = 1", found) == ("β = 1: 2 of 3 answers part from plain sampling's, at a median "
                                             "token 3.5 (earliest 3, latest 4); 1 stays the same throughout.")
    assert "all 3 answers are plain" in fork_sentence("β = 1", forks(plain, plain))
    one = (trace(LADDER[0], [[1, 2, 3]]), trace(LADDER[1], [[1, 2, 6]], moved_from=1))  # n = 1: one answer
    assert fork_sentence("β = 1", forks(*one)) == "β = 1: its answer parts from plain sampling's at token 3."
    assert fork_sentence("β = 1", forks(one[0], one[0])).startswith("β = 1: its answer is plain sampling's")
    fig = fork_figure({"β = 1": found}, warmup=2)
    assert list(fig.data[0].x) == [3, 4] and fig.layout.shapes[0].x1 == 3.5  # warm-up shaded to token 3
    assert fig.layout.xaxis.dtick == 1  # whole tokens, no tick between two


def test_runs_of_different_seeds_have_no_fork():
    other = beta_ladder(RunConfig(sampling=SamplingConfig(n=3, max_new_tokens=5, seed=5)), [1])[0]
    with pytest.raises(ValueError, match="same prompts, seed and sampling"):
        forks(trace(LADDER[0], [[1]]), trace(other, [[1]]))


def test_real_forks_fall_where_fusion_moved_the_distribution(lm, check_forks):
    check_forks(lm, held=4)


def test_the_answers_tree_of_a_hand_made_run():
    from viz.charts import tree_figure
    from viz.tree import answer_tree, layout

    run = trace(LADDER[1], [[1, 2, 3, 4], [1, 2, 5], [1, 2, 3, 6, 7, 8], [9]], moved_from=2)
    root = answer_tree(run)
    assert root.tokens == [] and [len(c.samples) for c in root.children] == [3, 1]
    shared, alone = root.children
    assert [t.id for t in shared.tokens] == [1, 2] and shared.samples == [0, 1, 2]
    assert [t.id for t in alone.tokens] == [9] and alone.children == []
    three, five = shared.children  # more answers first
    assert ([t.id for t in three.tokens], three.samples, three.start) == ([3], [0, 2], 2)
    assert [t.id for t in five.tokens] == [5] and five.children == []
    # a tail only one answer takes is one node, however long
    assert [[t.id for t in c.tokens] for c in three.children] == [[4], [6, 7, 8]]
    assert sum(1 for _ in root.walk()) == 7
    rows = {n.text: r for n, r, _ in layout(root)}
    assert rows[" w4"] == 0 and rows[" w6 w7 w8"] == 1 and rows[" w3"] == 0.5 and rows[" w9"] == 3
    fig = tree_figure(root, "logp_gain")
    points = fig.data[-1]
    assert len(points.customdata) == 6 and " w6 w7 w8" in points.text
    assert points.marker.color[list(points.text).index(" w1 w2")] == 0.0  # unmoved: no gain
    assert points.marker.color[list(points.text).index(" w3")] == 0.5  # moved by fusion: +0.5


def test_a_branch_joins_the_tree_where_it_left_its_answer():
    from dataclasses import replace

    from viz.tree import BRANCHED, answer_tree, branch_point

    run = trace(LADDER[1], [[1, 2, 3, 4], [1, 2, 5, 6]])
    # answer 2's first two tokens, then its candidate 9 instead of its own 5: two new answers from there
    branch = replace(trace(LADDER[1], [[7, 8], [7]]), config=replace(LADDER[1], prefix_ids=(1, 2, 9)))
    point = branch_point(run, branch)
    assert (point.sample_index, point.position, point.replaced.id) == (0, 2, 3)  # the first answer matching
    assert [t.id for t in point.given] == [1, 2, 9]
    root = answer_tree(run, branches=[branch])
    (shared,) = root.children
    assert [t.id for t in shared.tokens] == [1, 2] and len(shared.samples) == 4  # 2 answers + 2 branched
    assert sorted(len(c.samples) for c in shared.children) == [1, 1, 2]
    nine = next(c for c in shared.children if c.tokens[0].id == 9)
    assert all(k >= BRANCHED for k in nine.samples) and [t.id for t in nine.tokens] == [9, 7]
    other = replace(branch, config=replace(LADDER[1], prefix_ids=(4, 9)))  # starts like no answer of the run
    assert branch_point(run, other) is None and len(answer_tree(run, branches=[other]).children[0].samples) == 2


def test_a_branch_at_a_fork_left_the_answer_whose_token_it_replaced():
    """Two answers share [1, 2] and split there (3 and 5): a branch that gives 5 after [1, 2] left the
    answer that had 3 (5 is the other answer's own token there, not the one it replaced)."""
    from dataclasses import replace

    from viz.tree import branch_point

    run = trace(LADDER[1], [[1, 2, 3, 4], [1, 2, 5, 6]])
    for given, left, replaced in ((5, 0, 3), (3, 1, 5)):
        branch = replace(trace(LADDER[1], [[7]]), config=replace(LADDER[1], prefix_ids=(1, 2, given)))
        point = branch_point(run, branch)
        assert (point.sample_index, point.replaced.id, point.given[-1].id) == (left, replaced, given)
    assert point.shared == 2 and point.heading() == "at token 3, ' w3' where 2 answers that begin alike went on in " \
        "their own ways"  # not one answer's branch: both had [1, 2]
    alone = branch_point(run, replace(trace(LADDER[1], [[7]]), config=replace(LADDER[1], prefix_ids=(1, 2, 5, 9))))
    assert alone.shared == 1 and alone.heading() == "answer 2 from token 4, token #9 instead of ' w6'"
    at_start = branch_point(run, replace(trace(LADDER[1], [[7]]), config=replace(LADDER[1], prefix_ids=(9,))))
    assert at_start.shared == 2 and at_start.heading().startswith("at the first token, ")  # no one answer's branch
    ended = trace(LADDER[1], [[1, 2], [1, 2, 5]])  # an answer that ended there: the branch continued it
    point = branch_point(ended, replace(trace(LADDER[1], [[7]]), config=replace(LADDER[1], prefix_ids=(1, 2, 5))))
    assert point.sample_index == 0 and point.replaced is None

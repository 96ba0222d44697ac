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
                                             "token 3.5 (earliest 3, latest 4); 1 stay the same throughout.")
    assert "all 3 answers are plain" in fork_sentence("β = 1", forks(plain, plain))
    fig = fork_figure({"β = 1": found}, warmup=2)
    assert list(fig.data[0].x) == [3, 4] and fig.layout.shapes[0].x1 == 3.5  # warm-up shaded to token 3


def test_runs_of_different_seeds_have_no_fork():
    other = beta_ladder(RunConfig(sampling=SamplingConfig(n=3, max_new_tokens=5, seed=5)), [1])[0]
    with pytest.raises(ValueError, match="same prompts, seed and sampling"):
        forks(trace(LADDER[0], [[1]]), trace(other, [[1]]))


def test_real_forks_fall_where_fusion_moved_the_distribution(lm, check_forks):
    check_forks(lm, held=4)

"""The Quiet-STaR state machine and tensor math, driven the way vLLM drives them (no engine)."""

from __future__ import annotations

import pytest
import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality

from kernels.quiet_star import hidden, tensor_ops
from kernels.quiet_star.processor import QuietStarLogitsProcessor
from kernels.quiet_star.spec import ROUND_STEP_KEY, QuietStarSpec

VOCAB = 16
START, END, EOS = 13, 14, 15


def spec(key: str = "r", t: int = 2, **kw) -> QuietStarSpec:
    values = dict(
        key=key,
        thought_tokens=t,
        mixing_weight=0.5,
        thought_temperature=1.0,
        temperature=0.0,
        top_p=1.0,
        start_token_ids=(START,),
        end_token_ids=(END,),
        banned_token_ids=(START, END, EOS),
    )
    values.update(kw)
    return QuietStarSpec(**values)


def params(s: QuietStarSpec | None) -> SamplingParams:
    return SamplingParams(max_tokens=8, extra_args=s.to_extra_args() if s else None)


def add(proc, *rows, size=None) -> None:
    proc.update_state(BatchUpdate(size or len(rows), removed=[], added=list(rows), moved=[]))


def make() -> QuietStarLogitsProcessor:
    return QuietStarLogitsProcessor(None, torch.device("cpu"), False)


def only_allowed(row: torch.Tensor) -> list[int]:
    return torch.nonzero(torch.isfinite(row)).flatten().tolist()


def test_state_machine_forces_start_thinks_forces_end_then_mixes() -> None:
    proc = make()
    out: list[int] = []
    add(proc, (0, params(spec()), [1, 2], out))
    torch.manual_seed(0)
    base_logits = torch.randn(1, VOCAB)
    row = proc.apply(base_logits.clone())
    assert only_allowed(row[0]) == [START]  # step 0: forced start, base saved
    out.append(START)
    thought = proc.apply(torch.zeros(1, VOCAB))
    assert not any(torch.isfinite(thought[0, [START, END, EOS]]))  # banned inside a thought
    out += [3, 4]  # t = 2 thought tokens
    assert only_allowed(proc.apply(torch.zeros(1, VOCAB))[0]) == [END]
    out.append(END)
    post_logits = torch.randn(1, VOCAB)
    talk = proc.apply(post_logits.clone())
    mixed = 0.5 * base_logits.log_softmax(-1) + 0.5 * post_logits.log_softmax(-1)
    assert only_allowed(talk[0]) == [int(mixed.argmax())]  # greedy talk token


def test_rows_without_arguments_are_untouched() -> None:
    proc = make()
    add(proc, (0, params(None), [1], []), (1, params(spec()), [1], []))
    logits = torch.randn(2, VOCAB)
    before = logits.clone()
    after = proc.apply(logits)
    assert torch.equal(after[0], before[0])
    assert only_allowed(after[1]) == [START]


def test_chunked_prefill_keeps_the_last_base() -> None:
    proc = make()
    out: list[int] = []
    add(proc, (0, params(spec(t=0, mixing_weight=0.0)), [1], out))
    proc.apply(torch.randn(1, VOCAB))  # a partial prefill chunk: sample discarded
    final = torch.randn(1, VOCAB)
    proc.apply(final.clone())  # the real end of the prompt
    out += [START, END]
    talk = proc.apply(torch.randn(1, VOCAB))
    assert only_allowed(talk[0]) == [int(final.argmax())]  # w = 0: the base alone decides


def test_preempted_request_keeps_its_base_when_re_added_elsewhere() -> None:
    proc = make()
    out: list[int] = []
    s = spec(t=1, mixing_weight=0.0)
    add(proc, (2, params(s), [1], out), size=3)
    base = torch.randn(3, VOCAB)
    proc.apply(base.clone())
    out += [START, 5]
    proc.update_state(BatchUpdate(3, removed=[2], added=[], moved=[]))  # preempted
    add(proc, (0, params(s), [1], out), size=1)  # resumed in another row
    out_end = proc.apply(torch.randn(1, VOCAB))
    assert only_allowed(out_end[0]) == [END]
    out.append(END)
    talk = proc.apply(torch.randn(1, VOCAB))
    assert only_allowed(talk[0]) == [int(base[2].argmax())]


def test_moves_and_swaps_follow_their_requests() -> None:
    proc = make()
    a_out: list[int] = [START]  # a is thinking
    b_out: list[int] = []  # b is at step 0
    add(proc, (0, params(spec("a")), [1], a_out), (1, params(spec("b")), [1], b_out))
    proc.update_state(BatchUpdate(2, removed=[], added=[], moved=[(0, 1, MoveDirectionality.SWAP)]))
    logits = proc.apply(torch.zeros(2, VOCAB))
    assert only_allowed(logits[0]) == [START]  # b now in row 0
    assert not torch.isfinite(logits[1, START])  # a (thinking) now in row 1
    proc.update_state(
        BatchUpdate(1, removed=[0], added=[], moved=[(1, 0, MoveDirectionality.UNIDIRECTIONAL)])
    )
    assert set(proc.rows) == {0} and proc.rows[0].spec.key == "a"


def test_multi_token_delimiters_are_forced_in_order() -> None:
    proc = make()
    out: list[int] = []
    s = spec(t=0, start_token_ids=(7, 8), end_token_ids=(9, 10))
    add(proc, (0, params(s), [1], out))
    forced = []
    for _ in range(4):
        forced.append(only_allowed(proc.apply(torch.zeros(1, VOCAB))[0]))
        out.append(forced[-1][0])
    assert forced == [[7], [8], [9], [10]]
    assert s.steps == 5


def test_validate_rejects_max_tokens_beyond_the_step_count() -> None:
    with pytest.raises(ValueError):
        QuietStarLogitsProcessor.validate_params(
            SamplingParams(max_tokens=50, extra_args=spec().to_extra_args())
        )


def test_talk_logits_temperature_and_top_p() -> None:
    base = torch.tensor([[0.0, -1.0, -2.0, -8.0]]).log_softmax(-1)
    post = torch.tensor([[0.0, -1.0, -2.0, -8.0]])
    out = tensor_ops.talk_logits(
        base, post, torch.tensor([0.5]), torch.tensor([0.5]), torch.tensor([0.9])
    )
    probs = out.softmax(-1)[0]
    mixed = base  # both distributions equal: the mix is the same distribution
    expected = (mixed / 0.5).softmax(-1)[0]
    # At T=0.5 the probabilities are ~[0.867, 0.117, 0.016, 0]: top-p 0.9 keeps two tokens.
    assert torch.isinf(out[0, 2]) and torch.isinf(out[0, 3])
    kept = expected[:2] / expected[:2].sum()
    assert torch.allclose(probs[:2], kept, atol=1e-6)


def test_mixing_in_logprob_space_equals_logit_space_mix() -> None:
    torch.manual_seed(1)
    a, b = torch.randn(3, 50), torch.randn(3, 50)
    w = torch.tensor([0.2, 0.5, 0.9])
    ours = tensor_ops.talk_logits(a.log_softmax(-1), b, w, torch.ones(3), torch.ones(3)).softmax(-1)
    original = ((1 - w.view(-1, 1)) * a + w.view(-1, 1) * b).softmax(-1)
    assert torch.allclose(ours, original, atol=1e-6)


# -- the checkpoint's mixing head (via the model's hidden-state side channel) ---------------


class FakeHead:
    """w = h_base[0] - h_end[0]: depends on both states, unbounded."""

    def mixing_weight(self, h_base: torch.Tensor, h_end: torch.Tensor) -> torch.Tensor:
        return (h_base[:, 0] - h_end[:, 0]).float()


@pytest.fixture
def fake_head():
    head = FakeHead()
    hidden.attach(head)
    yield head
    hidden._head = None
    hidden._hidden = None


def test_head_mixing_uses_the_hidden_states_of_the_base_and_talk_rows(fake_head) -> None:
    proc = make()
    out: list[int] = []
    other: list[int] = []
    s = spec(t=0, mixing_source="head", mixing_weight=0.0)
    add(proc, (0, params(None), [1], other), (1, params(s), [1], out))
    torch.manual_seed(3)
    base_logits = torch.randn(2, VOCAB)
    hidden.publish(torch.tensor([[9.0, 9.0], [2.5, 0.0]]))  # row 1's h_base[0] = 2.5
    proc.apply(base_logits.clone())
    out += [START, END]
    post_logits = torch.randn(2, VOCAB)
    hidden.publish(torch.tensor([[9.0, 9.0], [-0.5, 0.0]]))  # h_end[0] = -0.5: w = 3.0
    talk = proc.apply(post_logits.clone())
    w = 3.0  # outside [0, 1]: the head is unbounded, as in the reference
    mixed = (1 - w) * base_logits[1] + w * post_logits[1]
    assert only_allowed(talk[1]) == [int(mixed.argmax())]
    assert torch.equal(talk[0], post_logits[0])  # the other row is untouched


def test_head_mixing_checks_that_hidden_rows_match_logits_rows(fake_head) -> None:
    proc = make()
    add(proc, (0, params(spec(mixing_source="head")), [1], []))
    hidden.publish(torch.zeros(3, 2))
    with pytest.raises(RuntimeError, match="do not match"):
        proc.apply(torch.zeros(1, VOCAB))


def test_talk_banned_ids_min_p_and_top_k() -> None:
    base = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]).log_softmax(-1)
    post = base.clone()
    one = torch.ones(1)
    ban0 = torch.tensor([[True, False, False, False, False]])
    k2 = torch.tensor([2])
    out = tensor_ops.talk_logits(base, post, 0.5 * one, one, one, banned=ban0, top_k=k2)
    assert only_allowed(out[0]) == [1, 2]  # id 0 banned, then the top 2 of the rest
    out = tensor_ops.talk_logits(base, post, 0.5 * one, one, one, min_p=torch.tensor([0.3]))
    assert only_allowed(out[0]) == [0, 1]  # p >= 0.3 * p_max: e^-1 = 0.37 yes, e^-2 no
    greedy = tensor_ops.talk_logits(base, post, one, 0 * one, one, banned=ban0)
    assert only_allowed(greedy[0]) == [1]  # greedy over the masked mix


def test_talk_bans_apply_only_to_the_rows_that_have_them() -> None:
    proc = make()
    outs: list[list[int]] = [[], []]
    banning = spec("a", t=0, mixing_weight=0.0, talk_banned_token_ids=(3,))
    plain = spec("b", t=0, mixing_weight=0.0, start_token_ids=(7, 8))
    add(proc, (0, params(banning), [1], outs[0]), (1, params(plain), [1], outs[1]))
    base = torch.zeros(2, VOCAB)
    base[0, 3] = 5.0  # row 0's base argmax: id 3, which row 0 bans
    base[1, 7] = 5.0  # row 1's: id 7, the first token of its (multi-token) start string
    proc.apply(base.clone())
    outs[0] += [START, END]
    outs[1] += [7, 8, END]  # both rows now at their talk step
    talk = proc.apply(torch.zeros(2, VOCAB))  # w = 0: the base decides
    assert only_allowed(talk[0]) != [3]  # banned in row 0
    assert only_allowed(talk[1]) == [7]  # row 1 bans nothing


@pytest.mark.parametrize(("prompt_len", "banned"), [(3, True), (4, True), (5, False)])
def test_continuation_bans_stop_ids_from_the_talk_until_min_tokens(prompt_len, banned) -> None:
    """A continuation request comes back to the runner once per output token with the visible
    text as its prompt (context 3 tokens here, min_tokens 2): the stop id is banned from the
    talk token while fewer than 2 talk tokens follow the context."""
    proc = make()
    out: list[int] = []
    s = spec(t=0, mixing_weight=0.0, continuation=True, context_len=3, min_tokens=2,
             stop_token_ids=(EOS,))  # fmt: skip
    add(proc, (0, params(s), list(range(prompt_len)), out))
    base = torch.zeros(1, VOCAB)
    base[0, EOS] = 5.0  # the base argmax is the stop id
    proc.apply(base.clone())
    out += [START, END]
    talk = proc.apply(torch.zeros(1, VOCAB))  # w = 0: the base decides
    assert (only_allowed(talk[0]) == [EOS]) is not banned


def test_validate_allows_a_whole_sequence_for_continuation() -> None:
    s = spec(continuation=True)
    QuietStarLogitsProcessor.validate_params(
        SamplingParams(max_tokens=500, extra_args=s.to_extra_args())
    )


@pytest.mark.parametrize(("visible_len", "banned"), [(4, True), (5, False)])
def test_a_row_re_announced_mid_round_starts_at_its_round_step(visible_len, banned) -> None:
    """The continuation scheduler re-announces a request after appending the end delimiter
    itself: the runner's prompt ends with the round so far and its first sample is the talk
    token (`ROUND_STEP_KEY`), mixed with the base saved before the re-announcement; min_tokens
    counts talk tokens in the visible text only (context 3, min_tokens 2)."""
    proc = make()
    s = spec(t=1, mixing_weight=0.0, continuation=True, context_len=3, min_tokens=2,
             stop_token_ids=(EOS,))  # fmt: skip
    visible = list(range(visible_len))
    add(proc, (0, params(s), visible, []))
    base = torch.zeros(1, VOCAB)
    base[0, EOS] = 5.0  # the base argmax is the stop id
    assert only_allowed(proc.apply(base.clone())[0]) == [START]
    # re-announced: the old row leaves, the new one carries the round so far in its prompt
    proc.update_state(BatchUpdate(1, removed=[0], added=[], moved=[]))
    reannounced = SamplingParams(max_tokens=8, extra_args={**s.to_extra_args(), ROUND_STEP_KEY: 3})
    add(proc, (0, reannounced, [*visible, START, 9, END], []))
    talk = proc.apply(torch.zeros(1, VOCAB))  # the talk step (w = 0: the base decides)
    assert (only_allowed(talk[0]) == [EOS]) is not banned
    assert len(only_allowed(talk[0])) == 1  # a greedy talk token, not a forced or thought row


def _run_to_talk_without_base(s: QuietStarSpec) -> torch.Tensor:
    """Step 0 saves the base; it is then evicted (more parked requests than the bound) before
    the talk row: the talk row's logits."""
    proc = make()
    out: list[int] = []
    add(proc, (0, params(s), [1], out))
    proc.apply(torch.randn(1, VOCAB))
    out += [START, 5]
    proc.machine.max_saved = 0
    proc.machine.trim()  # evicted, as under heavy preemption
    assert proc.apply(torch.randn(1, VOCAB)) is not None  # end, forced
    out.append(END)
    return proc.apply(torch.randn(1, VOCAB))


def test_a_talk_row_whose_base_was_evicted_is_forced_to_the_failure_sentinel() -> None:
    # Unmixed post-thought logits must never become text: the row is forced to the spec's
    # first talk-banned id, which the decoder reads as a failed request.
    s = spec(t=1, talk_banned_token_ids=(START, END))
    talk = _run_to_talk_without_base(s)
    assert only_allowed(talk[0]) == [START]


def test_a_lost_base_without_a_sentinel_fails_loudly() -> None:
    with pytest.raises(RuntimeError, match="base distribution"):
        _run_to_talk_without_base(spec(t=1))


def test_the_decoder_fails_the_request_on_the_failure_sentinel() -> None:
    from server.core.errors import APIError
    from server.quiet_star.decoder import _check_talk

    s = spec(talk_banned_token_ids=(START, END))
    _check_talk(s, 5)  # an ordinary talk token
    with pytest.raises(APIError) as caught:
        _check_talk(s, START)
    assert caught.value.status == 500

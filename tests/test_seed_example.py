"""The seed's own usage (SPEC "The seed's usage") runs as written."""

from __future__ import annotations


def test_seed_usage_runs_as_written() -> None:
    from capsched import InferenceRequest, OpenAutoGLMScheduler  # alias of capsched.Scheduler

    scheduler = OpenAutoGLMScheduler(devices=["cuda:0", "cuda:1"], max_batch_size=32, enable_dynamic_batching=True)
    request = InferenceRequest(prompt="生成一段技术文档", priority=0.8, timeout=5.0)
    rid = scheduler.submit(request)
    result = scheduler.step()  # load evaluation, placement, batch assembly, dispatch

    assert request.id == rid == 1
    assert len(result.batches) == 1
    assert result.batches[0].device in ("cuda:0", "cuda:1")
    assert result.batches[0].request_ids == [rid]
    assert scheduler.status(rid) == "in_flight"
    scheduler.complete(rid)
    s = scheduler.stats()
    assert s["completed"] == 1 and s["conservation_ok"]


def test_alias_is_the_scheduler() -> None:
    import capsched

    assert capsched.OpenAutoGLMScheduler is capsched.Scheduler


def test_prompt_tokens_are_estimated_for_cjk_and_latin() -> None:
    from capsched import estimate_tokens

    assert estimate_tokens("生成一段技术文档") == 8  # one token per Han character
    assert estimate_tokens("Write a short technical document.") == 11
    assert estimate_tokens("") == 0
    # Mixed text: CJK characters plus Latin words.
    assert estimate_tokens("GPU调度") == 1 + 2


def test_custom_tokenizer_is_used() -> None:
    from capsched import Config, InferenceRequest, Scheduler

    calls = []

    def tok(text: str) -> int:
        calls.append(text)
        return 4000

    s = Scheduler(["a"], policy="srtf", config=Config(tokenizer=tok))
    big = s.submit(InferenceRequest("hi", max_new_tokens=1), now=0.0)
    small = s.submit(InferenceRequest(prompt_tokens=10, max_new_tokens=1), now=0.0)
    assert calls == ["hi"]
    # srtf puts the 11-token request before the one the tokenizer called 4001 tokens.
    assert s.step(now=0.0).dispatched == [small, big]

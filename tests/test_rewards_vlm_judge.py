"""The VLM-judge reward against a stand-in OpenAI-compatible chat endpoint on 127.0.0.1: the
request shape, strict answer parsing (an adversarial table), concurrency with order kept,
retries, Retry-After, client errors, failed samples counted, API keys from the environment,
and use inside a weighted reward."""

import base64
import io
import math
import socket
import time

import numpy as np
import pytest
import torch

from tempflow.errors import UserError
from tempflow.rewards import build_reward, score, score_or_nan
from tempflow.rewards.simple import to_uint8
from tempflow.rewards.vlm_judge import PRESETS, parse_score, parse_yes_no
from vlm_judge_fakes import MODEL, FakeJudge, by_prompt

PROMPTS = ["a red circle", "two blue squares", "three green triangles"]
RUBRIC = "Rate the image for <<{prompt}>>."  # a custom rubric; its scale is given per test
NAN = math.nan


def _images(n=3, seed=0, h=16, w=20):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def fake():
    judges = []

    def start(**kwargs):
        judges.append(FakeJudge(**kwargs))
        return judges[-1]

    yield start
    for j in judges:
        j.close()


def _judge(url, **kwargs):
    kwargs = {"model": MODEL, "rubric": RUBRIC, "scale": [1, 10], "backoff": 0.01, **kwargs}
    return build_reward("vlm_judge", base_url=url, **kwargs)


def _same(got, want):
    return len(got) == len(want) and all((math.isnan(w) and math.isnan(g)) or abs(g - w) < 1e-6
                                         for g, w in zip(got, want))


# --- scoring and the request ---------------------------------------------------------------


def test_preset_scores_are_parsed_and_normalised_and_requests_well_formed(fake):
    from PIL import Image

    judge = fake(answer=by_prompt(dict(zip(PROMPTS, ["Score: 1", "Score: 5", "Score: 4"]))))
    x = _images()
    reward = _judge(judge.url, rubric="alignment_quality", scale=None)
    got = score(reward, x, PROMPTS)
    assert got.dtype == torch.float32 and got.tolist() == [0.0, 1.0, 0.75]   # (s - 1) / 4 on 1..5
    assert judge.problems == [] and len(judge.requests) == 3
    by_text = {p: r for r in judge.requests for p in PROMPTS if f"[{p}]" in r["text"]}
    assert set(by_text) == set(PROMPTS)
    for i, p in enumerate(PROMPTS):
        r = by_text[p]
        assert r["text"].startswith(PRESETS["alignment_quality"].text.replace("{prompt}", p))
        assert r["text"].endswith("Score: N\nwhere N is a number from 1 to 5, and nothing else.")
        assert r["auth"] is None and r["body"]["max_tokens"] == 64
        png = base64.b64decode(r["url"].split(",", 1)[1])
        pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        assert np.array_equal(pixels, to_uint8(x[i:i + 1])[0])   # the image itself, 8-bit exact


def test_semantic_consistency_and_vqascore_presets(fake):
    judge = fake(answer=by_prompt(dict(zip(PROMPTS, ["Score: 10", "Score: 0", "Score: 2.5"]))))
    got = score(_judge(judge.url, rubric="semantic_consistency", scale=None), _images(), PROMPTS)
    assert got.tolist() == [1.0, 0.0, 0.25]
    judge = fake(answer=by_prompt(dict(zip(PROMPTS, ["Yes", "no.", "Yes, mostly."]))))
    got = score(_judge(judge.url, rubric="vqascore", scale=None), _images(), PROMPTS)
    assert _same(got.tolist(), [1.0, 0.0, NAN])
    texts = {r["text"] for r in judge.requests}
    assert 'Does this figure show "a red circle"? Please answer yes or no.\n\n' \
           'Reply with exactly one word, yes or no, and nothing else.' in texts


def test_base_url_with_v1_and_custom_scale(fake):
    judge = fake(answer=lambda text: "Score: -2")
    got = score(_judge(judge.url + "/v1/", scale=[-5, 5]), _images(1), PROMPTS[:1])
    assert _same(got.tolist(), [0.3])  # (-2 + 5) / 10
    assert "from -5 to 5" in judge.requests[0]["text"]


def test_n_images_n_requests_concurrent_and_in_order(fake):
    n = 12
    prompts = [f"item {i:02d}" for i in range(n)]
    judge = fake(answer=by_prompt({p: f"Score: {i % 10 + 1}" for i, p in enumerate(prompts)}), delay=0.4)  # answers overlap even on a busy machine
    reward = _judge(judge.url, concurrency=4)
    got = score(reward, _images(n), prompts)
    assert _same(got.tolist(), [(i % 10) / 9 for i in range(n)])   # sample i's answer lands at i
    assert len(judge.requests) == n and judge.problems == []
    assert 1 < judge.max_in_flight <= 4
    assert reward.counts == {"requests": n, "answered": n, "unparseable": 0, "failed": 0}


# --- transport ---------------------------------------------------------------------------------


def test_5xx_and_connection_reset_are_retried(fake):
    judge = fake(answer=lambda text: "Score: 10")
    judge.script = [500, "reset", 502]
    reward = _judge(judge.url, retries=3)
    assert score(reward, _images(1), PROMPTS[:1]).tolist() == [1.0]
    assert reward.counts["requests"] == 4 and reward.last_errors == []


def test_429_and_503_with_retry_after_are_waited_not_counted(fake):
    judge = fake(answer=lambda text: "Score: 1")
    judge.script = [(429, {"Retry-After": "0.3"}), (503, {"Retry-After": "0.2"})]
    reward = _judge(judge.url, retries=0, backoff=0.0)   # no retries left: the waits are not failures
    t0 = time.perf_counter()
    assert score(reward, _images(1), PROMPTS[:1]).tolist() == [0.0]
    assert time.perf_counter() - t0 >= 0.5
    assert len(judge.requests) == 3


def test_401_stops_at_once_with_the_servers_message(fake):
    judge = fake()
    judge.script = [(401, {})] * 5
    judge.script[0] = 401
    reward = _judge(judge.url, retries=3, backoff=5.0)
    t0 = time.perf_counter()
    with pytest.raises(UserError) as err:
        score(reward, _images(1), PROMPTS[:1])
    msg = str(err.value)
    assert time.perf_counter() - t0 < 2 and len(judge.requests) == 1
    assert "HTTP 401: scripted 401" in msg and "api_key_env" in msg and "\n" not in msg


def test_a_client_error_stops_the_other_requests(fake):
    judge = fake(delay=0.05)
    judge.script = [(400, {})]
    reward = _judge(judge.url, concurrency=2)
    with pytest.raises(UserError, match=r"HTTP 400: scripted 400.*does it take images"):
        score(reward, _images(8), [f"item {i}" for i in range(8)])
    time.sleep(0.1)
    assert len(judge.requests) <= 3   # the samples not yet sent are never sent


def test_404_names_base_url_and_model(fake):
    judge = fake()
    reward = build_reward("vlm_judge", base_url=judge.url + "/api", model=MODEL, rubric=RUBRIC, scale=[1, 10])
    with pytest.raises(UserError, match=r"HTTP 404.*reward.kwargs.base_url.*'test/judge-vl'"):
        score(reward, _images(1), PROMPTS[:1])


def test_endpoint_down_is_a_user_error_after_bounded_retries():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reward = _judge(f"http://127.0.0.1:{port}", retries=2, timeout=1)
    t0 = time.perf_counter()
    with pytest.raises(UserError) as err:
        score(reward, _images(2), PROMPTS[:2])
    msg = str(err.value)
    assert time.perf_counter() - t0 < 5
    assert "failed every sample" in msg and "failed 3 times" in msg and "vllm serve" in msg and "\n" not in msg


def test_one_sample_failing_for_good_is_nan_the_rest_scored(fake):
    judge = fake(answer=lambda text: "Score: 10")
    judge.script = [503, 503]   # no Retry-After: counted as failures; retries=1 -> sample 0 gives up
    reward = _judge(judge.url, retries=1, concurrency=1)
    got = score(reward, _images(2), PROMPTS[:2])
    assert _same(got.tolist(), [NAN, 1.0])
    assert reward.counts["failed"] == 1 and reward.last_errors[0].startswith("sample 0: request failed 2 times")


def test_malformed_completion_and_cut_answer_are_failed_samples(fake):
    judge = fake(answer=lambda text: "Score: 10")
    judge.script = [{"choices": []}, ("finish", "Score: 9", "length")]
    reward = _judge(judge.url, concurrency=1)
    got = score(reward, _images(3), PROMPTS)
    assert _same(got.tolist(), [NAN, NAN, 1.0])
    assert "not a chat completion" in reward.last_errors[0] and "cut at max_tokens" in reward.last_errors[1]


# --- failed samples -------------------------------------------------------------------------


def test_prose_answers_are_nan_counted_and_the_run_goes_on(fake):
    judge = fake(answer=by_prompt({PROMPTS[0]: "The image shows a lovely red circle, I'd say 8.",
                                   PROMPTS[1]: "Score: 7", PROMPTS[2]: ""}))
    reward = _judge(judge.url)
    scored = score_or_nan(reward, _images(), PROMPTS)   # the trainer's path: no exception
    assert _same(scored.values.tolist(), [NAN, 6 / 9, NAN]) and scored.errors == []
    assert reward.counts["unparseable"] == 2
    assert reward.last_errors[0].startswith("sample 0: unparseable answer (\"The image shows")
    assert reward.last_errors[1] == "sample 2: unparseable answer (''): empty answer"
    judge.answer = lambda text: "Score: 10"
    assert score(reward, _images(), PROMPTS).tolist() == [1.0, 1.0, 1.0]   # the next batch is clean
    assert reward.last_errors == [] and reward.counts["unparseable"] == 2 and reward.counts["answered"] == 6


# --- the adversarial table -----------------------------------------------------------------

SCORE_TABLE = [  # (answer, raw score on the scale 1..10, or NaN)
    ("Score: 7", 7), ("score: 7", 7), ("SCORE:7", 7), ("  Score:\t7  ", 7), ("Score: 7.5", 7.5),
    ("Score: 0007", 7), ("Score: 1", 1), ("Score: 10", 10), ("Score: 7\n\n", 7),
    ("The caption's objects are all present.\nScore: 8", 8),        # a rationale before is fine
    ("Score: 11", NAN), ("Score: 0", NAN), ("Score: -3", NAN), ("Score: 10.5", NAN),   # off the scale
    ("Score: 7\nScore: 3", NAN), ("Score: 7\nScore: 7", NAN), ("Score: 5 Score: 9", NAN),  # several
    ("The image reads 'Score: 10'.\nScore: 2", NAN),   # text in the image echoed: 'score' twice
    ("Score: 9\nThe sign in the image says 10.", NAN),  # the score line is not last
    ("score: 7/10", NAN), ("Score: 8 out of 10", NAN), ("Score: 7.", NAN), ("Score: ~7", NAN),
    ("I'd say 8", NAN), ("8", NAN), ("Rating: 8", NAN), ("The score is 8", NAN),
    ("Score: NaN", NAN), ("Score: nan", NAN), ("Score: inf", NAN), ("Score: -inf", NAN), ("Score: 1e1", NAN),
    ("Score: 0x7", NAN), ("Score: 7_0", NAN), ("Score: 1234567", NAN),
    ("", NAN), ("  \n\t ", NAN),
    ('{"score": 7}', NAN), ('{"score": 7, "reason": "good"}', NAN),    # JSON is not the format
    ('{"score": 7, "note": "Score: 3"}', NAN),
    ("**Score:** 8", NAN), ("`Score: 8`", NAN),
    ("Score: \u0667", NAN), ("Score: \uff17", NAN), ("Score: \U0001d7d5", NAN),  # Arabic-Indic, fullwidth, math 7
    ("\u017fcore: 7", NAN), ("Score:\u00a07", NAN), ("\uff33core: 7", NAN),    # long s, NBSP, fullwidth S
    (None, NAN), (["Score: 7"], NAN), (7, NAN),
]


@pytest.mark.parametrize("answer, want", SCORE_TABLE, ids=[repr(a)[:40] for a, _ in SCORE_TABLE])
def test_score_parser_adversarial_table(answer, want):
    got = parse_score(answer, (1.0, 10.0))
    assert _same([got.value], [want]) and (got.why is None) == (not math.isnan(want))


YES_NO_TABLE = [("yes", 1), ("Yes", 1), ("YES.", 1), ("  no \n", 0), ("No.", 0),
                ("Yes, it does.", NAN), ("yes no", NAN), ("no yes", NAN), ("Answer: yes", NAN), ("yes!", NAN),
                ("Yes..", NAN), ("y", NAN), ("", NAN), ("\uff59es", NAN), ("Score: 1", NAN), (None, NAN)]


@pytest.mark.parametrize("answer, want", YES_NO_TABLE, ids=[repr(a) for a, _ in YES_NO_TABLE])
def test_yes_no_parser_adversarial_table(answer, want):
    assert _same([parse_yes_no(answer).value], [want])


def test_adversarial_table_end_to_end(fake):
    table = [(a, w) for a, w in SCORE_TABLE if isinstance(a, str)]
    prompts = [f"case {i:02d}" for i in range(len(table))]
    judge = fake(answer=by_prompt({p: a for p, (a, _) in zip(prompts, table)}))
    reward = _judge(judge.url, concurrency=8)
    got = score(reward, _images(len(table)), prompts)
    assert _same(got.tolist(), [(w - 1) / 9 for _, w in table])
    assert reward.counts["unparseable"] == sum(math.isnan(w) for _, w in table)


# --- keys and configuration -------------------------------------------------------------------


def test_api_key_from_env_is_sent_as_bearer(fake, monkeypatch):
    judge = fake()
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-test-123")
    score(_judge(judge.url, api_key_env="TEST_JUDGE_KEY"), _images(1), PROMPTS[:1])
    assert judge.requests[0]["auth"] == "Bearer sk-test-123"
    monkeypatch.delenv("TEST_JUDGE_KEY")
    with pytest.raises(UserError, match="'TEST_JUDGE_KEY', which is not set"):
        _judge(judge.url, api_key_env="TEST_JUDGE_KEY")


@pytest.mark.parametrize("kwargs, words", [
    ({"base_url": "127.0.0.1:8000"}, "base_url must start with http://"),
    ({"model": ""}, "reward.kwargs.model"),
    ({"rubric": "vqa_score", "scale": None}, "neither a preset (alignment_quality, semantic_consistency, vqascore)"),
    ({"scale": None}, "a custom rubric needs reward.kwargs.scale"),
    ({"scale": [10, 1]}, "min < max"),
    ({"scale": [1, "ten"]}, "two numbers"),
    ({"scale": [1, float("inf")]}, "finite"),
    ({"rubric": "vqascore", "scale": [0, 1]}, "does not apply to a yes/no rubric"),
    ({"rubric": "vqascore", "scale": None, "answer": "score"}, "the preset 'vqascore' asks for 'yes_no'"),
    ({"answer": "maybe"}, "answer must be one of score, yes_no"),
    ({"concurrency": 0}, "concurrency has a bad value 0"),
    ({"retries": 1.5}, "retries has a bad value"),
    ({"timeout": None}, "timeout has a bad value"),
    ({"max_tokens": True}, "max_tokens has a bad value"),
])
def test_bad_settings_are_one_line_user_errors(kwargs, words):
    args = {"base_url": "http://127.0.0.1:9", "model": MODEL, "rubric": RUBRIC, "scale": [1, 10], **kwargs}
    with pytest.raises(UserError) as err:
        build_reward("vlm_judge", **args)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_inside_a_weighted_reward(fake):
    judge = fake(answer=by_prompt(dict(zip(PROMPTS, ["Score: 10", "Score: 1", "nope"]))))
    x = _images()
    reward = build_reward("weighted", components=[
        {"name": "vlm_judge", "weight": 2.0, "label": "judge",
         "kwargs": {"base_url": judge.url, "model": MODEL, "rubric": RUBRIC, "scale": [1, 10]}},
        {"name": "brightness", "weight": 1.0}])
    parts = reward.score_components(x, PROMPTS)
    assert _same(parts["judge"].tolist(), [1.0, 0.0, NAN])
    bright = score(build_reward("brightness"), x, PROMPTS)
    assert _same(score(reward, x, PROMPTS).tolist(), [2.0 + bright[0].item(), bright[1].item(), NAN])

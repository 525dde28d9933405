"""geneval_remote: the Flow-GRPO reward-server protocol against a stand-in server on
127.0.0.1, the restricted unpickler, GenEval metadata prompt files, ocr: prompts, and
`tempflow eval` with the six GenEval categories from the server's pass / fail."""

import io
import json
import os
import pickle
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tempflow.cli.main import main
from tempflow.errors import UserError
from tempflow.evaluation import EvalResult
from tempflow.rewards import build_reward, score_or_nan
from tempflow.rewards.geneval_remote import GENEVAL_TAGS, ForbiddenObject, MalformedPickle, safe_loads
from tempflow.training import prompts as prompts_module
from tempflow.training.prompts import PromptSet

SAMPLE = Path(__file__).parent / "data" / "geneval_metadata_sample.jsonl"
COLOURS = ("red", "green", "blue")


def _colour(name, size=16):
    """A solid image [3, size, size] of a primary colour, or gray."""
    img = torch.full((3, size, size), 0.1)
    if name in COLOURS:
        img[COLOURS.index(name)] = 0.9
    return img


def _meta(tag, colour=None, prompt=None):
    clause = {"class": "circle", "count": 1, **({"color": colour} if colour else {})}
    return {"tag": tag, "include": [clause], **({"prompt": prompt} if prompt else {})}


def _judge(jpeg, meta):
    """The stand-in's GenEval: pass when the image's dominant channel is the first include
    clause's colour (without a colour: when the image is bright); score = mean brightness."""
    x = np.asarray(Image.open(io.BytesIO(jpeg), formats=["JPEG"]).convert("RGB"), dtype=np.float64) / 255
    mean = x.reshape(-1, 3).mean(0)
    want = meta["include"][0].get("color")
    ok = COLOURS[int(mean.argmax())] == want if want else bool(mean.mean() > 0.5)
    return float(round(mean.mean(), 4)), 1.0 if ok else 0.0


class StandIn:
    """A Flow-GRPO-style reward server: POST / with a pickled request, a pickled answer.
    ``plan``: actions for the next requests (an HTTP code, 'drop', raw bytes, or a function
    answer -> answer); then the GenEval answer of reward-server's app_geneval.py."""

    def __init__(self):
        self.requests, self.plan = [], []
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                data = pickle.loads(body)  # our own test server: the client is trusted here
                state.requests.append(data)
                action = state.plan.pop(0) if state.plan else None
                if action == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if isinstance(action, int):
                    return self._send(action, b"Traceback (most recent call last):\n  ...\nKeyError: 'tag'\n")
                if isinstance(action, bytes):
                    return self._send(200, action)
                answer = state.geneval(data) if "meta_datas" in data else {}
                if callable(action):
                    answer = action(answer)
                    if isinstance(answer, bytes):
                        return self._send(200, answer)
                self._send(200, pickle.dumps(answer))

            def _send(self, code, payload):
                self.send_response(code)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @staticmethod
    def geneval(data):
        scores, passes = zip(*[_judge(j, m) for j, m in zip(data["images"], data["meta_datas"])])
        groups = {k: [p if m["tag"] == k else -10.0 for p, m in zip(passes, data["meta_datas"])]
                  for k in GENEVAL_TAGS}
        rewards = [0.0] * len(passes) if data["only_strict"] else list(passes)
        return {"scores": list(scores), "rewards": rewards, "strict_rewards": list(passes),
                "group_rewards": groups, "group_strict_rewards": groups}


@pytest.fixture
def server():
    s = StandIn()
    yield s
    s.server.shutdown()
    s.server.server_close()


def _reward(server, **kw):
    return build_reward("geneval_remote", url=server.url, backoff=0.0, **kw)


def test_scores_come_back_per_image_in_batches(server):
    images = torch.stack([_colour(c) for c in ("red", "green", "blue", "red", "gray")])
    meta = [_meta("colors", "red"), _meta("colors", "green"), _meta("colors", "red"),
            _meta("color_attr", "red"), _meta("single_object")]
    prompts = [f"p{i}" for i in range(5)]
    reward = _reward(server, batch_size=2, field="strict_rewards")
    out = reward(images, prompts, meta)
    assert out.dtype == torch.float32 and out.tolist() == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert [len(r["images"]) for r in server.requests] == [2, 2, 1]
    first = server.requests[0]
    assert first["only_strict"] is True  # strict fields need no non-strict pass on the server
    assert first["meta_datas"][0] == {**meta[0], "prompt": "p0"}  # the prompt fills in
    assert Image.open(io.BytesIO(first["images"][0])).format == "JPEG"
    dense = _reward(server)(images, prompts, meta)  # field scores: the partial credit
    assert dense.shape == (5,) and 0 < float(dense[0]) < 1


def test_field_rewards_asks_for_the_non_strict_pass(server):
    images, meta = _colour("red")[None], [_meta("colors", "red")]
    assert _reward(server, field="rewards")(images, ["a"], meta).tolist() == [1.0]
    assert server.requests[-1]["only_strict"] is False
    with pytest.raises(UserError, match="only_strict"):
        _reward(server, field="rewards", only_strict=True)


def test_retries_on_500_and_dropped_connections(server):
    images, meta = _colour("red")[None], [_meta("colors", "red")]
    server.plan = [500, "drop", None]
    assert _reward(server, retries=2, field="strict_rewards")(images, ["a"], meta).tolist() == [1.0]
    assert len(server.requests) == 3
    server.plan = [500, 500]
    with pytest.raises(UserError) as e:
        _reward(server, retries=1)(images, ["a"], meta)
    msg = str(e.value)
    assert server.url in msg and "2 times" in msg and "KeyError: 'tag'" in msg and "\n" not in msg


def test_server_down_is_one_line(server):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reward = build_reward("geneval_remote", url=f"http://127.0.0.1:{port}", retries=1, backoff=0.0)
    with pytest.raises(UserError, match=f"127.0.0.1:{port} failed 2 times.*app_geneval"):
        reward(_colour("red")[None], ["a"], [_meta("colors", "red")])


def test_4xx_is_not_retried(server):
    server.plan = [404]
    with pytest.raises(UserError, match="HTTP 404"):
        _reward(server, retries=3)(_colour("red")[None], ["a"], [_meta("colors", "red")])
    assert len(server.requests) == 1


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_answer_is_refused_and_runs_nothing(server, tmp_path):
    marker = tmp_path / "pwned"
    images, meta = _colour("red")[None], [_meta("colors", "red")]
    server.plan = [lambda a: pickle.dumps({**a, "scores": [_Evil(marker)]})]
    with pytest.raises(UserError) as e:
        _reward(server)(images, ["a"], meta)
    msg = str(e.value)
    assert server.url in msg and "forbidden object" in msg and "system" in msg and "\n" not in msg
    assert not marker.exists()
    # the same through score_or_nan (as training calls it): a UserError, never swallowed
    server.plan = [pickle.dumps(_Evil(marker))]
    with pytest.raises(UserError, match="forbidden object"):
        score_or_nan(_reward(server), images, ["a"], meta)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", range(6))
def test_safe_loads_admits_plain_data_and_numpy_numbers(protocol):
    obj = {"a": [1, -2, 2 ** 70, 1.5, None, True, "s", b"b", b"", (1, (2,)), {3}, frozenset({4})],
           "np": [np.float32(0.5), np.float64(0.25), np.int64(-3), np.bool_(False), np.float16(2.0)],
           "arr": np.arange(6, dtype=np.float32).reshape(2, 3), "be": np.array([1, 2], dtype=">i4"),
           "empty": np.zeros(0)}
    got = safe_loads(pickle.dumps(obj, protocol=protocol))
    assert got["a"] == obj["a"]
    assert got["np"] == [0.5, 0.25, -3, False, 2.0] and type(got["np"][0]) is float
    assert got["arr"] == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]] and got["be"] == [1, 2] and got["empty"] == []


@pytest.mark.parametrize("payload, name", [
    (lambda m: _Evil(m), "system"),
    (lambda m: torch.zeros(2), "torch"),
    (lambda m: np.array(["x"], dtype=object), "numpy.dtype"),
    (lambda m: Path("x"), "pathlib"),
    (lambda m: bytearray(b"x"), "bytearray"),
])
def test_safe_loads_refuses_other_objects(tmp_path, payload, name):
    marker = tmp_path / "pwned"
    with pytest.raises(ForbiddenObject, match=name):
        safe_loads(pickle.dumps(payload(marker), protocol=4))
    assert not marker.exists()
    # a hand-written pickle: GLOBAL builtins.eval applied by REDUCE
    with pytest.raises(ForbiddenObject, match="builtins.eval"):
        safe_loads(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(MalformedPickle):
        safe_loads(b"<html>not a pickle</html>")


def test_numpy_answers_are_read(server):
    images, meta = torch.stack([_colour("red"), _colour("blue")]), [_meta("colors", "red")] * 2
    server.plan = [lambda a: {**a, "strict_rewards": np.array(a["strict_rewards"], dtype=np.float32)},
                   lambda a: {**a, "strict_rewards": [np.float64(v) for v in a["strict_rewards"]]}]
    for _ in range(2):
        assert _reward(server, field="strict_rewards")(images, ["a", "b"], meta).tolist() == [1.0, 0.0]


def test_bad_answers(server):
    images, meta = torch.stack([_colour("red")] * 3), [_meta("colors", "red")] * 3
    reward = _reward(server, field="strict_rewards")
    server.plan = [lambda a: {"outputs": [1.0, 2.0, 3.0]}]
    with pytest.raises(UserError, match="without a 'strict_rewards' list.*'outputs'"):
        reward(images, list("abc"), meta)
    server.plan = [lambda a: {**a, "strict_rewards": [1.0]}]
    with pytest.raises(UserError, match="answered 1 'strict_rewards' for 3 images"):
        reward(images, list("abc"), meta)
    server.plan = [b"\x80\x04not a pickle"]
    with pytest.raises(UserError, match="not a pickle"):
        reward(images, list("abc"), meta)
    # unusable entries are failed samples: NaN, counted by score_or_nan's caller
    server.plan = [lambda a: {**a, "strict_rewards": [None, float("inf"), "1"]}]
    assert torch.isnan(reward(images, list("abc"), meta)).all()
    server.plan = [lambda a: {**a, "strict_rewards": [1.0, None, float("nan")]}]
    scored = score_or_nan(reward, images, list("abc"), meta)
    assert scored.values[0] == 1.0 and int(torch.isnan(scored.values).sum()) == 2


def test_metadata_is_required_and_checked_before_sending(server):
    reward, images = _reward(server), _colour("red")[None]
    with pytest.raises(UserError, match="needs GenEval metadata.*JSONL"):
        reward(images, ["a"])
    with pytest.raises(UserError, match="'tag' is 'two_objects', not one of GenEval's single_object"):
        reward(images, ["a"], [{"tag": "two_objects", "include": []}])
    with pytest.raises(UserError, match=r"include\[0\] needs a 'class' name and a 'count' >= 1"):
        reward(images, ["a"], [{"tag": "counting", "include": [{"class": "cat", "count": 0}]}])
    assert server.requests == []
    with pytest.raises(UserError, match="reward.kwargs.url must start with http://"):
        build_reward("geneval_remote", url="127.0.0.1:18085")
    with pytest.raises(UserError, match="jpeg_quality"):
        build_reward("geneval_remote", jpeg_quality=100)


def test_other_servers_of_the_protocol(server):
    """DeQA-style: {"images"} in, {"outputs"} out; no metadata needed, no pass / fail."""
    server.plan = [lambda a: {"outputs": [0.5] * 2}]
    reward = _reward(server, field="outputs")
    assert reward.verify is None
    assert reward(torch.stack([_colour("red")] * 2), ["a", "b"]).tolist() == [0.5, 0.5]
    assert "meta_datas" not in server.requests[-1]


def test_verify_gives_values_and_passes_in_one_pass(server):
    images = torch.stack([_colour("red"), _colour("blue")])
    meta = [_meta("colors", "red"), _meta("colors", "red")]
    values, passed = _reward(server).verify(images, ["a", "b"], meta)
    assert passed.tolist() == [1.0, 0.0] and len(server.requests) == 1
    assert server.requests[0]["only_strict"] is False  # GenEval's own pass is the non-strict one
    assert values.tolist() == pytest.approx([r for r in StandIn.geneval(server.requests[0])["scores"]])
    server.plan = [lambda a: {**a, "rewards": [1.0, 0.5]}]  # a pass that is not 0 / 1: not scored
    values, passed = _reward(server).verify(images, ["a", "b"], meta)
    assert passed[0] == 1.0 and torch.isnan(passed[1]) and torch.isnan(values[1])


# --- prompt sources ------------------------------------------------------------------------

def test_jsonl_prompt_source():
    ps = PromptSet.load(str(SAMPLE))
    assert ps.prompts[0] == "a photo of a cat" and len(ps.prompts) == 6
    assert ps.categories == list(GENEVAL_TAGS)
    assert ps.metadata[4]["include"][1]["position"] == ["left of", 0]
    assert ps.metadata_of([3, 0]) == [ps.metadata[3], ps.metadata[0]]
    assert PromptSet.load("shapes:heldout").metadata is None
    assert sorted(ps.draw(6, 0, 0, "category")) == list(range(6))


@pytest.mark.parametrize("text, match", [
    ('{"prompt": "a", "tag": "colors"}\n{"prompt": "b", "tag": \n', "line 2 is not JSON"),
    ('\n["a photo of a cat"]\n', "line 2 is a JSON list, not an object"),
    ('{"tag": "colors", "include": []}\n', 'line 1 has no "prompt" string'),
    ('{"prompt": "  ", "tag": "colors"}\n', 'line 1 has no "prompt" string'),
    ('{"prompt": "a", "tag": 3}\n', 'line 1: "tag" must be a non-empty string'),
    ("\n\n", "holds no prompts"),
])
def test_jsonl_mistakes_name_the_file_and_line(tmp_path, text, match):
    f = tmp_path / "meta.jsonl"
    f.write_text(text)
    with pytest.raises(UserError, match=match) as e:
        PromptSet.load(str(f))
    assert str(f) in str(e.value) and "\n" not in str(e.value)


def test_unknown_tag_is_a_category_but_not_geneval(tmp_path, server):
    f = tmp_path / "meta.jsonl"
    f.write_text('{"prompt": "a red circle", "tag": "texture", "include": [{"class": "circle", "count": 1}]}\n'
                 '{"prompt": "two circles"}\n')
    ps = PromptSet.load(str(f))
    assert ps.categories == ["texture", "all"]
    with pytest.raises(UserError, match="'tag' is 'texture'"):
        _reward(server)(torch.stack([_colour("red")] * 2), ps.prompts, ps.metadata)


def test_ocr_prompt_source(tmp_path, monkeypatch):
    monkeypatch.setattr(prompts_module, "assets_dir", lambda: tmp_path)
    (tmp_path / "ocr-train.txt").write_text('A sign that says "OPEN"\n\nA mug printed with "Hi"\n')
    ps = PromptSet.load("ocr:train")
    assert ps.prompts == ['A sign that says "OPEN"', 'A mug printed with "Hi"']
    assert ps.categories == ["all", "all"] and ps.metadata is None
    with pytest.raises(UserError, match="unknown OCR prompt split 'dev': known splits are train, test"):
        PromptSet.load("ocr:dev")
    with pytest.raises(UserError, match="ocr-test.txt.*missing"):
        PromptSet.load("ocr:test")


def test_packaged_ocr_prompts_load_when_shipped():
    for split in ("train", "test"):
        if not (prompts_module.assets_dir() / f"ocr-{split}.txt").is_file():
            pytest.skip("the OCR prompt lists are not packaged yet")
        assert len(PromptSet.load(f"ocr:{split}").prompts) > 0


# --- the eval table ------------------------------------------------------------------------

def test_table_leaves_failed_images_out():
    res = EvalResult(["a"] * 4, ["x", "x", "x", "y"], torch.tensor([True, False, False, False]),
                     torch.tensor([1.0, 0.0, float("nan"), float("nan")]), torch.zeros(4, 3, 2, 2))
    t = res.table()
    assert t["x"] == {"pass_rate": 0.5, "score": 0.5, "n": 3, "failed": 1}
    assert t["y"]["failed"] == 1 and t["y"]["pass_rate"] != t["y"]["pass_rate"]  # NaN: none scored
    assert t["overall"]["failed"] == 2 and "failed" in res.format_table()
    assert res.to_json({})["images"][2]["passed"] is None


def test_eval_reports_the_six_geneval_categories(server, tiny_shapes_checkpoint, tmp_path, capsys):
    rows = {}  # one shapes-world prompt per category (the tiny model knows only those words)
    shapes = PromptSet.load("shapes:heldout")
    for p, c in zip(shapes.prompts, shapes.categories):
        rows.setdefault(c, p)
    f = tmp_path / "meta.jsonl"
    f.write_text("".join(json.dumps(_meta(c, "red" if "color" in c else None, p)) + "\n"
                         for c, p in rows.items()))
    out = tmp_path / "ev"
    code = main(["eval", "--model", str(tiny_shapes_checkpoint), "--prompts", str(f), "--reward",
                 "geneval_remote", "--reward-set", f"url={server.url}", "--reward-set", "backoff=0",
                 "--num", "2", "--steps", "2", "--out", str(out)])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    data = json.loads((out / "eval.json").read_text())
    assert sorted(c for c in data["table"] if c != "overall") == sorted(GENEVAL_TAGS)
    for c in GENEVAL_TAGS:
        assert c in printed.out and data["table"][c]["n"] == 2
        passed = [r["passed"] for r in data["images"] if r["category"] == c]
        assert data["table"][c]["pass_rate"] == pytest.approx(sum(passed) / 2)
    # the stand-in's own verdicts on the images it received
    verdicts = [p for r in server.requests for p in StandIn.geneval(r)["rewards"]]
    assert [r["passed"] for r in data["images"]] == [bool(v) for v in verdicts]
    assert len(server.requests) == 1 and server.requests[0]["only_strict"] is False
    assert server.requests[0]["meta_datas"][0]["tag"] == data["images"][0]["category"]
    assert "reward (geneval_remote): mean" in printed.out


def test_eval_reward_set_needs_reward(capsys):
    assert main(["eval", "--reward-set", "url=http://127.0.0.1:1", "--num", "1"]) == 2
    assert "--reward NAME" in capsys.readouterr().err


def test_eval_passes_metadata_only_to_rewards_that_take_it(tiny_shapes_checkpoint):
    from tempflow.evaluation import evaluate_prompts, takes_metadata
    from tempflow.models.shapes_model import ShapesModel

    seen = []
    two = lambda images, prompts: images.mean(dim=(1, 2, 3))  # noqa: E731
    three = lambda images, prompts, metadata=None: seen.append(metadata) or images.mean(dim=(1, 2, 3))  # noqa: E731
    assert not takes_metadata(two) and takes_metadata(three) and takes_metadata(build_reward("brightness"))
    model = ShapesModel.from_pretrained(tiny_shapes_checkpoint)
    ps = PromptSet(["a red circle"], ["colors"], [{"tag": "colors", "k": 1}])
    for reward in (two, three):
        res = evaluate_prompts(model, ps, reward, 2, 2, 3.0, None, 0, verify=False)
        assert res.reward.shape == (2,)
    assert seen == [[{"tag": "colors", "k": 1}] * 2]

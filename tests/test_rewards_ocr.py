"""The OCR reward: quoted-text parsing, edit distance, reading order, and PP-OCR for real on the CPU.

Images are black text on white drawn with Pillow's scalable default font; the expectations
are what PP-OCR (rapidocr_onnxruntime 1.4, PP-OCRv4) was measured to read: clear text reads
perfectly (reward 1.0, spaces dropped: "Hello World" reads "HelloWorld"), so do text rotated
by 30 degrees and a Gaussian blur of radius 2; a blur of radius 4 reads nothing (0.0); the
left half covered reads "Vorld" (0.4).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from tempflow.errors import UserError
from tempflow.rewards import build_reward, score, score_or_nan
from tempflow.rewards import ocr as ocr_mod
from tempflow.rewards.ocr import (NoQuotedText, edit_distance, normalise, quoted_text,
                                  reading_order, text_reward)

PROMPT = 'A wooden sign that says "Hello World"'


# ------------------------------------------------------------------------------ pure functions

def reference_distance(a: str, b: str) -> int:
    """Textbook Wagner-Fischer, for checking the vectorised one."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


@pytest.mark.parametrize("a,b,d", [
    ("", "", 0), ("", "abc", 3), ("abc", "", 3), ("abc", "abc", 0), ("kitten", "sitting", 3),
    ("flaw", "lawn", 2), ("café", "cafe", 1), ("caf", "café", 1), ("日本語", "日本", 1),
    ("😀a", "a😀", 2), ("Hello", "hello", 1), ("helloworld", "goodbye", 9), ("a", "b", 1),
])
def test_edit_distance_cases(a, b, d):
    assert edit_distance(a, b) == d == edit_distance(b, a) == reference_distance(a, b)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="abcé 日😀", max_size=12), st.text(alphabet="abcé 日😀", max_size=12))
def test_edit_distance_matches_reference(a, b):
    assert edit_distance(a, b) == reference_distance(a, b)


def test_edit_distance_long_texts_are_fast():
    import time
    a, b = "ab" * 2500, "ba" * 2500
    t0 = time.perf_counter()
    assert edit_distance(a, b) == 2               # delete the leading a, append an a
    assert edit_distance("x" * 5000, "") == 5000
    assert time.perf_counter() - t0 < 5


def test_normalise_case_spacing_unicode():
    assert normalise("  OPEN  24\tHOURS\n") == "open24hours"
    assert normalise("OPEN  24\tHOURS", ignore_spaces=False) == "open 24 hours"
    assert normalise("OPEN  24 HOURS", case_sensitive=True) == "OPEN24HOURS"
    assert normalise("ＯＰＥＮ") == "open"                      # full-width letters (NFKC)
    assert normalise("Straße") == "strasse"                    # casefold, not just lower
    assert normalise("Cafe\u0301") == normalise("Café") == "café"  # composed by NFKC
    assert normalise("") == "" and normalise("   ") == ""


def test_text_reward_values():
    assert text_reward("Hello World", "HelloWorld") == 1.0           # spaces ignored by default
    assert text_reward("Hello World", "hello world") == 1.0          # case ignored by default
    assert text_reward("Hello World", "hello world", case_sensitive=True) == pytest.approx(1 - 2 / 10)
    assert text_reward("OPEN 24 HOURS", "OPEN24HOURS", ignore_spaces=False) == pytest.approx(1 - 2 / 13)
    # wrong text: "helloworld" vs "goodbye" is 9 edits of 10 characters
    assert text_reward("Hello World", "Goodbye") == pytest.approx(0.1)
    assert text_reward("Hello World", "") == 0.0
    assert text_reward("abc", "abcabcabcabc") == 0.0                 # clipped at 0, not negative
    assert text_reward("", "") == 1.0 and text_reward("", "x") == 0.0
    assert 0.0 <= text_reward("x" * 3000, "Hello") <= 1.0


@pytest.mark.parametrize("prompt,target", [
    ('A sign that says "OPEN 24 HOURS"', "OPEN 24 HOURS"),
    ("A sign that says \u201cOPEN 24 HOURS\u201d", "OPEN 24 HOURS"),          # curly
    ('A sign "OPEN" above a door "EXIT"', "OPEN EXIT"),                        # several parts
    ("A sign that says 'OPEN'", "OPEN"),                                       # single quotes
    ("A sign that says \u2018OPEN\u2019", "OPEN"),                             # curly single
    ("The cat's sign says 'Don't stop'", "Don't stop"),                       # apostrophes
    ('A poster "DON\'T PANIC" and a mug \'ignored\'', "DON'T PANIC"),         # double first
    ('A sign "  OPEN \n 24 HOURS "', "OPEN 24 HOURS"),                         # spacing collapsed
    ('A sign "" and "EXIT"', "EXIT"),                                          # empty part dropped
    ("A sign \u201eJA\u201c", "JA"),                                           # low-9 opener
])
def test_quoted_text(prompt, target):
    assert quoted_text(prompt) == target


@pytest.mark.parametrize("prompt,why", [
    ("a red circle", "no quoted text"),
    ("the dogs' bowl", "no quoted text"),
    ('A sign that says ""', "only empty quoted text"),
    ('A sign that says "   "', "only empty quoted text"),
    ('A sign that says "OPEN', "unbalanced double quote"),
    ('A sign "OPEN" and "EXIT', "unbalanced double quote"),
    ("", "no quoted text"),
])
def test_quoted_text_missing(prompt, why):
    with pytest.raises(NoQuotedText, match=why):
        quoted_text(prompt)


def test_reading_order():
    box = lambda x, y, w=40, h=20: [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]
    # given bottom-up and right-to-left; the second box of line 1 sits 4 px lower
    results = [(box(10, 100), "BOTTOM"), (box(150, 14), "RIGHT"), (box(10, 10), "LEFT")]
    assert reading_order(results) == "LEFT RIGHT BOTTOM"
    assert reading_order([]) == ""
    assert reading_order([(box(0, 0), "")]) == ""


# ------------------------------------------------------------------------------ the real model

def render(lines, size=256, font_size=28, x=10, y=100):
    """uint8 [size, size, 3]: black text on white, one line per string."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=font_size)
    for k, line in enumerate(lines):
        draw.text((x, y + int(k * font_size * 1.6)), line, fill="black", font=font)
    return img


def tensor(*imgs) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255 for im in imgs])


@pytest.fixture(scope="module")
def reward():
    pytest.importorskip("rapidocr_onnxruntime")
    return build_reward("ocr", threads=1)


@pytest.fixture(scope="module")
def engine(reward):
    return ocr_mod._engine(1, 736)


def read(engine, img) -> str:
    return ocr_mod.read_text(engine, np.array(img), 0.5)


def test_clear_text_reads_perfectly(reward, engine):
    img = render(["Hello World"])
    assert read(engine, img) == "HelloWorld"            # PP-OCR drops the space
    assert score(reward, tensor(img), [PROMPT]).tolist() == [1.0]


def test_clear_text_512(reward):
    img = render(["OPEN 24 HOURS"], size=512, font_size=48, x=24, y=170)
    assert score(reward, tensor(img), ['A neon sign that says "OPEN 24 HOURS"']).tolist() == [1.0]


def test_det_side_native_size(reward):
    fast = build_reward("ocr", threads=1, det_side=256)
    assert ocr_mod._engine(1, 256).text_det.limit_side_len == 256
    assert score(fast, tensor(render(["Hello World"])), [PROMPT]).tolist() == [1.0]


def test_blank_image_reads_nothing(reward, engine):
    img = render([])
    assert read(engine, img) == ""                       # the engine returns None
    assert score(reward, tensor(img), [PROMPT]).tolist() == [0.0]


def test_partly_covered_is_intermediate(reward, engine):
    from PIL import ImageDraw

    img = render(["Hello World"])
    ImageDraw.Draw(img).rectangle([0, 0, 95, 256], fill="white")
    value = score(reward, tensor(img), [PROMPT]).item()
    assert 0.2 <= value <= 0.8                           # measured 0.4: reads "Vorld"
    assert value == pytest.approx(text_reward("Hello World", read(engine, img)))


@pytest.mark.slow
def test_rotated_and_blurred(reward):
    from PIL import ImageFilter

    img = render(["Hello World"])
    rotated = img.rotate(30, fillcolor="white", center=(128, 110))
    light, heavy = img.filter(ImageFilter.GaussianBlur(2)), img.filter(ImageFilter.GaussianBlur(4))
    values = score(reward, tensor(rotated, light, heavy), [PROMPT] * 3).tolist()
    assert values[0] >= 0.9 and values[1] >= 0.9        # measured 1.0 and 1.0
    assert values[2] <= 0.3                              # measured 0.0 (nothing detected)


def test_lines_join_in_reading_order(reward, engine):
    from PIL import ImageDraw, ImageFont

    img = render([])
    draw, font = ImageDraw.Draw(img), ImageFont.load_default(size=28)
    draw.text((10, 120), "BOTTOM", fill="black", font=font)
    draw.text((150, 44), "RIGHT", fill="black", font=font)
    draw.text((10, 40), "LEFT", fill="black", font=font)
    assert read(engine, img) == "LEFT RIGHT BOTTOM"
    values = score(reward, tensor(img, img), ['a page "LEFT RIGHT BOTTOM"', 'a page "BOTTOM RIGHT LEFT"'])
    assert values[0].item() == 1.0 and values[1].item() < 0.7


def test_wrong_text_scores_low(reward, engine):
    img = render(["Goodbye"])
    assert read(engine, img) == "Goodbye"
    assert score(reward, tensor(img), [PROMPT]).item() == pytest.approx(0.1)   # 9 edits of 10


@pytest.mark.slow
def test_batch_equals_one_by_one(reward):
    imgs = [render(["Hello World"]), render(["Goodbye"]), render([])]
    batch = score(reward, tensor(*imgs), [PROMPT] * 3)
    alone = torch.cat([score(reward, tensor(im), [PROMPT]) for im in imgs])
    assert torch.equal(batch, alone) and batch.dtype == torch.float32


def test_end_to_end_mixed_batch(reward, capsys, monkeypatch):
    """build_reward("ocr") + score / score_or_nan: prompts without text are NaN with one warning."""
    monkeypatch.setattr(ocr_mod, "_WARNED", set())
    img = render(["Hello World"])
    bad = ["a plain red circle", 'A sign that says ""', 'A sign that says "Hello World',
           "a plain red circle"]
    prompts = [PROMPT, *bad, 'A sign "' + "Hello World " * 300 + '"']
    scored = score_or_nan(reward, tensor(*[img] * len(prompts)), prompts)
    v = scored.values
    assert v[0].item() == 1.0 and scored.errors == []
    assert torch.isnan(v[1:5]).all()
    assert 0.0 <= v[5].item() < 0.01                     # 10 of 3000 characters read
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3                                 # once per distinct prompt
    assert all(line.startswith("tempflow: warning: OCR reward: prompt ") for line in err)
    assert "has no quoted text" in err[0] and "only empty quoted text" in err[1]
    assert "unbalanced double quote" in err[2] and "score NaN" in err[2]
    score(reward, tensor(img), ["a plain red circle"])   # warned already: silent
    assert capsys.readouterr().err == ""


def test_in_a_weighted_sum(reward):
    img = tensor(render(["Hello World"]))
    both = build_reward("weighted", components=[{"name": "ocr", "weight": 1.0, "kwargs": {"threads": 1}},
                                                {"name": "brightness", "weight": 0.5}])
    expected = 1.0 + 0.5 * build_reward("brightness")(img, [PROMPT])
    assert torch.allclose(score(both, img, [PROMPT]), expected)


def test_float64_images(reward):
    img = tensor(render(["Hello World"])).to(torch.float64)
    assert score(reward, img, [PROMPT]).tolist() == [1.0]


def test_bad_calls(reward):
    with pytest.raises(UserError, match="prompts for 2 images"):
        reward(torch.zeros(2, 3, 32, 32), [PROMPT])
    with pytest.raises(UserError, match=r"images \[B, 3, H, W\]"):
        reward(torch.zeros(3, 32, 32), [PROMPT])
    assert reward(torch.zeros(0, 3, 32, 32), []).shape == (0,)


@pytest.mark.parametrize("kwargs,field", [
    ({"case_sensitive": "yes"}, "case_sensitive"), ({"ignore_spaces": 1}, "ignore_spaces"),
    ({"min_confidence": 2}, "min_confidence"), ({"min_confidence": "high"}, "min_confidence"),
    ({"threads": 0}, "threads"), ({"threads": 1.5}, "threads"), ({"det_side": 16}, "det_side"),
    ({"det_side": "big"}, "det_side"),
])
def test_bad_kwargs(kwargs, field):
    with pytest.raises(UserError, match=field) as e:
        build_reward("ocr", **kwargs)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="does not take"):
        build_reward("ocr", language="en")


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "rapidocr_onnxruntime", None)
    monkeypatch.setattr(ocr_mod, "_ENGINES", {})
    with pytest.raises(UserError, match=r"pip install 'tempflow\[ocr\]'"):
        build_reward("ocr")


def test_prompt_sets_have_quoted_text():
    from pathlib import Path
    import subprocess

    folder = Path(ocr_mod.__file__).resolve().parents[1] / "assets" / "prompts"
    train = (folder / "ocr-train.txt").read_text(encoding="utf-8").splitlines()
    test = (folder / "ocr-test.txt").read_text(encoding="utf-8").splitlines()
    assert len(train) == 200 and len(test) == 50
    assert len(set(train)) == 200 and len(set(test)) == 50
    assert {quoted_text(p) for p in train}.isdisjoint({quoted_text(p) for p in test})
    assert all(len(quoted_text(p)) >= 3 for p in train + test)
    rc = subprocess.run([sys.executable, str(folder / "make_ocr_prompts.py"), "--check"],
                        capture_output=True, text=True)
    assert rc.returncode == 0, rc.stderr

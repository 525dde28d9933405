"""The strict shapes-world verifier: hand-drawn adversarial images with their verdicts, pass
and false-pass rates on renders, and float / PNG verdict equality."""

import numpy as np
import pytest
import torch
from PIL import Image

from tempflow.shapes import CATEGORIES, COLORS, BACKGROUND, parse, perturb, random_prompt
from tempflow.shapes.render import draw, sample_layout, shape_mask
from tempflow.shapes.verify import check, classify_shape, detect_batch, from_layout, verify

RGB = {c: np.array(v, dtype=np.float32) / 255 for c, v in COLORS.items()}
RGB_OFF = {"orange": np.array([245, 140, 20]) / 255, "pink": np.array([235, 110, 160]) / 255,
           "purple": np.array([128, 20, 235]) / 255}


def canvas(size=32):
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = np.array(BACKGROUND) / 255
    return img


def grid(h, w, cy, cx):
    """Pixel-centre coordinates relative to (cy, cx)."""
    yy, xx = np.mgrid[:h, :w] + 0.5
    return yy - cy, xx - cx


def disc(r, cy=16, cx=16, size=32):
    y, x = grid(size, size, cy, cx)
    return x ** 2 + y ** 2 <= r ** 2


def ellipse(rx, ry, cy=16, cx=16, size=32):
    y, x = grid(size, size, cy, cx)
    return (x / rx) ** 2 + (y / ry) ** 2 <= 1


def box(x0, y0, w, h, size=32):
    m = np.zeros((size, size), dtype=bool)
    m[y0:y0 + h, x0:x0 + w] = True
    return m


def at(shape, s, x0, y0, size=32):
    m = np.zeros((size, size), dtype=bool)
    m[y0:y0 + s, x0:x0 + s] = shape_mask(shape, s)
    return m


def paint(*layers, size=32):
    """layers: (mask, colour name or RGB) painted in order."""
    img = canvas(size)
    for m, c in layers:
        img[m] = RGB[c] if isinstance(c, str) else c
    return img


def crown():
    m = box(10, 15, 12, 6)
    for cx in (11, 16, 21):  # three spikes on top
        y, x = grid(32, 32, 15, cx)
        m |= (y < 0) & (y > -6) & (np.abs(x) <= (y + 6) / 3)
    return m


def house():
    m = box(10, 16, 11, 6)
    y, x = grid(32, 32, 10.5, 15.5)
    return m | ((y >= 0) & (y < 5.5) & (np.abs(x) <= y + 0.01))


def right_triangle(s=11, x0=10, y0=10):
    y, x = grid(32, 32, y0, x0)
    return (x >= 0) & (y < s) & (x <= y)


def inverted_triangle():
    return at("triangle", 11, 10, 10)[::-1]


def crescent():
    return disc(5.5) & ~disc(5, cx=19)


def cloud():
    return disc(3.5, 16, 12) | disc(4, 14, 17) | disc(3, 18, 20)


def notched_corner():
    m = box(10, 10, 11, 11)
    m[10:13, 18:21] = False
    return m


def notched_edge():
    m = box(10, 10, 11, 11)
    m[10:13, 14:17] = False
    return m


def hollow_square():
    return box(10, 10, 11, 11) & ~box(13, 13, 5, 5)


def pixel_circle(d, cy, cx):
    """A circle of (non-integer) diameter d at a sub-pixel centre, pixel-centre sampled."""
    return disc(d / 2, cy, cx)


CASES = [
    # (name, image, prompt, expected verdict)
    ("clean square", paint((box(10, 10, 9, 9), "red")), "a red square", True),
    ("rectangle 1.5:1", paint((box(8, 10, 12, 8), "red")), "a red square", False),
    ("rectangle 2:1", paint((box(8, 10, 14, 7), "red")), "a red square", False),
    ("rectangle 1.25:1", paint((box(8, 10, 10, 8), "red")), "a red square", False),
    ("big rectangle 1.3:1", paint((box(4, 8, 17, 13), "red")), "a square", False),
    ("clean circle", paint((disc(5), "blue")), "a blue circle", True),
    ("oval 1.5:1", paint((ellipse(6, 4), "blue")), "a circle", False),
    ("oval 1.3:1", paint((ellipse(6.5, 5), "blue")), "a circle", False),
    ("crescent", paint((crescent(), "blue")), "a circle", False),
    ("cloud", paint((cloud(), "blue")), "a circle", False),
    ("two fused circles", paint((disc(4, 16, 11) | disc(4, 16, 18), "green")), "a circle",
     False),
    ("two fused circles, counted", paint((disc(4, 16, 11) | disc(4, 16, 18), "green")),
     "two circles", False),
    ("clean triangle", paint((at("triangle", 11, 10, 10), "yellow")), "a triangle", True),
    ("crown", paint((crown(), "yellow")), "a triangle", False),
    ("house", paint((house(), "yellow")), "a triangle", False),
    ("house as square", paint((house(), "yellow")), "a square", False),
    ("right-angled triangle", paint((right_triangle(), "yellow")), "a triangle", False),
    ("inverted triangle", paint((inverted_triangle(), "yellow")), "a triangle", False),
    ("ring", paint((disc(5.5) & ~disc(2.5), "cyan")), "a circle", False),
    ("thick ring", paint((disc(6) & ~disc(1.6), "cyan")), "a circle", False),
    ("hollow square", paint((hollow_square(), "cyan")), "a square", False),
    ("square with a 1 px hole", paint((box(10, 10, 9, 9) & ~box(14, 14, 1, 1), "red")),
     "a square", False),
    ("plus sign is a cross", paint((at("cross", 11, 10, 10), "magenta")), "a cross", True),
    ("plus sign is no square", paint((at("cross", 11, 10, 10), "magenta")), "a square", False),
    ("plus sign is no circle", paint((at("cross", 11, 10, 10), "magenta")), "a circle", False),
    ("thin plus sign", paint((box(15, 9, 2, 13) | box(9, 15, 13, 2), "magenta")), "a cross",
     False),
    ("clean diamond", paint((at("diamond", 11, 10, 10), "white")), "a diamond", True),
    ("diamond is no square", paint((at("diamond", 11, 10, 10), "white")), "a square", False),
    ("notched square (corner)", paint((notched_corner(), "red")), "a square", False),
    ("notched square (edge)", paint((notched_edge(), "red")), "a square", False),
    ("chipped corner pixel", paint((box(10, 10, 10, 10) & ~box(19, 10, 1, 1), "red")),
     "a square", True),
    ("touching same colour",
     paint((box(6, 10, 8, 8) | box(14, 10, 8, 8), "red")), "two red squares", False),
    ("touching different colours",
     paint((box(6, 10, 8, 8), "red"), (at("circle", 9, 14, 9), "blue")),
     "a red square and a blue circle", True),
    ("overlapping different colours",
     paint((at("circle", 11, 12, 9), "blue"), (box(6, 10, 9, 9), "red")),
     "a red square and a blue circle", False),
    ("off-palette extra (orange)",
     paint((disc(4, 8, 8), "red"), (box(18, 18, 9, 9), RGB_OFF["orange"])), "a red circle",
     False),
    ("off-palette extra (purple)",
     paint((disc(4, 8, 8), "red"), (disc(4, 22, 22), RGB_OFF["purple"])), "a circle", False),
    ("off-palette object alone (pink)", paint((disc(4.5, 16.5, 16.5), RGB_OFF["pink"])),
     "a circle", False),
    ("off-palette object alone (orange)", paint((box(10, 10, 9, 9), RGB_OFF["orange"])),
     "one square", False),
    ("grey object is a dim white one",
     paint((disc(4, 8, 8), "red"), (box(18, 18, 9, 9), np.array([0.55, 0.55, 0.55]))),
     "a red circle", False),
    ("off-palette speck is noise",
     paint((disc(4.5, 16.5, 16.5), "red"), (box(26, 3, 2, 2), RGB_OFF["orange"])),
     "a red circle", True),
    ("other-colour speck on an object is noise",
     paint((box(10, 10, 10, 10), "green"), (box(13, 13, 2, 2), "red")), "a green square", True),
    ("small circle is small", paint((at("circle", 8, 10, 10), "red")), "a small circle", True),
    ("9 px circle is not small", paint((at("circle", 9, 10, 10), "red")), "a small circle",
     False),
    ("12 px square is big", paint((at("square", 12, 10, 10), "red")), "a big square", True),
    ("11 px square is not big", paint((at("square", 11, 10, 10), "red")), "a big square",
     False),
    ("position by colour",
     paint((at("circle", 9, 4, 10), "blue"), (at("circle", 9, 19, 10), "red")),
     "a blue circle left of a red circle", True),
    ("position by colour, swapped",
     paint((at("circle", 9, 4, 10), "blue"), (at("circle", 9, 19, 10), "red")),
     "a red circle left of a blue circle", False),
    ("colour binding, same shape",
     paint((at("square", 9, 4, 10), "blue"), (at("square", 9, 19, 10), "white")),
     "a white square and a blue square", True),
]


@pytest.mark.parametrize("name,img,prompt,want", CASES, ids=[c[0] for c in CASES])
def test_adversarial_table(name, img, prompt, want):
    r = verify(img, prompt)
    assert r.passed == want, (name, r.details["summary"])
    assert (r.score == 1.0) == r.passed and 0.0 <= r.score <= 1.0
    # the 8-bit PNG gets the same verdict
    png = verify((img * 255).round().astype(np.uint8), prompt)
    assert png.passed == r.passed and png.score == r.score


@pytest.mark.parametrize("d", [7.0, 7.5, 8.0, 8.5, 9.0])
def test_small_pixelated_circles_are_circles(d):
    rng = np.random.default_rng(int(d * 10))
    for _ in range(12):
        cy, cx = 16 + rng.uniform(-0.5, 0.5, size=2)
        img = paint((pixel_circle(d, cy, cx), "green"))
        r = verify(img, "a circle")
        assert r.passed, (d, cy, cx, r.details["summary"])
        assert not verify(img, "a square").passed


@pytest.mark.parametrize("shape", ["circle", "square", "triangle", "diamond", "cross"])
def test_clean_shapes_at_every_size(shape):
    for s in range(8, 14):  # the world's objects are 8-13 px at 32 px
        img = paint((at(shape, s, 9, 9), "white"))
        for other in ("circle", "square", "triangle", "diamond", "cross"):
            assert verify(img, f"a {other}").passed == (other == shape), (shape, s, other)
    big = paint((at(shape, 24, 20, 20, size=64), "red"), size=64)
    assert verify(big, f"a {shape}").passed


def test_blob_fails_and_earns_no_shape_credit():
    blob = paint((disc(4, 8, 8), "red"), (ellipse(6, 3.5, 22, 20), "blue"))
    r = verify(blob, "a red circle and a blue circle")
    assert not r.passed and r.details["blobs"] == 1
    assert r.score == pytest.approx((10 + 5) / 20)  # the blob: present + colour, no shape
    extra = verify(blob, "a red circle")  # the blob is an extra object
    assert not extra.passed and extra.score == pytest.approx(0.5)


def test_classify_shape_masks():
    assert classify_shape(shape_mask("circle", 8)) == "circle"
    assert classify_shape(shape_mask("cross", 9)) == "cross"
    assert classify_shape(np.ones((6, 12), dtype=bool)) == "blob"
    ring = disc(5.5) & ~disc(2.5)
    assert classify_shape(ring) == "blob"
    assert classify_shape(np.zeros((5, 5), dtype=bool)) == "blob"


N_RENDERS = 2400  # 800 per condition


def _render_set(n, seed, size=32):
    rng = np.random.default_rng(seed)
    prompts = [random_prompt(rng) for _ in range(n)]
    layouts = [sample_layout(p, rng, size) for p in prompts]
    negatives = []
    for p, lay in zip(prompts, layouts):
        while True:  # a different prompt that the drawn scene does not satisfy
            q = random_prompt(rng)
            if q != p and not check(q, from_layout(lay), size).passed:
                negatives.append(q)
                break
    images = torch.from_numpy(np.stack([draw(lay, size) for lay in layouts])).permute(0, 3, 1, 2)
    return rng, prompts, negatives, images


CONDITIONS = {
    "clean": {},
    "noisy": {"noise_std": 0.05, "blur_sigma": 0.5},
    "degraded": {"noise_std": 0.05, "blur_sigma": 0.7, "color_shift": 0.08, "stray_blobs": 3},
}


@pytest.fixture(scope="module")
def rates():
    rng, prompts, negatives, images = _render_set(N_RENDERS, 2024)
    per = N_RENDERS // len(CONDITIONS)
    out = {}
    for k, (name, kw) in enumerate(CONDITIONS.items()):
        sl = slice(k * per, (k + 1) * per)
        imgs = perturb(images[sl], rng, **kw) if kw else images[sl]
        found = detect_batch(imgs)
        own = [check(p, f, 32) for p, f in zip(prompts[sl], found)]
        neg = [check(q, f, 32) for q, f in zip(negatives[sl], found)]
        out[name] = (own, neg, prompts[sl])
    return out


def test_render_pass_and_false_pass_rates(rates):
    own = [r for o, _, _ in rates.values() for r in o]
    neg = [r for _, n, _ in rates.values() for r in n]
    own_rate = np.mean([r.passed for r in own])
    neg_rate = np.mean([r.passed for r in neg])
    assert len(own) == N_RENDERS
    assert own_rate >= 0.995, own_rate
    assert neg_rate <= 0.001, neg_rate
    for name, (o, n, prompts) in rates.items():
        rate = np.mean([r.passed for r in o])
        assert rate >= (1.0 if name == "clean" else 0.985), (name, rate)
        cats = [parse(p).category for p in prompts]
        for c in CATEGORIES:
            sub = [r.passed for r, k in zip(o, cats) if k == c]
            assert np.mean(sub) >= 0.96, (name, c)
    for r in own + neg:
        assert (r.score == 1.0) == r.passed and 0.0 <= r.score <= 1.0
    assert np.mean([r.score for r in neg]) < 0.75


def test_float_and_png_verdicts_agree(tmp_path):
    rng, prompts, _, images = _render_set(300, 7)
    imgs = perturb(images, rng, noise_std=0.06, blur_sigma=0.8, color_shift=0.08,
                   stray_blobs=2)
    png = (imgs.clamp(0, 1) * 255).round().to(torch.uint8).float() / 255
    a, b = detect_batch(imgs), detect_batch(png)
    for p, fa, fb in zip(prompts, a, b):
        ra, rb = check(p, fa, 32), check(p, fb, 32)
        assert (ra.passed, ra.score) == (rb.passed, rb.score), p
    # a real PNG file round trip for a few
    for i in range(8):
        path = tmp_path / f"{i}.png"
        arr = (imgs[i].permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
        Image.fromarray(arr).save(path)
        back = np.asarray(Image.open(path)).astype(np.float32) / 255
        r_float, r_png = verify(imgs[i], prompts[i]), verify(back, prompts[i])
        assert (r_float.passed, r_float.score) == (r_png.passed, r_png.score)

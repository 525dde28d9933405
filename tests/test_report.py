"""`tempflow report`: the HTML page from run folders, checked in headless Chromium."""

import base64
import io
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tempflow.config import TrainConfig, config_to_dict
from tempflow.errors import UserError
from tempflow.report import build_report, load_run
from tempflow.report.plots import smooth
from tempflow.report.runs import cumulative
from tempflow.utils.images import save_grid

CATEGORIES = ("colors", "counting")


def fake_run(path, branching: bool, iterations: int = 6, eval_every: int = 3, final_pass: float = 0.6):
    """A run folder as `tempflow train` lays it out, with made-up metrics and random grids."""
    cfg = config_to_dict(TrainConfig())
    cfg["algorithm"]["branching"] = cfg["algorithm"]["weighting"] = branching
    cfg["run"]["out"] = str(path)
    (path / "grids").mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    records = []
    for it in range(iterations + 1):
        if it % eval_every == 0:
            p = 0.4 + (final_pass - 0.4) * it / iterations
            records.append({"iteration": it, "eval/pass_rate": p, "eval/reward": p + 0.1,
                            **{f"eval/pass_rate/{c}": p for c in CATEGORIES}})
            g = torch.Generator().manual_seed(it)
            save_grid(torch.rand(4, 3, 8, 8, generator=g), path / "grids" / f"eval_{it:05d}.png", nrow=2,
                      prompts=["a red circle"] * 2 + ["two squares"] * 2)
        if it < iterations:
            records.append({"iteration": it, "reward/mean": 0.5 + 0.01 * it, "count/nfe": 1000,
                            "count/nfe_grad": 100, "count/decodes": 32, "count/reward_calls": 32,
                            "time/sample": 1.0, "time/train": 0.5, "time/iteration": 2.0})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def two_runs(tmp_path):
    return [fake_run(tmp_path / "tempflow", True, final_pass=0.7),
            fake_run(tmp_path / "flowgrpo", False, final_pass=0.5)]


def embedded_pngs(page: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(d)))
            for d in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_cumulative_cost_counts_iterations_before_each_evaluation():
    train = [{"iteration": i, "count/nfe": 10 * (i + 1)} for i in range(3)]
    assert cumulative(train, "count/nfe") == {0: 0.0, 1: 10.0, 2: 30.0, 3: 60.0}


def test_smooth_is_a_trailing_mean():
    assert smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]


def test_report_holds_every_run_table_and_embedded_image(two_runs):
    page = build_report([str(p) for p in two_runs])
    assert "TempFlow-GRPO" in page and "Flow-GRPO" in page
    # 1 reward plot + 3 pass-rate plots + first and last grid of each run
    images = embedded_pngs(page)
    assert len(images) == 4 + 2 * 2
    assert all(im.size[0] > 0 for im in images)
    assert not re.search(r'src="(?!data:)', page)  # nothing outside the file
    # the GenEval-style table: first and last evaluation per category, with the change
    assert "iteration 0" in page and "iteration 6" in page and "+0.300" in page and "+0.100" in page
    # config differences name the ablation switches
    assert "algorithm.branching" in page and "algorithm.weighting" in page
    assert "a red circle; two squares" in page  # the grids' prompts, without repeats


def test_report_reads_eval_folders(tmp_path):
    from tempflow.evaluation import EvalResult, write_eval

    res = EvalResult(["a red circle"] * 2, ["colors"] * 2, torch.tensor([True, False]),
                     torch.tensor([1.0, 0.5]), torch.rand(2, 3, 8, 8), torch.tensor([1.0, 0.5]))
    write_eval(res, tmp_path / "base", {"model": "shapes", "prompts": "shapes:heldout", "reward": "shapes",
                                         "images_per_prompt": 2, "steps": 4, "guidance_scale": 3.0, "seed": 0}, 2)
    page = build_report([str(tmp_path / "base")])
    assert "base/eval.json" in page and len(embedded_pngs(page)) == 1
    assert re.search(r"<td>colors</td><td>0\.500</td><td>0\.750</td><td>2</td>", page)


def test_report_errors_name_the_folder(tmp_path):
    with pytest.raises(UserError, match="not a folder"):
        load_run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no metrics.jsonl"):
        load_run(tmp_path / "empty")
    from tempflow.cli.main import main
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r.html")]) == 2
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r.pdf")]) == 2


def test_truncated_last_metrics_line_is_skipped(two_runs):
    path = two_runs[0] / "metrics.jsonl"
    path.write_text(path.read_text() + '{"iteration": 6, "rew')
    assert len(load_run(two_runs[0]).train) == 6


# ------------------------------------------------------------------ headless Chromium

CHECK = """<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0).length;
  document.title = 'IMAGES ' + ok + '/' + imgs.length;
});
</script>"""


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.skip("no Chromium to render the report (Debian: apt-get install chromium)")
    return exe


def rendered_image_count(exe: str, page_path) -> tuple[int, int]:
    """(images loaded with a size, images) after the page's load event, from the rendered DOM."""
    text = page_path.read_text().replace("</body>", CHECK + "</body>")
    probe = page_path.with_name("probe.html")
    probe.write_text(text)
    res = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                          "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r"<title>IMAGES (\d+)/(\d+)</title>", res.stdout)
    assert m, f"Chromium rendered no result: {res.stderr[-2000:]}"
    return int(m.group(1)), int(m.group(2))


def test_report_renders_in_chromium_with_every_image_loaded(two_runs, tmp_path):
    from tempflow.cli.main import main

    exe = chromium()
    out = tmp_path / "out" / "report.html"
    assert main(["report", *map(str, two_runs), "--out", str(out)]) == 0
    loaded, total = rendered_image_count(exe, out)
    assert total == 8 and loaded == total


def test_report_screenshot_is_not_blank(two_runs, tmp_path):
    """Chromium's screenshot of the page shows content: many distinct colours, not one fill."""
    from tempflow.cli.main import main

    exe = chromium()
    out = tmp_path / "report.html"
    assert main(["report", *map(str, two_runs), "--out", str(out)]) == 0
    shot = tmp_path / "shot.png"
    res = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          "--virtual-time-budget=10000", "--window-size=1200,1600", f"--screenshot={shot}",
                          out.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.is_file(), res.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3)
    colours = len(np.unique(pixels, axis=0))
    assert pixels.std(axis=0).max() > 10 and colours > 50, (colours, pixels.std(axis=0))


def test_chromium_check_sees_a_broken_image(tmp_path):
    exe = chromium()
    page = tmp_path / "broken.html"
    good = base64.b64encode(Image.new("RGB", (4, 4)).tobytes()).decode()  # raw bytes: not a PNG
    page.write_text(f'<html><head><title>x</title></head><body><img src="data:image/png;base64,{good}">'
                    "</body></html>")
    assert rendered_image_count(exe, page) == (0, 1)

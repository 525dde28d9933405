"""run.report_to: a tiny training run logs to each tracker that can write locally, and what
the tracker stored is read back and compared with metrics.jsonl, grids/ and the final table."""

from __future__ import annotations

import glob
import json
import math
import struct
import sys
from pathlib import Path

import pytest
import torch

from tempflow.config import config_from_dict
from tempflow.errors import UserError

ITERATIONS = 2


def _tiny_model(path: Path) -> Path:
    from tempflow.models.shapes_model import ShapesModel, ShapesModelConfig
    from tempflow.shapes import vocabulary

    torch.manual_seed(0)
    ShapesModel(ShapesModelConfig(vocab=vocabulary(), num_layers=2, num_heads=2, head_dim=8,
                                  text_dim=16, text_layers=1)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trackers")
    (root / "eval.txt").write_text("a red circle\ntwo blue squares\n")
    _tiny_model(root / "model")
    return root


def tiny_config(root: Path, out: Path, report_to: list[str]):
    return config_from_dict({
        "model": {"name": str(root / "model"), "lora": {"rank": 2, "alpha": 2}},
        "sampling": {"steps": 4, "eval_steps": 2},
        "algorithm": {"num_branches": 2, "seeds_per_prompt": 1, "branch_points": 1},
        "train": {"iterations": ITERATIONS, "prompts_per_iteration": 2},
        "prompts": {"eval": str(root / "eval.txt")},
        "run": {"out": str(out), "eval_every": 1, "eval_images_per_prompt": 1, "save_every": 0,
                "log_images_every": 1, "report_to": report_to},
    })


def train(cfg, resume: bool = False):
    from tempflow.training.loop import train as loop_train

    return loop_train(cfg, progress=False, resume=resume)


def expected_scalars(run: Path) -> dict[str, dict[int, float]]:
    """{key: {iteration: value}} of every finite number in metrics.jsonl."""
    out: dict[str, dict[int, float]] = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        for k, v in r.items():
            if k != "iteration" and isinstance(v, (int, float)) and math.isfinite(v):
                out.setdefault(k, {})[r["iteration"]] = float(v)
    return out


def expected_table(run: Path) -> dict[str, float]:
    last = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()
            if "eval/pass_rate" in json.loads(x)][-1]
    table = {k.rsplit("/", 1)[1]: v for k, v in last.items() if k.startswith("eval/pass_rate/")}
    return {**table, "overall": last["eval/pass_rate"]}


def grid_files(run: Path) -> dict[tuple[str, int], Path]:
    return {(f.stem.split("_")[0], int(f.stem.split("_")[1])): f for f in (run / "grids").glob("*.png")}


def grid_steps(run: Path) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {"eval": [], "train": []}
    for f in sorted((run / "grids").glob("*.png")):
        kind, step = f.stem.split("_")
        out[kind].append(int(step))
    return out


# ---------------------------------------------------------------------------- config and errors

def test_unknown_tracker_is_a_config_error():
    from tempflow.config import load_config

    with pytest.raises(UserError, match=r"run\.report_to .*'wandbb' is not a tracker"):
        load_config(None, ["run.report_to=[tensorboard, wandbb]"])
    with pytest.raises(UserError, match="without repeats"):
        load_config(None, ["run.report_to=[wandb, wandb]"])
    assert load_config(None, []).run.report_to == ["tensorboard"]
    assert load_config(None, ["run.report_to=[]"]).run.report_to == []


def test_unknown_tracker_exits_2_through_the_cli(tmp_path, capsys):
    from tempflow.cli.main import main

    code = main(["train", "--set", "run.report_to=[neptune]", "--set", f"run.out={tmp_path / 'r'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "'neptune' is not a tracker" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("name", ["wandb", "swanlab", "mlflow", "trackio"])
def test_missing_package_names_the_extra(name, monkeypatch):
    from tempflow.training.trackers import TRACKERS, require_installed

    monkeypatch.setitem(sys.modules, TRACKERS[name], None)  # import (and find_spec) now fail
    with pytest.raises(UserError, match=rf"pip install 'tempflow\[{name}\]'"):
        require_installed(["tensorboard", name])


def test_missing_package_stops_before_any_training_work(tiny, tmp_path, monkeypatch, capsys):
    """Through the CLI: exit 2, one line, and the run folder is left without a run in it."""
    import yaml

    from tempflow.cli.main import main
    from tempflow.config import config_to_dict

    monkeypatch.setitem(sys.modules, "wandb", None)
    out = tmp_path / "run"
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump(config_to_dict(tiny_config(tiny, out, ["wandb"]))))
    code = main(["train", "--config", str(cfg_file), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "pip install 'tempflow[wandb]'" in err
    assert not out.exists() or not any(out.iterdir())


# ---------------------------------------------------------------------------- TensorBoard

def tb_events(run: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_gets_metrics_grids_and_table(tiny, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(tiny, out, ["tensorboard"]))
    acc = tb_events(out)
    for key, values in expected_scalars(out).items():
        got = {e.step: e.value for e in acc.Scalars(key)}
        assert got == pytest.approx(values, rel=1e-6), key
    steps = grid_steps(out)
    assert steps == {"eval": list(range(ITERATIONS + 1)), "train": list(range(1, ITERATIONS + 1))}
    for kind, want in steps.items():
        assert [e.step for e in acc.Images(f"grids/{kind}")] == want
    text = acc.Tensors("eval/geneval_table/text_summary")[-1].tensor_proto.string_val[0].decode()
    for category, rate in expected_table(out).items():
        assert f"| {category} | {rate:.3f} |" in text


def test_no_tracker_writes_no_events(tiny, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(tiny, out, []))
    assert (out / "metrics.jsonl").is_file() and not (out / "tb").exists()


# ---------------------------------------------------------------------------- wandb (offline)

def wandb_records(path: Path):
    """The protobuf records of an offline run's .wandb file (a LevelDB-style log: a 7-byte
    header, then 32 KiB blocks of chunks with a 7-byte header: CRC, length, type)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and n == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + n]
        if len(chunk) < n:
            raise EOFError(f"{path} ends inside a record")
        pos += 7 + n
        buf = chunk if kind in (1, 2) else buf + chunk  # FULL, FIRST | MIDDLE, LAST
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            yield rec


def wandb_history(run_dir: Path, want: set[str] = frozenset(), wait_s: float = 30.0) -> dict[str, dict[int, object]]:
    """The run's history by key and step. wandb's service process may still be writing the file's
    last records after the run finished (seen on a loaded machine): a file that ends inside a
    record or does not parse, or whose history still lacks a key of ``want`` (the last records,
    such as the final evaluation's), is read again for up to ``wait_s`` seconds; then the error
    stands, or the history is returned as it is and the test's comparison fails."""
    import time

    from google.protobuf.message import DecodeError

    deadline = time.monotonic() + wait_s
    while True:
        try:
            history = _wandb_history(run_dir)
            if want <= set(history) or time.monotonic() > deadline:
                return history
        except (EOFError, DecodeError):
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def _wandb_history(run_dir: Path) -> dict[str, dict[int, object]]:
    [log] = glob.glob(str(run_dir / "*.wandb"))
    out: dict[str, dict[int, object]] = {}
    for rec in wandb_records(Path(log)):
        if rec.WhichOneof("record_type") != "history":
            continue
        items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}
        for k, v in items.items():
            out.setdefault(k, {})[items["_step"]] = v
    return out


def test_wandb_offline_gets_metrics_grids_and_table(tiny, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb not installed (pip install 'tempflow[wandb]')")
    for k in ("WANDB_DIR", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RESUME"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    train(tiny_config(tiny, out, ["wandb"]))
    assert not (out / "tb").exists()
    [run_dir] = (out / "wandb").glob("offline-run-*")
    expected = expected_scalars(out)
    history = wandb_history(run_dir, want=set(expected))
    for key, values in expected.items():
        assert {s: float(v) for s, v in history[key].items()} == pytest.approx(values, rel=1e-6), key
    for kind, want in grid_steps(out).items():
        logged = history[f"grids/{kind}/filenames"]  # wandb.Image lists (one grid each)
        assert sorted(logged) == want
        assert all((run_dir / "files" / rel).is_file() for names in logged.values() for rel in names)
    [table_rel] = history["eval/geneval_table/path"].values()
    table = json.loads((run_dir / "files" / table_rel).read_text())
    assert table["columns"] == ["category", "pass_rate"]
    assert dict(map(tuple, table["data"])) == pytest.approx(expected_table(out))


# ---------------------------------------------------------------------------- mlflow (local sqlite)

@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory) -> str:
    """One local sqlite tracking store for the module (creating its tables takes ~10 s). The
    file store (mlruns/ folders) cannot hold a metric 'a/b' next to 'a/b/c', as
    eval/pass_rate and eval/pass_rate/<category> are, so it is not used."""
    pytest.importorskip("mlflow", reason="mlflow not installed (pip install 'tempflow[mlflow]')")
    pytest.importorskip("sqlalchemy", reason="mlflow's sqlite store needs sqlalchemy and alembic")
    pytest.importorskip("alembic", reason="mlflow's sqlite store needs sqlalchemy and alembic")
    return "sqlite:///" + str(tmp_path_factory.mktemp("mlflow") / "mlflow.db")


def mlflow_env(monkeypatch, uri: str, tmp_path: Path, experiment: str):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", experiment)
    for k in ("MLFLOW_RUN_ID", "MLFLOW_TAGS", "MLFLOW_NESTED_RUN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.chdir(tmp_path)  # artifacts go to ./mlruns by default
    return MlflowClient(tracking_uri=uri)


def mlflow_runs(client, experiment: str) -> list:
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                              order_by=["attributes.start_time DESC"])


def test_mlflow_gets_metrics_grids_and_table(tiny, tmp_path, monkeypatch, mlflow_db):
    client = mlflow_env(monkeypatch, mlflow_db, tmp_path, "fresh")
    out = tmp_path / "run"
    train(tiny_config(tiny, out, ["mlflow", "tensorboard"]))
    [run] = mlflow_runs(client, "fresh")
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.params["algorithm.num_branches"] == "2"
    for key, values in expected_scalars(out).items():
        got = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        assert got == pytest.approx(values, rel=1e-6), key
    logged = sorted(Path(a.path).name for a in client.list_artifacts(run.info.run_id, "grids"))
    assert logged == sorted(f.name for f in (out / "grids").glob("*.png"))
    table = json.loads(Path(client.download_artifacts(run.info.run_id, "eval_geneval_table.json",
                                                      str(tmp_path))).read_text())
    assert dict(map(tuple, table["data"])) == pytest.approx(expected_table(out))
    assert (out / "tb").is_dir()  # both trackers at once


# ---------------------------------------------------------------------------- swanlab (offline)

def swanlab_records(run_dir: Path) -> list:
    """The protobuf records of an offline SwanLab run's .swanlab file (the same LevelDB-style
    log as wandb's, header ':SWL')."""
    from swanlab.proto.swanlab.record.v1.record_pb2 import Record
    from swanlab.sdk.internal.core_python.store import DataStoreReader

    [log] = run_dir.glob("*.swanlab")
    reader = DataStoreReader()
    reader.open(log)
    out = []
    for data in reader:
        rec = Record()
        rec.ParseFromString(data)
        out.append(rec)
    reader.close()
    return out


def same_pixels(a: Path, b: Path) -> bool:
    from PIL import Image

    with Image.open(a) as x, Image.open(b) as y:
        return x.convert("RGB").tobytes() == y.convert("RGB").tobytes() and x.size == y.size


def test_swanlab_offline_gets_metrics_grids_and_table(tiny, tmp_path, monkeypatch):
    pytest.importorskip("swanlab", reason="swanlab not installed (pip install 'tempflow[swanlab]'; "
                                          "it needs protobuf<7, see docs/training.md)")
    for k in ("SWANLAB_LOG_DIR", "SWANLAB_LOGDIR", "SWANLAB_PROJECT", "SWANLAB_API_KEY"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SWANLAB_MODE", "offline")
    from swanlab.proto.swanlab.run.v1.run_pb2 import RunState

    out = tmp_path / "run"
    train(tiny_config(tiny, out, ["swanlab"]))
    assert not (out / "tb").exists()
    [run_dir] = (out / "swanlog").glob("run-*")  # RUN/swanlog/ by default
    records = swanlab_records(run_dir)
    kinds = [r.WhichOneof("record_type") for r in records]
    assert kinds[0] == "start" and kinds[-1] == "finish"
    assert records[0].start.project == "tempflow" and records[0].start.name == "run"
    assert records[-1].finish.state == RunState.RUN_STATE_FINISHED
    scalars_: dict[str, dict[int, float]] = {}
    media: dict[str, dict[int, list[str]]] = {}
    for r in records:  # SwanLab's own system metrics (CPU, memory) are __swanlab__.*
        if r.WhichOneof("record_type") == "scalar" and not r.scalar.key.startswith("__swanlab__"):
            scalars_.setdefault(r.scalar.key, {})[r.scalar.step] = r.scalar.value.number
        elif r.WhichOneof("record_type") == "media":
            files = [i.filename for i in r.media.value.items]
            media.setdefault(r.media.key, {})[r.media.step] = files
    want = expected_scalars(out)
    assert set(scalars_) == set(want)
    for key, values in want.items():
        assert scalars_[key] == pytest.approx(values, rel=1e-6), key
    for kind, steps in grid_steps(out).items():
        logged = media[f"grids/{kind}"]
        assert sorted(logged) == steps
        for step, [name] in logged.items():
            assert same_pixels(run_dir / "media" / "image" / name,
                               grid_files(out)[kind, step]), (kind, step)
    [(step, [name])] = media["eval/geneval_table"].items()
    assert step == ITERATIONS
    text = (run_dir / "media" / "text" / name).read_text()
    for category, rate in expected_table(out).items():
        assert f"| {category} | {rate:.3f} |" in text
    import yaml

    config = yaml.safe_load((run_dir / "files" / "config.yaml").read_text())
    assert config["algorithm.num_branches"]["value"] == 2 and "allow_val_change" not in config


# ---------------------------------------------------------------------------- trackio (local)

def test_trackio_gets_metrics_grids_and_table(tiny, tmp_path, monkeypatch):
    """trackio keeps a project in TRACKIO_DIR/<project>.db (SQLite; the schema is documented
    by trackio) and media under TRACKIO_DIR/media/."""
    import sqlite3

    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))  # read when trackio is imported
    pytest.importorskip("trackio", reason="trackio not installed (pip install 'tempflow[trackio]'; "
                                          "it needs pillow<13, see docs/training.md)")
    from trackio.sqlite_storage import SQLiteStorage
    from trackio.utils import MEDIA_DIR

    monkeypatch.setenv("TRACKIO_PROJECT", "tempflow-test")
    for k in ("TRACKIO_SPACE_ID", "TRACKIO_DATASET_ID"):
        monkeypatch.delenv(k, raising=False)
    out = tmp_path / "run"
    train(tiny_config(tiny, out, ["trackio"]))
    assert not (out / "tb").exists()
    db = SQLiteStorage.get_project_db_path("tempflow-test")
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT run_name, step, metrics FROM metrics ORDER BY id").fetchall()
        [(config,)] = conn.execute("SELECT config FROM configs").fetchall()
    assert {name for name, _, _ in rows} == {"run"}
    logged: dict[str, dict[int, object]] = {}
    for _, step, metrics in rows:
        for k, v in json.loads(metrics).items():
            assert step not in logged.get(k, {}), (k, step)  # each key once per step
            logged.setdefault(k, {})[step] = v
    for key, values in expected_scalars(out).items():
        assert logged[key] == pytest.approx(values, rel=1e-6), key
    for kind, steps in grid_steps(out).items():
        images = logged[f"grids/{kind}"]
        assert sorted(images) == steps
        for step, image in images.items():
            assert image["_type"] == "trackio.image"
            assert same_pixels(MEDIA_DIR / image["file_path"],
                               grid_files(out)[kind, step]), (kind, step)
    [(step, table)] = logged["eval/geneval_table"].items()
    assert step == ITERATIONS and table["_type"] == "trackio.table"
    rates = {r["category"]: r["pass_rate"] for r in table["_value"]}
    assert rates == pytest.approx(expected_table(out))
    config = json.loads(config)
    assert config["algorithm.num_branches"] == 2 and "allow_val_change" not in config


# ---------------------------------------------------------------------------- resume

def test_resumed_run_replays_history_into_a_new_tracker_run(tiny, tmp_path, monkeypatch, mlflow_db):
    """A run stopped after one iteration and resumed: the tracker's second run holds every
    record of the whole run, and TensorBoard holds each step once more (purged, then rewritten)."""
    import dataclasses

    client = mlflow_env(monkeypatch, mlflow_db, tmp_path, "resumed")
    out = tmp_path / "run"
    cfg = tiny_config(tiny, out, ["mlflow", "tensorboard"])
    cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, save_every=1))
    first = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, iterations=1))
    train(first)
    train(cfg, resume=True)
    runs = mlflow_runs(client, "resumed")
    assert len(runs) == 2
    for key, values in expected_scalars(out).items():
        got = {m.step: m.value for m in client.get_metric_history(runs[0].info.run_id, key)}
        assert got == pytest.approx(values, rel=1e-6), key
    logged = sorted(Path(a.path).name for a in client.list_artifacts(runs[0].info.run_id, "grids"))
    assert logged == sorted(f.name for f in (out / "grids").glob("*.png"))
    acc = tb_events(out)
    for key, values in expected_scalars(out).items():
        assert {e.step: e.value for e in acc.Scalars(key)} == pytest.approx(values, rel=1e-6), key
    for kind, want in grid_steps(out).items():
        assert sorted({e.step for e in acc.Images(f"grids/{kind}")}) == want

# Copyright (c) 2026 SelfMedHPM bundles contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""MLflow tracking of both bundles: MONAI's plain ``--tracking mlflow`` with its local store, the bundles'
``configs/mlflow_tracking.json`` against a real ``mlflow server``, the command line, and rank-0-only logging under
torchrun. What lands in MLflow is read back through ``MlflowClient``."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import mlflow
import pytest
import torch
from helpers import PRETRAIN, SEG_TINY, SEGMENT, configs, run_workflow

MlflowClient = mlflow.MlflowClient  # mlflow is a dependency: a broken install fails here instead of skipping

pytestmark = pytest.mark.slow

PRE_TINY = {"pixdim": [3.0, 3.0, 3.0], "num_samples": 2}
ORGANS = [
    "spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach", "aorta",
    "inferior vena cava", "portal and splenic veins", "pancreas", "right adrenal gland", "left adrenal gland",
]  # fmt: skip
PRE_SETTINGS = str(PRETRAIN / "configs" / "mlflow_tracking.json")
SEG_SETTINGS = str(SEGMENT / "configs" / "mlflow_tracking.json")
SERVER_START_S = 120


@pytest.fixture(autouse=True)
def no_tracking_env(monkeypatch):
    """``MLFLOW_TRACKING_URI`` would take precedence over every URI these tests pass."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_server(uri: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"mlflow server at {uri} did not answer in {timeout} s:\n{log.read_text()[-3000:]}")


def stop_server(process: subprocess.Popen) -> None:
    """SIGTERM to the server's own process group (it starts uvicorn workers), SIGKILL after 15 s."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=wait)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def start_server(root: Path, port: int) -> subprocess.Popen:
    """A real ``mlflow server`` (SQLite backend in ``root``, artifacts proxied to ``root/artifacts``) on ``port``,
    answering; a second call with the same folder and port starts it again on the same store."""
    uri = f"http://127.0.0.1:{port}"
    executable = Path(sys.executable).parent / "mlflow"
    command = [str(executable)] if executable.is_file() else [sys.executable, "-m", "mlflow"]
    command += [
        "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    log = root / "server.log"
    with open(log, "a") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=root)
    try:
        wait_for_server(uri, process, log, SERVER_START_S)
    except BaseException:
        stop_server(process)
        raise
    return process


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> str:
    """A real ``mlflow server`` on a free port, for the module."""
    port = free_port()
    process = start_server(tmp_path_factory.mktemp("mlflow_server"), port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_server(process)


def runs_of(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} at {uri}"
    return client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


def history(uri: str, run, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in MlflowClient(uri).get_metric_history(run.info.run_id, key)]


def artifacts(uri: str, run) -> set[str]:
    return {a.path for a in MlflowClient(uri).list_artifacts(run.info.run_id)}


def download(uri: str, run, path: str, dst: Path) -> Path:
    from mlflow.artifacts import download_artifacts

    dst.mkdir(parents=True, exist_ok=True)
    return Path(download_artifacts(run_id=run.info.run_id, artifact_path=path, dst_path=str(dst), tracking_uri=uri))


def executed_config(uri: str, run, dst: Path) -> dict:
    (name,) = [a for a in artifacts(uri, run) if a.startswith("config_") and a.endswith(".json")]
    return json.loads(download(uri, run, name, dst).read_text())


# ------------------------------------------------------------------------------------------ plain --tracking mlflow


def test_plain_tracking_pretraining_logs_loss_to_the_default_local_store(phantom_dir, tmp_path):
    out = tmp_path / "models"
    workflow = run_workflow(
        configs(PRETRAIN, "train.json", "train_cpu.json"), tracking="mlflow",
        dataset_dir=str(phantom_dir), output_dir=str(out), epochs=2, **PRE_TINY,
    )  # fmt: skip
    iterations = workflow.parser.get_parsed_content("train#trainer").state.iteration
    uri = f"sqlite:///{out / 'mlruns.db'}"  # MONAI 1.6's default: a SQLite store under output_dir
    (run,) = runs_of(uri, "monai_experiment")
    assert run.info.status == "FINISHED"
    losses = history(uri, run, "train_loss")
    assert [step for step, _ in losses] == list(range(1, iterations + 1)) and iterations == 8
    assert all(math.isfinite(v) for _, v in losses)


def test_plain_tracking_segmentation_train_and_evaluate(phantom_dir, tmp_path):
    common = {"dataset_dir": str(phantom_dir), "bundle_root": str(tmp_path), **SEG_TINY}
    run_workflow(configs(SEGMENT, "train.json", "train_cpu.json"), tracking="mlflow", epochs=1, **common)
    uri = f"sqlite:///{tmp_path / 'models' / 'mlruns.db'}"
    (run,) = runs_of(uri, "monai_experiment")
    assert run.info.status == "FINISHED"
    assert {"train_loss", "train_mean_dice", "val_mean_dice"} <= set(run.data.metrics)
    run_workflow(configs(SEGMENT, "train.json", "train_cpu.json", "evaluate.json"), tracking="mlflow", **common)
    (evaluation,) = runs_of(f"sqlite:///{tmp_path / 'eval' / 'mlruns.db'}", "monai_experiment")
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())  # what the evaluation wrote
    assert evaluation.data.metrics["val_mean_dice"] == pytest.approx(summary["mean_dice"]["all_organs"], abs=1e-4)


# ----------------------------------------------------------------------------- the bundles' settings, on a server


@pytest.fixture(scope="module")
def pretraining_tracked(mlflow_server, phantom_dir, tmp_path_factory):
    """2 epochs of pretraining, then heat-map inference, tracked on the server by mlflow_tracking.json."""
    out = tmp_path_factory.mktemp("pretrain_tracked")
    tracking = {"tracking": PRE_SETTINGS, "tracking_uri": mlflow_server, "experiment_name": "pretraining"}
    workflow = run_workflow(
        configs(PRETRAIN, "train.json", "train_cpu.json"), dataset_dir=str(phantom_dir), output_dir=str(out / "models"),
        epochs=2, **PRE_TINY, **tracking,
    )  # fmt: skip
    run_workflow(
        configs(PRETRAIN, "inference.json", "train_cpu.json"), workflow_type="infer", dataset_dir=str(phantom_dir),
        model_file=str(out / "models" / "teacher.pt"), output_dir=str(out / "eval"), pixdim=PRE_TINY["pixdim"],
        **tracking,
    )  # fmt: skip
    return mlflow_server, out, workflow


def test_pretraining_run_has_key_parameters(pretrained_runs):
    uri, train, _, workflow = pretrained_runs
    params = train.data.params
    network = workflow.parser.get_parsed_content("network_def")
    expected = {
        "roi_size": "[64, 64, 64]", "patch_size": "16", "hidden_size": "96", "num_layers": "12", "num_heads": "4",
        "mask_ratio": "0.75", "final_hard_ratio": "0.5", "learning_rate": "0.002", "epochs": "2", "train_cases": "4",
        "num_parameters": str(sum(p.numel() for p in network.parameters())), "world_size": "1",
    }  # fmt: skip
    assert {k: params.get(k) for k in expected} == expected
    assert "0.5 * e / 2" in params["hard_ratio_schedule"]


def test_pretraining_logs_losses_and_hard_ratio_per_iteration(pretrained_runs):
    uri, train, _, workflow = pretrained_runs
    iterations = workflow.parser.get_parsed_content("train#trainer").state.iteration
    for key in ("train_loss", "rec_loss", "pred_loss", "hard_ratio", "lr"):
        values = history(uri, train, key)
        assert [s for s, _ in values] == list(range(1, iterations + 1)), key
        assert all(math.isfinite(v) for _, v in values), key
    per_epoch = iterations // 2
    assert [v for _, v in history(uri, train, "hard_ratio")] == [0.25] * per_epoch + [0.5] * per_epoch
    recorded = json.loads((pretrained_runs[2] / "models" / "history.json").read_text())
    means = history(uri, train, "epoch_rec_loss")
    assert [s for s, _ in means] == [1, 2]
    assert [v for _, v in means] == pytest.approx([r["rec_loss"] for r in recorded])


def test_pretraining_artifacts_are_the_executed_config_and_final_weights(pretrained_runs, tmp_path):
    uri, train, out, _ = pretrained_runs
    assert {"model.pt", "encoder.pt", "encoder.json", "trained_with.json", "history.json"} <= artifacts(uri, train)
    assert train.info.run_name.startswith("pretraining_train_") and train.data.params["datalist"].endswith(".json")
    config = executed_config(uri, train, tmp_path)
    assert config["epochs"] == 2 and config["roi_size"] == [64, 64, 64]
    logged = torch.load(download(uri, train, "model.pt", tmp_path), weights_only=True)
    local = torch.load(out / "models" / "model.pt", weights_only=True)
    assert logged.keys() == local.keys() and all(torch.equal(logged[k], local[k]) for k in local)
    assert train.info.status == "FINISHED"


def test_pretraining_inference_is_its_own_run_with_the_heat_map_figures(pretrained_runs):
    uri, _, out, _ = pretrained_runs
    (infer,) = [r for r in runs_of(uri, "pretraining") if r.data.params.get("workflow") == "inference"]
    assert infer.info.status == "FINISHED" and infer.info.run_name.startswith("pretraining_infer_")
    figures = {a for a in artifacts(uri, infer) if a.endswith("_hpm.png")}
    assert figures == {p.name for p in (out / "eval").glob("*_hpm.png")} and figures
    assert infer.data.params["model_file"].endswith("teacher.pt")


@pytest.fixture(scope="module")
def pretrained_runs(pretraining_tracked):
    uri, out, workflow = pretraining_tracked
    runs = runs_of(uri, "pretraining")
    assert len(runs) == 2, [r.info.run_name for r in runs]  # one run per workflow
    (train,) = [r for r in runs if r.data.params.get("workflow") == "train"]
    return uri, train, out, workflow


@pytest.fixture(scope="module")
def segmentation_tracked(mlflow_server, phantom_dir, tmp_path_factory):
    """2 epochs of fine-tuning (validation each epoch), evaluation and inference, tracked on the server."""
    root = tmp_path_factory.mktemp("seg_tracked")
    tracking = {"tracking": SEG_SETTINGS, "tracking_uri": mlflow_server, "experiment_name": "segmentation"}
    common = {"dataset_dir": str(phantom_dir), "bundle_root": str(root), **SEG_TINY, **tracking}
    workflow = run_workflow(configs(SEGMENT, "train.json", "train_cpu.json"), epochs=2, **common)
    run_workflow(configs(SEGMENT, "train.json", "train_cpu.json", "evaluate.json"), **common)
    image = json.loads((phantom_dir / "dataset_0.json").read_text())["validation"][0]["image"]
    run_workflow(
        configs(SEGMENT, "inference.json", "train_cpu.json"), workflow_type="infer",
        input_file=str(phantom_dir / image), **common,
    )  # fmt: skip
    runs = {r.data.params.get("workflow", "evaluate"): r for r in runs_of(mlflow_server, "segmentation")}
    assert len(runs_of(mlflow_server, "segmentation")) == 3 and set(runs) == {"train", "evaluate", "inference"}
    return mlflow_server, root, workflow, runs


def test_segmentation_training_is_one_run_with_loss_and_dice_per_organ(segmentation_tracked):
    uri, root, workflow, runs = segmentation_tracked
    train = runs["train"]
    iterations = workflow.parser.get_parsed_content("train#trainer").state.iteration
    assert [s for s, _ in history(uri, train, "train_loss")] == list(range(1, iterations + 1))
    assert [s for s, _ in history(uri, train, "train_mean_dice")] == [1, 2]
    assert [s for s, _ in history(uri, train, "val_mean_dice")] == [1, 2]  # the validator joined the run
    for organ in ORGANS:
        assert [s for s, _ in history(uri, train, f"val_dice/{organ}")] == [1, 2], organ
    recorded = json.loads((root / "models" / "history.json").read_text())
    assert [v for _, v in history(uri, train, "val_mean_dice")] == pytest.approx([r["val_mean_dice"] for r in recorded])
    params = train.data.params
    assert (params["roi_size"], params["epochs"], params["train_cases"], params["val_cases"]) == (
        "[32, 32, 32]", "2", "4", "1",
    )  # fmt: skip
    preset_lr = json.loads((SEGMENT / "configs" / "train_cpu.json").read_text())["learning_rate"]
    assert params["layer_decay"] == "0.75" and float(params["learning_rate"]) == preset_lr  # the CPU preset's lr
    assert {"model.pt", "history.json", "trained_with.json"} <= artifacts(
        uri, train
    ) and train.info.status == "FINISHED"
    assert train.info.run_name.startswith(f"segmentation_train_{Path(params['dataset_dir']).name}_")
    assert "model_file" not in params  # a training evaluates no given weights


def test_segmentation_evaluation_run_holds_metrics_and_reports(segmentation_tracked, tmp_path):
    uri, root, _, runs = segmentation_tracked
    evaluation = runs["evaluate"]
    assert evaluation.info.status == "FINISHED" and evaluation.info.run_name.startswith("segmentation_evaluate_")
    params = evaluation.data.params  # what was evaluated, on what
    assert params["model_file"] == str(root / "models" / "model.pt") and params["datalist"].endswith("dataset_0.json")
    assert {"val_mean_dice", "val_dice/liver", "val_hd95_mm/liver"} <= set(evaluation.data.metrics)
    assert {"summary.json", "summary.csv", "dice_per_case.csv"} <= artifacts(uri, evaluation)
    summary = json.loads(download(uri, evaluation, "summary.json", tmp_path).read_text())
    assert summary == json.loads((root / "eval" / "summary.json").read_text())
    config = executed_config(uri, evaluation, tmp_path)  # as run: the bundle's configs merged with the overrides
    assert config["bundle_root"] == str(root) and "validate#handlers" not in config
    assert config["validate"]["handlers"][-1]["_target_"] == "selfmedhpm.tracking.BundleMLFlowHandler"


def test_segmentation_inference_run(segmentation_tracked):
    uri, _, _, runs = segmentation_tracked
    infer = runs["inference"]
    assert infer.info.status == "FINISHED" and infer.data.params["cases"] == "1"
    assert any(a.startswith("config_") for a in artifacts(uri, infer))


# --------------------------------------------------------------------------- command line, torchrun, failures


def test_command_line_takes_tracking_uri_experiment_and_run_name(mlflow_server, phantom_dir, tmp_path, python_env):
    """``--tracking_uri`` & co. are keys of the tracking settings, not of the bundle's configs: the bundle's check of
    unknown ``--key`` overrides must accept them (and still refuse typos)."""
    config = str(configs(PRETRAIN, "train.json", "train_cpu.json"))
    command = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", config, "--dataset_dir", str(phantom_dir),
        "--output_dir", str(tmp_path / "out"), "--epochs", "1", "--pixdim", "[3.0, 3.0, 3.0]",
        "--tracking", PRE_SETTINGS, "--tracking_uri", mlflow_server,
        "--experiment_name", "cli", "--run_name", "cli_run",
    ]  # fmt: skip
    env = {k: v for k, v in python_env.items() if k != "MLFLOW_TRACKING_URI"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = runs_of(mlflow_server, "cli")
    assert run.info.run_name == "cli_run" and run.info.status == "FINISHED"
    assert len(history(mlflow_server, run, "train_loss")) == 4
    typo = subprocess.run(command + ["--tracking_urii", "x"], capture_output=True, text=True, env=env, timeout=600)
    assert typo.returncode != 0 and "did you mean 'tracking_uri'" in typo.stderr


def test_two_processes_log_one_run_from_rank_0(phantom_dir, tmp_path, python_env):
    out = tmp_path / "ddp"
    config = str(configs(PRETRAIN, "train.json", "train_cpu.json", "multi_gpu_train.json"))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
        "-m", "monai.bundle", "run", "--config_file", config, "--dataset_dir", str(phantom_dir),
        "--output_dir", str(out), "--epochs", "2", "--pixdim", "[3.0, 3.0, 3.0]", "--tracking", PRE_SETTINGS,
    ]  # fmt: skip
    env = {k: v for k, v in python_env.items() if k != "MLFLOW_TRACKING_URI"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"  # the project folder's store: where the command ran
    (run,) = runs_of(uri, "selfmedhpm_ct_pretraining")  # one run, not one per process
    assert run.info.status == "FINISHED" and run.data.params["world_size"] == "2"
    # 4 training cases over 2 ranks: 2 iterations per epoch, logged once
    assert [s for s, _ in history(uri, run, "train_loss")] == [1, 2, 3, 4]
    assert {"model.pt", "encoder.pt"} <= artifacts(uri, run)


def test_failed_engine_marks_its_run_failed_and_the_error_propagates(tmp_path):
    from ignite.engine import Engine
    from monai.handlers import StatsHandler
    from selfmedhpm.tracking import BundleMLFlowHandler

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"

    def step(engine, batch):
        if engine.state.iteration == 2:
            raise ValueError("broken batch")
        return {"loss": torch.tensor(1.0)}

    for name, with_stats in (("alone", False), ("with_stats", True)):
        engine = Engine(step)
        if with_stats:  # MONAI's StatsHandler re-raises from its own exception handler
            StatsHandler(output_transform=lambda x: None).attach(engine)
        BundleMLFlowHandler(
            tracking_uri=uri, experiment_name="failures", run_name=name, output_transform=lambda x: x["loss"]
        ).attach(engine)
        with pytest.raises(ValueError, match="broken batch"):
            engine.run([0, 1, 2], max_epochs=1)
    runs = {r.info.run_name: r for r in runs_of(uri, "failures")}
    assert {k: r.info.status for k, r in runs.items()} == {"alone": "FAILED", "with_stats": "FAILED"}
    assert len(history(uri, runs["alone"], "Loss")) == 1

    # a resumed job given the failed run's name continues that run (as MONAI joins unfinished runs by name)
    engine = Engine(lambda engine, batch: {"loss": torch.tensor(0.5)})
    handler = BundleMLFlowHandler(
        tracking_uri=uri, experiment_name="failures", run_name="alone", output_transform=lambda x: x["loss"]
    )
    handler.attach(engine)
    engine.run([0, 1], max_epochs=1)
    resumed = {r.info.run_name: r for r in runs_of(uri, "failures")}["alone"]
    assert resumed.info.run_id == runs["alone"].info.run_id and resumed.info.status == "FINISHED"
    assert len(runs_of(uri, "failures")) == 2


def test_log_run_records_files_params_and_metrics(tmp_path):
    from selfmedhpm.tracking import log_run

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "curves.png").write_bytes(b"png")
    (tmp_path / "report.md").write_text("# report")
    log_run(uri, "demo", "report", {"cases": 12}, {"mean_dice": 0.5}, [tmp_path / "report.md", tmp_path / "figures"])
    (run,) = runs_of(uri, "demo")
    assert run.data.params == {"cases": "12"} and run.data.metrics == {"mean_dice": 0.5}
    assert artifacts(uri, run) == {"report.md", "figures"} and run.info.status == "FINISHED"
    assert (tmp_path / "mlruns").is_dir()  # artifacts next to the database, not in the working folder


def test_the_bundles_settings_put_every_run_of_a_folder_in_one_store(tmp_path, monkeypatch):
    from monai.bundle import ConfigParser

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    for settings in (PRE_SETTINGS, SEG_SETTINGS):
        expression = json.loads(Path(settings).read_text())["configs"]["tracking_uri"]
        parser = ConfigParser({"imports": ["$import selfmedhpm"], "tracking_uri": expression, "output_dir": "x"})
        assert parser.get_parsed_content("tracking_uri") == f"sqlite:///{tmp_path / 'mlruns.db'}", settings
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert parser.get_parsed_content("tracking_uri", lazy=False) == "http://127.0.0.1:5999"


def test_tracking_settings_keys_are_known_overrides():
    from selfmedhpm.bundle import check_overrides
    from selfmedhpm.tracking import tracking_config_ids

    assert {"tracking_uri", "experiment_name", "run_name"} <= tracking_config_ids(["run", "--tracking", "mlflow"])
    assert {"tracking_uri", "is_not_rank0"} <= tracking_config_ids(["--tracking", PRE_SETTINGS])
    overrides = {"tracking": PRE_SETTINGS, "tracking_uri": "http://x", "run_name": "r"}
    assert check_overrides(configs(PRETRAIN, "train.json"), overrides)
    assert check_overrides(configs(PRETRAIN, "train.json"), {"tracking": "mlflow", "experiment_name": "e"})


# ------------------------------------------------------------------------------ outages of the tracking server


class JournalLog(logging.Handler):
    """The messages of :mod:`selfmedhpm.journal`, with the time they were logged (a bundle's ``logging.conf`` replaces
    the root logger's handlers, pytest's included, so this listens on the module's own logger)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[tuple[float, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((time.monotonic(), record.levelname, record.getMessage()))

    def __enter__(self) -> JournalLog:
        logger = logging.getLogger("selfmedhpm.journal")
        logger.addHandler(self)
        logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger("selfmedhpm.journal").removeHandler(self)

    def matching(self, text: str) -> list[tuple[float, str, str]]:
        return [r for r in self.records if text in r[2]]


def tracked_workflow(config_file: list[str], on_trainer=None, **overrides):
    """``run_workflow``, with ``on_trainer(trainer)`` called between initialize and run (to attach test handlers)."""
    from monai.bundle import ConfigWorkflow

    workflow = ConfigWorkflow(
        config_file=config_file,
        meta_file=str(Path(config_file[0]).parent / "metadata.json"),
        logging_file=str(Path(config_file[0]).parent / "logging.conf"),
        workflow_type="train",
        **overrides,
    )
    workflow.initialize()
    if on_trainer is not None:
        on_trainer(workflow.parser.get_parsed_content("train#trainer"))
    workflow.run()
    workflow.finalize()
    return workflow


def test_server_killed_mid_run_and_restarted_loses_no_metric_and_stops_no_epoch(
    phantom_dir, tmp_path, tmp_path_factory, monkeypatch
):
    """The server (its process group, by the id this test started) is killed after epoch 2 and started again on the
    same port and store after epoch 3: all 5 epochs run, every metric of the outage reaches the run, the outage is
    reported once, and the trainer made no call to the server while it was down but the first, failed one."""
    from ignite.engine import Events
    from selfmedhpm import journal

    root, port = tmp_path_factory.mktemp("restarted_server"), free_port()
    uri = f"http://127.0.0.1:{port}"
    server = {"process": start_server(root, port)}
    calls: list[tuple[float, str]] = []  # (time, thread) of every call of a record to the server
    send = journal._send

    def counted(client, run_id, record):
        calls.append((time.monotonic(), threading.current_thread().name))
        return send(client, run_id, record)

    monkeypatch.setattr(journal, "_send", counted)
    outage = {}

    def on_trainer(trainer):
        @trainer.on(Events.EPOCH_COMPLETED(once=2))
        def kill(engine):
            os.killpg(server["process"].pid, signal.SIGKILL)
            server["process"].wait(timeout=30)
            outage["down"] = time.monotonic()

        @trainer.on(Events.EPOCH_COMPLETED(once=3))
        def restart(engine):
            outage["restarting"] = time.monotonic()
            server["process"] = start_server(root, port)

    common = {"dataset_dir": str(phantom_dir), "bundle_root": str(tmp_path), **SEG_TINY}
    tracking = {"tracking": SEG_SETTINGS, "tracking_uri": uri, "experiment_name": "outage", "tracking_retry_seconds": 1}
    try:
        with JournalLog() as log:
            workflow = tracked_workflow(
                configs(SEGMENT, "train.json", "train_cpu.json"), on_trainer, epochs=5, **common, **tracking
            )
        trainer = workflow.parser.get_parsed_content("train#trainer")
        assert trainer.state.epoch == 5
        (run,) = runs_of(uri, "outage")
        iterations = trainer.state.iteration
        assert run.info.status == "FINISHED"
        assert [s for s, _ in history(uri, run, "train_loss")] == list(range(1, iterations + 1))
        assert [s for s, _ in history(uri, run, "lr")] == list(range(1, iterations + 1))
        for key in ("epoch_train_loss", "train_mean_dice", "val_mean_dice", "val_dice/liver"):
            assert [s for s, _ in history(uri, run, key)] == [1, 2, 3, 4, 5], key
        recorded = json.loads((tmp_path / "models" / "history.json").read_text())
        assert [v for _, v in history(uri, run, "val_mean_dice")] == pytest.approx(
            [r["val_mean_dice"] for r in recorded]
        )
        assert [v for _, v in history(uri, run, "epoch_train_loss")] == pytest.approx([r["loss"] for r in recorded])
        assert {"model.pt", "history.json"} <= artifacts(uri, run)
    finally:
        stop_server(server["process"])
    (warning,) = log.matching("cannot be reached")
    assert uri in warning[2] and "[Errno" in warning[2] and outage["down"] < warning[0]
    assert len(log.matching("answers again")) == 1 and not log.matching("did not answer")
    assert not list((tmp_path / "models").glob("mlflow_offline_*"))  # sent, then deleted
    main = [t for t, thread in calls if thread == threading.main_thread().name]
    assert len([t for t in main if outage["down"] < t < outage["restarting"]]) == 1  # the call that found it down
    assert any(thread == "mlflow-journal" for _, thread in calls)  # the backlog went from the background


def test_server_down_at_start_warns_once_before_training_and_leaves_a_file_to_replay(
    mlflow_server, phantom_dir, tmp_path, python_env
):
    """Nothing listens at the URI: one warning before the first iteration, the training runs to the end, the last
    message names the file and the command; the command sends the whole run to a server afterwards."""
    from ignite.engine import Events
    from selfmedhpm.journal import read_journal

    down = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "models"
    first_iteration = {}

    def on_trainer(trainer):
        @trainer.on(Events.ITERATION_STARTED(once=1))
        def started(engine):
            first_iteration["t"] = time.monotonic()

    tracking = {"tracking": PRE_SETTINGS, "tracking_uri": down, "experiment_name": "late", "run_name": "pre_offline"}
    start = time.monotonic()
    with JournalLog() as log:
        workflow = tracked_workflow(
            configs(PRETRAIN, "train.json", "train_cpu.json"), on_trainer, dataset_dir=str(phantom_dir),
            output_dir=str(out), epochs=2, **PRE_TINY, **tracking,
        )  # fmt: skip
    iterations = workflow.parser.get_parsed_content("train#trainer").state.iteration
    assert [r["epoch"] for r in json.loads((out / "history.json").read_text())] == [1, 2]
    (warning,) = log.matching("cannot be reached")
    assert down in warning[2] and start < warning[0] < first_iteration["t"]
    path = out / "mlflow_offline_pre_offline.jsonl"
    header, records = read_journal(path)
    assert (header["tracking_uri"], header["run_id"], records[-1]["status"]) == (down, None, "FINISHED")
    kept = sum(len(r.get("metrics", [])) for r in records)
    assert kept == 5 * iterations + 4 * 2  # 4 losses and the lr per iteration, 4 epoch means per epoch
    _, level, last = log.records[-1]  # the last thing the journal says
    assert level == "WARNING" and f"{kept} metric values" in last and f"replay {path} --tracking_uri {down}" in last
    command = [sys.executable, "-m", "selfmedhpm.tracking", "replay", str(path), "--tracking_uri", mlflow_server]
    replay = subprocess.run(command, capture_output=True, text=True, env=python_env, timeout=300)
    assert replay.returncode == 0, replay.stderr[-3000:]
    (run,) = runs_of(mlflow_server, "late")
    assert run.info.run_name == "pre_offline" and run.info.status == "FINISHED"
    assert run.data.params["roi_size"] == "[64, 64, 64]" and run.data.params["epochs"] == "2"
    for key in ("train_loss", "rec_loss", "lr"):
        assert [s for s, _ in history(mlflow_server, run, key)] == list(range(1, iterations + 1)), key
    recorded = json.loads((out / "history.json").read_text())
    means = history(mlflow_server, run, "epoch_rec_loss")
    assert [s for s, _ in means] == [1, 2] and [v for _, v in means] == pytest.approx([r["rec_loss"] for r in recorded])
    assert {"model.pt", "encoder.pt", "history.json"} <= artifacts(mlflow_server, run) and not path.exists()


def test_a_journal_whose_server_never_answers_keeps_every_record_in_order_and_warns_once(tmp_path, monkeypatch):
    """Retried every 0.2 s for the whole run, the outage is still reported once; a second process with the same run
    name writes a file of its own; a folder that cannot be written keeps the records in memory and says so."""
    from selfmedhpm import journal as journals
    from selfmedhpm.journal import RunJournal, bound_http_retries, read_journal

    monkeypatch.setattr(journals, "_UNSENT", {})  # no reminder of these files when pytest exits
    bound_http_retries()
    uri = f"http://127.0.0.1:{free_port()}"

    def run(folder: Path) -> RunJournal:
        journal = RunJournal(mlflow.MlflowClient(uri), uri, "e", "r", folder, retry_seconds=0.2)
        journal.open()
        journal.send({"params": {"a": "1"}})
        for step in (1, 2, 3):
            journal.send({"metrics": [["loss", 1.0 / step, 1000 + step, step]]})
            time.sleep(0.5)
        journal.close("FAILED")
        return journal

    with JournalLog() as log:
        first, second = run(tmp_path), run(tmp_path)
    assert (first.path.name, second.path.name) == ("mlflow_offline_r.jsonl", "mlflow_offline_r.2.jsonl")
    assert len(log.matching("cannot be reached")) == 2 and len(log.matching("did not answer")) == 2
    header, records = read_journal(second.path)
    assert (header["run_name"], header["run_id"], header["sent"]) == ("r", None, 0)
    metrics = [{"metrics": [["loss", 1.0 / s, 1000 + s, s]]} for s in (1, 2, 3)]
    assert records[:-1] == [{"params": {"a": "1"}}, *metrics] and records[-1]["status"] == "FAILED"

    (tmp_path / "a_file").write_text("")
    with JournalLog() as log:
        run(tmp_path / "a_file")
    assert "memory only" in log.records[-1][2] and "1 parameters, 3 metric values" in log.records[-1][2]

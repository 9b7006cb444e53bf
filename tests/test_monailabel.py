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

"""The segmentation bundle in a real MONAI Label 0.8.5 server (the ``monaibundle`` sample app, in its own environment
``.venv-monailabel``, built by ``make monailabel-env``): the model and its organ names are listed, a CT study gets
organ labels in its own grid, and training from the studies' final labels runs and writes new weights."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import ROOT, SEGMENT, configs, run_workflow
from monai.bundle import ConfigParser
from selfmedhpm.labels import BTCV_CLASSES
from selfmedhpm_tools import label_app, release

pytestmark = pytest.mark.slow

MONAILABEL_ENV = ROOT / ".venv-monailabel"
MONAILABEL = MONAILABEL_ENV / "bin" / "monailabel"
NAME = SEGMENT.name
LIVER = BTCV_CLASSES.index("liver")
GRID = {"roi_size": [16, 16, 16], "pixdim": [8.0, 8.0, 8.0], "sw_batch_size": 8}
"""On top of the CPU preset (ViT width 96, feature size 8): one 16^3 ViT token on an 8 mm grid, seconds per epoch."""
RECIPE = {"num_samples": 4, "batch_size": 2, "learning_rate": 0.01, "warmup_epochs": 1, "val_interval": 30,
          "save_interval": 1000, "log_interval": 100}  # fmt: skip
"""30 epochs of this learn the liver of the phantoms (validation Dice about 0.6) in about 25 s on one thread."""
LABELLED = ["case_0000", "case_0001", "case_0002", "case_0003"]  # the phantom's training split
UNLABELLED = "case_0004"  # its validation case, never trained on
START_S, INFER_S, TRAIN_S = 180, 120, 240

if not MONAILABEL.is_file():
    message = f"{MONAILABEL} missing: build it with `make monailabel-env`"
    if os.environ.get("SELFMEDHPM_REQUIRE_MONAILABEL") == "1":  # make test sets it: no silent loss of coverage
        raise RuntimeError(message)
    pytest.skip(message, allow_module_level=True)


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def weights(phantom_dir, tmp_path_factory) -> Path:
    """``models/`` of the bundle trained briefly on the phantoms' training split (CPU preset + :data:`GRID`)."""
    root = tmp_path_factory.mktemp("trained")
    run_workflow(
        configs(SEGMENT, "train.json", "train_cpu.json"),
        bundle_root=str(root),
        dataset_dir=str(phantom_dir),
        epochs=30,
        **GRID,
        **RECIPE,
    )
    return root / "models"


@pytest.fixture(scope="module")
def app(weights, tmp_path_factory) -> Path:
    """MONAI Label's stock ``monaibundle`` sample app, unmodified, with the bundle's release zip unpacked into its
    ``model/`` folder as users install zoo bundles: ``make release`` merged the CPU preset and :data:`GRID` into the
    zip's inference and train configs."""
    work = tmp_path_factory.mktemp("monailabel")
    settings = [f"{NAME}:{key}={json.dumps(value)}" for key, value in {**GRID, "num_samples": 2}.items()]
    argv = ["--bundles", NAME, "--dist", str(work / "dist"), "--weights_from", f"{NAME}={weights}"]
    assert release.main(argv + [arg for item in settings for arg in ("--set", item)]) == 0
    entry = json.loads((work / "dist" / "bundle_index.json").read_text())[
        f"{NAME}_v{release.bundle_metadata(SEGMENT)['version']}"
    ]
    folder = Path(
        shutil.copytree(label_app.find_sample_app(), work / "app", ignore=shutil.ignore_patterns("__pycache__"))
    )
    release.safe_extract(work / "dist" / entry["source"], folder / "model")
    return folder


def test_label_app_builder_writes_the_same_bundle_as_the_release(app, weights, tmp_path):
    """``selfmedhpm_tools.label_app`` (the app folder in one command) and the release zip agree on every config."""
    bundle = label_app.prepare_app(
        tmp_path / "app", preset="cpu", settings={**GRID, "num_samples": 2}, weights_dir=weights
    )
    released = app / "model" / NAME
    for name in ("inference.json", "train.json", "metadata.json"):
        ours = json.loads((bundle / "configs" / name).read_text())
        assert ours == json.loads((released / "configs" / name).read_text()), name
    assert sha1(bundle / "models" / "model.pt") == sha1(released / "models" / "model.pt")


@pytest.fixture(scope="module")
def studies(phantom_dir, tmp_path_factory) -> Path:
    """Five phantom CTs as MONAI Label studies, four with final labels (``labels/final/<same name>``)."""
    folder = tmp_path_factory.mktemp("studies")
    (folder / "labels" / "final").mkdir(parents=True)
    for case in LABELLED + [UNLABELLED]:
        shutil.copy(phantom_dir / "imagesTr" / f"{case}.nii.gz", folder)
    for case in LABELLED:
        shutil.copy(phantom_dir / "labelsTr" / f"{case}.nii.gz", folder / "labels" / "final")
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``monailabel start_server`` on 127.0.0.1 in its own process group (its training subprocesses join it), started
    as the docs say, with MONAI Label's own Python (``.venv-monailabel/bin/python -m monailabel.main``) and nothing of
    that environment on ``PATH``: the command works from a plain shell."""

    def __init__(self, app: Path, studies: Path, work: Path):
        self.studies, self.port, self.log = studies, free_port(), work / "server.log"
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
        env.pop("MONAILABEL_PYEXE", None)
        env.update(
            MONAI_LABEL_SESSION_PATH=str(work / "sessions"),
            OMP_NUM_THREADS="1",
            PYTHONUNBUFFERED="1",
        )
        command = [str(MONAILABEL_ENV / "bin" / "python"), "-m", "monailabel.main", "start_server", "--app", str(app),
                   "--studies", str(studies), "--host",
                   "127.0.0.1", "--port", str(self.port), "--conf", "models", NAME, "--conf", "zoo_source", "local",
                   "--conf", "sam2", "false"]  # fmt: skip
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip

    def tail(self, lines: int = 40, settle_s: float = 2.0) -> str:
        """The server log's last lines, after ``settle_s`` (a failed request's traceback is logged after the reply)."""
        time.sleep(settle_s)
        text = self.log.read_text(errors="replace").splitlines() if self.log.is_file() else []
        return "\n".join(text[-lines:])

    def request(self, method: str, path: str, body: dict | None = None, timeout: float = 30, tries: int = 3):
        """(status, bytes) of one REST call; connection failures are retried, HTTP errors returned."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else {}
        for attempt in range(tries):
            request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    return response.status, response.read()
            except urllib.error.HTTPError as e:
                return e.code, e.read()
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if attempt == tries - 1 or self.process.poll() is not None:
                    raise
                time.sleep(2)

    def json(self, method: str, path: str, body: dict | None = None, timeout: float = 30) -> dict:
        status, content = self.request(method, path, body, timeout)
        assert status == 200, f"{method} {path}: HTTP {status} {content[:500]!r}\n{self.tail()}"
        return json.loads(content)

    def wait_ready(self, timeout: float = START_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"server exited with {self.process.returncode}:\n{self.tail()}"
            try:
                if self.request("GET", "/info/", timeout=5, tries=1)[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(1)
        raise AssertionError(f"server not ready after {timeout} s:\n{self.tail()}")

    def stop(self) -> None:
        """SIGTERM to the whole process group, SIGKILL after 20 s; returns once no process of it is left."""
        group = self.process.pid
        for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and group_alive(group):
                self.process.poll()
                time.sleep(0.2)
            if not group_alive(group):
                break
        self.process.wait(timeout=10)
        assert not group_alive(group), f"processes of group {group} left behind"


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as in ``/proc/net/tcp``) of the sockets listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:] if Path(table).is_file() else []:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def server(app, studies, tmp_path_factory):
    work = tmp_path_factory.mktemp("server")
    server = Server(app, studies, work)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes(), usedforsecurity=False).hexdigest()


def inference_network(bundle: Path) -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.update({"bundle_root": str(bundle)})
    return parser.get_parsed_content("network_def", instantiate=True)


def load_strictly(bundle: Path) -> None:
    """What MONAI Label does with ``strict=False`` (a mismatch only warns), done strictly."""
    state = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    network = inference_network(bundle)
    assert set(state) == set(network.state_dict())
    network.load_state_dict(state, strict=True)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


# ----------------------------------------------------------------------------------------- the app folder


def test_app_carries_the_package_and_the_merged_cpu_preset(app, weights):
    bundle = app / "model" / NAME
    assert (app / "main.py").is_file() and (bundle / "selfmedhpm" / "__init__.py").is_file()
    assert (bundle / "selfmedhpm" / "checkpoint.py").is_file() and (bundle / "selfmedhpm" / "optim.py").is_file()
    for name in ("inference.json", "train.json"):
        config = json.loads((bundle / "configs" / name).read_text())
        assert (config["hidden_size"], config["feature_size"], config["roi_size"]) == (96, 8, GRID["roi_size"])
    assert "epochs" not in json.loads((bundle / "configs" / "inference.json").read_text())  # train-only keys left out
    assert json.loads((bundle / "configs" / "train.json").read_text())["epochs"] == 20  # the CPU preset's
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == GRID["roi_size"]
    assert sha1(bundle / "models" / "model.pt") == sha1(weights / "model.pt")
    load_strictly(bundle)
    assert label_app.check_weights(bundle) == bundle / "models" / "model.pt"
    probe = "import importlib.util; print(importlib.util.find_spec('selfmedhpm'))"
    found = subprocess.run(
        [str(MONAILABEL_ENV / "bin" / "python"), "-c", probe],
        capture_output=True, text=True, timeout=60, cwd=str(app.parent), env={"PATH": os.environ.get("PATH", "")},
    )  # fmt: skip
    assert found.stdout.strip() == "None", "selfmedhpm must come from the bundle, not from MONAI Label's environment"


def test_unfit_weights_and_other_folders_are_refused_and_the_old_app_kept(weights, tmp_path):
    out, settings = tmp_path / "app", {**GRID, "num_samples": 2}
    bundle = label_app.prepare_app(out, preset="cpu", settings=settings, weights_dir=weights / "model.pt")
    assert sha1(bundle / "models" / "model.pt") == sha1(weights / "model.pt")
    with pytest.raises(label_app.LabelAppError, match="does not fit the inference network"):
        label_app.prepare_app(out, preset="none", weights_dir=weights, overwrite=True)  # ViT-B/16 vs the CPU preset
    assert json.loads((bundle / "configs" / "inference.json").read_text())["hidden_size"] == 96  # the old app
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app"]  # no half-written app left
    with pytest.raises(label_app.LabelAppError, match="already exists"):
        label_app.prepare_app(out, preset="cpu", settings=settings, weights_dir=weights)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("not an app")
    with pytest.raises(label_app.LabelAppError, match="already exists"):
        label_app.prepare_app(tmp_path / "notes", preset="cpu", settings=settings, weights_dir=weights, overwrite=True)
    assert (tmp_path / "notes" / "todo.txt").is_file()


# ----------------------------------------------------------------------------------------- the server


def test_info_lists_the_model_with_its_organ_names(server):
    info = server.json("GET", "/info/")
    model = info["models"][NAME]
    assert model["type"] == "segmentation" and model["dimension"] == 3
    assert model["labels"] == {name: value for value, name in enumerate(BTCV_CLASSES) if value > 0}  # no background
    assert len(model["labels"]) == 13 and NAME in info["trainers"]
    described = model["description"]  # the model served: the CPU preset's ViT on the test's grid, not ViT-B at 96^3
    assert "ViT of width 96" in described and "16x16x16 crops at 8 x 8 x 8 mm" in described and "ViT-B" not in described
    assert info["datastore"]["total"] == 5 and info["datastore"]["completed"] == 4
    if Path("/proc/net/tcp").is_file():
        assert listening_addresses(server.port) == {"0100007F"}  # 127.0.0.1 only


def infer(server: Server, study: str, out: Path) -> np.ndarray:
    status, content = server.request("POST", f"/infer/{NAME}?image={study}&output=image", timeout=INFER_S, tries=2)
    assert status == 200, f"infer: HTTP {status} {content[:500]!r}\n{server.tail()}"
    out.write_bytes(content)
    result, source = nib.load(out), nib.load(server.studies / f"{study}.nii.gz")
    assert result.shape == source.shape and np.allclose(result.affine, source.affine, atol=1e-4)
    labels = np.asarray(result.dataobj)
    values = set(np.unique(labels).astype(int).tolist())
    assert values <= set(range(14)) and values & set(range(1, 14)), values
    return labels


def test_infer_gives_organ_labels_in_the_study_grid(server, phantom_dir, tmp_path):
    labels = infer(server, UNLABELLED, tmp_path / "pred.nii.gz")
    truth = np.asarray(nib.load(phantom_dir / "labelsTr" / f"{UNLABELLED}.nii.gz").dataobj)
    assert dice(labels == LIVER, truth == LIVER) > 0.3  # an unseen case: the liver is learnt in 30 epochs


def test_train_one_epoch_from_final_labels_writes_new_weights(server, app, tmp_path):
    bundle = app / "model" / NAME
    before = sha1(bundle / "models" / "model.pt")
    request = {"max_epochs": 1, "val_split": 0.25, "multi_gpu": False, "device": "cpu", "pretrained": True}
    task = server.json("POST", f"/train/{NAME}", request)
    assert task["status"] in ("SUBMITTED", "RUNNING"), task
    deadline = time.monotonic() + TRAIN_S
    while time.monotonic() < deadline:
        task = server.json("GET", "/train/?all=false", timeout=10)
        if task.get("status") not in ("SUBMITTED", "RUNNING"):
            break
        time.sleep(2)
    details = "\n".join(task.get("details", []))
    assert task.get("status") == "DONE", f"{task.get('status')}:\n{details}\n{server.tail()}"
    # MONAI Label's CheckpointLoader started from model.pt: the server log has the task's every line (its "details"
    # the last 20, which the per-organ validation table fills)
    assert "Restored all variables from" in server.log.read_text(errors="replace")
    history = json.loads((bundle / "models" / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1] and history[0]["val_mean_dice"] > 0.01  # the liver is found
    assert (bundle / "models" / "checkpoints" / "checkpoint_epoch=1.pt").is_file()
    assert sha1(bundle / "models" / "model.pt") != before  # the validated model of this round
    load_strictly(bundle)
    infer(server, LABELLED[0], tmp_path / "after_training.nii.gz")  # the server serves the new weights

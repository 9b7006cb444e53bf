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

"""MLflow tracking of the bundles' workflows: one MLflow run per workflow, logged from rank 0 only.

``--tracking mlflow`` (MONAI's default settings) works with both bundles and logs the loss and the engines'
metrics. Each bundle also ships ``configs/mlflow_tracking.json``, richer settings for the same ``--tracking``
argument, built on :class:`BundleMLFlowHandler`:

- the run's key parameters (crop size, model size, masking and hard-ratio schedule, lr, epochs, data set size);
- per-iteration scalars (loss; reconstruction and loss-prediction losses and the hard ratio for pretraining) and
  their per-epoch means, the base learning rate, per-epoch metrics (mean and per-organ Dice);
- artifacts at the end: the executed config, the final weights, the history and the figures or reports.

The trainer's handler creates the run; the validator's handler of the same process joins it (so a training run
with validation is one run), and in a standalone evaluation or inference the evaluator's handler creates, fills and
closes its own run. A run whose engine raises is marked FAILED instead of being left RUNNING.

A tracking server that cannot be reached never stops a training: what the run logs is kept in
``<output_dir>/mlflow_offline_<run_name>.jsonl`` and sent when the server answers again (:mod:`selfmedhpm.journal`).
A file that a run left because the server never came back is sent with ``python -m selfmedhpm.tracking replay``.

Examples::

    python -m monai.bundle run --config_file bundles/selfmedhpm_ct_pretraining/configs/train.json \\
        --tracking bundles/selfmedhpm_ct_pretraining/configs/mlflow_tracking.json \\
        --tracking_uri http://127.0.0.1:5000 --dataset_dir DIR
    python -m selfmedhpm.tracking replay models/mlflow_offline_train_20260101_120000.jsonl
"""

from __future__ import annotations

import argparse
import glob
import logging
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.handlers import MLFlowHandler
from monai.utils import flatten_dict, path_to_uri
from selfmedhpm.journal import MAX_PARAM_LENGTH, RunJournal, bound_http_retries, replay_file
from selfmedhpm.utils import EpochMeans, is_rank0

__all__ = [
    "BundleMLFlowHandler",
    "default_tracking_uri",
    "run_prefix",
    "output_metrics",
    "executed_config",
    "count_parameters",
    "tracking_config_ids",
    "log_run",
    "main",
]

logger = logging.getLogger(__name__)

_ACTIVE_RUNS: dict[tuple[str, str], RunJournal] = {}
"""(tracking URI, experiment) -> the run a handler of this process created and has not closed yet."""


def _as_float(value: Any) -> float | None:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        value = value.item()
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def default_tracking_uri(folder: str | os.PathLike | None = None) -> str:
    """The bundles' tracking store when none is named: ``MLFLOW_TRACKING_URI`` when set, else one SQLite store,
    ``mlruns.db``, in the folder the commands run from (the project folder), so a user's pretraining, fine-tuning and
    evaluation land in one store whatever their ``--output_dir``.

    Examples::

        >>> os.environ.pop("MLFLOW_TRACKING_URI", None) and None
        >>> default_tracking_uri("/work/project")
        'sqlite:////work/project/mlruns.db'
    """
    from monai.utils import path_to_sqlite_uri

    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return path_to_sqlite_uri(os.path.join(os.path.abspath(folder or os.getcwd()), "mlruns.db"))


def run_prefix(bundle: str, workflow: str, data: Any = None, datalist: Any = None) -> str:
    """The start of a run's name: which bundle, which workflow and what it ran on (the data folder, with the data
    list's name when it is not ``dataset_0.json``, or the input file); :class:`BundleMLFlowHandler` appends the date
    and time.

    Examples::

        >>> run_prefix("segmentation", "train", "/data/btcv/", "/lists/btcv_tu/dataset_0.json")
        'segmentation_train_btcv'
        >>> run_prefix("segmentation", "evaluate", "/data/btcv", "/data/btcv/fold1.json")
        'segmentation_evaluate_btcv-fold1'
        >>> run_prefix("segmentation", "infer", "/scans/ct 7.nii.gz")
        'segmentation_infer_ct-7'
    """
    name = Path(str(data).rstrip("/")).name.split(".")[0] if data else ""
    if datalist and Path(str(datalist)).name != "dataset_0.json":
        name += "-" + Path(str(datalist)).stem
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join(part for part in (bundle, workflow, name) if part))


def output_metrics(names: Mapping[str, str] | Sequence[str]) -> Callable[[Any], dict[str, float]]:
    """``output_transform`` of an MLflow (or stats) handler: named float scalars from ``engine.state.output``,
    whether the output is one dict or decollated into one dict per sample (batch scalars repeat in each).

    Args:
        names: ``{metric name: output key}``, or output keys logged under their own names.

    Examples::

        >>> pick = output_metrics({"train_loss": "loss", "hard_ratio": "hard_ratio"})
        >>> pick([{"loss": torch.tensor(0.5), "hard_ratio": 0.25}, {"loss": torch.tensor(0.5), "hard_ratio": 0.25}])
        {'train_loss': 0.5, 'hard_ratio': 0.25}
    """
    mapping = dict(names) if isinstance(names, Mapping) else {name: name for name in names}

    def _pick(output: Any) -> dict[str, float]:
        if isinstance(output, (list, tuple)):
            output = output[0]
        picked = {}
        for name, key in mapping.items():
            value = _as_float(output[key])
            if value is not None:
                picked[name] = value
        return picked

    return _pick


def executed_config(save_execute_config: Any, output_dir: str | os.PathLike) -> str | None:
    """The executed config that ``--tracking`` wrote (MONAI's ``save_execute_config``), as a file path.

    MONAI writes ``<output_dir>/config_<time>.json`` and records the file as ``output_dir`` plus a suffix: a valid
    path only when ``output_dir`` is an expression of the config, not when it is overridden by a plain path
    (``--output_dir /x``). This finds the file in both cases.

    Args:
        save_execute_config: the parsed ``save_execute_config`` key (a path, a path with MONAI's suffix, or None).
        output_dir: the parsed ``output_dir`` key.

    Returns:
        the path of the executed config, or None when it was not saved.

    Examples::

        >>> import tempfile
        >>> out = tempfile.mkdtemp()
        >>> path = os.path.join(out, "config_20260101_120000.json")
        >>> _ = open(path, "w").write("{}")
        >>> executed_config(out + " + '/config_20260101_120000.json'", out) == path
        True
        >>> executed_config(None, out) is None
        True
    """
    if not save_execute_config:
        return None
    value = str(save_execute_config)
    if os.path.isfile(value):
        return value
    match = re.search(r"config_\d{8}_\d{6}\.json", value)
    if match and os.path.isfile(os.path.join(output_dir, match.group(0))):
        return os.path.join(output_dir, match.group(0))
    found = sorted(glob.glob(os.path.join(glob.escape(str(output_dir)), "config_*_*.json")), key=os.path.getmtime)
    return found[-1] if found else None


def count_parameters(net: torch.nn.Module) -> int:
    """Number of parameters of ``net`` (for the run's parameters).

    Examples::

        >>> count_parameters(torch.nn.Linear(3, 2))
        8
    """
    return sum(p.numel() for p in net.parameters())


class BundleMLFlowHandler(MLFlowHandler):
    """MONAI's ``MLFlowHandler`` made safe to attach to every engine of a bundle workflow, and to outlive its
    tracking server.

    Differences from ``MLFlowHandler`` (all its arguments are accepted):

    - Run ownership. The first handler of this process that starts a run (the trainer's in a training workflow,
      the evaluator's in an evaluation or inference workflow) owns it: only the owner logs the artifacts and closes
      the run when its engine completes, and marks it FAILED when its engine raises. Another handler of the same
      process and experiment (the validator's) joins the owner's run. ``close_on_complete`` is therefore ignored.
    - Without ``run_name``, the run is named ``<run_prefix>_<date>_<time>`` (MONAI would join any unfinished run of
      the experiment, e.g. one left by a crashed job).
    - A server that cannot be reached (at the start or during the run) never stops the training: the handler warns
      once, keeps what the run logs in ``<offline_dir>/mlflow_offline_<run_name>.jsonl`` and sends it when the
      server answers again (tried every ``retry_seconds`` from a background thread: the trainer makes no call to the
      server meanwhile) or at the end of the run. If the server is still away then, the file stays and the last
      line says how to send it (``python -m selfmedhpm.tracking replay FILE``). See :mod:`selfmedhpm.journal`.
      For an HTTP server, MLflow's retries are bounded (:func:`selfmedhpm.journal.bound_http_retries`), so a failed
      call costs seconds.
    - ``artifacts`` may be files, folders (logged as folders) or glob patterns; missing ones are skipped.
    - Parameters and metrics are logged leniently: values are converted to float or cut to MLflow's length limit,
      non-scalar values are skipped, and a parameter that a resumed run logged with another value is kept (with
      a warning) rather than stopping the training.
    - ``epoch_means``: the per-epoch means of the ``output_transform`` scalars are logged as ``epoch_<name>``.
    - ``log_lr``: the base learning rate (the largest of the optimizer's groups) is logged as ``lr`` each logged
      iteration; set ``optimizer_param_names=[]`` to skip MONAI's one metric per parameter group.
    - Nothing is attached on ranks other than 0 of a torch.distributed run.

    Args:
        run_prefix: prefix of the generated run name. Defaults to "run".
        epoch_means: log per-epoch means of the iteration scalars. Defaults to False.
        log_lr: log the base learning rate each logged iteration. Defaults to False.
        offline_dir: folder of the file kept during an outage. Defaults to the SQLite store's folder for a
            ``sqlite:///`` URI, else the working directory.
        retry_seconds: least time between two tries to reach the server during an outage. Defaults to 30.
        kwargs: ``MLFlowHandler`` arguments (``tracking_uri``, ``experiment_name``, ``run_name``, ``iteration_log``,
            ``epoch_log``, ``output_transform``, ``experiment_param``, ``artifacts``, ...).
    """

    def __init__(
        self,
        run_prefix: str = "run",
        epoch_means: bool = False,
        log_lr: bool = False,
        offline_dir: str | os.PathLike | None = None,
        retry_seconds: float = 30.0,
        **kwargs: Any,
    ):
        kwargs["close_on_complete"] = False
        tracking_uri = str(os.environ.get("MLFLOW_TRACKING_URI") or kwargs.get("tracking_uri") or "")
        if tracking_uri.startswith(("http://", "https://")):
            bound_http_retries()
        super().__init__(**kwargs)
        self.run_prefix, self.epoch_means, self.log_lr = run_prefix, epoch_means, log_lr
        self.tracking_uri = tracking_uri or str(getattr(self.client, "tracking_uri", ""))
        if offline_dir is None:
            store = self.tracking_uri[len("sqlite:///") :] if self.tracking_uri.startswith("sqlite:///") else ""
            offline_dir = Path(store).parent if store else Path.cwd()
        self.offline_dir, self.retry_seconds = Path(offline_dir), float(retry_seconds)
        self._key = (self.tracking_uri, str(self.experiment_name))
        self.journal: RunJournal | None = None
        self._params_logged: RunJournal | None = None
        self.owner = False
        self._means = EpochMeans()

    def attach(self, engine: Engine) -> None:
        """Attaches the MLflow events to ``engine`` (rank 0 only), plus epoch means and failure marking."""
        if not is_rank0():
            return
        super().attach(engine)
        if self.epoch_means:
            engine.add_event_handler(Events.EPOCH_STARTED, self._reset_means)
            engine.add_event_handler(Events.ITERATION_COMPLETED, self._accumulate)
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._log_means)
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._exception_raised)
        handlers = getattr(engine, "_event_handlers", {}).get(Events.EXCEPTION_RAISED)
        if handlers and len(handlers) > 1:  # run first: MONAI's StatsHandler re-raises and would skip it
            handlers.insert(0, handlers.pop())

    def start(self, engine: Engine) -> None:
        """Creates or joins the run, then logs the parameters (MLflow ``start``)."""
        if self.journal is not None and self.journal.closed:
            self.journal, self.owner = None, False
        if self.journal is None:
            active = _ACTIVE_RUNS.get(self._key)
            if active is not None and (self.run_name is None or active.run_name == self.run_name):
                self.journal, self.owner = active, False
            else:
                if self.run_name is None:
                    self.run_name = f"{self.run_prefix}_{time.strftime('%Y%m%d_%H%M%S')}"
                journal = RunJournal(
                    self.client,
                    self.tracking_uri,
                    str(self.experiment_name),
                    str(self.run_name),
                    self.offline_dir,
                    self.retry_seconds,
                    self.artifact_location,
                )
                journal.open()
                self.journal, self.owner = journal, True
                _ACTIVE_RUNS[self._key] = journal
        if self._params_logged is not self.journal:  # once per run (MONAI logs them at every start of the engine)
            params = dict(self.experiment_param or {})
            if self.owner:  # the engine's length; a validator joining the run would log its own (1 iteration)
                params.update({attr: getattr(engine.state, attr, None) for attr in self.default_tracking_params})
            self._log_params(params)
            self._params_logged = self.journal
        if self.dataset_logger is not None:
            self.dataset_logger(self.dataset_dict)
        elif self.dataset_dict is not None and self.journal.online:
            self.cur_run = self.client.get_run(self.journal.run_id)
            self._default_dataset_log(self.dataset_dict)

    def complete(self) -> None:
        """The owner logs the artifacts and closes the run."""
        if not self.owner or self.journal is None:
            return
        try:
            files = [[os.path.abspath(path), is_folder] for path, is_folder in self.artifact_files()]
            if files:
                self.journal.send({"artifacts": files})
        finally:
            self._finish(self.run_finish_status)

    def close(self) -> None:
        """Ends the run (when this handler owns it) and releases a local SQLite store."""
        if self.owner and self.journal is not None:
            self._finish(self.run_finish_status)

    def _finish(self, status: str) -> None:
        journal = self.journal
        try:
            journal.close(status)
        finally:
            if _ACTIVE_RUNS.get(self._key) is journal:
                del _ACTIVE_RUNS[self._key]
            self.journal, self.cur_run, self.owner = None, None, False
            self._dispose_sqlite_store()

    def _exception_raised(self, engine: Engine, error: Exception) -> None:
        if self.owner and self.journal is not None:
            try:
                self._finish("FAILED")
            except Exception as e:  # the training error matters more than the tracking one
                logger.warning("could not mark the MLflow run as failed: %s", e)
        handlers = getattr(engine, "_event_handlers", {}).get(Events.EXCEPTION_RAISED, [])
        if len(handlers) <= 1:  # no other handler will raise it
            raise error

    def artifact_files(self) -> list[tuple[str, bool]]:
        """``(path, is_folder)`` of the existing files and folders that ``artifacts`` names (globs expanded)."""
        found: list[tuple[str, bool]] = []
        for entry in self.artifacts:
            if not entry:
                continue
            paths = sorted(glob.glob(str(entry))) if glob.has_magic(str(entry)) else [str(entry)]
            for path in paths:
                if os.path.isfile(path) or os.path.isdir(path):
                    found.append((path, os.path.isdir(path)))
                else:
                    logger.info("MLflow: no artifact at %s, skipped", path)
        return found

    def _log_params(self, params: dict[str, Any]) -> None:
        if self.journal is None:
            raise ValueError("Current Run is not Active to log params")
        params = {str(k): str(v)[:MAX_PARAM_LENGTH] for k, v in params.items() if v is not None}
        self.journal.send({"params": params})

    def _log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        values = {str(k): _as_float(v) for k, v in flatten_dict(metrics).items()}
        values = {k: v for k, v in values.items() if v is not None}
        if values and self.journal is not None:
            timestamp = int(time.time() * 1000)
            self.journal.send({"metrics": [[k, v, timestamp, step or 0] for k, v in values.items()]})

    def _default_iteration_log(self, engine: Engine) -> None:
        super()._default_iteration_log(engine)
        optimizer = getattr(engine, "optimizer", None)
        if self.log_lr and optimizer is not None and optimizer.param_groups:
            lr = max(float(group["lr"]) for group in optimizer.param_groups)
            self._log_metrics({"lr": lr}, step=engine.state.iteration)

    def _scalars(self, engine: Engine) -> dict[str, float]:
        value = self.output_transform(engine.state.output)
        if value is None:
            return {}
        if not isinstance(value, dict):
            value = {self.tag_name: value}
        scalars = {k: _as_float(v) for k, v in value.items()}
        return {k: v for k, v in scalars.items() if v is not None and math.isfinite(v)}

    def _reset_means(self, engine: Engine) -> None:
        self._means.reset()

    def _accumulate(self, engine: Engine) -> None:
        self._means.add(self._scalars(engine))

    def _log_means(self, engine: Engine) -> None:
        if self.journal is None:
            return
        means = {f"epoch_{k}": v for k, v in self._means.means().items()}
        self._log_metrics(means, step=self.global_epoch_transform(engine.state.epoch))


def _arg_value(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def tracking_config_ids(argv: Sequence[str]) -> set[str]:
    """Top-level config ids that ``--tracking`` adds to a bundle's config (``tracking_uri``, ``experiment_name``,
    ``run_name``, ...): valid ``--key`` overrides of ``monai.bundle run`` even though no config file defines them.

    Args:
        argv: the command line (``sys.argv``).

    Examples::

        >>> sorted(tracking_config_ids(["run", "--tracking", "mlflow"]))[:3]
        ['experiment_name', 'is_not_rank0', 'output_dir']
        >>> tracking_config_ids(["run"])
        set()
    """
    from monai.bundle import ConfigParser
    from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

    value = _arg_value(argv, "tracking")
    if not value:
        return set()
    if value in DEFAULT_EXP_MGMT_SETTINGS:
        settings = DEFAULT_EXP_MGMT_SETTINGS[value]
    elif os.path.isfile(value):
        settings = ConfigParser.load_config_files(value)
    else:
        return set()
    handlers = set(settings.get("handlers_id", {}))
    return {str(k) for k in settings.get("configs", {}) if k not in handlers}


def log_run(
    tracking_uri: str,
    experiment_name: str,
    run_name: str,
    params: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
    artifacts: Sequence[str | os.PathLike] = (),
) -> str:
    """Logs one finished run outside a bundle workflow (e.g. the demo's report with its figures and tables).

    Args:
        tracking_uri: MLflow tracking URI (``sqlite:///…`` or ``http://…``).
        experiment_name: created when missing.
        run_name: name of the new run.
        params: parameters to log.
        metrics: scalar metrics to log (step 0).
        artifacts: files or folders to log; missing ones are skipped.

    Returns:
        the run id.
    """
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        location = None
        if tracking_uri.startswith("sqlite:///"):  # as MONAI's handler: artifacts next to the database
            location = path_to_uri(Path(tracking_uri[len("sqlite:///") :]).parent / "mlruns")
        experiment_id = client.create_experiment(experiment_name, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    run_id = client.create_run(experiment_id, run_name=run_name).info.run_id
    status = "FAILED"
    try:
        for key, value in (params or {}).items():
            client.log_param(run_id, str(key), str(value)[:MAX_PARAM_LENGTH])
        for key, value in (metrics or {}).items():
            if _as_float(value) is not None:
                client.log_metric(run_id, str(key), _as_float(value))
        for path in map(str, artifacts):
            if os.path.isdir(path):
                client.log_artifacts(run_id, path, artifact_path=Path(path).name)
            elif os.path.isfile(path):
                client.log_artifact(run_id, path)
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
    return run_id


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m selfmedhpm.tracking replay FILE [--tracking_uri URI]``: sends what a run kept while its tracking
    server could not be reached (to the file's server, or to ``URI``)."""
    parser = argparse.ArgumentParser(prog="python -m selfmedhpm.tracking", description=main.__doc__.split(":")[1])
    commands = parser.add_subparsers(dest="command", required=True)
    replay = commands.add_parser("replay", help="send a mlflow_offline_<run>.jsonl file to the tracking server")
    replay.add_argument("file", nargs="+", help="the file(s) a run left (in its output folder)")
    replay.add_argument("--tracking_uri", default=None, help="another server than the one the file names")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in args.file:
        replay_file(path, args.tracking_uri)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

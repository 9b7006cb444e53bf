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

"""What an MLflow run logs while its tracking server cannot be reached: kept in a local file, sent when it answers.

A :class:`RunJournal` stands between the handlers of one MLflow run (:class:`selfmedhpm.tracking.BundleMLFlowHandler`)
and the tracking server. While the server answers, each record (the run's parameters, metric values with their
steps and times, artifacts, the final status) is sent at once. When a call fails because the server cannot be
reached (connection refused or reset, time-out, HTTP 5xx), the journal warns once, naming the URI, and from then on
appends the records to a local JSON-lines file instead of calling the server, so the trainer's step time does not
change. A background thread tries to send the backlog every ``retry_seconds``; once it is through, records go to
the server directly again. When the run ends with the server still away, the file stays, and the last line says
how to send it later: ``python -m selfmedhpm.tracking replay FILE``.

The file: a header ``{"journal": 1, "tracking_uri": ..., "experiment_name": ..., "run_name": ..., "run_id": ...,
"artifact_location": ..., "start_time": ms}``, then one record a line: ``{"params": {key: value}}``,
``{"metrics": [[key, value, timestamp_ms, step], ...]}``, ``{"artifacts": [[path, is_folder], ...]}``,
``{"status": "FINISHED", "end_time": ms}``, and markers: ``{"run_id": ...}`` (the run, once created) and
``{"sent": n}`` (the first n records reached the server). A run that the server never saw is created when the file
is replayed (or an unfinished run of the same name is continued, as MONAI's handler does).

Each failed call costs seconds, not minutes: a bundle's MLflow handler bounds MLflow's HTTP retries for its process
(:func:`bound_http_retries`) unless ``MLFLOW_HTTP_REQUEST_*`` are set already.

Examples::

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "mlflow_offline_train_x.jsonl"
    >>> header = {"journal": 1, "tracking_uri": "http://127.0.0.1:5000", "experiment_name": "e", "run_name": "train_x"}
    >>> lines = [header, {"params": {"lr": "0.1"}}, {"metrics": [["loss", 0.5, 1767225600000, 1]]}, {"sent": 1}]
    >>> _ = path.write_text("".join(json.dumps(line) + "\\n" for line in lines))
    >>> header, records = read_journal(path)  # the parameters reached the server, the loss did not
    >>> header["run_name"], records
    ('train_x', [{'metrics': [['loss', 0.5, 1767225600000, 1]]}])
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = ["HTTP_LIMITS", "bound_http_retries", "is_outage", "RunJournal", "read_journal", "replay_file"]

logger = logging.getLogger(__name__)

HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
"""MLflow's HTTP client retries a failed call 7 times with a backoff factor of 2 and waits 120 s for an answer: about
4 minutes per call against a stopped server. These bound it to about 2 s against a stopped server (connection
refused) and 32 s against one that does not answer at all."""

MAX_PARAM_LENGTH = 6000
"""MLflow's limit on the length of a parameter value; longer values are cut."""
MAX_METRICS, MAX_PARAMS = 1000, 100
"""MLflow's limits on the metric values and parameters of one ``log_batch`` call."""

_QUIET = threading.local()


class _QuietRetries(logging.Filter):
    """Drops urllib3's "Retrying ..." warnings of the calls a journal makes: the outage is reported once, by it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (getattr(_QUIET, "on", False) and str(record.msg).startswith("Retrying"))


_FILTER = _QuietRetries()

_UNSENT: dict[Path, str] = {}
"""Files that runs of this process left unsent, and their server: named again as the process's last line."""


@atexit.register
def _remind() -> None:
    """The process's last line (after the engine's own): printed, as logging may be shut down by then."""
    for path, uri in _UNSENT.items():
        if path.is_file():
            print(f"MLflow: not sent yet: {path} (python -m selfmedhpm.tracking replay {path} --tracking_uri {uri})",
                  file=sys.stderr, flush=True)  # fmt: skip


def bound_http_retries() -> None:
    """Sets :data:`HTTP_LIMITS` in this process's environment, where they are not set already (MLflow reads them at
    each call)."""
    for key, value in HTTP_LIMITS.items():
        os.environ.setdefault(key, value)
    logging.getLogger("urllib3.connectionpool").addFilter(_FILTER)  # idempotent


def is_outage(error: BaseException) -> bool:
    """True when ``error`` (or an error in its chain) says the tracking server cannot be reached or failed: a
    refused, reset or timed-out connection, or an HTTP 5xx answer. A 4xx answer (a bad request) is not an outage.

    Examples::

        >>> from mlflow.exceptions import MlflowException
        >>> is_outage(MlflowException("API request to http://x failed with exception Max retries exceeded"))
        True
        >>> is_outage(MlflowException.invalid_parameter_value("a bad value"))
        False
        >>> is_outage(ConnectionRefusedError(111, "Connection refused"))
        True
    """
    import requests
    from mlflow.exceptions import MlflowException

    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            return True
        if isinstance(error, (ConnectionError, TimeoutError)):
            return True
        if isinstance(error, MlflowException) and error.get_http_status_code() >= 500:
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def _reason(error: BaseException) -> str:
    """A short reason for an outage: "[Errno 111] Connection refused", "Read timed out", ..."""
    text = str(error)
    found = re.search(r"\[Errno -?\d+\] [^'\")]+|Read timed out|too many \d+ error responses|Connection reset", text)
    return found.group(0).strip() if found else type(error).__name__


def _now_ms() -> int:
    return int(time.time() * 1000)


def _count(records: list[dict]) -> str:
    params = sum(len(r.get("params", {})) for r in records)
    metrics = sum(len(r.get("metrics", [])) for r in records)
    artifacts = sum(len(r.get("artifacts", [])) for r in records)
    return f"{params} parameters, {metrics} metric values, {artifacts} artifacts"


# ------------------------------------------------------------------------------------------- sending one record


def _open_run(client: Any, header: dict) -> str:
    """The id of the header's run: the one recorded, else an unfinished run of the same name in the experiment (a
    resumed job continues its run), else a new run; the experiment is created when missing."""
    from mlflow.entities import LifecycleStage, RunStatus
    from mlflow.exceptions import MlflowException

    if header.get("run_id"):
        return header["run_id"]
    name = header["experiment_name"]
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            client.create_experiment(name, artifact_location=header.get("artifact_location"))
        except MlflowException as e:  # another process created it meanwhile
            if "RESOURCE_ALREADY_EXISTS" not in str(e):
                raise
        experiment = client.get_experiment_by_name(name)
    if experiment.lifecycle_stage != LifecycleStage.ACTIVE:
        raise ValueError(f"Cannot set a deleted experiment '{name}' as the active experiment")
    finished = RunStatus.to_string(RunStatus.FINISHED)
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
    for run in runs:
        if run.info.run_name == header["run_name"] and run.info.status != finished:
            return run.info.run_id
    run = client.create_run(experiment.experiment_id, start_time=header.get("start_time"), run_name=header["run_name"])
    return run.info.run_id


def _log_params(client: Any, run_id: str, params: Mapping[str, str]) -> None:
    """Logs ``params``; a parameter that the run has with another value (a resumed run) is kept, with a warning."""
    from mlflow.entities import Param
    from mlflow.exceptions import MlflowException

    items = list(params.items())
    for start in range(0, len(items), MAX_PARAMS):
        chunk = dict(items[start : start + MAX_PARAMS])
        try:
            client.log_batch(run_id, params=[Param(k, v) for k, v in chunk.items()])
        except MlflowException as e:
            if is_outage(e):
                raise
            logged = client.get_run(run_id).data.params
            changed = {k: (logged[k], v) for k, v in chunk.items() if k in logged and logged[k] != v}
            if changed:
                logger.warning("MLflow: the run has other values for %s; kept them (old, new)", changed)
            new = {k: v for k, v in chunk.items() if k not in logged}
            if new:
                client.log_batch(run_id, params=[Param(k, v) for k, v in new.items()])


def _send(client: Any, run_id: str, record: dict) -> None:
    """Sends one record (see the module docstring) to the run."""
    from mlflow.entities import Metric

    if "params" in record:
        _log_params(client, run_id, record["params"])
    elif "metrics" in record:
        metrics = record["metrics"]
        for start in range(0, len(metrics), MAX_METRICS):
            chunk = metrics[start : start + MAX_METRICS]
            client.log_batch(run_id, metrics=[Metric(k, float(v), int(t), int(s)) for k, v, t, s in chunk])
    elif "artifacts" in record:
        for path, is_folder in record["artifacts"]:
            if is_folder and os.path.isdir(path):
                client.log_artifacts(run_id, path, artifact_path=Path(path).name)
            elif not is_folder and os.path.isfile(path):
                client.log_artifact(run_id, path)
            else:
                logger.warning("MLflow: artifact %s no longer exists, skipped", path)
    elif "status" in record:
        client.set_terminated(run_id, record["status"], end_time=record.get("end_time"))


def _batches(records: list[dict]) -> Iterator[tuple[dict, int]]:
    """``(record, n)``: consecutive metric records merged (up to :data:`MAX_METRICS` values), each with the number
    of records it stands for."""
    i = 0
    while i < len(records):
        if "metrics" not in records[i]:
            yield records[i], 1
            i += 1
            continue
        merged: list = []
        j = i
        while j < len(records) and "metrics" in records[j] and len(merged) + len(records[j]["metrics"]) <= MAX_METRICS:
            merged += records[j]["metrics"]
            j += 1
        if j == i:  # one record larger than a batch: _send splits it
            merged, j = records[i]["metrics"], i + 1
        yield {"metrics": merged}, j - i
        i = j


# ---------------------------------------------------------------------------------------------------- the file


def read_journal(path: str | os.PathLike) -> tuple[dict, list[dict]]:
    """``(header, records not sent yet)`` of a journal file (the markers applied; ``header["sent"]``: how many
    records were sent before)."""
    header: dict = {}
    records: list[dict] = []
    sent = 0
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                if number > 1 and not line.endswith("\n"):  # the last line, cut off by a crash
                    break
                raise ValueError(f"{path}: line {number} is not a journal record") from None
            if number == 1:
                if item.get("journal") != 1:
                    raise ValueError(f"{path}: not an MLflow journal of selfmedhpm (no header)")
                header = item
            elif "run_id" in item and len(item) == 1:
                header["run_id"] = item["run_id"]
            elif "sent" in item and len(item) == 1:
                sent = int(item["sent"])
            else:
                records.append(item)
    header["sent"] = sent
    return header, records[sent:]


class RunJournal:
    """One MLflow run's records on their way to the tracking server; see the module docstring.

    Args:
        client: the ``MlflowClient`` of the tracking URI.
        tracking_uri: the URI (for the messages and the file's header).
        experiment_name: the run's experiment (created when missing).
        run_name: the run's name.
        folder: where the file ``mlflow_offline_<run_name>.jsonl`` is written during an outage.
        retry_seconds: least time between two tries to reach the server during an outage. Defaults to 30.
        artifact_location: of the experiment, when it is created.
    """

    def __init__(
        self,
        client: Any,
        tracking_uri: str,
        experiment_name: str,
        run_name: str,
        folder: str | os.PathLike,
        retry_seconds: float = 30.0,
        artifact_location: str | None = None,
    ) -> None:
        self.client, self.tracking_uri, self.retry_seconds = client, str(tracking_uri), float(retry_seconds)
        self.header = {
            "journal": 1,
            "tracking_uri": self.tracking_uri,
            "experiment_name": str(experiment_name),
            "run_name": str(run_name),
            "run_id": None,
            "artifact_location": artifact_location,
            "start_time": _now_ms(),
        }
        self._stem = Path(folder) / f"mlflow_offline_{re.sub(r'[^A-Za-z0-9_.-]', '_', str(run_name))}"
        self.path = self._stem.with_name(f"{self._stem.name}.jsonl")
        self.pending: list[dict] = []
        self.online = True
        self.closed = False
        self.outages = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._file: Any = None
        self._sent = 0
        self._since = 0.0
        self._worker: threading.Thread | None = None

    @property
    def run_name(self) -> str:
        return self.header["run_name"]

    @property
    def run_id(self) -> str | None:
        return self.header["run_id"]

    def open(self) -> None:
        """Creates the run (or continues an unfinished one of the same name) on the server; when the server cannot
        be reached, the run is created when it answers."""
        _QUIET.on = True
        try:
            self.header["run_id"] = _open_run(self.client, self.header)
        except Exception as e:
            if not is_outage(e):
                raise
            with self._lock:
                self._go_offline(e)
        finally:
            _QUIET.on = False

    def send(self, record: dict) -> None:
        """Sends ``record`` now, or keeps it (in order) while the server cannot be reached."""
        if not self.online:
            with self._lock:
                if not self.online:
                    self._keep(record)
                    return
        _QUIET.on = True
        try:
            _send(self.client, self.header["run_id"], record)
        except Exception as e:
            if not is_outage(e):
                raise
            with self._lock:
                self._go_offline(e)
                self._keep(record)
        finally:
            _QUIET.on = False

    def close(self, status: str) -> None:
        """Ends the run with ``status``. During an outage, tries once more to send the backlog (at most the cost of
        one failed call when the server still does not answer); what is left stays in the file, and the last line
        says how to send it."""
        self.send({"status": status, "end_time": _now_ms()})
        worker = self._worker
        if worker is not None:
            self._closing = True
            self._wake.set()
            worker.join()
        self.closed = True
        with self._lock:
            unwritable = self._file is False
            if self._file:
                self._file.close()
            self._file = None
            if not self.pending:
                return
        where = f"memory only ({self.path} could not be written)" if unwritable else str(self.path)
        if not unwritable:
            _UNSENT[self.path] = self.tracking_uri
        logger.warning(
            "MLflow: %s did not answer since %s; the run's %s are kept in %s. Send them when it is back: "
            "python -m selfmedhpm.tracking replay %s --tracking_uri %s",
            self.tracking_uri,
            time.strftime("%H:%M:%S", time.localtime(self._since)),
            _count(self.pending),
            where,
            self.path,
            self.tracking_uri,
        )

    # ------------------------------------------------------------------------------------------ during an outage

    def _go_offline(self, error: BaseException) -> None:
        """Called under the lock: from now on, records go to the file until the worker has sent them."""
        self.online = False
        self.outages += 1
        self._since = time.time()
        if self._file is None:  # a new file, beside any that an earlier process left for a run of this name
            number = 1
            while self.path.exists():
                number += 1
                self.path = self._stem.with_name(f"{self._stem.name}.{number}.jsonl")
            self._write([self.header])
        logger.warning(
            "MLflow: the tracking server %s cannot be reached (%s); training goes on, the run's records are kept in "
            "%s and sent when it answers (tried every %g s).",
            self.tracking_uri,
            _reason(error),
            self.path,
            self.retry_seconds,
        )
        self._worker = threading.Thread(target=self._work, name="mlflow-journal", daemon=True)
        self._worker.start()

    def _keep(self, record: dict) -> None:
        self.pending.append(record)
        self._write([record])

    def _write(self, items: list[dict]) -> None:
        """Appends ``items`` to the file (one JSON line each); a failed write leaves them in memory only."""
        if self._file is False:
            return
        try:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path, "a")
            for item in items:
                self._file.write(json.dumps(item) + "\n")
            self._file.flush()
        except OSError as e:
            logger.warning("MLflow: cannot write %s (%s); the records are kept in memory only.", self.path, e)
            self._file = False

    def _work(self) -> None:
        """The background thread of an outage: every ``retry_seconds`` (or at once when the run closes), sends the
        backlog; ends when it is all sent or when a try at closing fails."""
        _QUIET.on = True
        while True:
            self._wake.wait(self.retry_seconds)
            self._wake.clear()
            if self._drain():
                return
            if self._closing:
                return

    def _drain(self) -> bool:
        """Sends the kept records in order; True when all are sent and records go to the server directly again."""
        try:
            if self.header["run_id"] is None:
                run_id = _open_run(self.client, self.header)
                with self._lock:
                    self.header["run_id"] = run_id
                    self._write([{"run_id": run_id}])
            while True:
                with self._lock:
                    if not self.pending:
                        self._back()
                        return True
                    batch, n = next(_batches(self.pending))
                _send(self.client, self.header["run_id"], batch)
                with self._lock:
                    del self.pending[:n]
                    self._sent += n
                    self._write([{"sent": self._sent}])
        except Exception as e:
            if not is_outage(e):
                logger.warning("MLflow: sending the kept records failed (%s); they stay in %s", e, self.path)
            return False

    def _back(self) -> None:
        """Called under the lock with nothing pending: the file is no longer needed."""
        logger.info(
            "MLflow: %s answers again after %.0f s; the records kept meanwhile are sent.",
            self.tracking_uri,
            time.time() - self._since,
        )
        if self._file:
            self._file.close()
        self._file = None
        self._sent = 0
        if self.path.is_file():
            self.path.unlink()
        self.online = True


def replay_file(path: str | os.PathLike, tracking_uri: str | None = None) -> str:
    """Sends what a journal file kept to the tracking server (its own URI, or ``tracking_uri``), then deletes it;
    an interrupted replay continues where it stopped when run again.

    Args:
        path: the ``mlflow_offline_<run>.jsonl`` file a run left.
        tracking_uri: another server than the file's.

    Returns:
        the run id.
    """
    import mlflow

    header, records = read_journal(path)
    uri = tracking_uri or header["tracking_uri"]
    if tracking_uri and tracking_uri != header["tracking_uri"]:
        header["run_id"] = None  # the run lives on the other server
    client = mlflow.MlflowClient(tracking_uri=uri)
    with open(path, "a") as f:
        if not header.get("run_id"):
            header["run_id"] = _open_run(client, header)
            f.write(json.dumps({"run_id": header["run_id"]}) + "\n")
        sent = header["sent"]
        for batch, n in _batches(records):
            _send(client, header["run_id"], batch)
            sent += n
            f.write(json.dumps({"sent": sent}) + "\n")
            f.flush()
    Path(path).unlink()
    logger.info("sent %s to run %s (%s) at %s", _count(records), header["run_name"], header["run_id"], uri)
    return header["run_id"]

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

"""Releases: reproducible self-contained zips, the weights they need, ``bundle_index.json``, MONAI's download of a
released zip and its inference where neither this repository nor the installed package can be imported, and zip
path traversal."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import torch
from helpers import PRETRAIN, ROOT, SEGMENT
from monai.bundle import ConfigParser
from selfmedhpm.transfer import encoder_state_dict
from selfmedhpm_tools import release
from selfmedhpm_tools.release import ReleaseError, UnsafeArchiveError, build, content_sha1, safe_extract, sha1

NAMES = (PRETRAIN.name, SEGMENT.name)
KEY = {
    b.name: f"{b.name}_v{release.bundle_metadata(b)['version']}" for b in (PRETRAIN, SEGMENT)
}  # each its own version
NOT_CARRIED = {p.name for p in Path(release.__file__).parent.glob("*.py")} - {"__init__.py"}  # the tooling's modules


def copy_bundle(source: Path, bundles_dir: Path) -> Path:
    """The committed part of a bundle (no weights, outputs or caches) in ``bundles_dir``."""
    ignore = shutil.ignore_patterns("models", "eval", "__pycache__", "*.pyc")
    return Path(shutil.copytree(source, bundles_dir / source.name, ignore=ignore))


def cpu_network(bundle: Path, network_id: str = "network_def", **overrides) -> torch.nn.Module:
    """The network of the bundle's train config with its CPU preset (the demo's weights have that size)."""
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / n) for n in ("train.json", "train_cpu.json")])
    parser.update({"bundle_root": str(bundle), "device": "$torch.device('cpu')", **overrides})
    torch.manual_seed(0)
    return parser.get_parsed_content(network_id)


def add_tiny_weights(bundle: Path) -> Path:
    """Writes the ``models/*.pt`` a trained bundle has, for the CPU preset: pretraining model/teacher/encoder,
    segmentation model."""
    net = cpu_network(bundle)
    models = bundle / "models"
    models.mkdir(exist_ok=True)
    names = ("model.pt", "teacher.pt") if bundle.name == PRETRAIN.name else ("model.pt",)
    for name in names:
        torch.save(net.state_dict(), models / name)
    if bundle.name == PRETRAIN.name:
        torch.save(encoder_state_dict(net), models / "encoder.pt")
    return bundle


@pytest.fixture(scope="module")
def bundles_dir(tmp_path_factory) -> Path:
    """Copies of both bundles with tiny weights."""
    folder = tmp_path_factory.mktemp("bundles") / "bundles"
    for source in (PRETRAIN, SEGMENT):
        add_tiny_weights(copy_bundle(source, folder))
    return folder


@pytest.fixture(scope="module")
def released(bundles_dir, tmp_path_factory) -> dict[str, Path]:
    dist = tmp_path_factory.mktemp("dist")
    return {name: build(bundles_dir / name, dist)[0] for name in NAMES}


# ------------------------------------------------------------------------------------------------------ the zips


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_zip_layout_is_self_contained(released, name):
    with zipfile.ZipFile(released[name]) as archive:
        names = archive.namelist()
        infos = archive.infolist()
    assert released[name].name == f"{KEY[name]}.zip"
    assert names == sorted(names) and all(n.startswith(f"{name}/") for n in names)
    for required in ("LICENSE", "configs/metadata.json", "configs/inference.json", "docs/README.md", "models/model.pt"):
        assert f"{name}/{required}" in names, required
    carried = {n.split("/selfmedhpm/", 1)[1] for n in names if "/selfmedhpm/" in n}
    assert {"__init__.py", "bundle.py", "tracking.py", "transfer.py"} <= carried
    assert not carried & NOT_CARRIED and not any("selfmedhpm_tools" in n for n in names)
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {stat.S_IMODE(i.external_attr >> 16) for i in infos} == {0o644}


@pytest.mark.slow
def test_two_builds_have_the_same_sha1(bundles_dir, released, tmp_path):
    for path in (bundles_dir / PRETRAIN.name).rglob("*"):
        os.utime(path, (1_900_000_000, 1_900_000_000))  # other timestamps must not matter
    again = {name: build(bundles_dir / name, tmp_path)[0] for name in NAMES}
    assert {n: sha1(p) for n, p in again.items()} == {n: sha1(p) for n, p in released.items()}


def test_carried_modules_are_what_the_configs_import():
    pretraining = set(release.package_modules(PRETRAIN))
    segmentation = set(release.package_modules(SEGMENT))
    assert {"visualize.py", "networks/__init__.py", "networks/hpm_vit.py", "engine.py"} <= pretraining
    assert {"evaluation.py", "labels.py", "seg_data.py", "checkpoint.py"} <= segmentation
    assert "visualize.py" not in segmentation and not (pretraining | segmentation) & NOT_CARRIED


@pytest.mark.slow
def test_release_refuses_missing_weights_unless_allowed(tmp_path, capsys):
    bundles = tmp_path / "bundles"
    copy_bundle(SEGMENT, bundles)
    with pytest.raises(ReleaseError, match=r"models/model\.pt missing.*--allow-missing-weights"):
        build(bundles / SEGMENT.name, tmp_path / "dist")
    argv = ["--bundles_dir", str(bundles), "--dist", str(tmp_path / "dist")]
    assert release.main(argv) == 1
    assert "release refused" in capsys.readouterr().err and not (tmp_path / "dist").exists()
    assert release.main(argv + ["--allow-missing-weights"]) == 0
    with zipfile.ZipFile(tmp_path / "dist" / f"{KEY[SEGMENT.name]}.zip") as archive:
        assert not [n for n in archive.namelist() if "/models/" in n]


@pytest.mark.slow
def test_weights_can_come_from_a_training_output_folder(bundles_dir, released, tmp_path):
    bundle = copy_bundle(SEGMENT, tmp_path / "bundles")
    weights = tmp_path / "results" / "finetune_hpm"
    shutil.copytree(bundles_dir / SEGMENT.name / "models", weights)
    argv = ["--bundles_dir", str(tmp_path / "bundles"), "--dist", str(tmp_path / "dist")]
    assert release.main(argv + ["--weights_from", f"{SEGMENT.name}={weights}"]) == 0
    assert sha1(tmp_path / "dist" / released[SEGMENT.name].name) == sha1(released[SEGMENT.name])
    assert not (bundle / "models").exists()


@pytest.mark.slow
def test_weights_trained_with_other_values_are_released_with_them(tmp_path):
    """The demo's weights (CPU preset, 48^3 crops at 3 mm): the preset and the values are merged into the released
    inference.json and train.json, which then build the network the weights fit, with no override file."""
    bundle = copy_bundle(SEGMENT, tmp_path / "bundles")
    (bundle / "models").mkdir()
    torch.save(cpu_network(bundle, roi_size=[48, 48, 48]).state_dict(), bundle / "models" / "model.pt")  # the demo's
    argv = ["--bundles_dir", str(tmp_path / "bundles"), "--dist", str(tmp_path / "dist")]
    with pytest.raises(ReleaseError, match=r"fit no inference network \(weights trained with other values"):
        build(bundle, tmp_path / "dist")
    settings = ["--set", f"{SEGMENT.name}:roi_size=[48, 48, 48]", "--set", f"{SEGMENT.name}:pixdim=[3.0, 3.0, 3.0]"]
    assert release.main(argv + settings) == 0
    entry = json.loads((tmp_path / "dist" / "bundle_index.json").read_text())[KEY[SEGMENT.name]]
    assert entry["inference_configs"] == ["configs/inference.json"]
    unpacked = tmp_path / "unpacked"
    safe_extract(tmp_path / "dist" / entry["source"], unpacked)
    configs_ = unpacked / SEGMENT.name / "configs"
    record = json.loads((configs_ / release.OVERRIDES_FILE).read_text())
    assert record["presets"] == ["train_cpu.json"] and record["values"]["roi_size"] == [48, 48, 48]
    cpu = json.loads((SEGMENT / "configs" / "train_cpu.json").read_text())
    for name in ("inference.json", "train.json"):
        config = json.loads((configs_ / name).read_text())
        assert config["roi_size"] == [48, 48, 48] and config["pixdim"] == [3.0, 3.0, 3.0], name
        assert config["hidden_size"] == cpu["hidden_size"] and config["feature_size"] == cpu["feature_size"], name
    assert json.loads((configs_ / "train.json").read_text())["epochs"] == cpu["epochs"]
    assert "epochs" not in json.loads((configs_ / "inference.json").read_text())  # not an inference key
    meta = json.loads((configs_ / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [48, 48, 48]
    parser = ConfigParser()
    parser.read_config(str(configs_ / "inference.json"))
    parser.update({"bundle_root": str(unpacked / SEGMENT.name)})
    state = torch.load(unpacked / SEGMENT.name / "models" / "model.pt", weights_only=True)
    parser.get_parsed_content("network_def").load_state_dict(state, strict=True)  # raises when the sizes differ
    assert release.main(argv + ["--set", "other_bundle:roi_size=[1]"]) == 1


@pytest.mark.slow
def test_values_recorded_beside_the_weights_are_released_with_them_and_set_wins(tmp_path, capsys):
    """What make release does after make demo: the values come from the trained_with.json the training wrote beside the
    weights, with no --set; a --set value wins over the file's; a broken record is refused naming it."""
    bundle = copy_bundle(SEGMENT, tmp_path / "bundles")
    weights = tmp_path / "finetune_hpm"
    weights.mkdir()
    torch.save(cpu_network(bundle, roi_size=[48, 48, 48]).state_dict(), weights / "model.pt")
    (weights / release.TRAINED_WITH).write_text(json.dumps({"roi_size": [48, 48, 48], "pixdim": [3.0, 3.0, 3.0]}))
    argv = ["--bundles_dir", str(tmp_path / "bundles"), "--dist", str(tmp_path / "dist"), "--bundles", SEGMENT.name,
            "--weights_from", f"{SEGMENT.name}={weights}"]  # fmt: skip
    assert release.main(argv + ["--set", f"{SEGMENT.name}:pixdim=[4.0, 4.0, 4.0]"]) == 0
    with zipfile.ZipFile(tmp_path / "dist" / f"{KEY[SEGMENT.name]}.zip") as archive:
        record = json.loads(archive.read(f"{SEGMENT.name}/configs/{release.OVERRIDES_FILE}"))
        inference = json.loads(archive.read(f"{SEGMENT.name}/configs/inference.json"))
    assert record["values"]["roi_size"] == [48, 48, 48] and record["values"]["pixdim"] == [4.0, 4.0, 4.0]
    assert inference["roi_size"] == [48, 48, 48] and inference["pixdim"] == [4.0, 4.0, 4.0]
    (weights / release.TRAINED_WITH).write_text("[1, 2]")
    assert release.main(argv + ["--force"]) == 1
    assert f"{weights / release.TRAINED_WITH}: expected an object of config values" in capsys.readouterr().err


@pytest.mark.slow
def test_pretraining_release_needs_the_teacher_its_inference_loads(tmp_path):
    bundle = add_tiny_weights(copy_bundle(PRETRAIN, tmp_path / "bundles"))
    assert release.required_weights(bundle) == ["models/model.pt", "models/teacher.pt"]
    (bundle / "models" / "teacher.pt").unlink()
    with pytest.raises(ReleaseError, match=r"models/teacher\.pt missing"):
        build(bundle, tmp_path / "dist")


@pytest.mark.slow
def test_release_refuses_weights_that_do_not_fit_or_are_not_plain_tensors(tmp_path):
    bundle = add_tiny_weights(copy_bundle(SEGMENT, tmp_path / "bundles"))
    torch.save({"out.conv.conv.weight": torch.zeros(3)}, bundle / "models" / "model.pt")
    with pytest.raises(ReleaseError, match="fit no inference network"):
        build(bundle, tmp_path / "dist")
    torch.save({"weights": torch.zeros(1), "code": release.Path("x")}, bundle / "models" / "model.pt")
    with pytest.raises(ReleaseError, match="not a plain tensor state dict"):
        build(bundle, tmp_path / "dist")


# ----------------------------------------------------------------------------------------------------- the index


@pytest.mark.slow
def test_release_index_lists_what_was_built_and_takes_a_rebuild(bundles_dir, released, tmp_path, capsys):
    """``make release`` writes ``dist/bundle_index.json`` next to the zips; building again after training again (other
    weights, same version) replaces the entry of the earlier build with no --force; a published entry (a URL) of the
    same version is never silently replaced."""
    dist = tmp_path / "dist"
    argv = ["--bundles_dir", str(bundles_dir), "--dist", str(dist)]
    assert release.main(argv) == 0
    index = dist / "bundle_index.json"
    text = index.read_text()
    entries = json.loads(text)
    assert text == json.dumps(entries, indent=4) + "\n"
    assert f"wrote {index}" in capsys.readouterr().out
    assert sorted(entries) == [KEY[n] for n in sorted(NAMES)]
    for name in NAMES:
        entry = entries[KEY[name]]
        assert entry["source"] == f"{KEY[name]}.zip"  # beside the index: the file exists where it says
        assert entry["checksum"] == sha1(dist / entry["source"]) == sha1(released[name])  # fresh builds agree
        assert entry["monai_version"] == "1.6.1" and entry["pytorch_version"] == "2.13.0" and entry["description"]
        assert entry["inference_configs"] == ["configs/inference.json"]
        assert entry["content_sha1"] == content_sha1(release.release_files(bundles_dir / name))
    assert entries[KEY[SEGMENT.name]]["builds_on"] == KEY[PRETRAIN.name]
    assert entries[KEY[PRETRAIN.name]]["builds_on"] is None
    weights = entries[KEY[PRETRAIN.name]]["weights"]
    assert sorted(weights) == ["models/encoder.pt", "models/model.pt", "models/teacher.pt"]
    assert weights["models/model.pt"] == sha1(bundles_dir / PRETRAIN.name / "models" / "model.pt")

    retrained = copy_bundle(bundles_dir / SEGMENT.name, tmp_path / "retrained")
    add_tiny_weights(retrained)
    state = torch.load(retrained / "models" / "model.pt", weights_only=True)
    torch.save({k: v + 1 for k, v in state.items()}, retrained / "models" / "model.pt")
    again = ["--bundles_dir", str(tmp_path / "retrained"), "--dist", str(dist)]
    assert release.main(again) == 0
    rebuilt = json.loads(index.read_text())
    key = KEY[SEGMENT.name]
    assert rebuilt[key]["checksum"] == sha1(dist / rebuilt[key]["source"]) != entries[key]["checksum"]
    assert rebuilt[KEY[PRETRAIN.name]] == entries[KEY[PRETRAIN.name]]  # kept

    published = {key: {**rebuilt[key], "source": f"https://example.org/{key}.zip"}}
    index.write_text(json.dumps(published, indent=4) + "\n")
    torch.save({k: v - 1 for k, v in state.items()}, retrained / "models" / "model.pt")
    assert release.main(again) == 1  # same version, other build: bump the version
    assert "needs a new version" in capsys.readouterr().err
    assert release.main(again + ["--force"]) == 0


def test_repository_index_describes_the_bundle_folders(tmp_path):
    """bundle_index.json (committed, written by ``make index``) lists every bundle folder at its current version;
    its checksum is the content of the current configs, docs and carried code, so a fresh clone can check it."""
    index = ROOT / "bundle_index.json"
    entries = json.loads(index.read_text())
    assert index.read_text() == json.dumps(entries, indent=4) + "\n"
    assert release.source_index([PRETRAIN, SEGMENT], tmp_path / "index.json") == {
        key: {**entry, "source": os.path.relpath(ROOT / entry["source"], tmp_path)} for key, entry in entries.items()
    }, "bundle_index.json is out of date: run make index"
    for name in NAMES:
        entry = entries[KEY[name]]
        assert (ROOT / entry["source"] / "configs" / "metadata.json").is_file()  # the source exists where it says
        assert entry["checksum"] == content_sha1(release.release_files(ROOT / "bundles" / name))
    assert entries[KEY[SEGMENT.name]]["builds_on"] == KEY[PRETRAIN.name]


# ------------------------------------------------------------------------- download and isolated inference


def isolated_env(*paths: Path) -> dict:
    """Environment of a ``python -S`` process: no site processing, so the editable install of this repository
    (a .pth file) is not on ``sys.path``; the installed libraries come from ``PYTHONPATH``."""
    libraries = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MLFLOW_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=os.pathsep.join([*map(str, paths), *libraries]))
    return env


def python(args: list[str], env: dict, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-S", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def downloaded(released, tmp_path_factory) -> Path:
    """Both releases unpacked by ``python -m monai.bundle download --url file://...``."""
    target = tmp_path_factory.mktemp("downloaded")
    for name in NAMES:
        result = subprocess.run(
            [sys.executable, "-m", "monai.bundle", "download", "--name", name, "--url", released[name].as_uri(),
             "--bundle_dir", str(target)],
            capture_output=True, text=True, timeout=300, cwd=target,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert (target / name / "configs" / "inference.json").is_file()
    return target


@pytest.mark.slow
def test_unpacked_bundle_imports_its_own_copy_of_the_package(downloaded, tmp_path):
    bundle = downloaded / SEGMENT.name
    code = ["-c", "import selfmedhpm, sys; print(selfmedhpm.__file__)"]
    blocked = python(code, isolated_env(), tmp_path)
    assert blocked.returncode != 0 and "No module named 'selfmedhpm'" in blocked.stderr  # the repository is not seen
    found = python(code, isolated_env(bundle), tmp_path)
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()) == bundle / "selfmedhpm" / "__init__.py"


@pytest.mark.slow
def test_unpacked_segmentation_bundle_infers_from_any_folder(downloaded, phantom_dir, tmp_path):
    bundle = downloaded / SEGMENT.name
    image = phantom_dir / json.loads((phantom_dir / "dataset_0.json").read_text())["validation"][0]["image"]
    configs_ = str(bundle / "configs" / "inference.json")  # the CPU preset of the tiny weights is merged into it
    args = ["-m", "monai.bundle", "run", "--config_file", configs_, "--input_file", str(image),
            "--output_dir", str(tmp_path / "out"), "--pixdim", "[6.0, 6.0, 6.0]"]  # fmt: skip
    result = python(args, isolated_env(bundle), tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert (tmp_path / "out" / image.name.replace(".nii.gz", "_seg.nii.gz")).is_file()
    assert str(ROOT / "custom") not in result.stdout + result.stderr  # nothing ran from this repository


@pytest.mark.slow
def test_unpacked_pretraining_bundle_infers_from_its_own_folder(downloaded, phantom_dir, tmp_path):
    bundle = downloaded / PRETRAIN.name
    args = ["-m", "monai.bundle", "run", "--config_file", "configs/inference.json",
            "--dataset_dir", str(phantom_dir), "--pixdim", "[3.0, 3.0, 3.0]"]  # fmt: skip
    result = python(args, isolated_env(), bundle)  # `python -m` puts the working folder first on sys.path
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert list((bundle / "eval").glob("*_hpm_heatmap.nii.gz")) and list((bundle / "eval").glob("*_hpm.png"))
    assert str(ROOT / "custom") not in result.stdout + result.stderr


# ----------------------------------------------------------------------------------------------- zip traversal


def evil_zip(path: Path, entries: dict[str, bytes], links: tuple[str, ...] = ()) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            if name in links:
                info.create_system, info.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, data)
    return path


def test_monai_download_refuses_entries_outside_the_bundle_folder(tmp_path):
    from monai.bundle import download

    archive = evil_zip(tmp_path / "evil.zip", {"evil/configs/ok.txt": b"ok", "../evil.txt": b"owned"})
    target = tmp_path / "work" / "bundles"
    target.mkdir(parents=True)
    with pytest.raises(ValueError, match="Unsafe path"):
        download(name="evil", url=archive.as_uri(), bundle_dir=str(target), progress=False)
    assert not (target.parent / "evil.txt").exists() and not list(tmp_path.rglob("evil.txt"))


@pytest.mark.parametrize(
    "entries, links",
    [
        ({"b/ok.txt": b"ok", "../evil.txt": b"x"}, ()),
        ({"b/ok.txt": b"ok", "b/../../evil.txt": b"x"}, ()),
        ({"b/ok.txt": b"ok", "/tmp/evil.txt": b"x"}, ()),
        ({"b/ok.txt": b"ok", "b/link": b"../../evil.txt"}, ("b/link",)),
    ],
    ids=["parent", "nested-parent", "absolute", "symlink"],
)
def test_safe_extract_refuses_the_whole_archive(tmp_path, entries, links):
    archive = evil_zip(tmp_path / "evil.zip", entries, links)
    target = tmp_path / "out" / "target"
    with pytest.raises(UnsafeArchiveError):
        safe_extract(archive, target)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").rglob("*.txt"))  # nothing written


@pytest.mark.slow
def test_safe_extract_unpacks_a_release(released, tmp_path):
    files = safe_extract(released[SEGMENT.name], tmp_path)
    with zipfile.ZipFile(released[SEGMENT.name]) as archive:
        assert sorted(f.relative_to(tmp_path).as_posix() for f in files) == archive.namelist()


# ---------------------------------------------------------------------------------------------- verify's checks


def test_verify_flags_bad_versions_unformatted_json_and_a_stale_index(bundles_dir, tmp_path):
    from selfmedhpm_tools import verify

    bundle = copy_bundle(bundles_dir / SEGMENT.name, tmp_path / "bundles")
    index = tmp_path / "bundle_index.json"
    context = {"index": index, "tmp": str(tmp_path)}
    key = KEY[SEGMENT.name]
    with pytest.raises(verify.CheckFailed, match=f"{key} is not in bundle_index.json: run make index"):
        verify.check_index(bundle, context)
    release.source_index([bundle], index)
    assert verify.check_index(bundle, context) == f"{key} matches bundle_index.json"
    (bundle / "configs" / "inference.json").write_text(json.dumps({"changed": True}))
    with pytest.raises(verify.CheckFailed, match="describes another content.*run make index"):
        verify.check_index(bundle, context)
    with pytest.raises(verify.CheckFailed, match="inference.json: not pretty-printed"):
        verify.check_json_format(bundle, context)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    meta["version"] = "0.10.0"
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta, indent=4) + "\n")
    with pytest.raises(verify.CheckFailed, match="single-digit"):
        verify.check_version(bundle, context)


def test_verify_flags_pre_processing_and_encoder_settings_that_drift_apart(tmp_path):
    from selfmedhpm_tools import verify

    for bundle in (PRETRAIN, SEGMENT):
        shutil.copytree(bundle / "configs", tmp_path / "bundles" / bundle.name / "configs")
    assert "pre-process alike (Orientationd -> Spacingd -> ScaleIntensityRanged -> CropForegroundd)" in (
        verify.check_shared_settings(tmp_path)
    )
    configs = tmp_path / "bundles" / SEGMENT.name / "configs"
    inference = json.loads((configs / "inference.json").read_text())
    window = next(t for t in inference["preprocessing"]["transforms"] if t["_target_"] == "ScaleIntensityRanged")
    window["a_min"] = -1000.0  # inference would window otherwise than the training it serves
    (configs / "inference.json").write_text(json.dumps(inference))
    preset = json.loads((configs / "train_cpu.json").read_text())
    (configs / "train_cpu.json").write_text(json.dumps({**preset, "hidden_size": 120}))
    with pytest.raises(verify.CheckFailed) as info:
        verify.check_shared_settings(tmp_path)
    message = str(info.value)
    assert f"{SEGMENT.name}/configs/inference.json pre-processes images as" in message and "'a_min': -1000.0" in message
    assert f"encoder_settings#hidden_size of train.json + train_cpu.json: {PRETRAIN.name} 96, {SEGMENT.name} 120" in (
        message
    )
    assert f"{SEGMENT.name}/configs/train.json" not in message  # what still agrees is not listed

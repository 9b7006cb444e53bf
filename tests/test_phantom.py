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

"""Tests of the synthetic BTCV-layout abdominal CT phantom (selfmedhpm_tools.phantom)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import binary_erosion
from selfmedhpm_tools import phantom
from selfmedhpm_tools.phantom import BTCV_LABELS, LOOK, TISSUES, generate_case, generate_dataset

TINY = (96, 96, 48)


@pytest.fixture(scope="module")
def cases() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return [generate_case(seed, shape=(128, 128, 48)) for seed in range(4)]


@pytest.fixture(scope="module")
def medium() -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Six cases at the medium preset (about 1.6 mm pixels, 3 mm slices) with their tissue maps; seeds 2 and 4 have
    aortic plaques, none has oral contrast."""
    return [generate_case(seed, size="medium", tissues=True) for seed in range(6)]


def _centroid_world(label: np.ndarray, affine: np.ndarray, value: int) -> np.ndarray:
    ijk = np.argwhere(label == value).mean(axis=0)
    return (affine @ np.append(ijk, 1.0))[:3]


def test_same_seed_gives_identical_arrays_and_another_seed_differs() -> None:
    img_a, lab_a, aff_a = generate_case(7, shape=TINY)
    img_b, lab_b, aff_b = generate_case(np.random.default_rng(7), shape=TINY)
    img_c, lab_c, _ = generate_case(8, shape=TINY)
    assert img_a.tobytes() == img_b.tobytes() and lab_a.tobytes() == lab_b.tobytes()
    np.testing.assert_array_equal(aff_a, aff_b)
    assert not np.array_equal(img_a, img_c) and not np.array_equal(lab_a, lab_c)


def test_arrays_have_btcv_dtypes_shape_and_labels() -> None:
    img, lab, affine = generate_case(3, shape=TINY)
    assert img.dtype == np.int16 and lab.dtype == np.uint8 and img.shape == lab.shape == TINY
    assert affine.shape == (4, 4) and np.count_nonzero(affine[:3, :3] - np.diag(np.diag(affine)[:3])) == 0
    assert np.unique(lab).tolist() == list(range(14))
    assert BTCV_LABELS[0] == "background" and BTCV_LABELS[6] == "liver" and BTCV_LABELS[13] == "left adrenal gland"


@pytest.mark.parametrize("seed", [0, 1, 2, 5, 9])
def test_every_organ_present_liver_largest_adrenals_smallest(seed: int) -> None:
    _, lab, affine = generate_case(seed, shape=TINY)
    counts = np.bincount(lab.ravel(), minlength=14)[1:]
    assert counts.min() >= 15, counts
    assert counts.argmax() + 1 == 6  # liver
    assert max(counts[11], counts[12]) < counts[:11].min()  # both adrenal glands smaller than any other organ
    liter = np.prod(np.abs(np.diag(affine)[:3])) / 1e6
    assert 0.8 < counts[5] * liter < 2.2  # liver volume in litres


def test_spleen_left_of_liver_and_kidneys_either_side_in_world_coordinates(cases) -> None:
    for _, lab, affine in cases:  # RAS+ world: patient right is +x, anterior +y, superior +z
        liver, spleen = _centroid_world(lab, affine, 6), _centroid_world(lab, affine, 1)
        right_kidney, left_kidney = _centroid_world(lab, affine, 2), _centroid_world(lab, affine, 3)
        aorta, ivc = _centroid_world(lab, affine, 8), _centroid_world(lab, affine, 9)
        assert spleen[0] < liver[0] - 50
        assert left_kidney[0] < aorta[0] < ivc[0] < right_kidney[0]
        assert right_kidney[2] < left_kidney[2]  # right kidney lower
        assert _centroid_world(lab, affine, 7)[1] > aorta[1]  # stomach anterior to the aorta


def test_hounsfield_values_are_plausible(cases) -> None:
    for img, lab, _ in cases:
        liver = img[lab == 6]
        assert 80 <= liver.mean() <= 140
        assert np.percentile(img[lab == 8], 75) > np.median(liver) + 30  # contrast-enhanced aorta (lumen in a wall)
        assert np.median(img[lab == 4]) < 60  # bile does not enhance
        assert np.count_nonzero(img[lab == 7] < -500) > 20  # gas in the stomach
        assert img[:4, :4].mean() < -980 and abs(img[:4, :4].std() - 15) < 8  # air outside, noise sd 10-20
        assert np.percentile(img[lab > 0], 99) < 400 and img.max() > 500  # organs soft tissue, bone bright


def test_subcutaneous_fat_layer_is_negative(cases) -> None:
    for img, _, _ in cases:
        mid = img[:, :, img.shape[2] // 3]  # mid-abdomen slice
        body = mid > -500
        shell = binary_erosion(body, iterations=1) & ~binary_erosion(body, iterations=3)
        assert -200 < np.median(mid[shell]) < -20


def test_body_fits_inside_field_of_view() -> None:
    for seed in range(6):
        img, _, _ = generate_case(seed, shape=(64, 64, 32))
        border = np.concatenate([img[0].ravel(), img[-1].ravel(), img[:, 0].ravel(), img[:, -1].ravel()])
        assert border.max() < -850


def test_native_spacing_varies_within_ct_ranges() -> None:
    spacings, extents, orientations = [], [], []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        grid = phantom._grid(rng, phantom._anatomy(rng), None, "full", None)
        spacings.append(grid.spacing)
        extents.append(grid.shape[2] * grid.spacing[2])
        orientations.append(grid.affine[0, 0] < 0)
    dxy, dz = np.array(spacings)[:, 0], np.array(spacings)[:, 2]
    assert dxy.min() >= 0.6 and dxy.max() <= 1.0 and dxy.max() - dxy.min() > 0.15
    assert dz.min() >= 1.5 and dz.max() <= 5.0 and dz.max() - dz.min() > 2.0
    assert 200 <= min(extents) and max(extents) <= 480
    assert 0.3 < np.mean(np.array(extents) > 300) < 0.7  # about half reach down into the pelvis
    assert 0.15 < np.mean(orientations) < 0.55  # about a third stored LPS


def test_pelvis_cases_have_unlabelled_iliac_vessels_bones_and_bladder_below_the_aorta() -> None:
    seed = next(s for s in range(20) if phantom._grid(*_rng_anatomy(s), None, "medium", None).z[0] < -250)
    rng, anatomy = _rng_anatomy(seed)
    grid = phantom._grid(rng, anatomy, None, "medium", None)
    z = grid.z  # the patient-frame height of each slice
    img, lab, _ = generate_case(seed, size="medium")
    lowest = {name: z[np.flatnonzero((lab == value).any((0, 1)))[0]] for value, name in ((8, "aorta"), (9, "ivc"))}
    kz = anatomy["kz"]
    assert -125 * kz < lowest["aorta"] < -95 * kz and -135 * kz < lowest["ivc"] < -105 * kz  # bifurcation, confluence
    pelvis = z < -170 * kz
    assert not lab[:, :, pelvis].any()  # nothing labelled in the pelvis
    section = img[:, :, np.flatnonzero(pelvis)[0]]
    assert (section > 600).sum() > 150  # iliac wings and sacrum (cortical bone)
    assert ((section > 130) & (section < 300)).sum() > (lab[:, :, pelvis.argmax()] == 8).sum()  # vessels, marrow
    low = img[:, :, np.flatnonzero(z < -250 * kz)[-1]]
    ix, iy = np.abs(grid.x).argmin(), np.abs(grid.y - 25 * anatomy["ky"]).argmin()  # on the midline, anterior
    bladder = low[ix - 4 : ix + 5, iy - 4 : iy + 5]
    assert -20 < np.median(bladder) < 45  # urine in the anterior pelvis


def test_datasets_alternate_the_field_of_view_and_the_organs_do_not_depend_on_it(tmp_path: Path) -> None:
    info = json.loads(generate_dataset(tmp_path, cases=4, seed=3, size="small", verbose=False).read_text())
    extents = []
    for entry in info["training"] + info["validation"]:
        header = nib.load(tmp_path / entry["image"]).header
        extents.append(header.get_data_shape()[2] * header.get_zooms()[2])
    assert [e > 290 for e in extents] == [False, True, False, True]  # both splits get either field of view
    (_, lab_short, aff_short), (_, lab_long, aff_long) = (generate_case(5, pelvis=p, size="small") for p in (0, 1))
    assert lab_long.shape[2] > lab_short.shape[2] + 15
    centroids = [
        [_centroid_world(lab, aff, v) for v in (1, 2, 6)] for lab, aff in ((lab_short, aff_short), (lab_long, aff_long))
    ]
    assert np.allclose(centroids[0], centroids[1], atol=3.0)  # same anatomy, world positions within a voxel


def _rng_anatomy(seed: int) -> tuple[np.random.Generator, dict]:
    rng = np.random.default_rng(seed)
    return rng, phantom._anatomy(rng)


def test_explicit_shape_derives_varying_spacing_and_presets_set_matrix() -> None:
    spacings = {tuple(np.abs(np.diag(generate_case(s, shape=(48, 48, 24))[2])[:3]).round(3)) for s in range(4)}
    assert len(spacings) == 4
    img, _, affine = generate_case(0, size="small")
    assert img.shape[:2] == (128, 128) and 2.4 <= abs(affine[0, 0]) <= 4.0 and affine[2, 2] >= 5.0


@pytest.mark.parametrize("seed", [0, 4])
def test_lps_and_ras_storage_agree_after_monai_orientation(tmp_path: Path, seed: int) -> None:
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd

    keys = ["image", "label"]
    load = Compose([LoadImaged(keys), EnsureChannelFirstd(keys), Orientationd(keys, axcodes="RAS")])
    labels = {}
    for orientation in ("RAS", "LPS"):
        img, lab, affine = generate_case(seed, shape=TINY, orientation=orientation)
        assert (np.diag(affine)[:2] < 0).all() == (orientation == "LPS") and affine[2, 2] > 0
        paths = {key: tmp_path / f"{key}_{orientation}.nii.gz" for key in ("image", "label")}
        phantom.save_nifti(img, affine, paths["image"])
        phantom.save_nifti(lab, affine, paths["label"])
        data = load({k: str(v) for k, v in paths.items()})
        oriented = data["label"][0].numpy()
        xs = np.argwhere(oriented == 1)[:, 0].mean(), np.argwhere(oriented == 6)[:, 0].mean()
        # RAS array: index 0 grows towards the patient's right, so the spleen (patient left) has the lower index
        assert xs[0] < oriented.shape[0] / 2 < xs[1]
        labels[orientation] = oriented
    overlap = np.count_nonzero((labels["RAS"] == labels["LPS"]) & (labels["RAS"] > 0))
    assert overlap / np.count_nonzero(labels["RAS"]) > 0.98


def test_dataset_json_layout_and_relative_paths(tmp_path: Path, capsys) -> None:
    path = generate_dataset(tmp_path / "ds", cases=4, seed=1, shape=(48, 48, 24))
    info = json.loads(path.read_text())
    assert path == tmp_path / "ds" / "dataset_0.json"
    assert info["labels"] == {str(k): v for k, v in BTCV_LABELS.items()} and info["name"] and info["description"]
    assert info["numTraining"] == len(info["training"]) == 3 and len(info["validation"]) == 1
    entries = info["training"] + info["validation"]
    assert [e["image"] for e in entries] == [f"imagesTr/case_{i:04d}.nii.gz" for i in range(4)]
    for entry in entries:
        image, label = nib.load(path.parent / entry["image"]), nib.load(path.parent / entry["label"])
        assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
        np.testing.assert_allclose(image.affine, label.affine)
    assert len([line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]) == 4
    case_1 = generate_case(np.random.SeedSequence(1).spawn(4)[1], shape=(48, 48, 24))[1]
    np.testing.assert_array_equal(np.asarray(nib.load(path.parent / entries[1]["label"]).dataobj), case_1)


@pytest.mark.parametrize("cases, n_val", [(1, 0), (2, 1), (8, 2)])
def test_validation_split_has_at_least_one_case_when_possible(tmp_path: Path, cases: int, n_val: int) -> None:
    path = generate_dataset(tmp_path, cases=cases, seed=0, shape=(24, 24, 12), verbose=False)
    assert len(json.loads(path.read_text())["validation"]) == n_val


def test_generate_dataset_refuses_existing_dataset_without_overwrite(tmp_path: Path) -> None:
    generate_dataset(tmp_path, cases=1, seed=0, shape=(24, 24, 12), verbose=False)
    with pytest.raises(FileExistsError, match="overwrite"):
        generate_dataset(tmp_path, cases=1, seed=1, shape=(24, 24, 12), verbose=False)
    before = (tmp_path / "imagesTr" / "case_0000.nii.gz").read_bytes()
    generate_dataset(tmp_path, cases=1, seed=1, shape=(24, 24, 12), verbose=False, overwrite=True)
    assert (tmp_path / "imagesTr" / "case_0000.nii.gz").read_bytes() != before


def test_cli_writes_three_cases_then_refuses_to_overwrite(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "selfmedhpm_tools.phantom", "--out", str(tmp_path), "--cases", "3", "--seed", "5"]
    done = subprocess.run(cmd + ["--shape", "48", "48", "24"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    progress = [line for line in done.stdout.splitlines() if line.startswith("[")]
    assert len(progress) == 3 and progress[2].startswith("[3/3] case_0002 48x48x24 spacing (")
    assert sorted(p.name for p in (tmp_path / "labelsTr").iterdir()) == [f"case_{i:04d}.nii.gz" for i in range(3)]
    assert len(json.loads((tmp_path / "dataset_0.json").read_text())["validation"]) == 1
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and "dataset_0.json already exists" in again.stderr and "--overwrite" in again.stderr


def _ml(label: np.ndarray, affine: np.ndarray, value: int) -> float:
    return np.count_nonzero(label == value) * np.prod(np.abs(np.diag(affine)[:3])) / 1000


def test_organ_volumes_in_millilitres_lie_in_adult_ranges(medium) -> None:
    """shared/ANATOMY.md: liver 1,400-1,800 mL, spleen 150-250, kidney ~150, gallbladder 30-50, pancreas ~70,
    adrenal ~5; the phantom varies body and organ size per case, so the bounds are a little wider."""
    bounds = {6: (1000, 2000), 1: (120, 300), 2: (80, 230), 3: (80, 230), 4: (20, 60), 11: (35, 110), 12: (2, 10)}
    for _, lab, affine, _ in medium:
        for value, (lo, hi) in bounds.items():
            assert lo < _ml(lab, affine, value) < hi, (BTCV_LABELS[value], _ml(lab, affine, value))


def test_kidneys_lie_posterior_beside_the_spine_the_right_one_lower(medium) -> None:
    for _, lab, affine, _ in medium:  # world x, y = patient frame (mm from the body centre), RAS+
        right, left, aorta = (_centroid_world(lab, affine, v) for v in (2, 3, 8))
        assert 45 < right[0] < 90 and -90 < left[0] < -45  # beside the spine and psoas, not under the ribs' edge
        assert right[1] < aorta[1] - 15 and left[1] < aorta[1] - 15 and max(right[1], left[1]) < -30  # posterior
        assert 3 < left[2] - right[2] < 40  # the right kidney lower (ANATOMY.md: ~2 cm)
        top = {v: _centroid_world(lab, affine, v)[2] for v in (12, 13)}
        assert top[12] > right[2] + 20 and top[13] > left[2] + 20  # adrenal glands above the kidneys


def test_kidney_cortex_medulla_and_sinus_fat_have_their_ct_numbers(medium) -> None:
    """Portal-venous phase: cortex 150-200 HU (ANATOMY.md), medulla lower, fat in the renal sinus; all of it inside
    the kidney labels, the hilum's vessels outside."""
    for img, lab, _, tis in medium:
        hu = {
            name: np.median(img[tis == TISSUES[name]]) for name in ("renal cortex", "renal medulla", "renal sinus fat")
        }
        assert 135 < hu["renal cortex"] < 210 and hu["renal medulla"] < hu["renal cortex"] - 25, hu
        assert hu["renal sinus fat"] < -40, hu
        for name in ("renal cortex", "renal medulla", "renal sinus fat"):
            assert np.isin(lab[tis == TISSUES[name]], (2, 3)).all()
            for kidney in (2, 3):  # every part in both kidneys
                assert np.count_nonzero((tis == TISSUES[name]) & (lab == kidney)) > 50, (name, kidney)
        vessels = tis == TISSUES["renal vessel"]
        assert vessels.sum() > 100 and not np.isin(lab[vessels], (2, 3)).any()
        assert np.median(img[vessels]) > 60  # enhanced renal veins and arteries


def test_aorta_has_a_wall_and_calcified_plaques_in_some_cases(medium) -> None:
    with_plaques = 0
    for img, lab, _, tis in medium:
        lumen, wall = (np.median(img[tis == TISSUES[t]]) for t in ("aortic lumen", "aortic wall"))
        assert lumen > wall + 60 and 0 < wall < 110, (lumen, wall)  # a soft-tissue ring around the contrast
        plaque = tis == TISSUES["aortic plaque"]
        assert np.isin(lab[(tis >= TISSUES["aortic lumen"]) & (tis <= TISSUES["aortic plaque"])], 8).all()
        if plaque.any():
            with_plaques += 1
            assert img[plaque].max() > 300  # calcium, partial-volumed at 1.6 mm
    assert with_plaques == 2  # seeds 2 and 4: about half the cases


def test_bowel_holds_gas_fluid_and_stool_unlabelled(medium) -> None:
    for img, lab, affine, tis in medium:
        hu = {t: np.median(img[tis == TISSUES[t]]) for t in ("bowel gas", "bowel fluid", "stool", "bowel wall")}
        assert hu["bowel gas"] < -600 and -20 < hu["bowel fluid"] < 60 and -200 < hu["stool"] < 20, hu
        assert hu["bowel fluid"] - 40 < hu["bowel wall"] < 130, hu
        bowel = (tis >= TISSUES["bowel wall"]) & (tis <= TISSUES["stool"])
        assert not lab[bowel].any()  # unlabelled in BTCV
        assert np.percentile(img[tis == TISSUES["stool"]], 5) < hu["stool"] - 100  # gas bubbles mottle the stool
        x, y = (affine[i, i] * np.arange(lab.shape[i]) + affine[i, 3] for i in (0, 1))  # patient-frame mm
        aorta = _centroid_world(lab, affine, 8)
        near = (np.abs(x)[:, None] < 35) & (y[None, :] > aorta[1] - 10) & (y[None, :] < aorta[1] + 15)
        renal = (lab == 2).any((0, 1)) & (lab == 3).any((0, 1))  # slices through both kidneys
        assert not bowel[:, :, renal][near].any()  # the retroperitoneum around the aorta and the IVC: fat, no bowel


def test_oral_contrast_is_bright_in_the_cases_that_have_it() -> None:
    seed = next(s for s in range(20) if phantom._anatomy(np.random.default_rng(s))["oral"])
    img, lab, _, tis = generate_case(seed, shape=(128, 128, 64), tissues=True)
    contrast = tis == TISSUES["oral contrast"]
    assert contrast.sum() > 200 and np.median(img[contrast]) > 100 and not lab[contrast].any()


def test_new_look_draws_every_setting_outside_the_seen_range_and_the_same_anatomy_rules() -> None:
    seen, new = [], []
    for seed in range(60):
        seen.append(phantom._anatomy(np.random.default_rng(seed)))
        new.append(phantom._anatomy(np.random.default_rng(seed), new_look=True))
    for name, (lo, hi, wide_lo, wide_hi) in LOOK.items():
        assert all(lo <= a[name] <= hi for a in seen), name
        values = np.array([a[name] for a in new])
        assert ((values < lo) | (values > hi)).all() and (values >= wide_lo).all() and (values <= wide_hi).all(), name
    delays = np.array([a["delay"] for a in new])
    assert 0.25 < np.mean(delays < 55) < 0.75  # arterial and late phases, both common
    arterial = next(a for a in new if a["delay"] < 35)
    assert arterial["hu"]["aorta"] > 250 and arterial["hu"]["liver"] < 90  # the aorta peaks, the liver lags
    img, lab, affine = generate_case(1, size="small", new_look=True)
    assert affine[2, 2] > 5.0 and np.unique(lab).tolist() == list(range(14))  # thicker slices than any training case
    assert not np.array_equal(img, generate_case(1, size="small")[0])


def test_held_out_new_look_dataset_lists_every_case_for_validation(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "selfmedhpm_tools.phantom", "--out", str(tmp_path), "--cases", "2", "--seed", "77",
           "--val-fraction", "1", "--new-look", "--size", "small"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    info = json.loads((tmp_path / "dataset_0.json").read_text())
    assert info["numTraining"] == 0 and len(info["validation"]) == 2 and "new look" in info["description"]
    spacing = nib.load(tmp_path / info["validation"][0]["image"]).header.get_zooms()
    assert spacing[2] > 5.0

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

"""Deterministic synthetic abdominal CT ("phantom") in the BTCV layout, so demos and tests need no download.

Anatomy model
-------------
Each case is built in a physical patient frame in millimetres, RAS+ as in NIfTI: +x towards the patient's right,
+y anterior, +z superior, origin at the body centre at about the L1 level. A nominal adult layout (positions and
sizes from ``shared/ANATOMY.md``) is scaled per case to the body size and jittered per organ:

* trunk: a deformed elliptic outline (flatter back) with subcutaneous fat, a muscular abdominal wall with ribs
  (thin oblique arcs, present cranially and posteriorly lower), vertebral bodies (cancellous core, cortical rim,
  discs), neural arch, erector spinae and psoas muscles; air (-1000 HU) outside;
* thorax: two diaphragm domes; lung bases (-850 HU) above them and the heart over the central tendon;
* abdomen: small-bowel loops (a low-frequency wave field split into wall and lumen; how much of the space they
  leave to visceral fat varies per case) holding fluid, positive oral contrast in some cases and gas where
  non-dependent (the patient lies supine); the colon (ascending, transverse, descending, and sigmoid and rectum in
  the pelvis) as a haustrated tube 4-5 cm wide with stool (soft tissue mottled with gas bubbles), fluid or contrast
  and a gas cap; unlabelled, as in BTCV;
* pelvis (every other case of a data set reaches down to the hips, as most abdominal CTs do): iliac wings,
  sacrum, femoral heads in their acetabula, pubic and ischial rami, the urinary bladder, and the iliac arteries and
  veins, unlabelled as in BTCV, whose aorta label ends at the bifurcation (L4) and IVC label at the confluence (L5);
* the 13 BTCV organs as ellipsoids or tubes swept along one axis (ellipse cross-sections whose centre and
  semi-axes are interpolated between knots), each seen through its own smooth random deformation (a displacement
  field of a few long-wave sinusoids, 1.5-8 mm), clipped to the abdominal cavity;
* kidneys posterior in the retroperitoneum beside the psoas, the right one about 2 cm lower, long axes tilted
  (upper poles medial and posterior) and the hilum turned anteromedially: a cortex 6-8 mm thick with columns
  between darker medullary pyramids (corticomedullary contrast while the cortex enhances first), the renal sinus
  (fat around the renal pelvis) inside the contour, labelled kidney as a contour annotation is, and the hilum's
  opening with the renal vein (to the IVC; the left one in front of the aorta) and artery, unlabelled;
* the aorta as a contrast-filled lumen inside a 1-2 mm soft-tissue wall, both labelled aorta (the outer contour),
  with calcified plaques (350-900 HU) on its posterior and lateral wall below the renal arteries in about half the
  cases (calcification of the abdominal aorta is common in adults and grows with age).

Contrast timing: every enhancing tissue follows a time-enhancement curve over the delay after the injection
(``ENHANCEMENT``: aortic peak at 25-35 s, portal vein at 60-70 s, pancreas at about 40 s; kidneys with a
corticomedullary phase at 25-70 s, a homogeneous nephrogram at 80-120 s and excreted contrast in the collecting
system after about 3 minutes, after Yuh and Cohan, AJR 1999;173:747-755; aortic and hepatic curves after Bae,
Radiology 2010;256:32-61), with the portal-venous values of ``shared/ANATOMY.md`` at 60-90 s; splenic arciform
("zebra") enhancement in the arterial phase.

Scanner: beam-hardening streaks (dark and bright bands along the rays through the most bone: between the femoral
heads, from the spine), the reconstruction kernel (Gaussian blur of 0.5-0.9 voxel, sharper kernels with edge
overshoot) and noise (sd 10-20 HU in soft tissue, spatially correlated like the kernel's). Spacing, field of view,
slice count and storage orientation (about a third LPS instead of RAS; diagonal affine) vary per case: a z-extent of
20-28 cm (lung bases to below the kidneys) or 29-47 cm (down into the pelvis).

Looks
-----
The ranges above are the *seen look*, what training data are made of (``LOOK``'s first two columns). The *new look*
(``new_look=True``, ``--new-look``) draws body width and depth-to-width ratio, subcutaneous and visceral fat,
contrast timing (arterial and late phases instead of portal-venous), noise, kernel, streaks, field of view and slice
thickness (5-8 mm) from outside those ranges, within wider bounds (each setting in one of its two tails, either as
likely): held-out cases whose settings a model trained on the seen look never saw, to measure whether what it learnt
carries over. Labels and anatomy follow the same rules in both looks. The bounds stay anatomical: the depth follows
the width through their ratio, since a trunk as deep as it is wide (which independent draws gave in a first version
of this look) moves every organ away from any real layout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter

BTCV_LABELS: dict[int, str] = {
    0: "background", 1: "spleen", 2: "right kidney", 3: "left kidney", 4: "gallbladder", 5: "esophagus",
    6: "liver", 7: "stomach", 8: "aorta", 9: "inferior vena cava", 10: "portal and splenic veins",
    11: "pancreas", 12: "right adrenal gland", 13: "left adrenal gland",
}  # fmt: skip
SIZES: dict[str, int] = {"small": 128, "medium": 256, "full": 512}  # in-plane matrix of each size preset
MIN_SLICE_MM: dict[str, float] = {"small": 5.0, "medium": 3.0, "full": 0.0}  # coarser slices for smaller presets
HU_RANGES: dict[str, tuple[float, float]] = {  # tissues that do not enhance; one value per case drawn uniformly
    "fat": (-120, -80), "muscle": (40, 60), "cancellous": (150, 300), "cortical": (700, 1200), "rib": (450, 800),
    "disc": (70, 100), "lung": (-870, -830), "fluid": (0, 20), "gallbladder": (0, 20), "esophagus": (35, 50),
    "aortic_wall": (35, 55), "plaque": (350, 900), "oral_contrast": (150, 350), "stool": (-20, 40),
}  # fmt: skip
CONTRAST_KNOTS: tuple[float, ...] = (0, 25, 35, 45, 70, 100, 180, 300)  # seconds after the start of the injection
ENHANCEMENT: dict[str, tuple[float, ...]] = {  # HU at those delays (0: unenhanced); per case +-ENHANCEMENT_JITTER
    "aorta": (40, 300, 330, 260, 195, 160, 130, 110),
    "heart": (40, 200, 220, 180, 130, 120, 110, 100),
    "ivc": (40, 60, 90, 125, 130, 130, 120, 100),
    "portal": (40, 60, 110, 160, 170, 150, 130, 110),
    "liver": (55, 60, 75, 95, 112, 112, 98, 88),
    "spleen": (45, 110, 130, 125, 118, 110, 100, 90),
    "pancreas": (45, 100, 120, 115, 105, 95, 85, 75),
    "cortex": (35, 160, 190, 190, 175, 165, 150, 130),
    "medulla": (35, 55, 70, 85, 105, 150, 150, 135),
    "urine": (10, 10, 10, 10, 10, 15, 300, 700),
    "bowel_wall": (40, 70, 90, 100, 100, 95, 85, 75),
    "stomach_wall": (40, 70, 85, 95, 95, 90, 80, 70),
    "adrenal": (25, 35, 40, 35, 30, 30, 28, 25),
}
ENHANCEMENT_JITTER: dict[str, float] = {"aorta": 25.0, "heart": 20.0, "portal": 12.0}  # others: 10 HU
LOOK: dict[str, tuple[float, float, float, float]] = {  # seen look (low, high), then the wider bounds around it
    "half_width": (150, 185, 130, 205),  # mm, trunk half-width (left-right); its depth: width times aspect
    "aspect": (0.62, 0.78, 0.58, 0.84),  # trunk depth (anterior-posterior) over width
    "subcutaneous_fat": (10, 30, 3, 50),  # mm
    "visceral_fat": (0.2, 0.8, 0.0, 1.0),  # share of the free abdominal space left to fat between bowel loops
    "delay": (55, 90, 25, 240),  # s after the injection: portal-venous; the new look arterial or late
    "noise": (10, 20, 4, 35),  # HU, sd in soft tissue
    "blur": (0.5, 0.9, 0.25, 1.4),  # voxels, in-plane sd of the reconstruction kernel
    "sharpen": (0.0, 0.4, 0.0, 1.0),  # edge enhancement of sharper kernels
    "streaks": (0, 30, 0, 90),  # HU, beam-hardening streak strength
    "slice_mm": (1.5, 5.0, 1.5, 8.0),  # slice thickness (at least MIN_SLICE_MM of the size preset)
    "fov_margin": (10, 80, 10, 160),  # mm of air around the body in the field of view
}
TISSUES: dict[str, int] = {  # the tissue map of generate_case(..., tissues=True): what each voxel was painted as
    "other": 0, "organ": 1, "renal cortex": 2, "renal medulla": 3, "renal sinus fat": 4, "renal pelvis": 5,
    "renal vessel": 6, "aortic lumen": 7, "aortic wall": 8, "aortic plaque": 9, "bowel wall": 10, "bowel fluid": 11,
    "bowel gas": 12, "oral contrast": 13, "stool": 14,
}  # fmt: skip

Shape = tuple[int, int, int]
Slices = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Grid:
    """Voxel grid: patient-frame coordinates (mm, float32) of the voxel centres along each array axis."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray

    @property
    def shape(self) -> Shape:
        return (self.x.size, self.y.size, self.z.size)


def _draw(rng: np.random.Generator, name: str, new_look: bool) -> float:
    """One value of ``LOOK[name]``: uniform in the seen range, or, for the new look, uniform in one of the two tails
    that the wider bounds add to it (each tail as likely, the longer one only where the other is empty)."""
    lo, hi, wide_lo, wide_hi = LOOK[name]
    if not new_look:
        return float(rng.uniform(lo, hi))
    u, below = rng.uniform(0, 1), lo > wide_lo
    if below and (u < 0.5 or hi >= wide_hi):
        return float(wide_lo + (lo - wide_lo) * (u / 0.5 if hi < wide_hi else u))
    return float(hi + (wide_hi - hi) * ((u - 0.5) / 0.5 if below else u))


def _anatomy(rng: np.random.Generator, new_look: bool = False) -> dict:
    """Per-case body size, layer thicknesses, scale factors of the nominal layout, tissue HU values (enhancing
    tissues from the contrast delay) and scanner settings, from the seen look's ranges or the new look's."""
    look = {name: _draw(rng, name, new_look) for name in LOOK}
    a = {"A": look["half_width"], "B": look["half_width"] * look["aspect"], "kz": rng.uniform(0.93, 1.05)}
    a["new_look"] = new_look
    a.update(kx=a["A"] / 170, ky=a["B"] / 115, size=rng.uniform(0.92, 1.08), fat=look["subcutaneous_fat"])
    a.update(wall=rng.uniform(6, 12), yv=-40 * a["ky"], **look)
    a.update(domes=(rng.normal(95, 3) * a["kz"], rng.normal(90, 3) * a["kz"]), bowel_top=rng.uniform(10, 35))
    hu = {name: rng.uniform(lo, hi) for name, (lo, hi) in HU_RANGES.items()}
    for name, curve in ENHANCEMENT.items():
        jitter = ENHANCEMENT_JITTER.get(name, 10.0)
        hu[name] = float(np.interp(look["delay"], CONTRAST_KNOTS, curve)) + rng.uniform(-jitter, jitter)
    a.update(hu=hu, oral=rng.random() < 0.35, plaques=rng.random() < 0.5)
    return a


def _grid(
    rng: np.random.Generator,
    a: dict,
    shape: Shape | None,
    size: str,
    orientation: str | None,
    pelvis: bool | None = None,
) -> Grid:
    """Sample field of view, spacing and orientation; the body always fits in plane and the z-extent spans lungs to
    the kidneys' lower poles, and reaches down into the pelvis when ``pelvis`` says so (None: for about half the
    size-preset cases, never with an explicit ``shape``). Native in-plane spacing is fov/512 (0.6-1 mm in the seen
    look); smaller matrices resample the fov."""
    fov = min(2.24 * a["A"] + 30 + a["fov_margin"], 512.0)
    thick, low, span = a["slice_mm"], -100 * a["kz"], 220 * a["kz"]
    extent = rng.uniform(max(span, 205.0), 285.0)
    z_bot = low - rng.uniform(0, extent - span)
    lps, centre, table = rng.random() < 1 / 3, rng.uniform(-15, 15, 2), rng.uniform(-450, -150)
    if orientation is not None:
        lps = orientation.upper() == "LPS"
    if shape is None or pelvis:  # down into the pelvis, as most abdominal CTs (BTCV: up to ~50 cm)
        coin, extra = rng.random() < 0.5, rng.uniform(90, 180) * a["kz"]
        if coin if pelvis is None else pelvis:
            z_bot, extent = z_bot - extra, extent + extra
    if shape is None:
        dz = max(thick, MIN_SLICE_MM[size])
        shape = (SIZES[size], SIZES[size], int(np.ceil(extent / dz)))
    else:
        dz = extent / shape[2]
    dxy, sign = fov / min(shape[:2]), -1.0 if lps else 1.0
    x = centre[0] + sign * dxy * (np.arange(shape[0]) - (shape[0] - 1) / 2)
    y = centre[1] + sign * dxy * (np.arange(shape[1]) - (shape[1] - 1) / 2)
    z = z_bot + dz * (np.arange(shape[2]) + 0.5)
    affine = np.diag([sign * dxy, sign * dxy, dz, 1.0])
    affine[:3, 3] = (x[0], y[0], z[0] + table)  # world = patient frame shifted by the table position
    return Grid(x.astype(np.float32), y.astype(np.float32), z.astype(np.float32), (dxy, dxy, dz), affine)


def _line(v: np.ndarray, axis: int) -> np.ndarray:
    """Reshape a 1-D array to broadcast along world `axis` of a 3-D array."""
    return v.reshape([-1 if i == axis else 1 for i in range(3)])


def _coords(grid: Grid, sl: Slices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable patient coordinates (X, Y, Z) of the voxels in a bounding box."""
    return tuple(_line(c[s], i) for i, (c, s) in enumerate(zip((grid.x, grid.y, grid.z), sl)))


@dataclass(frozen=True)
class Part:
    """A swept shape in its bounding box ``sl`` of the grid: ``q`` the squared normalised radius of the cross-section
    (< 1 inside); ``u``, ``v`` the cross-section coordinates normalised by its semi-axes (the two world axes other
    than the sweep axis, in order, turned by the roll); ``t`` the position along the sweep axis (mm). All are taken
    at the deformed coordinates and broadcast to the box."""

    sl: Slices
    q: np.ndarray
    u: np.ndarray
    v: np.ndarray
    t: np.ndarray


def _waves(rng: np.random.Generator, P: tuple, terms: int, wavelength: tuple[float, float]) -> np.ndarray:
    """A smooth random field: the mean of ``terms`` plane sine waves of random directions, wavelengths (mm) and phases
    at the voxel coordinates ``P`` (X, Y, Z, each varying along its own axis only, as from :func:`_coords`); values in
    [-1, 1]. Each wave is sin(a + b) = sin(a) cos(b) + cos(a) sin(b) with a along x and b over (y, z), so that no sine
    is taken over the whole box."""
    total = np.float32(0)
    for _ in range(terms):
        n = rng.normal(size=3)
        k = ((2 * np.pi / rng.uniform(*wavelength)) * n / np.linalg.norm(n)).astype(np.float32)
        a = k[0] * P[0] + np.float32(rng.uniform(0, 2 * np.pi))
        b = k[1] * P[1] + k[2] * P[2]
        total = total + (np.sin(a) * np.cos(b) + np.cos(a) * np.sin(b))
    return (total / np.float32(terms)).astype(np.float32, copy=False)


def _sweep(grid: Grid, rng: np.random.Generator, axis: int, knots, centres, radii, warp: float, roll: float = 0.0):
    """Ellipse cross-sections swept along world `axis`, centres (n, 2) and semi-axes (n, 2) interpolated between
    increasing `knots` (mm), each cross-section turned by `roll` (radians, from the first other axis towards the
    second), all seen through a smooth random displacement of up to `warp` mm per axis (two long waves of 50-120 mm
    each). Returns a :class:`Part`, or None when the shape misses the grid. Takes one draw from `rng` either way, so
    that the shapes after it do not depend on the field of view."""
    local = np.random.default_rng(rng.integers(1 << 62))
    coords, others = (grid.x, grid.y, grid.z), [i for i in range(3) if i != axis]
    knots, centres = np.asarray(knots, float), np.asarray(centres, float)
    radii = np.maximum(np.asarray(radii, float), [0.6 * grid.spacing[o] for o in others])
    reach = np.repeat(radii.max(1, keepdims=True), 2, 1) if roll else radii  # a turned ellipse: its longer axis
    box = {axis: (knots[0] - warp, knots[-1] + warp)}
    for j, o in enumerate(others):
        box[o] = ((centres[:, j] - 1.3 * reach[:, j]).min() - warp, (centres[:, j] + 1.3 * reach[:, j]).max() + warp)
    sl = []
    for ax in range(3):
        idx = np.flatnonzero((coords[ax] >= box[ax][0]) & (coords[ax] <= box[ax][1]))
        if idx.size == 0:
            return None
        sl.append(slice(idx[0], idx[-1] + 1))
    sl = tuple(sl)
    P = list(_coords(grid, sl))
    if warp > 0:  # each axis displaced by the mean of two waves: |d| <= warp
        P = [p + warp * _waves(local, tuple(P), 2, (50.0, 120.0)) for p in P]
    shape = tuple(s.stop - s.start for s in sl)
    t = np.broadcast_to(P[axis], np.broadcast_shapes(*(p.shape for p in P)))

    def along(values: np.ndarray) -> np.ndarray:
        return np.interp(t.ravel(), knots, values).reshape(t.shape).astype(np.float32)

    da, db = (P[o] - along(centres[:, j]) for j, o in enumerate(others))
    if roll:
        cos, sin = float(np.cos(roll)), float(np.sin(roll))  # Python floats keep float32
        da, db = cos * da + sin * db, cos * db - sin * da
    u, v = da / along(radii[:, 0]), db / along(radii[:, 1])
    q = np.where((t < knots[0]) | (t > knots[-1]), np.float32(np.inf), u * u + v * v)
    return Part(sl, *(np.broadcast_to(x, shape) for x in (q, u, v, t)))


def _ellipsoid(grid: Grid, rng: np.random.Generator, axis: int, c, r, tilt=(0, 0), bend=(0, 0), warp=8.0, roll=0.0):
    """Ellipsoid (centre `c`, semi-axes `r`, mm) swept along `axis`; the centre line shifts by tilt*s + bend*s**2
    (s = -1..1 along the axis) in the two other axes, giving tilted or crescent shapes; `warp` and `roll` as in
    :func:`_sweep`."""
    s, others = np.linspace(-1, 1, 13), [i for i in range(3) if i != axis]
    cen = np.stack([c[o] + tilt[j] * s + bend[j] * s**2 for j, o in enumerate(others)], 1)
    rad = np.stack([r[o] * np.sqrt(1 - s**2) for o in others], 1)
    return _sweep(grid, rng, axis, c[axis] + r[axis] * s, cen, rad, warp, roll)


def _spine(X: np.ndarray, Y: np.ndarray, a: dict, hu2: np.ndarray) -> np.ndarray:
    """Paint the vertebra (cortical rim, cancellous core, neural arch, canal) and the erector spinae into the 2-D
    trunk section `hu2`; returns the vertebral-body mask (discs are set per slice)."""

    def inside(cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return ((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2 < 1

    hu, yv = a["hu"], a["yv"]
    for side in (-1, 1):
        hu2[inside(side * 30 * a["kx"], yv - 42, 22, 20)] = hu["muscle"]  # erector spinae
    hu2[inside(0, yv - 26, 15, 11) | inside(0, yv - 50, 4, 15)] = hu["cortical"]  # neural arch, spinous process
    hu2[inside(0, yv - 24, 8, 7)] = 15.0  # spinal canal
    vertebra = inside(0, yv, 20, 16)
    hu2[vertebra], hu2[inside(0, yv, 17.5, 13.5)] = hu["cortical"], hu["cancellous"]
    return vertebra


def _ribs(grid: Grid, a: dict, img: np.ndarray, wall: np.ndarray, th: np.ndarray, phase: float) -> None:
    """Ribs: thin arcs in the abdominal wall running lower anteriorly, present cranially (lowest posteriorly)."""
    ix, iy = np.nonzero(wall)
    sn, zz = np.sin(th[ix, iy])[:, None], grid.z[None, :]
    rib = (np.cos(2 * np.pi * (zz + 30 * np.arcsin(sn)) / (34 * a["kz"]) + phase) > 0.6) & (
        zz > a["kz"] * (5 + 40 * sn)
    )
    ribs = img[ix, iy, :]
    ribs[rib] = a["hu"]["rib"]
    img[ix, iy, :] = ribs


def _body(rng: np.random.Generator, grid: Grid, a: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Trunk: deformed outline, subcutaneous fat, abdominal wall, ribs, spine and discs, back muscles and psoas;
    air outside. Returns (HU image float32, cavity 2-D mask, free 2-D mask = cavity minus spine and muscles)."""
    hu, kx, kz = a["hu"], a["kx"], a["kz"]
    X, Y = grid.x[:, None], grid.y[None, :]
    th, e, p = np.arctan2(Y, X), rng.uniform(-0.04, 0.04, 2), rng.uniform(0, 2 * np.pi, 4)
    rho = np.hypot(X / a["A"], Y / (a["B"] * np.where(Y < 0, 0.95, 1.0)))  # flatter back
    rho /= 1 + e[0] * np.cos(2 * th + p[0]) + e[1] * np.cos(3 * th + p[1])
    r0 = np.sqrt(a["A"] * a["B"])
    rho_fat, rho_cav = 1 - a["fat"] / r0, 1 - (a["fat"] + a["wall"]) / r0
    cavity = rho < rho_cav
    hu2 = np.where((rho < rho_fat) & ~cavity, hu["muscle"], hu["fat"]).astype(np.float32)
    vertebra = _spine(X, Y, a, hu2)
    free = cavity & (hu2 == np.float32(hu["fat"]))
    img = np.empty(grid.shape, np.float32)
    img[...] = hu2[..., None]
    ix, iy = np.nonzero(vertebra)
    discs = np.flatnonzero(((grid.z - p[2] * 6) % (34 * kz)) < 8 * kz)
    img[ix[:, None], iy[:, None], discs[None, :]] = hu["disc"]
    _ribs(grid, a, img, (rho >= rho_cav) & (rho < rho_fat), th, p[3])
    radius = np.clip((15 * kz - grid.z) / (115 * kz), 0, 1) * 22 * a["size"]  # psoas widens caudally
    d2 = np.minimum((X - 35 * kx) ** 2, (X + 35 * kx) ** 2) + ((Y - a["yv"] - 2) / 0.85) ** 2
    np.copyto(img, np.float32(hu["muscle"]), where=(d2[..., None] < radius**2) & free[..., None])
    outline = 1 + 0.03 * np.sin(grid.z * 2 * np.pi / rng.uniform(150, 300) + rng.uniform(0, 2 * np.pi))
    np.copyto(img, np.float32(-1000), where=rho[..., None] >= outline)
    return img, cavity, free


def _diaphragm(grid: Grid, a: dict) -> np.ndarray:
    """Height (mm) of the diaphragm over each (x, y): two domes, lower at the periphery (costophrenic recesses)."""
    X, Y = grid.x[:, None] / a["kx"], grid.y[None, :] / a["ky"]
    right = a["domes"][0] - 35 * (((X - 55) / 90) ** 2 + ((Y - 10) / 90) ** 2)
    return np.maximum(right, a["domes"][1] - 35 * (((X + 65) / 90) ** 2 + ((Y + 10) / 90) ** 2))


def _thorax(grid: Grid, a: dict, img: np.ndarray, free: np.ndarray) -> None:
    """Lung bases above the diaphragm, heart over its central part."""
    dia = _diaphragm(grid, a)
    k0 = int(np.searchsorted(grid.z, dia[free].min())) if free.any() else grid.shape[2]
    X, Y = grid.x[:, None] / a["kx"], grid.y[None, :] / a["ky"]
    heart = free & (((X + 20) / 55) ** 2 + ((Y - 40) / 45) ** 2 < 1)
    above, slab = grid.z[None, None, k0:] > dia[..., None], img[:, :, k0:]
    np.copyto(slab, np.float32(a["hu"]["heart"]), where=above & heart[..., None])
    np.copyto(slab, np.float32(a["hu"]["lung"]), where=above & (free & ~heart)[..., None])


def _bowel(rng: np.random.Generator, grid: Grid, a: dict, img: np.ndarray, tis: np.ndarray, free: np.ndarray) -> None:
    """Small-bowel loops below `bowel_top`, in front of the retroperitoneum (whose fat surrounds the aorta, the IVC
    and the kidneys): wall and lumen of a wave field, thresholded so that the case's `visceral_fat` share of the space
    stays fat; the lumen holds fluid, or positive oral contrast where a slow field says so in cases with it, and gas
    above a wavy non-dependent level (supine)."""
    region = free & (grid.y[None, :] > a["yv"] + 50 * a["ky"])  # in front of the retroperitoneum (IVC, aorta: fat)
    ii, jj = np.flatnonzero(region.any(1)), np.flatnonzero(region.any(0))
    kk = np.flatnonzero(grid.z < a["bowel_top"] * a["kz"])
    if not (ii.size and jj.size and kk.size):
        return
    sl = (slice(ii[0], ii[-1] + 1), slice(jj[0], jj[-1] + 1), slice(0, kk[-1] + 1))
    X, Y, Z = _coords(grid, sl)
    lam, lz, ang = rng.uniform(45, 75, (2, 2)), rng.uniform(45, 90, 2), rng.uniform(0, np.pi, 2)
    p = rng.uniform(0, 2 * np.pi, (2, 6))
    field = np.float32(0)
    for i in range(2):  # warped, rotated egg-crate patterns whose phase along z varies: loops ~3 cm across
        u, v = np.cos(ang[i]) * X + np.sin(ang[i]) * Y, np.cos(ang[i]) * Y - np.sin(ang[i]) * X
        u, v = u + 12 * np.sin(2 * np.pi * v / 97 + p[i, 3]), v + 12 * np.sin(2 * np.pi * u / 83 + p[i, 4])
        crate = np.sin(2 * np.pi * u / lam[i, 0] + p[i, 0]) * np.sin(2 * np.pi * v / lam[i, 1] + p[i, 1])
        shift = (p[i, 2] + 2 * np.sin(2 * np.pi * (u + v) / 150 + p[i, 5])).astype(np.float32)
        field = field + crate.astype(np.float32) * np.sin(np.float32(2 * np.pi / lz[i]) * Z + shift)
    inside, sub, sub_tis, hu = region[sl[0], sl[1]][..., None], img[sl], tis[sl], a["hu"]
    wall_at = 0.05 + 0.6 * a["visceral_fat"]  # the field's values lie in about [-2, 2]
    lumen = inside & (field > wall_at + 0.3)
    wall = inside & (field > wall_at) & ~lumen
    contrast = lumen & (_waves(rng, (X, Y, Z), 2, (80.0, 160.0)) > rng.uniform(-0.4, 0.4)) & a["oral"]
    level = rng.uniform(25, 60) * a["ky"] + 12 * _waves(rng, (X, Y * 0, Z), 2, (60.0, 120.0))
    gas = lumen & (Y > level)
    layers = [(wall, hu["bowel_wall"], "bowel wall"), (lumen, hu["fluid"], "bowel fluid")]
    layers += [(contrast, hu["oral_contrast"], "oral contrast"), (gas, -1000.0, "bowel gas")]
    for mask, value, tissue in layers:
        np.copyto(sub, np.float32(value), where=mask)
        np.copyto(sub_tis, np.uint8(TISSUES[tissue]), where=mask)


def _segment_depth(X: np.ndarray, Y: np.ndarray, z: float, p0, p1, radius: float) -> np.ndarray:
    """How far (mm) each point (X, Y, z) lies inside a rod of `radius` around the segment p0-p1 (negative: outside)."""
    p0, d = np.asarray(p0, float), np.subtract(p1, p0)
    t = np.clip(((X - p0[0]) * d[0] + (Y - p0[1]) * d[1] + (z - p0[2]) * d[2]) / max(d @ d, 1e-9), 0, 1)
    return radius - np.sqrt((X - p0[0] - t * d[0]) ** 2 + (Y - p0[1] - t * d[1]) ** 2 + (z - p0[2] - t * d[2]) ** 2)


def _pelvis(grid: Grid, a: dict, img: np.ndarray) -> None:
    """Pelvic bones below the iliac crests (about L4), in the body: iliac wings (curved plates from the sacroiliac
    joints to the anterior spines), the sacrum, the femoral heads in their acetabula with necks and shafts, the pubic
    rami and the ischia; cancellous bone in a 2.5 mm cortical rim. Positions are those of a nominal adult, scaled."""
    kx, ky, kz, hu = a["kx"], a["ky"], a["kz"], a["hu"]
    X, Y = grid.x[:, None] / kx, grid.y[None, :] / ky  # nominal-adult mm
    for k in np.flatnonzero(grid.z < -95 * kz):
        z, depth = grid.z[k] / kz, np.full(X.shape[0:1] + Y.shape[1:], -np.inf, np.float32)
        if z > -215:
            top = np.clip((-95 - z) / 120, 0, 1)  # 0 at the crest, 1 at the acetabular roof
            for s in (1, -1):  # wing: an arc of radius 68 about (35, 8), thicker and shorter anteriorly lower down
                r, ang = np.hypot(X - s * 35, Y - 8), np.degrees(np.arctan2(Y - 8, s * (X - s * 35)))
                wing = (5 + 6 * top) - np.abs(r - 68 + 20 * top)
                depth = np.maximum(depth, np.where((ang > -82) & (ang < 18 - 50 * top), wing, -np.inf))
        if -265 < z < -115:  # sacrum: narrower and more posterior caudally
            f = (-115 - z) / 150
            q = np.hypot(X / (52 - 30 * f), (Y + 52 + 30 * f) / 16)
            depth = np.maximum(depth, 16 * (1 - q))
        for s in (1, -1):
            rods = [((s * 84, 2, -268), (s * 84, 2, -268), 24)]  # femoral head
            rods += [((s * 84, 2, -268), (s * 112, -8, -300), 14), ((s * 112, -8, -300), (s * 106, 2, -420), 13)]
            rods += [((s * 72, 14, -272), (s * 10, 48, -292), 9), ((s * 72, -12, -285), (s * 50, -20, -335), 13)]
            rods += [((s * 50, -20, -335), (s * 12, 40, -310), 7)]  # pubic and ischial rami, ischial tuberosity
            for p0, p1, radius in rods:
                depth = np.maximum(depth, _segment_depth(X, Y, z, p0, p1, radius))
            cup = 5 - np.abs(np.sqrt((X - s * 84) ** 2 + (Y - 2) ** 2 + (z + 268) ** 2) - 30)  # acetabulum
            depth = np.maximum(depth, np.where(s * (X - s * 84) < 8, cup, -np.inf))
        body, section = img[:, :, k] > -900, img[:, :, k]
        section[body & (depth > 0)] = hu["cortical"]
        section[body & (depth > 2.5)] = hu["cancellous"]


COLON: tuple[tuple[int, tuple, tuple], ...] = (  # (sweep axis, knots, centres) of the nominal colon, mm
    (2, (-125, -90, -50, -20, -5), ((80, 15), (92, 5), (98, 0), (92, 5), (78, 25))),  # ascending (x, y) over z
    (0, (-85, -45, 0, 45, 78), ((15, 0), (50, -20), (62, -40), (52, -25), (25, -8))),  # transverse (y, z) over x
    (2, (-125, -80, -30, 0, 8), ((-88, 5), (-98, -5), (-100, -8), (-95, 0), (-85, 12))),  # descending
    (2, (-290, -240, -190, -150, -127), ((0, -48), (0, -45), (-25, -25), (-60, 0), (-86, 5))),  # rectum, sigmoid
)


def _colon(rng: np.random.Generator, grid: Grid, a: dict, S: np.ndarray) -> list[tuple[Part, np.ndarray, np.ndarray]]:
    """The colon's segments as (part, HU, tissue id) arrays: a tube of radius 18-26 mm narrowed by haustral folds
    every 28-40 mm, a 3 mm wall, and contents per segment: stool (soft tissue mottled with gas bubbles a few mm
    across), fluid or oral contrast, under a non-dependent gas cap."""
    hu, out = a["hu"], []
    radius, fold = rng.uniform(18, 26) * a["size"], rng.uniform(28, 40)
    for axis, knots, centres in COLON:
        others = [i for i in range(3) if i != axis]
        fine = np.arange(knots[0], knots[-1] + 1e-6, 4.0)  # haustra need knots every few mm
        cen = np.stack([np.interp(fine, knots, np.asarray(centres)[:, j]) * S[o] for j, o in enumerate(others)], 1)
        rad = radius * (1 - 0.18 * np.abs(np.sin(np.pi * fine / fold)))
        shares = [0.65, 0.2, 0.15] if a["oral"] else [0.75, 0.25, 0.0]
        kind = str(rng.choice(["stool", "bowel fluid", "oral contrast"], p=shares))
        level, local = rng.uniform(-0.2, 0.8), np.random.default_rng(rng.integers(1 << 62))
        part = _sweep(grid, rng, axis, fine * S[axis], cen, np.stack([rad, rad], 1), 4.0)
        if part is None:
            continue
        anterior = part.u if axis == 0 else part.v  # normalised, towards +y
        content = {"stool": hu["stool"], "bowel fluid": hu["fluid"], "oral contrast": hu["oral_contrast"]}[kind]
        bubbles = _waves(local, _coords(grid, part.sl), 3, (6.0, 12.0)) > 0.35 if kind == "stool" else False
        gas = (anterior > level) | bubbles
        wall = np.sqrt(part.q) > 1 - 3.0 / radius
        value = np.where(wall, hu["bowel_wall"], np.where(gas, -1000.0, content))
        tissue = np.where(wall, TISSUES["bowel wall"], np.where(gas, TISSUES["bowel gas"], TISSUES[kind]))
        out.append((part, value.astype(np.float32), tissue.astype(np.uint8)))
    return out


def _kidney(part: Part, c: np.ndarray, r: np.ndarray, side: int, a: dict) -> tuple[np.ndarray, ...]:
    """Inside a kidney (ellipsoid `c`, `r`; `side` +1 right, -1 left): (label mask, HU, tissue id). In the
    ellipsoid's normalised frame (m towards the hilum, V across, s along the long axis; radius 1 at the surface):
    the hilum's opening on the medial side (unlabelled), the renal sinus (fat) around the renal pelvis (urine, or
    excreted contrast late), and the parenchyma: a cortex 6-8 mm thick with columns reaching in between about eight
    medullary pyramids."""
    hu, T = a["hu"], TISSUES
    s = (part.t - c[2]) / r[2]
    w = np.sqrt(np.clip(1 - s * s, 0, 1))
    m, V = -side * part.u * w, part.v * w
    rho = np.sqrt(np.minimum(part.q, 4) * w * w + s * s)  # the ellipsoid's radius, 1 at its surface
    notch = ((m - 0.9) / 0.45) ** 2 + (V / 0.38) ** 2 + (s / 0.3) ** 2 < 1
    sinus = ((m - 0.35) / 0.5) ** 2 + (V / 0.42) ** 2 + (s / 0.62) ** 2 < 1
    pelvis = ((m - 0.6) / 0.3) ** 2 + (V / 0.22) ** 2 + (s / 0.22) ** 2 < 1
    cortex = (rho > 1 - 7.0 / np.mean(r[:2])) | (np.cos(4 * np.arctan2(s, m - 0.35)) > 0.75)
    value = np.where(sinus, np.where(pelvis, hu["urine"], hu["fat"]), np.where(cortex, hu["cortex"], hu["medulla"]))
    tissue = np.where(sinus, np.where(pelvis, T["renal pelvis"], T["renal sinus fat"]),
                      np.where(cortex, T["renal cortex"], T["renal medulla"]))  # fmt: skip
    return (part.q < 1) & ~notch, value.astype(np.float32), tissue.astype(np.uint8)


def _aorta(rng: np.random.Generator, part: Part, radius: float, a: dict) -> tuple[np.ndarray, np.ndarray]:
    """Inside the aorta (nominal `radius`, mm): (HU, tissue id) of the contrast-filled lumen, a 1-2 mm wall and,
    in cases with plaques, 2-8 calcified plaques (350-900 HU) on the posterior and lateral wall below the renal
    arteries (z < 0), arcs of 25-70 degrees, 4-15 mm long and 2-3 mm thick."""
    hu, T = a["hu"], TISSUES
    depth = (1 - np.sqrt(part.q)) * radius  # mm inside the outer surface
    value = np.where(depth > rng.uniform(1.0, 2.0), hu["aorta"], hu["aortic_wall"]).astype(np.float32)
    tissue = np.where(value == np.float32(hu["aorta"]), T["aortic lumen"], T["aortic wall"]).astype(np.uint8)
    angle = np.arctan2(part.v, part.u)
    for _ in range(rng.integers(2, 9) if a["plaques"] else 0):
        centre, arc = rng.normal(-np.pi / 2, np.pi / 3), np.radians(rng.uniform(25, 70))
        z, length, thick = rng.uniform(-100, 0) * a["kz"], rng.uniform(4, 15), rng.uniform(2, 3)
        off = np.abs(np.angle(np.exp(1j * (angle - centre))))
        plaque = (off < arc / 2) & (np.abs(part.t - z) < length / 2) & (depth < thick) & (part.q < 1)
        value[plaque], tissue[plaque] = hu["plaque"], T["aortic plaque"]
    return value, tissue


def _organs(rng: np.random.Generator, grid: Grid, a: dict) -> list:
    """The 13 BTCV organs and the unlabelled structures among them as (label, bbox slices, mask, HU scalar or array,
    q, tissue id scalar or array) in painting order (later ones win where they overlap)."""
    S, g, hu, parts, T = np.array([a["kx"], a["ky"], a["kz"]]), a["size"], a["hu"], [], TISSUES

    def ell(centre, radii, axis=2, tilt=(0, 0), bend=(0, 0), warp=8.0, roll=0.0, at_z=None):
        c, r = np.asarray(centre) * S + rng.normal(0, 4, 3), np.asarray(radii) * g * rng.uniform(0.92, 1.08, 3)
        c[2] = c[2] if at_z is None else at_z
        return c, r, _ellipsoid(grid, rng, axis, c, r, tilt, bend, warp, roll)

    def tube(axis, knots, centres, radii, shift=None, warp=3.0):
        shift, others = rng.normal(0, 3, 3) if shift is None else shift, [i for i in range(3) if i != axis]
        cen = np.asarray(centres, float) * S[others] + shift[others]
        rad = np.broadcast_to(np.asarray(radii, float) * g, cen.shape)
        return _sweep(grid, rng, axis, np.asarray(knots, float) * S[axis] + shift[axis], cen, rad, warp)

    def add(label, part, value, mask=None, tissue=None):
        if part is not None:
            tissue = (T["organ"] if label else T["other"]) if tissue is None else tissue
            parts.append((label, part.sl, part.q < 1 if mask is None else mask, value, part.q, tissue))

    for part, value, tissue in _colon(rng, grid, a, S):
        add(0, part, value, tissue=tissue)
    add(6, ell((58, 15, 36), (75, 68, 64), tilt=(-20, -5))[2], hu["liver"])  # right lobe
    add(6, ell((5, 50, 50), (58, 27, 30), axis=0)[2], hu["liver"])  # left lobe
    spleen = ell((-96, -18, 36), (22, 55, 48), axis=1, tilt=(0, -10), bend=(18, 0))[2]
    zebra = np.interp(a["delay"], (25, 35, 45, 55), (40, 35, 15, 0))  # arciform enhancement, arterial phase
    if spleen is not None and zebra > 0:
        add(1, spleen, hu["spleen"] + zebra * _waves(rng, _coords(grid, spleen.sl), 3, (12.0, 24.0)))
    else:
        add(1, spleen, hu["spleen"])
    aorta_shift, ivc_shift = rng.normal(0, 3, 3), rng.normal(0, 3, 3)
    aorta_at = np.array([-14, -10]) * S[:2] + aorta_shift[:2]  # (x, y) at the renal arteries
    ivc_at = np.array([24, -4]) * S[:2] + ivc_shift[:2]
    kidneys = []  # posterior, beside the psoas, the right one lower; upper poles medial and posterior
    left_z = None  # the left kidney's centre height, mm; the right one 1-3 cm lower (ANATOMY.md: ~2 cm)
    for label, side in ((3, -1), (2, 1)):
        roll = -side * np.radians(rng.uniform(20, 40))  # the hilum turned anteromedially
        at_z = None if left_z is None else left_z - rng.uniform(10, 30) * a["kz"]
        c, r, part = ell((side * 66, -48, -18), (28, 24, 57), tilt=(-side * 10, -8), warp=4.0, roll=roll, at_z=at_z)
        left_z = c[2]
        kidneys.append((label, side, c, r, part))
        hilum = c[:2] - side * 0.95 * r[0] * np.array([np.cos(roll), np.sin(roll)])
        z = c[2]
        if side == 1:  # right: a short vein to the IVC, the artery behind the IVC
            veins = [((ivc_at[0], hilum[0]), ((ivc_at[1], z + 5), (hilum[1], z)))]
            arteries = [((aorta_at[0], ivc_at[0], hilum[0]), ((aorta_at[1] - 2, z + 10), (ivc_at[1] - 14, z + 5),
                         (hilum[1] - 5, z)))]  # fmt: skip
        else:  # left: the vein crosses in front of the aorta to the IVC
            veins = [((hilum[0], aorta_at[0], ivc_at[0]), ((hilum[1], z), (aorta_at[1] + 17 * g, z + 8),
                      (ivc_at[1], z + 8)))]  # fmt: skip
            arteries = [((hilum[0], aorta_at[0]), ((hilum[1] - 5, z), (aorta_at[1] - 2, z + 10)))]
        for (knots, centres), radius, value in [*((v, 5.0, hu["ivc"]) for v in veins),
                                                *((v, 3.0, hu["aorta"]) for v in arteries)]:  # fmt: skip
            vessel = _sweep(grid, rng, 0, knots, centres, np.full((len(knots), 2), radius * g), 2.0)
            add(0, vessel, value, tissue=T["renal vessel"])
    for label, side, c, r, part in kidneys:
        if part is not None:
            mask, value, tissue = _kidney(part, c, r, side, a)
            add(label, part, value, mask, tissue)
    res = tube(2, [-30, -18, 5, 30, 55, 72, 80], [(18, 42), (-5, 50), (-35, 50), (-50, 36), (-55, 14), (-50, 4),
               (-48, 2)], [(4, 4), (18, 16), (26, 24), (32, 28), (30, 28), (18, 17), (3, 3)], warp=6.0)  # fmt: skip
    air_y, content = rng.uniform(28, 45) * a["ky"], hu["oral_contrast"] if a["oral"] else hu["fluid"]
    if res is not None:
        gas = _coords(grid, res.sl)[1] > air_y
        add(7, res, np.where(res.q < 0.7, np.where(gas, -1000.0, content), hu["stomach_wall"]))
    add(4, tube(2, [-30, -25, -12, 0, 12, 16], [(52, 55), (52, 53), (50, 46), (45, 38), (40, 30), (38, 28)],
                [(3, 3), (17, 15), (20, 18), (15, 14), (8, 8), (2, 2)]), hu["gallbladder"])  # fmt: skip
    add(11, tube(0, [-98, -90, -70, -40, -8, 18, 34, 40], [(-12, 24), (-12, 22), (-2, 18), (12, 12), (28, 5),
                 (22, -5), (12, -15), (10, -17)], [(3, 3), (8, 9), (11, 12), (11, 13), (11, 13), (17, 19), (13, 15),
                 (3, 3)], warp=5.0), hu["pancreas"])  # fmt: skip
    res, air = tube(2, [56, 72, 92, 400], [(-45, 10), (-30, 12), (-12, 12), (-5, 10)], (9, 7)), rng.random() < 0.5
    add(5, res, np.where(res.q < 0.12, -900.0, hu["esophagus"]) if air and res else hu["esophagus"])
    add(9, tube(2, [-122, 40, 75, 95, 100], [(22, -7), (24, -4), (20, 8), (12, 14), (12, 14)],
                [(12, 9), (13, 9), (14, 12), (12, 10), (3, 3)], ivc_shift), hu["ivc"])  # fmt: skip
    aorta = tube(2, [-108, -60, 60, 400], [(-15, -10), (-14, -10), (-14, -12), (-20, -20)], [(9, 9), (11, 11),
                 (12, 12), (12, 12)], aorta_shift, warp=1.5)  # fmt: skip
    if aorta is not None:
        value, tissue = _aorta(rng, aorta, 11 * g, a)
        add(8, aorta, value, tissue=tissue)
    add(10, tube(2, [-8, -5, 15, 38, 42], [(8, 16), (8, 16), (22, 20), (45, 14), (48, 13)],
                 [(3, 3), (7, 7), (7, 7), (6, 6), (3, 3)]), hu["portal"])  # fmt: skip
    add(10, tube(0, [-88, -85, -50, -15, 8, 10], [(-22, 20), (-22, 20), (-8, 12), (6, 3), (14, -4), (14, -4)],
                 [(2, 2), (5, 5), (5, 5), (5.5, 5.5), (6, 6), (2, 2)]), hu["portal"])  # fmt: skip
    for label, side, zlo, zhi in ((12, 1, 12, 40), (13, -1, 22, 48)):  # Y/V shape: two limbs from one apex
        shift, apex = rng.normal(0, 3, 3), (side * 37, -27)
        knots, radii = [zlo - 3, zlo, zhi, zhi + 3], [(2, 2), (5, 4.5), (5, 4.5), (2, 2)]
        for foot in ((side * 33, -20), (side * 49, -36)):
            add(label, tube(2, knots, [foot, foot, apex, apex], radii, shift, warp=1.5), hu["adrenal"])
    if grid.z[0] < -100 * a["kz"]:  # below the aorta's bifurcation: unlabelled pelvic vessels and the bladder
        for side in (1, -1):  # common then external iliac artery and vein, to the groin
            add(0, tube(2, [-330, -280, -230, -170, -108], [(side * 75, 18), (side * 68, 8), (side * 55, -12),
                        (side * 32 - 8, -16), (-15, -10)], (6, 6), aorta_shift), hu["aorta"])  # fmt: skip
            add(0, tube(2, [-330, -280, -230, -165, -122], [(side * 70, 4), (side * 62, -8), (side * 50, -26),
                        (side * 30 + 10, -20), (22, -7)], (7, 6), ivc_shift), hu["ivc"])  # fmt: skip
        add(0, ell((0, 28, -262), (42, 32, 30))[2], hu["fluid"])  # urinary bladder
    return parts


def _paint(img: np.ndarray, lab: np.ndarray, tis: np.ndarray, parts: list, cavity: np.ndarray) -> None:
    """Paint parts in order, clipped to the cavity, into the HU image, the label and the tissue map; a label left
    with no voxel (tiny grids) gets its deepest one."""
    first = {}
    for label, sl, mask, value, q, tissue in parts:
        mask = mask & cavity[sl[0], sl[1]][..., None]
        lab[sl][mask] = label
        img[sl][mask] = np.broadcast_to(value, mask.shape)[mask] if np.ndim(value) else value
        tis[sl][mask] = np.broadcast_to(tissue, mask.shape)[mask] if np.ndim(tissue) else tissue
        first.setdefault(label, (sl, q, value))
    present = np.bincount(lab.ravel(), minlength=len(BTCV_LABELS)) > 0
    for label, (sl, q, value) in first.items():
        if not present[label]:
            idx = np.unravel_index(np.argmin(q), q.shape)
            lab[sl][idx], img[sl][idx] = label, value[idx] if np.ndim(value) else value


def _streaks(grid: Grid, a: dict, img: np.ndarray) -> None:
    """Beam hardening, in place: each axial slice darkens along the rays (16 directions) in proportion to the square
    of the dense bone they cross (HU above 300, weighted by the excess; about 30 mm-equivalents through a vertebra
    with its arch, or the two femoral heads) and brightens a little elsewhere (zero mean over the body), so that dark
    bands run from the spine and between the hip bones; `streaks` HU at most, about. Computed on a grid of at most 128
    in plane and enlarged."""
    step = max(1, min(grid.shape[:2]) // 128)
    coarse = img[::step, ::step, :]
    dense, body = np.clip(coarse - 300, 0, None) * np.float32(step * grid.spacing[0] / 1000), coarse > -500
    nz, field = coarse.shape[2], np.zeros(coarse.shape, np.float32)
    xs, ys = grid.x[::step], grid.y[::step]
    for theta in np.linspace(0, np.pi, 16, endpoint=False):
        ray = np.rint((xs[:, None] * np.cos(theta) + ys[None, :] * np.sin(theta)) / (step * grid.spacing[0]))
        ray = (ray - ray.min()).astype(np.int64)
        index = (ray[..., None] * nz + np.arange(nz)).ravel()
        path = np.bincount(index, dense.ravel(), (ray.max() + 1) * nz).reshape(-1, nz)  # mm of bone excess per ray
        field -= np.minimum((path / 30.0) ** 2, 2.0)[ray]
    mean = (field * body).sum((0, 1)) / np.maximum(body.sum((0, 1)), 1)
    field = (field - mean) * body * np.float32(a["streaks"] / 4)
    img += np.repeat(np.repeat(field, step, 0), step, 1)[: grid.shape[0], : grid.shape[1]]


def _scanner(rng: np.random.Generator, grid: Grid, a: dict, img: np.ndarray) -> np.ndarray:
    """What the scanner adds to the ideal HU image: beam-hardening streaks, the reconstruction kernel (Gaussian blur
    of `blur` voxels in plane, ~1 voxel of partial volume in all; sharper kernels overshoot at edges by `sharpen`)
    and noise of sd `noise` HU, spatially correlated like the kernel's."""
    _streaks(grid, a, img)
    sigma = (a["blur"], a["blur"], 0.5)
    img = gaussian_filter(img, sigma=sigma, truncate=3.0)
    if a["sharpen"] > 0:
        img += np.float32(a["sharpen"]) * (img - gaussian_filter(img, sigma=(1.0, 1.0, 0.0), truncate=3.0))
    noise = gaussian_filter(rng.standard_normal(img.shape, dtype=np.float32), (0.6 * a["blur"],) * 2 + (0.3,))
    img += noise * np.float32(a["noise"] / max(float(noise[::2, ::2].std()), 1e-6))
    return img


def generate_case(
    rng_or_seed: int | np.random.Generator | np.random.SeedSequence,
    shape: Shape | None = None,
    size: str = "medium",
    orientation: str | None = None,
    pelvis: bool | None = None,
    new_look: bool = False,
    tissues: bool = False,
) -> tuple[np.ndarray, ...]:
    """Generate one synthetic contrast-enhanced abdominal CT with its 13-organ BTCV label map.

    Args:
        rng_or_seed: seed, SeedSequence or Generator; the same seed gives byte-identical arrays.
        shape: explicit array size (X, Y, Z); spacing is then derived so the anatomy fits (fov / min(X, Y)
            in plane, z-extent / Z along z). None: the `size` preset in plane and a sampled slice thickness.
        size: "small" (128 in plane, >= 5 mm slices), "medium" (256, >= 3 mm) or "full" (512, native
            0.6-1.0 mm pixels and 1.5-5 mm slices); ignored when `shape` is given.
        orientation: "RAS" or "LPS" storage; None draws LPS for about a third of the seeds.
        pelvis: whether the scan reaches down into the pelvis (29-47 cm instead of 20-28 cm along z); None draws it
            for about half the seeds of a size preset and never with an explicit `shape`. The organs are the same
            either way.
        new_look: draw body size, fat, contrast timing, scanner and slice thickness from outside the seen look's
            ranges (``LOOK``), for held-out cases unlike any training case; False (default): the seen look.
        tissues: also return the tissue map (uint8, ``TISSUES`` ids: renal cortex, aortic plaque, bowel gas, ...).

    Returns:
        (image in HU int16 [X, Y, Z], label uint8 [X, Y, Z] with values 0..13, 4x4 voxel-to-world affine), and the
        tissue map when `tissues` is True.

    Examples:
        >>> img, lab, affine = generate_case(0, shape=(96, 96, 48))
        >>> img.dtype, lab.dtype, img.shape
        (dtype('int16'), dtype('uint8'), (96, 96, 48))
        >>> np.unique(lab).tolist() == list(range(14))
        True
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    rng = np.random.default_rng(rng_or_seed)
    anatomy = _anatomy(rng, new_look)
    grid = _grid(rng, anatomy, None if shape is None else tuple(int(n) for n in shape), size, orientation, pelvis)
    img, cavity, free = _body(rng, grid, anatomy)
    tis = np.zeros(grid.shape, np.uint8)
    _thorax(grid, anatomy, img, free)
    _bowel(rng, grid, anatomy, img, tis, free)
    _pelvis(grid, anatomy, img)
    lab = np.zeros(grid.shape, np.uint8)
    _paint(img, lab, tis, _organs(rng, grid, anatomy), cavity)
    img = _scanner(rng, grid, anatomy, img)
    img = np.clip(np.rint(img), -1024, 3071).astype(np.int16)
    return (img, lab, grid.affine, tis) if tissues else (img, lab, grid.affine)


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a NIfTI file with the affine as both qform and sform (scanner coordinates, mm)."""
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))


def generate_dataset(
    out_dir: str | Path,
    cases: int,
    seed: int,
    val_fraction: float = 0.25,
    shape: Shape | None = None,
    size: str = "medium",
    overwrite: bool = False,
    verbose: bool = True,
    new_look: bool = False,
) -> Path:
    """Write `cases` phantoms as imagesTr/ and labelsTr/ NIfTI files plus a BTCV-style dataset_0.json.

    Args:
        out_dir: output directory (created if missing).
        cases: number of cases; case i uses the i-th child of SeedSequence(seed), so it does not depend on `cases`.
            With a size preset, the odd-numbered cases reach down into the pelvis, so that training and validation
            cases both have either field of view.
        seed: dataset seed.
        val_fraction: share of the (last) cases listed under "validation"; at least one when cases >= 2, and all
            of them at 1 (a held-out set, e.g. of the new look).
        shape, size, new_look: see `generate_case`.
        overwrite: replace an existing dataset_0.json or case files instead of refusing.
        verbose: print one progress line per case.

    Returns:
        Path of dataset_0.json; its image/label paths are relative to `out_dir`.

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = generate_dataset(tmp, cases=2, seed=0, shape=(48, 48, 24), verbose=False)
        ...     info = json.loads(path.read_text())
        >>> info["numTraining"], info["training"][0]["image"], info["validation"][0]["label"]
        (1, 'imagesTr/case_0000.nii.gz', 'labelsTr/case_0001.nii.gz')
    """
    if cases < 1 or not 0 <= val_fraction <= 1:
        raise ValueError(f"need cases >= 1 and 0 <= val_fraction <= 1, got {cases} and {val_fraction}")
    out = Path(out_dir)
    names = [f"case_{i:04d}" for i in range(cases)]
    targets = [out / "dataset_0.json"] + [out / d / f"{n}.nii.gz" for n in names for d in ("imagesTr", "labelsTr")]
    existing = [p for p in targets if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} already exists; pass --overwrite (overwrite=True) to replace it")
    for sub in ("imagesTr", "labelsTr"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (name, child) in enumerate(zip(names, np.random.SeedSequence(seed).spawn(cases))):
        start = time.perf_counter()
        pelvis = None if shape else i % 2 == 1
        img, lab, affine = generate_case(child, shape=shape, size=size, pelvis=pelvis, new_look=new_look)
        entry = {"image": f"imagesTr/{name}.nii.gz", "label": f"labelsTr/{name}.nii.gz"}
        for key, array in (("image", img), ("label", lab)):
            save_nifti(array, affine, out / entry[key])
        entries.append(entry)
        if verbose:
            spacing = ", ".join(f"{s:.2f}" for s in np.abs(np.diag(affine)[:3]))
            print(f"[{i + 1}/{cases}] {name} {'x'.join(map(str, img.shape))} spacing ({spacing}) "
                  f"{''.join(nib.aff2axcodes(affine))}  {time.perf_counter() - start:.1f} s", flush=True)  # fmt: skip
    n_val = cases if val_fraction == 1 else 0 if cases < 2 else min(cases - 1, max(1, round(cases * val_fraction)))
    info = {
        "name": "SelfMedHPM synthetic abdomen CT",
        "description": f"Deterministic BTCV-layout phantoms (selfmedhpm_tools.phantom, seed {seed}"
        + (", new look" if new_look else "")
        + "); not patient data",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in BTCV_LABELS.items()},
        "numTraining": cases - n_val,
        "numValidation": n_val,
        "training": entries[: cases - n_val],
        "validation": entries[cases - n_val :],
    }
    path = out / "dataset_0.json"
    path.write_text(json.dumps(info, indent=2) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m selfmedhpm_tools.phantom --out DIR --cases N --seed S``."""
    parser = argparse.ArgumentParser(prog="python -m selfmedhpm_tools.phantom", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    parser.add_argument("--cases", type=int, default=8, help="number of cases (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default 0)")
    parser.add_argument("--val-fraction", type=float, default=0.25, help="validation share (default 0.25)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"), help="explicit array size")
    group.add_argument("--size", choices=sorted(SIZES), default="medium", help="size preset (default medium)")
    parser.add_argument("--new-look", action="store_true", help="body size, fat, contrast timing, scanner and slices "
                        "from outside the seen look's ranges: held-out cases unlike any training case")  # fmt: skip
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    args = parser.parse_args(argv)
    options = dict(val_fraction=args.val_fraction, shape=args.shape, size=args.size, overwrite=args.overwrite,
                   new_look=args.new_look)  # fmt: skip
    try:
        path = generate_dataset(args.out, args.cases, args.seed, **options)
    except (FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

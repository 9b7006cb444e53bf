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
* abdomen: visceral fat and bowel loops (a low-frequency wave field split into wall, fluid and anterior gas);
* pelvis (every other case of a data set reaches down to the hips, as most abdominal CTs do): iliac wings,
  sacrum, femoral heads in their acetabula, pubic and ischial rami, the urinary bladder, and the iliac arteries and
  veins, unlabelled as in BTCV, whose aorta label ends at the bifurcation (L4) and IVC label at the confluence (L5);
* the 13 BTCV organs as ellipsoids or tubes swept along one axis (ellipse cross-sections whose centre and
  semi-axes are interpolated between knots), deformed by a smooth random displacement of the surface and clipped
  to the abdominal cavity. Portal-venous phase HU: enhancing vessels, kidney cortex brighter than medulla, gas
  anterior to fluid in the stomach (supine patient), unenhanced bile in the gallbladder.

Organs are painted in a fixed order (liver first, vessels and adrenals last; later ones win where they touch),
evaluated at the voxel centres of the sampled grid, i.e. through the affine, each in its own bounding box. The HU
image is blurred once (partial volume, ~1 voxel) and gets Gaussian noise (sd 10-20 HU). Spacing, field of view,
slice count and storage orientation (about a third LPS instead of RAS; diagonal affine) vary per case: a z-extent
of 20-28 cm (lung bases to below the kidneys) or 29-47 cm (down into the pelvis).
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
HU_RANGES: dict[str, tuple[float, float]] = {  # portal-venous phase; one value per case is drawn uniformly
    "fat": (-120, -80), "muscle": (40, 60), "cancellous": (150, 300), "cortical": (700, 1200), "rib": (450, 800),
    "disc": (70, 100), "lung": (-870, -830), "heart": (100, 150), "bowel_wall": (80, 120), "fluid": (0, 20),
    "liver": (100, 120), "spleen": (100, 130), "cortex": (150, 200), "medulla": (90, 120), "gallbladder": (0, 20),
    "esophagus": (35, 50), "stomach_wall": (80, 110), "aorta": (170, 240), "ivc": (100, 150), "portal": (150, 180),
    "pancreas": (90, 120), "adrenal": (20, 40),
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


def _anatomy(rng: np.random.Generator) -> dict:
    """Per-case body size, layer thicknesses, scale factors of the nominal layout and tissue HU values."""
    a = {"A": rng.uniform(150, 185), "B": rng.uniform(105, 130), "kz": rng.uniform(0.93, 1.05)}
    a.update(kx=a["A"] / 170, ky=a["B"] / 115, size=rng.uniform(0.92, 1.08), fat=rng.uniform(10, 30))
    a.update(wall=rng.uniform(6, 12), noise=rng.uniform(10, 20), yv=-40 * a["ky"])
    a.update(domes=(rng.normal(95, 3) * a["kz"], rng.normal(90, 3) * a["kz"]), bowel_top=rng.uniform(10, 35))
    a.update(hu={name: rng.uniform(lo, hi) for name, (lo, hi) in HU_RANGES.items()})
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
    size-preset cases, never with an explicit ``shape``). Native in-plane spacing is fov/512 (0.6-1 mm); smaller
    matrices resample the fov."""
    fov = min(2.24 * a["A"] + 30 + rng.uniform(10, 80), 512.0)
    thick, low, span = rng.uniform(1.5, 5.0), -100 * a["kz"], 220 * a["kz"]
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


def _expand(arr: np.ndarray, axes: tuple[int, int]) -> np.ndarray:
    """Place a 2-D float array whose dimensions are the world `axes` into a broadcastable 3-D float32 array."""
    arr = arr.T if axes[0] > axes[1] else arr
    return np.expand_dims(arr, 3 - sum(axes)).astype(np.float32, copy=False)


def _coords(grid: Grid, sl: Slices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable patient coordinates (X, Y, Z) of the voxels in a bounding box."""
    return tuple(_line(c[s], i) for i, (c, s) in enumerate(zip((grid.x, grid.y, grid.z), sl)))


def _sweep(grid: Grid, rng: np.random.Generator, axis: int, knots, centres, radii, wobble: float):
    """Ellipse cross-sections swept along world `axis`, centres (n, 2) and semi-axes (n, 2) interpolated between
    increasing `knots` (mm), surface displaced by a smooth random field. Returns (bbox slices, q) with q < 1 inside,
    or None when the shape misses the grid."""
    coords, others = (grid.x, grid.y, grid.z), [i for i in range(3) if i != axis]
    knots, centres = np.asarray(knots, float), np.asarray(centres, float)
    radii = np.maximum(np.asarray(radii, float), [0.6 * grid.spacing[o] for o in others])
    box = {axis: (knots[0], knots[-1])}
    for j, o in enumerate(others):
        box[o] = ((centres[:, j] - 1.3 * radii[:, j]).min(), (centres[:, j] + 1.3 * radii[:, j]).max())
    sl = []
    for ax in range(3):
        idx = np.flatnonzero((coords[ax] >= box[ax][0]) & (coords[ax] <= box[ax][1]))
        if idx.size == 0:
            return None
        sl.append(slice(idx[0], idx[-1] + 1))
    t, q = coords[axis][sl[axis]], np.float32(0)
    for j, o in enumerate(others):
        u = (coords[o][sl[o]][:, None] - np.interp(t, knots, centres[:, j])) / np.interp(t, knots, radii[:, j])
        q = q + _expand(u * u, (o, axis))
    k, p = 2 * np.pi / rng.uniform(40, 90, 3), rng.uniform(0, 2 * np.pi, 3)
    a, b = (coords[o][sl[o]] for o in others)
    w = wobble * np.outer(np.sin(k[0] * a + p[0]), np.cos(k[1] * b + p[1]))
    q = q + _expand(w, tuple(others)) + _line((0.5 * wobble * np.sin(k[2] * t + p[2])).astype(np.float32), axis)
    return tuple(sl), q


def _ellipsoid(grid: Grid, rng: np.random.Generator, axis: int, c, r, tilt=(0, 0), bend=(0, 0), wobble=0.12):
    """Ellipsoid (centre `c`, semi-axes `r`, mm) swept along `axis`; the centre line shifts by tilt*s + bend*s**2
    (s = -1..1 along the axis) in the two other axes, giving tilted or crescent shapes."""
    s, others = np.linspace(-1, 1, 13), [i for i in range(3) if i != axis]
    cen = np.stack([c[o] + tilt[j] * s + bend[j] * s**2 for j, o in enumerate(others)], 1)
    rad = np.stack([r[o] * np.sqrt(1 - s**2) for o in others], 1)
    return _sweep(grid, rng, axis, c[axis] + r[axis] * s, cen, rad, wobble)


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


def _bowel(rng: np.random.Generator, grid: Grid, a: dict, img: np.ndarray, free: np.ndarray) -> None:
    """Bowel loops anterior to the spine below `bowel_top`: wall, fluid, and gas where anterior (supine)."""
    region = free & (grid.y[None, :] > a["yv"] + 20 * a["ky"])
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
    inside, sub, hu = region[sl[0], sl[1]][..., None], img[sl], a["hu"]
    np.copyto(sub, np.float32(hu["bowel_wall"]), where=inside & (field > 0.3))
    lumen = inside & (field > 0.6)
    np.copyto(sub, np.float32(hu["fluid"]), where=lumen)
    np.copyto(sub, np.float32(-1000), where=lumen & (Y > rng.uniform(30, 60) * a["ky"]))


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


def _organs(rng: np.random.Generator, grid: Grid, a: dict) -> list:
    """The 13 BTCV organs as (label, bbox slices, mask, HU scalar or array, q) in painting order."""
    S, g, hu, parts = np.array([a["kx"], a["ky"], a["kz"]]), a["size"], a["hu"], []

    def ell(centre, radii, axis=2, tilt=(0, 0), bend=(0, 0), wob=0.12):
        c, r = np.asarray(centre) * S + rng.normal(0, 4, 3), np.asarray(radii) * g * rng.uniform(0.92, 1.08, 3)
        return c, r, _ellipsoid(grid, rng, axis, c, r, tilt, bend, wob)

    def tube(axis, knots, centres, radii, shift=None, wob=0.06):
        shift, others = rng.normal(0, 3, 3) if shift is None else shift, [i for i in range(3) if i != axis]
        cen = np.asarray(centres, float) * S[others] + shift[others]
        rad = np.broadcast_to(np.asarray(radii, float) * g, cen.shape)
        return _sweep(grid, rng, axis, np.asarray(knots, float) * S[axis] + shift[axis], cen, rad, wob)

    def add(label, res, value, mask=None):
        if res is not None:
            parts.append((label, res[0], res[1] < 1 if mask is None else mask, value, res[1]))

    add(6, ell((58, 15, 36), (75, 68, 64), tilt=(-20, -5))[2], hu["liver"])  # right lobe
    add(6, ell((5, 50, 50), (58, 27, 30), axis=0)[2], hu["liver"])  # left lobe
    add(1, ell((-96, -18, 36), (22, 55, 48), axis=1, tilt=(0, -10), bend=(18, 0))[2], hu["spleen"])
    for label, side, zc in ((2, 1, -36.0), (3, -1, -18.0)):
        c, r, res = ell((side * 63, -40, zc), (27, 23, 54), tilt=(-side * 10, -6), wob=0.08)
        if res is not None:
            X, Y, Z = _coords(grid, res[0])
            u, v, w = (X - c[0] + side * 0.85 * r[0]) / r[0], (Y - c[1] - 0.1 * r[1]) / r[1], (Z - c[2]) / r[2]
            notch = (u / 0.45) ** 2 + (v / 0.4) ** 2 + (w / 0.3) ** 2 < 1  # renal hilum, facing medially
            add(label, res, np.where(res[1] > 0.45, hu["cortex"], hu["medulla"]), (res[1] < 1) & ~notch)
    res = tube(2, [-30, -18, 5, 30, 55, 72, 80], [(18, 42), (-5, 50), (-35, 50), (-50, 36), (-55, 14), (-50, 4),
               (-48, 2)], [(4, 4), (18, 16), (26, 24), (32, 28), (30, 28), (18, 17), (3, 3)], wob=0.1)  # fmt: skip
    air_y = rng.uniform(28, 45) * a["ky"]
    if res is not None:
        gas = _coords(grid, res[0])[1] > air_y
        add(7, res, np.where(res[1] < 0.7, np.where(gas, -1000.0, hu["fluid"]), hu["stomach_wall"]))
    add(4, tube(2, [-30, -25, -12, 0, 12, 16], [(52, 55), (52, 53), (50, 46), (45, 38), (40, 30), (38, 28)],
                [(3, 3), (17, 15), (20, 18), (15, 14), (8, 8), (2, 2)]), hu["gallbladder"])  # fmt: skip
    add(11, tube(0, [-98, -90, -70, -40, -8, 18, 34, 40], [(-12, 24), (-12, 22), (-2, 18), (12, 12), (28, 5),
                 (22, -5), (12, -15), (10, -17)], [(3, 3), (8, 9), (11, 12), (11, 13), (11, 13), (17, 19), (13, 15),
                 (3, 3)], wob=0.1), hu["pancreas"])  # fmt: skip
    res, air = tube(2, [56, 72, 92, 400], [(-45, 10), (-30, 12), (-12, 12), (-5, 10)], (9, 7)), rng.random() < 0.5
    add(5, res, np.where(res[1] < 0.12, -900.0, hu["esophagus"]) if air and res else hu["esophagus"])
    ivc_shift = rng.normal(0, 3, 3)  # the IVC begins at the iliac veins' confluence (L5), the aorta ends at L4
    add(9, tube(2, [-122, 40, 75, 95, 100], [(22, -7), (24, -4), (20, 8), (12, 14), (12, 14)],
                [(12, 9), (13, 9), (14, 12), (12, 10), (3, 3)], ivc_shift), hu["ivc"])  # fmt: skip
    aorta_shift = rng.normal(0, 3, 3)
    add(8, tube(2, [-108, -60, 60, 400], [(-15, -10), (-14, -10), (-14, -12), (-20, -20)], [(9, 9), (11, 11),
                (12, 12), (12, 12)], aorta_shift, wob=0.02), hu["aorta"])  # fmt: skip
    add(10, tube(2, [-8, -5, 15, 38, 42], [(8, 16), (8, 16), (22, 20), (45, 14), (48, 13)],
                 [(3, 3), (7, 7), (7, 7), (6, 6), (3, 3)]), hu["portal"])  # fmt: skip
    add(10, tube(0, [-88, -85, -50, -15, 8, 10], [(-22, 20), (-22, 20), (-8, 12), (6, 3), (14, -4), (14, -4)],
                 [(2, 2), (5, 5), (5, 5), (5.5, 5.5), (6, 6), (2, 2)]), hu["portal"])  # fmt: skip
    for label, side, zlo, zhi in ((12, 1, 12, 40), (13, -1, 22, 48)):  # Y/V shape: two limbs from one apex
        shift, apex = rng.normal(0, 3, 3), (side * 37, -27)
        knots, radii = [zlo - 3, zlo, zhi, zhi + 3], [(2, 2), (5, 4.5), (5, 4.5), (2, 2)]
        for foot in ((side * 33, -20), (side * 49, -36)):
            add(label, tube(2, knots, [foot, foot, apex, apex], radii, shift), hu["adrenal"])
    if grid.z[0] < -100 * a["kz"]:  # below the aorta's bifurcation: unlabelled pelvic vessels and the bladder
        for side in (1, -1):  # common then external iliac artery and vein, to the groin
            add(0, tube(2, [-330, -280, -230, -170, -108], [(side * 75, 18), (side * 68, 8), (side * 55, -12),
                        (side * 32 - 8, -16), (-15, -10)], (6, 6), aorta_shift), hu["aorta"])  # fmt: skip
            add(0, tube(2, [-330, -280, -230, -165, -122], [(side * 70, 4), (side * 62, -8), (side * 50, -26),
                        (side * 30 + 10, -20), (22, -7)], (7, 6), ivc_shift), hu["ivc"])  # fmt: skip
        add(0, ell((0, 28, -262), (42, 32, 30), wob=0.08)[2], hu["fluid"])  # urinary bladder
    return parts


def _paint(img: np.ndarray, lab: np.ndarray, parts: list, cavity: np.ndarray) -> None:
    """Paint organs in order, clipped to the cavity; a label left with no voxel (tiny grids) gets its deepest one."""
    first = {}
    for label, sl, mask, value, q in parts:
        mask = mask & cavity[sl[0], sl[1]][..., None]
        lab[sl][mask] = label
        img[sl][mask] = value[mask] if np.ndim(value) else value
        first.setdefault(label, (sl, q, value))
    present = np.bincount(lab.ravel(), minlength=len(BTCV_LABELS)) > 0
    for label, (sl, q, value) in first.items():
        if not present[label]:
            idx = np.unravel_index(np.argmin(q), q.shape)
            lab[sl][idx], img[sl][idx] = label, value[idx] if np.ndim(value) else value


def generate_case(
    rng_or_seed: int | np.random.Generator | np.random.SeedSequence,
    shape: Shape | None = None,
    size: str = "medium",
    orientation: str | None = None,
    pelvis: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Generate one synthetic portal-venous abdominal CT with its 13-organ BTCV label map.

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

    Returns:
        (image in HU int16 [X, Y, Z], label uint8 [X, Y, Z] with values 0..13, 4x4 voxel-to-world affine).

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
    anatomy = _anatomy(rng)
    grid = _grid(rng, anatomy, None if shape is None else tuple(int(n) for n in shape), size, orientation, pelvis)
    img, cavity, free = _body(rng, grid, anatomy)
    _thorax(grid, anatomy, img, free)
    _bowel(rng, grid, anatomy, img, free)
    _pelvis(grid, anatomy, img)
    lab = np.zeros(grid.shape, np.uint8)
    _paint(img, lab, _organs(rng, grid, anatomy), cavity)
    img = gaussian_filter(img, sigma=(0.7, 0.7, 0.5), truncate=3.0)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(anatomy["noise"])
    return np.clip(np.rint(img), -1024, 3071).astype(np.int16), lab, grid.affine


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
) -> Path:
    """Write `cases` phantoms as imagesTr/ and labelsTr/ NIfTI files plus a BTCV-style dataset_0.json.

    Args:
        out_dir: output directory (created if missing).
        cases: number of cases; case i uses the i-th child of SeedSequence(seed), so it does not depend on `cases`.
            With a size preset, the odd-numbered cases reach down into the pelvis, so that training and validation
            cases both have either field of view.
        seed: dataset seed.
        val_fraction: share of the (last) cases listed under "validation"; at least one when cases >= 2.
        shape, size: see `generate_case`.
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
    if cases < 1 or not 0 <= val_fraction < 1:
        raise ValueError(f"need cases >= 1 and 0 <= val_fraction < 1, got {cases} and {val_fraction}")
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
        img, lab, affine = generate_case(child, shape=shape, size=size, pelvis=None if shape else i % 2 == 1)
        entry = {"image": f"imagesTr/{name}.nii.gz", "label": f"labelsTr/{name}.nii.gz"}
        for key, array in (("image", img), ("label", lab)):
            save_nifti(array, affine, out / entry[key])
        entries.append(entry)
        if verbose:
            spacing = ", ".join(f"{s:.2f}" for s in np.abs(np.diag(affine)[:3]))
            print(f"[{i + 1}/{cases}] {name} {'x'.join(map(str, img.shape))} spacing ({spacing}) "
                  f"{''.join(nib.aff2axcodes(affine))}  {time.perf_counter() - start:.1f} s", flush=True)  # fmt: skip
    n_val = 0 if cases < 2 else min(cases - 1, max(1, round(cases * val_fraction)))
    info = {
        "name": "SelfMedHPM synthetic abdomen CT",
        "description": f"Deterministic BTCV-layout phantoms (selfmedhpm_tools.phantom, seed {seed}); not patient data",
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
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    args = parser.parse_args(argv)
    options = dict(val_fraction=args.val_fraction, shape=args.shape, size=args.size, overwrite=args.overwrite)
    try:
        path = generate_dataset(args.out, args.cases, args.seed, **options)
    except (FileExistsError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

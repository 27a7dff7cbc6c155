"""A small simulator of face-on disc galaxies with known truth.

Each galaxy is a Sérsic bulge plus an exponential disc whose light is modulated by logarithmic
spiral arms of a chosen number and winding sense, optionally multiplied by an m = 1 (lopsided)
perturbation ``1 + A1 * cos(phi - phi1)`` (tapered to 0 inside half a disc scale length so the
centre stays the brightest point), convolved with a Gaussian PSF, placed on a sky with Poisson
noise, with optional foreground stars. Deterministic by seed.

Orientation convention (shared with :mod:`galmorph.imaging.io`): display arrays have row 0 at
the top; angles are measured counter-clockwise from +x with y pointing *up* on the display.

* **Z-wise** arms (GZ "clockwise", label ``CW``) wind counter-clockwise going outward;
* **S-wise** arms (GZ "anticlockwise", label ``ACW``) wind clockwise going outward.

A left-right mirror (``np.fliplr``) turns one into the other.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.signal import fftconvolve

from galmorph.catalogue.manifest import assign_z_bin, write_manifest
from galmorph.tasks import TASK_LABEL_COLUMNS

log = logging.getLogger(__name__)

PIXEL_SCALE_ARCSEC = 0.396  # SDSS
ZERO_POINT = 27.5  # counts: m = 27.5 gives 1 count (gain 1)
H0 = 70.0
C_KMS = 299792.458

WINDING_TO_CHIRALITY = {"Z": "CW", "S": "ACW", "none": "other"}


@dataclass
class GalaxyParams:
    """Everything that defines one simulated galaxy (all lengths in pixels)."""

    size: int = 128
    x0: float | None = None  # centre (column), default image centre; may be sub-pixel
    y0: float | None = None  # centre (row from top)
    flux: float = 2.0e5  # total galaxy counts (before PSF)
    disc_scale: float = 10.0  # exponential scale length h
    bulge_fraction: float = 0.15  # B/T
    bulge_reff: float = 3.0
    bulge_n: float = 2.0
    n_arms: int = 2
    winding: str = "Z"  # "Z" | "S" | "none"
    pitch_deg: float = 18.0
    arm_strength: float = 0.6
    arm_phase: float = 0.0
    a1: float = 0.0  # injected m = 1 amplitude
    a1_phase: float = 0.0  # radians
    axis_ratio: float = 1.0  # < 1 squashes the galaxy (for "other" edge-on-ish objects)
    position_angle: float = 0.0
    psf_fwhm: float = 3.0
    sky: float = 100.0  # counts / pixel, left in the image (as in raw SDSS cutouts)
    bias: float = 0.0
    noise: bool = True
    stars: list[tuple[float, float, float]] = field(default_factory=list)  # (x, y, flux)
    colour: bool = False  # also render g/r/i-like channels for an RGB image


def _grid(p: GalaxyParams) -> tuple[np.ndarray, np.ndarray]:
    x0 = (p.size - 1) / 2 if p.x0 is None else p.x0
    y0 = (p.size - 1) / 2 if p.y0 is None else p.y0
    rows, cols = np.mgrid[0 : p.size, 0 : p.size].astype(np.float64)
    dx = cols - x0
    dy = -(rows - y0)  # y up on the display
    if p.axis_ratio != 1.0 or p.position_angle:
        c, s = math.cos(p.position_angle), math.sin(p.position_angle)
        u = c * dx + s * dy
        v = (-s * dx + c * dy) / max(p.axis_ratio, 1e-3)
        dx, dy = u, v
    return dx, dy


def _sersic_b(n: float) -> float:
    return 2 * n - 1 / 3 + 4 / (405 * n) + 46 / (25515 * n * n)


def gaussian_psf(fwhm: float, size: int | None = None) -> np.ndarray:
    sigma = fwhm / 2.3548
    half = int(math.ceil(4 * sigma)) if size is None else size // 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1]
    k = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    return k / k.sum()


def galaxy_components(p: GalaxyParams) -> dict[str, np.ndarray]:
    """Noiseless, un-convolved light of bulge and disc (with arms and m = 1 applied), sum = 1."""
    dx, dy = _grid(p)
    r = np.hypot(dx, dy)
    phi = np.arctan2(dy, dx)
    h = p.disc_scale
    disc = np.exp(-r / h)
    if p.n_arms > 0 and p.winding in ("S", "Z"):
        sense = 1.0 if p.winding == "Z" else -1.0
        k = 1.0 / math.tan(math.radians(p.pitch_deg))
        arg = p.n_arms * (phi - sense * k * np.log(np.maximum(r, 0.5) / h) - p.arm_phase)
        # narrow arms: (1+cos)/2 raised to a power, re-centred to mean zero
        pattern = ((1 + np.cos(arg)) / 2) ** 3
        pattern = pattern / 0.3125 - 1.0  # mean of ((1+cos)/2)^3 is 5/16
        taper = 1 - np.exp(-((r / (1.2 * h)) ** 2))
        disc = disc * np.clip(1 + p.arm_strength * taper * pattern, 0, None)
    b = _sersic_b(p.bulge_n)
    bulge = np.exp(-b * ((np.maximum(r, 1e-3) / p.bulge_reff) ** (1 / p.bulge_n) - 1))
    disc /= disc.sum()
    bulge /= bulge.sum()
    comps = {"disc": (1 - p.bulge_fraction) * disc, "bulge": p.bulge_fraction * bulge}
    if p.a1:
        r_true = np.hypot(*_grid(GalaxyParams(size=p.size, x0=p.x0, y0=p.y0)))
        taper = 1 - np.exp(-((r_true / (0.5 * h)) ** 2))
        mod = 1 + p.a1 * taper * np.cos(phi - p.a1_phase)
        comps = {k: v * mod for k, v in comps.items()}
    return comps


def half_light_radii(p: GalaxyParams) -> tuple[float, float]:
    """R50 and R90 (pixels) of the symmetric, noiseless, PSF-convolved model (circular apertures)."""
    q = GalaxyParams(**{**asdict(p), "a1": 0.0, "n_arms": 0, "stars": [], "noise": False,
                        "size": max(p.size, int(12 * p.disc_scale) | 1), "x0": None, "y0": None})
    img = sum(galaxy_components(q).values())
    img = fftconvolve(img, gaussian_psf(q.psf_fwhm), mode="same")
    c = (q.size - 1) / 2
    yy, xx = np.mgrid[0 : q.size, 0 : q.size]
    r = np.hypot(xx - c, yy - c).ravel()
    order = np.argsort(r)
    cum = np.cumsum(img.ravel()[order])
    cum /= cum[-1]
    rs = r[order]
    return float(np.interp(0.5, cum, rs)), float(np.interp(0.9, cum, rs))


def render_galaxy(p: GalaxyParams, rng: np.random.Generator | int | None = None) -> dict[str, np.ndarray]:
    """Simulate one galaxy. Returns ``{"r": counts image (display orientation), "model": noiseless,
    "rgb": 0..1 colour rendering (if ``colour``)}``."""
    rng = np.random.default_rng(rng)
    comps = galaxy_components(p)
    psf = gaussian_psf(p.psf_fwhm)
    model = fftconvolve(comps["disc"] + comps["bulge"], psf, mode="same") * p.flux
    for sx, sy, sf in p.stars:
        star = np.zeros((p.size, p.size))
        ix, iy = int(round(sx)), int(round(sy))
        if 0 <= ix < p.size and 0 <= iy < p.size:
            star[iy, ix] = sf
            model += fftconvolve(star, psf, mode="same")
    model = np.clip(model, 0, None)
    expected = model + p.sky
    img = rng.poisson(expected).astype(np.float64) if p.noise else expected.copy()
    out = {"r": img + p.bias, "model": model}
    if p.colour:
        # bulge redder, arms (disc) bluer: channel weights (R=i, G=r, B=g)
        chans = []
        for wb, wd in ((1.3, 0.9), (1.0, 1.0), (0.6, 1.15)):
            m = fftconvolve(wb * comps["bulge"] + wd * comps["disc"], psf, mode="same") * p.flux
            m = m + (rng.normal(0, math.sqrt(p.sky), m.shape) if p.noise else 0)
            chans.append(m)
        rgb = np.stack(chans, axis=-1)
        scale = np.percentile(rgb, 99.7)
        out["rgb"] = np.clip(np.arcsinh(8 * rgb / max(scale, 1e-9)) / np.arcsinh(8), 0, 1).astype(np.float32)
    return out


def grey_rendering(img: np.ndarray, sky: float) -> np.ndarray:
    x = img - sky
    scale = max(np.percentile(x, 99.7), 1e-9)
    return np.clip(np.arcsinh(8 * x / scale) / np.arcsinh(8), 0, 1).astype(np.float32)


# --------------------------------------------------------------------------------------------
# physical draws
# --------------------------------------------------------------------------------------------
def angular_diameter_distance_mpc(z: float) -> float:
    """Low-z approximation (fine for z <= 0.2 here)."""
    return C_KMS * z / H0 / (1 + z) ** 2 * (1 + z)  # D_L/(1+z)^2 with D_L ~ cz/H0 (1+z)


def distance_modulus(z: float) -> float:
    d_l = C_KMS * z / H0 * (1 + z)
    return 5 * math.log10(d_l * 1e6 / 10)


def make_wcs(ra: float, dec: float, size: int, pixel_scale: float = PIXEL_SCALE_ARCSEC):
    """TAN WCS for the FITS orientation (row 0 at the bottom), north up, east left."""
    from astropy.wcs import WCS

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra, dec]
    w.wcs.crpix = [(size + 1) / 2, (size + 1) / 2]
    w.wcs.cd = np.array([[-pixel_scale / 3600, 0], [0, pixel_scale / 3600]])
    w.wcs.radesys = "ICRS"
    return w


def arms_label(n_arms: int) -> str:
    return "5+" if n_arms >= 5 else str(n_arms)


def draw_params(rng: np.random.Generator, task: str | None, size: int, z_range=(0.01, 0.1),
                klass: str | None = None) -> tuple[GalaxyParams, dict]:
    """Random physically-plausible parameters; ``klass`` forces the task label."""
    z = float(rng.uniform(*z_range))
    kpc_per_arcsec = angular_diameter_distance_mpc(z) * 1e3 * math.pi / (180 * 3600)
    h_kpc = float(rng.uniform(2.5, 4.5))
    h_px = float(np.clip(h_kpc / kpc_per_arcsec / PIXEL_SCALE_ARCSEC, 3.0, size / 9))
    abs_mag = float(rng.normal(-21.3, 0.6))
    mag_r = abs_mag + distance_modulus(z)
    flux = 10 ** (-0.4 * (mag_r - ZERO_POINT))
    winding = str(rng.choice(["S", "Z"]))
    n_arms = int(rng.choice([1, 2, 2, 3, 3, 4, 5, 6]))
    a1 = float(rng.uniform(0.0, 0.06))
    axis_ratio = 1.0
    other_kind = "spiral"
    if task == "chirality":
        klass = klass or str(rng.choice(["CW", "ACW", "other"]))
        if klass == "other":
            n_arms, winding = 0, "none"
            other_kind = str(rng.choice(["smooth", "edge_on"]))
            axis_ratio = 1.0 if other_kind == "smooth" else float(rng.uniform(0.2, 0.4))
        else:
            winding = "Z" if klass == "CW" else "S"
            n_arms = int(rng.choice([2, 2, 3, 4]))
    elif task == "arms":
        klass = klass or str(rng.choice(["1", "2", "3", "4", "5+"]))
        n_arms = 5 + int(rng.integers(0, 2)) if klass == "5+" else int(klass)
    elif task == "lopsided":
        klass = klass or str(rng.choice(["symmetric", "lopsided"]))
        a1 = float(rng.uniform(0.15, 0.3)) if klass == "lopsided" else float(rng.uniform(0.0, 0.05))
        n_arms = int(rng.choice([2, 2, 3, 4]))
    p = GalaxyParams(
        size=size,
        x0=(size - 1) / 2 + float(rng.uniform(-0.5, 0.5)),
        y0=(size - 1) / 2 + float(rng.uniform(-0.5, 0.5)),
        flux=flux,
        disc_scale=h_px,
        bulge_fraction=float(rng.uniform(0.05, 0.3)) if other_kind != "smooth" else 1.0,
        bulge_reff=max(1.0, 0.35 * h_px) if other_kind != "smooth" else 1.2 * h_px,
        bulge_n=float(rng.uniform(1.5, 3.0)) if other_kind != "smooth" else 4.0,
        n_arms=n_arms,
        winding=winding,
        pitch_deg=float(rng.uniform(12, 28)),
        arm_strength=float(rng.uniform(0.6, 0.9)),
        arm_phase=float(rng.uniform(0, 2 * math.pi)),
        a1=a1,
        a1_phase=float(rng.uniform(0, 2 * math.pi)),
        axis_ratio=axis_ratio,
        position_angle=float(rng.uniform(0, math.pi)),
        psf_fwhm=float(rng.uniform(2.5, 4.0)),
        sky=100.0,
        colour=True,
    )
    meta = {"z": z, "mag_r": mag_r, "mag_g": mag_r + float(rng.normal(0.6, 0.1)), "abs_mag_r": abs_mag,
            "kind": other_kind}
    return p, meta


def simulate_dataset(
    out_dir: str | Path,
    n: int,
    seed: int = 0,
    task: str | None = None,
    size: int = 128,
    z_range: tuple[float, float] = (0.01, 0.1),
    survey: str = "sim",
    write_fits: bool = True,
    balanced: bool = True,
    ra_center: float = 180.0,
    dec_center: float = 0.0,
    progress: bool = True,
) -> dict[str, Path]:
    """Simulate ``n`` galaxies into ``out_dir``: ``fits/``, ``png/`` (greyscale r), ``jpg/`` (colour),
    ``truth.parquet`` / ``truth.csv`` (the truth table) and ``manifest.parquet`` (task labels)."""
    from astropy.io import fits
    from tqdm import tqdm

    from galmorph.imaging.io import save_raster
    from galmorph.tasks import get_task

    out = Path(out_dir)
    for sub in ("fits", "png", "jpg"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    classes = get_task(task).classes if task else None
    if task == "arms":
        classes = ("1", "2", "3", "4", "5+")
    rows = []
    for i in tqdm(range(n), desc=f"simulate {task or 'galaxies'}", disable=not progress):
        klass = classes[i % len(classes)] if (classes and balanced) else None
        gseed = int(rng.integers(0, 2**31 - 1))
        grng = np.random.default_rng(gseed)
        p, meta = draw_params(grng, task, size, z_range, klass)
        ra = float((ra_center + grng.uniform(-5, 5)) % 360)
        dec = float(np.clip(dec_center + grng.uniform(-5, 5), -89, 89))
        # a quarter of the galaxies get a foreground star away from the centre
        if grng.uniform() < 0.25:
            ang = grng.uniform(0, 2 * math.pi)
            rad = grng.uniform(0.3, 0.45) * size
            p.stars = [((size - 1) / 2 + rad * math.cos(ang), (size - 1) / 2 + rad * math.sin(ang),
                        float(p.flux * grng.uniform(0.02, 0.1)))]
        imgs = render_galaxy(p, grng)
        r50, r90 = half_light_radii(p)
        oid = f"sim-{seed}-{i:06d}"
        fits_path = out / "fits" / f"{oid}_r.fits"
        png_path = out / "png" / f"{oid}.png"
        jpg_path = out / "jpg" / f"{oid}.jpg"
        if write_fits:
            hdr = make_wcs(ra, dec, size).to_header()
            hdr["BUNIT"] = "counts"
            hdr["SKY"] = (p.sky, "sky level left in the image [counts/px]")
            hdr["PSFFWHM"] = (p.psf_fwhm, "Gaussian PSF FWHM [px]")
            hdr["OBJID"] = oid
            fits.PrimaryHDU(np.flipud(imgs["r"]).astype(np.float32), header=hdr).writeto(fits_path, overwrite=True)
        save_raster(grey_rendering(imgs["r"], p.sky), png_path)
        save_raster(imgs["rgb"], jpg_path, quality=92)
        chir = WINDING_TO_CHIRALITY[p.winding if p.n_arms > 0 else "none"]
        rows.append({
            "object_id": oid, "survey": survey, "ra": ra, "dec": dec, "z": meta["z"],
            "mag_g": meta["mag_g"], "mag_r": meta["mag_r"],
            "r50_px": r50, "r90_px": r90,
            "r50_arcsec": r50 * PIXEL_SCALE_ARCSEC, "r90_arcsec": r90 * PIXEL_SCALE_ARCSEC,
            "x0": p.x0, "y0": p.y0, "n_arms": p.n_arms, "winding": p.winding if p.n_arms > 0 else "none",
            "chirality": chir, "a1_injected": p.a1, "a1_phase": p.a1_phase, "pitch_deg": p.pitch_deg,
            "disc_scale_px": p.disc_scale, "bulge_fraction": p.bulge_fraction, "psf_fwhm": p.psf_fwhm,
            "sky": p.sky, "flux": p.flux, "n_stars": len(p.stars), "kind": meta["kind"], "seed": gseed,
            "label_lopsided": "lopsided" if p.a1 >= 0.1 else "symmetric",
            "label_arms": arms_label(p.n_arms) if p.n_arms > 0 else "cant_tell",
            "label_chirality": chir,
            "fits_path": str(fits_path.resolve()), "png_path": str(png_path.resolve()),
            "jpg_path": str(jpg_path.resolve()),
            "params": json.dumps({k: v for k, v in asdict(p).items() if k != "stars"}),
        })
    truth = pd.DataFrame(rows)
    truth.to_parquet(out / "truth.parquet", index=False)
    truth.drop(columns=["params"]).to_csv(out / "truth.csv", index=False)
    man = truth.copy()
    man["z_bin"] = assign_z_bin(man["z"])
    man["image_uri"] = man["jpg_path"]
    man["task"] = task
    man["label"] = man[TASK_LABEL_COLUMNS[task]] if task else None
    man["provenance"] = [f"galmorph.simulate seed={seed} index={i} galaxy_seed={s}" for i, s in
                         enumerate(man["seed"])]
    man = man.drop(columns=["params"])
    write_manifest(man, out / "manifest.parquet", kind=f"sim-{task or 'all'}",
                   extra_meta={"seed": seed, "n": n, "task": task})
    log.info("simulated %d galaxies into %s", n, out)
    return {"manifest": out / "manifest.parquet", "truth": out / "truth.parquet", "dir": out}

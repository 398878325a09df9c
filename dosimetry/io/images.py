"""Reading and writing images (NIfTI, MHD/MHA, NRRD) as ``SimpleITK.Image``.

Images cross module boundaries as ``SimpleITK.Image`` so that spacing (mm), origin (mm) and
direction cosines travel with the voxels. numpy arrays taken from them are indexed (z, y, x).
Headers are read before voxels so an image whose declared size would not fit in memory is refused
before anything is allocated; writes are atomic.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from dosimetry.errors import GeometryError, InputError
from dosimetry.io.atomic import atomic_path

#: File name endings read and written by :func:`read_image` / :func:`write_image`.
IMAGE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")

_BYTES_PER_PIXEL = {
    "8-bit unsigned integer": 1,
    "8-bit signed integer": 1,
    "16-bit unsigned integer": 2,
    "16-bit signed integer": 2,
    "32-bit unsigned integer": 4,
    "32-bit signed integer": 4,
    "64-bit unsigned integer": 8,
    "64-bit signed integer": 8,
    "32-bit float": 4,
    "64-bit float": 8,
}


def memory_limit_bytes() -> int:
    """Largest image buffer rptdose agrees to allocate, in bytes.

    Half of the physical memory, or ``RPTDOSE_MAX_IMAGE_BYTES`` when that environment variable
    is set (useful on shared machines).
    """
    env = os.environ.get("RPTDOSE_MAX_IMAGE_BYTES")
    if env:
        try:
            return int(float(env))
        except ValueError as exc:
            raise InputError(f"RPTDOSE_MAX_IMAGE_BYTES={env!r} is not a number of bytes") from exc
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        total = 8 * 2**30
    return int(total // 2)


def check_allocation(n_voxels: int, bytes_per_voxel: int, what: str) -> None:
    """Refuse an allocation of ``n_voxels × bytes_per_voxel`` that exceeds the memory limit.

    Raises
    ------
    InputError
        Naming ``what`` (usually the file), the declared size and the limit.
    """
    need = int(n_voxels) * int(bytes_per_voxel)
    limit = memory_limit_bytes()
    if n_voxels <= 0:
        raise InputError(f"{what}: declared image size has {n_voxels} voxels")
    if need > limit:
        raise InputError(
            f"{what}: declared image needs {need / 2**30:.1f} GiB ({n_voxels} voxels × "
            f"{bytes_per_voxel} B), more than the {limit / 2**30:.1f} GiB limit; refusing to "
            "allocate (set RPTDOSE_MAX_IMAGE_BYTES to raise the limit)"
        )


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in IMAGE_SUFFIXES:
        if name.endswith(s):
            return s
    return path.suffix.lower()


def read_image(
    path: str | os.PathLike[str], pixel_type: int | None = sitk.sitkFloat32
) -> sitk.Image:
    """Read a NIfTI/MHD/MHA/NRRD image.

    Parameters
    ----------
    path : path
        Image file. For ``.mhd`` the raw file named inside it must be beside it.
    pixel_type : int or None
        SimpleITK pixel type to cast to (default float32); ``None`` keeps the file's type.

    Returns
    -------
    SimpleITK.Image
        3D image with geometry in mm.

    Raises
    ------
    InputError
        File missing, unknown format, unreadable, not 3D, or too large to allocate.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: image file not found")
    if _suffix(path) not in IMAGE_SUFFIXES:
        raise InputError(
            f"{path}: unknown image format {path.suffix!r}; "
            f"expected one of {', '.join(IMAGE_SUFFIXES)}"
        )
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read image header ({_first_line(exc)})") from exc
    size = reader.GetSize()
    if len(size) != 3:
        raise InputError(
            f"{path}: expected a 3D image, the header declares {len(size)}D size {size}"
        )
    n_comp = reader.GetNumberOfComponents()
    bpp = _BYTES_PER_PIXEL.get(sitk.GetPixelIDValueAsString(reader.GetPixelID()), 8)
    check_allocation(int(np.prod(size, dtype=np.int64)) * n_comp, max(bpp, 4), str(path))
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read image voxels ({_first_line(exc)})") from exc
    if pixel_type is not None and img.GetPixelID() != pixel_type:
        img = sitk.Cast(img, pixel_type)
    return img


def write_image(image: sitk.Image, path: str | os.PathLike[str], compress: bool = True) -> Path:
    """Write ``image`` atomically to ``path`` (format chosen by the suffix) and return the path.

    For ``.mhd`` the raw data file is written beside it, also through a temporary name.
    """
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in IMAGE_SUFFIXES:
        raise InputError(
            f"{path}: unknown image format {path.suffix!r}; "
            f"expected one of {', '.join(IMAGE_SUFFIXES)}"
        )
    if suffix == ".mhd":
        # MetaImage header + raw pair: write both to a private folder, then move the raw first
        # and the header last, so a complete header always points at complete data.
        path.parent.mkdir(parents=True, exist_ok=True)
        raw_name = path.name[: -len(".mhd")] + (".zraw" if compress else ".raw")
        tmp_dir = path.parent / f".{path.name}.part"
        tmp_dir.mkdir(exist_ok=True)
        try:
            sitk.WriteImage(image, str(tmp_dir / path.name), compress)
            os.replace(tmp_dir / raw_name, path.parent / raw_name)
            os.replace(tmp_dir / path.name, path)
        finally:
            for p in tmp_dir.glob("*"):
                p.unlink()
            tmp_dir.rmdir()
        return path
    with atomic_path(path, suffix=suffix) as tmp:
        sitk.WriteImage(image, str(tmp), compress)
    return path


def physical_bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned bounding box (mm, x/y/z) of the image's voxel volume in patient space.

    The box covers the outer faces of the edge voxels (centre ± half a voxel), so two images that
    touch face to face are seen as adjacent, not overlapping.
    """
    size = np.array(image.GetSize())
    corners = []
    for i in (0, 1):
        for j in (0, 1):
            for k in (0, 1):
                idx = np.array([i, j, k]) * (size - 1) + (np.array([i, j, k]) * 2 - 1) * 0.5
                corners.append(image.TransformContinuousIndexToPhysicalPoint(idx.tolist()))
    c = np.asarray(corners)
    return c.min(axis=0), c.max(axis=0)


def overlap_fraction(a: sitk.Image, b: sitk.Image) -> float:
    """Fraction of ``a``'s bounding box volume that lies inside ``b``'s bounding box (0–1)."""
    alo, ahi = physical_bounds(a)
    blo, bhi = physical_bounds(b)
    inter = np.clip(np.minimum(ahi, bhi) - np.maximum(alo, blo), 0, None)
    vol_a = float(np.prod(ahi - alo))
    return float(np.prod(inter)) / vol_a if vol_a > 0 else 0.0


def require_same_grid(
    a: sitk.Image, b: sitk.Image, what_a: str, what_b: str, tol_mm: float = 1e-3
) -> None:
    """Raise :class:`GeometryError` unless ``a`` and ``b`` share the same grid.

    Size, spacing, origin and direction are compared (``tol_mm`` for lengths and cosines).
    """
    if a.GetSize() != b.GetSize():
        raise GeometryError(f"{what_a} has size {a.GetSize()}, {what_b} has {b.GetSize()}")
    for name, va, vb in (
        ("spacing", a.GetSpacing(), b.GetSpacing()),
        ("origin", a.GetOrigin(), b.GetOrigin()),
        ("direction", a.GetDirection(), b.GetDirection()),
    ):
        if not np.allclose(va, vb, atol=tol_mm):
            raise GeometryError(
                f"{what_a} {name} {tuple(round(v, 4) for v in va)} differs from "
                f"{what_b} {name} {tuple(round(v, 4) for v in vb)}"
            )


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # ITK messages start with the source file and line; the explanation is last.
    return lines[-1] if lines else type(exc).__name__

import io

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from shared import io as sio


def _png(array, mode=None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def test_reads_8_and_16_bit_gray_and_rgb_in_several_formats(tmp_path):
    gray8 = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_allclose(sio.decode_image(_png(gray8)), gray8 / 255.0, atol=1e-7)
    gray16 = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)
    np.testing.assert_allclose(sio.decode_image(_png(gray16)), gray16 / 65535.0, atol=1e-7)
    rgb = np.stack([gray8, gray8[::-1], gray8.T], axis=-1)
    out = sio.decode_image(_png(rgb))
    assert out.shape == (16, 16, 3) and out.dtype == np.float32
    for fmt in ("BMP", "TIFF"):
        path = tmp_path / f"x.{fmt.lower()}"
        Image.fromarray(gray8).save(path, format=fmt)
        np.testing.assert_allclose(sio.read_image(path), gray8 / 255.0, atol=1e-7)
    Image.fromarray(rgb).save(tmp_path / "x.jpg", quality=95)
    assert sio.read_image(tmp_path / "x.jpg").shape == (16, 16, 3)


def test_masks_accept_01_0255_and_bool():
    m = np.zeros((8, 8), np.uint8)
    m[2:5, 3:6] = 1
    expected = m.astype(bool)
    np.testing.assert_array_equal(sio.decode_mask(_png(m)), expected)
    np.testing.assert_array_equal(sio.decode_mask(_png(m * 255)), expected)
    np.testing.assert_array_equal(sio.decode_mask(_png(expected)), expected)
    np.testing.assert_array_equal(sio.decode_mask(sio.encode_png(expected)), expected)
    # a 16-bit mask saved as 0/65535 (what many tools write) is as binary as 0/255
    np.testing.assert_array_equal(sio.decode_mask(_png(m.astype(np.uint16) * 65535)), expected)


def test_unreadable_bytes():
    with pytest.raises(sio.UnreadableImageError, match="bad.png: not a readable image") as err:
        sio.decode_image(b"\x89PNG but not really", "bad.png")
    assert "BytesIO" not in str(err.value)  # PIL's text named an in-memory object's address


def test_label_map_and_lossy_mask_get_their_own_advice():
    labels = np.zeros((8, 8), np.uint8)
    labels[1:3, 1:3], labels[5:7, 5:7] = 1, 2
    with pytest.raises(sio.NonBinaryMaskError, match=r"values 0, 1, 2.*a label map: save the lesion"):
        sio.decode_mask(_png(labels), "seg.png")
    lossy = (labels > 0).astype(np.uint8) * 255
    lossy[0, 0], lossy[4, 4] = 3, 252  # JPEG ringing
    with pytest.raises(sio.NonBinaryMaskError, match="re-save it losslessly"):
        sio.decode_mask(_png(lossy), "m.jpg")
    with pytest.raises(sio.UnreadableImageError, match="empty"):
        sio.decode_mask(b"", "m.png")


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(sio.UnreadableImageError, match="nope.png: no such file"):
        sio.read_image(tmp_path / "nope.png")


def test_size_mismatch():
    with pytest.raises(sio.SizeMismatchError, match="mask is 20x10 but image is 16x16"):
        sio.check_pair(np.zeros((16, 16)), np.zeros((10, 20), bool), "case1")


def test_non_binary_mask_is_refused_not_thresholded():
    m = np.zeros((8, 8), np.uint8)
    m[1, 1], m[2, 2] = 128, 255
    with pytest.raises(sio.NonBinaryMaskError, match="not binary.*128"):
        sio.decode_mask(_png(m), "soft.png")
    colour = np.zeros((8, 8, 3), np.uint8)
    colour[1, 1] = (255, 0, 0)
    with pytest.raises(sio.NonBinaryMaskError, match="colour"):
        sio.decode_mask(_png(colour))


def test_empty_mask_when_lesion_required():
    empty = _png(np.zeros((8, 8), np.uint8))
    assert not sio.decode_mask(empty).any()
    with pytest.raises(sio.EmptyMaskError, match="lesion is required"):
        sio.decode_mask(empty, "e.png", require_lesion=True)


def test_too_many_pixels_refused_before_decoding():
    data = _png(np.zeros((100, 120), np.uint8))
    with pytest.raises(sio.ImageTooLargeError, match="120x100 = 12000 pixels exceeds"):
        sio.decode_image(data, "big.png", max_pixels=10_000)
    with pytest.raises(sio.ImageTooLargeError):
        sio.decode_mask(data, "big.png", max_pixels=10_000)


def test_all_input_errors_are_value_errors():
    for cls in (sio.UnreadableImageError, sio.SizeMismatchError, sio.NonBinaryMaskError,
                sio.EmptyMaskError, sio.ImageTooLargeError):
        assert issubclass(cls, sio.InputError) and issubclass(cls, ValueError)


def test_png_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    sio.write_png(tmp_path / "a" / "x.png", u8 / 255.0)
    np.testing.assert_array_equal(np.rint(sio.read_image(tmp_path / "a" / "x.png") * 255), u8)


def test_nifti_non_finite_voxels_are_background_with_a_warning(tmp_path):
    """One NaN voxel made every slice NaN (the percentile window turned NaN); now it reads as
    the volume's minimum, the rest of the volume as without it, and a warning counts it."""
    vol = np.zeros((6, 5, 4), np.float32)
    vol[..., 2] = np.linspace(0, 200, 30).reshape(6, 5)
    clean = vol.copy()
    vol[0, 0, 1] = np.nan
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "n.nii.gz")
    nib.save(nib.Nifti1Image(clean, np.eye(4)), tmp_path / "c.nii.gz")
    with pytest.warns(UserWarning, match="1 non-finite voxel"):
        slices = sio.read_nifti_slices(tmp_path / "n.nii.gz")
    expected = sio.read_nifti_slices(tmp_path / "c.nii.gz")
    for got, want in zip(slices, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    nib.save(nib.Nifti1Image(np.full((3, 3, 2), np.nan, np.float32), np.eye(4)), tmp_path / "a.nii.gz")
    with pytest.raises(sio.NonFiniteImageError, match="no finite voxel"):
        sio.read_nifti_slices(tmp_path / "a.nii.gz")


def test_nifti_slices_with_window(tmp_path):
    vol = np.zeros((6, 5, 4), np.float32)
    vol[..., 2] = np.linspace(0, 200, 30).reshape(6, 5)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "v.nii.gz")
    slices = sio.read_nifti_slices(tmp_path / "v.nii.gz", axis=2, window=(100.0, 200.0))
    assert len(slices) == 4 and slices[2].shape == (5, 6)  # rotated to display orientation
    np.testing.assert_allclose(slices[2], np.rot90(np.clip(vol[..., 2] / 200.0, 0, 1)), atol=1e-6)
    with pytest.raises(sio.UnreadableImageError, match="not a readable NIfTI"):
        (tmp_path / "bad.nii").write_bytes(b"garbage")
        sio.read_nifti_slices(tmp_path / "bad.nii")


def test_dicom_uses_header_window_and_rescale():
    import pydicom
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    frames = sio.read_dicom(path, window=(40.0, 400.0))
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(frames[0], np.clip((hu - (40 - 200)) / 400.0, 0, 1), atol=1e-6)
    assert len(frames) == 1 and frames[0].shape == (128, 128)


def _tiff(array) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, array)
    return buf.getvalue()


def test_16_bit_and_signed_images_are_min_max_normalised_so_an_affine_copy_reads_the_same():
    """A CT slice stored as 900..1300 in a 16-bit PNG read as 0.014..0.020 under a fixed /65535
    (black to the CLIP); a HU TIFF lost every negative value to 0. Both now read as the same
    image as their full-range copy."""
    base = (np.arange(400, dtype=np.int64).reshape(20, 20) * 7919) % 401  # 0..400, scrambled
    narrow = (base + 900).astype(np.uint16)
    full = (base * (65535 // 400)).astype(np.uint16)
    hu = (base - 200).astype(np.int16)
    want = base / 400.0
    for data in (_png(narrow), _png(full), _tiff(hu), _tiff(narrow)):
        np.testing.assert_allclose(sio.decode_image(data), want, atol=1e-6)
    assert not sio.decode_image(_png(np.full((4, 4), 1000, np.uint16))).any()  # constant -> 0


def test_multi_page_tiff_is_refused_in_one_line():
    stack = np.zeros((5, 8, 8), np.uint16)  # (3, H, W) would read as planar RGB
    with pytest.raises(sio.UnreadableImageError, match=r"s\.tif: a multi-page TIFF \(5 pages\)"):
        sio.decode_image(_tiff(stack), "s.tif")
    with pytest.raises(sio.UnreadableImageError, match="multi-page"):
        sio.decode_mask(_tiff(np.zeros((5, 8, 8), np.uint8)), "m.tif")  # (3, H, W) reads as RGB


def test_tifffile_bool_mask_reads_as_stored_and_an_alpha_channel_mask_is_used():
    """tifffile writes bool masks as 1-bit MINISWHITE, which PIL shows inverted; a mask drawn in
    an RGBA file's alpha channel over flat colour was read as empty."""
    m = np.zeros((20, 30), bool)
    m[5:9, 10:20] = True
    np.testing.assert_array_equal(sio.decode_mask(_tiff(m)), m)
    np.testing.assert_array_equal(sio.decode_mask(_tiff(m.astype(np.uint8) * 255)), m)
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[..., 3] = m * 255
    np.testing.assert_array_equal(sio.decode_mask(_png(rgba)), m)
    rgba[..., :3] = 200  # flat grey, opaque lesion: still the alpha
    np.testing.assert_array_equal(sio.decode_mask(_png(rgba)), m)


def test_nifti_label_volume_reads_as_masks_aligned_with_the_image_slices(tmp_path):
    """read_nifti_slices windowed a 0/1 label volume into 0/0.5 (refused as non-binary later);
    the mask reader keeps it binary and orients each slice as the image reader does."""
    rng = np.random.default_rng(0)
    image = rng.random((6, 5, 3)).astype(np.float32)
    labels = np.zeros((6, 5, 3), np.uint8)
    labels[1:3, 2:4, 1] = 1
    nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(labels, np.eye(4)), tmp_path / "seg.nii.gz")
    masks = sio.read_nifti_mask_slices(tmp_path / "seg.nii.gz")
    slices = sio.read_nifti_slices(tmp_path / "img.nii.gz")
    assert len(masks) == len(slices) == 3 and masks[1].dtype == bool
    assert masks[1].shape == slices[1].shape and masks[1].sum() == 4 and not masks[0].any()
    np.testing.assert_array_equal(masks[1], np.rot90(labels[:, :, 1] == 1))
    labels[0, 0, 0] = 2  # a second label (BraTS-style): which one is the lesion is not guessed
    nib.save(nib.Nifti1Image(labels, np.eye(4)), tmp_path / "multi.nii.gz")
    with pytest.raises(sio.NonBinaryMaskError, match="values 0, 1, 2"):
        sio.read_nifti_mask_slices(tmp_path / "multi.nii.gz")

"""End-to-end WADO-RS rendered and thumbnail resources (PS3.18 8.3.5, 8.3.6).

Real images from pydicom's test files and pydicom-data go in through STOW;
what comes back is decoded with Pillow and compared with what pydicom computes
from the same pixels: windowing after the modality LUT, MONOCHROME1 inversion,
palette colour, YBR to RGB, frame selection, viewport and quality.
"""
import copy
import io

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.pixels import apply_color_lut, pixel_array
from pydicom.uid import generate_uid

pytestmark = pytest.mark.filterwarnings("ignore")

PROBLEM_JSON = "application/problem+json"
TIMEOUT = 60
FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG"}


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------

def load(path) -> pydicom.Dataset:
    ds = pydicom.dcmread(str(path), force=True)
    if "TransferSyntaxUID" not in getattr(ds, "file_meta", {}):
        # files without a Part 10 header (OT-PAL-8-face.dcm): give them one
        ds.file_meta = pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = (pydicom.uid.ImplicitVRLittleEndian if ds.is_implicit_VR
                                          else pydicom.uid.ExplicitVRLittleEndian)
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        with io.BytesIO() as buf:
            pydicom.dcmwrite(buf, ds, enforce_file_format=True)
            ds = pydicom.dcmread(io.BytesIO(buf.getvalue()))
    return ds


def renew(ds, study, series=None, **attrs):
    ds = copy.deepcopy(ds)
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series or generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for key, value in attrs.items():
        setattr(ds, key, value)
    return ds


def media_type(resp) -> str:
    return resp.headers.get("Content-Type", "").split(";")[0].strip().lower()


class Item:
    def __init__(self, ds):
        self.ds = ds
        self.study, self.series, self.sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID

    def url(self, server):
        return f"{server.dicomweb_url}/studies/{self.study}/series/{self.series}/instances/{self.sop}"


def fetch(url, accept="image/jpeg", params=None):
    resp = requests.get(url, headers={"Accept": accept}, params=params, timeout=TIMEOUT)
    assert resp.status_code == 200, f"{url} {params}: {resp.status_code} {resp.text[:300]}"
    assert media_type(resp) == accept, resp.headers.get("Content-Type")
    img = Image.open(io.BytesIO(resp.content))
    img.load()
    assert img.format == FORMATS[accept]
    return img, resp


def render(server, item, suffix="/rendered", accept="image/jpeg", params=None):
    return fetch(item.url(server) + suffix, accept, params)[0]


def gray(img) -> np.ndarray:
    return np.asarray(img.convert("L"), dtype=np.float64)


def rgb(img) -> np.ndarray:
    return np.asarray(img.convert("RGB"), dtype=np.float64)


def corr(a, b) -> float:
    return float(np.corrcoef(np.asarray(a, float).ravel(), np.asarray(b, float).ravel())[0, 1])


def resized(array, size) -> np.ndarray:
    """`array` (2-D) resampled to PIL `size` (w, h)."""
    return np.asarray(Image.fromarray(np.asarray(array, np.float32), mode="F").resize(size, Image.BILINEAR))


def assert_not_blank(img):
    a = gray(img)
    assert a.max() > 40, "image is (nearly) black"
    assert a.std() > 5, f"image is (nearly) uniform: std {a.std():.2f}"


def assert_fits(img, width, height, source_w, source_h):
    """Viewport honoured: exactly the viewport, or the source scaled to fit it, aspect kept."""
    w, h = img.size
    if (w, h) == (width, height):
        return
    scale = min(width / source_w, height / source_h)
    assert abs(w - source_w * scale) <= 1.5 and abs(h - source_h * scale) <= 1.5, \
        f"{img.size} neither the viewport {width}x{height} nor a fit of {source_w}x{source_h}"


def assert_problem(resp, statuses):
    assert resp.status_code in statuses, f"expected {statuses}, got {resp.status_code}: {resp.text[:300]}"
    assert media_type(resp) == PROBLEM_JSON, resp.headers.get("Content-Type")
    assert isinstance(resp.json(), dict)


# --------------------------------------------------------------------------
# corpus
# --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(server):
    return DICOMwebClient(url=server.dicomweb_url)


@pytest.fixture(scope="module")
def corpus(server, client, testfiles, datastore):
    s1, s2 = generate_uid(), generate_uid()
    ct_series = generate_uid()
    cr = load(datastore / "RG1_UNCR.dcm")
    # one patient per study, as a modality would send it
    p1 = dict(PatientName="E2E^RENDER^ONE", PatientID="E2E-RENDER-1", PatientBirthDate="19700101", PatientSex="O")
    p2 = dict(PatientName="E2E^RENDER^TWO", PatientID="E2E-RENDER-2", PatientBirthDate="19800101", PatientSex="O")
    items = {
        # study 1: a CT (2 slices in one series) and an MR series
        "ct": Item(renew(load(datastore / "693_UNCR.dcm"), s1, ct_series, InstanceNumber=1, **p1)),
        "ct2": Item(renew(load(datastore / "693_UNCR.dcm"), s1, ct_series, InstanceNumber=2, **p1)),
        "mr": Item(renew(load(testfiles / "MR_small.dcm"), s1, **p1)),
        # study 2: everything else
        "cr_m1": Item(renew(cr, s2, **p2)),
        "cr_m2": Item(renew(cr, s2, PhotometricInterpretation="MONOCHROME2", **p2)),
        "pal": Item(renew(load(datastore / "OT-PAL-8-face.dcm"), s2, **p2)),
        "ybr": Item(renew(load(datastore / "SC_ybr_full_uncompressed.dcm"), s2, **p2)),
        "ybr_jpeg": Item(renew(load(testfiles / "SC_rgb_jpeg_dcmtk.dcm"), s2, **p2)),
        "us_j2k": Item(renew(load(datastore / "US1_J2KR.dcm"), s2, **p2)),
        "us_cine": Item(renew(load(testfiles / "examples_ybr_color.dcm"), s2, **p2)),
        "emri": Item(renew(load(datastore / "emri_small.dcm"), s2, **p2)),
        "rtplan": Item(renew(load(testfiles / "rtplan.dcm"), s2, **p2)),
    }
    for study in (s1, s2):
        result = client.store_instances([i.ds for i in items.values() if i.study == study])
        assert len(result.get("FailedSOPSequence", [])) == 0
    return items


# --------------------------------------------------------------------------
# CT: windowing
# --------------------------------------------------------------------------

def test_ct_rendered_jpeg(server, corpus):
    img = render(server, corpus["ct"])
    assert img.size == (512, 512)
    assert_not_blank(img)


def test_ct_rendered_png(server, corpus):
    img, resp = fetch(corpus["ct"].url(server) + "/rendered", "image/png")
    assert resp.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert img.size == (512, 512)
    assert_not_blank(img)


def test_ct_default_uses_dataset_window(server, corpus):
    ds = corpus["ct"].ds
    default = gray(render(server, corpus["ct"], accept="image/png"))
    explicit = gray(render(server, corpus["ct"], accept="image/png",
                           params={"window": f"{float(ds.WindowCenter)},{float(ds.WindowWidth)},linear"}))
    assert np.abs(default - explicit).mean() < 1.0


def test_ct_different_windows_differ(server, client, corpus):
    item = corpus["ct"]
    soft = client.retrieve_instance_rendered(item.study, item.series, item.sop, media_types=("image/jpeg",),
                                             params={"window": "40,400,linear"})
    bone = client.retrieve_instance_rendered(item.study, item.series, item.sop, media_types=("image/jpeg",),
                                             params={"window": "500,3000,linear"})
    soft, bone = Image.open(io.BytesIO(soft)), Image.open(io.BytesIO(bone))
    assert soft.size == bone.size == (512, 512)
    assert_not_blank(soft)
    assert_not_blank(bone)
    assert np.abs(gray(soft) - gray(bone)).mean() > 10


def test_ct_window_is_applied_after_modality_lut(server, corpus):
    """window=-600,2 thresholds at -600 HU: HU = stored * slope + intercept, not the stored value."""
    ds = corpus["ct"].ds
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    img = gray(render(server, corpus["ct"], accept="image/png", params={"window": "-600,2,linear"}))
    assert img.shape == hu.shape
    low, high = hu <= -602, hu >= -598
    assert low.sum() > 1000 and high.sum() > 1000
    assert (img[low] <= 5).mean() > 0.99, "air (below -600 HU) must be black"
    assert (img[high] >= 250).mean() > 0.99, "tissue (above -600 HU) must be white"


def test_ct_sigmoid_window_function(server, corpus):
    linear = gray(render(server, corpus["ct"], accept="image/png", params={"window": "40,400,linear"}))
    sigmoid = gray(render(server, corpus["ct"], accept="image/png", params={"window": "40,400,sigmoid"}))
    assert np.abs(linear - sigmoid).mean() > 0.5
    assert corr(linear, sigmoid) > 0.9


def test_ct_viewport(server, client, corpus):
    item = corpus["ct"]
    img = render(server, item, params={"viewport": "128,128"})
    assert img.size == (128, 128)
    assert_not_blank(img)
    data = client.retrieve_instance_rendered(item.study, item.series, item.sop, media_types=("image/png",),
                                             params={"viewport": "256,256", "window": "40,400,linear"})
    assert Image.open(io.BytesIO(data)).size == (256, 256)


def test_jpeg_quality(server, corpus):
    low = fetch(corpus["ct"].url(server) + "/rendered", params={"quality": "10"})[1].content
    high = fetch(corpus["ct"].url(server) + "/rendered", params={"quality": "95"})[1].content
    assert len(low) < len(high) * 0.8, f"quality=10 gave {len(low)} bytes, quality=95 {len(high)}"


# --------------------------------------------------------------------------
# MR, CR MONOCHROME1
# --------------------------------------------------------------------------

def test_mr_rendered_follows_pixels(server, corpus):
    img = render(server, corpus["mr"], accept="image/png")
    assert img.size == (64, 64)
    assert_not_blank(img)
    assert corr(gray(img), corpus["mr"].ds.pixel_array) > 0.8


def test_cr_monochrome1_is_inverted(server, corpus):
    ds = corpus["cr_m1"].ds
    raw = ds.pixel_array
    size = (int(ds.Columns), int(ds.Rows))
    m1 = render(server, corpus["cr_m1"])
    m2 = render(server, corpus["cr_m2"])
    assert m1.size == m2.size == size
    assert_not_blank(m1)
    assert_not_blank(m2)
    assert corr(gray(m2), raw) > 0.5, "MONOCHROME2: high values must render bright"
    assert corr(gray(m1), raw) < -0.5, "MONOCHROME1: low values must render white"
    assert corr(gray(m1), gray(m2)) < -0.9


def test_cr_viewport(server, corpus):
    ds = corpus["cr_m1"].ds
    img = render(server, corpus["cr_m1"], params={"viewport": "400,400"})
    assert_fits(img, 400, 400, int(ds.Columns), int(ds.Rows))
    assert_not_blank(img)


# --------------------------------------------------------------------------
# colour
# --------------------------------------------------------------------------

def test_palette_colour(server, corpus):
    ds = corpus["pal"].ds
    expected = apply_color_lut(ds.pixel_array, ds).astype(np.float64)
    if expected.max() > 255:
        expected = expected / 257.0
    img = render(server, corpus["pal"], accept="image/png")
    assert img.size == (int(ds.Columns), int(ds.Rows))
    got = rgb(img)
    assert np.abs(got[..., 0] - got[..., 2]).mean() > 5, "palette colour rendered as grey"
    assert np.abs(got - expected).mean() < 3


def test_ybr_full_uncompressed(server, corpus, datastore):
    reference = pydicom.dcmread(datastore / "SC_rgb.dcm").pixel_array.astype(np.float64)
    img = render(server, corpus["ybr"], accept="image/png")
    assert img.size == (100, 100)
    assert np.abs(rgb(img) - reference).mean() < 4


def test_ybr_jpeg_baseline(server, corpus, datastore):
    reference = pydicom.dcmread(datastore / "SC_rgb.dcm").pixel_array.astype(np.float64)
    got = rgb(render(server, corpus["ybr_jpeg"], accept="image/png"))
    assert np.abs(got - reference).mean() < 12
    for c in range(3):
        assert corr(got[..., c], reference[..., c]) > 0.9


def test_ybr_rct_jpeg2000(server, corpus, datastore):
    reference = pixel_array(str(datastore / "US1_UNCR.dcm")).astype(np.float64)
    img = render(server, corpus["us_j2k"], accept="image/png")
    assert img.size == (640, 480)
    assert np.abs(rgb(img) - reference).mean() < 2


def test_colour_viewport_keeps_aspect(server, corpus):
    img = render(server, corpus["us_j2k"], params={"viewport": "320,320"})
    assert_fits(img, 320, 320, 640, 480)
    assert_not_blank(img)


# --------------------------------------------------------------------------
# multi-frame
# --------------------------------------------------------------------------

def test_multiframe_mr_frame_5(server, client, corpus):
    item = corpus["emri"]
    frames = item.ds.pixel_array
    data = client.retrieve_instance_frames_rendered(item.study, item.series, item.sop, [5],
                                                    media_types=("image/png",))
    img = gray(Image.open(io.BytesIO(data)))
    assert img.shape == (64, 64)
    scores = [corr(img, frames[i]) for i in range(len(frames))]
    assert int(np.argmax(scores)) == 4, f"frame 5 rendered, best match is frame {int(np.argmax(scores)) + 1}"
    assert scores[4] > 0.9


def test_multiframe_us_frame_5(server, corpus):
    item = corpus["us_cine"]
    f1 = pixel_array(item.ds, index=0).astype(np.float64)
    f5 = pixel_array(item.ds, index=4).astype(np.float64)
    r1 = rgb(render(server, item, suffix="/frames/1/rendered", accept="image/png"))
    r5 = rgb(render(server, item, suffix="/frames/5/rendered", accept="image/png"))
    assert r5.shape == f5.shape == (240, 320, 3)
    assert np.abs(r5 - f5).mean() < 6
    # the decoder's own bias cancels out in the difference between frames
    assert corr(r5 - r1, f5 - f1) > 0.5


# --------------------------------------------------------------------------
# thumbnails
# --------------------------------------------------------------------------

@pytest.mark.parametrize("level", ["study", "series", "instance"])
def test_thumbnail(server, corpus, level):
    ct = corpus["ct"]
    base = f"{server.dicomweb_url}/studies/{ct.study}"
    url = {"study": base, "series": f"{base}/series/{ct.series}", "instance": ct.url(server)}[level] + "/thumbnail"
    img, _ = fetch(url, "image/jpeg")
    assert_not_blank(img)
    assert img.size[0] <= 512 and img.size[1] <= 512
    small, _ = fetch(url, "image/png", params={"viewport": "64,64"})
    assert max(small.size) <= 64 and min(small.size) > 0
    assert_not_blank(small)


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------

def test_rendered_unknown_instance_is_404(server, corpus):
    ct = corpus["ct"]
    url = f"{server.dicomweb_url}/studies/{ct.study}/series/{ct.series}/instances/{generate_uid()}/rendered"
    assert_problem(requests.get(url, headers={"Accept": "image/jpeg"}, timeout=TIMEOUT), {404})
    url = f"{server.dicomweb_url}/studies/{generate_uid()}/thumbnail"
    assert_problem(requests.get(url, headers={"Accept": "image/jpeg"}, timeout=TIMEOUT), {404})


@pytest.mark.parametrize("frame", ["11", "0"])
def test_rendered_frame_out_of_range(server, corpus, frame):
    url = corpus["emri"].url(server) + f"/frames/{frame}/rendered"
    assert_problem(requests.get(url, headers={"Accept": "image/jpeg"}, timeout=TIMEOUT), {400, 404})


@pytest.mark.parametrize("params", [{"window": "abc"}, {"window": "40"}, {"window": "40,0,linear"}, {"window": "40,400,cubic"},
                                    {"viewport": "0,0"}, {"viewport": "x,y"}, {"quality": "500"}])
def test_rendered_bad_parameters_are_400(server, corpus, params):
    resp = requests.get(corpus["ct"].url(server) + "/rendered", params=params, headers={"Accept": "image/jpeg"},
                        timeout=TIMEOUT)
    assert_problem(resp, {400})


def test_rendered_without_pixels_is_client_error(server, corpus):
    resp = requests.get(corpus["rtplan"].url(server) + "/rendered", headers={"Accept": "image/jpeg"},
                        timeout=TIMEOUT)
    assert 400 <= resp.status_code < 500, f"{resp.status_code}: {resp.text[:200]}"
    assert server.alive()


def test_server_still_alive(server):
    assert server.alive()
    assert requests.get(f"{server.http_url}/healthz", timeout=TIMEOUT).status_code == 200

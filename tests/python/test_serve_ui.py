"""The web page (`/ui/`) in a real browser: Debian's chromium, headless, driven through
Debian's chromedriver with selenium (both installed by scripts/setup.sh; nothing is
downloaded). The real `ldct-serve` binary serves a tiny model on 127.0.0.1; the page is
given real CT slices (pydicom / pydicom-data test files) and checked against pydicom,
numpy and the server's own answers.

Screenshots of each run go to the test's temporary folder. With LDCT_UI_DOCS=1 the
first test serves the repository's models/ (the default model) instead of the tiny one
and writes docs/ui-soft-tissue.png and docs/ui-lung.png.
"""

import base64
import io
import os
import shutil
import subprocess
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from conftest import ROOT, hu_of, real_ct_files
from test_serve_support import Server, self_signed_cert, write_tiny_model

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
DOCS = os.environ.get("LDCT_UI_DOCS") == "1"
TOKEN = "ui-" + uuid.uuid4().hex


def _need_browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.fail("chromium and chromium-driver are missing: run `make setup` (scripts/setup.sh installs them)")


def pydicom_test_files() -> Path:
    return Path(pydicom.__file__).resolve().parent / "data" / "test_files"


def ct_series(folder: Path):
    """A 3-slice CT series made from pydicom-data's real 512x512 CT slice (693_UNCI):
    slice 1 as it is, slice 2 mirrored left-right, slice 3 upside down, one new series,
    positions 5 mm apart; file names not in slice order. Returns the paths in slice
    order."""
    src = next(p for p in real_ct_files() if p.name == "693_UNCI.dcm")
    base = pydicom.dcmread(src)
    series_uid = generate_uid(entropy_srcs=["ldct-ui-test-series"])
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, (name, op) in enumerate([("c.dcm", lambda a: a), ("a.dcm", np.fliplr), ("b.dcm", np.flipud)], 1):
        ds = pydicom.dcmread(src)
        arr = np.ascontiguousarray(op(base.pixel_array))
        ds.PixelData = arr.astype(base.pixel_array.dtype).tobytes()
        ds.SeriesInstanceUID = series_uid
        ds.SeriesDescription = "ldct ui test"
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["ldct-ui-test", str(k)])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k
        x, y, z = (float(v) for v in base.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 5.0 * (k - 1)]
        if "SliceLocation" in ds:
            del ds.SliceLocation
        path = folder / name
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def make_driver(downloads: Path, insecure=False):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    _need_browser()
    # Never let selenium fetch a driver or phone home.
    os.environ["SE_OFFLINE"] = "true"
    os.environ["SE_AVOID_STATS"] = "true"
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = downloads.parent / f"profile-{uuid.uuid4().hex[:8]}"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-dev-shm-usage", "--window-size=1500,940", "--force-device-scale-factor=1",
              f"--user-data-dir={profile}"):
        opts.add_argument(a)
    opts.add_experimental_option("prefs", {
        "download.default_directory": str(downloads),
        "download.prompt_for_download": False,
        "profile.default_content_setting_values.automatic_downloads": 1,
    })
    opts.accept_insecure_certs = insecure
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    downloads.mkdir(parents=True, exist_ok=True)
    service = Service(executable_path=CHROMEDRIVER, log_output=str(downloads.parent / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=opts)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.set_script_timeout(60)
    return driver


def wait(driver, js, timeout=60, what=None):
    """Waits until the JavaScript expression is truthy; returns its value."""
    deadline = time.time() + timeout
    while True:
        v = driver.execute_script(f"return ({js});")
        if v:
            return v
        if time.time() > deadline:
            errors = driver.execute_script("return document.getElementById('errors').innerText")
            status = driver.execute_script("return document.getElementById('status-text').innerText")
            raise AssertionError(f"timed out waiting for {what or js}; status: {status!r}; problems: {errors!r}")
        time.sleep(0.05)


def text(driver, el_id):
    return driver.execute_script(f"return document.getElementById('{el_id}').innerText")


def upload(driver, el_id, paths):
    driver.find_element("id", el_id).send_keys("\n".join(str(p) for p in paths))


def canvas_grey(driver, el_id, with_label=False):
    """The canvas's red channel (the page draws grey) as a uint8 array [H, W] (and the
    right viewport's label, read in the same script so they match)."""
    w, h, b64, label = driver.execute_script(
        """const c = document.getElementById(arguments[0]);
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const r = new Uint8Array(d.length / 4);
        for (let i = 0; i < r.length; i++) r[i] = d[4 * i];
        let s = '';
        for (let i = 0; i < r.length; i += 8192) s += String.fromCharCode.apply(null, r.subarray(i, i + 8192));
        return [c.width, c.height, btoa(s), document.getElementById('label-out').innerText];""",
        el_id,
    )
    px = np.frombuffer(base64.b64decode(b64), np.uint8).reshape(h, w)
    return (label, px.astype(int)) if with_label else px


def rendered(driver, el_id):
    return int(driver.execute_script(f"return document.getElementById('{el_id}').dataset.rendered || '0'"))


def ready(driver, slices=None):
    cond = "document.getElementById('viewer').dataset.ready === '1' && document.body.dataset.busy === '0'"
    if slices:
        cond += f" && document.getElementById('slice-label').innerText.endsWith('/ {slices}')"
    wait(driver, cond, what=f"both viewports ({slices or '?'} slices)")


def wait_download(folder: Path, suffix, before, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        new = [p for p in folder.iterdir() if p.name.endswith(suffix) and p not in before]
        if new and not any(p.name.endswith(".crdownload") for p in folder.iterdir()):
            return new[0]
        time.sleep(0.05)
    raise AssertionError(f"no {suffix} download in {folder}: {sorted(p.name for p in folder.iterdir())}")


def shot(driver, folder: Path, name):
    folder.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(folder / name))


def post(server, path, body, ctype):
    return server.request("POST", path, body=body, headers={"Content-Type": ctype})


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-ui")
    if DOCS:
        models, model = ROOT / "models", "default"
    else:
        models, model = root / "models", "tiny"
        write_tiny_model(models / "tiny")
    server = Server(models, "--max-batch", 4, log=root / "ldct-serve.log")
    with server:
        yield server, model, root
    assert server.proc.returncode == 0, server.text_log()


def test_the_page_denoises_a_slice_and_a_series_in_chromium(served):
    server, model, root = served
    shots = Path(os.environ.get("LDCT_UI_SCREENSHOTS", root / "screenshots"))
    series = ct_series(root / "series")
    single = next(p for p in real_ct_files() if p.name == "CT_small.dcm")
    downloads = root / "downloads"
    driver = make_driver(downloads)
    try:
        # GET / redirects to the page, which lists the server's models.
        driver.get(server.base + "/")
        assert driver.current_url == server.base + "/ui/"
        wait(driver, "document.body.dataset.started === '1'")
        options = driver.execute_script("return [...document.getElementById('model').options].map(o => o.value)")
        assert model in options
        assert driver.execute_script("return document.getElementById('model').value") == model

        # One real CT slice: both viewports drawn, and the output is not the input.
        upload(driver, "files", [single])
        ready(driver, 1)
        a, b = canvas_grey(driver, "view-in"), canvas_grey(driver, "view-out")
        assert a.shape == b.shape and a.std() > 10
        assert np.abs(a.astype(int) - b).mean() > 0.5, "the output canvas equals the input canvas"
        assert text(driver, "stat-time").endswith("ms")
        # Screenshots, soft tissue and lung, the HU probe showing (docs/ with LDCT_UI_DOCS=1).
        from selenium.webdriver.common.action_chains import ActionChains

        ActionChains(driver).move_to_element_with_offset(driver.find_element("id", "view-in"), 40, 60).perform()
        wait(driver, "document.getElementById('probe-out').dataset.hu !== ''")
        shot(driver, shots, "ui-soft-tissue.png")
        driver.find_element("id", "preset-lung").click()
        wait(driver, "document.getElementById('wl').innerText === 'W 1500 L -600'")
        ActionChains(driver).move_to_element_with_offset(driver.find_element("id", "view-in"), -230, -150).perform()
        shot(driver, shots, "ui-lung.png")
        if DOCS:
            for name in ("ui-soft-tissue.png", "ui-lung.png"):
                shutil.copy(shots / name, ROOT / "docs" / name)
        driver.find_element("id", "preset-soft").click()
        wait(driver, "document.getElementById('wl').innerText === 'W 400 L 40'")

        # A 3-slice series (files picked in another order than their positions).
        upload(driver, "files", [series[1], series[2], series[0]])
        wait(driver, "document.getElementById('series').options.length === 2")
        ready(driver, 3)
        assert text(driver, "slice-label") == "1 / 3"
        assert "c.dcm" in text(driver, "label-in")  # slice 1 by position
        noise_in = text(driver, "stat-noise-in")
        assert noise_in.endswith("HU") and float(noise_in.split()[0]) >= 0
        assert text(driver, "stat-noise-out").endswith("HU")
        shot(driver, shots, "ui-series.png")

        # Window presets change the pixels (and say so).
        before_px, n = canvas_grey(driver, "view-in"), rendered(driver, "view-in")
        driver.find_element("id", "preset-lung").click()
        wait(driver, f"+document.getElementById('view-in').dataset.rendered > {n}")
        assert text(driver, "wl") == "W 1500 L -600"
        lung = canvas_grey(driver, "view-in")
        assert np.abs(lung.astype(int) - before_px).mean() > 5
        driver.find_element("id", "preset-soft").click()

        # The right viewport's other views.
        check_views(driver, shots)

        # Scroll (mouse wheel over the viewer) to slice 3; the HU probe under the cursor.
        from selenium.webdriver.common.actions.wheel_input import ScrollOrigin

        canvas = driver.find_element("id", "view-in")
        for _ in range(2):
            ActionChains(driver).scroll_from_origin(ScrollOrigin.from_element(canvas), 0, 120).perform()
        wait(driver, "document.getElementById('slice-label').innerText === '3 / 3'")
        ready(driver, 3)
        assert "b.dcm" in text(driver, "label-in")
        # A pixel where slice 3 differs from slices 1 and 2 all around it.
        hu = [hu_of(p) for p in series]
        tx, ty = pick_pixel(np.minimum(np.abs(hu[2] - hu[0]), np.abs(hu[2] - hu[1])))
        dx, dy = canvas_offset(driver, "view-in", 512, 512, tx, ty)
        ActionChains(driver).move_to_element_with_offset(canvas, dx, dy).perform()
        wait(driver, "document.getElementById('probe-in').dataset.hu !== ''")
        probe = driver.execute_script(
            "const i = document.getElementById('probe-in').dataset, o = document.getElementById('probe-out').dataset;"
            "return {x: +i.x, y: +i.y, input: +i.hu, output: +o.hu, outX: +o.x, outY: +o.y,"
            " text: document.getElementById('probe-out').innerText};"
        )
        x, y = probe["x"], probe["y"]
        assert abs(x - tx) <= 1 and abs(y - ty) <= 1, (probe, tx, ty)  # the cursor's pixel
        assert (probe["outX"], probe["outY"]) == (x, y)
        assert abs(probe["input"] - hu[2][y, x]) < 1e-3, (probe, hu[2][y, x])  # slice 3's HU there
        assert "HU" in probe["text"]

        # The derived DICOM series as a zip: checked with pydicom and against the server.
        before = set(downloads.iterdir())
        driver.find_element("id", "download-zip").click()
        zpath = wait_download(downloads, ".zip", before)
        with zipfile.ZipFile(zpath) as z:
            assert z.testzip() is None
            names = sorted(z.namelist())
            assert len(names) == 3 and names[0].endswith("IM0001.dcm"), names
            members = [z.read(n) for n in names]
        derived = [pydicom.dcmread(io.BytesIO(m)) for m in members]
        sources = [pydicom.dcmread(p) for p in series]
        assert len({d.SeriesInstanceUID for d in derived}) == 1
        for d, s in zip(derived, sources):
            assert d.SeriesInstanceUID != s.SeriesInstanceUID
            assert d.StudyInstanceUID == s.StudyInstanceUID
            assert list(d.ImageType)[:2] == ["DERIVED", "SECONDARY"]
            assert d.SourceImageSequence[0].ReferencedSOPInstanceUID == s.SOPInstanceUID
            assert d.Modality == "CT"
        out3 = derived[2].pixel_array * float(derived[2].RescaleSlope) + float(derived[2].RescaleIntercept)
        assert abs(probe["output"] - out3[y, x]) < 1e-3, (probe, out3[y, x])
        direct = post(server, f"/v1/denoise?model={model}&strength=1", series[2].read_bytes(), "application/dicom")
        assert direct.status == 200
        # The same instance as the server writes it, but for when it was written
        # (Instance Creation Date / Time are those of each request).
        again = pydicom.dcmread(io.BytesIO(direct.body))
        for ds in (again, derived[2]):
            assert ds.InstanceCreationDate and ds.InstanceCreationTime
            del ds.InstanceCreationDate, ds.InstanceCreationTime
        assert again == derived[2] and again.file_meta == derived[2].file_meta
        assert again.PixelData == derived[2].PixelData

        # The denoised HU as one .npy volume.
        before = set(downloads.iterdir())
        driver.find_element("id", "download-npy").click()
        vol = np.load(wait_download(downloads, ".npy", before))
        assert vol.dtype == np.float32 and vol.shape == (3, 512, 512)
        for i, d in enumerate(derived):
            np.testing.assert_array_equal(vol[i], (d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept)).astype(np.float32))

        # A full-dose reference (here the same slices): PSNR / SSIM / RMSE per slice.
        upload(driver, "reference", series)
        wait(driver, "document.querySelectorAll('#metrics-body tr').length === 6 && document.body.dataset.busy === '0'"
                     " && !document.getElementById('metrics-body').innerText.includes('…')")
        rows = driver.execute_script(
            "return [...document.querySelectorAll('#metrics-body tr')].map(r => [r.dataset.metric, r.dataset.window, ...[...r.cells].map(c => c.innerText)])")
        boundary = uuid.uuid4().hex
        body = b"".join(
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"{n}\"; filename=\"{n}.dcm\"\r\n"
            f"Content-Type: application/dicom\r\n\r\n".encode() + series[2].read_bytes() + b"\r\n"
            for n in ("input", "reference")) + f"--{boundary}--\r\n".encode()
        ev = post(server, f"/v1/evaluate?model={model}&strength=1", body, f"multipart/form-data; boundary={boundary}")
        assert ev.status == 200, ev.body
        report = ev.json()
        psnr_full = next(r for r in rows if r[0] == "psnr" and r[1] == "-1000,1000")
        assert psnr_full[3] == "∞ (identical)"  # the input against itself
        assert float(psnr_full[4]) == pytest.approx(report["windows"][0]["output"]["psnr"], abs=0.006)
        rmse = next(r for r in rows if r[0] == "rmse" and r[1] == "-160,240")
        assert float(rmse[4]) == pytest.approx(report["windows"][1]["output"]["rmse_hu"], abs=0.006)

        # .npy: a 2-slice stack of real HU, split by the page, sent as float32 slices.
        stack = np.stack([hu_of(single), hu_of(single)[::-1]]).astype(np.float32)
        np.save(root / "stack.npy", stack)
        upload(driver, "files", [root / "stack.npy"])
        wait(driver, "document.getElementById('series').options.length === 3")
        ready(driver, 2)
        assert "stack.npy [0]" in text(driver, "label-in")
        a, b = canvas_grey(driver, "view-in"), canvas_grey(driver, "view-out")
        assert np.abs(a.astype(int) - b).mean() > 0.5
        assert not driver.execute_script("return document.getElementById('download-npy').disabled")
        assert driver.execute_script("return document.getElementById('download-zip').disabled")  # no DICOM
        before = set(downloads.iterdir())
        driver.find_element("id", "download-npy").click()
        got = np.load(wait_download(downloads, ".npy", before))
        assert got.shape == stack.shape
        for i in range(2):
            buf = io.BytesIO()
            np.save(buf, stack[i])
            r = post(server, f"/v1/denoise?model={model}&strength=1", buf.getvalue(), "application/x-npy")
            assert r.status == 200
            # (The page's two slices may have run as one batch: float rounding apart.)
            np.testing.assert_allclose(got[i], np.load(io.BytesIO(r.body)), atol=0.01)

        # Files that cannot be denoised: the reason in words.
        junk = root / "notes.txt"
        junk.write_text("not an image\n")
        data = pydicom_test_files()
        upload(driver, "files", [junk, data / "MR_small.dcm", data / "MR_small_jpeg_ls_lossless.dcm"])
        wait(driver, "document.querySelectorAll('#errors li').length >= 3 && document.body.dataset.busy === '0'",
             what="three problems listed")
        problems = text(driver, "errors")
        assert "notes.txt: Not a DICOM file" in problems, problems
        assert "MR_small.dcm: Not a CT image" in problems, problems
        assert "MR_small_jpeg_ls_lossless.dcm: Unsupported transfer syntax" in problems, problems
        shot(driver, shots, "ui-errors.png")
        logs = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "/v1/denoise" not in e["message"]]
        assert not logs, logs  # no CSP violation, no script error (failed denoise requests aside)
    except Exception:
        shot(driver, shots, "ui-failure.png")
        raise
    finally:
        driver.quit()


def pick_pixel(diff, r=2):
    """A pixel near the middle whose (2r+1)^2 neighbourhood all differs by > 50."""
    h, w = diff.shape
    best = None
    for y in range(h // 4, 3 * h // 4, 4):
        for x in range(w // 4, 3 * w // 4, 4):
            if diff[y - r:y + r + 1, x - r:x + r + 1].min() > 50:
                d = (y - h / 2) ** 2 + (x - w / 2) ** 2
                if best is None or d < best[0]:
                    best = (d, x, y)
    assert best, "no pixel where the slices differ"
    return best[1], best[2]


def canvas_offset(driver, el_id, w, h, x, y):
    """The offset from the canvas's centre (CSS px, what selenium moves by) of the centre
    of image pixel (x, y) at the fitted, unzoomed view."""
    cw, ch = driver.execute_script(f"const c = document.getElementById('{el_id}'); return [c.clientWidth, c.clientHeight]")
    s = min(cw / w, ch / h)
    return round((x + 0.5 - w / 2) * s), round((y + 0.5 - h / 2) * s)


def check_views(driver, shots):
    """Difference, swipe and flicker against the input and denoised canvases."""
    from selenium.webdriver.support.select import Select

    inp, out = canvas_grey(driver, "view-in").astype(int), canvas_grey(driver, "view-out").astype(int)
    mode = Select(driver.find_element("id", "mode"))
    n = rendered(driver, "view-out")
    mode.select_by_value("difference")
    wait(driver, f"+document.getElementById('view-out').dataset.rendered > {n}")
    diff = canvas_grey(driver, "view-out").astype(int)
    assert np.abs(diff - out).mean() > 5 and np.abs(diff - inp).mean() > 5
    shot(driver, shots, "ui-difference.png")
    mode.select_by_value("swipe")
    wait(driver, "document.getElementById('label-out').innerText.startsWith('Swipe')")
    sw = canvas_grey(driver, "view-out").astype(int)
    half = sw.shape[1] // 2
    assert np.array_equal(sw[:, : half - 2], out[:, : half - 2])
    assert np.array_equal(sw[:, half + 2 :], inp[:, half + 2 :])
    mode.select_by_value("flicker")
    seen = set()
    deadline = time.time() + 5
    while seen != {"input", "denoised"} and time.time() < deadline:
        label, px = canvas_grey(driver, "view-out", with_label=True)
        phase = "input" if label.startswith("Flicker: input") else "denoised"
        assert np.array_equal(px, inp if phase == "input" else out), phase
        seen.add(phase)
        time.sleep(0.1)
    assert seen == {"input", "denoised"}, seen
    mode.select_by_value("output")
    wait(driver, "document.getElementById('label-out').innerText.startsWith('Denoised')")


def test_the_page_over_tls_with_a_token_and_a_busy_server(tmp_path):
    """HTTPS, --api-token (the page asks for it, refuses a wrong one, keeps the right one
    for the tab) and a queue of 1 slice that holds each slice 1.5 s: the page's parallel
    requests get 503 and it retries them after Retry-After until all are done."""
    cert, key = self_signed_cert(tmp_path)
    models = tmp_path / "models"
    write_tiny_model(models / "tiny")
    series = ct_series(tmp_path / "series")
    server = Server(models, "--tls-cert", cert, "--tls-key", key, "--api-token", TOKEN,
                    "--queue-capacity", 1, "--batch-timeout-ms", 1500, "--max-batch", 8,
                    log=tmp_path / "ldct-serve.log", ca_cert=cert)
    downloads = tmp_path / "downloads"
    shots = tmp_path / "screenshots"
    with server:
        driver = make_driver(downloads, insecure=True)
        try:
            base = f"https://127.0.0.1:{server.port}"
            driver.get(base + "/ui/")
            wait(driver, "document.body.dataset.started === '1'")
            assert driver.find_element("id", "token-form").is_displayed()
            assert "needs an access token" in text(driver, "token-message")

            token = driver.find_element("id", "token")
            token.send_keys("wrong-token\n")
            wait(driver, "document.getElementById('token-message').innerText.includes('Wrong or missing access token')")
            token.clear()
            token.send_keys(TOKEN + "\n")
            wait(driver, "document.getElementById('token-form').hidden")
            assert driver.execute_script("return document.getElementById('model').value") == "tiny"
            assert driver.execute_script("return sessionStorage.getItem('ldct.apiToken')") == TOKEN
            driver.refresh()  # the tab keeps the token
            wait(driver, "document.body.dataset.started === '1' && document.getElementById('model').value === 'tiny'")
            assert not driver.find_element("id", "token-form").is_displayed()

            busy_before = queue_full_count(server)
            # The series as a folder (with a note in it, skipped and counted).
            (series[0].parent / "README.txt").write_text("scanned on a phantom\n")
            upload(driver, "folder", [series[0].parent])
            seen_busy = False
            deadline = time.time() + 60
            while time.time() < deadline:
                status = text(driver, "status-text")
                seen_busy |= "Server busy" in status
                if driver.execute_script(
                        "return document.getElementById('viewer').dataset.ready === '1' && document.body.dataset.busy === '0'"):
                    break
                time.sleep(0.03)
            assert seen_busy, "the page never reported the server busy"
            assert queue_full_count(server) > busy_before  # real 503s, retried by the page
            states = driver.execute_script("return [...document.querySelectorAll('#slices-body tr')].map(r => r.cells[5].textContent)")
            assert states == ["done"] * 3, (states, text(driver, "errors"))
            assert "1 file: skipped: not DICOM images or .npy arrays" in text(driver, "errors")
            assert "series/c.dcm" in text(driver, "label-in")  # the folder's path, slice 1 by position
            shot(driver, shots, "ui-tls-token.png")

            # The token goes wrong mid-session: the page stops, asks, and resumes.
            driver.execute_script("sessionStorage.setItem('ldct.apiToken', 'stale')")
            driver.execute_script("const s = document.getElementById('strength'); s.value = '0.5';"
                                  "s.dispatchEvent(new Event('input'));")
            wait(driver, "!document.getElementById('token-form').hidden")
            assert "Wrong or missing access token" in text(driver, "token-message")
            driver.find_element("id", "token").send_keys(TOKEN + "\n")
            wait(driver, "document.getElementById('token-form').hidden")
            ready(driver, 3)
            assert "strength 0.50" in text(driver, "label-out")
            states = driver.execute_script("return [...document.querySelectorAll('#slices-body tr')].map(r => r.cells[5].textContent)")
            assert states == ["done"] * 3, (states, text(driver, "errors"))
        except Exception:
            shot(driver, shots, "ui-failure.png")
            raise
        finally:
            driver.quit()
    assert server.proc.returncode == 0, server.text_log()


def queue_full_count(server):
    from test_serve_support import metric_sum

    r = server.request("GET", "/metrics")
    assert r.status == 200
    return metric_sum(r.body.decode(), "ldct_errors_total", kind="queue_full")


def test_the_page_decoders_agree_with_pydicom_and_numpy(served, tmp_path):
    """The page's own DICOM, .npy and ZIP code (dicom.js, npy.js, zip.js), run in the
    browser on real files in every uncompressed encoding, against pydicom / numpy /
    zipfile."""
    server, _, _ = served
    ct = next(p for p in real_ct_files() if p.name == "CT_small.dcm")
    ds = pydicom.dcmread(ct)
    data = pydicom_test_files()
    # Every uncompressed encoding, in pydicom's own files: explicit VR little endian
    # (real CT), implicit VR, explicit VR big endian, a deflated data set.
    variants = {
        "explicit_le": ct,
        "693_UNCI": next(p for p in real_ct_files() if p.name == "693_UNCI.dcm"),
        "implicit_le": data / "MR_small_implicit.dcm",
        "explicit_be": data / "MR_small_bigendian.dcm",
        "deflated": data / "image_dfl.dcm",
    }
    compressed = next((p for p in real_ct_files() if p.name == "693_J2KR.dcm"), None)
    arrays = {
        "f4": np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5,
        "i2": (np.arange(12, dtype=np.int16).reshape(3, 4) * -300),
        "be_f8": np.linspace(-1000, 1000, 12).reshape(4, 3).astype(">f8"),
        "fortran": np.asfortranarray(np.arange(24, dtype=np.float32).reshape(2, 3, 4)),
    }
    npys = {}
    for k, a in arrays.items():
        buf = io.BytesIO()
        np.save(buf, a)
        npys[k] = base64.b64encode(buf.getvalue()).decode()
    files = {k: base64.b64encode(Path(p).read_bytes()).decode() for k, p in variants.items()}
    if compressed:
        files["compressed"] = base64.b64encode(compressed.read_bytes()).decode()

    driver = make_driver(tmp_path / "downloads")
    try:
        driver.get(server.base + "/ui/")
        wait(driver, "document.body.dataset.started === '1'")
        result = driver.execute_async_script(
            """const [files, npys, done] = arguments;
            const b64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0)).buffer;
            const enc = (x) => { const u = new Uint8Array(x.buffer, x.byteOffset, x.byteLength); let s = '';
              for (let i = 0; i < u.length; i += 8192) s += String.fromCharCode.apply(null, u.subarray(i, i + 8192));
              return btoa(s); };
            (async () => {
              const dicom = await import(new URL('dicom.js', document.baseURI));
              const npy = await import(new URL('npy.js', document.baseURI));
              const zip = await import(new URL('zip.js', document.baseURI));
              const out = {dicom: {}, npy: {}};
              for (const [k, v] of Object.entries(files)) {
                const info = await dicom.parseDicom(b64(v));
                const img = dicom.decodeHu(info);
                out.dicom[k] = {rows: info.Rows, cols: info.Columns, modality: info.Modality,
                  ts: info.transferSyntax, series: info.SeriesInstanceUID, pos: dicom.slicePosition(info),
                  hu: img ? enc(img.hu) : null};
              }
              for (const [k, v] of Object.entries(npys)) {
                const a = npy.parseNpy(b64(v));
                out.npy[k] = {shape: a.shape, data: enc(a.data)};
              }
              out.encoded = enc(npy.encodeNpy([2, 3], Float32Array.from([1, -2, 3.5, 1e6, -1000, 0])));
              const z = zip.zipStore([{name: 'a/é.bin', data: new Uint8Array([1, 2, 3])}, {name: 'b.txt', data: new TextEncoder().encode('hello')}]);
              out.zipBytes = enc(new Uint8Array(await z.arrayBuffer()));
              try { await dicom.parseDicom(new TextEncoder().encode('just some text, long enough').buffer); out.notDicom = 'parsed'; }
              catch (e) { out.notDicom = e.constructor.name; }
              return out;
            })().then(done, (e) => done({error: String(e && e.stack || e)}));""",
            files, npys,
        )
    finally:
        driver.quit()
    assert "error" not in result, result.get("error")
    for k, path in variants.items():
        got = result["dicom"][k]
        ref = pydicom.dcmread(path)
        assert (got["rows"], got["cols"], got["modality"]) == (ref.Rows, ref.Columns, ref.Modality), k
        assert got["series"] == ref.SeriesInstanceUID, k
        hu = np.frombuffer(base64.b64decode(got["hu"]), np.float32).reshape(ref.Rows, ref.Columns)
        np.testing.assert_array_equal(hu, hu_of(path).astype(np.float32), err_msg=k)
    assert result["dicom"]["explicit_le"]["pos"] == pytest.approx(float(ds.ImagePositionPatient[2]))
    if compressed:
        # Compressed pixel data is left to the server (the page asks it at strength 0).
        assert result["dicom"]["compressed"]["hu"] is None
        assert result["dicom"]["compressed"]["rows"] == 512
    for k, a in arrays.items():
        got = result["npy"][k]
        assert got["shape"] == list(a.shape), k
        np.testing.assert_array_equal(np.frombuffer(base64.b64decode(got["data"]), np.float32).reshape(a.shape),
                                      np.ascontiguousarray(a).astype(np.float32), err_msg=k)
    enc = np.load(io.BytesIO(base64.b64decode(result["encoded"])))
    np.testing.assert_array_equal(enc, np.array([[1, -2, 3.5], [1e6, -1000, 0]], np.float32))
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(result["zipBytes"]))) as z:
        assert z.testzip() is None
        assert z.namelist() == ["a/é.bin", "b.txt"]
        assert z.read("a/é.bin") == b"\x01\x02\x03" and z.read("b.txt") == b"hello"
    assert result["notDicom"] == "NotDicomError"

"""`serve`: the page answers what `predict` answers, bad input gets a message, the queue holds under load,
nothing the browser sends reaches a server path; and the page driven in a real headless Chromium."""
import asyncio
import base64
import io
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cxr_fast
from cxr_fast.apps.serve.card import model_card_html
from cxr_fast.apps.serve.server import Busy, Engine, load_models
from cxr_fast.apps.serve.upload import InputError, analyse, clean_filename

ML_THRESHOLDS = {"COVID-19": 0.3, "Pneumonia": 0.6, "Normal": 0.5}
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


# ---- fixtures: one tiny trained model, one untrained multi-label model, one live server ----

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    "A 3-class resnet18 trained 1 epoch at 32 px on phantoms (evaluated once on other phantoms), and a multi-label one."
    root = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    cxr_fast.train("phantom", root / "ph", "3class", arch="resnet18", pretrained=False, epochs=1, size=32, bs=8,
                   patients_per_class=4, image_size=64, out=root / "runs" / "tiny", num_workers=0, test_pct=0.2,
                   dedup="off")
    cxr_fast.evaluate(root / "runs" / "tiny" / "model", "phantom", root / "other", task="3class", n_boot=20, n_gradcam=0,
                      patients_per_class=2, image_size=48, seed=3)
    head = {"hidden": None, "dropout": 0.5, "concat_pool": True}
    classes = list(ML_THRESHOLDS)
    meta = {"arch": "resnet18", "head": head, "n_out": 3, "classes": classes, "task": "multilabel", "multilabel": True,
            "loss": "bce", "img_size": 32, "resize_method": "squish", "normalize": {"mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225]}, "thresholds": ML_THRESHOLDS, "data": {}, "metrics": {}}
    cxr_fast.save_model_dir(cxr_fast.build_model("resnet18", 3, head).eval(), root / "runs" / "multi" / "model", meta)
    images = sorted((root / "ph").glob("*.png"))
    return {"tiny": root / "runs" / "tiny" / "model", "multi": root / "runs" / "multi" / "model", "images": images,
            "root": root}


def _reader(stream, lines):
    for line in stream: lines.put(line)


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    "`python -m cxr_fast serve` on both models, port 0, 2 MB uploads, its own TMPDIR; stopped after the module."
    tmp = tmp_path_factory.mktemp("server-tmp")
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cxr_fast", "serve", str(models["tiny"]), str(models["multi"]),
                             "--port", "0", "--max-upload-mb", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    lines = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stdout, lines), daemon=True).start()
    errors = queue.Queue()
    threading.Thread(target=_reader, args=(proc.stderr, errors), daemon=True).start()
    url = None
    deadline = time.time() + 120
    while url is None and time.time() < deadline and proc.poll() is None:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        if "http://" in line: url = line[line.index("http://"):].split()[0]
    if url is None:
        proc.kill()
        pytest.fail("serve did not print its URL: " + "".join(list(errors.queue)))
    assert url.startswith("http://127.0.0.1:")  # loopback by default
    yield {"url": url, "proc": proc, "tmp": tmp, "stderr": errors}
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


def post(url, data, filename="x.png", model=0, timeout=60, headers=None):
    "(status, JSON) of POST /api/predict."
    q = urllib.parse.urlencode({"model": model, "filename": filename})
    req = urllib.request.Request(f"{url}api/predict?{q}", data=data, method="POST",
                                 headers={"Content-Type": "application/octet-stream", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def get(url, path, headers=None):
    "(status, bytes) of a GET."
    req = urllib.request.Request(url + path, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def reference(model_dir, paths):
    "`predict`'s probabilities and labels for these files."
    df = cxr_fast.load_model(model_dir).predict([str(p) for p in paths])
    return df[[c for c in df.columns if c.startswith("p_")]].to_numpy(), df["pred"].tolist()


# ---- bad files, made the way they arrive ----

def bomb_png():
    "A 20000 x 20000 1-bit PNG: 50 kB on disk, 400 megapixels decoded (a decompression bomb)."
    def chunk(kind, payload):
        return len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")
    side = 20000
    row = b"\0" * (1 + side // 8)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = side.to_bytes(4, "big") * 2 + bytes([1, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def dicom_without_pixels(tmp_path):
    import pydicom

    from cxr_fast.data.dicom import write_dicom
    path = write_dicom(tmp_path / "src.dcm", np.zeros((16, 16), np.uint8) + 7)
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    return (tmp_path / "nopix.dcm").read_bytes()


def truncated_png(path):
    data = Path(path).read_bytes()
    return data[: len(data) // 2]


def bad_uploads(models, tmp_path):
    "(name, bytes, words the message must contain)."
    return [("notes.txt", b"patient notes, not an image\n" * 20, "not an image"),
            ("cut.png", truncated_png(models["images"][0]), "cannot"),
            ("nopix.dcm", dicom_without_pixels(tmp_path), "no pixel data"),
            ("bomb.png", bomb_png(), "megapixels"),
            ("empty.png", b"", "empty"),
            ("anim.gif", _gif(), "not supported")]


def _gif():
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="GIF")
    return buf.getvalue()


# ---- in-process: the answer, bad input, the card, the queue ----

def test_an_upload_gets_predicts_probabilities_a_gradcam_and_leaves_no_file(models, tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))  # where analyse's private folder goes
    served = load_models([models["tiny"].parent])  # a run dir works too
    paths = models["images"][:3]
    probs, preds = reference(models["tiny"], paths)
    for path, p, label in zip(paths, probs, preds):
        out = analyse(served[0], path.read_bytes(), f"../../{path.name}")
        assert out["filename"] == path.name and out["pred"] == label and out["format"] == "PNG" and out["size"] == [64, 64]
        np.testing.assert_allclose([r["p"] for r in out["probs"]], p, atol=1e-5)
        assert [r["class"] for r in out["probs"]] == served[0].predictor.classes
        assert out["gradcam_class"] == label  # Grad-CAM explains the predicted class
        for key in ("image", "gradcam"):
            img = Image.open(io.BytesIO(base64.b64decode(out[key].split(",", 1)[1])))
            assert img.format == "PNG" and max(img.size) == 384
        assert "not a medical device" in out["disclaimer"]
    assert list(tmp_path.iterdir()) == []  # the upload's temporary copy is gone


def test_a_dicom_upload_is_read_like_predict_reads_it(models, tmp_path):
    from cxr_fast.data.dicom import write_dicom
    arr = np.asarray(Image.open(models["images"][1]))
    path = write_dicom(tmp_path / "x.dcm", arr.astype(np.uint16) * 16, bits_stored=12)
    out = analyse(load_models([models["tiny"]])[0], path.read_bytes(), "x.dcm")
    probs, preds = reference(models["tiny"], [path])
    assert out["format"] == "DICOM" and out["pred"] == preds[0] and out["size"] == [64, 64]
    np.testing.assert_allclose([r["p"] for r in out["probs"]], probs[0], atol=1e-5)


def test_an_image_that_is_no_chest_xray_is_predicted_with_the_input_guards_warning(models):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (48, 200, 3), dtype=np.uint8), mode="RGB").save(buf, format="JPEG")
    out = analyse(load_models([models["tiny"]])[0], buf.getvalue(), "holiday.jpg")
    assert out["format"] == "JPEG" and out["warning"] and out["pred"] in ("Normal", "Pneumonia", "COVID-19")
    assert analyse(load_models([models["tiny"]])[0], models["images"][0].read_bytes(), "a.png")["warning"] == ""


def test_bad_uploads_get_a_message_naming_the_file_not_a_server_path(models, tmp_path):
    served = load_models([models["tiny"]])[0]
    for name, data, words in bad_uploads(models, tmp_path):
        with pytest.raises(InputError) as info:
            analyse(served, data, name)
        message = str(info.value)
        assert words in message, (name, message)
        assert "cxr-serve-" not in message and "Traceback" not in message and "/tmp" not in message, message


def test_multilabel_answers_carry_each_labels_threshold(models):
    served = load_models([models["multi"]])[0]
    out = analyse(served, models["images"][0].read_bytes(), "a.png")
    rows = {r["class"]: r for r in out["probs"]}
    assert {c: r["threshold"] for c, r in rows.items()} == ML_THRESHOLDS
    given = [c for c, r in rows.items() if r["p"] >= r["threshold"]]
    assert out["pred"] == (";".join(given) or "none") and out["multilabel"]


def test_model_card_shows_model_json_metrics_external_evaluation_and_an_escaped_model_card(models, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(models["tiny"], folder)
    shutil.copytree(models["tiny"].parent / "eval-phantom-other", tmp_path / "eval-phantom-other")
    (folder / "MODEL_CARD.md").write_text("# Intended use\n\nTeaching. <script>alert(1)</script>\n")
    meta = json.loads((folder / "model.json").read_text())
    card = model_card_html("tiny", meta, folder)
    for words in ("resnet18", "Normal, Pneumonia, COVID-19", "32 px", "phantom", "by patient", "Internal metrics",
                  "valid", "accuracy", "External metrics", "not a medical device", "Intended use"):
        assert words in card, words
    assert f"{meta['metrics']['valid']['accuracy']:.3f}" in card
    external = card[card.index("External metrics"):]
    assert "<td>phantom" in external and "other" in external and card.count("<td>phantom") == 1  # one row, recorded once
    assert "<script>" not in card and "&lt;script&gt;" in card
    entry = {"source_name": "folders:khulna", "n": 90, "metrics": {"accuracy": {"value": 0.61, "ci": [0.5, 0.7]}},
             "report": str(tmp_path / "eval-phantom-other" / "report.md")}  # what `evaluate` records in model.json
    recorded = model_card_html("tiny", {**meta, "evaluations": [entry]}, folder)
    external = recorded[recorded.index("External metrics"):]
    assert "folders:khulna" in external and "0.610 (0.500-0.700)" in external and "<td>phantom" not in external
    bare = model_card_html("multi", json.loads((models["multi"] / "model.json").read_text()), models["multi"])
    assert "None recorded" in bare and "COVID-19 &gt;= 0.30" in bare


def test_clean_filename_keeps_only_a_printable_last_part():
    assert clean_filename("../../etc/passwd") == "passwd"
    assert clean_filename("C:\\x\\scan\x00.png") == "scan.png"
    assert clean_filename("") == "upload"


def test_the_queue_holds_its_capacity_in_order_and_refuses_beyond_it():
    engine = Engine(capacity=2)
    gate = threading.Event()
    order = []

    async def job(i):
        with engine.slot():
            return await engine.run(lambda: (gate.wait(10), order.append(i))[1] or i)

    async def main():
        first, second = asyncio.create_task(job(1)), asyncio.create_task(job(2))
        await asyncio.sleep(0.05)
        assert engine.held == 2
        with pytest.raises(Busy, match="busy"):
            with engine.slot(): pass
        gate.set()
        assert (await first, await second) == (1, 2)
        with engine.slot(): pass  # places are given back
        return engine.held

    assert asyncio.run(main()) == 0 and order == [1, 2] and engine.peak == 2 and engine.served == 2
    engine.close()


def test_serve_without_a_model_dir_is_a_one_line_error(tmp_path, capsys):
    from cxr_fast.cli import main
    assert main(["serve", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "nothing") in err and err.count("\n") == 1


# ---- over HTTP, against the running `serve` ----

def vm(pid, key):
    "A /proc/PID/status memory value in MB."
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"): return int(line.split()[1]) / 1024
    return float("nan")


def test_twenty_concurrent_requests_are_queued_and_all_answered_correctly(server, models):
    url, pid = server["url"], server["proc"].pid
    paths = [models["images"][i % len(models["images"])] for i in range(20)]
    probs, preds = reference(models["tiny"], paths)
    assert post(url, paths[0].read_bytes())[0] == 200  # warm up (first-call allocations)
    rss_before = vm(pid, "VmRSS")
    with ThreadPoolExecutor(20) as pool:  # 20 clients at once on 127.0.0.1, each with a 60 s timeout
        answers = list(pool.map(lambda p: post(url, p.read_bytes(), p.name), paths, timeout=120))
    assert [status for status, _ in answers] == [200] * 20, [a for s, a in answers if s != 200]
    for (_, out), p, label, path in zip(answers, probs, preds, paths):
        assert out["filename"] == path.name and out["pred"] == label
        np.testing.assert_allclose([r["p"] for r in out["probs"]], p, atol=1e-5)
    status = json.loads(get(url, "api/status")[1])
    assert status["held"] == 0 and status["served"] >= 21 and status["peak"] > 1  # they did wait in the queue
    assert vm(pid, "VmHWM") - rss_before < 400, (rss_before, vm(pid, "VmHWM"))  # memory stays bounded
    assert not list(Path(server["tmp"]).glob("cxr-serve-*"))  # no upload left behind
    assert server["proc"].poll() is None


def test_bad_uploads_over_http_get_json_messages_and_the_server_lives(server, models, tmp_path):
    url = server["url"]
    for name, data, words in bad_uploads(models, tmp_path):
        status, out = post(url, data, name)
        assert status in (400, 413) and out["ok"] is False and words in out["error"], (name, status, out)
    status, out = post(url, os.urandom(3 * 2 ** 20), "big.png")  # over the 2 MB limit given to serve
    assert status == 413 and "2 MB" in out["error"]
    status, out = post(url, models["images"][0].read_bytes(), model=7)
    assert status == 400 and "unknown model" in out["error"]
    assert post(url, models["images"][0].read_bytes())[0] == 200 and server["proc"].poll() is None


def test_nothing_the_browser_sends_reaches_a_server_path(server, models):
    url = server["url"]
    status, out = post(url, models["images"][0].read_bytes(), filename="../../../../tmp/owned.png")
    assert status == 200 and out["filename"] == "owned.png" and not Path("/tmp/owned.png").exists()
    for path in ("../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd", "api/examples/..%2f..%2fetc%2fpasswd",
                 "api/examples/99", "static/../../etc/passwd", "api/predict"):
        status, body = get(url, path)
        assert status in (404, 405) and b"root:" not in body, (path, status)
    status, body = get(url, "api/examples/0")
    assert status == 200 and Image.open(io.BytesIO(body)).format == "PNG"
    assert get(url, "api/models", headers={"Host": "attacker.example"})[0] == 400  # no DNS rebinding
    status, page = get(url, "")
    assert status == 200 and b"not a medical device" in page and b'<script src="app.js"></script>' in page
    assert b"<script>" not in page  # no inline script: the policy below allows only the page's own
    status, script = get(url, "app.js")
    assert status == 200 and b"http" not in script and b"api/models" in script
    with urllib.request.urlopen(url, timeout=30) as r: policy = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy.split("script-src")[1].split(";")[0]


def test_a_multipart_form_upload_is_read_like_a_raw_body(server, models):
    url, data = server["url"], models["images"][0].read_bytes()
    body = (b'--cxrB0undary\r\nContent-Disposition: form-data; name="file"; filename="scan.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + data + b"\r\n--cxrB0undary--\r\n")
    status, out = post(url, body, filename="ignored", headers={"Content-Type": "multipart/form-data; boundary=cxrB0undary"})
    assert status == 200 and out["filename"] == "scan.png", out
    assert out["probs"] == post(url, data, filename="scan.png")[1]["probs"]
    empty = b'--b\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--b--\r\n'
    status, out = post(url, empty, headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert status == 400 and "holds no file" in out["error"]


def test_a_model_cards_script_links_are_dropped_and_the_weights_path_is_not_shown(models, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(models["tiny"], folder)
    (folder / "MODEL_CARD.md").write_text("[x](javascript:alert(document.domain)) [ok](https://example.org) "
                                          "[rel](docs/a.md) [m](mailto:a@b.c) [y]( JaVaScRiPt:alert(1))\n")
    card = model_card_html("tiny", json.loads((folder / "model.json").read_text()), folder)
    assert "javascript" not in card.lower() and '<a href="https://example.org">' in card
    assert '<a href="docs/a.md">' in card and '<a href="mailto:a@b.c">' in card
    from cxr_fast.evaluation.card import describe_provenance
    line = describe_provenance({"source": "pip package", "file": "/opt/site-packages/w/lite0.pth", "sha256": "ab" * 32})
    assert "lite0.pth" in line and "/opt/site-packages" not in line


# ---- the page in a real browser ----

def _browser_missing():
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        return "headless Chromium not installed (apt-get install -y chromium chromium-driver; .ci/run does it)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,1500"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _run(driver):
    return int(driver.execute_script("return document.body.dataset.run || '0'"))


def _wait_state(driver, states, after=None, timeout=180):  # generous: a loaded 2-core CI machine
    """The state that ends the wait, of an analysis started after run number `after` (None: any)."""
    from selenium.webdriver.support.ui import WebDriverWait
    def reached(d):  # state and run read together: a later request may already have started
        state, run = d.execute_script("return [document.body.dataset.state, document.body.dataset.run || '0']")
        return state if state in states and (after is None or int(run) > after) else False
    return WebDriverWait(driver, timeout).until(reached)


def _page_probs(driver):
    from selenium.webdriver.common.by import By
    return {r.get_attribute("data-class"): float(r.get_attribute("data-prob"))
            for r in driver.find_elements(By.CSS_SELECTOR, "#results .result:first-child tr.prob")}


@pytest.mark.skipif(_browser_missing() is not None, reason=str(_browser_missing()))
def test_the_page_in_headless_chromium_matches_predict_and_shows_bad_input_messages(server, models, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    browser.get(server["url"])
    assert _wait_state(browser, ("ready", "error")) == "ready"
    select = Select(browser.find_element(By.ID, "model"))
    assert [o.text.split(" (")[0] for o in select.options] == ["tiny", "multi", "all models, side by side"]
    card = browser.find_element(By.ID, "cards").text
    assert "resnet18" in card and "Normal, Pneumonia, COVID-19" in card and "not a medical device" in card

    image = models["images"][2]
    run = _run(browser)
    browser.find_element(By.ID, "file").send_keys(str(image))
    assert _wait_state(browser, ("done", "error"), after=run) == "done", browser.find_element(By.ID, "message").text
    probs, preds = reference(models["tiny"], [image])
    shown = _page_probs(browser)
    assert list(shown) == ["Normal", "Pneumonia", "COVID-19"]
    np.testing.assert_allclose(list(shown.values()), probs[0], atol=1e-5)
    assert browser.find_element(By.CSS_SELECTOR, ".pred-value").text == preds[0]
    for cls in ("image", "gradcam"):  # both pictures really decoded in the browser
        assert browser.execute_script(f"return document.querySelector('img.{cls}').naturalWidth") == 384
    browser.save_screenshot(str(tmp_path / "serve-result.png"))

    run = _run(browser)
    select.select_by_visible_text("all models, side by side")
    assert _wait_state(browser, ("done", "error"), after=run) == "done"
    columns = browser.find_elements(By.CSS_SELECTOR, "#results .result")
    assert [c.find_element(By.TAG_NAME, "h2").text for c in columns] == ["tiny", "multi"]
    thresholds = [r.get_attribute("data-threshold") for r in columns[1].find_elements(By.CSS_SELECTOR, "tr.prob")]
    assert [float(t) for t in thresholds] == list(ML_THRESHOLDS.values())
    browser.save_screenshot(str(tmp_path / "serve-side-by-side.png"))

    run = _run(browser)
    select.select_by_index(0)
    assert _wait_state(browser, ("done", "error"), after=run) == "done"
    run = _run(browser)
    browser.find_element(By.CSS_SELECTOR, "button.example[data-example='1']").click()
    assert _wait_state(browser, ("done", "error"), after=run) == "done"
    assert "phantom" in browser.find_element(By.CSS_SELECTOR, "#results figcaption").text

    bad = tmp_path / "notes.txt"
    bad.write_text("not an X-ray\n")
    run = _run(browser)
    browser.find_element(By.ID, "file").send_keys(str(bad))
    assert _wait_state(browser, ("done", "error"), after=run) == "error"
    message = browser.find_element(By.ID, "message")
    assert message.is_displayed() and "notes.txt: not an image" in message.text
    assert not browser.find_elements(By.CSS_SELECTOR, "#results .result")
    browser.save_screenshot(str(tmp_path / "serve-bad-file.png"))
    assert (tmp_path / "serve-result.png").stat().st_size > 10_000 and server["proc"].poll() is None

"""`python -m cxr_fast serve MODEL_DIR...`: a local web page to try a model on one X-ray at a time.

Upload a PNG, JPEG, BMP, TIFF or DICOM file (or pick one of the bundled synthetic phantoms) and the page shows
the predicted class, every class probability as a bar (with its threshold where the model has one), the
Grad-CAM overlay beside the image, and the model card (model.json, plus MODEL_CARD.md when the model dir
has one). Several model dirs give a selector, with an "all models, side by side" choice.

A small Starlette app rather than Gradio, because:
- nothing is written where the browser says, and nothing is served from disk: an upload is read into memory
  (at most `max_upload_mb`), written to a private temporary folder only while `Predictor.load` decodes it (the
  same code path as `predict`), and deleted before the answer; results go back inline (images as data URLs).
  Gradio keeps every upload and every output image in its cache folder and serves files from disk by path;
- it makes no request to the internet (Gradio sends analytics and a version check to api.gradio.app by default);
- the page is one HTML file with plain form controls, and `POST /api/predict` answers JSON to any client
  (`curl --data-binary @x.png 'http://127.0.0.1:7860/api/predict?filename=x.png'`);
- a queue of known size: one inference thread; at most `queue_size` requests are held (waiting or running),
  each with at most `max_upload_mb` of upload, so memory is bounded; more at once get "busy, try again".

Routes: `GET /` the page, `GET /api/models` the models and their cards, `GET /api/examples/N` a bundled
example (PNG bytes, from memory), `POST /api/predict?model=I&filename=NAME` (body: the file's bytes; the name
is only shown, never used as a path), `GET /api/status` the queue (held, peak, served, capacity).
Research and teaching only: the page says so next to every answer.
The page itself is serve_page.py; the model card's HTML is serve_card.py.
"""
import asyncio
import base64
import hashlib
import io
import re
import shutil
import socket
import sys
import tempfile
import time
import traceback
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import torch
from PIL import Image

from ...core.errors import CxrError
from ...inference.gradcam import gradcam, overlay
from ...data.guards import safe_input_warnings
from ...data.images import IMAGE_SUFFIXES, load_image
from ...inference.predictor import load_model
from ...models.folder import find_model_dir
from .card import DISCLAIMER, model_card_html
from .page import PAGE
from ...data.sources.phantom import make_phantoms
from ...data.labels import positive_index

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860
MAX_UPLOAD_MB = 32          # a 3000x3000 16-bit uncompressed DICOM is 18 MB
MAX_PIXELS = 50_000_000     # larger images are refused before decoding (real chest X-rays are <= ~18 Mpx)
QUEUE_SIZE = 32             # requests held at once (waiting or running); more get "busy"
DISPLAY_SIZE = 384          # the longer side of the images shown on the page
MAX_EXAMPLES = 12
RASTER_FORMATS = {"PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg", "BMP": ".bmp", "TIFF": ".tif"}
DICOM_SUFFIXES = {".dcm", ".dicom", ".dic"}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
LOOPBACK_NAMES = ["127.0.0.1", "localhost"]  # Host header values a loopback IPv4 server accepts


class InputError(CxrError):
    "An upload the page answers with a message (HTTP 400/413)."

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


class Busy(CxrError):
    "The queue is full."


# ---- the served models ------------------------------------------------------------------

class ServedModel:
    "A loaded model with its display name and rendered model card."

    def __init__(self, name, predictor, model_dir):
        self.name, self.predictor, self.model_dir = name, predictor, Path(model_dir)
        self.meta = predictor.meta
        self.card_html = model_card_html(name, self.meta, self.model_dir)

    def describe(self):
        "What the page needs to know about this model."
        m = self.meta
        return {"name": self.name, "arch": m.get("arch"), "task": m.get("task"), "classes": self.predictor.classes,
                "multilabel": self.predictor.multilabel, "img_size": m.get("img_size"), "card": self.card_html}


def _display_name(model_dir):
    "The run folder's name for runs/NAME/model, else the folder's own name."
    model_dir = Path(model_dir).resolve()
    return model_dir.parent.name if model_dir.name == "model" and model_dir.parent.name else model_dir.name


def load_models(model_dirs, device=None):
    "A ServedModel per model dir (or run dir), named after its run; CxrError when one does not load."
    if not model_dirs: raise CxrError("give at least one MODEL_DIR (a model/ folder that `train` wrote, or its run folder)")
    served, names = [], {}
    for given in model_dirs:
        folder = find_model_dir(given)
        name = _display_name(folder)
        names[name] = names.get(name, 0) + 1
        if names[name] > 1: name = f"{name} ({names[name]})"
        served.append(ServedModel(name, load_model(folder, device=device), folder))
    return served


# ---- one upload -> one answer --------------------------------------------------------------

def clean_filename(name):
    "The uploaded file's name for display only (never used as a path): its last part, printable, short."
    name = re.split(r"[\\/]", str(name or ""))[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    return (name[:120] or "upload")


def sniff(data, filename):
    "(suffix, kind, (width, height) or None) from the bytes themselves; InputError when they are no image we read."
    if not data: raise InputError("the upload is empty (0 bytes): choose a PNG, JPEG or DICOM file")
    if len(data) >= 132 and data[128:132] == b"DICM": return ".dcm", "DICOM", None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt, size = img.format, img.size
    except Image.DecompressionBombError as e:  # Pillow refuses to even open it (over 2 x its MAX_IMAGE_PIXELS)
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(found.group(1)) / 1e6:.0f} megapixels" if found else "too many pixels"
        raise InputError(f"{clean_filename(filename)}: the image has {size} (a decompression bomb?); "
                         f"this page reads images of at most {MAX_PIXELS / 1e6:.0f} megapixels", status=413) from None
    except Exception:
        if Path(filename).suffix.lower() in DICOM_SUFFIXES: return ".dcm", "DICOM", None  # DICOM without preamble
        head = data[:64]
        text = sum(32 <= b < 127 or b in (9, 10, 13) for b in head) == len(head)
        raise InputError(f"{clean_filename(filename)}: not an image this page reads"
                         f"{' (it looks like a text file)' if text else ''}; upload a PNG, JPEG, BMP, TIFF or DICOM file") from None
    if fmt not in RASTER_FORMATS:
        raise InputError(f"{clean_filename(filename)}: {fmt} images are not supported; upload a PNG, JPEG, BMP, TIFF or DICOM file")
    return RASTER_FORMATS[fmt], fmt, size


def dicom_size(path):
    "(columns, rows) from a DICOM header, or None when the header does not say."
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Rows", "Columns"])
        return int(ds.Columns), int(ds.Rows)
    except Exception:
        return None  # the decoding step reports what is wrong with the file


def check_pixels(size, filename, max_pixels):
    "InputError for an image larger than `max_pixels` (a decompression bomb, or beyond what a chest X-ray needs)."
    if size is None: return
    w, h = size
    if w * h > max_pixels:
        raise InputError(f"{clean_filename(filename)}: the image is {w} x {h} pixels ({w * h / 1e6:.0f} megapixels); "
                         f"this page reads images of at most {max_pixels / 1e6:.0f} megapixels", status=413)


def png_data_url(img, max_side=DISPLAY_SIZE):
    "A PIL image as a data: URL (PNG), scaled so its longer side is `max_side` (small ones are enlarged)."
    w, h = img.size
    scale = max_side / max(w, h)
    img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _message(text, tmp_path, filename):
    "An error message with the server's temporary path replaced by the uploaded file's name."
    text = str(text)
    for p in (str(tmp_path), str(Path(tmp_path).resolve())):
        text = text.replace(p, filename)
    return text


def probability_rows(predictor, probs):
    "One dict per class: class, probability, its threshold (or None) and whether it is in the decision."
    t = predictor.thresholds_for(None)
    classes = predictor.classes
    rows = [{"class": c, "p": float(p), "threshold": None} for c, p in zip(classes, probs)]
    if predictor.multilabel:
        for r in rows: r["threshold"] = float(t[r["class"]])
    elif t is not None:
        rows[positive_index(classes)]["threshold"] = float(t)
    return rows


def analyse(served, data, filename, max_pixels=MAX_PIXELS, keep_dir=None):
    """Predict one uploaded file with `served`: the answer as a JSON-able dict, or InputError with the message.

    The bytes go into a private temporary folder for `Predictor.load` (the `predict` path) and are deleted
    before this returns; with `keep_dir` (the operator's choice) a copy is kept there under a new name."""
    filename = clean_filename(filename)
    start = time.perf_counter()
    suffix, kind, size = sniff(data, filename)
    check_pixels(size, filename, max_pixels)
    pred = served.predictor
    tmp = Path(tempfile.mkdtemp(prefix="cxr-serve-"))
    try:
        path = tmp / f"upload{suffix}"
        path.write_bytes(data)
        if kind == "DICOM":
            size = dicom_size(path)
            check_pixels(size, filename, max_pixels)
        x_u8 = pred.load(path)  # uint8 (1, H, W) at the model's size, or the reason it cannot be read
        if isinstance(x_u8, str): raise InputError(_message(x_u8, path, filename))
        x = pred.to_input(x_u8[None])
        probs = pred.forward_proba(x).numpy()[0]
        decision = pred.decide(probs[None])[0]
        if pred.multilabel: target = int(np.argmax(probs))
        else: target = pred.classes.index(decision)
        with torch.enable_grad():
            heat = gradcam(pred.model, x, target=[target])[0]
        try:
            shown = load_image(path)
            size = shown.size
        except CxrError:
            shown = Image.fromarray(x_u8[0].numpy(), mode="L")
        warning = safe_input_warnings(path, shown)  # what `predict` writes in its warning column
        if served.meta.get("resize_method", "squish") != "squish":  # crop/pad: the map fits the model's view only
            shown = Image.fromarray(x_u8[0].numpy(), mode="L")
        shown.thumbnail((DISPLAY_SIZE, DISPLAY_SIZE))
        kept = keep_upload(keep_dir, data, suffix) if keep_dir else None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"ok": True, "model_name": served.name, "filename": filename, "format": kind, "size": list(size or []),
            "pred": decision, "multilabel": pred.multilabel, "probs": probability_rows(pred, probs),
            "gradcam_class": pred.classes[target], "image": png_data_url(shown), "gradcam": png_data_url(overlay(shown, heat)),
            "warning": warning, "seconds": round(time.perf_counter() - start, 3), "kept": kept, "disclaimer": DISCLAIMER}


def keep_upload(keep_dir, data, suffix):
    "Save an upload under a name the server makes (time + content hash), never the browser's; returns the name."
    keep_dir = Path(keep_dir)
    keep_dir.mkdir(parents=True, exist_ok=True)
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{hashlib.sha256(data).hexdigest()[:16]}{suffix}"
    (keep_dir / name).write_bytes(data)
    return name


def bundled_examples(folder=None, size=256):
    """(label, file name, bytes) of the examples the page offers: one synthetic phantom per class (PNG), and the
    first images of `folder` (the operator's, read once at start-up; kept in memory)."""
    out = []
    with tempfile.TemporaryDirectory(prefix="cxr-serve-examples-") as tmp:
        csv = make_phantoms(tmp, patients_per_class=1, images_per_patient=(1, 1), size=size, seed=7)
        for row in pd.read_csv(csv).itertuples():
            out.append((f"synthetic phantom: {row.finding}", f"phantom-{row.finding}.png", (Path(tmp) / row.file).read_bytes()))
    if folder:
        if not Path(folder).expanduser().is_dir(): raise CxrError(f"--examples {folder}: not a folder")
        files = sorted(p for p in Path(folder).expanduser().iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files: raise CxrError(f"--examples {folder}: no image files in it")
        out += [(p.name, p.name, p.read_bytes()) for p in files[:MAX_EXAMPLES]]
    return out


# ---- the queue --------------------------------------------------------------------------

class Engine:
    """One inference thread and a bounded number of held requests.

    `slot()` is taken on the event loop before the upload is read and given back after the answer, so at
    most `capacity` uploads are in memory; a request beyond that raises Busy at once instead of piling up."""

    def __init__(self, capacity=QUEUE_SIZE):
        self.capacity, self.held, self.peak, self.served = int(capacity), 0, 0, 0
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="cxr-serve")

    @contextmanager
    def slot(self):
        "Hold one place in the queue for the duration; Busy when all are taken."
        if self.held >= self.capacity:
            raise Busy(f"the server is busy ({self.held} requests queued); try again in a moment")
        self.held += 1
        self.peak = max(self.peak, self.held)
        try:
            yield
        finally:
            self.held -= 1

    async def run(self, fn, *args):
        "Run `fn(*args)` on the inference thread, in arrival order."
        result = await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        self.served += 1
        return result

    def close(self):
        self.pool.shutdown(wait=False, cancel_futures=True)


# ---- the web app ------------------------------------------------------------------------

async def read_body(request, limit):
    """The request body, at most `limit` bytes; beyond, InputError 413. A body somewhat over the limit is read
    to its end and dropped (so the client, still sending, gets to read the message); a flood is cut off."""
    mb = limit / 2 ** 20
    drain = max(4 * limit, 64 * 2 ** 20)
    declared = request.headers.get("content-length", "")
    too_big = InputError(f"the file is {int(declared) / 2 ** 20:.1f} MB; this page takes files up to {mb:g} MB"
                         if declared.isdigit() else f"the file is larger than {mb:g} MB, the most this page takes", status=413)
    if declared.isdigit() and int(declared) > drain: raise too_big
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            chunks = []  # keep nothing; read on only to let the client finish sending
            if n > drain: break
            continue
        chunks.append(chunk)
    if n > limit: raise too_big
    return b"".join(chunks)


def _json(payload, status=200):
    from starlette.responses import JSONResponse  # the `serve` extra: imported when a server runs
    return JSONResponse(payload, status_code=status, headers={"Cache-Control": "no-store"})


def create_app(models, max_upload_mb=MAX_UPLOAD_MB, queue_size=QUEUE_SIZE, max_pixels=MAX_PIXELS, examples=(),
               keep_dir=None, allowed_hosts=None):
    """The Starlette app serving `models` (ServedModel list); `app.state.engine` is its queue.
    (starlette is the `serve` extra, imported here so the rest of this module works without it.)

    allowed_hosts: Host header values accepted (default: any); the command limits a loopback server to
    loopback names, so a web page elsewhere cannot reach it through DNS rebinding."""
    from starlette.applications import Starlette  # the `serve` extra, as in _json
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.responses import HTMLResponse, Response
    from starlette.routing import Route
    engine = Engine(queue_size)
    limit = int(float(max_upload_mb) * 2 ** 20)
    examples = list(examples)
    info = {"models": [m.describe() for m in models],
            "examples": [{"label": label, "filename": name} for label, name, _ in examples],
            "max_upload_bytes": limit, "max_pixels": max_pixels, "keeps_uploads": keep_dir is not None,
            "disclaimer": DISCLAIMER}
    security = {"Content-Security-Policy": "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; "
                                           "script-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; "
                                           "form-action 'none'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

    async def page(request):
        return HTMLResponse(PAGE, headers=security)

    async def models_info(request):
        return _json(info)

    async def status(request):
        return _json({"held": engine.held, "peak": engine.peak, "served": engine.served, "capacity": engine.capacity})

    async def example(request):
        i = request.path_params["index"]
        if not 0 <= i < len(examples): return _json({"ok": False, "error": f"no example {i}"}, 404)
        png = examples[i][1].lower().endswith(".png")
        return Response(examples[i][2], media_type="image/png" if png else "application/octet-stream",
                        headers={"Cache-Control": "no-store"})

    async def predict(request):
        try:
            index = request.query_params.get("model", "0")
            if not index.isdigit() or int(index) >= len(models):
                raise InputError(f"unknown model {index!r}: choose 0 to {len(models) - 1}")
            filename = clean_filename(request.query_params.get("filename", "upload"))
            with engine.slot():
                data = await read_body(request, limit)
                result = await engine.run(analyse, models[int(index)], data, filename, max_pixels, keep_dir)
            result["model"] = int(index)
            return _json(result)
        except InputError as e:
            return _json({"ok": False, "error": str(e)}, e.status)
        except Busy as e:
            return _json({"ok": False, "error": str(e)}, 503)
        except CxrError as e:
            return _json({"ok": False, "error": str(e)}, 400)
        except Exception as e:  # a bug must cost one answer, not the server: say what, log the traceback
            traceback.print_exc(file=sys.stderr)
            return _json({"ok": False, "error": f"the server could not analyse this file ({type(e).__name__}: {e})"}, 500)

    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))] if allowed_hosts else []
    app = Starlette(routes=[Route("/", page), Route("/api/models", models_info), Route("/api/status", status),
                            Route("/api/examples/{index:int}", example),
                            Route("/api/predict", predict, methods=["POST"])], middleware=middleware)
    app.state.engine = engine
    return app


def bind_socket(host, port):
    "A listening socket on (host, port); port 0 picks a free one."
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise CxrError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock

"""`python -m cxr_fast serve MODEL_DIR...`: a local web page to try a model on one X-ray at a time.

Upload a PNG, JPEG, BMP, TIFF or DICOM file (or pick one of the bundled synthetic phantoms) and the page shows
the predicted class, every class probability as a bar (with its threshold where the model has one), the
Grad-CAM overlay beside the image, and the model card (model.json, plus MODEL_CARD.md when the model dir
has one). Several model dirs give a selector, with an "all models, side by side" choice.

A small Starlette app rather than Gradio, because:
- nothing is written and nothing is served from disk: an upload is read into memory (at most `max_upload_mb`),
  decoded there as `predict` decodes a file and handed to the model's Predictor (upload.py); results go back
  inline (images as data URLs).
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
One upload -> one answer is upload.py; the page itself is page.py; the model card's HTML is card.py.
"""
import asyncio
import socket
import sys
import tempfile
import traceback
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from ...core.errors import CxrError
from ...data.images import IMAGE_SUFFIXES
from ...data.sources.phantom import make_phantoms
from ...inference.predictor import load_model
from ...models.folder import find_model_dir
from .card import DISCLAIMER, model_card_html
from .page import PAGE, SCRIPT
from .upload import MAX_PIXELS, InputError, analyse, clean_filename

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860
MAX_UPLOAD_MB = 32          # a 3000x3000 16-bit uncompressed DICOM is 18 MB
QUEUE_SIZE = 32             # requests held at once (waiting or running); more get "busy"
MAX_EXAMPLES = 12
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
LOOPBACK_NAMES = ["127.0.0.1", "localhost"]  # Host header values a loopback IPv4 server accepts


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


def form_file(body, content_type, filename):
    """(bytes, name) of the first file of a multipart/form-data body (a browser form, `curl -F file=@x.png`), parsed
    from the body read_body already capped (the standard library's MIME parser: no extra package); InputError when
    it holds no file."""
    from email import message_from_bytes, policy
    message = message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode("latin-1") + body, policy=policy.HTTP)
    if not message.is_multipart(): raise InputError("the multipart upload could not be read: send the file as the body "
                                                    "or as a form field (curl -F file=@x.png)")
    for part in message.iter_parts():
        if part.get_filename() is not None:
            return part.get_payload(decode=True) or b"", clean_filename(part.get_filename() or filename)
    raise InputError("the form holds no file: send the X-ray as a file field (curl -F file=@x.png)")


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
                                           "script-src 'self'; connect-src 'self'; base-uri 'none'; "
                                           "form-action 'none'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

    async def page(request):
        return HTMLResponse(PAGE, headers=security)

    async def script(request):
        return Response(SCRIPT, media_type="text/javascript", headers={**security, "Cache-Control": "no-store"})

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
                if request.headers.get("content-type", "").startswith("multipart/form-data"):
                    data, filename = form_file(data, request.headers["content-type"], filename)
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
    app = Starlette(routes=[Route("/", page), Route("/app.js", script), Route("/api/models", models_info),
                            Route("/api/status", status),
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

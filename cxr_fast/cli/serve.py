"""`serve`: the local web page over a model folder."""
from ..apps.serve.server import (DEFAULT_HOST, DEFAULT_PORT, LOOPBACK, LOOPBACK_NAMES, MAX_PIXELS, MAX_UPLOAD_MB,
                                 QUEUE_SIZE, bind_socket, bundled_examples, create_app, load_models)
from ..core.errors import CxrError
from ..data.images import set_max_pixels
from ..core.args import as_float, as_int


def serve_command(*model_dirs, host=DEFAULT_HOST, port=DEFAULT_PORT, max_upload_mb=MAX_UPLOAD_MB, queue_size=QUEUE_SIZE,
                  max_pixels=MAX_PIXELS, examples=None, keep_uploads=None, device=None):
    """Serve one or more models on a local web page: upload an X-ray, see the probabilities, Grad-CAM, model card.

    python -m cxr_fast serve runs/r18/model [runs/other/model ...] [--port 7860]

    Args:
      model_dirs: model folders that `train` wrote (or their run folders); several give a selector
      host: address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to your network,
        with no authentication)
      port: port to listen on (0: any free port; the URL is printed)
      max_upload_mb: largest file accepted
      queue_size: requests held at once (waiting or running); more get 'busy, try again'
      max_pixels: largest image (width x height) decoded; bigger ones are refused before decoding
      examples: a folder of your own example images to offer besides the synthetic phantoms
      keep_uploads: a folder to keep every upload in (server-made names); default: nothing is kept
      device: cpu or cuda (default: cuda when available)
    """
    try:
        import starlette  # noqa: F401  (the `serve` extra: checked here to fail in one line before loading models)
        import uvicorn
    except ImportError as e:
        raise CxrError(f"serve needs {e.name}: pip install -e '.[serve]' (starlette, uvicorn)") from None
    port = as_int(port, "port", 0)
    if port > 65535: raise CxrError(f"--port must be <= 65535, got {port}")
    queue_size = as_int(queue_size, "queue-size", 1)
    max_pixels = as_int(max_pixels, "max-pixels", 1)
    set_max_pixels(max_pixels)  # the decoder's own limit, the same number
    max_upload_mb = as_float(max_upload_mb, "max-upload-mb", 0.001)
    host = str(host)
    models = load_models([str(m) for m in model_dirs], device=device)
    app = create_app(models, max_upload_mb, queue_size, max_pixels, bundled_examples(examples),
                     keep_dir=keep_uploads, allowed_hosts=LOOPBACK_NAMES if host in LOOPBACK_NAMES else None)
    sock = bind_socket(host, port)
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    print(f"cxr_fast serve: {len(models)} model(s) ({', '.join(m.name for m in models)}) at http://{shown}:{port}/",
          flush=True)
    print(f"  uploads up to {max_upload_mb:g} MB and {max_pixels / 1e6:g} megapixels, {queue_size} requests queued at most; "
          f"{'uploads kept in ' + str(keep_uploads) if keep_uploads else 'uploads are not kept'}; Ctrl+C stops", flush=True)
    if host not in LOOPBACK:
        print(f"  warning: listening on {host}: anyone who can reach this machine can use the page (no authentication)",
              flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_keep_alive=5)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        app.state.engine.close()
        sock.close()
    return 0

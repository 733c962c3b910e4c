"""Black-box reality: a real uvicorn server on 127.0.0.1, real HTTP, real images.

Covers ``pixmark.serve`` (the model server), ``pixmark.remote`` (``http_query`` and the
resumable scraper ``collect_pairs``) and ``pixmark.export`` (TorchScript/ONNX files that
reproduce the model, so exported copies can be verified).
"""

from __future__ import annotations

import asyncio
import base64
import io
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pixmark import data, nets
from pixmark.errors import PixmarkError
from pixmark.remote import (
    PairsSource,
    collect_pairs,
    encode_png,
    http_query,
    load_pairs,
    quantize,
)
from pixmark.serve import create_app, running

Q = 1 / 255  # one 8-bit level


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return nets.create("unet", channels=3, width=8, depth=2).eval()


@pytest.fixture(scope="module")
def photos() -> list[torch.Tensor]:
    """Real photographs (scikit-image, sporco, ...), as [3, H, W] in [0, 1]."""
    return [img for _, img in data.images("builtin", channels=3)[:6]]


def crops(photos: list[torch.Tensor], n: int, h: int, w: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(n * 1000 + h * 10 + w)
    out = []
    for i in range(n):
        img = photos[i % len(photos)]
        y = int(torch.randint(0, img.shape[1] - h + 1, (1,), generator=gen))
        x = int(torch.randint(0, img.shape[2] - w + 1, (1,), generator=gen))
        out.append(img[:, y : y + h, x : x + w])
    return torch.stack(out)


@pytest.fixture(scope="module")
def url(model: torch.nn.Module):
    with running(create_app(model)) as base:
        yield base


def local(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """What the server should answer: the model on the 8-bit input, rounded to 8 bit."""
    with torch.no_grad():
        return quantize(model(quantize(images)).clamp(0, 1))


def decode(content: bytes) -> torch.Tensor:
    im = Image.open(io.BytesIO(content))
    assert im.format == "PNG"
    arr = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8)
    c = len(im.getbands())
    return arr.view(im.size[1], im.size[0], c).permute(2, 0, 1).float() / 255


def post_png(base: str, body: bytes, ctype: str = "image/png", **kw) -> httpx.Response:
    return httpx.post(f"{base}/v1/process", content=body, headers={"content-type": ctype}, **kw)


def assert_serving(base: str, model: torch.nn.Module, photos: list[torch.Tensor]) -> None:
    assert httpx.get(f"{base}/v1/health").json() == {"status": "ok"}
    x = crops(photos, 1, 20, 28)
    r = post_png(base, encode_png(x[0]))
    assert r.status_code == 200
    assert (decode(r.content) - local(model, x)[0]).abs().max() <= Q + 1e-6


# --------------------------------------------------------------------------- server


def test_process_returns_model_output_within_8bit(url, model, photos) -> None:
    x = crops(photos, 3, 45, 61)  # odd size: the UNet pads internally
    expected = local(model, x)
    for img, want in zip(x, expected, strict=True):
        r = post_png(url, encode_png(img))
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "image/png"
        got = decode(r.content)
        assert got.shape == img.shape
        # Same 8-bit levels up to one level (float noise can flip a rounding).
        assert (got - want).abs().max() <= Q + 1e-6
        assert (got - want).abs().mean() < 0.01 * Q
        # ... and the output is the model's, not an echo of the input.
        assert (got - quantize(img)).abs().mean() > 5 * Q


def test_multipart_jpeg_and_grey_inputs(url, model, photos) -> None:
    x = crops(photos, 1, 32, 40)
    r = httpx.post(f"{url}/v1/process", files={"image": ("x.png", encode_png(x[0]), "image/png")})
    assert r.status_code == 200
    assert (decode(r.content) - local(model, x)[0]).abs().max() <= Q + 1e-6
    # JPEG input: the server runs the model on the decoded JPEG pixels.
    buf = io.BytesIO()
    Image.fromarray((quantize(x[0]) * 255).round().byte().permute(1, 2, 0).numpy()).save(
        buf, format="JPEG", quality=90
    )
    decoded = torch.from_numpy(np.array(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")))
    jpeg_pixels = decoded.permute(2, 0, 1).float().unsqueeze(0) / 255
    r = post_png(url, buf.getvalue(), "image/jpeg")
    assert r.status_code == 200
    assert (decode(r.content) - local(model, jpeg_pixels)[0]).abs().max() <= Q + 1e-6
    # A grey image sent to a colour model is replicated to RGB; the answer is RGB.
    grey = x[:, :1]
    r = post_png(url, encode_png(grey[0]))
    assert r.status_code == 200
    out = decode(r.content)
    assert out.shape == (3, 32, 40)
    assert (out - local(model, grey.expand(-1, 3, -1, -1))[0]).abs().max() <= Q + 1e-6


def test_info_health_and_openapi(url) -> None:
    info = httpx.get(f"{url}/v1/info").json()
    assert info["architecture"] == "unet" and info["channels"] == 3
    assert "pixmark_version" in info and "key" not in str(info).lower()
    spec = httpx.get(f"{url}/openapi.json").json()
    body = spec["paths"]["/v1/process"]["post"]["requestBody"]["content"]
    assert {"image/png", "image/jpeg", "multipart/form-data"} <= set(body)


def _big_compressible_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (7100, 7100), 128).save(buf, format="PNG")  # 50.4 megapixels, ~50 kB
    return buf.getvalue()


BAD_REQUESTS = {
    "empty body": (lambda png: (b"", "image/png"), 400, "empty"),
    "non-image bytes": (
        lambda png: (b"hello, not an image" * 10, "image/png"),
        415,
        "not an image",
    ),
    "truncated png": (lambda png: (png[: len(png) // 2], "image/png"), 400, "truncated"),
    "50 megapixels": (lambda png: (_big_compressible_png(), "image/png"), 413, "50410000 pixels"),
    "wrong content type": (lambda png: (png, "text/plain"), 415, "text/plain"),
    "no content type": (lambda png: (png, ""), 415, "not accepted"),
    "gif image": (lambda png: (_gif(), "image/png"), 415, "GIF"),
}


def _gif() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buf, format="GIF")
    return buf.getvalue()


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_are_4xx_json_and_server_keeps_serving(case, url, model, photos) -> None:
    make, status, needle = BAD_REQUESTS[case]
    body, ctype = make(encode_png(crops(photos, 1, 64, 64)[0]))
    r = post_png(url, body, ctype)
    assert r.status_code == status, r.text
    message = r.json()["error"]
    assert needle.lower() in message.lower()
    assert "Traceback" not in message
    assert_serving(url, model, photos)


def test_multipart_without_image_field_and_oversized_upload(url, model, photos) -> None:
    png = encode_png(crops(photos, 1, 16, 16)[0])
    r = httpx.post(f"{url}/v1/process", files={"file": ("x.png", png, "image/png")})
    assert r.status_code == 422 and "'image'" in r.json()["error"]
    with running(create_app(model, max_upload_bytes=2000)) as small:
        noisy = encode_png(torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(3)))
        assert len(noisy) > 2000
        r = post_png(small, noisy)
        assert r.status_code == 413 and "limit is 2000 bytes" in r.json()["error"]
        # Chunked upload without Content-Length is cut off at the limit too.
        r = httpx.post(
            f"{small}/v1/process",
            content=iter([noisy[:1500], noisy[1500:]]),
            headers={"content-type": "image/png"},
        )
        assert r.status_code == 413
        assert_serving(small, model, photos)


def test_unknown_routes_and_methods_are_json_4xx(url) -> None:
    r = httpx.get(f"{url}/v2/nothing")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(f"{url}/v1/process")
    assert r.status_code == 405 and "error" in r.json()


def test_concurrent_same_size_requests_are_batched_and_correct(model, photos) -> None:
    x = crops(photos, 6, 24, 24)
    expected = local(model, x)
    app = create_app(model, batch_window_ms=400, max_batch=8, max_concurrency=8)
    with running(app) as base, ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda img: post_png(base, encode_png(img)), x))
    for r, want in zip(responses, expected, strict=True):
        assert r.status_code == 200
        assert (decode(r.content) - want).abs().max() <= Q + 1e-6
    sizes = app.state.batcher.batch_sizes
    assert sum(sizes) == 6
    assert max(sizes) >= 2, f"no batching happened: {sizes}"


def test_load_200_requests_8_concurrent(url, model, photos) -> None:
    sizes = [(32, 32), (24, 40)]  # two sizes: batches must never mix them
    inputs = [crops(photos, 1, *sizes[i % 2])[0] for i in range(8)]
    bodies = [encode_png(img) for img in inputs]
    expected = [local(model, img[None])[0] for img in inputs]
    latencies: list[float] = []

    async def run() -> list[tuple[int, int, bytes]]:
        sem = asyncio.Semaphore(8)
        limits = httpx.Limits(max_connections=8)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:

            async def one(i: int) -> tuple[int, int, bytes]:
                async with sem:
                    t0 = time.perf_counter()
                    r = await client.post(
                        f"{url}/v1/process",
                        content=bodies[i % 8],
                        headers={"content-type": "image/png"},
                    )
                    latencies.append(time.perf_counter() - t0)
                    return i, r.status_code, r.content

            return await asyncio.wait_for(
                asyncio.gather(*(one(i) for i in range(200))), timeout=150
            )

    results = asyncio.run(run())
    assert all(status == 200 for _, status, _ in results)
    for i, _, content in results[::7]:
        assert (decode(content) - expected[i % 8]).abs().max() <= Q + 1e-6
    qs = statistics.quantiles(latencies, n=100)
    p50, p99 = qs[49] * 1000, qs[98] * 1000
    print(f"\nload: 200 requests, 8 concurrent: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    assert_serving(url, model, photos)


# A request generator driven by the OpenAPI spec: every documented route and content
# type, plus wrong ones, with bodies from valid images to random bytes.
_ODD_TYPES = ["application/json", "text/plain", "image/webp", "application/octet-stream", ""]


def _valid_image(draw: st.DrawFn) -> bytes:
    mode = draw(st.sampled_from(["L", "RGB", "RGBA", "LA", "P", "I;16", "1"]))
    w, h = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    base = (torch.rand(h, w, 3, generator=gen) * 255).byte().numpy()
    im = Image.fromarray(base).convert(mode if mode != "I;16" else "L")
    if mode == "I;16":
        im = Image.fromarray(base[..., 0].astype("uint16") * 257)  # 16-bit grey PNG
    buf = io.BytesIO()
    fmt = "JPEG" if mode in ("L", "RGB") and draw(st.booleans()) else "PNG"
    im.save(buf, format=fmt)
    return buf.getvalue()


@st.composite
def requests_from_spec(draw: st.DrawFn, spec: dict) -> tuple[str, str, dict]:
    path = draw(st.sampled_from(sorted(spec["paths"])))
    documented = sorted(spec["paths"][path])
    method = draw(st.sampled_from(documented + ["post", "get", "put", "delete"]))
    operation = spec["paths"][path].get(method, {})
    types = list(operation.get("requestBody", {}).get("content", {})) + _ODD_TYPES
    ctype = draw(st.sampled_from(types))
    body = draw(
        st.one_of(
            st.builds(lambda d: d, st.binary(max_size=300)),
            st.composite(_valid_image)(),
            st.composite(lambda d: _valid_image(d)[: d(st.integers(0, 200))])(),
        )
    )
    if ctype == "multipart/form-data":
        field = draw(st.sampled_from(["image", "file", "image "]))
        return method, path, {"files": {field: ("x.png", body, "image/png")}}
    headers = {"content-type": ctype} if ctype else {}
    return method, path, {"content": body, "headers": headers}


def test_openapi_fuzz_finds_no_5xx(url, model, photos) -> None:
    spec = httpx.get(f"{url}/openapi.json").json()
    seen: set[int] = set()
    with httpx.Client(base_url=url, timeout=30) as client:

        @settings(
            max_examples=80,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(requests_from_spec(spec))
        def check(request: tuple[str, str, dict]) -> None:
            method, path, kwargs = request
            if method == "get":
                kwargs = {"params": {"x": "1"}}
            r = client.request(method.upper(), path, **kwargs)
            seen.add(r.status_code)
            assert r.status_code < 500, (method, path, r.status_code, r.text)
            if r.status_code >= 400:
                assert isinstance(r.json()["error"], str)

        check()
    print("statuses seen:", sorted(seen))
    assert 200 in seen and any(400 <= s < 500 for s in seen)
    assert_serving(url, model, photos)


# --------------------------------------------------------------------------- client


def test_http_query_matches_local_model(url, model, photos) -> None:
    x = crops(photos, 4, 33, 47)
    with http_query(f"{url}/v1/process", channels=3) as query:
        got = query(x)
        assert query.requests_made == 4
    assert got.shape == x.shape
    assert (got - local(model, x)).abs().max() <= Q + 1e-6
    with http_query(f"{url}/v1/process", channels=3, request_format="multipart") as query:
        assert (query(x[:1]) - local(model, x[:1])).abs().max() <= Q + 1e-6


def test_http_query_concurrent_requests_keep_order_budget_and_pace(url, model, photos) -> None:
    """``concurrency``: answers come back in input order, equal to one-by-one requests; the
    budget and the pace still hold across the threads; bad values are clear errors."""
    x = crops(photos, 12, 33, 47)
    with http_query(f"{url}/v1/process", channels=3, concurrency=6) as query:
        got = query(x)
        assert query.requests_made == 12
    assert (got - local(model, x)).abs().max() <= Q + 1e-6
    with http_query(f"{url}/v1/process", channels=3) as query:
        assert torch.equal(got, query(x))
    paced = http_query(f"{url}/v1/process", channels=3, concurrency=4, rate_per_s=40.0)
    start = time.monotonic()
    paced(x[:9])
    assert time.monotonic() - start >= 8 / 40.0 - 0.01  # 9 requests, 8 gaps of 25 ms
    budget = http_query(f"{url}/v1/process", channels=3, concurrency=4, max_requests=10)
    with pytest.raises(PixmarkError, match="has 10 of 10 requests left, fewer than the 12"):
        budget(x)
    assert budget.requests_made == 0
    for bad in (0, 65, 2.5, True):
        with pytest.raises(PixmarkError, match="concurrency must be"):
            http_query(f"{url}/v1/process", channels=3, concurrency=bad)


def _json_inverter():
    """A third-party API shape: JSON in, JSON out, base64 images; answers 1 - x."""
    app = FastAPI()

    @app.post("/invert")
    async def invert(request: Request) -> JSONResponse:
        payload = await request.json()
        im = Image.open(io.BytesIO(base64.b64decode(payload["picture"]))).convert("RGB")
        out = Image.eval(im, lambda v: 255 - v)
        buf = io.BytesIO()
        out.save(buf, format="PNG")
        return JSONResponse(
            {"result": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()}
        )

    @app.post("/slow")
    async def slow() -> JSONResponse:
        await asyncio.sleep(3)
        return JSONResponse({})

    @app.post("/html")
    async def html() -> JSONResponse:
        return JSONResponse({"not": "an image"})

    return app


def test_http_query_any_endpoint_and_clear_errors(url, photos) -> None:
    x = crops(photos, 2, 16, 20)
    with running(_json_inverter()) as other:
        with http_query(
            f"{other}/invert",
            channels=3,
            request_format="json-base64",
            field="picture",
            response_format="json-base64",
            response_field="result",
        ) as query:
            assert (query(x) - (1 - quantize(x))).abs().max() <= 1e-6
        with pytest.raises(PixmarkError, match=r"/slow did not answer within 0.5 s"):
            http_query(f"{other}/slow", channels=3, timeout=0.5)(x[:1])
        with pytest.raises(PixmarkError, match=r"/html returned HTTP 200 .*not an image"):
            http_query(f"{other}/html", channels=3)(x[:1])
    with pytest.raises(PixmarkError, match=r"/v1/nothing answered HTTP 404"):
        http_query(f"{url}/v1/nothing", channels=3)(x[:1])
    with pytest.raises(PixmarkError, match=r"answered HTTP 415: .*image/jpeg"):
        http_query(
            f"{url}/v1/process",
            channels=3,
            headers={"Content-Type": "text/plain"},
            request_format="json-base64",
        )(x[:1])
    budget = http_query(f"{url}/v1/process", channels=3, max_requests=1)
    budget(x[:1])
    with pytest.raises(PixmarkError, match="budget .* has 0 of 1 requests left"):
        budget(x[:1])
    assert budget.requests_made == 1  # refused before sending anything
    with running(create_app(nets.create("dncnn", channels=1, width=4, depth=2))) as dead:
        pass  # the server has stopped: its port refuses connections
    with pytest.raises(PixmarkError, match="cannot reach"):
        http_query(f"{dead}/v1/process", channels=3, retries=0)(x[:1])


def test_collect_pairs_resumes_after_interruption(model, photos, tmp_path) -> None:
    inputs = crops(photos, 10, 24, 24)
    out = tmp_path / "pairs.safetensors"
    first = create_app(model)
    with running(first) as base:
        first_in, first_out = collect_pairs(
            f"{base}/v1/process", inputs, out, rate_per_s=200, max_requests=4, save_every=3
        )
    assert len(first_in) == len(first_out) == 4 and out.exists()
    assert sum(first.state.batcher.batch_sizes) == 4
    # The service goes away mid-collection: a clear error, and the progress stays on disk.
    with pytest.raises(PixmarkError, match="cannot reach"):
        collect_pairs(
            f"{base}/v1/process", inputs, out, rate_per_s=200, max_requests=None, retries=0
        )
    assert load_pairs(out)[1].shape == (4, 3, 24, 24)
    # A new run (say, a new process after a kill) continues where the file stopped.
    second = create_app(model)
    with running(second) as base2:
        endpoint = f"{base2}/v1/process"
        all_in, all_out = collect_pairs(endpoint, inputs, out, rate_per_s=200, max_requests=None)
        assert sum(second.state.batcher.batch_sizes) == 6  # nothing was asked twice
        assert torch.equal(all_out[:4], first_out)
        assert torch.equal(all_in, quantize(inputs))
        assert (all_out - local(model, inputs)).abs().max() <= Q + 1e-6
        # Done: calling again sends nothing.
        again_in, _ = collect_pairs(endpoint, inputs, out, rate_per_s=200, max_requests=5)
        assert len(again_in) == 10 and sum(second.state.batcher.batch_sizes) == 6
        # Another input set must not be mixed into this file.
        with pytest.raises(PixmarkError, match="other inputs"):
            collect_pairs(endpoint, inputs.flip(0), out, rate_per_s=200, max_requests=1)
    loaded_in, loaded_out = load_pairs(out)
    assert torch.equal(loaded_in, all_in) and torch.equal(loaded_out, all_out)
    # Offline training batches: the same crop of an input and of its output.
    xb, yb = PairsSource(out, size=16).batch(5)
    assert xb.shape == yb.shape == (5, 3, 16, 16)
    xb, yb = PairsSource((all_in, 1 - all_in), size=16, seed=4).batch(7)
    assert torch.equal(yb, 1 - xb)


# --------------------------------------------------------------------------- export


@pytest.mark.parametrize("arch", ["unet", "resnet9"])
def test_exports_reproduce_the_model(arch, tmp_path, photos) -> None:
    from pixmark.checkpoint import load_model
    from pixmark.export import export_onnx, export_torchscript, onnx_query
    from pixmark.schemes.base import as_query

    torch.manual_seed(1)
    net = nets.create(arch, channels=3, width=8, **({"depth": 3} if arch == "unet" else {}))
    net.eval()
    ts = export_torchscript(net, tmp_path / "m.pt", channels=3)
    onnx = export_onnx(net, tmp_path / "m.onnx", channels=3)
    x = crops(photos, 2, 37, 53)  # not a multiple of the nets' strides
    with torch.no_grad():
        want = net(x).clamp(0, 1)
    assert (as_query(load_model(ts))(x) - want).abs().max() < 1e-4
    assert (onnx_query(onnx)(x) - want).abs().max() < 1e-4
    with pytest.raises(PixmarkError, match="already exists"):
        export_onnx(net, onnx, channels=3)
    with pytest.raises(PixmarkError, match="does not exist"):
        onnx_query(tmp_path / "missing.onnx")


def test_graceful_shutdown_finishes_requests_in_flight(photos) -> None:
    torch.manual_seed(2)
    slow = nets.create("unet", channels=3, width=16, depth=3).eval()  # ~0.1 s per 256² image
    x = crops(photos, 4, 256, 256)
    app = create_app(slow, max_concurrency=1)
    pool = ThreadPoolExecutor(4)
    with running(app) as base:
        futures = [pool.submit(post_png, base, encode_png(img), timeout=120) for img in x]
        stats = app.state.stats
        deadline = time.monotonic() + 60
        while sum(stats.values()) < 4 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert sum(stats.values()) == 4 and stats["served"] < 4
    # Leaving the block asked the server to stop while requests were queued or running:
    # it stops accepting connections but answers every request it has.
    responses = [f.result() for f in futures]
    pool.shutdown()
    assert [r.status_code for r in responses] == [200] * 4
    for r, want in zip(responses, local(slow, x), strict=True):
        assert (decode(r.content) - want).abs().max() <= Q + 1e-6


def test_overload_is_429_with_retry_after_and_clients_retry(photos) -> None:
    torch.manual_seed(3)
    slow = nets.create("unet", channels=3, width=16, depth=3).eval()
    x = crops(photos, 6, 256, 256)
    app = create_app(slow, max_concurrency=1, max_queue=0)
    with running(app) as base, ThreadPoolExecutor(6) as pool:
        bodies = [encode_png(img) for img in x]
        responses = list(pool.map(lambda b: post_png(base, b, timeout=120), bodies))
        codes = sorted(r.status_code for r in responses)
        assert set(codes) == {200, 429}, codes
        busy = next(r for r in responses if r.status_code == 429)
        assert busy.headers["retry-after"] == "1" and "retry" in busy.json()["error"]
        # http_query backs off on 429 (honouring Retry-After) and gets every answer.
        queries = [http_query(f"{base}/v1/process", channels=3, retries=20) for _ in range(3)]
        outs = list(pool.map(lambda i: queries[i](x[i : i + 1]), range(3)))
        for i, out in enumerate(outs):
            assert (out - local(slow, x[i : i + 1])).abs().max() <= Q + 1e-6


def test_serve_on_a_busy_port_is_a_clear_error(url, model) -> None:
    from pixmark.serve import serve

    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(PixmarkError, match=f"cannot serve on 127.0.0.1:{port}"):
        serve(model, port=port)

"""Talking to a model that is only reachable over HTTP.

* :func:`http_query` turns any endpoint that takes an image and returns one into a
  :data:`~pixmark.schemes.base.Query`, so ``pixmark.verify`` checks a suspect service
  exactly as it checks a local model.
* :func:`collect_pairs` is the attacker's side: it scrapes (input, output) pairs from a
  service at a bounded rate and count, saving progress so a killed run resumes.
* :func:`encode_png` / :func:`decode_image` are the lossless 8-bit codec that both this
  client and :mod:`pixmark.serve` use.

Images travel as 8-bit PNG by default: inputs are rounded to 256 levels before they are
sent and outputs come back with 256 levels, so a watermark must survive 8-bit
quantisation to be verifiable through an API (every scheme in pixmark is tested so).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from pixmark.errors import PixmarkError
from pixmark.fileio import atomic_write, check_output_path

RequestFormat = Literal["raw-png", "raw-jpeg", "multipart", "json-base64"]
ResponseFormat = Literal["png", "image", "json-base64"]
REQUEST_FORMATS: tuple[str, ...] = ("raw-png", "raw-jpeg", "multipart", "json-base64")
RESPONSE_FORMATS: tuple[str, ...] = ("png", "image", "json-base64")

#: HTTP statuses worth retrying after a pause (rate limits, overload).
RETRY_STATUSES = frozenset({429, 502, 503, 504})
#: The most requests an :class:`HttpQuery` keeps in flight at once.
MAX_CONCURRENCY = 64


class ImageDecodeError(PixmarkError):
    """Bytes that are not a readable PNG/JPEG image (``status`` is the HTTP code to use)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- codec


def to_uint8(image: Tensor) -> np.ndarray:
    """[C, H, W] (or [1, C, H, W]) in [0, 1] -> uint8 [H, W] or [H, W, 3], rounded."""
    t = image.detach()
    if t.dim() == 4 and t.shape[0] == 1:
        t = t[0]
    if t.dim() != 3 or t.shape[0] not in (1, 3):
        raise PixmarkError(
            f"cannot encode a tensor of shape {tuple(image.shape)} as an image; "
            "expected [C, H, W] with C = 1 or 3"
        )
    t = torch.nan_to_num(t.float(), nan=0.0).clamp(0, 1)
    array = (t * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return array[..., 0] if array.shape[2] == 1 else array


def encode_png(image: Tensor, compress_level: int = 3) -> bytes:
    """Lossless 8-bit PNG of ``image`` ([C, H, W] in [0, 1], C 1 or 3; values rounded)."""
    buf = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def encode_jpeg(image: Tensor, quality: int = 95) -> bytes:
    """JPEG of ``image`` (lossy; for endpoints that only take JPEG)."""
    buf = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def quantize(images: Tensor) -> Tensor:
    """``images`` rounded to 8 bit, exactly as :func:`encode_png` sends them."""
    return (torch.nan_to_num(images.float(), nan=0.0).clamp(0, 1) * 255).round() / 255


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from an image header, without decoding pixels."""
    with _opened(data) as im:
        return im.size


def decode_image(
    data: bytes,
    channels: int | None = None,
    max_pixels: int | None = None,
    formats: tuple[str, ...] | None = ("PNG", "JPEG"),
) -> Tensor:
    """Decode PNG/JPEG bytes to a float32 [C, H, W] image in [0, 1].

    ``channels`` (1 or 3) converts grey to RGB (replicated) or RGB to grey (luminance);
    alpha is dropped; 16-bit PNGs keep their precision. The pixel count is checked from
    the header before any pixel is decoded. Raises :class:`ImageDecodeError` (with the
    HTTP status a server should answer: 400, 413 or 415).
    """
    from pixmark.data.sources import _pil_to_array, to_channels

    if not data:
        raise ImageDecodeError("the request body is empty; send a PNG or JPEG image")
    with _opened(data) as im:
        if formats is not None and im.format not in formats:
            raise ImageDecodeError(
                f"{im.format} images are not accepted; send {' or '.join(formats)}", 415
            )
        w, h = im.size
        if w < 1 or h < 1:
            raise ImageDecodeError(f"the image has no pixels ({w}x{h})")
        if max_pixels is not None and w * h > max_pixels:
            raise ImageDecodeError(
                f"the image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}", 413
            )
        try:
            im.load()
            array = _pil_to_array(im)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise ImageDecodeError(f"the image is corrupt or truncated ({exc})") from None
    tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).contiguous()
    return to_channels(tensor, channels) if channels is not None else tensor


class _opened:
    """Context manager: ``Image.open`` on bytes with pixmark errors for bad input."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.image: Image.Image | None = None

    def __enter__(self) -> Image.Image:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                self.image = Image.open(io.BytesIO(self.data))
        except Image.DecompressionBombError as exc:
            raise ImageDecodeError(f"the image is too large ({exc})", 413) from None
        except UnidentifiedImageError:
            raise ImageDecodeError(
                "the body is not an image pixmark can read; send a PNG or JPEG image", 415
            ) from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise ImageDecodeError(f"the image header is corrupt ({exc})") from None
        return self.image

    def __exit__(self, *exc: object) -> None:
        if self.image is not None:
            self.image.close()


# --------------------------------------------------------------------------- client


class HttpQuery:
    """A :data:`~pixmark.schemes.base.Query` backed by an HTTP endpoint (see :func:`http_query`).

    ``requests_made`` counts requests sent; ``max_requests`` bounds it over the object's
    lifetime. Call :meth:`close` (or use ``with``) to release the connection pool.
    """

    def __init__(
        self,
        url: str,
        *,
        channels: int,
        request_format: RequestFormat = "raw-png",
        field: str = "image",
        response_format: ResponseFormat = "png",
        response_field: str = "image",
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
        max_requests: int | None = None,
        rate_per_s: float | None = None,
        retries: int = 2,
        concurrency: int = 1,
    ) -> None:
        try:
            import httpx
        except ImportError:
            raise PixmarkError(
                "querying a URL needs the httpx package; install it with `pip install httpx`"
            ) from None
        if not str(url).startswith(("http://", "https://")):
            raise PixmarkError(f"{url!r} is not an http:// or https:// URL")
        if channels not in (1, 3):
            raise PixmarkError(f"channels must be 1 or 3, got {channels!r}")
        if request_format not in REQUEST_FORMATS:
            raise PixmarkError(
                f"unknown request format {request_format!r}; choose from "
                f"{', '.join(REQUEST_FORMATS)}"
            )
        if response_format not in RESPONSE_FORMATS:
            raise PixmarkError(
                f"unknown response format {response_format!r}; choose from "
                f"{', '.join(RESPONSE_FORMATS)}"
            )
        if max_requests is not None and max_requests < 0:
            raise PixmarkError(f"max_requests must be >= 0, got {max_requests}")
        if rate_per_s is not None and not rate_per_s > 0:
            raise PixmarkError(f"rate_per_s must be > 0, got {rate_per_s}")
        if timeout <= 0:
            raise PixmarkError(f"timeout must be > 0 seconds, got {timeout}")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int):
            raise PixmarkError(f"concurrency must be a whole number, got {concurrency!r}")
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise PixmarkError(
                f"concurrency must be 1 to {MAX_CONCURRENCY} requests at a time, got {concurrency}"
            )
        self.url = str(url)
        self.channels = channels
        self.request_format = request_format
        self.field = field
        self.response_format = response_format
        self.response_field = response_field
        self.timeout = float(timeout)
        self.max_requests = max_requests
        self.rate_per_s = rate_per_s
        self.retries = max(int(retries), 0)
        self.concurrency = concurrency
        self.requests_made = 0
        self._last_sent: float | None = None
        self._lock = threading.Lock()  # budget, count and pacing are shared by the threads
        self._httpx = httpx
        self._client = httpx.Client(timeout=self.timeout, headers=dict(headers or {}))

    def __enter__(self) -> HttpQuery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def __call__(self, images: Tensor) -> Tensor:
        """Send each image of [N, C, H, W] in [0, 1]; return the N outputs, same shape."""
        if images.dim() != 4 or images.shape[1] != self.channels:
            raise PixmarkError(
                f"{self.url} takes [N, {self.channels}, H, W] images; got {tuple(images.shape)}"
            )
        remaining = self.remaining
        if remaining is not None and remaining < len(images):
            raise PixmarkError(
                f"the request budget for {self.url} has {remaining} of {self.max_requests} "
                f"requests left, fewer than the {len(images)} images to send; raise max_requests"
            )
        if not len(images):
            return images.clone()
        if self.concurrency == 1 or len(images) == 1:
            return torch.stack([self.one(img) for img in images])
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(images))) as pool:
            return torch.stack(list(pool.map(self.one, images)))

    @property
    def remaining(self) -> int | None:
        """Requests left in the budget (``None``: unbounded)."""
        return None if self.max_requests is None else self.max_requests - self.requests_made

    def one(self, image: Tensor) -> Tensor:
        """Send one [C, H, W] image and return the decoded [C, H, W] output in [0, 1]."""
        h, w = image.shape[-2:]
        kwargs = self._request(image)
        for attempt in range(self.retries + 1):
            response = self._send(kwargs)
            if response.status_code in RETRY_STATUSES and attempt < self.retries:
                time.sleep(_retry_after(response, attempt))
                continue
            break
        if response.status_code >= 400:
            raise PixmarkError(
                f"{self.url} answered HTTP {response.status_code}: {_error_text(response)}"
            )
        out = self._decode(response)
        if out.shape[-2:] != (h, w):
            raise PixmarkError(
                f"{self.url} returned a {out.shape[-1]}x{out.shape[-2]} image for a {w}x{h} "
                "input; pixmark verifies image-to-image services that keep the size"
            )
        return out

    def _request(self, image: Tensor) -> dict[str, Any]:
        fmt = self.request_format
        if fmt == "raw-jpeg":
            return {"content": encode_jpeg(image), "headers": {"Content-Type": "image/jpeg"}}
        png = encode_png(image)
        if fmt == "raw-png":
            return {"content": png, "headers": {"Content-Type": "image/png"}}
        if fmt == "multipart":
            return {"files": {self.field: ("image.png", png, "image/png")}}
        return {"json": {self.field: base64.b64encode(png).decode("ascii")}}

    def _send(self, kwargs: dict[str, Any]) -> Any:
        with self._lock:
            if self.max_requests is not None and self.requests_made >= self.max_requests:
                raise PixmarkError(
                    f"the request budget for {self.url} is spent ({self.max_requests} "
                    "requests); raise max_requests to continue"
                )
            if self.rate_per_s is not None and self._last_sent is not None:
                wait = self._last_sent + 1.0 / self.rate_per_s - time.monotonic()
                if wait > 0:
                    time.sleep(wait)  # under the lock: the pace holds across threads
            self._last_sent = time.monotonic()
            self.requests_made += 1
        httpx = self._httpx
        try:
            return self._client.post(self.url, **kwargs)
        except httpx.TimeoutException:
            raise PixmarkError(
                f"{self.url} did not answer within {self.timeout:g} s; raise the timeout "
                "or check the service"
            ) from None
        except httpx.HTTPError as exc:
            raise PixmarkError(f"cannot reach {self.url} ({type(exc).__name__}: {exc})") from None

    def _decode(self, response: Any) -> Tensor:
        data = response.content
        if self.response_format == "json-base64":
            try:
                payload = response.json()
                text = payload[self.response_field]
                if "," in text and text.startswith("data:"):
                    text = text.split(",", 1)[1]
                data = base64.b64decode(text, validate=True)
            except (ValueError, KeyError, TypeError) as exc:
                raise PixmarkError(
                    f"{self.url} did not return JSON with a base64 image under "
                    f"{self.response_field!r} ({type(exc).__name__})"
                ) from None
        try:
            return decode_image(data, channels=self.channels, formats=None)
        except PixmarkError as exc:
            ctype = response.headers.get("content-type", "no content type")
            raise PixmarkError(
                f"{self.url} returned HTTP {response.status_code} with {ctype} that is not an "
                f"image ({exc})"
            ) from None


def http_query(
    url: str,
    *,
    channels: int,
    request_format: RequestFormat = "raw-png",
    field: str = "image",
    response_format: ResponseFormat = "png",
    response_field: str = "image",
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
    max_requests: int | None = None,
    rate_per_s: float | None = None,
    retries: int = 2,
    concurrency: int = 1,
) -> HttpQuery:
    """A :data:`~pixmark.schemes.base.Query` that sends each image to ``url`` and decodes the
    answer; works with any service that takes one image and returns one of the same size.

    ``request_format``: ``"raw-png"`` (body = PNG, ``Content-Type: image/png``; what
    ``pixmark serve`` takes), ``"raw-jpeg"``, ``"multipart"`` (form file field ``field``) or
    ``"json-base64"`` (``{field: base64 PNG}``). ``response_format``: ``"png"``/``"image"``
    (the body is an image in any format Pillow reads) or ``"json-base64"`` (base64 image,
    or a data URL, under ``response_field``). ``headers`` go with every request (e.g.
    ``{"Authorization": "Bearer ..."}``). At most ``max_requests`` requests are sent, no
    faster than ``rate_per_s``; 429/502/503/504 answers are retried ``retries`` times,
    honouring ``Retry-After``. ``concurrency`` (1-64) requests of one batch are in flight
    at once (threads sharing one connection pool; the budget and the pace still hold), for
    services whose round trip, not their model, sets the time: the trigger scheme's rank
    test sends 999 images. Inputs are quantised to 8 bit on the way (PNG); outputs are
    converted to ``channels``. Errors (HTTP status, timeout, unreachable host, a response
    that is not an image or has another size) raise :class:`PixmarkError` naming the URL.
    """
    return HttpQuery(
        url,
        channels=channels,
        request_format=request_format,
        field=field,
        response_format=response_format,
        response_field=response_field,
        headers=headers,
        timeout=timeout,
        max_requests=max_requests,
        rate_per_s=rate_per_s,
        retries=retries,
        concurrency=concurrency,
    )


def _retry_after(response: Any, attempt: int) -> float:
    try:
        return min(max(float(response.headers.get("retry-after", "")), 0.0), 30.0)
    except ValueError:
        return min(0.5 * 2**attempt, 10.0)


def _error_text(response: Any) -> str:
    try:
        payload = response.json()
        if isinstance(payload, dict):
            message = payload.get("error") or payload.get("detail") or payload
            return str(message)[:300]
    except ValueError:
        pass
    text = response.text.strip().replace("\n", " ")
    return text[:300] or response.reason_phrase or "no message"


# --------------------------------------------------------------------------- scraping

PAIRS_FORMAT = "pixmark-pairs/1"


def _digest(images: Tensor) -> str:
    t = quantize(images.detach().cpu()).mul(255).round().to(torch.uint8).contiguous()
    h = hashlib.sha256(f"{tuple(t.shape)}|".encode())
    h.update(t.numpy().tobytes())
    return h.hexdigest()


def _load_pairs(path: Path, digest: str) -> tuple[Tensor, int]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = json.loads((fh.metadata() or {}).get("pixmark-pairs", "{}"))
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise PixmarkError(f"{path} is not a readable pairs file ({exc})") from None
    if meta.get("format") != PAIRS_FORMAT or "outputs" not in tensors:
        raise PixmarkError(f"{path} is not a pixmark pairs file; give another out_file")
    if meta.get("inputs_sha256") != digest:
        raise PixmarkError(
            f"{path} holds pairs for other inputs; give another out_file or resume=False, "
            "force=True to start over"
        )
    outputs = tensors["outputs"]
    return outputs, int(meta.get("done", len(outputs)))


def _save_pairs(
    path: Path, inputs_u8: Tensor, outputs_u8: Tensor, done: int, digest: str, url: str
) -> None:
    from safetensors.torch import save_file

    meta = {
        "pixmark-pairs": json.dumps(
            {
                "format": PAIRS_FORMAT,
                "url": url,
                "done": done,
                "total": len(inputs_u8),
                "inputs_sha256": digest,
            }
        )
    }
    tensors = {"inputs": inputs_u8.contiguous(), "outputs": outputs_u8[:done].contiguous()}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def collect_pairs(
    url: str,
    inputs: Tensor,
    out_file: str | os.PathLike[str],
    *,
    rate_per_s: float,
    max_requests: int | None,
    channels: int | None = None,
    resume: bool = True,
    force: bool = False,
    save_every: int = 16,
    progress: bool = False,
    **query_options: Any,
) -> tuple[Tensor, Tensor]:
    """Scrape (input, output) pairs from the image service at ``url``; resumable.

    Sends ``inputs`` ([N, C, H, W] in [0, 1]) one by one, no faster than ``rate_per_s``
    and at most ``max_requests`` in this call (``None``: until done). Progress goes to
    ``out_file`` (``.safetensors``: uint8 ``inputs`` and the ``outputs`` so far) atomically
    every ``save_every`` answers and whenever the call stops, even on an error or Ctrl-C.
    With ``resume`` an existing ``out_file`` for the same inputs continues where it
    stopped; a file for other inputs is refused. Returns the pairs collected so far, as
    float32 in [0, 1]: the inputs exactly as sent (quantised to 8 bit) and the outputs.
    ``query_options`` go to :func:`http_query` (``request_format``, ``headers``, ...).
    """
    path = Path(out_file)
    if path.suffix != ".safetensors":
        raise PixmarkError(f"pairs file {path} must end in .safetensors")
    if inputs.dim() != 4 or inputs.shape[1] not in (1, 3):
        raise PixmarkError(f"inputs must be [N, C, H, W] with C 1 or 3; got {tuple(inputs.shape)}")
    if max_requests is not None and max_requests < 0:
        raise PixmarkError(f"max_requests must be >= 0, got {max_requests}")
    channels = channels or int(inputs.shape[1])
    digest = _digest(inputs)
    inputs_u8 = (quantize(inputs.detach().cpu()) * 255).round().to(torch.uint8)
    outputs_u8 = torch.zeros(len(inputs), channels, *inputs.shape[-2:], dtype=torch.uint8)
    done = 0
    if path.exists() and resume and not force:
        previous, done = _load_pairs(path, digest)
        outputs_u8[:done] = previous[:done]
    elif path.exists():
        check_output_path(path, force)
    if done >= len(inputs):
        return inputs_u8.float() / 255, outputs_u8.float() / 255
    query = http_query(
        url, channels=channels, rate_per_s=rate_per_s, max_requests=max_requests, **query_options
    )
    start, saved = done, done
    bar = _progress_bar(progress, len(inputs), done, url)
    try:
        while done < len(inputs) and (max_requests is None or done - start < max_requests):
            out = query.one(inputs_u8[done].float() / 255)
            outputs_u8[done] = (out * 255).round().to(torch.uint8)
            done += 1
            if bar is not None:
                bar.update(1)
            if done - saved >= save_every:
                _save_pairs(path, inputs_u8, outputs_u8, done, digest, url)
                saved = done
    finally:
        query.close()
        if bar is not None:
            bar.close()
        if done != saved or not path.exists():
            _save_pairs(path, inputs_u8, outputs_u8, done, digest, url)
    return inputs_u8[:done].float() / 255, outputs_u8[:done].float() / 255


def load_pairs(path: str | os.PathLike[str]) -> tuple[Tensor, Tensor]:
    """The (inputs, outputs) collected so far in a pairs file, float32 in [0, 1]."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_file():
        raise PixmarkError(f"pairs file {p} does not exist")
    try:
        tensors = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as exc:
        raise PixmarkError(f"{p} is not a readable pairs file ({exc})") from None
    if "inputs" not in tensors or "outputs" not in tensors:
        raise PixmarkError(f"{p} is not a pixmark pairs file")
    n = len(tensors["outputs"])
    return tensors["inputs"][:n].float() / 255, tensors["outputs"].float() / 255


class _Bar:
    def __init__(self, total: int, done: int, url: str) -> None:
        from rich.progress import Progress

        self.progress = Progress(transient=True)
        self.progress.start()
        self.task = self.progress.add_task(f"collect from {url}", total=total, completed=done)

    def update(self, n: int) -> None:
        self.progress.advance(self.task, n)

    def close(self) -> None:
        self.progress.stop()


def _progress_bar(enabled: bool, total: int, done: int, url: str) -> _Bar | None:
    return _Bar(total, done, url) if enabled else None


class PairsSource:
    """Training batches from collected pairs: ``batch(n) -> (inputs, outputs)``.

    ``pairs`` is a pairs file from :func:`collect_pairs` or an ``(inputs, outputs)`` tuple.
    Each batch draws ``n`` random pairs and, with ``size``, the same random ``size`` ×
    ``size`` crop from an input and its output, so a surrogate trains offline on what was
    scraped without sending another request.
    """

    def __init__(
        self,
        pairs: str | os.PathLike[str] | tuple[Tensor, Tensor],
        size: int | None = None,
        seed: int = 0,
    ) -> None:
        inputs, outputs = pairs if isinstance(pairs, tuple) else load_pairs(pairs)
        if len(inputs) == 0 or inputs.shape != outputs.shape:
            raise PixmarkError(
                f"need collected pairs of equal shapes; got {tuple(inputs.shape)} inputs and "
                f"{tuple(outputs.shape)} outputs"
            )
        if size is not None and min(inputs.shape[-2:]) < size:
            raise PixmarkError(
                f"crops of {size} px do not fit the collected {tuple(inputs.shape[-2:])} images"
            )
        self.inputs, self.outputs, self.size = inputs, outputs, size
        self.channels = int(inputs.shape[1])
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.inputs)

    def state_dict(self) -> dict[str, Any]:
        """The sampling position, so surrogate training on the pairs resumes exactly."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def batch(self, n: int) -> tuple[Tensor, Tensor]:
        g = self.generator
        rows = torch.randint(len(self.inputs), (n,), generator=g)
        x, y = self.inputs[rows], self.outputs[rows]
        if self.size is None:
            return x, y
        h, w = x.shape[-2:]
        xs, ys = [], []
        for i in range(n):
            top = int(torch.randint(h - self.size + 1, (1,), generator=g))
            left = int(torch.randint(w - self.size + 1, (1,), generator=g))
            window = (slice(None), slice(top, top + self.size), slice(left, left + self.size))
            xs.append(x[i][window])
            ys.append(y[i][window])
        return torch.stack(xs), torch.stack(ys)

"""What a refusal says over real HTTP, where it said something wrong or left something out before
2026-12-05: a truncated upload's 422 and `model_unavailable` without a Retry-After (the 504's deadline:
test_http_operations.py; the drain timeout's 503 with one: test_resilience.py)."""

from __future__ import annotations

from pathlib import Path

from conftest import live_server, settings_for
from sample_images import encode, gradient


def test_a_truncated_upload_is_named_as_one(client) -> None:
    image = encode(gradient(64, 64))
    head = (b'--XyZ\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n")
    for body in (head + image, head + image[:len(image) // 2]):  # no closing boundary; half the image, and none
        r = client.post("/eczema/segment", content=body, headers={"content-type": "multipart/form-data; boundary=XyZ"})
        assert r.status_code == 422 and r.json()["error"] == "invalid_parameter", r.text
        assert r.json()["detail"].startswith("the multipart body ends before its closing boundary '--XyZ--' (a "
                                             "truncated upload?); its part 'image' is cut off after "), r.text
    whole = head + image + b"\r\n--XyZ--\r\n"
    r = client.post("/eczema/segment", content=whole, headers={"content-type": "multipart/form-data; boundary=XyZ"})
    assert r.status_code == 200, r.text


def test_model_unavailable_is_a_503_without_retry_after(models_dir: Path) -> None:
    """A service without a segment model will not have one in a second: no Retry-After, which would invite
    retrying (RFC 9110: a 503 without one is handled as a 500); status and code stay as they were."""
    with live_server(settings_for(models_dir, models=("fixture-generate",), retry_after_s=3)) as s, s.client() as c:
        r = c.post("/eczema/segment", files={"image": ("i", encode(gradient(10, 10)))})
        assert r.status_code == 503 and r.json()["error"] == "model_unavailable", r.text
        assert "retry-after" not in r.headers and "retrying will not help" in r.json()["detail"]

"""service/settings.py (environment parsing) and service/uploads.py (in-memory multipart)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dermagan.cpus import usable_cores
from dermagan.service.errors import InvalidParameter, PayloadTooLarge, UnsupportedMediaType
from dermagan.service.settings import Settings, SettingsError, default_models_dir
from dermagan.service.uploads import check_content_length, form_files, parse_multipart


def test_defaults_and_environment() -> None:
    s = Settings.from_env({})
    assert s.models_dir == default_models_dir() and s.models_dir.name == "models"
    assert s.port == 8000 and s.host == "0.0.0.0" and s.api_key is None
    assert s.buckets == tuple(range(1, 9)) and s.malloc_arenas == 2
    assert Settings.from_env({"DERMAGAN_MALLOC_ARENAS": "0"}).malloc_arenas == 0
    s = Settings.from_env({"DERMAGAN_MAX_BATCH": "16", "DERMAGAN_BATCH_BUCKETS": "1, 4,8",
                           "DERMAGAN_PROVIDERS": "CPUExecutionProvider", "DERMAGAN_API_KEY": "s3cret-key",
                           "DERMAGAN_MODELS_DIR": "/x", "DERMAGAN_WARMUP": "false", "OTHER": "1"})
    assert s.buckets == (1, 4, 8, 16) and s.providers == ("CPUExecutionProvider",)
    assert s.api_key is not None and s.api_key.get_secret_value() == "s3cret-key" and "s3cret" not in repr(s)
    assert s.models_dir == Path("/x") and s.warmup is False
    assert Settings.from_env({"DERMAGAN_ROOT_PATH": "/ml/dermagan"}).root_path == "/ml/dermagan"
    assert s.api_keys == (b"s3cret-key",) and Settings.from_env({}).api_keys == ()
    assert Settings.from_env({"DERMAGAN_API_KEY": "old-key, new-key"}).api_keys == (b"old-key", b"new-key")


def test_admission_and_codec_pool_defaults() -> None:
    cores = usable_cores()
    s = Settings.from_env({})
    assert s.codec_workers == cores and s.inflight_limit == s.queue_size + 2 * cores
    s = Settings.from_env({"DERMAGAN_MAX_INFLIGHT": "12", "DERMAGAN_CODEC_THREADS": "3", "DERMAGAN_QUEUE_SIZE": "5"})
    assert s.inflight_limit == 12 and s.codec_workers == 3
    assert Settings.from_env({"DERMAGAN_CODEC_THREADS": "3", "DERMAGAN_QUEUE_SIZE": "5"}).inflight_limit == 11
    with pytest.raises(SettingsError, match="DERMAGAN_MAX_INFLIGHT"):
        Settings.from_env({"DERMAGAN_MAX_INFLIGHT": "-1"})


def test_workers_share_the_cores_and_the_admission_limit() -> None:
    cores = usable_cores()
    one = Settings.from_env({})
    assert one.workers == 1 and one.ort_threads == cores and one.cores_per_worker == cores
    s = Settings.from_env({"DERMAGAN_WORKERS": str(2 * cores), "DERMAGAN_QUEUE_SIZE": "64"})
    assert s.cores_per_worker == 1 and s.ort_threads == 1 and s.codec_workers == 1  # never 0
    assert s.inflight_limit == 64 + 2 * 2 * cores  # the workers together admit what one process would
    assert s.process_inflight_limit == s.inflight_limit // (2 * cores)  # each, when they share no count
    s = Settings.from_env({"DERMAGAN_WORKERS": "2", "DERMAGAN_INTRA_OP_THREADS": "3", "DERMAGAN_CODEC_THREADS": "4"})
    assert s.ort_threads == 3 and s.codec_workers == 4  # explicit settings win
    with pytest.raises(SettingsError, match="DERMAGAN_WORKERS"):
        Settings.from_env({"DERMAGAN_WORKERS": "0"})
    # the image budget is the service's: each worker holds its share
    assert one.process_image_budget == 100_000_000
    assert Settings.from_env({"DERMAGAN_WORKERS": "4", "DERMAGAN_IMAGE_BUDGET_MP": "10"}).process_image_budget == 2_500_000
    assert Settings.from_env({"DERMAGAN_IMAGE_BUDGET_MP": "0"}).process_image_budget == 0  # unbounded


@pytest.mark.parametrize("env,words", [
    ({"DERMAGAN_PORT": "eighty"}, "DERMAGAN_PORT"),
    ({"DERMAGAN_MAX_BATCH": "0"}, "DERMAGAN_MAX_BATCH"),
    ({"DERMAGAN_BATCH_BUCKETS": "1,99"}, "batch_buckets"),
    ({"DERMAGAN_QUEUE_SIZE": "-1"}, "DERMAGAN_QUEUE_SIZE"),
    ({"DERMAGAN_MALLOC_ARENAS": "-2"}, "DERMAGAN_MALLOC_ARENAS"),
    ({"DERMAGAN_LOG_FORMAT": "xml"}, "DERMAGAN_LOG_FORMAT"),
    ({"DERMAGAN_API_KEY": " , "}, "DERMAGAN_API_KEY: no key in it"),
    ({"DERMAGAN_ROOT_PATH": "dermagan"}, "DERMAGAN_ROOT_PATH.*not a URL path prefix"),
    ({"DERMAGAN_ROOT_PATH": "/dermagan/"}, "DERMAGAN_ROOT_PATH.*ends without '/'"),
    ({"DERMAGAN_ROOT_PATH": "/der magan"}, "DERMAGAN_ROOT_PATH"),
    ({"DERMAGAN_ROOT_PATH": "/x?y"}, "DERMAGAN_ROOT_PATH"),
])
def test_bad_values_name_the_variable(env: dict[str, str], words: str) -> None:
    with pytest.raises(SettingsError, match=words):
        Settings.from_env(env)


def multipart(*parts: tuple[str, str | None, bytes], boundary: str = "XyZ") -> tuple[bytes, str]:
    body = b""
    for name, filename, data in parts:
        fn = f'; filename="{filename}"' if filename is not None else ""
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"{fn}\r\n"
                 f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_parse_multipart_in_memory() -> None:
    payload = bytes(range(256)) * 10_000  # binary, 2.5 MB: above starlette's 1 MB spool threshold
    body, ctype = multipart(("image", "a.png", payload), ("mask", "", b""))
    parts = parse_multipart(body, ctype)
    assert parts["image"].data == payload and parts["image"].filename == "a.png"
    files = form_files(parts, ("image",), ("mask",))
    assert set(files) == {"image"}  # an empty optional field counts as absent


@pytest.mark.parametrize("body,ctype,error,words", [
    (b"x", "application/json", UnsupportedMediaType, "multipart/form-data"),
    (b"x", None, UnsupportedMediaType, "no Content-Type"),
    (b"x", "multipart/form-data", InvalidParameter, "boundary"),
    (multipart(("image", "a", b"1"), ("image", "b", b"2"))[0], "multipart/form-data; boundary=XyZ",
     InvalidParameter, "more than once"),
    (b"--XyZ\r\nContent-Disposition: attachment\r\n\r\nx\r\n--XyZ--\r\n", "multipart/form-data; boundary=XyZ",
     InvalidParameter, "form-data"),
    (b"garbage", "multipart/form-data; boundary=XyZ", InvalidParameter, "multipart"),
])
def test_parse_multipart_refuses(body: bytes, ctype: str | None, error: type, words: str,
                                 caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG), pytest.raises(error, match=words):
        form_files(parse_multipart(body, ctype), ("image",), ())
    # the 422 names the problem; the parser's own warning (one line per bad request, quoting body bytes) is not logged
    assert not [r for r in caplog.records if r.name.startswith("python_multipart")], caplog.records


def test_content_length_checks() -> None:
    check_content_length(None, 10)
    check_content_length("10", 10)
    with pytest.raises(PayloadTooLarge, match="limit is 10"):
        check_content_length("11", 10)
    with pytest.raises(InvalidParameter):
        check_content_length("ten", 10)


def test_serve_settings_lists_every_setting() -> None:
    from dermagan.service.cli import settings_table

    table = settings_table()
    missing = [name for name in Settings.model_fields if f"DERMAGAN_{name.upper()}" not in table]
    assert not missing, f"service/settings.py's table lacks {missing}"
    assert all(line.count("|") >= 4 for line in table.splitlines())

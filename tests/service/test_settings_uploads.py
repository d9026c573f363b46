"""service/settings.py (environment parsing) and service/uploads.py (in-memory multipart)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from dermagan.cpus import usable_cores
from dermagan.service.errors import InvalidParameter, PayloadTooLarge, UnsupportedMediaType
from dermagan.service.settings import (NOT_SETTINGS, Settings, SettingsError, default_models_dir, pillow_pixel_limit,
                                       unknown_variables)
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
    # set but empty (`docker run -e DERMAGAN_MAX_BATCH=`, a template without its value): said so, with the default
    with pytest.raises(SettingsError, match=r"DERMAGAN_MAX_BATCH: set but empty: give it a value, or unset it for "
                                            r"the default \(8\)"):
        Settings.from_env({"DERMAGAN_MAX_BATCH": " "})
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
    # before 2026-12-05 these two crashed `dermagan serve` with a traceback, and inf/nan were taken
    ({"DERMAGAN_LOG_LEVEL": "verbose"}, "DERMAGAN_LOG_LEVEL: Input should be 'debug', 'info', 'warning', 'error' or "
                                        "'critical'"),
    ({"DERMAGAN_IMAGE_BUDGET_MP": "inf"}, "DERMAGAN_IMAGE_BUDGET_MP: Input should be a finite number"),
    ({"DERMAGAN_IMAGE_BUDGET_MP": "1e300"}, "DERMAGAN_IMAGE_BUDGET_MP"),
    *[({f"DERMAGAN_{name}": value}, f"DERMAGAN_{name}: Input should be a finite number")
      for name in ("REQUEST_TIMEOUT_S", "DRAIN_TIMEOUT_S", "SEND_IDLE_S", "MAX_DELAY_MS", "UPLOAD_IDLE_S",
                   "HEAD_TIMEOUT_S", "MASK_CONTEXT", "TILE_OVERLAP") for value in ("inf", "nan", "-inf")],
    ({"DERMAGAN_MAX_PIXELS": "400000000"}, r"DERMAGAN_MAX_PIXELS: at most 178956970, got 400000000: Pillow refuses "
                                           r"any larger image as a decompression bomb"),
])
def test_bad_values_name_the_variable(env: dict[str, str], words: str) -> None:
    with pytest.raises(SettingsError, match=words):
        Settings.from_env(env)


def test_every_float_setting_refuses_inf_and_nan() -> None:
    floats = [name for name, f in Settings.model_fields.items() if f.annotation is float]
    assert len(floats) >= 9, floats
    for name in floats:
        for value in ("inf", "nan"):
            with pytest.raises(SettingsError, match=f"DERMAGAN_{name.upper()}: Input should be a finite number"):
                Settings.from_env({f"DERMAGAN_{name.upper()}": value})


def test_log_level_takes_the_levels_logging_and_uvicorn_both_know() -> None:
    import uvicorn.config

    for level in ("debug", "info", "warning", "error", "critical"):
        assert Settings.from_env({"DERMAGAN_LOG_LEVEL": level}).log_level == level
        assert level in uvicorn.config.LOG_LEVELS and isinstance(logging.getLevelName(level.upper()), int)
    assert Settings.from_env({"DERMAGAN_LOG_LEVEL": " WARNING "}).log_level == "warning"  # uvicorn takes lower case


def test_max_pixels_goes_up_to_pillows_decompression_bomb_limit() -> None:
    from PIL import Image

    limit = 2 * Image.MAX_IMAGE_PIXELS  # Pillow raises DecompressionBombError above it, whatever the setting
    assert pillow_pixel_limit() == limit == 178_956_970
    assert Settings.from_env({"DERMAGAN_MAX_PIXELS": str(limit)}).max_pixels == limit
    with pytest.raises(SettingsError, match=f"DERMAGAN_MAX_PIXELS: at most {limit}, got {limit + 1}"):
        Settings.from_env({"DERMAGAN_MAX_PIXELS": str(limit + 1)})


def test_unknown_dermagan_variables_are_named_with_the_closest_setting() -> None:
    from dermagan.service.admission import ADMISSION_ENV
    from dermagan.service.cli import SUPERVISOR_ENV

    assert {ADMISSION_ENV, SUPERVISOR_ENV} <= NOT_SETTINGS  # set by `dermagan serve --workers N` for its workers
    env = {"DERMAGAN_MAX_INFLGHT": "5", "DERMAGAN_QUEUE_SIZE": "3", "DERMAGAN_FROBNICATE": "1", "OTHER": "x",
           "DERMAGAN_SUPERVISOR_PID": "1", "DERMAGAN_SHARED_ADMISSION": "/dev/shm/x",  # --workers N's
           "DERMAGAN_MODELS_HOST_DIR": "/srv", "DERMAGAN_PUBLISH_PORT": "8080", "DERMAGAN_IMAGE": "d:gpu",
           "DERMAGAN_CPU_IMAGE": "d:cpu"}  # docker compose's
    assert unknown_variables(env) == ["DERMAGAN_FROBNICATE", "DERMAGAN_MAX_INFLGHT (DERMAGAN_MAX_INFLIGHT?)"]
    assert unknown_variables({}) == []


def test_every_dermagan_variable_the_repository_names_is_a_setting_or_known_not_to_be_one() -> None:
    """A variable that deployment files or the code set (compose's, --workers N's) must not draw the warning."""
    root = Path(__file__).resolve().parents[2]
    files = [*root.joinpath("service").rglob("*.py"), *root.joinpath("dermagan").rglob("*.py"),
             *root.glob("docker-compose*.yml"), *root.glob("Dockerfile*"), *root.joinpath("deploy").rglob("*"),
             *root.joinpath("scripts").rglob("*")]
    import re

    named = set()
    for f in files:
        if f.is_file():
            named |= set(re.findall(r"DERMAGAN_[A-Z0-9_]*[A-Z0-9]", f.read_text(errors="replace")))
    named -= {"DERMAGAN_X", "DERMAGAN_MAX_INFLGHT"}  # settings.py's examples: `DERMAGAN_X`, a misspelt variable
    assert unknown_variables(dict.fromkeys(named, "")) == []


@pytest.mark.parametrize("env,words", [
    ({"DERMAGAN_LOG_LEVEL": "verbose"}, "DERMAGAN_LOG_LEVEL"),
    ({"DERMAGAN_IMAGE_BUDGET_MP": "inf"}, "DERMAGAN_IMAGE_BUDGET_MP"),
    ({"DERMAGAN_MAX_BATCH": "0"}, "DERMAGAN_MAX_BATCH"),  # as ever
])
def test_serve_refuses_a_bad_setting_in_one_plain_line_with_status_2(env: dict[str, str], words: str,
                                                                     tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    full = {**{k: v for k, v in os.environ.items() if not k.startswith("DERMAGAN_")}, **env}
    r = subprocess.run([sys.executable, "-m", "dermagan.cli", "serve", "--check", "--models-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60, env=full)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"dermagan serve: invalid settings: {words}: ") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr


def test_serve_warns_once_of_a_dermagan_variable_that_is_no_setting(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from fixture_models import build_models

    build_models(tmp_path, only=("segment",))
    full = {**{k: v for k, v in os.environ.items() if not k.startswith("DERMAGAN_")},
            "DERMAGAN_MAX_INFLGHT": "5", "DERMAGAN_PROVIDERS": "CPUExecutionProvider", "DERMAGAN_INTRA_OP_THREADS": "1",
            "DERMAGAN_SHARED_ADMISSION": "/nonexistent"}
    r = subprocess.run([sys.executable, "-m", "dermagan.cli", "serve", "--check", "--models-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=120, env=full)
    assert r.returncode == 0, r.stderr  # a warning, not a refusal
    warnings = [line for line in r.stderr.splitlines() if "no setting" in line]
    assert len(warnings) == 1 and " WARNING " in warnings[0], r.stderr
    assert warnings[0].endswith("dermagan.service: DERMAGAN_MAX_INFLGHT (DERMAGAN_MAX_INFLIGHT?) is no setting, "
                                "ignored (`dermagan serve --settings` lists the settings)"), warnings


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


def test_a_whole_multipart_body_is_taken_with_or_without_what_may_follow_its_closing_boundary() -> None:
    body, ctype = multipart(("image", "a.png", b"0123456789"))
    for whole in (body, body.removesuffix(b"\r\n"), body + b"an epilogue, which RFC 2046 lets a body end with"):
        assert form_files(parse_multipart(whole, ctype), ("image",), ()) == {"image": b"0123456789"}
    with pytest.raises(InvalidParameter, match="^missing the multipart file field 'image'$"):  # nothing sent at all
        form_files(parse_multipart(b"", ctype), ("image",), ())


@pytest.mark.parametrize("body,ctype,error,words", [
    (b"x", "application/json", UnsupportedMediaType, "multipart/form-data"),
    (b"x", None, UnsupportedMediaType, "no Content-Type"),
    (b"x", "multipart/form-data", InvalidParameter, "boundary"),
    (multipart(("image", "a", b"1"), ("image", "b", b"2"))[0], "multipart/form-data; boundary=XyZ",
     InvalidParameter, "more than once"),
    (b"--XyZ\r\nContent-Disposition: attachment\r\n\r\nx\r\n--XyZ--\r\n", "multipart/form-data; boundary=XyZ",
     InvalidParameter, "form-data"),
    (b"garbage", "multipart/form-data; boundary=XyZ", InvalidParameter, "multipart"),
    # truncated uploads: the body ends before its closing boundary (before 2026-12-05: "missing the multipart file
    # field 'image'", though the client had sent one)
    (multipart(("image", "a.png", b"0123456789"))[0][:-len("--\r\n")] + b"\r\n", "multipart/form-data; boundary=XyZ",
     InvalidParameter, "ends before its closing boundary '--XyZ--' \\(a truncated upload\\?\\)$"),
    (multipart(("image", "a.png", b"0123456789"))[0][:-len("\r\n--XyZ--\r\n")], "multipart/form-data; boundary=XyZ",
     InvalidParameter,
     "closing boundary '--XyZ--' \\(a truncated upload\\?\\); its part 'image' is cut off after 10 bytes$"),
    (multipart(("image", "a.png", b"0123456789"))[0][:-len("56789\r\n--XyZ--\r\n")],
     "multipart/form-data; boundary=XyZ", InvalidParameter, "its part 'image' is cut off after 5 bytes"),
    (multipart(("image", "a.png", b"01"), ("mask", "m.png", b"0123"))[0][:-len("23\r\n--XyZ--\r\n")],
     "multipart/form-data; boundary=XyZ", InvalidParameter, "its part 'mask' is cut off after 2 bytes"),
    (b"--XyZ\r\nContent-Disposition: form-da", "multipart/form-data; boundary=XyZ", InvalidParameter,
     "ends before its closing boundary"),
    (b"--XyZ", "multipart/form-data; boundary=XyZ", InvalidParameter, "ends before its closing boundary"),
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


def test_a_missing_default_models_folder_says_where_the_shipped_models_are(tmp_path, monkeypatch) -> None:
    """A package installed from a wheel has no models/ beside it: "manifest not found" alone left a user to guess
    that --models-dir or DERMAGAN_MODELS_DIR was wanted."""
    from dermagan.service import settings

    monkeypatch.delenv("DERMAGAN_MODELS_DIR", raising=False)
    monkeypatch.setattr(settings, "default_models_dir", lambda: tmp_path / "site-packages" / "dermagan" / "models")
    hint = settings.models_dir_hint(given=False)
    assert hint.startswith("; the shipped models live in the source checkout's models/") and "--models-dir DIR" in hint
    assert settings.models_dir_hint(given=True) == ""  # the user named the folder: its own error says enough
    monkeypatch.setenv("DERMAGAN_MODELS_DIR", str(tmp_path))
    assert settings.models_dir_hint(given=False) == ""
    monkeypatch.delenv("DERMAGAN_MODELS_DIR")
    monkeypatch.setattr(settings, "default_models_dir", lambda: tmp_path)  # it exists: the manifest is what is missing
    assert settings.models_dir_hint(given=False) == ""

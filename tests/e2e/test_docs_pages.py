"""The API's documentation pages (/docs, /redoc) over real HTTP: everything they load is served by the
service itself (an air-gapped site sees them; no CDN learns who reads them), they are open without the
API key while the API is not, the OpenAPI document declares the key so Swagger UI can send it, and
DERMAGAN_DOCS=false turns them off. A real browser (Chromium through Playwright, when installed: .ci/run
installs both) then uses Swagger UI as a person would."""

from __future__ import annotations

import concurrent.futures as cf
import re
import shutil
import threading
import time
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
import uvicorn
from conftest import live_server, settings_for, slow_run
from sample_images import encode, gradient

PAGES = ("/docs", "/redoc", "/docs/oauth2-redirect")
KEY = "s3cret"


def referenced_urls(html: str) -> list[str]:
    """What a page loads: src= and href= attributes, and the document URLs its inline script passes on
    (Swagger UI's `url: '...'`, ReDoc's `spec-url="..."`)."""
    found = re.findall(r"""(?:src|href|spec-url)=["']([^"']+)["']|\burl:\s*["']([^"']+)["']""", html)
    return [attribute or script for attribute, script in found]


@pytest.fixture(scope="module")
def keyed(models_dir: Path):
    with live_server(settings_for(models_dir, models=("fixture-generate", "fixture-segment", "fixture-cycle-add"), api_key=KEY)) as s:
        yield s


def test_doc_pages_load_only_what_the_service_serves_and_need_no_key(keyed) -> None:
    with keyed.client() as c:  # no key
        assert c.get("/v1/models").status_code == 401  # the API still needs it
        for page in PAGES:
            r = c.get(page)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), page
            policy = r.headers["content-security-policy"]
            assert "default-src 'self'" in policy and "img-src 'self' data: blob:" in policy and "http" not in policy
            for url in referenced_urls(r.text):
                assert not urlsplit(url).scheme and not url.startswith("//"), f"{page} loads {url} from elsewhere"
                asset = c.get(urljoin(page, url))
                assert asset.status_code == 200 and asset.content, (page, url)
                if url.endswith(".js"):
                    assert asset.headers["content-type"].startswith("text/javascript")
                elif url.endswith(".css"):
                    assert asset.headers["content-type"].startswith("text/css")
        assert len(referenced_urls(c.get("/docs").text)) >= 4  # css, icon, bundle, the document
        assert "validatorUrl\": null" in c.get("/docs").text  # no badge from validator.swagger.io
        assert c.get("/docs/assets/nothing.js").status_code == 404
        home = c.get("/")  # the service's address, opened in a browser
        assert home.status_code == 307 and home.headers["location"] == "/docs"


def test_openapi_declares_the_key_and_a_client_that_follows_it_gets_in(keyed) -> None:
    with keyed.client() as c:
        spec = c.get("/openapi.json").json()
        schemes = spec["components"]["securitySchemes"]
        assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
        assert schemes["bearer"] == {"type": "http", "scheme": "bearer"}
        assert spec["security"] == [{"apiKey": []}, {"bearer": []}]
        assert spec["paths"]["/healthz"]["get"]["security"] == [] == spec["paths"]["/readyz"]["get"]["security"]
        assert "security" not in spec["paths"]["/generate"]["post"]  # the document-wide requirement applies
        # every secured operation documents the 401 it answers without the key; the probes do not need it
        assert all("401" in spec["paths"][p]["get"]["responses"] for p in ("/v1/models", "/metrics"))
        assert "401" not in spec["paths"]["/healthz"]["get"]["responses"]
        assert "413" in spec["paths"]["/generate"]["post"]["responses"]
        header = schemes["apiKey"]["name"]
        assert c.post("/generate", json={"kind": "hand"}, headers={header: KEY}).status_code == 200
        assert c.post("/generate", json={"kind": "hand"}, headers={header: KEY + "x"}).status_code == 401
        assert "content-security-policy" not in c.get("/openapi.json").headers  # a document, not a page


def test_without_a_key_the_document_claims_no_security_and_docs_can_be_turned_off(models_dir: Path) -> None:
    with live_server(settings_for(models_dir, models=("fixture-generate",))) as s, s.client() as c:
        spec = c.get("/openapi.json").json()
        assert "securitySchemes" not in spec.get("components", {}) and "security" not in spec
    with live_server(settings_for(models_dir, models=("fixture-generate",), docs=False)) as s, s.client() as c:
        for path in ("/", *PAGES, "/openapi.json", "/docs/assets/swagger-ui-bundle.js"):
            r = c.get(path)
            assert r.status_code == 404 and r.json()["error"] == "not_found", path
        assert c.post("/generate", json={"kind": "hand"}).status_code == 200


# ---- behind a reverse proxy that publishes the service under a path ---------------------------------

class StrippingProxy:
    """What nginx's `location /dermagan/ { proxy_pass http://service/; }` does: a real HTTP server on
    loopback that forwards PREFIX/... to the service as /..., headers and bodies as they are."""

    def __init__(self, upstream: str, prefix: str) -> None:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import Response
        from starlette.routing import Route

        async def forward(request: Request) -> Response:
            path = request.url.path
            if not path.startswith(prefix + "/"):
                return Response(b"not published here", status_code=404)
            async with httpx.AsyncClient(base_url=upstream) as client:
                r = await client.request(request.method, path[len(prefix):], content=await request.body(),
                                         params=request.query_params, headers=[
                                             (k, v) for k, v in request.headers.items() if k != "host"])
            drop = {"content-length", "transfer-encoding", "connection", "content-encoding"}
            return Response(r.content, status_code=r.status_code,
                            headers={k: v for k, v in r.headers.items() if k not in drop})

        app = Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.02)
        return "http://127.0.0.1:%d" % self.server.servers[0].sockets[0].getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def test_docs_and_endpoints_work_through_a_proxy_that_publishes_the_service_under_a_path(models_dir: Path) -> None:
    prefix = "/ml/dermagan"
    settings = settings_for(models_dir, models=("fixture-generate",), root_path=prefix, max_inflight=1)
    with live_server(settings) as s, StrippingProxy(s.url, prefix) as proxy, httpx.Client(base_url=proxy) as c:
        page = c.get(prefix + "/docs")
        assert page.status_code == 200
        urls = referenced_urls(page.text)
        assert prefix + "/openapi.json" in urls and prefix + "/docs/assets/swagger-ui-bundle.js" in urls
        for url in urls:
            assert url.startswith(prefix + "/"), url  # a browser at the proxy finds every one
            assert c.get(url).status_code == 200, url
        assert c.get(prefix + "/").headers["location"] == prefix + "/docs"
        spec = c.get(prefix + "/openapi.json").json()
        assert spec["servers"] == [{"url": prefix}]  # where Try it out (and generated clients) send requests
        r = c.post(spec["servers"][0]["url"] + "/generate", json={"kind": "hand", "seed": 2})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        with s.client() as direct:  # the service counted it as /generate, under admission control
            text = direct.get("/metrics").text
            assert 'dermagan_requests_total{code="200",endpoint="/generate",model="fixture-generate"} 1.0' in text
            assert f'endpoint="{prefix}' not in text and 'endpoint="/docs"' in text
        running = slow_run(s, "fixture-generate", 1.0)  # one request in progress fills max_inflight=1
        with cf.ThreadPoolExecutor(1) as pool:
            first = pool.submit(c.post, prefix + "/generate", json={"kind": "hand"})
            assert running.wait(10)
            refused = c.post(prefix + "/generate", json={"kind": "hand"})
            assert refused.status_code == 503 and refused.json()["error"] == "queue_full"
            assert first.result().status_code == 200


# ---- a real browser ------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def answer(operation) -> str:
    """The status code Swagger UI shows for the operation's live response (its body, when not 200)."""
    status = operation.locator(".live-responses-table tbody .response-col_status").first
    status.wait_for(timeout=20_000)
    code = status.inner_text().strip()
    return code if code == "200" else operation.locator(".live-responses-table tbody").inner_text()


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_a_browser_uses_swagger_ui_offline_with_the_key(keyed, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (the test extra)")
    image = tmp_path / "skin.png"
    image.write_bytes(encode(gradient(96, 128)))
    left: list[str] = []  # requests that reached the network layer
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.route("**/*", lambda route: (left.append(route.request.url), route.continue_()))
            page.goto(keyed.url)  # the address alone leads to the documentation
            page.wait_for_selector(".opblock", timeout=20_000)
            assert page.locator(".opblock").count() == 8  # 4 work endpoints, models, health, ready, metrics

            page.click("button.authorize")  # Swagger UI's Authorize: the key from the document's scheme
            page.locator(".auth-container input").first.fill(KEY)
            page.locator(".auth-container button.authorize").first.click()
            page.click("button.btn-done")

            # each operation as "Try it out" fills it in: only the required image chosen
            generate = page.locator(".opblock-post:has-text('/generate')").first
            generate.locator(".opblock-summary").click()
            generate.locator("button.try-out__btn").click()
            assert '"seed": 2' in generate.locator("textarea.body-param__text").input_value()  # the example
            generate.locator("button.execute").click()
            assert answer(generate) == "200"
            assert generate.locator(".live-responses-table img").count() == 1  # the PNG, shown

            for path in ("/eczema/add", "/eczema/segment"):  # multipart uploads: optional fields left empty
                form = page.locator(f".opblock-post:has-text('{path}')").first
                form.locator(".opblock-summary").click()
                form.locator("button.try-out__btn").click()
                form.locator("input[type=file]").first.set_input_files(str(image))
                form.locator("button.execute").click()
                assert answer(form) == "200", path

            page.goto(keyed.url + "/redoc")
            page.wait_for_selector("h1", timeout=20_000)
            assert "dermagan" in page.locator("h1").first.inner_text()
        finally:
            browser.close()
    # (ReDoc's bundle asks for its maker's logo on cdn.redoc.ly: the pages' policy stops it before the network)
    assert left and {urlsplit(u).netloc for u in left} == {urlsplit(keyed.url).netloc}, left

"""The checked-in Prometheus config, run by the real Prometheus (Debian's, `make tools`), bounds the series a
caller without a key can create: Ray Serve labels its HTTP series with the request's method verbatim."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests import promstack

# Ray's metrics export after `curl -X ZZQ1 host/healthz`, `curl -X QQQ ...`, a GET and a POST (its own text)
EXPORT = "\n".join([
    "# TYPE ray_serve_num_http_requests_total counter",
    *(f'ray_serve_num_http_requests_total{{application="sira",method="{m}",route="/",status_code="{s}"}} 1'
      for m, s in (("GET", "200"), ("POST", "200"), ("ZZQ1", "405"), ("QQQ", "405"), ("delete", "405"))),
    "# TYPE ray_serve_num_deployment_http_error_requests_total counter",
    'ray_serve_num_deployment_http_error_requests_total{application="sira",error_code="405",method="ZZQ1"} 1',
    "# TYPE ray_serve_http_request_latency_ms histogram",
    'ray_serve_http_request_latency_ms_bucket{application="sira",method="ZZQ1",route="/",le="+Inf"} 1',
    'ray_serve_http_request_latency_ms_count{application="sira",method="ZZQ1",route="/"} 1',
    'ray_serve_http_request_latency_ms_sum{application="sira",method="ZZQ1",route="/"} 1',
    "# TYPE ray_sira_decisions_total counter",
    'ray_sira_decisions_total{model="fraud",decision="allow"} 3',
]) + "\n"


class Export(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        body = EXPORT.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_made_up_http_methods_are_stored_as_other_by_the_serving_job(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), Export)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    prom = promstack.Prometheus(tmp_path, promstack.config(
        tmp_path, {"sira-serving": f"127.0.0.1:{server.server_address[1]}"}))
    try:
        promstack.wait_for("the serving job's first scrape",
                           lambda: prom.query('up{job="sira-serving"} == 1'), logs=(prom.log,))
        methods = promstack.wait_for("Ray's HTTP series", lambda: prom.query(
            "count by (method) (ray_serve_num_http_requests_total)"), logs=(prom.log,))
        # one series per standard method and one `other`, however many made-up methods were tried (Prometheus
        # keeps one of the series the rewrite makes identical: `other` is bounded, not a sum)
        assert {r["metric"]["method"]: r["value"][1] for r in methods} == {"GET": "1", "POST": "1", "other": "1"}
        for name in ("ray_serve_num_deployment_http_error_requests_total", "ray_serve_http_request_latency_ms_bucket"):
            (row,) = prom.check(name)
            assert row["metric"]["method"] == "other", row
        # the mark the rewrite uses is not stored, and series without a method keep having none
        assert prom.check('{__name__=~".+", __sira_known_method!=""}') == []
        (decisions,) = prom.check("ray_sira_decisions_total")
        assert "method" not in decisions["metric"]
    finally:
        prom.stop()
        server.shutdown()

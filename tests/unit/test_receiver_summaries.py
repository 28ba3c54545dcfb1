"""The one sentence a Slack or PagerDuty receiver shows for each governance event (sira.registry.receivers)."""

from sira.registry.receivers import summary
from sira.registry.webhooks import EVENTS


def test_every_event_has_its_own_sentence_naming_model_and_version():
    payloads = {"model": "fraud", "version": 3, "by": "alice", "outcome": "pending", "requested_by": "bob",
                "required_approvals": 2, "review": 0.3, "block": 0.8, "to": {"review": 0.3, "block": 0.8},
                "revision": 2, "via": "approval", "actor": "alice", "from": 2}
    sentences = {event: summary(event, payloads) for event in EVENTS}
    assert all(s != f"fraud: {event}" and "fraud" in s for event, s in sentences.items()), sentences
    assert sentences["promotion.approve"] == "fraud v3: approved by alice (request pending)"
    assert sentences["thresholds.reject"] == "fraud v3: threshold change rejected by alice (pending)"
    assert sentences["thresholds.request"].startswith("fraud v3: thresholds review 0.3, block 0.8 requested by bob")
    assert sentences["thresholds.change"] == ("fraud v3 decides with review 0.3, block 0.8 (revision 2): approval "
                                              "by alice")

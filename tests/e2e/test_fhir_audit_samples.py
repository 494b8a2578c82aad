"""Meridian's audit records as FHIR R4 AuditEvent resources validate with
fhir.resources (R4B models: AuditEvent is unchanged from R4), one resource
per kind of audited action and a searchset Bundle of them all."""
import base64
import json

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle

from audit_samples import write_samples

DCM = "http://dicom.nema.org/resources/ontology/DCM"


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    fhir, _ = write_samples(tmp_path_factory.mktemp("audit-samples"))
    return fhir


def test_every_audit_event_validates(samples):
    files = sorted(samples.glob("auditevent-*.json"))
    assert len(files) >= 15
    codes = set()
    for f in files:
        raw = json.loads(f.read_text())
        ev = AuditEvent.model_validate(raw)
        assert ev.type.system == DCM
        codes.add(ev.type.code)
        assert ev.outcome in {"0", "4", "8", "12"}
        assert ev.source.observer.display == "Meridian"
        assert any(a.requestor for a in ev.agent)
        for e in raw["entity"]:
            # sev-1 (not checked by the models): a name or a query, not both.
            assert not ("name" in e and "query" in e), f.name
            if "query" in e:
                base64.b64decode(e["query"], validate=True)
        # Tied back to the hash chain.
        chain = [e for e in ev.entity if e.what and e.what.identifier
                 and e.what.identifier.system == "urn:meridian:audit-log"]
        assert len(chain) == 1, f.name
        details = {d.type: d.valueString for d in chain[0].detail}
        assert len(details["hash"]) == 64 and len(details["prev_hash"]) == 64
        assert details["seq"] == chain[0].what.identifier.value
    # Query, instances accessed, export, import, user authentication,
    # security alert, audit log used.
    assert {"110112", "110103", "110106", "110107", "110114", "110113", "110101"} <= codes


def test_the_bundle_validates(samples):
    raw = json.loads((samples / "bundle.json").read_text())
    b = Bundle.model_validate(raw)
    assert b.type == "searchset"
    assert b.total == len(b.entry) == len(list(samples.glob("auditevent-*.json")))
    assert all(e.resource.__resource_type__ == "AuditEvent" for e in b.entry)
    assert all(e.search.mode == "match" for e in b.entry)

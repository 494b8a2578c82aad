"""Meridian's audit records as DICOM audit messages (PS3.15 A.5) validate
against the audit message schema (tests/e2e/schemas/dicom-audit-message.rnc,
PS3.15 A.5.1 in RELAX NG compact syntax) with jing, Debian's RELAX NG validator."""
import subprocess
from pathlib import Path

import pytest

from audit_samples import write_samples
from conftest import require_tool

SCHEMA = Path(__file__).resolve().parent / "schemas" / "dicom-audit-message.rnc"


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    _, dicom = write_samples(tmp_path_factory.mktemp("audit-samples"))
    return dicom


def jing(*files):
    return subprocess.run([require_tool("jing"), "-c", str(SCHEMA), *map(str, files)],
                          capture_output=True, text=True, timeout=120)


def test_every_audit_message_is_schema_valid(samples):
    files = sorted(samples.glob("auditmessage-*.xml"))
    assert len(files) >= 15
    r = jing(*files)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_schema_has_teeth(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text('<AuditMessage><EventIdentification EventDateTime="yesterday" '
                   'EventOutcomeIndicator="3"/></AuditMessage>')
    r = jing(bad)
    assert r.returncode != 0
    assert "EventOutcomeIndicator" in r.stdout and "EventID" in r.stdout, r.stdout

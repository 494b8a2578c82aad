"""Sample audit exports written by meridian-audit's own tests, for the
validators in test_fhir_audit_samples.py and test_dicom_audit_samples.py.

The samples (one record per kind of audited action, see
`fhir::tests::samples` in crates/meridian-audit) are written by the unit
tests `fhir_samples` and `dicom_samples` when MERIDIAN_FHIR_SAMPLES_DIR and
MERIDIAN_DICOM_SAMPLES_DIR are set.
"""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def cargo() -> str:
    path = shutil.which("cargo") or str(Path.home() / ".cargo" / "bin" / "cargo")
    if not Path(path).exists():
        pytest.fail("REQUIRED TOOL MISSING: cargo (the audit samples are written by a Rust test)", pytrace=False)
    return path


def write_samples(out: Path) -> tuple[Path, Path]:
    """Runs the sample-writing tests; returns (FHIR dir, DICOM dir)."""
    fhir, dicom = out / "fhir", out / "dicom"
    env = dict(os.environ, MERIDIAN_FHIR_SAMPLES_DIR=str(fhir), MERIDIAN_DICOM_SAMPLES_DIR=str(dicom))
    r = subprocess.run(
        [cargo(), "test", "--release", "--locked", "-q", "-p", "meridian-audit", "--lib", "samples"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"cargo test failed:\n{r.stdout}\n{r.stderr}"
    assert sorted(fhir.glob("auditevent-*.json")), f"no FHIR samples written:\n{r.stdout}\n{r.stderr}"
    assert sorted(dicom.glob("auditmessage-*.xml")), f"no DICOM samples written:\n{r.stdout}\n{r.stderr}"
    return fhir, dicom

"""Configuration precedence: flag > environment > TOML file > default."""
import os
import subprocess
import time
import urllib.request

from conftest import MERIDIAN_BIN, free_port


def _wait_health(port, proc, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode(errors="replace") if proc.stdout else "exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"no /healthz on port {port}")


def test_toml_file_env_and_flag_precedence(tmp_path):
    file_http, env_http, flag_dicom = free_port(), free_port(), free_port()
    cfg = tmp_path / "meridian.toml"
    cfg.write_text(
        f'data_dir = "{tmp_path / "data"}"\n'
        f'http = "127.0.0.1:{file_http}"\n'
        f'dicom = "127.0.0.1:{free_port()}"\n'
        'ae_title = "FROMFILE"\n'
        'stable_after = 5\n'
        'peers = ["PACS@127.0.0.1:4242"]\n'
    )
    # The file alone decides.
    p = subprocess.Popen([str(MERIDIAN_BIN), "serve", "--config", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         env={k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")})
    try:
        _wait_health(file_http, p)
        assert (tmp_path / "data" / "index.db").exists()
    finally:
        p.terminate()
        p.wait(10)
    # The environment beats the file; a flag beats both.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERIDIAN_")}
    env["MERIDIAN_HTTP"] = f"127.0.0.1:{env_http}"
    env["MERIDIAN_DICOM"] = "127.0.0.1:1"  # overridden by the flag below
    p = subprocess.Popen([str(MERIDIAN_BIN), "serve", "--config", str(cfg), "--dicom", f"127.0.0.1:{flag_dicom}"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_health(env_http, p)
        import socket
        with socket.create_connection(("127.0.0.1", flag_dicom), timeout=5):
            pass
    finally:
        p.terminate()
        p.wait(10)


def test_bad_config_is_a_clear_error(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('no_such_key = 1\n')
    r = subprocess.run([str(MERIDIAN_BIN), "serve", "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "no_such_key" in (r.stdout + r.stderr)
    r = subprocess.run([str(MERIDIAN_BIN), "serve", "--ae-title", "WAY_TOO_LONG_AE_TITLE_X"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "AE title" in (r.stdout + r.stderr)

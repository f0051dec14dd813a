"""The CLI's config file (contexts, as kubeconfig has them): what it accepts, how each mistake
is reported (file, line, context, key), `ferry config`, and which setting wins: the --context
flag, then the FERRY_* variables, then the current context, then the defaults."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli.output
from cli import config as config_file
from cli.exits import Exit
from cli.main import main
from cli.session import resolve
from tests.unit.fake_gateway import FakeGateway

CONFIG = """\
# the operator's gateways
current-context: prod   # the usual one
contexts:
  prod:
    gateway: https://ferry.example.net:8470/
    token-file: tokens/prod.token
    ca-file: ~/ca.pem
  lab:
    gateway: http://127.0.0.1:{port}
    token-file: tokens/lab.token
"""


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A home of its own: no FERRY_* from outside, the config under ~/.config/ferry."""
    for name in list(os.environ):
        if name.startswith("FERRY_") or name == "XDG_CONFIG_HOME":
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def write_config(home: Path, text: str | None = None, port: int = 9) -> Path:
    """`text`, or CONFIG with the lab context's gateway on `port`."""
    path = home / ".config" / "ferry" / "config.yaml"
    (path.parent / "tokens").mkdir(parents=True, exist_ok=True)
    path.write_text(CONFIG.format(port=port) if text is None else text)
    (path.parent / "tokens" / "prod.token").write_text("prod-token\n")
    (path.parent / "tokens" / "lab.token").write_text("lab-token\n")
    (home / "ca.pem").write_text("not read here\n")
    return path


def ferry(*args: str):
    return CliRunner().invoke(main, list(args))


# -- the file ----------------------------------------------------------------------------------

def test_a_config_file_s_contexts(home):
    path = write_config(home)
    found = config_file.load(os.environ)
    assert found.path == path and found.current == "prod"
    prod = found.contexts["prod"]
    assert prod.gateway == "https://ferry.example.net:8470"  # without its trailing slash
    assert prod.token_file == path.parent / "tokens" / "prod.token"  # beside the file
    assert prod.ca_file == home / "ca.pem"  # ~ expanded
    assert found.contexts["lab"].insecure is False


def test_ferry_config_names_another_file(home, monkeypatch):
    elsewhere = home / "elsewhere.yaml"
    elsewhere.write_text("contexts:\n  only:\n    gateway: http://gw:8470\n")
    monkeypatch.setenv("FERRY_CONFIG", str(elsewhere))
    assert list(config_file.load(os.environ).contexts) == ["only"]
    monkeypatch.setenv("FERRY_CONFIG", str(home / "missing.yaml"))
    with pytest.raises(config_file.ConfigError, match=r"missing.yaml: no such file \(named by "
                                                      r"FERRY_CONFIG\)"):
        config_file.load(os.environ)


BAD = [
    ("contexts:\n  prod:\n    gateway: http://gw:8470\n    tokenfile: t\n",
     ":4: context 'prod', key 'tokenfile': unknown key (allowed: gateway, token-file, ca-file, "
     "insecure)"),
    ("contexts:\n  prod:\n    token-file: t\n",
     ":3: context 'prod', key 'gateway': missing: the gateway's URL"),
    ("contexts:\n  prod:\n    gateway: gw.example:8470\n",
     ":3: context 'prod', key 'gateway': must be an http:// or https:// URL with a host, not "
     "'gw.example:8470'"),
    ("contexts:\n  prod:\n    gateway: https://gw:99999\n",
     ":3: context 'prod', key 'gateway': the port of 'https://gw:99999' is not a port number"),
    ("contexts:\n  prod:\n    gateway: https://gw\n    insecure: maybe\n",
     ":4: context 'prod', key 'insecure': must be true or false"),
    ("contexts:\n  prod:\n    gateway: http://gw\n    ca-file: ca.pem\n",
     ":4: context 'prod', key 'ca-file': the gateway http://gw is plain http"),
    ("contexts:\n  prod:\n    gateway: https://gw\n    ca-file: ca.pem\n    insecure: true\n",
     ":5: context 'prod', key 'insecure': set ca-file (check the certificate against it) or "
     "insecure"),
    ("contexts:\n  prod:\n    gateway: https://a\n  prod:\n    gateway: https://b\n",
     ":4: context 'prod': written twice"),
    ("current-context: prod\ncurrent-context: lab\n",
     ":2: key 'current-context': written twice"),
    ("current_context: prod\n",
     ":1: key 'current_context': unknown key (allowed: current-context, contexts)"),
    ("contexts:\n  - prod\n", ":2: key 'contexts': contexts must be a mapping"),
    ("- prod\n", ":1: the file must be a mapping of current-context and contexts"),
    ("contexts:\n  prod: {gateway: [\n", ":3: not valid YAML"),
]


@pytest.mark.parametrize("text, said", BAD, ids=[said.split(": ", 1)[-1][:40] for _, said in BAD])
def test_a_mistake_is_said_with_its_file_line_context_and_key(home, text, said):
    path = write_config(home, text)
    with pytest.raises(config_file.ConfigError) as caught:
        config_file.load(os.environ)
    assert str(caught.value).startswith(f"{path}{said}"), str(caught.value)
    result = ferry("status")  # and the command says it, as a usage error, sending nothing
    assert result.exit_code == Exit.USAGE
    assert f"error: {path}{said.split(' (')[0]}" in " ".join(result.stderr.split())


def test_an_unknown_context_names_those_there_are(home):
    path = write_config(home)
    result = ferry("--context", "staging", "status")
    assert result.exit_code == Exit.USAGE
    assert f"{path}: no context 'staging' (--context); the file has: lab, prod" in result.stderr
    path.write_text(CONFIG.format(port=9).replace("current-context: prod",
                                                  "current-context: gone"))
    result = ferry("status")
    assert result.exit_code == Exit.USAGE
    assert f"{path}:2: no context 'gone' (current-context)" in result.stderr


def test_a_missing_token_file_is_said_with_its_context(home):
    path = write_config(home)
    (path.parent / "tokens" / "lab.token").unlink()
    result = ferry("status", "--context", "lab")
    assert result.exit_code == Exit.USAGE
    assert (f"{path}:10: context 'lab', key 'token-file': {path.parent}/tokens/lab.token does "
            "not exist") in " ".join(result.stderr.split())
    (path.parent / "tokens" / "lab.token").write_text("\n")
    result = ferry("status", "--context", "lab")
    assert result.exit_code == Exit.USAGE
    assert "key 'token-file': the token file" in result.stderr and "is empty" in result.stderr


# -- precedence ---------------------------------------------------------------------------------

def test_without_config_or_variables_the_defaults_as_before(home):
    """As before, but HTTPS (the default) trusting the installation's CA once it is made."""
    from shared import tls
    from shared.settings import Settings

    target = resolve(None)
    assert target.url == "https://127.0.0.1:8470"
    token_file = home / ".local" / "state" / "ferryman" / "operator-token"
    assert target.token == token_file.read_text().strip()  # the state dir's, as always
    assert target.context is None
    files = tls.ensure_installation_tls(Settings(state_dir=home / ".local/state/ferryman"))
    assert resolve(None).cafile == str(files.ca)


def test_the_current_context_over_the_defaults(home):
    path = write_config(home)
    target = resolve(None)
    assert (target.url, target.token, target.context) == \
        ("https://ferry.example.net:8470", "prod-token", "prod")
    assert target.cafile == str(home / "ca.pem")
    assert target.token_from == str(path.parent / "tokens" / "prod.token")


def test_the_variables_over_the_current_context(home, monkeypatch):
    write_config(home)
    monkeypatch.setenv("FERRY_GATEWAY_PORT", "9000")
    monkeypatch.setenv("FERRY_OPERATOR_TOKEN", "from-the-environment")
    target = resolve(None)
    assert (target.url, target.token, target.token_from, target.context) == \
        ("https://127.0.0.1:9000", "from-the-environment", "FERRY_OPERATOR_TOKEN", None)
    monkeypatch.delenv("FERRY_GATEWAY_PORT")
    target = resolve(None)  # what the variables do not say still comes from the context
    assert (target.url, target.token) == ("https://ferry.example.net:8470", "from-the-environment")
    monkeypatch.setenv("FERRY_GATEWAY_TLS_CERT", str(home / "gateway.pem"))
    assert resolve(None).cafile == str(home / "gateway.pem")


def test_the_flag_over_the_variables(home, monkeypatch):
    write_config(home, port=8123)
    monkeypatch.setenv("FERRY_GATEWAY_PORT", "9000")
    monkeypatch.setenv("FERRY_OPERATOR_TOKEN", "from-the-environment")
    target = resolve("lab")
    assert (target.url, target.token, target.context) == \
        ("http://127.0.0.1:8123", "lab-token", "lab")


def test_the_flag_s_context_lacking_a_token_file_takes_the_variable(home, monkeypatch):
    write_config(home, CONFIG.format(port=9) + "  bare:\n    gateway: https://bare:8470\n    insecure: true\n")
    monkeypatch.setenv("FERRY_OPERATOR_TOKEN", "from-the-environment")
    target = resolve("bare")
    assert (target.url, target.token, target.insecure, target.cafile) == \
        ("https://bare:8470", "from-the-environment", True, None)


def test_the_flag_reaches_the_gateway_with_the_context_s_token(home, monkeypatch):
    """End to end: `ferry --context lab status` (or the flag after the command) calls the lab
    context's gateway with its token, though the variables point elsewhere."""
    fake = FakeGateway().start()
    try:
        fake.answer("GET", "/v1/groups", (200, {"groups": []}))
        write_config(home, port=fake.port)
        monkeypatch.setenv("FERRY_OPERATOR_TOKEN", "not-this-one")
        for args in (["--context", "lab", "status", "-o", "json"],
                     ["status", "--context", "lab", "-o", "json"]):
            result = ferry(*args)
            assert result.exit_code == 0, result.output
            assert json.loads(result.stdout) == {"groups": []}
        assert {s.headers["Authorization"] for s in fake.seen} == {"Bearer lab-token"}
    finally:
        fake.stop()


# -- TLS from a context ---------------------------------------------------------------------------

@pytest.fixture
def tls_gateway(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "gw.crt", tmp_path / "gw.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            body = b'{"groups": []}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    yield server.server_address[1], cert
    server.shutdown()
    server.server_close()


def test_a_context_s_ca_file_or_insecure_reaches_an_https_gateway(home, tls_gateway):
    port, cert = tls_gateway
    write_config(home, f"""\
contexts:
  trusted: {{gateway: "https://127.0.0.1:{port}", token-file: t, ca-file: {cert}}}
  careless: {{gateway: "https://127.0.0.1:{port}", token-file: t, insecure: true}}
  unknown: {{gateway: "https://127.0.0.1:{port}", token-file: t}}
""")
    (home / ".config" / "ferry" / "t").write_text("token\n")
    for context in ("trusted", "careless"):
        result = ferry("status", "--context", context, "-o", "json")
        assert result.exit_code == 0, (context, result.output)
    result = ferry("status", "--context", "unknown")
    assert result.exit_code == Exit.FAILED
    assert "has a certificate this client does not trust" in result.stderr
    assert "ca-file" in result.stderr


# -- ferry config ---------------------------------------------------------------------------------

def test_get_contexts_and_current_context(home, monkeypatch):
    monkeypatch.setattr(cli.output.out, "width", 250)  # the table's columns in full
    path = write_config(home)
    result = ferry("config", "get-contexts", "-o", "json")
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert listed["config"] == str(path) and listed["current_context"] == "prod"
    assert [(c["name"], c["current"]) for c in listed["contexts"]] == \
        [("prod", True), ("lab", False)]
    text = ferry("config", "get-contexts").stdout
    assert "https://ferry.example.net:8470" in text and "*" in text
    assert ferry("config", "current-context").stdout == "prod\n"
    assert json.loads(ferry("config", "current-context", "-o", "json").stdout) == \
        {"current_context": "prod"}


def test_use_context_edits_only_that_line(home):
    path = write_config(home)
    path.chmod(0o600)
    result = ferry("config", "use-context", "lab")
    assert result.exit_code == 0, result.output
    assert path.read_text() == CONFIG.format(port=9).replace(
        "current-context: prod   # the usual one", "current-context: lab   # the usual one")
    assert path.stat().st_mode & 0o777 == 0o600
    assert ferry("config", "current-context").stdout == "lab\n"


def test_use_context_adds_the_line_and_keeps_a_symlink(home, monkeypatch):
    real = write_config(home, CONFIG.format(port=9).replace(
        "current-context: prod   # the usual one\n", ""))
    link = home / "linked.yaml"  # a dotfiles repository's link, say
    link.symlink_to(real)
    monkeypatch.setenv("FERRY_CONFIG", str(link))
    assert ferry("config", "current-context").exit_code == Exit.FAILED
    assert ferry("config", "use-context", "prod").exit_code == 0
    assert link.is_symlink()
    assert real.read_text().startswith("current-context: prod\n# the operator's gateways\n")


def test_use_context_refuses_an_unknown_name_and_leaves_the_file(home):
    path = write_config(home)
    before = path.read_text()
    result = ferry("config", "use-context", "staging")
    assert result.exit_code == Exit.USAGE
    assert "no context 'staging' (use-context); the file has: lab, prod" in result.stderr
    assert path.read_text() == before


def test_without_a_file_config_says_where_it_looked(home):
    result = ferry("config", "get-contexts")
    assert result.exit_code == 0
    assert f"no config file at {home}/.config/ferry/config.yaml" in " ".join(result.stdout.split())
    result = ferry("config", "use-context", "prod")
    assert result.exit_code == Exit.USAGE
    assert "this config file does not exist" in result.stderr

"""Shared pieces of the Python end-to-end tests: a check counter that prints
PASS/FAIL lines and the summary, and starting `cyberimage serve` on a free
port. Each test script imports this module from the tests/ folder."""

import datetime
import http.client
import ipaddress
import os
import re
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

RESULTS = {"passed": 0, "failed": 0}


def check(name, condition, detail=""):
    if condition:
        RESULTS["passed"] += 1
        print(f"PASS {name}")
    else:
        RESULTS["failed"] += 1
        print(f"FAIL {name} {detail}")


def finish():
    """Prints the summary line and exits non-zero on any failure."""
    print(f"{RESULTS['passed']} passed, {RESULTS['failed']} failed")
    sys.exit(1 if RESULTS["failed"] else 0)


def isolated_env(data_dir, **settings):
    """The environment a test's `cyberimage` runs in: this one less every
    CYBERIMAGE_* and HF_* setting, with HOME, HF_HOME and the cache folder
    inside `data_dir` (created only if written), then `settings`. A machine
    whose Hugging Face cache holds real weights, or whose shell sets
    CYBERIMAGE_*, then tests as CI does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CYBERIMAGE_", "HF_"))}
    home = os.path.join(data_dir, "home")
    env.update(HOME=home, HF_HOME=os.path.join(home, "huggingface"), XDG_CACHE_HOME=os.path.join(home, ".cache"))
    env.update(settings)
    return env


def start_server(binary, data_dir, *extra, env=None):
    """Starts `serve` on 127.0.0.1:0 (in `isolated_env` unless `env` is
    given); returns (process, base URL)."""
    if env is None:
        env = isolated_env(data_dir)
    proc = subprocess.Popen([binary, "serve", "--bind", "127.0.0.1:0", "--data-dir", data_dir, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    line = proc.stdout.readline()
    match = re.search(r"listening on (http://\S+)", line)
    if not match:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    return proc, match.group(1)


def make_ca_and_server_cert(folder):
    """A CA made here, and a server certificate for 127.0.0.1 it signed:
    returns (ca.pem, server.pem, server.key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("CyberImage test CA")).issuer_name(name("CyberImage test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(valid[0]).not_valid_after(valid[1])
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(valid[0]).not_valid_after(valid[1])
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def tls_reverse_proxy(target_base, folder):
    """TLS in front of a plain-HTTP server: a certificate of a CA made
    here, every request relayed to `target_base` and its answer streamed
    back as it comes (SSE progress events included). Returns (server,
    https base URL, CA file). The TLS is real (Python's ssl module); only
    the relaying is ours."""
    ca, cert, key = make_ca_and_server_cert(folder)
    target = urlsplit(target_base)

    class Relay(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def relay(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=120)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            upstream.request(self.command, self.path, body=body, headers=headers)
            resp = upstream.getresponse()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                    self.send_header(k, v)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            try:
                while True:
                    chunk = resp.read1(65536)
                    if not chunk:
                        break
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                pass  # the client went away (a cancelled call): so does upstream
            finally:
                upstream.close()

        do_GET = do_POST = do_DELETE = relay

    server = ThreadingHTTPServer(("127.0.0.1", 0), Relay)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"https://127.0.0.1:{server.server_address[1]}", ca


def chat_stand_in(tls_folder=None):
    """A STAND-IN OpenAI-compatible chat server for prompt enrichment (no
    real chat model can be downloaded here): `POST …/chat/completions`
    records the request and answers as Ollama's /v1 does, with the user's
    prompt and a phrase chosen by the style named in the system prompt
    (`fantasy` -> "enchanted glow", else "neon glow"); a prompt holding
    "fail" gets a 500. With `tls_folder` it speaks real TLS with a
    certificate of a CA made here. Returns (server, base URL, CA file or
    None, list of request bodies)."""
    import json

    seen = []

    class Chat(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            seen.append(body)
            system = body["messages"][0]["content"]
            subject = body["messages"][1]["content"].replace("Rewrite this image prompt: ", "")
            if "fail" in subject:
                status, answer = 500, {"error": {"message": "stand-in model crashed"}}
            else:
                extra = "enchanted glow" if "fantasy" in system else "neon glow"
                status, answer = 200, {"choices": [{"message": {"role": "assistant", "content": f"{subject}, {extra}"}}]}
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Chat)
    ca = None
    scheme = "http"
    if tls_folder is not None:
        ca, cert, key = make_ca_and_server_cert(tls_folder)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"{scheme}://127.0.0.1:{server.server_address[1]}/v1", ca, seen

"""A small SMTP server on loopback that records what it is sent: EHLO, AUTH PLAIN/LOGIN, STARTTLS,
MAIL/RCPT/DATA, and TLS from the first byte for smtps://."""
from __future__ import annotations

import base64
import datetime
import ipaddress
import socketserver
import ssl
import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path


@dataclass
class Received:
    """One message as the server took it."""

    sender: str
    recipients: list[str]
    raw: bytes
    # Who logged in before sending (None: nobody), and whether the connection was encrypted by then.
    user: str | None
    encrypted: bool
    message: EmailMessage = field(init=False)

    def __post_init__(self):
        self.message = message_from_bytes(self.raw, policy=policy.default)

    @property
    def body(self) -> str:
        return self.message.get_content()


@dataclass
class Session:
    user: str | None = None
    sender: str = ""
    recipients: list[str] = field(default_factory=list)
    encrypted: bool = False


class SmtpServer:
    """Accepts the login `user`/`password`; `tls` is a server-side ssl context: with `implicit_tls`
    the whole connection is TLS (smtps://), else STARTTLS is offered. `echo_credentials` plays a
    careless server that quotes the password it refused."""

    def __init__(self, user: str = "notify", password: str = "p@ss word", tls: ssl.SSLContext | None = None,
                 implicit_tls: bool = False, reject_with: str = "", echo_credentials: bool = False):
        self.user, self.password = user, password
        self.echo_credentials = echo_credentials
        self.tls, self.implicit_tls = tls, implicit_tls
        # An answer such as "451 4.3.0 try later" given to MAIL FROM, to play a server that refuses.
        self.reject_with = reject_with
        self.received: list[Received] = []
        self.commands: list[str] = []
        self.lock = threading.Lock()
        smtp = self

        class Handler(socketserver.StreamRequestHandler):
            def setup(self):
                self.session = Session()
                if smtp.implicit_tls:
                    self.request = smtp.tls.wrap_socket(self.request, server_side=True)
                    self.session.encrypted = True
                super().setup()

            def say(self, line: str):
                self.wfile.write(line.encode() + b"\r\n")
                self.wfile.flush()

            def read(self) -> str:
                return self.rfile.readline(4096).decode(errors="replace").rstrip("\r\n")

            def handle(self):
                self.say("220 localhost test SMTP")
                while True:
                    line = self.read()
                    if not line:
                        return
                    with smtp.lock:
                        smtp.commands.append(line.split()[0].upper() if line.split() else "")
                    if not self.answer(line):
                        return

            def answer(self, line: str) -> bool:
                verb, _, rest = line.partition(" ")
                verb = verb.upper()
                if verb == "EHLO":
                    offers = ["AUTH PLAIN LOGIN", "8BITMIME"]
                    if smtp.tls and not self.session.encrypted:
                        offers.insert(0, "STARTTLS")
                    for offer in ["localhost", *offers[:-1]]:
                        self.say(f"250-{offer}")
                    self.say(f"250 {offers[-1]}")
                elif verb == "HELO":
                    self.say("250 localhost")
                elif verb == "STARTTLS" and smtp.tls and not self.session.encrypted:
                    self.say("220 go ahead")
                    self.request = smtp.tls.wrap_socket(self.request, server_side=True)
                    self.rfile, self.wfile = self.request.makefile("rb"), self.request.makefile("wb")
                    self.session = Session(encrypted=True)
                elif verb == "AUTH":
                    self.authenticate(rest)
                elif verb == "MAIL":
                    if smtp.reject_with:
                        self.say(smtp.reject_with)
                    else:
                        self.session.sender = rest.partition(":")[2].strip().split()[0].strip("<>")
                        self.say("250 ok")
                elif verb == "RCPT":
                    self.session.recipients.append(rest.partition(":")[2].strip().strip("<>"))
                    self.say("250 ok")
                elif verb == "DATA":
                    self.say("354 end with <CRLF>.<CRLF>")
                    self.take_data()
                elif verb in ("RSET", "NOOP"):
                    self.say("250 ok")
                elif verb == "QUIT":
                    self.say("221 bye")
                    return False
                else:
                    self.say("502 not implemented")
                return True

            def authenticate(self, rest: str):
                mechanism, _, initial = rest.partition(" ")
                if mechanism.upper() == "PLAIN":
                    if not initial:
                        self.say("334 ")
                        initial = self.read()
                    _, user, password = base64.b64decode(initial).decode().split("\0")
                elif mechanism.upper() == "LOGIN":
                    if not initial:  # smtplib sends the user name with the command
                        self.say("334 VXNlcm5hbWU6")
                        initial = self.read()
                    user = base64.b64decode(initial).decode()
                    self.say("334 UGFzc3dvcmQ6")
                    password = base64.b64decode(self.read()).decode()
                else:
                    self.say("504 unrecognised mechanism")
                    return
                if (user, password) == (smtp.user, smtp.password):
                    self.session.user = user
                    self.say("235 authenticated")
                else:
                    quoted = f" for {user}/{password}" if smtp.echo_credentials else ""
                    self.say(f"535 5.7.8 authentication failed{quoted}")

            def take_data(self):
                lines = []
                while True:
                    line = self.rfile.readline()
                    if line in (b".\r\n", b".\n", b""):
                        break
                    lines.append(line[1:] if line.startswith(b"..") else line)
                session = self.session
                with smtp.lock:
                    smtp.received.append(Received(session.sender, list(session.recipients), b"".join(lines),
                                                  session.user, session.encrypted))
                session.sender, session.recipients = "", []
                self.say("250 queued")

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def url(self, scheme: str = "smtp", credentials: str | None = "notify:p%40ss%20word") -> str:
        """The SMTP_URL that reaches this server, with URL-encoded `user:password` unless None."""
        return f"{scheme}://{credentials + '@' if credentials else ''}127.0.0.1:{self.port}"

    def start(self) -> SmtpServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """Write a certificate for 127.0.0.1 and localhost and its key; return their paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder()
                   .subject_name(name)
                   .issuer_name(name)
                   .public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                               x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "smtp-cert.pem", folder / "smtp-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def server_tls(cert_path: Path, key_path: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    return context

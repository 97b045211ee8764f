"""``python -m engine_server keygen DIR``: CURVE keys for an engine that listens beyond loopback.

Writes ZeroMQ certificate files (zmq.auth.create_certificates):

    DIR/server.key, DIR/server.key_secret      the engine's keypair (serve --curve-dir DIR)
    DIR/client.key, DIR/client.key_secret      a client's keypair (submit --client-key DIR/client.key_secret)
    DIR/authorized_clients/client.key          public keys the engine accepts (copy more here)

A client needs ``server.key`` (public) and its own ``*.key_secret``; the secret files stay private
(mode 0600). ``--client NAME`` adds another client keypair to an existing DIR.
"""
from __future__ import annotations

import datetime
import os
import re
import shutil
import sys
from pathlib import Path

import zmq


def add_parser(sub) -> None:
    p = sub.add_parser("keygen", help="create CURVE keys for a non-loopback engine",
                       description="Create the engine's and a client's CURVE keypairs in DIR. Start the engine with "
                                   "`serve --bind tcp://0.0.0.0:5555 --curve-dir DIR`; give a client DIR/server.key "
                                   "and DIR/<client>.key_secret.")
    p.add_argument("dir", metavar="DIR", help="folder for the key files (created if missing)")
    p.add_argument("--client", default="client", metavar="NAME",
                   help="name of the client keypair (default client); with an existing server key, only this "
                        "client keypair is added and authorized")
    p.add_argument("--force", action="store_true", help="replace existing keys of the same names")


def generate(folder: str | os.PathLike, client: str = "client", force: bool = False) -> dict[str, Path]:
    if client == "server" or not re.fullmatch(r"[A-Za-z0-9_.-]+", client):
        raise ValueError(f"--client {client!r}: use letters, digits, '.', '_' or '-' (and not 'server')")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    allowed = folder / "authorized_clients"
    allowed.mkdir(exist_ok=True)
    if force or not (folder / "server.key_secret").exists():
        create_certificate(folder, "server")
    if (folder / f"{client}.key").exists() and not force:
        raise FileExistsError(f"{folder / (client + '.key')} exists (use --force to replace it)")
    public, secret = create_certificate(folder, client)
    shutil.copy(public, allowed / public.name)
    return {"server_public": folder / "server.key", "server_secret": folder / "server.key_secret",
            "client_public": public, "client_secret": secret}


def create_certificate(folder: Path, name: str) -> tuple[Path, Path]:
    """``name.key`` and ``name.key_secret`` in ZeroMQ's certificate format (zmq.auth.load_certificate
    reads them). The secret file is created with mode 0600 from its first byte, never readable by
    others even for a moment (zmq.auth.create_certificates leaves that to the umask)."""
    public_key, secret_key = zmq.curve_keypair()
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    public_file, secret_file = folder / f"{name}.key", folder / f"{name}.key_secret"
    curve = f'curve\n    public-key = "{public_key.decode()}"\n'
    public_file.write_text(f"#   ZeroMQ CURVE Public Certificate ({stamp})\nmetadata\n{curve}")
    secret_file.unlink(missing_ok=True)  # an existing file would keep its old mode
    handle = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(handle, "w") as out:
        out.write(f"#   ZeroMQ CURVE **Secret** Certificate ({stamp}): keep it private\nmetadata\n{curve}"
                  f'    secret-key = "{secret_key.decode()}"\n')
    return public_file, secret_file


def run_keygen(args) -> int:
    try:
        files = generate(args.dir, args.client, args.force)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"engine:  serve --curve-dir {args.dir}  (keeps {files['server_secret']})", file=sys.stderr)
    print(f"client:  --server-key {files['server_public']} --client-key {files['client_secret']}", file=sys.stderr)
    return 0

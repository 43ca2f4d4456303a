"""Who may change a running server: Triton's control APIs restricted to holders of an admin key.

Triton answers model control (load a model with an uploaded config and ``model.py``: code execution
inside the server), shared-memory registration, log and trace settings on the same ports as
inference. genserve starts every Triton with those APIs restricted (Triton's own
``--http-restricted-api`` and ``--grpc-restricted-protocol``): they answer 403 / PERMISSION_DENIED
unless the request carries the header :data:`~genserve.config.ADMIN_KEY_HEADER` with the key. Health,
metadata, model configuration, statistics and inference stay open, so readiness checks and clients
need no key.

The key comes from ``--admin-key-file``, from ``GENSERVE_ADMIN_KEY`` or from the file
``GENSERVE_ADMIN_KEY_FILE`` names; otherwise a random one is made and written to a file only its owner
can read. Triton takes it on its command line, so local users who can list processes can see it:
restrict the host, or run the server in its own container.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from genserve import config
from genserve.errors import ServerError

# What Triton's flag syntax (apis:header=key) and HTTP headers allow without quoting.
_KEY_PATTERN = re.compile(r"^[A-Za-z0-9._~+/-]{16,256}$")


def generate_key() -> str:
    return secrets.token_urlsafe(32)


def check_key(key: str, where: str) -> str:
    key = key.strip()
    if not _KEY_PATTERN.match(key):
        raise ServerError(f"the admin key from {where} must be 16-256 characters of A-Z a-z 0-9 . _ ~ + / -")
    return key


def write_key(key: str, path: str | os.PathLike) -> Path:
    """Write the key to a file that only its owner can read (created 0600, never widened)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(key + "\n")
    os.chmod(path, 0o600)
    return path


def resolve_key(key_file: str | os.PathLike | None, default_file: Path) -> tuple[str, Path | None]:
    """The admin key and the file it is in (None: from the environment).

    ``key_file`` given: its key, or a new key written there when the file does not exist yet. Else the
    environment's, else a new key written to ``default_file``.
    """
    if key_file is None and os.environ.get(config.ADMIN_KEY_ENV):
        return check_key(os.environ[config.ADMIN_KEY_ENV], config.ADMIN_KEY_ENV), None
    path = Path(key_file or os.environ.get(config.ADMIN_KEY_FILE_ENV) or default_file)
    if key_file is not None or os.environ.get(config.ADMIN_KEY_FILE_ENV):
        if path.is_file():
            return check_key(path.read_text(), str(path)), path
    key = generate_key()
    return key, write_key(key, path)


def restricted_api_args(key: str) -> list[str]:
    """Triton's flags restricting :data:`~genserve.config.RESTRICTED_APIS` to requests with the key."""
    setting = f"{','.join(config.RESTRICTED_APIS)}:{config.ADMIN_KEY_HEADER}={key}"
    return [f"--http-restricted-api={setting}", f"--grpc-restricted-protocol={setting}"]


def admin_headers(key: str) -> dict[str, str]:
    """The header an admin call (model load/unload, log settings) must carry."""
    return {config.ADMIN_KEY_HEADER: key}

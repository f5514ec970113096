"""A notary's bundle entry and its ``identity.json`` in the data directory.

The bundle entry is what ``parallax notary-info`` prints and ``parallax bundle
merge`` combines: name, URL, region, key id and public key (base64 Ed25519),
optionally country and RIR.  ``serve`` saves the entry it advertises as
``<data-dir>/identity.json`` so that ``notary-info --data-dir`` can print it
without a running notary.  Nothing in this file is signed: clients trust the
key because the bundle (optionally operator-signed) names it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from notary.core import VerifyKey
from notary.errors import EncodingError, InputError
from notary.keyfile import PUB_FILE

__all__ = ["IDENTITY_FILE", "bundle_entry", "write_identity", "local_entry"]

IDENTITY_FILE = "identity.json"


def bundle_entry(name: str, url: str | None, region: str, key_id: str, public_key: str,
                 country: str | None = None, rir: str | None = None, relay: bool = False) -> dict[str, Any]:
    """A bundle entry: what ``parallax notary-info`` prints and ``parallax bundle`` merges.

    ``relay`` true: the notary runs an Oblivious HTTP relay for its bundle (``serve --relay``).
    """
    entry: dict[str, Any] = {"name": name, "url": url, "region": region, "key_id": key_id, "public_key": public_key}
    if country:
        entry["country"] = country
    if rir:
        entry["rir"] = rir
    if relay:
        entry["relay"] = True
    return entry


def write_identity(data_dir: Path, entry: dict[str, Any]) -> None:
    """Atomically replace ``<data_dir>/identity.json`` with *entry*."""
    path = data_dir / IDENTITY_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entry, indent=2) + "\n")
    os.replace(tmp, path)


def local_entry(data_dir: Path) -> dict[str, Any]:
    """The bundle entry of the notary whose data directory is *data_dir* (no network).

    Raises :class:`InputError` (code ``no_input``) when there is no public key yet,
    and :class:`EncodingError` when ``identity.json`` is not a JSON object.
    """
    try:
        pub = (data_dir / PUB_FILE).read_text().strip()
    except FileNotFoundError:
        raise InputError(f"no public key at {data_dir / PUB_FILE}; run 'parallax keygen' first", code="no_input") from None
    key = VerifyKey.from_b64(pub)
    try:
        saved = json.loads((data_dir / IDENTITY_FILE).read_text())
    except FileNotFoundError:
        saved = {}
    except ValueError:
        raise EncodingError(f"{data_dir / IDENTITY_FILE} is not JSON") from None
    if not isinstance(saved, dict):
        raise EncodingError(f"{data_dir / IDENTITY_FILE} is not a JSON object")
    return bundle_entry(saved.get("name", "notary"), saved.get("url"), saved.get("region", "unknown"),
                        key.key_id, key.b64, saved.get("country"), saved.get("rir"), saved.get("relay") is True)

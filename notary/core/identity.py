"""The notary identity document: who a notary says it is, signed by its own key.

Payload type :data:`IDENTITY_TYPE`.  Coordinates are integers in micro-degrees
(``lat_e6``, ``lon_e6``) because signed JSON carries no floats.  A client
compares ``key_id`` and ``public_key`` with its bundle entry and excludes a
notary whose document does not match.

Two optional fields, present only when set (older documents and their golden
vector are unchanged):

* ``ohttp_keys``: the notary's Oblivious HTTP gateway key configurations, the
  exact ``application/ohttp-keys`` bytes (RFC 9458 section 3.2) in standard
  base64, current key first, then the next one.  Because they are signed, a
  client authenticates them with the bundle's Ed25519 key and a relay cannot
  substitute its own.
* ``relay``: ``true`` when the notary also runs an Oblivious HTTP relay for its
  bundle (``parallax serve --relay``) at ``<url>/v1/relay/<key_id>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from notary.core import canonical
from notary.core.envelope import sign_envelope, verify_envelope
from notary.core.keys import SigningKey, VerifyKey
from notary.errors import VerificationError

__all__ = ["IDENTITY_TYPE", "PROTOCOL", "Identity", "sign_identity", "verify_identity"]

IDENTITY_TYPE = "application/vnd.parallax.notary+json; version=1"
PROTOCOL = "parallax/2"


@dataclass(frozen=True, slots=True)
class Identity:
    """A notary's self-description.  ``limits`` holds integers (counts, bytes, seconds)."""

    name: str
    region: str
    key_id: str
    public_key: str
    software: str
    signed_at: int
    url: str | None = None
    country: str | None = None
    rir: str | None = None
    lat_e6: int | None = None
    lon_e6: int | None = None
    limits: Mapping[str, int] = field(default_factory=dict)
    protocol: str = PROTOCOL
    ohttp_keys: str | None = None
    relay: bool = False

    def to_payload(self) -> dict[str, Any]:
        coords = None
        if self.lat_e6 is not None and self.lon_e6 is not None:
            coords = {"lat_e6": self.lat_e6, "lon_e6": self.lon_e6}
        out: dict[str, Any] = {
            "name": self.name,
            "region": self.region,
            "country": self.country,
            "rir": self.rir,
            "coordinates": coords,
            "url": self.url,
            "key_id": self.key_id,
            "public_key": self.public_key,
            "protocol": self.protocol,
            "software": self.software,
            "limits": dict(self.limits),
            "signed_at": self.signed_at,
        }
        if self.ohttp_keys is not None:
            out["ohttp_keys"] = self.ohttp_keys
        if self.relay:
            out["relay"] = True
        return out

    @classmethod
    def from_payload(cls, d: Mapping[str, Any]) -> "Identity":
        """Parse a *verified* payload strictly; raise :class:`VerificationError` on a bad shape."""
        try:
            coords = d.get("coordinates")
            if coords is None:
                coords = {}
            if not isinstance(coords, dict):
                raise TypeError("coordinates must be an object or null")
            lat, lon = coords.get("lat_e6"), coords.get("lon_e6")
            if coords and not all(_is_int(v) for v in (lat, lon)):
                raise TypeError("coordinates hold integer lat_e6 and lon_e6")
            limits = d["limits"]
            if not isinstance(limits, dict) or not all(_is_int(v) for v in limits.values()):
                raise TypeError("limits must map names to integers")
            strs = {k: d[k] for k in ("name", "region", "key_id", "public_key", "protocol", "software")}
            if not all(isinstance(v, str) for v in strs.values()):
                raise TypeError("identity strings have the wrong type")
            opts = {k: d.get(k) for k in ("url", "country", "rir")}
            if not all(v is None or isinstance(v, str) for v in opts.values()):
                raise TypeError("url, country and rir are strings or null")
            if not _is_int(d["signed_at"]):
                raise TypeError("signed_at must be an integer")
            ohttp_keys = d.get("ohttp_keys")
            if ohttp_keys is not None and not isinstance(ohttp_keys, str):
                raise TypeError("ohttp_keys must be a base64 string")
            relay = d.get("relay", False)
            if not isinstance(relay, bool):
                raise TypeError("relay must be a boolean")
            return cls(
                name=strs["name"], region=strs["region"], key_id=strs["key_id"],
                public_key=strs["public_key"], software=strs["software"],
                signed_at=d["signed_at"], url=opts["url"], country=opts["country"],
                rir=opts["rir"], lat_e6=lat, lon_e6=lon,
                limits=limits, protocol=strs["protocol"], ohttp_keys=ohttp_keys, relay=relay,
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise VerificationError(f"malformed identity document: {exc}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def sign_identity(identity: Identity, key: SigningKey) -> dict[str, Any]:
    if identity.key_id != key.key_id or identity.public_key != key.verify_key.b64:
        raise ValueError("identity names a different key")
    return sign_envelope(IDENTITY_TYPE, canonical.encode(identity.to_payload()), key)


def verify_identity(envelope: Any, key: VerifyKey) -> Identity:
    """Verify against the expected key, then parse; the document must name that same key."""
    ident = Identity.from_payload(verify_envelope(envelope, key, IDENTITY_TYPE).payload)
    if ident.key_id != key.key_id or ident.public_key != key.b64:
        raise VerificationError("identity document names a different key than its signer")
    return ident

"""Parallax client: ask notaries what they see and compare with what you see.

    from client import verify_with_notaries
    verdict = await verify_with_notaries("example.com")
    print(verdict.status, verdict.summary)
"""

from client.api import client_probe, verify_with_notaries, verify_with_notaries_sync
from client.bundle import Bundle, BundleEntry, load_bundle, merge_entries, sign_bundle
from client.evidence import CheckContext, Expectation, KeyMemory, ProxyView
from client.keymemory import KeyStore
from client.policy import PRESETS, Policy, get_policy
from client.pool import NotaryPool
from client.verdict import ClientView, Evidence, NotaryResult, Verdict, decide
from client.socks import ProxySpec, parse_via
from client.verify import check_answer

__all__ = [
    "verify_with_notaries", "verify_with_notaries_sync", "client_probe",
    "Bundle", "BundleEntry", "load_bundle", "merge_entries", "sign_bundle",
    "PRESETS", "Policy", "get_policy",
    "ClientView", "Evidence", "NotaryResult", "Verdict", "decide", "check_answer",
    "CheckContext", "Expectation", "KeyMemory", "ProxyView", "KeyStore", "ProxySpec", "parse_via",
    "NotaryPool",
]

"""A model signed by its federation: a manifest of its files with their sha256, signed with the
federation's Ed25519 key.

The coordinator holds the private half (``federation.key``, made by `lab coordinator init`, or by a
local federation in its workspace) and signs every model it registers; members get the public
half (``federation.pub``) with the CA certificate when they are admitted. Before the lab reads a
byte of a model it checks the signature over the manifest, then every file's hash, then that the
model holds no file the manifest does not name (lab.registry.verified).

What a signature proves: the model's spec, scalers, weights, lock, fingerprints and entry point are
byte for byte those the holder of the federation's key registered under that name. What it does
not prove: that the coordinator trained it honestly, that the model is any good, or anything about
MLflow's own description files beside it (``MLmodel``, the environment files), which the lab checks
by their form and never runs.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from lab.errors import ModelError, UsageError

__all__ = [
    "BUNDLE_PATH",
    "MANIFEST_FILE",
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "SIGNATURE_FILE",
    "check_signature",
    "key_id",
    "sign_bundle",
]

#: Where a logged model keeps its bundle (MLflow copies an artifact to artifacts/<its name>).
BUNDLE_PATH = "artifacts/bundle"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
PRIVATE_KEY_FILE = "federation.key"
PUBLIC_KEY_FILE = "federation.pub"
FORMAT = "fedlab-model-manifest/1"


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short name of a public key: the first 16 hex digits of its raw bytes' sha256."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_key(path: Path, *, private: bool) -> Any:
    what = "the federation's signing key" if private else "the federation's public key"
    try:
        data = path.read_bytes()
        loaded = (
            serialization.load_pem_private_key(data, password=None)
            if private
            else serialization.load_pem_public_key(data)
        )
    except FileNotFoundError:
        raise UsageError(
            f"{what} {str(path)!r} does not exist; the coordinator makes it with `lab coordinator init` "
            f"(certs/{PRIVATE_KEY_FILE if private else PUBLIC_KEY_FILE}) and hands members the .pub file"
        ) from None
    except (ValueError, TypeError, OSError) as exc:
        raise UsageError(f"{what} {str(path)!r} cannot be read ({exc}); give the PEM file the lab wrote") from None
    wanted = Ed25519PrivateKey if private else Ed25519PublicKey
    if not isinstance(loaded, wanted):
        raise UsageError(f"{what} {str(path)!r} is not an Ed25519 key; give the file `lab coordinator init` wrote")
    return loaded


def sign_bundle(
    bundle: Path, private_key: Path, *, model: str, run_id: str, files: dict[str, Path] | None = None
) -> dict[str, Any]:
    """Write the manifest of ``files`` (by their path in the logged model: by default every file in
    ``bundle`` and the lab's entry point) and its signature into ``bundle``; the manifest."""
    # Imported here: packaging imports MLflow and PyTorch, which no caller of the rest needs.
    from lab.registry.packaging import ENTRY_POINT

    key: Ed25519PrivateKey = _read_key(private_key, private=True)
    if files is None:
        files = {f"{BUNDLE_PATH}/{p.name}": p for p in sorted(bundle.iterdir()) if p.is_file()}
        files[ENTRY_POINT.name] = ENTRY_POINT
    own = {f"{BUNDLE_PATH}/{MANIFEST_FILE}", f"{BUNDLE_PATH}/{SIGNATURE_FILE}"}  # written below, never listed
    digests = {name: _sha256(path) for name, path in sorted(files.items()) if name not in own}
    manifest = {
        "format": FORMAT,
        "model": model,
        "run_id": run_id,
        "key_id": key_id(key.public_key()),
        "files": digests,
    }
    text = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")
    (bundle / MANIFEST_FILE).write_bytes(text)
    signature = {"key_id": manifest["key_id"], "ed25519": base64.b64encode(key.sign(text)).decode("ascii")}
    (bundle / SIGNATURE_FILE).write_text(json.dumps(signature, indent=2), encoding="utf-8")
    return manifest


def check_signature(directory: Path, public_key: Path, *, what: str) -> dict[str, Any]:
    """Check that the logged model in ``directory`` carries a manifest signed with the key in
    ``public_key`` and that every file it names has the hash it names; the manifest. Reads nothing
    of the model but the manifest and its signature before the signature holds.

    Raises
    ------
    ModelError
        In one line: ``what`` is not loaded, and the first thing that differs.
    """
    key: Ed25519PublicKey = _read_key(public_key, private=False)
    ours = key_id(key)
    refused = f"{what} is not loaded"
    bundle = directory / BUNDLE_PATH
    manifest_path, signature_path = bundle / MANIFEST_FILE, bundle / SIGNATURE_FILE
    if not manifest_path.is_file() or not signature_path.is_file():
        raise ModelError(
            f"{refused}: it carries no signature of a federation ({BUNDLE_PATH}/{SIGNATURE_FILE} is missing); "
            "only a model the federation's coordinator signed is read: ask it to register the model again"
        )
    text = manifest_path.read_bytes()
    try:
        signature = json.loads(signature_path.read_text(encoding="utf-8"))
        theirs, signed = str(signature["key_id"]), base64.b64decode(signature["ed25519"], validate=True)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ModelError(
            f"{refused}: its signature file {BUNDLE_PATH}/{SIGNATURE_FILE} is not one the lab writes"
        ) from None
    if theirs != ours:
        raise ModelError(
            f"{refused}: it is signed by another key (key id {theirs}), not by this federation's (key id {ours}, "
            f"{public_key}); pull the model from your own federation, or check the --federation-key you gave"
        )
    try:
        key.verify(signed, text)
    except InvalidSignature:
        raise ModelError(
            f"{refused}: its manifest {BUNDLE_PATH}/{MANIFEST_FILE} was changed after the federation signed it"
        ) from None
    manifest: dict[str, Any] = json.loads(text)
    for name, digest in sorted(manifest["files"].items()):
        path = directory / name
        if directory.resolve() not in path.resolve().parents:
            raise ModelError(f"{refused}: its manifest names {name!r}, which is not inside the model")
        if not path.is_file() or path.is_symlink():
            raise ModelError(f"{refused}: {name}, which the federation signed, is missing")
        if _sha256(path) != digest:
            raise ModelError(f"{refused}: {name} differs from the file the federation signed (sha256 {digest[:12]}…)")
    return manifest

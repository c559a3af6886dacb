"""The federation's signature over a model's manifest (lab.registry.signing), on real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lab.errors import ModelError, UsageError
from lab.registry.packaging import ENTRY_POINT
from lab.registry.signing import (
    BUNDLE_PATH,
    MANIFEST_FILE,
    PRIVATE_KEY_FILE,
    check_signature,
    sign_bundle,
)
from lab.runtime.security import make_federation_key


def _model(folder: Path) -> Path:
    """A model folder as MLflow lays one out: the entry point beside a bundle of data files."""
    bundle = folder / BUNDLE_PATH
    bundle.mkdir(parents=True)
    (bundle / "spec.toml").write_text('name = "t"\n')
    (bundle / "weights.npz").write_bytes(b"\x00\x01\x02")
    (folder / ENTRY_POINT.name).write_bytes(ENTRY_POINT.read_bytes())
    return bundle


def test_a_signed_model_verifies_and_names_its_task_and_files(tmp_path: Path) -> None:
    public = make_federation_key(tmp_path / "certs")
    assert oct((tmp_path / "certs" / PRIVATE_KEY_FILE).stat().st_mode & 0o777) == "0o600"
    bundle = _model(tmp_path / "model")
    sign_bundle(bundle, public.with_name(PRIVATE_KEY_FILE), model="t", run_id="r1")
    manifest = check_signature(tmp_path / "model", public, what="'m'")
    assert manifest["model"] == "t" and manifest["run_id"] == "r1"
    assert set(manifest["files"]) == {f"{BUNDLE_PATH}/spec.toml", f"{BUNDLE_PATH}/weights.npz", ENTRY_POINT.name}


def test_a_manifest_changed_after_signing_is_refused(tmp_path: Path) -> None:
    public = make_federation_key(tmp_path / "certs")
    bundle = _model(tmp_path / "model")
    sign_bundle(bundle, public.with_name(PRIVATE_KEY_FILE), model="t", run_id="")
    (bundle / "weights.npz").write_bytes(b"other weights")
    manifest = json.loads((bundle / MANIFEST_FILE).read_text())
    manifest["files"][f"{BUNDLE_PATH}/weights.npz"] = "0" * 64  # the attacker rewrites the hash too
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    with pytest.raises(ModelError, match="was changed after the federation signed it"):
        check_signature(tmp_path / "model", public, what="'m'")


def test_a_signed_manifest_naming_a_file_outside_the_model_is_refused(tmp_path: Path) -> None:
    public = make_federation_key(tmp_path / "certs")
    bundle = _model(tmp_path / "model")
    (tmp_path / "outside").write_text("x")
    files = {"../outside": tmp_path / "outside", f"{BUNDLE_PATH}/spec.toml": bundle / "spec.toml"}
    sign_bundle(bundle, public.with_name(PRIVATE_KEY_FILE), model="t", run_id="", files=files)
    with pytest.raises(ModelError, match="names '../outside', which is not inside the model"):
        check_signature(tmp_path / "model", public, what="'m'")


def test_a_key_that_is_not_the_federations_gives_one_line_naming_the_file(tmp_path: Path) -> None:
    bundle = _model(tmp_path / "model")
    not_a_key = tmp_path / "ca.crt"
    not_a_key.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(UsageError, match="ca.crt"):
        check_signature(tmp_path / "model", not_a_key, what="'m'")
    with pytest.raises(UsageError, match="does not exist"):
        sign_bundle(bundle, tmp_path / "missing.key", model="t", run_id="")

"""Models at rest: encrypted with AES-256-GCM, bound to their model, version and variant,
checked before anything loads; a refused version stays out while the others serve."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from quiver.serving import IntegrityError, build_example, read_version, signing, variant_bytes
from quiver.serving.optimize import OptimizeSettings, SpeedBudget, VariantKind, optimize

from .serverproc import quiver_serve

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))


def signing_keys(directory: Path, name: str) -> tuple[Path, Path]:
    """An EC key pair as PEM files: (private, public)."""
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = directory / f"{name}.pem", directory / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def encrypted_store(tmp_path: Path, name: str = "secret", version: str = "1", sign_key: Path | None = None) -> Path:
    model = build_example(tmp_path / "example.onnx")
    np.savez(tmp_path / "eval.npz", input=np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32))
    (tmp_path / "model.key").write_text(KEY.hex())
    optimize(OptimizeSettings(
        model=model, name=name, version=version, store=tmp_path / "store", eval=tmp_path / "eval.npz",
        variants=(VariantKind.FP32,), speed=SpeedBudget(seconds=0.05, max_runs=20, throughput_batch=8),
        encrypt_key=tmp_path / "model.key", sign_key=sign_key, force=True,
    ))
    return tmp_path / "store"


def set_file(version_dir: Path, content: bytes) -> None:
    """Replace the fp32 variant's file and record its digest, so only decryption can object."""
    (version_dir / "fp32.onnx.enc").write_bytes(content)
    manifest = json.loads((version_dir / "manifest.json").read_text())
    manifest["variants"][0]["sha256"] = hashlib.sha256(content).hexdigest()
    (version_dir / "manifest.json").write_text(json.dumps(manifest))


def test_optimize_writes_only_ciphertext_and_the_key_opens_it(tmp_path: Path) -> None:
    store = encrypted_store(tmp_path)
    version = read_version(store / "secret/1")
    variant = version.manifest.variant("fp32")
    assert (variant.file, variant.encryption) == ("fp32.onnx.enc", "aes-256-gcm")
    assert not list((store / "secret/1").glob("*.onnx"))  # nothing in the clear
    sealed = (store / "secret/1/fp32.onnx.enc").read_bytes()
    model = variant_bytes(version, variant, KEY)
    assert model not in sealed and model[:64] not in sealed
    x = np.ones((2, 64), np.float32)
    ours = ort.InferenceSession(model).run(None, {"input": x})[0]
    source = ort.InferenceSession(str(tmp_path / "example.onnx")).run(None, {"input": x})[0]
    np.testing.assert_allclose(ours, source, rtol=0, atol=1e-5)
    # A fresh nonce per file: encrypting the same model again gives other bytes.
    again = encrypted_store(tmp_path)
    assert (again / "secret/1/fp32.onnx.enc").read_bytes()[:12] != sealed[:12]


@pytest.mark.parametrize("attack", ["wrong key", "no key", "flipped bit", "file of another model", "digest mismatch"])
def test_a_refused_variant_names_its_model_and_loads_nothing(tmp_path: Path, attack: str) -> None:
    store = encrypted_store(tmp_path)
    version_dir = store / "secret/1"
    key = KEY
    if attack == "wrong key":
        key = OTHER_KEY
    elif attack == "no key":
        key = None
    elif attack == "flipped bit":
        sealed = bytearray((version_dir / "fp32.onnx.enc").read_bytes())
        sealed[len(sealed) // 2] ^= 0x01
        set_file(version_dir, bytes(sealed))
    elif attack == "file of another model":
        other = encrypted_store(tmp_path / "other", name="public")
        set_file(version_dir, (other / "public/1/fp32.onnx.enc").read_bytes())
    else:
        changed = bytearray((version_dir / "fp32.onnx.enc").read_bytes())
        changed[0] ^= 0xFF  # every bit of the first byte: always another file (a random nonce byte could already be 0)
        (version_dir / "fp32.onnx.enc").write_bytes(bytes(changed))
    version = read_version(version_dir)
    expected = {"no key": "no model key was given", "digest mismatch": "the manifest expects"}.get(attack, "cannot decrypt")
    with pytest.raises(IntegrityError, match=f"secret:1 variant 'fp32'.*{expected}"):
        variant_bytes(version, version.manifest.variant("fp32"), key)


@pytest.mark.parametrize("attack", ["none", "changed file", "added file", "unsigned", "signed by another key"])
def test_signatures_are_verified_before_anything_loads(tmp_path: Path, attack: str) -> None:
    private, public = signing_keys(tmp_path, "ours")
    other_private, _ = signing_keys(tmp_path, "theirs")
    store = encrypted_store(tmp_path, sign_key=other_private if attack == "signed by another key" else private)
    version_dir = store / "secret/1"
    if attack == "changed file":
        (version_dir / "report.json").write_text("{}")
    elif attack == "added file":
        (version_dir / "extra.onnx").write_bytes(b"onnx")
    elif attack == "unsigned":
        (version_dir / signing.SIGNATURE_FILE).unlink()
    if attack == "none":
        signing.verify(version_dir, [public], "secret:1")
        return
    expected = "is not signed" if attack == "unsigned" else "signature not verified"
    with pytest.raises(IntegrityError, match=f"secret:1.*{expected}"):
        signing.verify(version_dir, [public], "secret:1")


def test_refused_versions_stay_out_and_the_good_one_serves(tmp_path: Path) -> None:
    private, public = signing_keys(tmp_path, "ours")
    store = encrypted_store(tmp_path, sign_key=private)
    for version in ("2", "3"):
        # A copy of version 1 relabelled: its ciphertext stays bound to version 1.
        shutil.copytree(store / "secret/1", store / f"secret/{version}")
        manifest = json.loads((store / f"secret/{version}/manifest.json").read_text())
        manifest["version"] = version
        (store / f"secret/{version}/manifest.json").write_text(json.dumps(manifest))
    signing.sign(store / "secret/3", private)  # version 3 is re-signed: only decryption can object
    x = np.random.default_rng(2).standard_normal((3, 64)).astype(np.float32)
    with quiver_serve(str(store), "--model-key", str(tmp_path / "model.key"), "--verify-key", str(public)) as server:
        assert server.models == "secret:1"
        client = triton.InferenceServerClient(server.address)
        tensor = triton.InferInput("input", [3, 64], "FP32")
        tensor.set_data_from_numpy(x)
        output = client.infer("secret", [tensor]).as_numpy("output")
        with pytest.raises(triton.InferenceServerException, match="no version '2'"):
            client.infer("secret", [tensor], model_version="2")
    source = ort.InferenceSession(str(tmp_path / "example.onnx")).run(None, {"input": x})[0]
    np.testing.assert_allclose(output, source, rtol=0, atol=1e-5)
    log = server.log()
    assert "refusing secret:2: secret:2: signature not verified" in log
    assert "refusing secret:3: secret:3 variant 'fp32': cannot decrypt" in log
    assert KEY.hex() not in log and KEY.hex().upper() not in log

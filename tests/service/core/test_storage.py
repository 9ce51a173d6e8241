"""The artifact store contract, over both backends (a directory; a real S3 server on loopback)."""

from __future__ import annotations

import hashlib
import os
import threading
import tracemalloc

import numpy as np
import pytest
from botocore.exceptions import ClientError
from fastapi.testclient import TestClient

import s3_support
from service.core.config import Settings, StorageSettings
from service.core.storage import (
    ArtifactCorrupt,
    LocalArtifactStore,
    S3ArtifactStore,
    StorageUnavailable,
    digest_of,
    make_store,
)
from service.main import create_app
from service.model_registry.samples import SampleChunk, encode_chunk, read_chunk_rows


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalArtifactStore(tmp_path / "artifacts")
    return make_store(StorageSettings(**request.getfixturevalue("s3_storage")))


def _corrupt(store, uri: str, data: bytes) -> None:
    """Overwrite the object's bytes behind the store's back (disk rot, a rogue writer)."""
    if isinstance(store, LocalArtifactStore):
        store.path(uri).write_bytes(data)
    else:
        store.client.put_object(Bucket=store.bucket, Key=store.key(uri), Body=data)


def test_content_addressed_put_read_and_idempotent(store):
    data = b"weights " * 1000
    art = store.put_bytes(data, prefix="weights/1", suffix=".safetensors")
    assert art.sha256 == hashlib.sha256(data).hexdigest() == digest_of(art.uri)
    assert art.size == len(data) and art.uri.endswith(".safetensors")
    assert store.read_bytes(art.uri) == data
    assert store.put_bytes(data, prefix="weights/1", suffix=".safetensors") == art  # writing twice is harmless
    assert store.stat(art.uri)[0] == len(data) and store.exists(art.uri)
    assert store.list_uris("weights") == [art.uri]
    assert store.list_uris("samples") == []


def test_put_file_consumes_the_scratch_file(store):
    tmp = store.temp_path(".safetensors")
    tmp.write_bytes(b"abc" * 5000)
    art = store.put_file(tmp, prefix="private/7", suffix=".safetensors")
    assert not tmp.exists()
    assert store.read_bytes(art.uri) == b"abc" * 5000 and art.size == 15000


def test_range_reads(store):
    data = bytes(range(256)) * 40
    uri = store.put_bytes(data, prefix="weights/1").uri
    assert b"".join(store.iter_range(uri, 0, len(data) - 1)) == data
    assert b"".join(store.iter_range(uri, 100, 5000, block=333)) == data[100:5001]
    assert all(len(b) <= 333 for b in store.iter_range(uri, 100, 5000, block=333))
    with store.open(uri) as r:
        assert r.read(10) == data[:10] and r.read(20) == data[10:30]
        r.verify()


def test_checksum_mismatch_is_refused_on_read(store):
    data = b"the real bytes" * 100
    uri = store.put_bytes(data, prefix="weights/1").uri
    _corrupt(store, uri, b"X" + data[1:])
    with pytest.raises(ArtifactCorrupt):
        store.read_bytes(uri)
    with pytest.raises(ArtifactCorrupt):
        store.verify(uri, hashlib.sha256(data).hexdigest(), len(data))
    with pytest.raises(ArtifactCorrupt), store.open(uri) as r:
        r.verify()
    store.delete(uri)
    with pytest.raises(ArtifactCorrupt, match="missing"):
        store.verify(uri, hashlib.sha256(data).hexdigest())


def test_delete(store):
    uri = store.put_bytes(b"gone soon", prefix="samples/1").uri
    assert store.delete(uri) is True
    assert not store.exists(uri) and store.stat(uri) is None
    assert store.delete(uri) is False
    with pytest.raises(FileNotFoundError):
        store.read_bytes(uri)


def test_uris_of_another_store_are_refused(store):
    with pytest.raises(ValueError):
        store.read_bytes("s3://someone-elses-bucket/x/ab/" + "ab" * 32)
    with pytest.raises(ValueError):
        store.read_bytes("local://../../etc/passwd")


def test_streaming_chunk_rows_keep_memory_flat(store):
    """Reading a few rows of a 24 MiB chunk holds about one block, not the chunk."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6000, 1024)).astype(np.float32)  # 24 MiB
    art = store.put_bytes(encode_chunk(x), prefix="samples/1", suffix=".safetensors")
    chunk = SampleChunk(id=1, model_id=1, uri=art.uri, sha256=art.sha256, n_rows=len(x))
    del x
    rows = np.array([5999, 0, 3001, 17])
    if isinstance(store, S3ArtifactStore):
        store.range_block_bytes = 1 << 20  # LETHE_STORAGE__RANGE_BLOCK_BYTES
    tracemalloc.start()
    try:
        got = read_chunk_rows(store, chunk, rows)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    x = np.random.default_rng(0).normal(size=(6000, 1024)).astype(np.float32)
    np.testing.assert_array_equal(got, x[rows])
    assert peak < (8 << 20), f"peak {peak / 2**20:.1f} MiB while reading 4 rows of a 24 MiB chunk"


# ----------------------------------------------------------------------------- S3 only
def test_s3_purge_deletes_every_version_none_retrievable(s3_server, s3_storage):
    store = make_store(StorageSettings(**s3_storage))
    raw = s3_server.client()
    secret = b"the inputs of alice-123 " * 500
    uri = store.put_bytes(secret, prefix="samples/1", suffix=".safetensors").uri
    store.put_bytes(secret, prefix="samples/1", suffix=".safetensors")  # a second identical write: 2 versions
    key = store.key(uri)
    raw.delete_object(Bucket=store.bucket, Key=key)  # a plain delete only adds a marker...
    raw.put_object(Bucket=store.bucket, Key=key, Body=secret)  # ...and the object is back
    before = raw.list_object_versions(Bucket=store.bucket, Prefix=key)
    old_ids = [v["VersionId"] for v in before.get("Versions", [])]
    assert len(old_ids) == 3 and len(before.get("DeleteMarkers", [])) == 1
    assert raw.get_object(Bucket=store.bucket, Key=key, VersionId=old_ids[-1])["Body"].read() == secret

    assert store.delete(uri) is True
    after = raw.list_object_versions(Bucket=store.bucket, Prefix=key)
    assert after.get("Versions", []) == [] and after.get("DeleteMarkers", []) == []
    for vid in old_ids:
        with pytest.raises(ClientError) as e:
            raw.get_object(Bucket=store.bucket, Key=key, VersionId=vid)
        assert e.value.response["Error"]["Code"] in ("NoSuchVersion", "NoSuchKey", "404")


def test_s3_upload_with_a_wrong_checksum_is_refused(s3_storage):
    store = make_store(StorageSettings(**s3_storage))
    with pytest.raises(ArtifactCorrupt):
        # what a corrupted transfer looks like to the server: the body does not match the digest sent
        store._put("lethe/weights/x", b"actual bytes", hashlib.sha256(b"other bytes").hexdigest(), len(b"actual bytes"))
    assert store.stat("s3://" + store.bucket + "/lethe/weights/x") is None


def test_s3_missing_bucket_is_named(s3_server, s3_storage):
    store = make_store(StorageSettings(**{**s3_storage, "bucket": "no-such-bucket-here"}))
    with pytest.raises(StorageUnavailable, match="bucket 'no-such-bucket-here' does not exist"):
        store.check()


def test_s3_unreachable_endpoint_is_named(s3_storage):
    port = s3_support.free_port()  # nothing listens there
    store = make_store(StorageSettings(**{**s3_storage, "endpoint_url": f"http://127.0.0.1:{port}", "connect_timeout_s": 1}))
    with pytest.raises(StorageUnavailable, match="endpoint unreachable"):
        store.check()


def test_s3_wrong_credentials_are_named(tmp_path, s3_server):
    """A server that checks signatures (moto with IAM auth on): unknown keys are refused."""
    strict = s3_support.start_server(tmp_path / "moto-auth.log", INITIAL_NO_AUTH_ACTION_COUNT="0")
    try:
        store = make_store(StorageSettings(backend="s3", bucket="any-bucket", endpoint_url=strict.endpoint, region="us-east-1"))
        with pytest.raises(StorageUnavailable, match="access denied"):
            store.check()
    finally:
        strict.stop()


def test_s3_backend_needs_a_bucket():
    with pytest.raises(ValueError, match="LETHE_STORAGE__BUCKET"):
        StorageSettings(backend="s3")


def test_readyz_says_which_store_problem(settings, s3_storage):
    bad = settings.model_copy(update={"storage": StorageSettings(**{**s3_storage, "bucket": "missing-bucket-x"})})
    with TestClient(create_app(bad)) as c:
        r = c.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["storage"].startswith("error:") and "missing-bucket-x" in r.json()["checks"]["storage"]
    assert r.json()["checks"]["database"] == "ok"
    good = settings.model_copy(update={"storage": StorageSettings(**s3_storage)})
    with TestClient(create_app(good)) as c:
        r = c.get("/readyz")
    assert r.json()["checks"]["storage"] == "ok"


def test_local_readyz_reports_an_unwritable_directory(settings, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o500)
    try:
        bad = settings.model_copy(update={"storage": StorageSettings(root=root)})
        with TestClient(create_app(bad)) as c:
            r = c.get("/readyz")
        assert r.status_code == 503 and "not writable" in r.json()["checks"]["storage"]
    finally:
        root.chmod(0o700)


def test_settings_from_environment(monkeypatch):
    monkeypatch.setenv("LETHE_STORAGE__BACKEND", "s3")
    monkeypatch.setenv("LETHE_STORAGE__BUCKET", "models")
    monkeypatch.setenv("LETHE_STORAGE__ENDPOINT_URL", "http://minio:9000")
    s = Settings().storage
    assert (s.backend, s.bucket, s.endpoint_url, s.delete_grace_s) == ("s3", "models", "http://minio:9000", 600.0)
    assert isinstance(make_store(s), S3ArtifactStore)


def test_concurrent_readiness_checks_of_a_local_store_never_fail(tmp_path):
    """/readyz runs ``check()`` from many threads at once; each probe must use a file of its own
    (one shared probe name let one check unlink another's file: a 503 under load)."""
    store = LocalArtifactStore(tmp_path / "artifacts")
    errors: list[Exception] = []

    def probe() -> None:
        for _ in range(200):
            try:
                store.check()
            except Exception as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

    threads = [threading.Thread(target=probe) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [p.name for p in (tmp_path / "artifacts").iterdir() if p.name.startswith(".lethe-ready")] == []

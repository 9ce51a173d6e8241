"""The pipeline on S3-compatible storage (a real server on loopback, versioned bucket): purge
means gone, a corrupt artifact is refused and the job retried, a missing store fails visibly."""

from __future__ import annotations

import numpy as np
import pytest
from botocore.exceptions import ClientError
from pipeline_support import forget_job, load_all, make_data, register_model, trained
from sqlalchemy import func, select

from service.core.config import StorageSettings
from service.core.storage import S3ArtifactStore
from service.job import service as job_service
from service.model_registry.samples import read_samples
from service.models import Job, JobKind, ModelVersion, SampleChunk, VersionArtifact
from workers.execution import run as run_mod
from workers.execution.purge import purge_model
from workers.execution.run import run_job
from workers.runtime import Runtime


@pytest.fixture
def rt_s3(clean_tables, settings, s3_storage):
    runtime = Runtime.from_settings(settings.model_copy(update={"storage": StorageSettings(**s3_storage)}))
    assert isinstance(runtime.store, S3ArtifactStore)
    yield runtime
    runtime.engine.dispose()




def _all_versions(store: S3ArtifactStore, uri: str) -> list[str]:
    key = store.key(uri)
    resp = store.client.list_object_versions(Bucket=store.bucket, Prefix=key)
    return [v["VersionId"] for v in resp.get("Versions", []) + resp.get("DeleteMarkers", []) if v["Key"] == key]


def test_purge_on_a_versioned_bucket_leaves_no_version_readable(rt_s3):
    rt, store = rt_s3, rt_s3.store
    data = make_data()
    model_id = trained(rt, data=data)
    with rt.session_factory() as s:
        v1 = s.execute(select(ModelVersion)).scalar_one()
        user_chunk = s.execute(select(SampleChunk).where(SampleChunk.n_rows == len(data["user"][1]))).scalar_one()
        private = [a.uri for a in s.execute(select(VersionArtifact).where(VersionArtifact.version_id == v1.id)).scalars()]
        assert v1.private_uri in private and len(private) == 2  # mixed_linear: noise-free weights + Gram sums
        doomed = [v1.artifact_uri, *private, user_chunk.uri]
    # every artifact went through the object store
    assert all(u.startswith(f"s3://{store.bucket}/lethe/") for u in doomed)
    # an overwrite of the same content-addressed key (a second writer) leaves two versions behind
    store.put_bytes(store.read_bytes(user_chunk.uri), prefix=f"samples/{model_id}", suffix=".safetensors")
    old = {u: _all_versions(store, u) for u in doomed}
    assert len(old[user_chunk.uri]) == 2 and all(old.values())

    gone = ["subject-003", "subject-011"]
    assert run_job(rt, forget_job(rt, model_id, *gone)) == "succeeded"
    out = purge_model(rt, model_id)  # s3_storage: delete_grace_s = 0
    assert out["chunks_rewritten"] == 1 and out["files_removed"] == len(doomed)

    for uri, version_ids in old.items():
        assert _all_versions(store, uri) == [], uri
        for vid in version_ids:
            with pytest.raises(ClientError) as e:
                store.client.get_object(Bucket=store.bucket, Key=store.key(uri), VersionId=vid)
            assert e.value.response["Error"]["Code"] in ("NoSuchVersion", "NoSuchKey", "404")
    # and the subjects' inputs are in no object left in the bucket, any version
    xu = data["user"][0][np.isin(np.array(data["subjects"]), gone)]
    resp = store.client.list_object_versions(Bucket=store.bucket, Prefix="lethe/samples/")
    blobs = [store.client.get_object(Bucket=store.bucket, Key=v["Key"], VersionId=v["VersionId"])["Body"].read()
             for v in resp.get("Versions", [])]
    assert blobs
    for row in xu:
        assert not any(row.tobytes() in b for b in blobs)
    # what is left still reads back, verified
    with rt.session_factory() as s:
        assert len(read_samples(s, store, model_id, splits=["user"])) == len(data["user"][1]) - 12


def test_purge_waits_for_the_grace_period_of_a_fresh_write(rt_s3):
    rt = rt_s3
    model_id = trained(rt)
    with rt.session_factory() as s:
        v1_uri = s.execute(select(ModelVersion.artifact_uri)).scalar_one()
    assert run_job(rt, forget_job(rt, model_id, "subject-001")) == "succeeded"
    # v1's weights were written moments ago: with a grace period they stay for the sweeper
    out = purge_model(rt, model_id, grace_s=3600)
    assert out["files_removed"] == 0 and rt.store.exists(v1_uri)
    with rt.session_factory() as s:
        assert s.execute(select(ModelVersion.artifact_uri).where(ModelVersion.number == 1)).scalar_one() is None
    from workers.execution.sweeper import sweep

    assert sweep(rt, orphan_grace_s=0)["orphans"] >= 1
    assert not rt.store.exists(v1_uri) and _all_versions(rt.store, v1_uri) == []


def test_corrupt_weights_are_refused_and_the_job_retried(rt_s3):
    rt, store = rt_s3, rt_s3.store
    model_id = trained(rt)
    job_id = forget_job(rt, model_id, "subject-002")

    def corrupt(job):
        with rt.session_factory() as s:
            uri = s.get(Job, job.id).checkpoint["evaluate"]["artifact_uri"]
        store.client.put_object(Bucket=store.bucket, Key=store.key(uri), Body=b"rotten bytes")

    run_mod.HOOKS["before_publish"] = corrupt
    try:
        assert run_job(rt, job_id) == "retrying"
    finally:
        run_mod.HOOKS.pop("before_publish", None)
    with rt.session_factory() as s:
        job = s.get(Job, job_id)
        assert "ArtifactCorrupt" in job.error and job.status == "queued"
        assert "evaluate" not in job.checkpoint  # recomputed on the retry
        assert s.execute(select(func.count()).select_from(ModelVersion)).scalar_one() == 1  # nothing half-published
    assert run_job(rt, job_id) == "succeeded"
    with rt.session_factory() as s:
        v2 = s.execute(select(ModelVersion).where(ModelVersion.number == 2)).scalar_one()
        store.verify(v2.artifact_uri, v2.sha256, v2.size_bytes)
        assert s.get(Job, job_id).attempts == 2


def test_unreachable_store_fails_the_job_visibly(rt_s3):
    from s3_support import free_port

    with rt_s3.session_factory.begin() as s:  # data ingested while the store was up
        m = register_model(s, "nowhere")
        load_all(s, rt_s3.store, m, make_data())
        job = job_service.create_job(s, rt_s3.settings, m, JobKind.train, actor="test")
        job.max_attempts = 1
        job_id = job.id
    dead = rt_s3.settings.storage.model_copy(update={"endpoint_url": f"http://127.0.0.1:{free_port()}", "connect_timeout_s": 0.5, "max_attempts": 1})
    rt = Runtime.from_settings(rt_s3.settings.model_copy(update={"storage": dead}))
    try:
        assert run_job(rt, job_id) == "failed"
        with rt.session_factory() as s:
            job = s.get(Job, job_id)
            assert job.status == "failed" and "Could not connect to the endpoint URL" in job.error
            assert s.execute(select(func.count()).select_from(ModelVersion)).scalar_one() == 0
    finally:
        rt.engine.dispose()

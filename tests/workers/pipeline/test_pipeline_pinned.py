"""Behaviour pinned before the runner and publish were split (issue 11, item 0).

Each test names the one-line bug it catches; each was checked by applying that bug and seeing
the test fail. The takeovers are done synchronously inside a runner hook, so no thread races.
"""

from __future__ import annotations

import time

from pipeline_support import SECRET, make_data
from pipeline_support import forget_job as _forget_job
from pipeline_support import trained as _trained
from sqlalchemy import select

from service.core.security import subject_key
from service.job import service as job_service
from service.model_registry.service import move_alias
from service.models import DeletionRequest, Job, JobStatus, Model, ModelAlias, ModelVersion, SampleChunk, VersionArtifact
from workers.execution import run as run_mod
from workers.execution.purge import purge_model
from workers.execution.run import run_job




def _take_over(rt, job_id) -> int:
    """What the sweeper + a second worker do to a job whose worker looked dead: re-queue, claim."""
    with rt.session_factory.begin() as s:
        s.get(Job, job_id).status = JobStatus.queued.value
    attempt = run_mod.claim(rt, job_id)
    assert attempt == 2
    return attempt


def _versions(s, model_id):
    return s.execute(select(ModelVersion).where(ModelVersion.model_id == model_id).order_by(ModelVersion.number)).scalars().all()


# ----------------------------------------------------------------------------- fencing
def _run_superseded(rt, job_id, hook: str, action) -> None:
    """Run the job with ``action`` at ``hook`` (another attempt takes the job over there): the
    first attempt must end ``abandoned``."""
    run_mod.HOOKS[hook] = action
    try:
        assert run_job(rt, job_id) == "abandoned"
    finally:
        run_mod.HOOKS.pop(hook, None)


def test_superseded_attempt_saves_no_step_while_the_new_attempt_runs(rt):
    """Bug pinned: the attempt check in ``_save_step`` (run.py) removed. The job is still
    ``running`` (attempt 2 owns it), so only the attempt number tells them apart."""
    model_id = _trained(rt)
    job_id = _forget_job(rt, model_id, "subject-003")
    _run_superseded(rt, job_id, "after_solve", lambda job: _take_over(rt, job_id))
    with rt.session_factory() as s:
        job = s.get(Job, job_id)
        assert job.status == "running" and job.attempts == 2
        assert "solve" not in (job.checkpoint or {}) and job.step == "collect"
        assert [v.number for v in _versions(s, model_id)] == [1]


def test_superseded_attempt_cannot_publish_while_the_new_attempt_runs(rt):
    """Bug pinned: the attempt check in ``publish`` removed (status alone still says running)."""
    model_id = _trained(rt)
    job_id = _forget_job(rt, model_id, "subject-004")
    _run_superseded(rt, job_id, "before_publish", lambda job: _take_over(rt, job_id))
    with rt.session_factory() as s:
        job = s.get(Job, job_id)
        assert job.status == "running" and job.attempts == 2 and job.result_version_id is None
        assert [v.number for v in _versions(s, model_id)] == [1]
        req = s.execute(select(DeletionRequest)).scalar_one()
        assert req.status == "processing" and req.clean_version_id is None


def test_superseded_attempt_failure_does_not_touch_the_new_attempt(rt):
    """Bug pinned: the attempt check in ``_record_failure`` removed: the old worker's crash
    would re-queue (or fail) a job another worker is running."""
    model_id = _trained(rt)
    job_id = _forget_job(rt, model_id, "subject-005")

    def take_over_then_crash(job):
        _take_over(rt, job_id)
        raise RuntimeError("the old worker crashes after losing the job")

    _run_superseded(rt, job_id, "after_solve", take_over_then_crash)
    with rt.session_factory() as s:
        job = s.get(Job, job_id)
        assert job.status == "running" and job.attempts == 2 and job.error is None


def test_superseded_attempt_heartbeat_does_not_beat_for_the_new_attempt(rt):
    """Bug pinned: the attempt term of ``_owned`` (heartbeat / progress writes) removed: a
    zombie worker would keep a job alive that its new owner may have lost."""
    rt.settings.pipeline.heartbeat_interval_s = 0.05
    model_id = _trained(rt)
    job_id = _forget_job(rt, model_id, "subject-006")
    seen = {}

    def take_over_and_watch(job):
        _take_over(rt, job_id)
        with rt.session_factory() as s:
            seen["before"] = s.get(Job, job_id).heartbeat_at
        time.sleep(0.4)  # eight beats of the old attempt's heartbeat thread
        with rt.session_factory() as s:
            seen["after"] = s.get(Job, job_id).heartbeat_at

    run_mod.HOOKS["after_solve"] = take_over_and_watch
    try:
        assert run_job(rt, job_id) == "abandoned"
    finally:
        run_mod.HOOKS.pop("after_solve", None)
    assert seen["before"] is not None and seen["after"] == seen["before"]


# ----------------------------------------------------------------------------- revocation
def test_version_whose_watermark_equals_the_subjects_first_sample_is_revoked(rt):
    """Bug pinned: the watermark comparison ``>=`` turned into ``>``. The last user sample (the
    version's watermark) is the only sample of one subject: that version held the subject."""
    data = make_data()
    data["subjects"][-1] = "lonely"
    model_id = _trained(rt, data=data)
    with rt.session_factory() as s:
        v1 = _versions(s, model_id)[0]
        assert v1.sample_watermark is not None
    job_id = _forget_job(rt, model_id, "lonely")
    assert run_job(rt, job_id) == "succeeded"
    with rt.session_factory() as s:
        v1, v2 = _versions(s, model_id)
        assert v1.state == "revoked" and v2.state == "live"
        req = s.execute(select(DeletionRequest).where(DeletionRequest.subject_key == subject_key(SECRET, "lonely"))).scalar_one()
        assert req.status == "completed" and req.samples_removed == 1
        assert req.held_versions == [{"model": "tiny", "number": 1}]


def test_version_below_the_subjects_first_sample_is_not_revoked(rt):
    """The other side of the watermark rule: a version fitted before the subject's samples
    existed never held them and stays live (``>=`` turned into ``<=``/always-true is caught)."""
    data = make_data()
    model_id = _trained(rt, data=data)
    with rt.session_factory.begin() as s:
        m = s.get(Model, model_id)
        import numpy as np

        from pipeline_support import ingest

        ingest(s, rt.store, m, np.zeros((1, data["d"]), np.float32), np.zeros(1, np.int64), ["newcomer"], "user")
    job_id = _forget_job(rt, model_id, "newcomer")
    assert run_job(rt, job_id) == "succeeded"
    with rt.session_factory() as s:
        v1, v2 = _versions(s, model_id)
        assert v1.state == "live" and v2.state == "live"
        req = s.execute(select(DeletionRequest)).scalar_one()
        assert req.status == "completed" and req.held_versions == []


def test_alias_on_a_revoked_version_moves_even_without_auto_promote(rt):
    """Bug pinned: aliases not moved off revoked versions. The model does not auto-promote, so
    only the "never point at a revoked version" rule moves ``production``."""
    model_id = _trained(rt, auto_promote=False)
    with rt.session_factory.begin() as s:
        m = s.get(Model, model_id)
        assert s.get(ModelAlias, (model_id, "production")) is None  # not auto-promoted
        move_alias(s, m, "production", _versions(s, model_id)[0], "operator")
    job_id = _forget_job(rt, model_id, "subject-002")
    assert run_job(rt, job_id) == "succeeded"
    with rt.session_factory() as s:
        v1, v2 = _versions(s, model_id)
        assert v1.state == "revoked"
        assert s.get(ModelAlias, (model_id, "production")).version_id == v2.id
        assert s.get(ModelAlias, (model_id, "latest")).version_id == v2.id


def test_alias_on_a_live_version_stays_without_auto_promote(rt):
    """The other side: a production alias on a version that stays live is not moved by publish
    when the model does not auto-promote (a version fitted before the subject existed)."""
    import numpy as np

    from pipeline_support import ingest

    data = make_data()
    model_id = _trained(rt, data=data, auto_promote=False)
    with rt.session_factory.begin() as s:
        m = s.get(Model, model_id)
        move_alias(s, m, "production", _versions(s, model_id)[0], "operator")
        ingest(s, rt.store, m, np.zeros((1, data["d"]), np.float32), np.zeros(1, np.int64), ["newcomer"], "user")
    job_id = _forget_job(rt, model_id, "newcomer")
    assert run_job(rt, job_id) == "succeeded"
    with rt.session_factory() as s:
        v1, v2 = _versions(s, model_id)
        assert s.get(ModelAlias, (model_id, "production")).version_id == v1.id
        assert s.get(ModelAlias, (model_id, "latest")).version_id == v2.id


# ----------------------------------------------------------------------------- purge
def test_purge_deletes_the_original_chunk_file_at_once(rt):
    """Bug pinned: the rewritten chunk's old file left on disk (until the orphan sweep): the
    deleted subjects' raw inputs must be gone when purge returns. (Files written within
    ``storage.delete_grace_s`` wait for the sweeper, so a concurrent identical write is never
    lost — issue 18; this test's files are seconds old, hence ``grace_s=0``.)"""
    model_id = _trained(rt)
    with rt.session_factory() as s:
        before = {c.uri for c in s.execute(select(SampleChunk).where(SampleChunk.model_id == model_id)).scalars()}
    job_id = _forget_job(rt, model_id, "subject-001", "subject-020")
    assert run_job(rt, job_id) == "succeeded"
    with rt.session_factory() as s:
        v1 = _versions(s, model_id)[0]
        arts = {a.name: a.uri for a in s.execute(select(VersionArtifact).where(VersionArtifact.version_id == v1.id)).scalars()}
        # mixed_linear keeps the noise-free weights and the Gram sums of its affine head
        assert set(arts) == {"weights", "gram"} and arts["weights"] == v1.private_uri
        revoked_files = [v1.artifact_uri, *arts.values()]
    out = purge_model(rt, model_id, grace_s=0)
    assert out["chunks_rewritten"] == 1
    with rt.session_factory() as s:
        after = {c.uri for c in s.execute(select(SampleChunk).where(SampleChunk.model_id == model_id)).scalars()}
    gone = before - after
    assert len(gone) == 1
    for uri in gone | set(revoked_files):
        assert not rt.store.exists(uri), uri
    for uri in after:
        assert rt.store.exists(uri)
    with rt.session_factory() as s:
        assert s.execute(select(VersionArtifact).where(VersionArtifact.version_id == v1.id)).first() is None

"""The forget job reads the retained samples' ids and labels, and their inputs only when a method
needs them (issue 16): a downdate from kept statistics never does, and the evaluation of a
model on its kept features (every prefix precision) neither; late reads go by sample id, so a purge that
rewrote the chunks in between does not matter."""

from __future__ import annotations

import numpy as np
import pytest
from pipeline_support import forget_job, make_data, trained

from service.core.db import read_session
from service.model_registry.samples import SampleChunkCorrupt, read_inputs, read_samples
from service.models import Model
from workers.execution import run as run_mod
from workers.execution.purge import purge_model
from workers.execution.run import run_job


def _counting(monkeypatch) -> list[int]:
    """Rows of retained inputs the job reads: late reads by id, plus any eager read of the user split."""
    calls: list[int] = []
    real_inputs, real_samples = run_mod.read_inputs, run_mod.read_samples

    def inputs(session, store, model_id, ids):
        calls.append(len(ids))
        return real_inputs(session, store, model_id, ids)

    def samples(session, store, model_id, **kw):
        out = real_samples(session, store, model_id, **kw)
        if kw.get("splits") == ["user"] and kw.get("only_subject_keys") is None and kw.get("inputs", True):
            calls.append(-len(out))  # an eager read of every retained input
        return out

    monkeypatch.setattr(run_mod, "read_inputs", inputs)
    monkeypatch.setattr(run_mod, "read_samples", samples)
    return calls


@pytest.mark.parametrize("dtype", ["mixed", "float64"])
def test_a_forget_by_downdate_reads_no_retained_inputs_beyond_its_evaluation(rt, monkeypatch, dtype):
    data = make_data(n_subjects=30, per_subject=6)
    model_id = trained(rt, "lazy", data)
    with rt.session_factory.begin() as s:
        m = s.get(Model, model_id)
        m.method_config = {**m.method_config, "dtype": dtype}
    # the trained version's sums were kept under float64: retrain once so the next forgets downdate
    with rt.session_factory.begin() as s:
        from service.job import service as job_service
        from service.models import JobKind

        job_id = job_service.create_job(s, rt.settings, s.get(Model, model_id), JobKind.train, actor="test").id
    assert run_job(rt, job_id) == "succeeded"
    calls = _counting(monkeypatch)
    assert run_job(rt, forget_job(rt, model_id, "subject-001", "subject-002")) == "succeeded"
    assert calls == []  # solve: kept sums and kept rows; evaluate: head on the kept features (float64 too)


def test_late_reads_go_by_sample_id_after_a_purge_rewrote_the_chunks(rt):
    data = make_data(n_subjects=30, per_subject=6)
    model_id = trained(rt, "lazyp", data)
    with read_session(rt.session_factory) as s:
        before = read_samples(s, rt.store, model_id, splits=["user"], include_ids=True)
        index = read_samples(s, rt.store, model_id, splits=["user"], inputs=False)
    assert len(index.x) == 0 and np.array_equal(index.ids, before.ids) and np.array_equal(index.y, before.y)
    assert run_job(rt, forget_job(rt, model_id, "subject-003")) == "succeeded"
    assert purge_model(rt, model_id, grace_s=0)["chunks_rewritten"] >= 1
    keep = np.array([k != "subject-003" for k in data["subjects"]])
    with read_session(rt.session_factory) as s:
        kept_ids = before.ids[keep]
        pick = kept_ids[::-7]  # any order
        got = read_inputs(s, rt.store, model_id, pick)
        assert np.array_equal(got, before.x[np.searchsorted(before.ids, pick)])
        with pytest.raises(SampleChunkCorrupt, match="no longer exist"):
            read_inputs(s, rt.store, model_id, before.ids[~keep][:1])  # purged with its subject

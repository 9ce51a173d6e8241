"""Prometheus gauges an auditor watches: the last published bound and the versions per model."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from service.models import Model, ModelVersion


def test_versions_per_model_and_last_bound(client, db):
    models = {}
    for name in ("alpha", "beta"):
        models[name] = Model(name=name, architecture="mlp", architecture_config={}, input_shape=[2], num_classes=2,
                             linearize="all", method_config={})
        db.add(models[name])
    db.flush()
    rows = [("alpha", 1, "revoked", 3e-4), ("alpha", 2, "live", 1e-4), ("alpha", 3, "live", 4.5e-6), ("beta", 1, "live", 0.0)]
    for name, n, state, kl in rows:
        db.add(ModelVersion(model_id=models[name].id, number=n, sha256=f"{n:064d}", size_bytes=1, bound={"kl_nats": kl}, metrics={}, state=state))
    db.flush()
    r = client.get("/metrics", headers=client.auth("auditor"))
    assert r.status_code == 200
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(r.text) for s in fam.samples}
    assert samples[("lethe_versions", (("model", "alpha"), ("state", "live")))] == 2
    assert samples[("lethe_versions", (("model", "alpha"), ("state", "revoked")))] == 1
    assert samples[("lethe_versions", (("model", "beta"), ("state", "live")))] == 1
    assert ("lethe_versions", (("model", "beta"), ("state", "revoked"))) not in samples
    assert samples[("lethe_last_bound_kl_nats", (("model", "alpha"),))] == 4.5e-6  # the newest version's
    assert samples[("lethe_last_bound_kl_nats", (("model", "beta"),))] == 0.0

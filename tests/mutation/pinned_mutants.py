"""The one-line bugs of issue 11 (item 0), each applied alone and its pinning test run.

``make mutate-pinned``: every line must say KILLED. Not collected by pytest (no ``test_`` prefix);
the file under mutation is restored after each run. ``make mutate`` is the broad mutmut run.
"""

import os
import subprocess
import sys
from pathlib import Path
os.chdir(Path(__file__).resolve().parents[2])
PY = sys.executable
env = dict(os.environ)
env.setdefault("LETHE_TEST_REDIS", "redis://127.0.0.1:6379/14")
M = [
 ("fencing: owned_by ignores the attempt (save_step, record_failure, publish)", "service/job/service.py", "return job is not None and job.status == JobStatus.running.value and job.attempts == attempt", "return job is not None and job.status == JobStatus.running.value", "tests/workers/pipeline/test_pipeline_pinned.py::test_superseded_attempt_saves_no_step_while_the_new_attempt_runs"),
 ("fencing: owned_by ignores the attempt (publish)", "service/job/service.py", "return job is not None and job.status == JobStatus.running.value and job.attempts == attempt", "return job is not None and job.status == JobStatus.running.value", "tests/workers/pipeline/test_pipeline_pinned.py::test_superseded_attempt_cannot_publish_while_the_new_attempt_runs"),
 ("fencing: owned_by ignores the attempt (record_failure)", "service/job/service.py", "return job is not None and job.status == JobStatus.running.value and job.attempts == attempt", "return job is not None and job.status == JobStatus.running.value", "tests/workers/pipeline/test_pipeline_pinned.py::test_superseded_attempt_failure_does_not_touch_the_new_attempt"),
 ("fencing: beat ignores the attempt", "service/job/service.py", "Job.status == JobStatus.running.value, Job.attempts == attempt", "Job.status == JobStatus.running.value", "tests/workers/pipeline/test_pipeline_pinned.py::test_superseded_attempt_heartbeat_does_not_beat_for_the_new_attempt"),
 ("fencing: save_step skips the check", "service/job/service.py", "    job = lock_owned(session, job_id, attempt)\n    if job is None:\n        return None\n", "    job = repo.job_for_update(session, job_id)\n", "tests/workers/pipeline/test_pipeline_pinned.py::test_superseded_attempt_saves_no_step_while_the_new_attempt_runs"),
 ("fencing: publish skips the check", "workers/execution/publish.py", "job = job_service.lock_owned(session, job_id, attempt)", "job = job_repo.job_for_update(session, job_id)", "tests/workers/pipeline/test_pipeline_pinned.py::test_superseded_attempt_cannot_publish_while_the_new_attempt_runs"),
 ("fencing: record_failure skips the check", "service/job/service.py", '    job = lock_owned(session, job_id, attempt)\n    if job is None:\n        return "abandoned"\n', "    job = repo.job_for_update(session, job_id)\n", "tests/workers/pipeline/test_pipeline_pinned.py::test_superseded_attempt_failure_does_not_touch_the_new_attempt"),
 ("watermark >= -> >", "service/model_registry/publication.py", "v.sample_watermark >= low", "v.sample_watermark > low", "tests/workers/pipeline/test_pipeline_pinned.py::test_version_whose_watermark_equals_the_subjects_first_sample_is_revoked"),
 ("aliases off revoked", "service/model_registry/publication.py", "if a.version_id in revoked_ids or (", "if (", "tests/workers/pipeline/test_pipeline_pinned.py::test_alias_on_a_revoked_version_moves_even_without_auto_promote"),
 ("purge old chunk file", "workers/execution/purge.py", "stale.append(old)", "pass", "tests/workers/pipeline/test_pipeline_pinned.py::test_purge_deletes_the_original_chunk_file_at_once"),
 ("purge keeps a private artifact", "service/model_registry/purge.py", "stale += [a.uri for a in arts]", "pass", "tests/workers/pipeline/test_pipeline_pinned.py::test_purge_deletes_the_original_chunk_file_at_once"),
 ("idempotency ignores source", "service/deletion_request/service.py", "and row.source == data.source", "", "tests/service/deletion_request/test_deletion_api.py::test_reused_idempotency_key_with_another_source_or_reason_is_422"),
 ("idempotency ignores reason", "service/deletion_request/service.py", "and row.reason == data.reason", "", "tests/service/deletion_request/test_deletion_api.py::test_reused_idempotency_key_with_another_source_or_reason_is_422"),
 ("half release noise", "workers/unlearning/methods/mixed_linear/method.py", "+ cfg.noise_std * noise", "+ 0.5 * cfg.noise_std * noise", "tests/workers/unlearning/test_unlearning_oracle.py::test_release_noise_has_exactly_the_configured_scale"),
 ("If-None-Match no * / W/", "service/model_registry/router.py", 'return "*" in tags or etag in tags or f"W/{etag}" in tags', "return etag in tags", "tests/service/model_registry/test_registry_versions.py::test_if_none_match_star_and_weak_tags_revalidate_manifest_and_weights"),
 ("If-None-Match no W/", "service/model_registry/router.py", 'return "*" in tags or etag in tags or f"W/{etag}" in tags', 'return "*" in tags or etag in tags', "tests/service/model_registry/test_registry_versions.py::test_if_none_match_star_and_weak_tags_revalidate_manifest_and_weights"),
 ("bound ignores the Gram sums' rounding", "workers/unlearning/methods/mixed_linear/method.py", 'certified = result.residual_norm + getattr(result, "residual_error", 0.0)', "certified = result.residual_norm", "tests/workers/unlearning/test_unlearning_downdate_bound.py::test_regression_keep_10_of_290_the_bound_covers_the_true_kl"),
 ("residual error drops the stored sums' error", "workers/unlearning/objective.py", "sums = (w2 * st.eG + st.eB) / st.n", "sums = 0.0", "tests/workers/unlearning/test_unlearning_downdate_bound.py::test_bound_covers_a_worst_placed_error_inside_the_kept_error_terms"),
 ("downdate accepts samples removed already", "workers/unlearning/methods/mixed_linear/method.py", "        if missing.numel():\n            raise InvalidDataError(", "        if False:\n            raise InvalidDataError(", "tests/workers/unlearning/test_unlearning_downdate_bound.py::test_removing_the_same_samples_twice_is_refused"),
 ("pipeline forget rebuilds the Gram", "workers/execution/run.py", 'ctx.cfg, ctx.progress, removed=ctx.data["forget"])', "ctx.cfg, ctx.progress)", "tests/workers/pipeline/test_pipeline_chained_downdate.py::test_ten_chained_forgets_downdate_the_kept_gram_and_stay_exact"),
 ("run <-> publish import cycle", "workers/execution/publish.py", "PUBLISHER = \"system:publish\"\n", "PUBLISHER = \"system:publish\"\n\n\ndef _lazy():\n    from workers.execution.run import run_job\n    return run_job\n", "tests/test_import_graph.py::test_no_import_cycles"),
]
only = sys.argv[1:]
for name, path, old, new, test in M:
    if only and not any(o in name for o in only):
        continue
    src = open(path).read()
    if src.count(old) != 1:
        print(f"SKIP {name}: pattern found {src.count(old)} times"); continue
    open(path, "w").write(src.replace(old, new))
    try:
        r = subprocess.run([PY, "-m", "pytest", test, "-x", "-q", "-p", "no:cacheprovider"], env=env, capture_output=True, text=True, timeout=600)
    finally:
        open(path, "w").write(src)
    print(("KILLED  " if r.returncode != 0 else "SURVIVED") + f"  {name}  ({r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ''})", flush=True)

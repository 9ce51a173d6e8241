import io, json
import numpy as np
from safetensors.numpy import save as st_save

SPEC = {"name": "digits", "architecture": "mlp", "input_shape": [4], "num_classes": 3}

def test_probe(client):
    h = client.auth("operator")
    assert client.post("/v1/models", json=SPEC, headers=h).status_code == 201
    rows = [{"subject_id": "a", "split": "user", "label": 10**30, "x": [0, 0, 0, 0]}]
    r = client.post("/v1/models/digits/samples", json={"samples": rows}, headers=h); print(1, r.status_code, r.text[:300])
    rows = [{"subject_id": "a", "split": "user", "label": 1, "x": [0, 0, 0, 10**30]}]
    r = client.post("/v1/models/digits/samples", json={"samples": rows}, headers=h); print(2, r.status_code, r.text[:300])
    rows = [{"subject_id": "a", "split": "user", "label": 1, "x": [0, 0, 0, 1e300]}]
    r = client.post("/v1/models/digits/samples", json={"samples": rows}, headers=h); print(3, r.status_code, r.text[:300])
    st = st_save({"x": np.zeros((0, 4), dtype=np.float32), "labels": np.zeros(0, dtype=np.int64)}, metadata={"subject_ids": "[]", "split": "[]"})
    r = client.post("/v1/models/digits/samples", content=st, headers={**h, "content-type": "application/vnd.safetensors"}); print(4, r.status_code, r.text[:300])
    r = client.get("/v1/models?cursor=zzz", headers=h); print(5, r.status_code, r.text[:300])
    r = client.get("/v1/models/digits/versions/latest?wait=nan", headers=h); print(6, r.status_code, r.text[:300])
    r = client.get("/v1/models/digits/versions/latest", headers=h); print(7, r.status_code, r.text[:300])
    r = client.get("/v1/models/digits/versions/abc", headers=h); print(8, r.status_code, r.text[:300])
    st = st_save({"x": np.zeros((2, 4), dtype=np.float32), "labels": np.zeros(2, dtype=np.int64)}, metadata={"subject_ids": '["a"]', "split": "user"})
    r = client.post("/v1/models/digits/samples", content=st, headers={**h, "content-type": "application/vnd.safetensors"}); print(9, r.status_code, r.text[:300])
    st = st_save({"x": np.zeros((2, 4), dtype=np.float32), "labels": np.zeros(2, dtype=np.int64)})
    r = client.post("/v1/models/digits/samples", content=st, headers={**h, "content-type": "application/vnd.safetensors"}); print(10, r.status_code, r.text[:300])
    buf = io.BytesIO(); np.savez(buf, x=np.zeros((2,4)), labels=np.array([0,1]), subject_ids=np.array([1,2]), split=np.array("user"))
    r = client.post("/v1/models/digits/samples", content=buf.getvalue(), headers={**h, "content-type": "application/x-npz"}); print(11, r.status_code, r.text[:300])
    buf = io.BytesIO(); np.savez(buf, x=np.zeros((2,4)), labels=np.array([0,1]), subject_ids=np.array(["a","b"]), split=np.array("user"))
    r = client.post("/v1/models/digits/samples?consent_renewed_at=notadate", content=buf.getvalue(), headers={**h, "content-type": "application/x-npz"}); print(12, r.status_code, r.text[:300])
    r = client.post("/v1/models/digits/samples", content=b"{}", headers={**h}); print(13, r.status_code, r.text[:300])
    r = client.post("/v1/models/digits/samples", content=b'{"samples": [{"subject_id": "a", "split": "user", "label": 1, "x": [0,0,0,Infinity]}]}', headers={**h, "content-type": "application/json"}); print(14, r.status_code, r.text[:300])
    r = client.post("/v1/models", json={**SPEC, "name": "x2", "method_config": {"l2": "nan"}}, headers=h); print(15, r.status_code, r.text[:300])
    r = client.post("/v1/models", json={**SPEC, "name": "x3", "input_shape": [True]}, headers=h); print(16, r.status_code, r.text[:300])
    r = client.post("/v1/models", content=json.dumps({**SPEC, "name": "x4", "method_config": {"l2": float("inf")}}), headers={**h, "content-type": "application/json"}); print(17, r.status_code, r.text[:300])
    r = client.post("/v1/models", content=json.dumps({**SPEC, "name": "x5", "architecture_config": {"a": float("nan")}}), headers={**h, "content-type": "application/json"}); print(17.5, r.status_code, r.text[:300])
    r = client.post("/v1/models/digits/aliases/production", json={"version": 10**20}, headers=h); print(18, r.status_code, r.text[:300])
    r = client.get("/v1/models/digits/versions/" + "9"*20, headers=h); print(19, r.status_code, r.text[:300])

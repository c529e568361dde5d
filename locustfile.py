"""Load test for pdserve with real images: single uploads, raw bodies, base64 JSON and batch requests,
spread over every ready model.

    locust -f locustfile.py --host http://127.0.0.1:8000 --headless -u 16 -r 4 --run-time 1m

Images come from PDSERVE_LOCUST_IMAGES (a folder of JPEG/PNG files; default: the ImageNet sample
beside this repository). PDSERVE_LOCUST_MODELS=a,b restricts the models (default: all ready ones).
"""

from __future__ import annotations

import base64
import os
import random
from pathlib import Path

from locust import HttpUser, between, task

IMAGE_DIR = Path(
    os.environ.get("PDSERVE_LOCUST_IMAGES", Path(__file__).parent.parent / "shared/data/imagenet-sample/images")
)
IMAGES = [p.read_bytes() for p in sorted(IMAGE_DIR.glob("*")) if p.suffix.lower() in {".jpg", ".jpeg", ".png"}][:64]
if not IMAGES:
    raise SystemExit(f"no images in {IMAGE_DIR}; set PDSERVE_LOCUST_IMAGES to a folder of JPEGs")


class PdserveUser(HttpUser):
    wait_time = between(0, 0.05)
    models: list[str]

    def on_start(self) -> None:
        wanted = [m for m in os.environ.get("PDSERVE_LOCUST_MODELS", "").split(",") if m]
        listing = self.client.get("/models", name="/models").json()["models"]
        ready = [m["name"] for m in listing if m["state"] in ("READY", "RECOVERING")]
        self.models = [m for m in ready if not wanted or m in wanted]
        if not self.models:
            raise RuntimeError(f"no ready model to test (ready: {ready}, wanted: {wanted})")

    def _url(self) -> str:
        return f"/models/{random.choice(self.models)}/predict"

    @task(6)
    def upload(self) -> None:
        files = {"file": ("photo.jpg", random.choice(IMAGES), "image/jpeg")}
        self.client.post(self._url(), files=files, name="predict multipart")

    @task(3)
    def raw_body(self) -> None:
        headers = {"Content-Type": "image/jpeg"}
        self.client.post(self._url(), data=random.choice(IMAGES), headers=headers, name="predict raw")

    @task(1)
    def base64_json(self) -> None:
        body = {"image": base64.b64encode(random.choice(IMAGES)).decode()}
        self.client.post(self._url(), json=body, name="predict base64")

    @task(1)
    def batch(self) -> None:
        files = [("file", (f"{i}.jpg", img, "image/jpeg")) for i, img in enumerate(random.sample(IMAGES, 4))]
        with self.client.post(self._url(), files=files, name="predict batch of 4", catch_response=True) as r:
            if r.status_code == 200 and len(r.json().get("results", [])) != 4:
                r.failure("expected 4 results")

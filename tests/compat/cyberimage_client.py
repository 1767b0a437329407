"""A client for the CyberImage app's REST API, written from its published
shapes (API.md of RamboRogers/cyberimage: `model_id` and a `settings`
object on submit, `/api/status/{id}` polled until `completed`, images
fetched by id, the gallery's `search`/`limit`/`has_more`, the queue's
totals). It knows nothing of CyberImage-in-Rust: it is what a user's
existing script looks like, and `test_cyberimage_rest.py` runs it against
our server unchanged.
"""

import time

import requests


class CyberImageError(Exception):
    def __init__(self, status, body):
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class CyberImageClient:
    def __init__(self, base_url, api_key=None, timeout=30):
        self.base = base_url.rstrip("/")
        self.http = requests.Session()
        if api_key:
            self.http.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout = timeout

    def _json(self, method, path, **kwargs):
        r = self.http.request(method, self.base + path, timeout=self.timeout, **kwargs)
        if not r.ok:
            try:
                body = r.json()
            except ValueError:
                body = r.text
            raise CyberImageError(r.status_code, body)
        return r.json()

    def health(self):
        return self._json("GET", "/health")

    def models(self):
        """{key: info} and the default key."""
        data = self._json("GET", "/api/models")
        return data["models"], data["default"]

    def generate(self, model_id, prompt, negative_prompt=None, **settings):
        body = {"model_id": model_id, "prompt": prompt, "settings": settings}
        if negative_prompt:
            body["negative_prompt"] = negative_prompt
        return self._json("POST", "/api/generate", json=body)

    def submit_raw(self, body):
        """A body exactly as given (for the error cases)."""
        return self._json("POST", "/api/generate", json=body)

    def status(self, job_id):
        return self._json("GET", f"/api/status/{job_id}")

    def wait(self, job_id, timeout=120, poll=0.2):
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = self.status(job_id)
            if status["status"] in ("completed", "failed"):
                return status
            time.sleep(poll)
        raise TimeoutError(f"job {job_id} did not finish")

    def image_bytes(self, image_id):
        r = self.http.get(f"{self.base}/api/get_image/{image_id}", timeout=self.timeout)
        if not r.ok:
            raise CyberImageError(r.status_code, r.text)
        return r.content

    def image_metadata(self, image_id):
        return self._json("GET", f"/api/image/{image_id}/metadata")

    def delete_image(self, image_id):
        return self._json("DELETE", f"/api/image/{image_id}")

    def gallery(self, page=1, limit=20, search=None, model=None):
        params = {"page": page, "limit": limit}
        if search:
            params["search"] = search
        if model:
            params["model"] = model
        return self._json("GET", "/api/gallery", params=params)

    def queue(self, detailed=False):
        return self._json("GET", "/api/queue", params={"detailed": "true"} if detailed else None)

    def reset_queue(self):
        return self._json("POST", "/api/reset_queue")

"""The CyberImage app's REST clients against our server: `cyberimage_client`
(written from the app's published API, not from ours) drives a real
`cyberimage serve` with the built-in tiny SD 1.5 model through submit,
status, image bytes and metadata, gallery search and paging, queue totals
and details, reset and delete; unknown fields get a 400 naming the field,
and `seed: -1` means a random seed.

usage: python tests/compat/test_cyberimage_rest.py path/to/cyberimage
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cyberimage_client import CyberImageClient, CyberImageError  # noqa: E402
from harness import check, finish, start_server  # noqa: E402

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/debug/cyberimage"
TINY = "tiny-sd15-random"


def rejected(call):
    """The HTTP status and error of a call that must fail."""
    try:
        call()
    except CyberImageError as e:
        return e.status, e.body
    return None, None


def main():
    data = tempfile.mkdtemp(prefix="cyberimage-compat-")
    proc, base = start_server(BINARY, data)
    try:
        run(CyberImageClient(base))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    finish()


def run(client):
    health = client.health()
    check("health answers healthy, with the device and queue counts",
          health["status"] == "healthy" and "device" in health and health["queue"]["pending"] == 0, health)
    models, default = client.models()
    check("models are keyed, with a default", TINY in models and default in models, list(models))

    job = client.generate(TINY, "a red fox in the snow", negative_prompt="blurry", num_images=2,
                          num_inference_steps=2, guidance_scale=7.0, width=64, height=64, seed=-1)
    check("submit answers job_id, status, num_images and message",
          job["status"] == "pending" and job["num_images"] == 2 and job["message"], job)
    done = client.wait(job["job_id"])
    check("the job completes", done["status"] == "completed", done)
    check("status has the app's fields",
          all(k in done for k in ("id", "model_id", "prompt", "negative_prompt", "settings", "status", "message",
                                  "progress", "created_at", "started_at", "completed_at", "images")), sorted(done))
    check("status names the model it ran", done["model_id"] == TINY and done["negative_prompt"] == "blurry", done)
    seed = done["settings"]["seed"]
    check("seed -1 became a real random seed", isinstance(seed, int) and seed >= 0, done["settings"])
    images = done["images"]
    check("both images, numbered", [i.get("image_number") for i in images] == [1, 2]
          and all(i.get("total_images") == 2 for i in images), images)
    png = client.image_bytes(images[0]["id"])
    check("an image's bytes are a PNG", png[:8] == b"\x89PNG\r\n\x1a\n", png[:8])
    meta = client.image_metadata(images[0]["id"])
    check("an image's metadata says its prompt and model",
          meta["metadata"]["prompt"] == "a red fox in the snow" and meta["metadata"]["model_id"] == TINY, meta)

    other = client.wait(client.generate(TINY, "a quiet lake at dawn", num_inference_steps=2, width=64, height=64,
                                        seed=3)["job_id"])
    check("a second job completes", other["status"] == "completed", other)
    found = client.gallery(search="fox snow")
    check("gallery search is AND over keywords", found["total"] == 2
          and all("fox" in i["metadata"]["prompt"] for i in found["images"]), found)
    none = client.gallery(search="fox lake")
    check("every keyword must match", none["total"] == 0, none)
    by_model = client.gallery(search=TINY)
    check("keywords match the model too", by_model["total"] == 3, by_model.get("total"))
    page = client.gallery(limit=2)
    check("limit pages the gallery and says there is more", len(page["images"]) == 2 and page["has_more"], page)
    last = client.gallery(page=2, limit=2)
    check("the last page has no more", len(last["images"]) == 1 and not last["has_more"], last)

    queue = client.queue()
    check("queue totals", queue["completed"] == 2 and queue["failed"] == 0 and queue["total"] == 2
          and queue["queue_size"] == 0, queue)
    detailed = client.queue(detailed=True)
    check("queue details: the last 24 hours by model, run time, failure rate",
          detailed["recent_24h"]["completed"] == 2 and detailed["models"][TINY]["total"] == 2
          and detailed["avg_processing_time_seconds"] >= 0 and detailed["failure_rate"] == 0, detailed)
    reset = client.reset_queue()
    check("reset_queue answers success and a count", reset["status"] == "success" and reset["reset_count"] == 0, reset)

    deleted = client.delete_image(images[1]["id"])
    check("delete answers", bool(deleted), deleted)
    status, _ = rejected(lambda: client.image_metadata(images[1]["id"]))
    check("a deleted image is gone", status == 404, status)

    status, body = rejected(lambda: client.submit_raw({"model_id": TINY, "prompt": "x", "sampler": "euler"}))
    check("an unknown field is a 400 naming it",
          status == 400 and "sampler" in body["error"]["message"], (status, body))
    status, body = rejected(lambda: client.submit_raw({"model_id": TINY, "prompt": "x",
                                                       "settings": {"num_inference_steps": 2, "cfg": 5}}))
    check("an unknown setting is a 400 naming it", status == 400 and "cfg" in body["error"]["message"], (status, body))
    status, body = rejected(lambda: client.submit_raw({"model_id": "no-such-model", "prompt": "x"}))
    check("an unknown model_id is a 4xx, not the default model", status is not None and 400 <= status < 500
          and body["error"]["code"], (status, body))
    after = client.queue()
    check("refused submissions queued nothing", after["total"] == 2, after)


main()

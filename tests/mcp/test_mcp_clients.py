"""Standard MCP, checked with the official MCP Python SDK (`mcp` on PyPI)
against the real binary and the real engine (the built-in random-weight
tiny SD 1.5 model):

- Streamable HTTP at /mcp and /api/mcp, in the handshake era (`legacy`)
  and the stateless 2026-07-28 era (`auto` negotiates it via server/discover);
- stdio through `cyberimage mcp`, in both eras, in-process and as a proxy
  to the HTTP server (`cyberimage mcp --url`).

Per transport: connect, list tools, generate an image with a progress
token (notifications arrive, progress rises to the total), read the image
resource, cancel a running generation by abandoning the call (the job ends
cancelled), the explicit submit/cancel tools, bad arguments as tool errors,
an unknown tool as a protocol error, models, gallery search, prompts.
Raw HTTP checks cover what the SDK never does wrong on purpose: Origin
refusal, session errors, modern header mismatches, and the seed's methods
still answered at /api/mcp.

usage: python tests/mcp/test_mcp_clients.py path/to/cyberimage
Prints "N passed, M failed"; exits non-zero on any failure.
"""

import asyncio
import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import httpx2 as httpx  # the HTTP client the MCP SDK itself depends on
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError
from mcp.types import ElicitResult, PromptReference, ResourceTemplateReference
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from harness import chat_stand_in, check, finish, isolated_env, start_server, tls_reverse_proxy  # noqa: E402

BINARY = sys.argv[1] if len(sys.argv) > 1 else "target/debug/cyberimage"
TINY = "tiny-sd15-random"




def png_size(data: bytes):
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return Image.open(io.BytesIO(data)).size


async def scenario(label, target, mode, http_base=None):
    progress = []

    async def on_progress(value, total, message):
        progress.append((value, total, message))

    async with Client(target, mode=mode) as client:
        expected = "2026-07-28" if mode == "auto" else "2025-11-25"
        check(f"{label}: negotiated {expected}", client.protocol_version == expected, client.protocol_version)
        check(f"{label}: server names itself", client.server_info and client.server_info.name == "cyberimage")

        tools = {t.name: t for t in (await client.list_tools()).tools}
        wanted = {"generate_image", "edit_image", "upscale_image", "submit_generation", "get_generation", "cancel_generation", "list_models",
                  "search_gallery", "enhance_prompt", "retry_generation", "retry_failed_generations",
                  "delete_generation", "clear_queue", "queue_stats"}
        check(f"{label}: tools listed", wanted <= set(tools), sorted(tools))
        with_output = wanted - {"retry_generation", "retry_failed_generations", "delete_generation", "clear_queue",
                                "queue_stats"}
        check(f"{label}: schemas present", all(tools[n].input_schema for n in wanted)
              and all(tools[n].output_schema for n in with_output) and tools["generate_image"].input_schema["required"] == ["prompt"])

        # Prompt enrichment through the stand-in chat server (over TLS with
        # the test CA for the stdio servers, plain HTTP for the others).
        styles = tools["enhance_prompt"].input_schema["properties"]["style"]["enum"]
        check(f"{label}: enhance_prompt lists the styles", {"cyberpunk", "anime", "fantasy"} <= set(styles), styles)
        enhanced = await client.call_tool("enhance_prompt", {"prompt": f"a fox {label}", "style": "fantasy", "model": TINY})
        out = enhanced.structured_content or {}
        check(f"{label}: enhance_prompt rewrites the prompt in the style",
              not enhanced.is_error and enhanced.content[0].text == f"a fox {label}, enchanted glow"
              and out.get("style") == "fantasy" and out.get("original") == f"a fox {label}", enhanced.content)
        # completion/complete: the prompt's model and style, the image template's id.
        done = await client.complete(PromptReference(type="ref/prompt", name="make_image"), {"name": "model", "value": "tiny-sd"})
        check(f"{label}: completion lists model keys by prefix",
              TINY in done.completion.values and all(v.startswith("tiny-sd") for v in done.completion.values), done.completion)
        styles_done = await client.complete(PromptReference(type="ref/prompt", name="make_image"), {"name": "style", "value": "an"})
        check(f"{label}: completion lists styles", styles_done.completion.values == ["anime"], styles_done.completion)

        # Queue administration tools (no keys here: every scope).
        stats = await client.call_tool("queue_stats", {})
        check(f"{label}: queue_stats reports the queue",
              not stats.is_error and "recent_24h" in (stats.structured_content or {}), stats.content)
        missing = await client.call_tool("retry_generation", {"job_id": "00000000-0000-4000-8000-000000000000"})
        check(f"{label}: retrying a job that does not exist is a tool error",
              missing.is_error and "not found" in missing.content[0].text, missing.content)
        bad_style = await client.call_tool("enhance_prompt", {"prompt": "a fox", "style": "vaporwave"})
        check(f"{label}: an unknown style is a tool error naming the styles",
              bad_style.is_error and "unknown style" in bad_style.content[0].text and "anime" in bad_style.content[0].text,
              bad_style.content)
        failed = await client.call_tool("enhance_prompt", {"prompt": "please fail"})
        check(f"{label}: a failing chat endpoint is a tool error with its reason",
              failed.is_error and "stand-in model crashed" in failed.content[0].text, failed.content)

        prompt = f"a lighthouse at dusk {label}"
        result = await client.call_tool(
            "generate_image",
            {"prompt": prompt, "model": TINY, "seed": 42, "steps": 4},
            progress_callback=on_progress,
        )
        check(f"{label}: generate_image succeeded", not result.is_error, result.content)
        values = [p[0] for p in progress]
        check(f"{label}: progress notifications arrived", len(values) >= 4, progress)
        check(f"{label}: progress rises strictly to the total",
              values == sorted(set(values)) and values and values[-1] == progress[-1][1] == 4, progress)
        images = [b for b in result.content if b.type == "image"]
        links = [b for b in result.content if b.type == "resource_link"]
        check(f"{label}: inline PNG is a real 64x64 image",
              len(images) == 1 and images[0].mime_type == "image/png" and png_size(base64.b64decode(images[0].data)) == (64, 64))
        structured = result.structured_content or {}
        check(f"{label}: structured job result", structured.get("status") == "completed" and len(structured.get("images", [])) == 1, structured)
        image = structured["images"][0]
        check(f"{label}: seed reported", image["seed"] == 42, image)
        check(f"{label}: resource link", len(links) == 1 and str(links[0].uri) == image["uri"], links)

        # The loras argument: the same seed with the tiny LoRA from loras/
        # draws another picture; an unknown one is a tool error naming it.
        # Not naming the label: the gallery search below looks for it.
        lora_prompt = "a fox with and without a lora"
        plain = await client.call_tool("generate_image", {"prompt": lora_prompt, "model": TINY, "seed": 42, "steps": 4})
        with_lora = await client.call_tool("generate_image", {"prompt": lora_prompt, "model": TINY, "seed": 42, "steps": 4,
                                                              "loras": [{"name": "tiny-kohya", "weight": 0.8}]})
        plain_images = [b for b in plain.content if b.type == "image"]
        lora_images = [b for b in with_lora.content if b.type == "image"]
        check(f"{label}: generate_image with a LoRA draws another picture",
              not with_lora.is_error and len(lora_images) == 1 and len(plain_images) == 1
              and lora_images[0].data != plain_images[0].data, with_lora.content[:1])
        no_lora = await client.call_tool("generate_image", {"prompt": lora_prompt, "model": TINY,
                                                            "loras": [{"name": "no-such-lora"}]})
        check(f"{label}: an unknown LoRA is a tool error naming it",
              no_lora.is_error and "no-such-lora" in no_lora.content[0].text, no_lora.content)
        # The hires argument: the picture comes back at twice the size;
        # a scale out of range is a tool error naming the field.
        hires = await client.call_tool("generate_image", {"prompt": lora_prompt, "model": TINY, "seed": 42, "steps": 4,
                                                          "hires": {"scale": 2, "strength": 0.5}})
        hires_images = [b for b in hires.content if b.type == "image"]
        check(f"{label}: generate_image with hires makes the picture twice as large",
              not hires.is_error and len(hires_images) == 1
              and png_size(base64.b64decode(hires_images[0].data)) == (128, 128), hires.content[:1])
        bad_hires = await client.call_tool("generate_image", {"prompt": lora_prompt, "model": TINY, "hires": {"scale": 9}})
        check(f"{label}: a bad hires scale is a tool error naming it",
              bad_hires.is_error and "hires.scale" in bad_hires.content[0].text, bad_hires.content)
        ids = await client.complete(ResourceTemplateReference(type="ref/resource", uri="cyberimage://image/{id}"),
                                    {"name": "id", "value": image["id"][:10]})
        check(f"{label}: completion offers image ids", image["id"] in ids.completion.values, ids.completion)

        read = await client.read_resource(image["uri"])
        blob = base64.b64decode(read.contents[0].blob)
        check(f"{label}: resource read returns the PNG", read.contents[0].mime_type == "image/png" and png_size(blob) == (64, 64))
        if http_base:
            served = httpx.get(image["url"]).content
            check(f"{label}: resource equals the served file", served == blob and image["url"].startswith(http_base))
        thumb = await client.read_resource(image["uri"] + "/thumbnail")
        check(f"{label}: thumbnail resource", thumb.contents[0].mime_type == "image/png")

        # Image-to-image from the image just made, named by its resource URI.
        edited = await client.call_tool("edit_image", {"prompt": "the same tower at noon", "image": image["uri"],
                                                        "strength": 0.5, "model": TINY, "steps": 4, "seed": 7})
        edit = edited.structured_content or {}
        check(f"{label}: edit_image from a resource URI runs the kept steps",
              not edited.is_error and edit.get("status") == "completed" and edit["progress"]["total_steps"] == 2
              and [i["width"] for i in edit["images"]] == [64], edited.content)
        masked = await client.call_tool("edit_image", {"prompt": "only the bright parts", "image": image["uri"],
                                                        "mask": image["uri"], "strength": 1.0, "model": TINY,
                                                        "steps": 2, "seed": 7})
        check(f"{label}: edit_image with a mask (inpainting) completes",
              not masked.is_error and (masked.structured_content or {}).get("status") == "completed", masked.content)
        # Upscaling the image: the built-in trained upscaler (an RDN, x4)
        # at x2, then the tiny random Compact network from upscalers/ in
        # 32-pixel tiles, with a progress notification per tile.
        upscaled = await client.call_tool("upscale_image", {"image": image["uri"], "scale": 2})
        up = upscaled.structured_content or {}
        check(f"{label}: upscale_image with the built-in upscaler",
              not upscaled.is_error and up.get("status") == "completed" and up.get("model") == "upscalerjs-esrgan-medium-x4"
              and [(i["width"], i["height"]) for i in up["images"]] == [(128, 128)]
              and upscaled.content[0].text.startswith("Upscaled 64×64 to 128×128"), upscaled.content)
        tiles = []

        async def on_tile(value, total, message):
            tiles.append((value, total))

        compact = await client.call_tool("upscale_image", {"image": image["id"], "upscaler": "tiny-compact-x4", "tile": 32},
                                         progress_callback=on_tile)
        up = compact.structured_content or {}
        check(f"{label}: upscale_image with an upscaler from upscalers/, tiles reported",
              not compact.is_error and [(i["width"], i["height"]) for i in up.get("images", [])] == [(256, 256)]
              and (4.0, 4.0) in tiles and up["progress"]["total_steps"] == 4, (compact.content, tiles))
        bad_upscale = await client.call_tool("upscale_image", {"image": image["uri"], "upscaler": "no-such-upscaler"})
        check(f"{label}: an unknown upscaler is a tool error naming the ones there are",
              bad_upscale.is_error and "tiny-compact-x4" in bad_upscale.content[0].text, bad_upscale.content)
        bad_edit = await client.call_tool("edit_image", {"prompt": "x", "image": "cyberimage://image/img_" + "0" * 32})
        check(f"{label}: edit_image of a missing image is a tool error",
              bad_edit.is_error and "no gallery image" in bad_edit.content[0].text, bad_edit.content)

        # Abandoning a call cancels it: notifications/cancelled (handshake
        # era) or closing the response stream (2026-07-28 over HTTP).
        long_progress = []
        first_step = asyncio.Event()

        async def on_long_progress(value, total, message):
            long_progress.append(message)
            if value >= 1:
                first_step.set()

        call = asyncio.create_task(client.call_tool(
            "generate_image",
            {"prompt": "a very long generation", "model": TINY, "steps": 150, "width": 256, "height": 256},
            progress_callback=on_long_progress,
        ))
        await asyncio.wait_for(first_step.wait(), 120)
        call.cancel()
        try:
            await call
        except (asyncio.CancelledError, MCPError):
            pass
        job_id = re.search(r"\(([0-9a-f-]{36})\)", long_progress[-1]).group(1)
        status = None
        for _ in range(120):
            got = await client.call_tool("get_generation", {"job_id": job_id})
            status = got.structured_content["status"]
            if status in ("cancelled", "completed", "failed"):
                break
            await asyncio.sleep(0.25)
        check(f"{label}: abandoned generation is cancelled", status == "cancelled", status)

        submitted = await client.call_tool("submit_generation", {"prompt": "queued then cancelled", "model": TINY, "steps": 150, "width": 256, "height": 256})
        sid = submitted.structured_content["job_id"]
        check(f"{label}: submit_generation returns at once", submitted.structured_content["status"] in ("pending", "processing"))
        cancelled = await client.call_tool("cancel_generation", {"job_id": sid})
        check(f"{label}: cancel_generation", not cancelled.is_error and cancelled.structured_content["status"] == "cancelled", cancelled.content)
        again = await client.call_tool("cancel_generation", {"job_id": sid})
        check(f"{label}: cancelling twice is a tool error", again.is_error and "already cancelled" in again.content[0].text, again.content)

        for args, needle in [
            ({"prompt": "x", "width": -5}, "width"),
            ({"prompt": "x", "steps": "many"}, "steps must be an integer"),
            ({"prompt": ""}, "prompt"),
            ({"prompt": "x", "model": "no-such-model"}, "no-such-model"),
            ({"prompt": "x", "colour": "red"}, "unknown argument"),
        ]:
            bad = await client.call_tool("generate_image", args)
            check(f"{label}: bad arguments {sorted(args)} are a tool error",
                  bad.is_error and needle in bad.content[0].text, bad.content)
        missing = await client.call_tool("get_generation", {"job_id": "job_nope"})
        check(f"{label}: unknown job is a tool error", missing.is_error)
        try:
            await client.call_tool("no_such_tool", {})
            check(f"{label}: unknown tool is a protocol error", False, "no error raised")
        except MCPError as e:
            check(f"{label}: unknown tool is a protocol error", e.error.code == -32602, e.error)
        try:
            await client.read_resource("cyberimage://image/img_" + "0" * 32)
            check(f"{label}: missing resource errors", False, "no error raised")
        except MCPError as e:
            # -32002 in the handshake era; 2026-07-28 (SEP-2164) uses -32602.
            want = -32602 if mode == "auto" else -32002
            check(f"{label}: missing resource errors", e.error.code == want, e.error)

        models = await client.call_tool("list_models", {})
        keys = [m["key"] for m in models.structured_content["models"]]
        check(f"{label}: list_models", TINY in keys and models.structured_content["default"] in keys)
        # Its upscaled copies keep its prompt: the model narrows to the original.
        found = await client.call_tool("search_gallery", {"query": label, "model": TINY})
        check(f"{label}: search_gallery finds the image",
              [i["id"] for i in found.structured_content["images"]] == [image["id"]], found.structured_content)
        copies = await client.call_tool("search_gallery", {"query": label})
        check(f"{label}: search_gallery finds its upscaled copies by the same prompt",
              sorted(i["model"] for i in copies.structured_content["images"])
              == sorted([TINY, "tiny-compact-x4", "upscalerjs-esrgan-medium-x4"]), copies.structured_content)
        listed = await client.list_resources()
        check(f"{label}: image listed as a resource", image["uri"] in [str(r.uri) for r in listed.resources])
        prompts = await client.list_prompts()
        got = await client.get_prompt("make_image", {"subject": "a cat", "style": "ukiyo-e"})
        check(f"{label}: prompt template", [p.name for p in prompts.prompts] == ["make_image"] and "a cat in the style of ukiyo-e" in got.messages[0].content.text)


async def prompt_elicitation_check(label, target, mode):
    """generate_image without a prompt asks the user for one: by
    elicitation/create on the call's stream in the handshake era, by an
    input-required result in 2026-07-28 (the SDK runs that loop)."""
    asked = []

    async def on_elicit(context, params):
        asked.append(params.message)
        return ElicitResult(action="accept", content={"prompt": "a fox the user typed"})

    async with Client(target, mode=mode, elicitation_callback=on_elicit) as client:
        result = await client.call_tool("generate_image", {"model": TINY, "steps": 2, "seed": 4})
        structured = result.structured_content or {}
        check(f"{label}: a generation without a prompt asks the user for one, and runs with it",
              not result.is_error and len(asked) == 1 and "prompt" in asked[0]
              and structured.get("prompt") == "a fox the user typed", (asked, result.content[:1]))


async def subscription_check(label, target):
    """A subscribed image's deletion reaches the SDK client as
    notifications/resources/updated: over HTTP on the session's GET
    stream, on stdio on the connection itself."""
    heard = []

    async def on_message(message):
        root = getattr(message, "root", message)
        if getattr(root, "method", None) == "notifications/resources/updated":
            heard.append(str(root.params.uri))

    async with Client(target, mode="legacy", message_handler=on_message) as client:
        made = await client.call_tool("generate_image", {"prompt": "a watched fox", "model": TINY, "steps": 2})
        structured = made.structured_content or {}
        image = structured["images"][0]
        await client.subscribe_resource(image["uri"])
        deleted = await client.call_tool("delete_generation", {"job_id": structured["job_id"], "delete_images": True})
        for _ in range(100):
            if heard:
                break
            await asyncio.sleep(0.1)
        check(f"{label}: deleting a subscribed image is notified to the subscriber",
              not deleted.is_error and heard == [image["uri"]], (heard, deleted.content[:1]))


def raw_http_checks(base):
    h = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}}
    r = httpx.post(f"{base}/mcp", json=init, headers={**h, "Origin": "https://evil.example"})
    check("http: foreign Origin refused with 403", r.status_code == 403, r.status_code)
    r = httpx.post(f"{base}/mcp", json=init, headers={**h, "Origin": "http://localhost:5173"})
    check("http: loopback Origin allowed", r.status_code == 200 and r.json()["result"]["protocolVersion"] == "2025-06-18")
    session = r.headers.get("mcp-session-id", "")
    check("http: session id issued", len(session) >= 16)
    tools = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    r = httpx.post(f"{base}/mcp", json=tools, headers=h)
    check("http: request without session is 400", r.status_code == 400)
    r = httpx.post(f"{base}/mcp", json=tools, headers={**h, "Mcp-Session-Id": "nope"})
    check("http: unknown session is 404", r.status_code == 404)
    r = httpx.post(f"{base}/mcp", json=tools, headers={**h, "Mcp-Session-Id": session})
    check("http: tools/list in session", r.status_code == 200 and len(r.json()["result"]["tools"]) == 14)
    r = httpx.post(f"{base}/mcp", content=b"{not json", headers=h)
    check("http: parse error -32700", r.status_code == 400 and r.json()["error"]["code"] == -32700)
    r = httpx.post(f"{base}/mcp", json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers={**h, "Mcp-Session-Id": session})
    check("http: notification accepted with 202", r.status_code == 202)
    r = httpx.delete(f"{base}/mcp", headers={"Mcp-Session-Id": session})
    check("http: DELETE ends the session", r.status_code == 204)
    r = httpx.post(f"{base}/mcp", json=tools, headers={**h, "Mcp-Session-Id": session})
    check("http: ended session is 404", r.status_code == 404)
    r = httpx.get(f"{base}/mcp", headers={"Accept": "text/event-stream"})
    check("http: the GET stream (subscriptions) needs a session (400)", r.status_code == 400)
    r = httpx.get(f"{base}/mcp", headers={"Accept": "text/event-stream", "Mcp-Session-Id": session})
    check("http: an ended session has no GET stream (404)", r.status_code == 404)
    r = httpx.get(f"{base}/mcp", headers={"Accept": "application/json"})
    check("http: GET without text/event-stream is 405", r.status_code == 405)

    meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
    modern = {"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {"_meta": meta}}
    mh = {**h, "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/list"}
    r = httpx.post(f"{base}/mcp", json=modern, headers=mh)
    check("http: modern request without session", r.status_code == 200 and r.json()["result"]["resultType"] == "complete")
    r = httpx.post(f"{base}/mcp", json=modern, headers={**mh, "Mcp-Method": "tools/call"})
    check("http: modern header mismatch is 400/-32020", r.status_code == 400 and r.json()["error"]["code"] == -32020)
    old = {**modern, "params": {"_meta": {**meta, "io.modelcontextprotocol/protocolVersion": "2099-01-01"}}}
    r = httpx.post(f"{base}/mcp", json=old, headers={**mh, "MCP-Protocol-Version": "2099-01-01"})
    check("http: unsupported version is 400/-32022 naming ours",
          r.status_code == 400 and r.json()["error"]["code"] == -32022 and "2026-07-28" in r.json()["error"]["data"]["supported"])
    r = httpx.post(f"{base}/mcp", json={"jsonrpc": "2.0", "id": 4, "method": "nope/nope", "params": {"_meta": meta}},
                   headers={**mh, "Mcp-Method": "nope/nope"})
    check("http: modern unknown method is 404/-32601", r.status_code == 404 and r.json()["error"]["code"] == -32601)
    r = httpx.post(f"{base}/mcp", json={"jsonrpc": "2.0", "id": 5, "method": "ping", "params": {"_meta": meta}},
                   headers={**mh, "Mcp-Method": "ping"})
    check("http: methods 2026-07-28 removed (ping) are 404/-32601 there", r.status_code == 404 and r.json()["error"]["code"] == -32601)
    # Headers are compared with the body before the version is judged.
    r = httpx.post(f"{base}/mcp", json=old, headers={**mh, "MCP-Protocol-Version": "2026-07-28"})
    check("http: a header/body version mismatch is -32020 even for a version we lack",
          r.status_code == 400 and r.json()["error"]["code"] == -32020, r.text)

    seed = httpx.post(f"{base}/api/mcp", json={"jsonrpc": "2.0", "id": 5, "method": "context.image_generation.models", "params": {}})
    check("http: the seed's methods still answer at /api/mcp", seed.status_code == 200 and "models" in seed.json()["result"])
    r = httpx.post(f"{base}/api/mcp", json={"jsonrpc": "2.0", "id": 6, "method": "context.image_generation.models"},
                   headers={"Origin": "https://evil.example"})
    check("http: /api/mcp refuses a foreign Origin", r.status_code == 403)


def untrusted_proxy_check(https_base, tls_dir):
    """Without the CA, the proxy answers the request with an error that
    says the certificate is not trusted and how to trust a CA."""
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}}
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSL_CERT")}
    env.update(RUST_LOG="warn", SSL_CERT_FILE=str(tls_dir / "server.pem"), SSL_CERT_DIR=str(tls_dir / "no-cas"))
    out = subprocess.run([BINARY, "mcp", "--url", https_base], input=json.dumps(init) + "\n", capture_output=True,
                         text=True, env=env, timeout=60)
    answers = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    message = answers[0]["error"]["message"] if answers and "error" in answers[0] else ""
    check("proxy: an untrusted certificate is an error saying so and how to trust a CA",
          "not trusted" in message and "SSL_CERT_FILE" in message, (out.stdout, out.stderr[-500:]))


def untrusted_chat_check(tls_chat_base, tls_dir):
    """The same TLS chat stand-in, from a server that does not trust its
    CA: enrichment is refused (503) naming the certificate, never sent in
    the clear or with checks off."""
    with tempfile.TemporaryDirectory() as data:
        env = isolated_env(data, CYBERIMAGE_ENRICH__ENDPOINT=tls_chat_base, CYBERIMAGE_ENRICH__MODEL="stand-in-chat",
                           SSL_CERT_FILE=str(tls_dir / "server.pem"), SSL_CERT_DIR=str(tls_dir / "no-cas"))
        proc, base = start_server(BINARY, data, env=env)
        try:
            r = httpx.post(f"{base}/api/enrich", json={"prompt": "a fox"}, timeout=30)
            error = r.json().get("error", {})
            check("enrichment refuses a chat endpoint whose certificate it does not trust",
                  r.status_code == 503 and error.get("code") == "enrich_unavailable"
                  and "certificate" in error.get("message", "").lower(), r.text[:400])
        finally:
            proc.terminate()
            proc.wait(timeout=30)


UPSCALER = Path(__file__).resolve().parents[2] / "fixtures" / "tiny" / "upscalers" / "tiny-compact-x4.safetensors"


async def main():
    with tempfile.TemporaryDirectory() as http_data, tempfile.TemporaryDirectory() as stdio_data:
        # The tiny SD 1.5 LoRA in both servers' loras/ folders.
        lora = Path(__file__).resolve().parents[2] / "fixtures" / "tiny" / "tiny-sd15" / "loras" / "tiny-kohya.safetensors"
        for data in (http_data, stdio_data):
            (Path(data) / "loras").mkdir()
            shutil.copy(lora, Path(data) / "loras" / "tiny-kohya.safetensors")
            (Path(data) / "upscalers").mkdir()
            shutil.copy(UPSCALER, Path(data) / "upscalers" / "tiny-compact-x4.safetensors")
        chat, chat_base, _, _ = chat_stand_in()
        enrich = {"CYBERIMAGE_ENRICH__ENDPOINT": chat_base, "CYBERIMAGE_ENRICH__MODEL": "stand-in-chat"}
        proc, base = start_server(BINARY, http_data, env=isolated_env(http_data, **enrich))
        tls_dir = Path(http_data) / "tls"
        tls_dir.mkdir()
        (tls_dir / "no-cas").mkdir()
        tls, https_base, ca = tls_reverse_proxy(base, tls_dir)
        trusting = {"RUST_LOG": "warn", "SSL_CERT_FILE": str(ca), "SSL_CERT_DIR": str(tls_dir / "no-cas")}
        (tls_dir / "chat").mkdir()
        tls_chat, tls_chat_base, chat_ca, _ = chat_stand_in(tls_dir / "chat")
        # The stdio servers enrich over real TLS, trusting the chat CA.
        stdio_env = {"RUST_LOG": "warn", "CYBERIMAGE_ENRICH__ENDPOINT": tls_chat_base,
                     "CYBERIMAGE_ENRICH__MODEL": "stand-in-chat", "SSL_CERT_FILE": str(chat_ca),
                     "SSL_CERT_DIR": str(tls_dir / "no-cas")}
        try:
            runs = [
                ("http-legacy", f"{base}/mcp", "legacy", base),
                ("http-modern", f"{base}/mcp", "auto", base),
                ("api-mcp-legacy", f"{base}/api/mcp", "legacy", base),
                ("stdio-legacy", StdioServerParameters(command=BINARY, args=["mcp", "--data-dir", stdio_data], env=stdio_env), "legacy", None),
                ("stdio-modern", StdioServerParameters(command=BINARY, args=["mcp", "--data-dir", stdio_data], env=stdio_env), "auto", None),
                ("proxy-legacy", StdioServerParameters(command=BINARY, args=["mcp", "--url", base], env={"RUST_LOG": "warn"}), "legacy", base),
                ("proxy-modern", StdioServerParameters(command=BINARY, args=["mcp", "--url", base], env={"RUST_LOG": "warn"}), "auto", base),
                # The proxy over real TLS, trusting the test CA through SSL_CERT_FILE.
                ("proxy-https", StdioServerParameters(command=BINARY, args=["mcp", "--url", https_base], env=trusting), "legacy", base),
            ]
            for label, target, mode, http_base in runs:
                started = time.time()
                try:
                    await scenario(label, target, mode, http_base)
                except Exception:
                    traceback.print_exc()
                    check(f"{label}: scenario ran to the end", False)
                print(f"-- {label} took {time.time() - started:.1f} s")
            for label, target, mode, _ in runs[:2] + runs[3:5]:
                try:
                    await prompt_elicitation_check(label, target, mode)
                except Exception:
                    traceback.print_exc()
                    check(f"{label}: the prompt elicitation check ran to the end", False)
            for label, target, _, _ in [runs[0], runs[3]]:
                try:
                    await subscription_check(label, target)
                except Exception:
                    traceback.print_exc()
                    check(f"{label}: the subscription check ran to the end", False)
            raw_http_checks(base)
            untrusted_proxy_check(https_base, tls_dir)
            untrusted_chat_check(tls_chat_base, tls_dir)
            tls.shutdown()
            tls_chat.shutdown()
            chat.shutdown()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    finish()


asyncio.run(main())

//! MCP's tasks extension (2026-07-28, `io.modelcontextprotocol/tasks`) on
//! the real tools, over Streamable HTTP with a real server and SQLite file;
//! the engine is the testkit's scripted double (a STAND-IN, 20 ms a step,
//! so a job is seen working; the conformance suite scores the protocol on
//! its fixtures in `tests/mcp/conformance`). Checked: `generate_image`
//! from a client that declares the extension answers at once with a task
//! whose id is the job's; `tasks/get` shows the step while it works and
//! inlines the images once done; a task outlives its call (a second
//! client reads it); a failed generation is `completed` with `isError`;
//! `tasks/cancel` cancels the job; without the extension the call waits
//! as before and the task methods are -32021; an unknown task is -32602.
//! Input-required results: `generate_image` without a prompt asks a
//! client that declared elicitation for one, and runs with the answer.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::*;

const TASKS: &str = "io.modelcontextprotocol/tasks";

async fn call(s: &Server, method: &str, name: &str, params: Value, tasks: bool) -> Value {
    let caps = if tasks {
        json!({"extensions": {TASKS: {}}})
    } else {
        json!({})
    };
    call_with(s, method, name, params, caps).await
}

async fn call_with(s: &Server, method: &str, name: &str, mut params: Value, caps: Value) -> Value {
    params["_meta"] = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                             "io.modelcontextprotocol/clientCapabilities": caps});
    let mut req = s
        .http
        .post(format!("{}/mcp", s.base))
        .header("accept", "application/json")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method);
    if !name.is_empty() {
        req = req.header("mcp-name", name);
    }
    req.json(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn generate(s: &Server, prompt: &str, steps: u32, tasks: bool) -> Value {
    call(
        s,
        "tools/call",
        "generate_image",
        json!({"name": "generate_image", "arguments": {
            "prompt": prompt, "model": "tiny", "steps": steps, "seed": 3}}),
        tasks,
    )
    .await
}

async fn get(s: &Server, id: &str) -> Value {
    call(s, "tasks/get", id, json!({"taskId": id}), true).await
}

async fn until_terminal(s: &Server, id: &str) -> Value {
    for _ in 0..600 {
        let v = get(s, id).await;
        if v["result"]["status"] != "working" {
            return v["result"].clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("task {id} did not finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_image_answers_with_a_task_that_tasks_get_follows_to_its_images() {
    let s = start(10, Some(Duration::from_millis(20))).await;
    let tools = call(&s, "tools/list", "", json!({}), true).await;
    let generate_tool = tools["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "generate_image")
        .unwrap()
        .clone();
    assert_eq!(generate_tool["execution"]["taskSupport"], "optional");

    let created = generate(&s, "a lighthouse as a task", 20, true).await;
    let task = &created["result"];
    assert_eq!(task["resultType"], "task", "{created}");
    let id = task["taskId"].as_str().unwrap().to_owned();
    assert_eq!(task["status"], "working");
    assert_eq!(task["pollIntervalMs"], 1000);
    assert!(task.get("content").is_none() && task.get("result").is_none());
    // The task is the job: REST sees it too.
    let job: Value = s
        .get(&format!("/api/status/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(job["prompt"], "a lighthouse as a task");

    let mut saw_step = false;
    let done = loop {
        let v = get(&s, &id).await["result"].clone();
        assert_eq!(v["resultType"], "complete", "{v}");
        if v["status"] != "working" {
            break v;
        }
        assert!(v.get("result").is_none(), "no result while working: {v}");
        saw_step |= v["statusMessage"]
            .as_str()
            .is_some_and(|m| m.starts_with("step "));
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(saw_step, "statusMessage showed a step while it worked");
    assert_eq!(done["status"], "completed", "{done}");
    let result = &done["result"];
    assert_eq!(result["isError"], false, "{done}");
    let kinds: Vec<&str> = result["content"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"image") && kinds.contains(&"resource_link"),
        "{kinds:?}"
    );
    assert_eq!(result["structuredContent"]["status"], "completed");

    // Without the extension the same tool waits and answers the images.
    let waited = generate(&s, "a lighthouse, waited for", 2, false).await;
    assert_eq!(waited["result"]["resultType"], "complete", "{waited}");
    assert!(waited["result"].get("taskId").is_none());
    assert!(waited["result"]["content"].as_array().unwrap().len() >= 2);
    // ... and the task methods need it.
    let refused = call(&s, "tasks/get", &id, json!({"taskId": id}), false).await;
    assert_eq!(refused["error"]["code"], -32021, "{refused}");
    assert!(refused["error"]["data"]["requiredCapabilities"]["extensions"][TASKS].is_object());
    let unknown = get(&s, "00000000-0000-4000-8000-000000000000").await;
    assert_eq!(unknown["error"]["code"], -32602, "{unknown}");
    let not_an_id = get(&s, "nonsense").await;
    assert_eq!(not_an_id["error"]["code"], -32602, "{not_an_id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_is_cancelled_with_its_job_and_a_failed_one_is_a_tool_error() {
    let s = start(10, Some(Duration::from_millis(50))).await;
    let created = generate(&s, "a long one to cancel", 100, true).await;
    let id = created["result"]["taskId"].as_str().unwrap().to_owned();
    let ack = call(&s, "tasks/cancel", &id, json!({"taskId": id}), true).await;
    assert_eq!(ack["result"], json!({"resultType": "complete"}), "{ack}");
    // Cancelled in the database by the time the ack comes (the race with
    // the worker's claim of the job once lost a cancel: SQLite's deferred
    // transactions; now immediate ones).
    let right_after: Value = s
        .get(&format!("/api/status/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(right_after["status"], "cancelled", "{right_after}");
    let done = until_terminal(&s, &id).await;
    assert_eq!(done["status"], "cancelled", "{done}");
    assert!(done.get("result").is_none());
    let job: Value = s
        .get(&format!("/api/status/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(job["status"], "cancelled");
    // Cancelling a finished task is the same empty acknowledgement.
    let again = call(&s, "tasks/cancel", &id, json!({"taskId": id}), true).await;
    assert_eq!(again["result"], json!({"resultType": "complete"}));

    // A bad argument is a plain tool error, no task.
    let bad = call(
        &s,
        "tools/call",
        "generate_image",
        json!({"name": "generate_image", "arguments": {"prompt": "x", "steps": -4}}),
        true,
    )
    .await;
    assert_eq!(bad["result"]["isError"], true, "{bad}");
    assert!(bad["result"].get("taskId").is_none());
}

/// A generation that fails in the engine: the task completes with the
/// tool's error, as the extension asks (`failed` is for protocol errors).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_generation_completes_its_task_with_is_error() {
    let dir = tempfile::tempdir().unwrap();
    let service = service(dir.path(), 10, None).await;
    service
        .spawn_worker(
            std::sync::Arc::new(cyberimage_testkit::ScriptedGenerator::failing(
                "scripted engine failure",
            )),
            "w",
        )
        .unwrap();
    let s = Server::new(serve_on_port_0(service, &Default::default()).await, dir);
    let created = generate(&s, "this one fails", 2, true).await;
    let id = created["result"]["taskId"].as_str().unwrap().to_owned();
    let done = until_terminal(&s, &id).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["result"]["isError"], true, "{done}");
    assert!(done["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("scripted engine failure"));
    assert!(done["statusMessage"]
        .as_str()
        .unwrap()
        .contains("scripted engine failure"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generation_without_a_prompt_asks_a_client_that_can_be_asked() {
    let s = start(10, Some(Duration::from_millis(1))).await;
    let no_prompt = json!({"name": "generate_image", "arguments": {"model": "tiny", "steps": 2}});
    let elicit = json!({"elicitation": {}});
    let asked = call_with(
        &s,
        "tools/call",
        "generate_image",
        no_prompt.clone(),
        elicit.clone(),
    )
    .await;
    let result = &asked["result"];
    assert_eq!(result["resultType"], "input_required", "{asked}");
    let request = &result["inputRequests"]["prompt"];
    assert_eq!(request["method"], "elicitation/create");
    assert_eq!(
        request["params"]["requestedSchema"]["required"],
        json!(["prompt"])
    );
    let queue: Value = s.get("/api/queue").await.json().await.unwrap();
    assert_eq!(queue["total"], 0, "nothing queued while asking: {queue}");

    // The answer: the same call with it in inputResponses.
    let mut answered = no_prompt.clone();
    answered["inputResponses"] = json!({"prompt": {"action": "accept",
                                                   "content": {"prompt": "a fox, as asked"}}});
    let done = call_with(&s, "tools/call", "generate_image", answered, elicit.clone()).await;
    assert_eq!(done["result"]["isError"], false, "{done}");
    assert_eq!(
        done["result"]["structuredContent"]["prompt"], "a fox, as asked",
        "{done}"
    );

    // Declined: asked again. A client that cannot be asked gets the
    // tool's error, as before.
    let mut declined = no_prompt.clone();
    declined["inputResponses"] = json!({"prompt": {"action": "decline"}});
    let again = call_with(&s, "tools/call", "generate_image", declined, elicit).await;
    assert_eq!(again["result"]["resultType"], "input_required", "{again}");
    let plain = call_with(&s, "tools/call", "generate_image", no_prompt, json!({})).await;
    assert_eq!(plain["result"]["isError"], true, "{plain}");
    assert!(plain["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .contains("prompt"));
}

//! Both protocol eras on one route: modern (2026-07-28) clients of legacy MCP servers through
//! the era bridge. The official TypeScript 2.x and Python `mcp` 2.x clients (pinned to the
//! modern era, or probing it), FastMCP 1.30 and server-everything as the legacy servers, pods
//! sharing Redis behind per-request round robin; raw HTTP where a test needs one request on
//! one pod. The FastMCP upstreams record what they receive (`--capture`), so the tests assert
//! on what reached them.

use crate::harness::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const MODERN: &str = "2026-07-28";

/// Pods of capturing FastMCP + sidecar on 127.0.0.{i}, sharing Redis, behind round robin.
struct Eras {
    _redis: Redis,
    pods: Vec<(FastMcp, Sidecar, PathBuf)>,
    entry: RoundRobin,
}

impl Eras {
    /// `extra`: YAML above `routes:`; `route`: the route entries for an upstream's `/mcp` URL.
    fn start(name: &str, n: usize, extra: &str, route: &dyn Fn(&str) -> String) -> Eras {
        let dir = test_dir(name);
        let redis = Redis::deployment(&dir);
        // a Redis command may wait longer than the default 500 ms on a loaded test machine
        let section = redis.section();
        let section = format!(
            "{}, command_timeout: 3s}}",
            section.strip_suffix('}').unwrap()
        );
        let pods: Vec<(FastMcp, Sidecar, PathBuf)> = (1..=n)
            .map(|i| {
                let (up, sidecar, capture) = capturing_pod(&dir, i, |up| {
                    format!(
                        "redis: {section}\npeer: {{secret: {PEER_SECRET}}}\nadmin: {{token: {ADMIN_TOKEN}}}\n{extra}routes:\n{}",
                        route(&format!("{}/mcp", up.base()))
                    )
                });
                (up, sidecar, capture)
            })
            .collect();
        let entry = RoundRobin::start(&dir, &backends(pods.iter().map(|(_, s, _)| s)));
        Eras {
            _redis: redis,
            pods,
            entry,
        }
    }

    fn sidecar(&self, i: usize) -> &Sidecar {
        &self.pods[i].1
    }

    /// Everything the upstreams received, as raw capture text.
    fn captured(&self) -> String {
        self.pods
            .iter()
            .map(|(_, _, c)| std::fs::read_to_string(c).unwrap_or_default())
            .collect()
    }

    /// Sums a metric over every pod.
    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut sum = 0.0;
        for (_, s, _) in &self.pods {
            sum += metric(s, name, labels).await;
        }
        sum
    }
}

/// The plain route to FastMCP, named `fastmcp`.
fn fastmcp_route(upstream: &str) -> String {
    Sidecar::route("/mcp", upstream, "fastmcp")
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// What a modern client declares: every capability a legacy server may ask of it.
fn capabilities() -> Value {
    json!({"elicitation": {"form": {}}, "sampling": {}, "roots": {"listChanged": true}})
}

/// A modern request body: `params` plus the era's `_meta` (version, capabilities).
fn request(id: i64, method: &str, params: Value) -> Value {
    let mut params = if params.is_null() { json!({}) } else { params };
    let meta = params
        .as_object_mut()
        .unwrap()
        .entry("_meta")
        .or_insert_with(|| json!({}));
    meta["io.modelcontextprotocol/protocolVersion"] = json!(MODERN);
    meta["io.modelcontextprotocol/clientCapabilities"] = capabilities();
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

/// A modern answer: its status and the JSON-RPC messages of its body (JSON or SSE).
#[derive(Debug)]
struct Reply {
    status: u16,
    msgs: Vec<Value>,
}

impl Reply {
    /// The final message (a result or an error).
    fn last(&self) -> &Value {
        self.msgs
            .iter()
            .rev()
            .find(|m| m.get("result").is_some() || m.get("error").is_some())
            .unwrap_or_else(|| panic!("no result or error in {self:?}"))
    }

    fn result(&self) -> &Value {
        assert_eq!(self.status, 200, "{self:?}");
        let last = self.last();
        assert!(last.get("result").is_some(), "{self:?}");
        &last["result"]
    }

    /// The text of a tool result's first content item.
    fn text(&self) -> String {
        let r = self.result();
        assert_eq!(r["resultType"], "complete", "{self:?}");
        r["content"][0]["text"].as_str().unwrap().to_string()
    }

    /// Asserts a refusal: HTTP status and JSON-RPC code; the error.
    fn refused(&self, status: u16, code: i64) -> &Value {
        assert_eq!(self.status, status, "{self:?}");
        let error = &self.last()["error"];
        assert_eq!(error["code"], code, "{self:?}");
        error
    }
}

/// POSTs `body` with exactly `headers` (besides content type and accept).
async fn post(
    client: &reqwest::Client,
    url: &str,
    headers: &[(&str, &str)],
    body: &Value,
) -> Reply {
    let mut req = mcp_post(client, url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.body(body.to_string()).send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let msgs = if text.trim().is_empty() {
        vec![]
    } else {
        messages(&text)
    };
    Reply { status, msgs }
}

/// The headers a modern client sends for `body`: the version, `Mcp-Method`, and `Mcp-Name`
/// where the method names something.
fn modern_headers(body: &Value) -> Vec<(String, String)> {
    let mut h = vec![("mcp-protocol-version".to_string(), MODERN.to_string())];
    if let Some(m) = body["method"].as_str().filter(|_| body.get("id").is_some()) {
        h.push(("mcp-method".into(), m.into()));
    }
    let name = body["params"]["name"]
        .as_str()
        .or(body["params"]["uri"].as_str());
    if let Some(name) = name {
        h.push(("mcp-name".into(), name.into()));
    }
    h
}

/// A modern request with its proper headers, plus `extra` (a hub key).
async fn modern(
    client: &reqwest::Client,
    url: &str,
    extra: &[(&str, &str)],
    body: &Value,
) -> Reply {
    let h = modern_headers(body);
    let mut all: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(extra);
    post(client, url, &all, body).await
}

/// A modern `tools/call`.
async fn call(
    client: &reqwest::Client,
    url: &str,
    extra: &[(&str, &str)],
    id: i64,
    tool: &str,
    args: Value,
) -> Reply {
    let body = request(id, "tools/call", json!({"name": tool, "arguments": args}));
    modern(client, url, extra, &body).await
}

/// An MRTR round the bridge opened: the input request's key, what it asks, the sealed state.
struct Asked {
    key: String,
    input: Value,
    state: String,
}

/// Calls `ask_name` (FastMCP elicits a name) and expects an `InputRequiredResult`.
async fn ask_name(client: &reqwest::Client, url: &str, extra: &[(&str, &str)], id: i64) -> Asked {
    let body = request(
        id,
        "tools/call",
        json!({"name": "ask_name", "arguments": {}}),
    );
    let asked = input_required(&modern(client, url, extra, &body).await);
    assert_eq!(asked.input["method"], "elicitation/create");
    asked
}

/// The round an `InputRequiredResult` opens.
fn input_required(reply: &Reply) -> Asked {
    let r = reply.result();
    assert_eq!(r["resultType"], "input_required", "{reply:?}");
    let requests = r["inputRequests"].as_object().unwrap();
    assert_eq!(requests.len(), 1, "{reply:?}");
    let (key, input) = requests
        .iter()
        .next()
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap();
    let state = r["requestState"].as_str().unwrap().to_string();
    assert!(
        state.starts_with("mcps1."),
        "sealed by the sidecar: {state}"
    );
    Asked { key, input, state }
}

/// The retry of a `tool` call answering `asked` with `response`, echoing `state`.
fn retry_body(id: i64, tool: &str, asked: &Asked, state: &str, response: Value) -> Value {
    request(
        id,
        "tools/call",
        json!({"name": tool, "arguments": {},
            "inputResponses": {&asked.key: response},
            "requestState": state}),
    )
}

/// The retry of `ask_name` answering `asked` with the name `name`.
fn answer_body(id: i64, asked: &Asked, state: &str, name: &str) -> Value {
    retry_body(
        id,
        "ask_name",
        asked,
        state,
        json!({"action": "accept", "content": {"name": name}}),
    )
}

/// Polls `ok` every 200 ms until it holds or `limit` passes (then fails with `what`).
async fn eventually<F, Fut>(limit: Duration, what: &str, mut ok: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !ok().await {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `cancelled_calls` counters of every pod's server, summed: (started, cancelled).
async fn cancelled_calls(eras: &Eras) -> (i64, i64) {
    let client = http();
    let (mut started, mut count) = (0, 0);
    for (_, s, _) in &eras.pods {
        let reply = call(
            &client,
            &s.url("/mcp"),
            &[],
            1,
            "cancelled_calls",
            json!({}),
        )
        .await;
        let v: Value = serde_json::from_str(&reply.text()).unwrap();
        started += v["started"].as_i64().unwrap();
        count += v["count"].as_i64().unwrap();
    }
    (started, count)
}

fn texts(out: &Value) -> Value {
    out["result"].clone()
}

/// What every scenario of a pinned client shows: success on the modern era.
fn assert_modern_ok(out: &Value) {
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(out["error"], Value::Null, "{out}");
    assert_eq!(out["protocol_version"], MODERN, "{out}");
    for h in out["http"].as_array().unwrap() {
        assert!(h["status"].as_u64().unwrap() < 300, "{out}");
    }
}

/// The scenarios one pinned driver runs through the round robin, each asserted.
fn pinned_scenarios(driver: &str, url: &str) {
    let run = |scenario: &str, args: &[&str]| match driver {
        "py" => modern_py(url, "pin", scenario, args),
        _ => modern_ts(url, "pin", scenario, args),
    };

    let out = run("basics", &[]);
    assert_modern_ok(&out);
    let supported = out["discover"]["supported_versions"].as_array().unwrap();
    assert!(supported.contains(&json!(MODERN)), "{out}");
    assert!(supported.contains(&json!("2025-06-18")), "{out}");
    assert_eq!(out["discover"]["cacheScope"], "public", "{out}");
    assert!(out["discover"]["ttlMs"].as_u64().unwrap() > 0, "{out}");
    assert!(
        out["server"].as_str().unwrap().starts_with("fastmcp-"),
        "{out}"
    );
    let tools = out["tools"].as_array().unwrap();
    for t in ["echo", "ask_name", "summarize", "list_roots", "long_wait"] {
        assert!(tools.contains(&json!(t)), "{t}: {out}");
    }
    assert_eq!(out["echo"], "héllo ✓", "{out}");
    assert_eq!(out["resource"], json!(["test server info"]), "{out}");
    assert_eq!(out["prompt"], json!(["Hello, Ada!"]), "{out}");

    let out = run("progress", &[]);
    assert_modern_ok(&out);
    assert_eq!(texts(&out), json!(["p"]), "{out}");
    let progress: Vec<f64> = out["progress"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["progress"].as_f64().unwrap())
        .collect();
    assert_eq!(progress, [1.0, 2.0, 3.0], "{out}");

    let out = run("logs", &["warning"]);
    assert_modern_ok(&out);
    let levels: Vec<&str> = out["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["level"].as_str().unwrap())
        .collect();
    assert_eq!(levels, ["warning", "error"], "{out}");

    let out = run("logs", &["none"]);
    assert_modern_ok(&out);
    assert_eq!(
        out["logs"],
        json!([]),
        "no level asked, no log messages: {out}"
    );

    for (scenario, method, result) in [
        ("elicit", "elicitation/create", "Hello, Ada!"),
        ("sample", "sampling/createMessage", "sampled-by-client"),
        ("roots", "roots/list", r#"["file:///client-root"]"#),
    ] {
        let out = run(scenario, &[]);
        assert_modern_ok(&out);
        assert_eq!(texts(&out), json!([result]), "{out}");
        assert_eq!(out["is_error"], false, "{out}");
        let asked: Vec<&Value> = out["server_requests"].as_array().unwrap().iter().collect();
        assert_eq!(asked.len(), 1, "{out}");
        assert_eq!(asked[0]["method"], method, "{out}");
        // the input request came as an InputRequiredResult and the retry answered it: two
        // tools/call requests (over the round robin, on different pods mostly)
        let calls = out["http"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["mcp_method"] == "tools/call")
            .count();
        assert_eq!(calls, 2, "{out}");
    }

    // an eliciting call with a progress callback: the retry is a new request with its own
    // progress token, and still continues the call
    let out = run("progress", &["ask_name", "{}"]);
    assert_modern_ok(&out);
    assert_eq!(texts(&out), json!(["Hello, Ada!"]), "{out}");
    assert_eq!(
        out["server_requests"][0]["method"], "elicitation/create",
        "{out}"
    );

    // two server requests in one call: two rounds
    let out = run("elicit", &["ask_twice", "{}"]);
    assert_modern_ok(&out);
    assert_eq!(texts(&out), json!(["Ada: sampled-by-client"]), "{out}");
    let asked: Vec<&Value> = out["server_requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["method"])
        .collect();
    assert_eq!(
        asked,
        [
            &json!("elicitation/create"),
            &json!("sampling/createMessage")
        ],
        "{out}"
    );

    // cancellation: the driver's own cancelled_calls read would land on any pod; the test
    // reads every pod's counters afterwards (TOOL args make the driver skip its read)
    let out = run("cancel", &["long_wait", r#"{"seconds": 30}"#]);
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(out["aborted"], true, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pinned_clients_get_every_feature_across_three_pods_behind_round_robin() {
    let eras = Eras::start("eras-pinned", 3, "", &fastmcp_route);
    let url = eras.entry.url("/mcp");
    let runs: Vec<_> = ["py", "ts"]
        .into_iter()
        .map(|driver| {
            let url = url.clone();
            tokio::task::spawn_blocking(move || pinned_scenarios(driver, &url))
        })
        .collect();
    for run in runs {
        run.await.unwrap();
    }

    // both cancelled calls were cancelled upstream, wherever they ran
    let cluster = &eras;
    eventually(
        Duration::from_secs(20),
        "2 long_wait calls cancelled",
        || async move {
            let (started, count) = cancelled_calls(cluster).await;
            assert_eq!(started, 2, "one long_wait per driver");
            count == 2
        },
    )
    .await;

    // 6 MRTR rounds per driver (elicit, sample, roots, progress+elicit, 2 in ask_twice): 12
    // asked and resumed, across the pods
    let rounds = "mcp_sidecar_bridge_input_rounds_total";
    assert_eq!(eras.metric(rounds, &[("outcome", "asked")]).await, 12.0);
    assert_eq!(eras.metric(rounds, &[("outcome", "resumed")]).await, 12.0);
    assert_eq!(eras.metric(rounds, &[("outcome", "refused")]).await, 0.0);

    // deterministically across pods: asked on pod 1, answered on pod 2, resumed on pod 1
    let client = http();
    let (a, b) = (eras.sidecar(0), eras.sidecar(1));
    let resumed_before = metric(a, rounds, &[("outcome", "resumed")]).await;
    let forwarded = |s: &Sidecar| s.log().matches("via=bridged_forwarded").count();
    let from_peer = |s: &Sidecar| s.log().matches("from_peer=true").count();
    let (forwarded_before, from_peer_before) = (forwarded(b), from_peer(a));
    let asked = ask_name(&client, &a.url("/mcp"), &[], 41).await;
    assert_eq!(asked.input["params"]["message"], "What is your name?");
    let retry = answer_body(42, &asked, &asked.state, "Grace");
    let reply = modern(&client, &b.url("/mcp"), &[], &retry).await;
    assert_eq!(reply.text(), "Hello, Grace!");
    assert_eq!(reply.last()["id"], 42);
    wait_metric(a, rounds, &[("outcome", "resumed")], resumed_before + 1.0).await;
    // the access lines: pod 2 carried the retry (`bridged_forwarded`), pod 1 served the hop
    eventually(Duration::from_secs(10), "the retry's access lines", || async move {
        forwarded(b) == forwarded_before + 1 && from_peer(a) == from_peer_before + 1
    })
    .await;

    // two rounds of one call over three pods: asked on pod 1, the first answer through pod
    // 2, the second through pod 3; the call runs on pod 1 throughout
    let c = eras.sidecar(2);
    let body = request(
        50,
        "tools/call",
        json!({"name": "ask_twice", "arguments": {}}),
    );
    let first = input_required(&modern(&client, &a.url("/mcp"), &[], &body).await);
    assert_eq!(first.input["method"], "elicitation/create");
    let name = json!({"action": "accept", "content": {"name": "Grace"}});
    let retry = retry_body(51, "ask_twice", &first, &first.state, name);
    let reply = modern(&client, &b.url("/mcp"), &[], &retry).await;
    assert_eq!(reply.last()["id"], 51);
    let second = input_required(&reply);
    assert_eq!(second.input["method"], "sampling/createMessage");
    assert_eq!(
        second.input["params"]["messages"][0]["content"]["text"],
        "Greet Grace"
    );
    assert_ne!(second.state, first.state);
    let sampled = json!({"role": "assistant", "model": "m", "stopReason": "endTurn",
        "content": {"type": "text", "text": "hi Grace"}});
    let retry = retry_body(52, "ask_twice", &second, &second.state, sampled);
    let reply = modern(&client, &c.url("/mcp"), &[], &retry).await;
    assert_eq!(reply.text(), "Grace: hi Grace");
    assert_eq!(reply.last()["id"], 52);

    // the listen stream and the list change it reports are one server's: a pod's FastMCP is
    // its own process, so the listener and the add_tool call go to the same pod. (Behind the
    // round robin the call lands on another pod, whose server changes, and the listener
    // hears nothing: listeners get the changes of the server on the pod they reached only.)
    let pod = eras.sidecar(2).url("/mcp");
    let py = modern_py(
        &pod,
        "pin",
        "listen",
        &["add_tool", r#"{"name": "added_by_py"}"#],
    );
    assert_modern_ok(&py);
    assert_eq!(py["honored"]["toolsListChanged"], true, "{py}");
    assert_eq!(py["events"].as_array().unwrap().len(), 1, "{py}");
    assert!(
        py["tools_after"]
            .as_array()
            .unwrap()
            .contains(&json!("added_by_py")),
        "{py}"
    );
    let ts = modern_ts(
        &pod,
        "pin",
        "listen",
        &["add_tool", r#"{"name": "added_by_ts"}"#],
    );
    assert_modern_ok(&ts);
    let changes: Vec<&Value> = ts["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["method"] == "notifications/tools/list_changed")
        .collect();
    assert_eq!(changes.len(), 1, "{ts}");
    assert!(
        changes[0]["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"].is_string(),
        "tagged with the subscription: {ts}"
    );
    assert!(
        ts["tools_after"]
            .as_array()
            .unwrap()
            .contains(&json!("added_by_ts")),
        "{ts}"
    );
}

#[test]
fn pinned_clients_fail_against_a_legacy_server_without_the_sidecar() {
    let dir = test_dir("eras-bare");
    let up = FastMcp::start(&dir, Transport::StreamableHttp);
    let url = format!("{}/mcp", up.base());

    let py = modern_py(&url, "pin", "basics", &[]);
    assert_eq!(py["ok"], false, "{py}");
    assert_eq!(py["error"]["code"], -32600, "{py}");
    assert_eq!(py["error"]["http_status"], 400, "{py}");
    assert!(
        py["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Missing session ID"),
        "{py}"
    );
    let py = modern_py(&url, "pin", "elicit", &[]);
    assert_eq!(py["ok"], false, "{py}");
    assert_eq!(py["error"]["http_status"], 400, "{py}");

    let ts = modern_ts(&url, "pin", "basics", &[]);
    assert_eq!(ts["ok"], false, "{ts}");
    assert_eq!(ts["error"]["code"], "ERA_NEGOTIATION_FAILED", "{ts}");
    assert_eq!(ts["error"]["http_status"], 400, "{ts}");

    // auto clients fall back to the legacy era there
    for out in [
        modern_py(&url, "auto", "basics", &[]),
        modern_ts(&url, "auto", "basics", &[]),
    ] {
        assert_eq!(out["ok"], true, "{out}");
        assert_ne!(out["protocol_version"], MODERN, "{out}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn auto_clients_land_on_the_modern_era_while_legacy_clients_keep_their_sessions() {
    let eras = Eras::start("eras-both", 3, "", &fastmcp_route);
    let url = eras.entry.url("/mcp");
    let spawn = |f: Box<dyn FnOnce() -> Value + Send>| tokio::task::spawn_blocking(f);
    let (u1, u2, u3, u4, u5) = (
        url.clone(),
        url.clone(),
        url.clone(),
        url.clone(),
        url.clone(),
    );
    // all at once on the same route: two legacy clients with sessions, two auto clients, a
    // pinned one eliciting
    let legacy_py = spawn(Box::new(move || {
        python_client(
            &u1,
            Transport::StreamableHttp,
            &["--calls", "10", "--counts", "10"],
        )
    }));
    let legacy_ts = spawn(Box::new(move || {
        ts_scenario(&u2, Transport::StreamableHttp, "fastmcp", None)
    }));
    let auto_py = spawn(Box::new(move || modern_py(&u3, "auto", "basics", &[])));
    let auto_ts = spawn(Box::new(move || modern_ts(&u4, "auto", "elicit", &[])));
    let pinned = spawn(Box::new(move || modern_py(&u5, "pin", "sample", &[])));

    let out = legacy_py.await.unwrap();
    let counts: Vec<i64> = (1..=10).collect();
    assert_eq!(out["counts"], json!(counts), "one session all along: {out}");
    assert_eq!(out["add_results"].as_array().unwrap().len(), 10, "{out}");
    assert!(out["session_id"].is_string(), "{out}");
    assert_ne!(out["protocol_version"], MODERN, "{out}");
    let out = legacy_ts.await.unwrap();
    assert_eq!(
        out["counts"],
        json!([1, 2, 3]),
        "one session all along: {out}"
    );

    let out = auto_py.await.unwrap();
    assert_modern_ok(&out);
    assert_eq!(out["echo"], "héllo ✓", "{out}");
    let out = auto_ts.await.unwrap();
    assert_modern_ok(&out);
    assert_eq!(out["era"], "modern", "{out}");
    assert_eq!(texts(&out), json!(["Hello, Ada!"]), "{out}");
    assert_eq!(
        out["http"][0]["mcp_method"], "server/discover",
        "an auto client probes first: {out}"
    );
    let out = pinned.await.unwrap();
    assert_modern_ok(&out);
    assert_eq!(texts(&out), json!(["sampled-by-client"]), "{out}");

    // the requests metric tells the eras apart
    let requests = "mcp_sidecar_requests_total";
    assert!(eras.metric(requests, &[("era", "modern")]).await >= 10.0);
    assert!(eras.metric(requests, &[("era", "legacy")]).await >= 20.0);
    // the legacy sessions were served as sessions (owned, forwarded), the modern requests
    // bridged
    let logs: String = eras.pods.iter().map(|(_, s, _)| s.log()).collect();
    assert!(logs.contains("via=forwarded"), "legacy sessions forwarded");
    assert!(logs.contains("via=bridged "), "modern requests bridged");
}

#[tokio::test(flavor = "multi_thread")]
async fn modern_requests_are_validated_and_request_states_verified() {
    let eras = Eras::start("eras-raw", 2, "", &fastmcp_route);
    let client = http();
    let (a, b) = (eras.sidecar(0).url("/mcp"), eras.sidecar(1).url("/mcp"));
    let echo = request(
        1,
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "e"}}),
    );
    let v = ("mcp-protocol-version", MODERN);
    let m = ("mcp-method", "tools/call");

    // the headers as a client sends them work
    assert_eq!(modern(&client, &a, &[], &echo).await.text(), "e");

    // Mcp-Method against method, Mcp-Name against name, the version header against _meta
    for headers in [
        vec![v, ("mcp-method", "tools/list"), ("mcp-name", "echo")],
        vec![v, m, ("mcp-name", "add")],
        vec![v, m],
        vec![
            ("mcp-protocol-version", "2025-06-18"),
            m,
            ("mcp-name", "echo"),
        ],
    ] {
        let reply = post(&client, &a, &headers, &echo).await;
        let error = reply.refused(400, -32020);
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("Header mismatch"),
            "{headers:?}: {reply:?}"
        );
    }
    let mut bad_meta = echo.clone();
    bad_meta["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!("2099-01-01");
    post(&client, &a, &[v, m, ("mcp-name", "echo")], &bad_meta)
        .await
        .refused(400, -32020);
    // the resource's URI and the prompt's name are checked too
    let read = request(2, "resources/read", json!({"uri": "test://info"}));
    post(
        &client,
        &a,
        &[
            v,
            ("mcp-method", "resources/read"),
            ("mcp-name", "test://other"),
        ],
        &read,
    )
    .await
    .refused(400, -32020);
    let read_ok = modern(&client, &a, &[], &read).await;
    let r = read_ok.result();
    assert_eq!(r["contents"][0]["text"], "test server info", "{read_ok:?}");
    assert_eq!(r["cacheScope"], "public", "{read_ok:?}");
    assert!(r["ttlMs"].as_u64().is_some(), "{read_ok:?}");

    // the Base64 sentinel form of Mcp-Name
    let reply = post(
        &client,
        &a,
        &[v, m, ("mcp-name", "=?base64?ZWNobw==?=")],
        &echo,
    )
    .await;
    assert_eq!(reply.text(), "e");
    post(&client, &a, &[v, m, ("mcp-name", "=?base64?YWRk?=")], &echo)
        .await
        .refused(400, -32020);

    // an unsupported version
    let mut future = echo.clone();
    future["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!("2099-01-01");
    let reply = post(
        &client,
        &a,
        &[
            ("mcp-protocol-version", "2099-01-01"),
            m,
            ("mcp-name", "echo"),
        ],
        &future,
    )
    .await;
    let error = reply.refused(400, -32022);
    assert!(
        error["data"]["supported"]
            .as_array()
            .unwrap()
            .contains(&json!(MODERN)),
        "{reply:?}"
    );

    // methods the modern era does not have: 404 -32601 (initialize included: a modern
    // request has no handshake)
    for method in ["ping", "initialize", "logging/setLevel", "no/such"] {
        let body = request(3, method, json!({}));
        let reply = modern(&client, &a, &[], &body).await;
        reply.refused(404, -32601);
        assert_eq!(reply.last()["id"], 3, "{method}: {reply:?}");
    }

    // a batch is no modern request
    let batch = json!([request(4, "tools/list", json!({}))]);
    post(&client, &a, &[v, ("mcp-method", "tools/list")], &batch)
        .await
        .refused(400, -32600);

    // a client notification: 202, nothing upstream
    let note = json!({"jsonrpc": "2.0", "method": "notifications/roots/list_changed",
        "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": MODERN}}});
    let reply = post(&client, &a, &[v], &note).await;
    assert_eq!(reply.status, 202, "{reply:?}");

    // none of the refused requests reached the server
    let captured = eras.captured();
    assert!(
        !captured.contains("2099-01-01"),
        "a refused request reached the server"
    );
    assert!(!captured.contains("no/such") && !captured.contains("test://other"));
    assert!(!captured.contains("roots/list_changed"));

    // requestState: tampered, another request's, then the right retry on the other pod
    let asked = ask_name(&client, &a, &[], 10).await;
    let (payload, tag) = asked.state.rsplit_once('.').unwrap();
    let mut forged = payload.to_string();
    let flip = if forged.ends_with('A') { "B" } else { "A" };
    forged.replace_range(forged.len() - 1.., flip);
    for bad in [
        format!("{forged}.{tag}"),
        format!("{payload}.{}", &tag[..tag.len() - 2]),
        "mcps1.garbage".to_string(),
        "not-a-state".to_string(),
    ] {
        for url in [&a, &b] {
            let reply = modern(
                &client,
                url,
                &[],
                &answer_body(11, &asked, &bad, "Eve-forger"),
            )
            .await;
            let error = reply.refused(400, -32602);
            assert!(
                error["message"].as_str().unwrap().contains("requestState"),
                "{reply:?}"
            );
        }
    }
    // the state of another request: the same tool with other arguments, or another tool
    let mut other = answer_body(12, &asked, &asked.state, "Eve-forger");
    other["params"]["arguments"] = json!({"x": 1});
    modern(&client, &b, &[], &other).await.refused(400, -32602);
    let other_tool = request(
        13,
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "x"},
            "inputResponses": {&asked.key: {"action": "accept", "content": {"name": "Eve-forger"}}},
            "requestState": &asked.state}),
    );
    modern(&client, &a, &[], &other_tool)
        .await
        .refused(400, -32602);
    // a retry without the answer is asked again (the call stays held), under a new state
    let mut unanswered = answer_body(16, &asked, &asked.state, "x");
    unanswered["params"]["inputResponses"] = json!({});
    let again = input_required(&modern(&client, &b, &[], &unanswered).await);
    assert_eq!(again.key, asked.key);
    assert_eq!(again.input, asked.input);
    assert_ne!(again.state, asked.state);
    let asked = again;
    // none of them touched the pending call: the right retry still resumes it
    let reply = modern(
        &client,
        &b,
        &[],
        &answer_body(14, &asked, &asked.state, "Ada"),
    )
    .await;
    assert_eq!(reply.text(), "Hello, Ada!");
    // once resumed, the state is spent
    let reply = modern(
        &client,
        &a,
        &[],
        &answer_body(15, &asked, &asked.state, "Ada"),
    )
    .await;
    reply.refused(400, -32602);
    assert!(
        !eras.captured().contains("Eve-forger"),
        "a refused answer reached the server"
    );
    let refused = eras
        .metric(
            "mcp_sidecar_bridge_input_rounds_total",
            &[("outcome", "refused")],
        )
        .await;
    assert!(refused >= 10.0, "{refused}");
}

/// A hub route for modern clients: keys, the token injected, tools filtered by group.
fn hub_route(upstream: &str) -> String {
    format!(
        r#"  - prefix: /mcp
    upstream: '{upstream}'
    server_name: github
    auth: required
    required_tokens: [GITHUB_TOKEN]
    inject_headers:
      X-MCPHub-User-Id: "{{user.id}}"
      X-MCPHub-GitHub-Token: "{{token.GITHUB_TOKEN}}"
      Authorization: "Bearer {{token.GITHUB_TOKEN}}"
    tool_groups:
      dev: ["*"]
      readers: ["echo", "request_headers", "who*"]
"#
    )
}

const ENCRYPTION_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn create_key(eras: &Eras, args: &[&str]) -> String {
    let (ok, out, err) = keys_cli(&eras.sidecar(0).config, &[&["create"], args].concat());
    assert!(ok, "keys create failed: {err}");
    out.trim().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn hub_keys_tokens_and_tool_groups_apply_to_modern_requests() {
    let eras = Eras::start(
        "eras-hub",
        2,
        &format!("auth: {{cache_ttl: 1s, token_encryption_key: '{ENCRYPTION_KEY}'}}\n"),
        &hub_route,
    );
    let alice = create_key(
        &eras,
        &[
            "--user",
            "alice",
            "--group",
            "dev",
            "--token",
            "GITHUB_TOKEN=ghp_alice",
        ],
    );
    let bob = create_key(
        &eras,
        &[
            "--user",
            "bob",
            "--group",
            "readers",
            "--token",
            "GITHUB_TOKEN=ghp_bob",
        ],
    );
    let dave = create_key(
        &eras,
        &[
            "--user",
            "dave",
            "--group",
            "dev",
            "--token",
            "GITHUB_TOKEN=ghp_dave",
        ],
    );
    let bearer = |k: &str| format!("Bearer {k}");
    let (alice_auth, bob_auth, dave_auth) = (bearer(&alice), bearer(&bob), bearer(&dave));
    let alice_h = [("authorization", alice_auth.as_str())];
    let bob_h = [("authorization", bob_auth.as_str())];
    let dave_h = [("authorization", dave_auth.as_str())];
    let client = http();
    let a = eras.sidecar(0).url("/mcp");
    let entry = eras.entry.url("/mcp");

    // no key, a wrong key: 401, nothing upstream
    let list = request(1, "tools/list", json!({}));
    assert_eq!(modern(&client, &entry, &[], &list).await.status, 401);
    let wrong = [("authorization", "Bearer mcphub_nope")];
    assert_eq!(modern(&client, &entry, &wrong, &list).await.status, 401);

    // the token injected reaches the server; each user on their own pooled legacy session
    let seen = |reply: Reply| -> Value { serde_json::from_str(&reply.text()).unwrap() };
    let ha = seen(call(&client, &a, &alice_h, 2, "request_headers", json!({})).await);
    let hb = seen(call(&client, &a, &bob_h, 3, "request_headers", json!({})).await);
    assert_eq!(ha["x-mcphub-github-token"], "ghp_alice", "{ha}");
    assert_eq!(ha["authorization"], "Bearer ghp_alice", "{ha}");
    assert_eq!(ha["x-mcphub-user-id"], "alice", "{ha}");
    assert_eq!(hb["x-mcphub-github-token"], "ghp_bob", "{hb}");
    assert!(ha["mcp-session-id"].is_string(), "{ha}");
    assert_ne!(
        ha["mcp-session-id"], hb["mcp-session-id"],
        "two users never share a pooled legacy session"
    );
    let again = seen(call(&client, &a, &alice_h, 4, "request_headers", json!({})).await);
    assert_eq!(again["mcp-session-id"], ha["mcp-session-id"], "pooled");
    assert!(
        eras.sidecar(0)
            .log()
            .matches("established for modern clients")
            .count()
            >= 2
    );

    // tools/list filtered by group, and private to the caller
    let names = |reply: &Reply| -> Vec<String> {
        let mut n: Vec<String> = reply.result()["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_string())
            .collect();
        n.sort();
        n
    };
    let reply = modern(&client, &entry, &bob_h, &list).await;
    assert_eq!(names(&reply), ["echo", "request_headers", "whoami"]);
    assert_eq!(reply.result()["cacheScope"], "private", "{reply:?}");
    let reply = modern(&client, &entry, &alice_h, &list).await;
    assert!(names(&reply).contains(&"add".to_string()), "{reply:?}");

    // a tool outside bob's groups: 403, and naming another tool in the header does not get
    // it past the filter
    let add = request(
        5,
        "tools/call",
        json!({"name": "add", "arguments": {"a": 4040404, "b": 2}}),
    );
    let reply = modern(&client, &entry, &bob_h, &add).await;
    assert_eq!(reply.status, 403, "{reply:?}");
    assert_eq!(reply.last()["id"], 5, "{reply:?}");
    let v = ("mcp-protocol-version", MODERN);
    let m = ("mcp-method", "tools/call");
    let auth = bob_h[0];
    post(&client, &entry, &[v, m, ("mcp-name", "echo"), auth], &add)
        .await
        .refused(400, -32020);
    let echo = request(
        6,
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "ok"}}),
    );
    post(&client, &entry, &[v, m, ("mcp-name", "add"), auth], &echo)
        .await
        .refused(400, -32020);
    assert_eq!(modern(&client, &entry, &bob_h, &echo).await.text(), "ok");
    let reply = call(&client, &entry, &alice_h, 7, "add", json!({"a": 1, "b": 2})).await;
    assert_eq!(reply.text(), "3");
    assert!(
        !eras.captured().contains("4040404"),
        "a refused call reached the server"
    );

    // offerings/list on the pooled session, filtered the same way
    let offerings = request(11, "offerings/list", json!({}));
    let reply = modern(&client, &entry, &bob_h, &offerings).await;
    let r = reply.result();
    let mut tools: Vec<&str> = r["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{reply:?}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    tools.sort();
    assert_eq!(tools, ["echo", "request_headers", "whoami"], "{reply:?}");
    assert_eq!(r["prompts"][0]["name"], "greet", "{reply:?}");
    assert_eq!(reply.last()["id"], 11);

    // a pending call is the caller's: dave cannot resume alice's, which stays pending
    let asked = ask_name(&client, &a, &alice_h, 8).await;
    let b = eras.sidecar(1).url("/mcp");
    let steal = answer_body(9, &asked, &asked.state, "Mallory-thief");
    modern(&client, &b, &dave_h, &steal)
        .await
        .refused(400, -32602);
    modern(&client, &a, &dave_h, &steal)
        .await
        .refused(400, -32602);
    let retry = answer_body(10, &asked, &asked.state, "Alice");
    let reply = modern(&client, &b, &alice_h, &retry).await;
    assert_eq!(reply.text(), "Hello, Alice!");
    assert!(!eras.captured().contains("Mallory-thief"));

    // a pinned client with its key in the URL
    let url = format!("{entry}?key={alice}");
    let out = tokio::task::spawn_blocking(move || modern_py(&url, "pin", "elicit", &[]))
        .await
        .unwrap();
    assert_modern_ok(&out);
    assert_eq!(texts(&out), json!(["Hello, Ada!"]), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_whose_pod_is_gone_gets_a_clear_error_promptly() {
    let mut eras = Eras::start("eras-owner-gone", 2, "", &fastmcp_route);
    let client = http();
    let (a, b) = (eras.sidecar(0).url("/mcp"), eras.sidecar(1).url("/mcp"));
    let asked = ask_name(&client, &a, &[], 1).await;
    eras.pods[0].1.proc.kill();

    let started = Instant::now();
    let retry = answer_body(2, &asked, &asked.state, "Ada");
    let reply = tokio::time::timeout(Duration::from_secs(45), modern(&client, &b, &[], &retry))
        .await
        .expect("the retry hangs");
    let error = reply.refused(400, -32602);
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("gone"), "{message}");
    assert!(message.contains("without requestState"), "{message}");
    eprintln!("owner gone: answered in {:?}", started.elapsed());
    wait_metric(
        eras.sidecar(1),
        "mcp_sidecar_bridge_input_rounds_total",
        &[("outcome", "gone")],
        1.0,
    )
    .await;
    // the client's way forward: the request again, without the state, on the live pod
    let asked = ask_name(&client, &b, &[], 3).await;
    let reply = modern(
        &client,
        &b,
        &[],
        &answer_body(4, &asked, &asked.state, "Ada"),
    )
    .await;
    assert_eq!(reply.text(), "Hello, Ada!");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unanswered_input_request_is_cancelled_upstream_after_the_input_timeout() {
    let eras = Eras::start(
        "eras-input-timeout",
        2,
        "bridge: {input_timeout: 2s}\n",
        &fastmcp_route,
    );
    let client = http();
    let a = eras.sidecar(0);
    let asked = ask_name(&client, &a.url("/mcp"), &[], 1).await;
    assert_eq!(
        metric(a, "mcp_sidecar_bridge_pending_calls", &[]).await,
        1.0
    );
    let rounds = "mcp_sidecar_bridge_input_rounds_total";
    eventually(
        Duration::from_secs(20),
        "the pending call expires",
        || async move { metric(a, rounds, &[("outcome", "expired")]).await == 1.0 },
    )
    .await;
    assert_eq!(
        metric(a, "mcp_sidecar_bridge_pending_calls", &[]).await,
        0.0
    );
    a.wait_log("waiting for a modern client's input expired; cancelled upstream");
    // the server was told
    let capture = &eras.pods[0].2;
    eventually(
        Duration::from_secs(10),
        "the cancellation reaches FastMCP",
        || async move {
            let captured = std::fs::read_to_string(capture).unwrap_or_default();
            captured.contains("notifications/cancelled")
                && captured.contains("did not answer the input request in time")
        },
    )
    .await;
    // a late retry, on either pod, is refused and nothing reaches the server
    for url in [eras.sidecar(1).url("/mcp"), a.url("/mcp")] {
        let reply = modern(
            &client,
            &url,
            &[],
            &answer_body(2, &asked, &asked.state, "Late-answer"),
        )
        .await;
        let error = reply.refused(400, -32602);
        assert!(error["message"].as_str().unwrap().contains("requestState"));
    }
    assert!(!eras.captured().contains("Late-answer"));
}

#[tokio::test(flavor = "multi_thread")]
async fn server_everything_serves_pinned_clients_across_pods() {
    let dir = test_dir("eras-everything");
    let redis = Redis::deployment(&dir);
    let pods = everything_pods(&dir, &redis, 3, &|up| {
        Sidecar::route("/mcp", up, "everything")
    });
    let entry = RoundRobin::start(&dir, &backends(pods.iter().map(|(_, s)| s)));
    let url = entry.url("/mcp");
    let client = http();

    // discover, tools/list, tools/call, resources/read, prompts/get: raw
    let reply = modern(
        &client,
        &url,
        &[],
        &request(1, "server/discover", json!({})),
    )
    .await;
    let r = reply.result();
    assert!(
        r["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!(MODERN)),
        "{reply:?}"
    );
    assert!(r["capabilities"]["tools"].is_object(), "{reply:?}");
    let reply = modern(&client, &url, &[], &request(2, "tools/list", json!({}))).await;
    let tools: Vec<&str> = reply.result()["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for t in [
        "echo",
        "get-sum",
        "trigger-long-running-operation",
        "trigger-sampling-request",
    ] {
        assert!(tools.contains(&t), "{t}: {tools:?}");
    }
    let reply = call(&client, &url, &[], 3, "get-sum", json!({"a": 2, "b": 40})).await;
    assert!(reply.text().contains("42"), "{reply:?}");
    let reply = call(&client, &url, &[], 4, "echo", json!({"message": "hi"})).await;
    assert!(reply.text().contains("hi"), "{reply:?}");

    // the pinned drivers on server-everything's own tools
    let runs: Vec<_> = ["py", "ts"]
        .into_iter()
        .map(|driver| {
            let url = url.clone();
            tokio::task::spawn_blocking(move || {
                let run = |scenario: &str, tool: &str, args: &str| match driver {
                    "py" => modern_py(&url, "pin", scenario, &[tool, args]),
                    _ => modern_ts(&url, "pin", scenario, &[tool, args]),
                };
                [
                    run(
                        "progress",
                        "trigger-long-running-operation",
                        r#"{"duration": 1, "steps": 2}"#,
                    ),
                    run(
                        "sample",
                        "trigger-sampling-request",
                        r#"{"prompt": "hi", "maxTokens": 10}"#,
                    ),
                    run("elicit", "trigger-elicitation-request", "{}"),
                ]
            })
        })
        .collect();
    for run in runs {
        let [progress, sample, elicit] = run.await.unwrap();
        assert_modern_ok(&progress);
        assert_eq!(progress["is_error"], false, "{progress}");
        assert_eq!(
            progress["progress"].as_array().unwrap().len(),
            2,
            "{progress}"
        );
        assert_modern_ok(&sample);
        assert_eq!(sample["is_error"], false, "{sample}");
        assert!(
            sample["result"].to_string().contains("sampled-by-client"),
            "{sample}"
        );
        assert_eq!(
            sample["server_requests"][0]["method"],
            "sampling/createMessage"
        );
        assert_modern_ok(&elicit);
        assert_eq!(elicit["is_error"], false, "{elicit}");
        assert_eq!(elicit["server_requests"][0]["method"], "elicitation/create");
        assert!(elicit["result"].to_string().contains("Ada"), "{elicit}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn modern_servers_are_passed_through_configured_or_probed() {
    let dir = test_dir("eras-modern-server");
    let up = ModernServer::start(&dir);
    let upstream = format!("{}/mcp", up.base());
    let sidecar = Sidecar::start(
        &dir,
        &format!(
            "routes:\n  - {{prefix: /fixed, upstream: '{upstream}', server_name: fixed, era: modern}}\n  - {{prefix: /probed, upstream: '{upstream}', server_name: probed}}\n"
        ),
    );
    for prefix in ["/fixed", "/probed"] {
        let url = sidecar.url(prefix);
        let (u1, u2) = (url.clone(), url.clone());
        let py = tokio::task::spawn_blocking(move || modern_py(&u1, "pin", "basics", &[]));
        let ts = tokio::task::spawn_blocking(move || modern_ts(&u2, "pin", "elicit", &[]));
        let py = py.await.unwrap();
        assert_modern_ok(&py);
        assert_eq!(py["server"], format!("modern-{}", up.port), "{py}");
        assert_eq!(py["echo"], "héllo ✓", "{py}");
        let ts = ts.await.unwrap();
        assert_modern_ok(&ts);
        assert_eq!(texts(&ts), json!(["Hello, Ada!"]), "{ts}");
    }
    // legacy clients of the dual-era server pass as ever
    let url = sidecar.url("/probed");
    let out = tokio::task::spawn_blocking(move || {
        python_client(&url, Transport::StreamableHttp, &["--calls", "3"])
    })
    .await
    .unwrap();
    assert_eq!(out["add_results"].as_array().unwrap().len(), 3, "{out}");
    assert_eq!(out["echo"], "héllo ✓", "{out}");
    // the server's own answers: no legacy session was opened, no round went through the
    // bridge, and the route without an era was probed once as modern
    assert_eq!(
        metric(&sidecar, "mcp_sidecar_bridge_sessions_total", &[]).await,
        0.0
    );
    assert_eq!(
        metric(&sidecar, "mcp_sidecar_bridge_input_rounds_total", &[]).await,
        0.0
    );
    assert_eq!(
        metric(
            &sidecar,
            "mcp_sidecar_era_probes_total",
            &[("route", "probed"), ("era", "modern")]
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &sidecar,
            "mcp_sidecar_era_probes_total",
            &[("route", "fixed")]
        )
        .await,
        0.0
    );
    assert!(!sidecar.log().contains("via=bridged"));
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_on_one_pooled_session_get_only_their_own_progress_and_logs() {
    let eras = Eras::start("eras-mux", 1, "", &fastmcp_route);
    let client = http();
    let url = eras.sidecar(0).url("/mcp");
    // the same id and progress token from every client, at the same time, on the one pooled
    // legacy session of this pod
    let progress = |text: &str| {
        request(
            1,
            "tools/call",
            json!({"name": "progress_echo", "arguments": {"text": text},
                "_meta": {"progressToken": "p"}}),
        )
    };
    let logs = |level: Option<&str>| {
        let mut body = request(
            1,
            "tools/call",
            json!({"name": "log_levels", "arguments": {}}),
        );
        if let Some(level) = level {
            body["params"]["_meta"]["io.modelcontextprotocol/logLevel"] = json!(level);
        }
        body
    };
    let bodies = [
        progress("first"),
        progress("second"),
        progress("third"),
        logs(Some("debug")),
        logs(Some("error")),
        logs(None),
    ];
    let replies =
        futures_util::future::join_all(bodies.iter().map(|b| modern(&client, &url, &[], b))).await;
    for (reply, text) in replies[..3].iter().zip(["first", "second", "third"]) {
        assert_eq!(reply.text(), text);
        let seen: Vec<&Value> = reply
            .msgs
            .iter()
            .filter(|m| m["method"] == "notifications/progress")
            .collect();
        assert_eq!(seen.len(), 3, "{reply:?}");
        for m in seen {
            assert_eq!(m["params"]["progressToken"], "p", "the client's own token");
            assert_eq!(
                m["params"]["message"], text,
                "only its own progress: {reply:?}"
            );
        }
        assert_eq!(reply.last()["id"], 1);
    }
    let levels = |reply: &Reply| -> Vec<String> {
        assert_eq!(reply.text(), "logged");
        reply
            .msgs
            .iter()
            .filter(|m| m["method"] == "notifications/message")
            .map(|m| m["params"]["level"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(levels(&replies[3]), ["debug", "info", "warning", "error"]);
    assert_eq!(levels(&replies[4]), ["error"]);
    assert_eq!(levels(&replies[5]), Vec::<String>::new());
    // one pooled session served them all
    assert_eq!(
        metric(eras.sidecar(0), "mcp_sidecar_bridge_sessions_total", &[]).await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pooled_session_the_server_forgot_is_opened_again() {
    let mut eras = Eras::start("eras-forgot", 1, "", &fastmcp_route);
    let client = http();
    let url = eras.sidecar(0).url("/mcp");
    let echo = |text: &str| {
        request(
            1,
            "tools/call",
            json!({"name": "echo", "arguments": {"text": text}}),
        )
    };
    assert_eq!(
        modern(&client, &url, &[], &echo("before")).await.text(),
        "before"
    );
    // the MCP server restarts: it forgets every session
    let (ip, port) = (eras.pods[0].0.ip.clone(), eras.pods[0].0.port);
    eras.pods[0].0.proc.kill();
    let capture = eras.pods[0].2.clone();
    let dir = capture.parent().unwrap().to_path_buf();
    eras.pods[0].0 = FastMcp::start_args(
        &dir,
        &ip,
        port,
        Transport::StreamableHttp,
        &["--capture", capture.to_str().unwrap()],
    );
    assert_eq!(
        modern(&client, &url, &[], &echo("after")).await.text(),
        "after"
    );
    let sessions = "mcp_sidecar_bridge_sessions_total";
    let s = eras.sidecar(0);
    assert_eq!(metric(s, sessions, &[("event", "established")]).await, 1.0);
    assert_eq!(
        metric(s, sessions, &[("event", "re_established")]).await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_leaving_a_resumed_call_cancels_it_upstream_on_the_pod_holding_it() {
    let eras = Eras::start("eras-cancel-resumed", 2, "", &fastmcp_route);
    let client = http();
    let (a, b) = (eras.sidecar(0).url("/mcp"), eras.sidecar(1).url("/mcp"));
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let counters = |url: String| {
        let client = client.clone();
        async move {
            let reply = call(&client, &url, &[], 1, "cancelled_calls", json!({})).await;
            let v: Value = serde_json::from_str(&reply.text()).unwrap();
            (v["started"].as_i64().unwrap(), v["count"].as_i64().unwrap())
        }
    };
    // the retry reaches the holding pod itself (1), or another pod that carries it (2)
    for (n, retry_url) in [(1, &a), (2, &b)] {
        let body = request(
            10 * n,
            "tools/call",
            json!({"name": "ask_then_wait", "arguments": {}}),
        );
        let asked = input_required(&modern(&client, &a, &[], &body).await);
        let name = json!({"action": "accept", "content": {"name": "Ada"}});
        let retry = retry_body(10 * n + 1, "ask_then_wait", &asked, &asked.state, name);
        // the client gives up while the server waits: its connection closes
        let gone = mcp_post(&impatient, retry_url)
            .header("mcp-protocol-version", MODERN)
            .header("mcp-method", "tools/call")
            .header("mcp-name", "ask_then_wait")
            .body(retry.to_string())
            .send()
            .await;
        assert!(gone.is_err(), "the call should still be waiting: {gone:?}");
        let url = a.clone();
        eventually(
            Duration::from_secs(20),
            "the resumed call is cancelled upstream",
            || {
                let url = url.clone();
                async move { counters(url).await == (n, n) }
            },
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_route_whose_server_changes_era_is_probed_again() {
    let dir = test_dir("eras-era-change");
    let mut modern_up = ModernServer::start(&dir);
    let port = modern_up.port;
    let sidecar = Sidecar::start(
        &dir,
        &format!(
            "routes:\n{}",
            Sidecar::route("/mcp", &format!("http://127.0.0.1:{port}/mcp"), "changing")
        ),
    );
    let sidecar = &sidecar;
    let basics = || {
        let url = sidecar.url("/mcp");
        tokio::task::spawn_blocking(move || modern_py(&url, "pin", "basics", &[]))
    };
    let out = basics().await.unwrap();
    assert_modern_ok(&out);
    assert_eq!(out["server"], format!("modern-{port}"), "{out}");

    // the deployment rolls back to a legacy server on the same address
    modern_up.proc.kill();
    let _legacy_up = FastMcp::start_on(&dir, "127.0.0.1", port, Transport::StreamableHttp);
    // the first modern request may still go through untouched (and fail); the verdict is
    // doubted then, and the next ones are bridged
    let mut outs = vec![];
    for _ in 0..3 {
        let out = basics().await.unwrap();
        let ok = out["ok"] == true;
        outs.push(out);
        if ok {
            break;
        }
    }
    let last = outs.last().unwrap();
    assert_modern_ok(last);
    assert_eq!(last["server"], format!("fastmcp-{port}"), "{outs:?}");
    assert!(outs.len() <= 2, "{outs:?}");
    let probes = "mcp_sidecar_era_probes_total";
    assert_eq!(metric(sidecar, probes, &[("era", "modern")]).await, 1.0);
    assert_eq!(metric(sidecar, probes, &[("era", "legacy")]).await, 1.0);
}

/// FastMCP 1.x's own `ctx.session.list_roots()` (and `create_message` without a related
/// request id) relates to no call: the server sends it on the session's GET stream. A legacy client gets it there; the bridge
/// watches that stream for its pooled session and hands the request to the call in flight.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_request_on_the_sessions_get_stream_reaches_the_modern_client() {
    let dir = test_dir("eras-unrelated");
    let up = FastMcp::start(&dir, Transport::StreamableHttp);
    let sidecar = Sidecar::start(
        &dir,
        &format!(
            "routes:\n{}",
            Sidecar::route("/mcp", &format!("{}/mcp", up.base()), "fastmcp")
        ),
    );
    // the drivers give up after 60 s: the wait is bounded either way
    let url = sidecar.url("/mcp");
    let outs = tokio::task::spawn_blocking(move || {
        [
            modern_ts(&url, "pin", "roots", &["list_roots_unrelated", "{}"]),
            modern_py(&url, "pin", "roots", &["list_roots_unrelated", "{}"]),
        ]
    })
    .await
    .unwrap();
    for out in &outs {
        assert_modern_ok(out);
        assert_eq!(texts(out), json!([r#"["file:///client-root"]"#]), "{out}");
    }

    // with another call in flight on the pooled session nobody can tell whose request it
    // is: refused, so the server's call ends (with the error) instead of waiting for ever
    let client = http();
    let url = sidecar.url("/mcp");
    let waiting = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            call(&client, &url, &[], 1, "long_wait", json!({"seconds": 4})).await
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let reply = call(&client, &url, &[], 2, "list_roots_unrelated", json!({})).await;
    let r = reply.result();
    assert_eq!(r["isError"], true, "{reply:?}");
    assert!(
        r["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("relates to no call"),
        "{reply:?}"
    );
    assert_eq!(waiting.await.unwrap().text(), "waited");
}

//! The admin listener: liveness, readiness and Prometheus metrics. It listens on its own
//! address so it can stay off the Service that clients reach.

use crate::metrics;
use crate::store::{Backend, SessionStore};
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use serde_json::json;
use std::sync::Arc;

pub struct AdminApp {
    store: Arc<dyn SessionStore>,
}

impl AdminApp {
    pub fn new(store: Arc<dyn SessionStore>) -> AdminApp {
        AdminApp { store }
    }

    /// Ready unless the process is broken. A Redis outage reports `degraded` with 200: taking
    /// every pod out of the Service because Redis blinked would turn a partial outage (no
    /// cross-pod continuity) into a total one.
    async fn readiness(&self) -> (StatusCode, serde_json::Value) {
        let backend = self.store.backend();
        match (backend, self.store.ping().await) {
            (Backend::Memory, _) => (
                StatusCode::OK,
                json!({"status": "ready", "store": "memory",
                       "note": "single-pod mode: sessions are not shared with other pods"}),
            ),
            (Backend::Redis, Ok(())) => {
                (StatusCode::OK, json!({"status": "ready", "store": "redis"}))
            }
            (Backend::Redis, Err(e)) => (
                StatusCode::OK,
                json!({"status": "degraded", "store": "redis", "reason": e.to_string()}),
            ),
        }
    }
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .expect("static response parts are valid")
}

fn respond_json(status: StatusCode, v: serde_json::Value) -> Response<Vec<u8>> {
    respond(status, "application/json", v.to_string().into_bytes())
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.method != http::Method::GET {
            return respond_json(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({"error": "method not allowed"}),
            );
        }
        match req.uri.path() {
            "/healthz" => respond_json(StatusCode::OK, json!({"status": "ok"})),
            "/readyz" => {
                let (status, body) = self.readiness().await;
                respond_json(status, body)
            }
            "/metrics" => respond(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics::render(),
            ),
            _ => respond_json(StatusCode::NOT_FOUND, json!({"error": "not found"})),
        }
    }
}

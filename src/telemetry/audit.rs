//! The audit log: one JSON line per use of a tool, a resource or a prompt (`tools/call`,
//! `resources/read`, `prompts/get`), refused ones included, written by the pod the client
//! reached (a pod serving a peer's forwarded request writes none), on the log target `audit` (apart
//! from the `access` lines, so it can be shipped and kept on its own terms) and, with
//! `audit.file`, appended to a file of bare JSON lines. A line names who, what, where and how
//! it ended; never the arguments, a key, a token or a header.
//!
//! The file is written by a thread of its own from a bounded queue: a slow disk never holds a
//! request up; a line that finds the queue full is counted in
//! `mcp_sidecar_audit_lines_dropped_total` instead.

use crate::metrics::METRICS;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::OnceLock;
use std::time::SystemTime;

/// Lines waiting for the file writer at most.
const QUEUE: usize = 4096;

/// The methods that are audited: using a tool, reading a resource, getting a prompt.
pub fn audited(method: &str) -> bool {
    matches!(method, "tools/call" | "resources/read" | "prompts/get")
}

/// How an audited request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The MCP server answered with a 2xx (a tool's own `isError` is inside that answer).
    Ok,
    /// The caller's groups do not allow the tool (`tool_groups`).
    RefusedByPolicy,
    /// The sidecar refused it otherwise (no or bad key, session of another user, limits...).
    Refused,
    /// The MCP server answered with an error status, or could not be reached.
    Error,
}

/// One audit line.
#[derive(Debug, Serialize)]
pub struct Line<'a> {
    /// RFC 3339, UTC, milliseconds.
    pub time: String,
    pub pod: &'a str,
    pub route: &'a str,
    /// The hub user; absent for an anonymous caller.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<&'a str>,
    pub method: &'a str,
    /// The tool, resource (URI without query) or prompt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<&'a str>,
    pub outcome: Outcome,
    pub status: u16,
    pub duration_ms: f64,
    pub request_id: &'a str,
    /// The JSON-RPC id, as sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jsonrpc_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<&'a str>,
    /// How it was served (`local`, `forwarded`, `recovered`, `shared`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<&'a str>,
    /// The pod (peer address) this one sent the request to, when another pod served it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forwarded_to: Option<&'a str>,
    /// The trace the request's span belongs to, to go from a line to its trace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

/// Formats `t` as the line's `time`.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

static FILE: OnceLock<PathBuf> = OnceLock::new();
static WRITER: OnceLock<Option<SyncSender<String>>> = OnceLock::new();

/// Checks that `path` can be appended to, and has every line written there too. Once, at
/// startup.
pub fn install(path: Option<&Path>) -> Result<(), String> {
    if let Some(path) = path {
        open(path).map_err(|e| format!("audit.file: cannot append to {}: {e}", path.display()))?;
        let _ = FILE.set(path.to_path_buf());
    }
    Ok(())
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// The file writer's queue, its thread started on first use (in the serving process).
fn writer() -> Option<&'static SyncSender<String>> {
    let path = FILE.get()?;
    WRITER
        .get_or_init(|| {
            let file = match open(path) {
                Ok(f) => f,
                Err(e) => {
                    log::error!(
                        "audit.file {}: {e}; lines go to the log only",
                        path.display()
                    );
                    return None;
                }
            };
            let (tx, rx) = sync_channel::<String>(QUEUE);
            let spawned = std::thread::Builder::new()
                .name("audit-file".into())
                .spawn(move || {
                    let mut out = BufWriter::new(file);
                    while let Ok(line) = rx.recv() {
                        let written = out.write_all(line.as_bytes()).and_then(|()| {
                            // a burst is written at once, then flushed
                            for more in rx.try_iter() {
                                out.write_all(more.as_bytes())?;
                            }
                            out.flush()
                        });
                        if let Err(e) = written {
                            log::warn!("audit.file: {e}");
                        }
                    }
                });
            spawned.ok().map(|_| tx)
        })
        .as_ref()
}

/// Whether audit lines go anywhere (the log target is enabled, or a file is configured): a
/// request's target is read only then.
pub fn enabled() -> bool {
    FILE.get().is_some() || log::log_enabled!(target: "audit", log::Level::Info)
}

/// Writes one line: to the `audit` log target, and to `audit.file` when configured.
pub fn write(line: &Line) {
    let to_log = log::log_enabled!(target: "audit", log::Level::Info);
    let to_file = writer();
    if !to_log && to_file.is_none() {
        return;
    }
    let Ok(json) = serde_json::to_string(line) else {
        return;
    };
    if to_log {
        log::info!(target: "audit", "{json}");
    }
    if let Some(tx) = to_file {
        match tx.try_send(json + "\n") {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                METRICS.audit_lines_dropped.inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_no_more_than_it_should() {
        let line = Line {
            time: timestamp(SystemTime::UNIX_EPOCH),
            pod: "10.0.0.1:8081",
            route: "demo",
            user: Some("alice"),
            method: "tools/call",
            target: Some("add"),
            outcome: Outcome::RefusedByPolicy,
            status: 403,
            duration_ms: 1.5,
            request_id: "r1",
            jsonrpc_id: Some("7"),
            session_id: None,
            via: None,
            forwarded_to: None,
            trace_id: None,
        };
        let v: serde_json::Value = serde_json::to_value(&line).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "time": "1970-01-01T00:00:00.000Z", "pod": "10.0.0.1:8081", "route": "demo",
                "user": "alice", "method": "tools/call", "target": "add",
                "outcome": "refused_by_policy", "status": 403, "duration_ms": 1.5,
                "request_id": "r1", "jsonrpc_id": "7"
            })
        );
        assert!(audited("tools/call") && audited("resources/read") && audited("prompts/get"));
        assert!(!audited("tools/list") && !audited("initialize"));
    }
}

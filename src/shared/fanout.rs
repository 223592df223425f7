//! The standalone GET stream of a shared upstream session, fanned out. A server allows one GET
//! stream per session, so the pod holding a shared session opens it once, on behalf of every
//! client of the context, and hands each event (a notification that belongs to no request, or
//! a server request of the session's own) to every client that holds a GET stream. The upstream
//! stream closes when the last client's stream does.

use crate::protocol::chunked::Chunked;
use crate::protocol::messages::EventScanner;
use crate::route::Route;
use bytes::Bytes;
use log::{info, warn};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, oneshot};

/// Events a slow client may fall behind by before it loses some.
const BACKLOG: usize = 256;

/// What opening the upstream GET stream came to.
pub enum Opened {
    /// Events as they come; the channel closes when the upstream stream ends.
    Stream(broadcast::Receiver<Bytes>),
    /// The upstream has no GET stream for the session (its status: 405, 404, …).
    Refused(u16),
    Unreachable(String),
}

pub struct Fanouts {
    /// Upstream session id → the sender of its running stream.
    running: Mutex<HashMap<String, broadcast::Sender<Bytes>>>,
    /// The largest event held while it arrives (`limits.max_held_message`); a stream sending
    /// a larger one is ended rather than held without bound.
    max_held: usize,
}

/// What the upstream GET needs.
pub struct Target<'a> {
    pub route: &'a Route,
    pub path: &'a str,
    pub upstream_sid: &'a str,
    pub protocol_version: Option<&'a str>,
    pub headers: Vec<(String, String)>,
}

impl Fanouts {
    pub fn new(max_held: usize) -> Fanouts {
        Fanouts {
            running: Mutex::default(),
            max_held,
        }
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, broadcast::Sender<Bytes>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins the session's upstream GET stream, opening it when nobody holds it yet.
    pub async fn subscribe(self: &Arc<Self>, t: Target<'_>, timeout: Duration) -> Opened {
        let (tx, rx) = {
            let mut running = self.running();
            if let Some(tx) = running.get(t.upstream_sid) {
                return Opened::Stream(tx.subscribe());
            }
            // registered before it opens, so concurrent first clients share one upstream GET
            let (tx, rx) = broadcast::channel(BACKLOG);
            running.insert(t.upstream_sid.to_string(), tx.clone());
            (tx, rx)
        };
        let head = request_head(&t);
        let (opened_tx, opened_rx) = oneshot::channel();
        let this = Arc::clone(self);
        let sid = t.upstream_sid.to_string();
        let addr = t.route.upstream_addr;
        let server = t.route.server_name.clone();
        let sender = tx.clone();
        tokio::spawn(async move {
            this.run(addr, head, sender, opened_tx, &sid, &server).await;
        });
        let outcome = match tokio::time::timeout(timeout, opened_rx).await {
            Ok(Ok(Ok(()))) => return Opened::Stream(rx),
            Ok(Ok(Err(status))) => Opened::Refused(status),
            Ok(Err(_)) => Opened::Unreachable("the MCP server could not be reached".into()),
            Err(_) => Opened::Unreachable("the MCP server did not answer in time".into()),
        };
        self.forget(t.upstream_sid, &tx);
        outcome
    }

    /// Reads the upstream stream and broadcasts its events until it ends or nobody listens.
    async fn run(
        &self,
        addr: SocketAddr,
        head: String,
        tx: broadcast::Sender<Bytes>,
        opened: oneshot::Sender<Result<(), u16>>,
        sid: &str,
        server: &str,
    ) {
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            self.forget(sid, &tx);
            return;
        };
        if stream.write_all(head.as_bytes()).await.is_err() {
            self.forget(sid, &tx);
            return;
        }
        let mut raw = Vec::with_capacity(4096);
        let mut buf = vec![0u8; 16 * 1024];
        // the response head
        let (status, chunked, rest) = loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    self.forget(sid, &tx);
                    return;
                }
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
                let status = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse::<u16>().ok())
                    .unwrap_or(0);
                let chunked = head.contains("transfer-encoding: chunked");
                break (status, chunked, raw[end + 4..].to_vec());
            }
            if raw.len() > 64 * 1024 {
                self.forget(sid, &tx);
                return;
            }
        };
        if status != 200 {
            self.forget(sid, &tx);
            let _ = opened.send(Err(status));
            return;
        }
        let _ = opened.send(Ok(()));
        info!("shared upstream session {sid} of {server}: GET stream opened for its clients");
        let mut decoder = Chunked::default();
        let mut pending = Vec::new();
        let mut feed = |data: &[u8], pending: &mut Vec<u8>| -> bool {
            if chunked {
                if decoder.decode(data, pending).is_err() {
                    return false;
                }
            } else {
                pending.extend_from_slice(data);
            }
            true
        };
        let mut scanner = EventScanner::default();
        let mut ok = feed(&rest, &mut pending);
        while ok {
            let mut taken = 0;
            while let Some(n) = scanner.next_end(&pending[taken..]) {
                let event = &pending[taken..taken + n];
                taken += n;
                // ids belong to the upstream session's stream, which clients cannot resume
                if tx.send(strip_ids(event)).is_err() {
                    // nobody listens any more
                    self.forget(sid, &tx);
                    return;
                }
            }
            pending.drain(..taken);
            if pending.len() > self.max_held {
                warn!("shared upstream session {sid} of {server}: an event on the GET stream exceeds limits.max_held_message; the stream is ended");
                break;
            }
            if tx.receiver_count() == 0 {
                break;
            }
            match tokio::time::timeout(Duration::from_secs(15), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => ok = feed(&buf[..n], &mut pending),
                // quiet: check whether anyone still listens
                Err(_) => {}
            }
        }
        if tx.receiver_count() > 0 {
            warn!("shared upstream session {sid} of {server}: GET stream ended; its clients' streams end too");
        }
        self.forget(sid, &tx);
    }

    fn forget(&self, sid: &str, tx: &broadcast::Sender<Bytes>) {
        let mut running = self.running();
        if running.get(sid).is_some_and(|t| t.same_channel(tx)) {
            running.remove(sid);
        }
    }
}

fn request_head(t: &Target) -> String {
    let mut head = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\nMcp-Session-Id: {}\r\n",
        t.path, t.route.upstream_authority, t.upstream_sid
    );
    if let Some(v) = t.protocol_version {
        head.push_str(&format!("MCP-Protocol-Version: {v}\r\n"));
    }
    for (n, v) in &t.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// An event without its `id:` lines.
fn strip_ids(event: &[u8]) -> Bytes {
    let text = String::from_utf8_lossy(event);
    if !text.lines().any(|l| l.starts_with("id:")) {
        return Bytes::copy_from_slice(event);
    }
    let mut out = String::with_capacity(event.len());
    for line in text.split_inclusive('\n') {
        if !line.starts_with("id:") {
            out.push_str(line);
        }
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_are_dropped_and_the_rest_kept() {
        let e = b"event: message\r\nid: abc:1\r\ndata: {\"a\":1}\r\n\r\n";
        assert_eq!(
            &strip_ids(e)[..],
            b"event: message\r\ndata: {\"a\":1}\r\n\r\n"
        );
        let plain = b"data: x\n\n";
        assert_eq!(&strip_ids(plain)[..], plain);
    }
}

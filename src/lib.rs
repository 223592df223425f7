//! mcp-sidecar: a Pingora reverse proxy that runs beside an MCP server in its pod, keeps MCP
//! sessions alive across autoscaled pods through a shared store, and isolates hub users.
//!
//! Modules follow a request's path: `config` (read once at startup), `route` (which local
//! server), `protocol` (MCP and JSON-RPC knowledge), `store` (sessions), `proxy` (the Pingora
//! phases), `bridge` (modern clients of legacy servers), `admin` and `metrics` (operations).

pub mod admin;
pub mod bridge;
pub mod clients;
pub mod config;
pub mod hub;
pub mod legacy;
pub mod metrics;
pub mod peer;
pub mod protocol;
pub mod proxy;
pub mod route;
pub mod session;
pub mod shared;
pub mod shutdown;
pub mod store;
pub mod telemetry;

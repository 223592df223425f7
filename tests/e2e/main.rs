//! End-to-end tests: real MCP servers and clients, real Redis, the real sidecar binary, all on
//! loopback. One test binary so that cargo runs every test in parallel.

mod harness;

mod clients;
mod config_check;
mod drain;
mod edges;
mod eras;
mod hardening;
mod hop;
mod hub;
mod legacy;
mod ownership;
mod pods;
mod redis_infra;
mod redis_mode;
mod shared;
mod store_redis;
mod streaming;
mod telemetry;

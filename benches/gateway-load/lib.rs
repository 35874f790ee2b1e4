//! The gateway load benchmark lives in `benches/gateway_load.rs`:
//! `cargo bench -p omega-gateway-load`.

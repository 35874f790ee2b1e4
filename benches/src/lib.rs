//! Criterion benches for Omega Penta, each layer beside the peers named in its issue.
//!
//! Run them with `cargo bench -p omega-benches`; a group compares the same work done by our
//! layer and by each peer in one run, so the ratios are what to read.

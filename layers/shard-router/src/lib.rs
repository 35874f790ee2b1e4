//! # omega-shard-router
//!
//! `ShardRouterLayer`: consistent routing of keys to nodes. Being built; see the README for its
//! status.

#![cfg_attr(docsrs, feature(doc_cfg))]

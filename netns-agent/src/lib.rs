//! netns-agent as a library: builds network instances in their own namespaces and
//! enforces their ACLs with eBPF. `main.rs` is the CLI over it; the tests load its
//! programs and maps directly. See ARCHITECTURE.md for how a config becomes kernel state.

pub mod agent;
pub mod config;
pub mod control;
pub mod datapath;
pub mod eve;
pub mod flowlog;
pub mod flows;
pub mod metrics;
pub mod netlink;
pub mod netns;
pub mod plan;
pub mod pool;
pub mod rcu;
pub mod reconcile;
pub mod services;
pub mod source;
pub mod state;
pub mod status;

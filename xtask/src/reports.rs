//! What xtask reads of the agent's output, typed: the fields it looks at of `status
//! --json`, `flows --json`, the flow log and the agent's record (state.json), named and
//! typed as the agent prints them (netns-agent's `status::StatusReport`,
//! `flows::FlowsReport`, `flowlog::LogRecord`, `state::AppliedState`); other fields are
//! ignored. Not those types themselves: xtask must build on a fresh clone, before `cargo
//! xtask setup` installed the eBPF toolchain, and building netns-agent needs the eBPF
//! object.

use serde::Deserialize;

/// `netns-agent status --json`.
#[derive(Debug, Deserialize)]
pub struct Status {
    pub networks: Vec<NetworkStatus>,
    pub limits: Vec<LimitStatus>,
}

#[derive(Debug, Deserialize)]
pub struct NetworkStatus {
    pub name: String,
    pub tunnel: Option<TunnelStatus>,
}

#[derive(Debug, Deserialize)]
pub struct TunnelStatus {
    pub state: TunnelState,
    pub encap: Option<String>,
    pub remote: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TunnelState {
    Up,
    Connecting,
    Down,
    Stopped,
}

/// A `limit` ACE's bucket.
#[derive(Debug, Deserialize)]
pub struct LimitStatus {
    pub app: String,
    pub passed: u64,
}

/// `netns-agent flows --json`.
#[derive(Debug, Deserialize)]
pub struct Flows {
    pub flows: Vec<FlowRecord>,
}

#[derive(Debug, Deserialize)]
pub struct FlowRecord {
    pub app: String,
    pub dst: String,
    pub mark: String,
    pub verdict: Verdict,
    /// The source as translated on the way out, step by step ("address:port").
    pub translated: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Drop,
}

/// A line of the flow log: a flow's record ("start", "interim", "end", "dropped") or a
/// DNS request's ("dns", no `dst`).
#[derive(Debug, Deserialize)]
pub struct LogRecord {
    pub kind: String,
    pub app: String,
    pub dst: Option<String>,
    /// The name the app's DNS request for the remote was answered for.
    pub dns_name: Option<String>,
}

/// The agent's record, `<state_dir>/state.json`.
#[derive(Debug, Deserialize)]
pub struct Record {
    #[serde(default)]
    pub agent_pid: u32,
    #[serde(default)]
    pub applies: u64,
    pub last_apply: Option<LastApply>,
}

#[derive(Debug, Deserialize)]
pub struct LastApply {
    pub duration_ms: f64,
    pub errors: Vec<String>,
}

impl Record {
    /// The record in `state_dir`, if there is one that parses.
    pub fn read(state_dir: &std::path::Path) -> Option<Record> {
        serde_json::from_slice(&std::fs::read(state_dir.join("state.json")).ok()?).ok()
    }
}

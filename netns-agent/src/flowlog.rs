//! The flow log: one record per flow event, as JSON lines. The data path reports starts,
//! first drops and TCP closes (ring buffer `FLOWEV_V1`); the agent's sweep adds the ends
//! of entries that expire and interim records of long flows. Records go to the log file
//! (rotated by size) and to every `netns-agent flows --follow`.

use std::{
    collections::HashMap,
    io::Write as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use netns_ebpf_common::{
    ct::{CtKey, CtValue, DIR_ORIG, DIR_REPLY, FLAG_ENDED, FLAG_JUDGED_TO_APP, VERDICT_DROP},
    event::{FlowEvent, EVENT_DROPPED, EVENT_END, EVENT_START},
    map_names, mark, Stat,
};
use serde::{Deserialize, Serialize};
use tokio::{io::unix::AsyncFd, sync::broadcast};
use tracing::warn;

use crate::state::AppliedState;

/// Old log files kept beside the current one (`<log>.1` .. `<log>.3`).
const KEEP_ROTATED: u32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// The flow's entry was made (allowed).
    Start,
    /// The flow is alive; counters so far.
    Interim,
    /// The flow ended (`end_reason` says how); final counters.
    End,
    /// The flow's first packet was dropped (one record per dropped flow).
    Dropped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// TCP: both FINs, or an RST.
    Closed,
    /// Idle past its timeout.
    Expired,
    /// Its NI, port or port map went in a config change.
    Removed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Accept,
    Drop,
}

/// One flow log record: EVE's FlowRecord fields, from the app's point of view (tx: what
/// the app sent).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FlowLogRecord {
    pub kind: RecordKind,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub end_reason: Option<EndReason>,
    pub ni: String,
    pub app: String,
    pub app_num: u32,
    pub proto: u8,
    /// The initiator's end and the responder's end.
    pub src: Ipv4Addr,
    pub sport: u16,
    pub dst: Ipv4Addr,
    pub dport: u16,
    /// The flow came toward the app (a port map, the device, the outside of a switch NI).
    pub inbound: bool,
    pub acl_id: u32,
    /// The ACE is the user's (else one of EVE's implicit rules or the default drop).
    pub user_ace: bool,
    pub action: Action,
    /// Dropped flows: the counter that counted the drop.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub drop_reason: Option<String>,
    pub mark: u32,
    /// Unix time, seconds.
    pub start_time: f64,
    pub last_time: f64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
}

/// CLOCK_MONOTONIC (the programs' clock) to Unix time.
#[derive(Clone, Copy)]
pub struct Clock {
    offset_secs: f64,
}

impl Clock {
    pub fn now() -> Clock {
        let unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        Clock { offset_secs: unix - crate::datapath::monotonic_ns() as f64 / 1e9 }
    }

    fn unix(&self, monotonic_ns: u64) -> f64 {
        ((self.offset_secs + monotonic_ns as f64 / 1e9) * 1000.0).round() / 1000.0
    }
}

/// The record of an entry (`key`, `v`) of zone `key.zone`.
pub fn record(kind: RecordKind, end_reason: Option<EndReason>, key: &CtKey, v: &CtValue, names: &AppliedState, clock: Clock) -> FlowLogRecord {
    let ((src, sport), (dst, dport)) = if v.orig_is_a != 0 {
        ((key.addr_a, key.port_a), (key.addr_b, key.port_b))
    } else {
        ((key.addr_b, key.port_b), (key.addr_a, key.port_a))
    };
    let m = mark::decode(v.mark);
    let inbound = v.flags & FLAG_JUDGED_TO_APP != 0;
    // The app's side: the original direction of a flow it started, the replies of one
    // that came toward it.
    let (tx, rx) = if inbound { (DIR_REPLY, DIR_ORIG) } else { (DIR_ORIG, DIR_REPLY) };
    let drop = v.verdict == VERDICT_DROP;
    FlowLogRecord {
        kind,
        end_reason,
        ni: names.zones.get(&key.zone).cloned().unwrap_or_else(|| format!("zone{}", key.zone)),
        app: names.apps.get(&m.app_num).cloned().unwrap_or_else(|| format!("app#{}", m.app_num)),
        app_num: m.app_num,
        proto: key.proto,
        src: Ipv4Addr::from(src),
        sport,
        dst: Ipv4Addr::from(dst),
        dport,
        inbound,
        acl_id: m.ace_id,
        user_ace: m.user_ace,
        action: if drop { Action::Drop } else { Action::Accept },
        drop_reason: None,
        mark: v.mark,
        start_time: clock.unix(v.first_seen_ns),
        last_time: clock.unix(v.last_seen_ns),
        tx_packets: v.packets[tx],
        tx_bytes: v.bytes[tx],
        rx_packets: v.packets[rx],
        rx_bytes: v.bytes[rx],
    }
}

/// The record of a data-path event.
pub fn record_of_event(e: &FlowEvent, names: &AppliedState, clock: Clock) -> Option<FlowLogRecord> {
    let (kind, end) = match e.kind {
        EVENT_START => (RecordKind::Start, None),
        EVENT_END => (RecordKind::End, Some(EndReason::Closed)),
        EVENT_DROPPED => (RecordKind::Dropped, None),
        _ => return None,
    };
    let mut r = record(kind, end, &e.key, &e.value, names, clock);
    if kind == RecordKind::Dropped {
        r.drop_reason = Stat::ALL.iter().find(|s| **s as u32 == e.reason).map(|s| s.name().to_string());
    }
    Some(r)
}

/// Where the records go: the log file (optional) and the followers.
pub struct FlowLog {
    file: Option<LogFile>,
    followers: broadcast::Sender<FlowLogRecord>,
    /// Interim records: when each live flow was last reported.
    reported: HashMap<CtKey, u64>,
    interim: Duration,
}

struct LogFile {
    path: PathBuf,
    max_bytes: u64,
    file: std::fs::File,
    size: u64,
}

impl LogFile {
    fn open(path: &Path, max_bytes: u64) -> Result<LogFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).with_context(|| format!("opening the flow log {}", path.display()))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(LogFile { path: path.to_path_buf(), max_bytes, file, size })
    }

    fn append(&mut self, line: &[u8]) -> Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > self.max_bytes {
            for i in (1..KEEP_ROTATED).rev() {
                let _ = std::fs::rename(rotated(&self.path, i), rotated(&self.path, i + 1));
            }
            std::fs::rename(&self.path, rotated(&self.path, 1)).with_context(|| format!("rotating {}", self.path.display()))?;
            *self = LogFile::open(&self.path, self.max_bytes)?;
        }
        self.file.write_all(line).with_context(|| format!("writing {}", self.path.display()))?;
        self.size += line.len() as u64;
        Ok(())
    }
}

/// The `n`th older flow log file.
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

impl FlowLog {
    pub fn new(path: Option<&Path>, max_bytes: u64, interim: Duration) -> Result<FlowLog> {
        let file = path.map(|p| LogFile::open(p, max_bytes)).transpose()?;
        Ok(FlowLog { file, followers: broadcast::channel(4096).0, reported: HashMap::new(), interim })
    }

    /// Where followers (`flows --follow`) subscribe.
    pub fn sender(&self) -> broadcast::Sender<FlowLogRecord> {
        self.followers.clone()
    }

    pub fn write(&mut self, r: FlowLogRecord) {
        if let Some(file) = self.file.as_mut() {
            if let Ok(mut line) = serde_json::to_vec(&r) {
                line.push(b'\n');
                if let Err(e) = file.append(&line) {
                    warn!("flow log: {e:#}");
                }
            }
        }
        // No follower: nothing to do.
        let _ = self.followers.send(r);
    }

    /// After a sweep: end records of the entries that expired (unless their TCP close
    /// was reported) and interim records of allowed flows alive past the interval since
    /// their start or their last report.
    pub fn after_sweep(&mut self, expired: &[(CtKey, CtValue)], live: &[(CtKey, CtValue)], names: &AppliedState, now_ns: u64) {
        let clock = Clock::now();
        for (k, v) in expired {
            self.reported.remove(k);
            if v.verdict != VERDICT_DROP && v.flags & FLAG_ENDED == 0 {
                self.write(record(RecordKind::End, Some(EndReason::Expired), k, v, names, clock));
            }
        }
        let interval = self.interim.as_nanos() as u64;
        let mut still = HashMap::with_capacity(self.reported.len());
        for (k, v) in live {
            if v.verdict == VERDICT_DROP || v.flags & FLAG_ENDED != 0 {
                continue;
            }
            let last = self.reported.get(k).copied().unwrap_or(v.first_seen_ns);
            if now_ns.saturating_sub(last) >= interval {
                self.write(record(RecordKind::Interim, None, k, v, names, clock));
                still.insert(*k, now_ns);
            } else if last != v.first_seen_ns {
                still.insert(*k, last);
            }
        }
        self.reported = still;
    }

    /// End records of entries a config change removed.
    pub fn removed(&mut self, entries: &[(CtKey, CtValue)], names: &AppliedState) {
        let clock = Clock::now();
        for (k, v) in entries {
            self.reported.remove(k);
            if v.verdict != VERDICT_DROP && v.flags & FLAG_ENDED == 0 {
                self.write(record(RecordKind::End, Some(EndReason::Removed), k, v, names, clock));
            }
        }
    }
}

/// Reads the data path's events into `queue` until aborted (the agent's run loop writes
/// them). Events the queue has no room for are counted and logged, never silently gone.
pub fn spawn_reader(pin_dir: PathBuf, queue: tokio::sync::mpsc::Sender<FlowEvent>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lost = 0u64;
        let result = read_events(pin_dir, |e| {
            if queue.try_send(*e).is_err() {
                lost += 1;
                if lost.is_power_of_two() {
                    warn!("flow log: {lost} events lost (the agent is behind)");
                }
            }
        })
        .await;
        if let Err(e) = result {
            warn!("flow events: {e:#}");
        }
    })
}

/// Reads the data path's events from the pinned ring buffer until the task is aborted,
/// handing each to `sink`.
async fn read_events(pin_dir: PathBuf, mut sink: impl FnMut(&FlowEvent)) -> Result<()> {
    let path = pin_dir.join(map_names::EVENTS);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let ring = RingBuf::try_from(aya::maps::Map::RingBuf(data)).context("the flow event ring buffer")?;
    // SAFETY: the ring buffer owns its fd, which stays open and the same while the
    // AsyncFd holds it.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("polling the flow event ring buffer: {e}"))?;
    loop {
        let mut ready = fd.readable_mut().await?;
        let ring = ready.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() >= std::mem::size_of::<FlowEvent>() {
                // SAFETY: the programs write whole `FlowEvent`s (repr(C), any bit pattern valid).
                let e = unsafe { std::ptr::read_unaligned(item.as_ptr() as *const FlowEvent) };
                sink(&e);
            }
        }
        ready.clear_ready();
    }
}

/// One record as a line of text (`flows --follow`).
pub fn print_line(r: &FlowLogRecord) {
    let kind = match (r.kind, r.end_reason) {
        (RecordKind::End, Some(reason)) => format!("end/{reason:?}").to_lowercase(),
        (kind, _) => format!("{kind:?}").to_lowercase(),
    };
    println!(
        "{:<12} {:<8} {:<8} {:>3} {:>21} -> {:<21} {:<6} ace {:<8} tx {}/{}B rx {}/{}B",
        kind,
        r.ni,
        r.app,
        r.proto,
        format!("{}:{}", r.src, r.sport),
        format!("{}:{}", r.dst, r.dport),
        if r.action == Action::Drop { "drop" } else { "accept" },
        r.acl_id,
        r.tx_packets,
        r.tx_bytes,
        r.rx_packets,
        r.rx_bytes
    );
}

//! The flow log: one record per flow event, as JSON lines. The data path reports starts,
//! first drops and TCP closes (ring buffer `FLOWEV_V2`); the agent's sweep adds the ends
//! of entries that expire or vanish (LRU eviction) and interim records of long flows; the
//! DNS proxies add each request. Records go to the log file (rotated by size) and to
//! every `netns-agent flows --follow`.
//!
//! The flow table (`FlowTable`) follows every live allowed flow from its start to its
//! end: it knows what to report when an entry vanishes unannounced, and it sums the
//! flows, packets and bytes of each ACE for the metrics.

use std::{
    collections::{BTreeMap, HashMap},
    io::Write as _,
    net::{Ipv4Addr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use netns_ebpf_common::{
    ct::{CtKey, CtValue, DIR_ORIG, DIR_REPLY, FLAG_ENDED, FLAG_JUDGED_TO_APP, VERDICT_DROP},
    event::{FlowEvent, EVENT_DROPPED, EVENT_END, EVENT_REPLACED, EVENT_START},
    map_names,
    mark::{self, implicit, DEFAULT_DROP_ACE_ID},
    Stat,
};
use serde::{Deserialize, Serialize};
use tokio::{io::unix::AsyncFd, sync::broadcast};
use tracing::warn;

use crate::{
    datapath::Maps,
    services::dns::{DnsLogEntry, DnsObserver},
    state::AppliedState,
};

/// Old log files kept beside the current one (`<log>.1` .. `<log>.3`).
const KEEP_ROTATED: u32 = 3;
/// A batch of records (a sweep's interim records may be tens of thousands) is written in
/// pieces of about this size, not held whole.
const FLUSH_BYTES: usize = 256 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// TCP: both FINs, or an RST.
    Closed,
    /// Idle past its timeout.
    Expired,
    /// Its NI, port or port map went in a config change.
    Removed,
    /// Its entry vanished between two sweeps without a close (the conntrack map, full,
    /// evicted it): the counters are those of the last sweep.
    Evicted,
    /// A new flow on its tuple took its entry (a SYN after a half close, a packet after
    /// it expired, before the sweep): its final counters.
    Replaced,
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
    /// The ACE's `name` in the config; EVE's name of an implicit rule.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub acl_name: Option<String>,
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
    /// The app's end as the remote sees it, after the NI's and the uplink's translation
    /// (once the translation is known: not on a start record, which comes first).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub translated: Option<SocketAddrV4>,
    /// The name the app asked the NI's DNS proxy for when it was given the remote's
    /// address.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dns_name: Option<String>,
}

/// A DNS request the NI's proxy answered (or refused), as a flow log record.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DnsRecord {
    pub kind: DnsKind,
    #[serde(flatten)]
    pub request: DnsLogEntry,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DnsKind {
    Dns,
}

/// One line of the flow log: a flow's record or a DNS request's.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LogRecord {
    Flow(FlowLogRecord),
    Dns(DnsRecord),
}

/// What a record's names come from: NIs, apps, ACE names, per applied state.
#[derive(Default)]
pub struct Names {
    zones: BTreeMap<u32, String>,
    apps: BTreeMap<u32, String>,
    /// (zone, app number, ACE id) -> the ACE's configured name (ids are unique per
    /// interface; an app with two interfaces on one NI may use an id twice: one wins).
    aces: HashMap<(u32, u32, u32), String>,
    /// (zone, app number) -> the app's bridge port there (when it has one port there).
    ports: HashMap<(u32, u32), Option<String>>,
}

impl Names {
    pub fn of(state: &AppliedState) -> Names {
        let mut by_app: HashMap<(u32, u32), Option<String>> = HashMap::new();
        for ni in state.nis.values() {
            for p in &ni.plan.ports {
                by_app.entry((ni.plan.zone(), p.app_num)).and_modify(|e| *e = None).or_insert_with(|| Some(p.bridge_port.clone()));
            }
        }
        Names {
            zones: state.zones.clone(),
            apps: state.apps.clone(),
            aces: state
                .nis
                .values()
                .flat_map(|n| n.plan.ports.iter().map(move |p| (n.plan.zone(), p)))
                .flat_map(|(zone, p)| p.ace_names.iter().map(move |(id, name)| ((zone, p.app_num, *id), name.clone())))
                .collect(),
            ports: by_app,
        }
    }

    /// The bridge port of app `app_num` on zone `zone` (`if<ifindex>` when the app has
    /// several there).
    pub fn port(&self, zone: u32, app_num: u32, ifindex: u32) -> String {
        self.ports.get(&(zone, app_num)).cloned().flatten().unwrap_or_else(|| format!("if{ifindex}"))
    }

    pub fn ni(&self, zone: u32) -> String {
        self.zones.get(&zone).cloned().unwrap_or_else(|| format!("zone{zone}"))
    }

    pub fn app(&self, app_num: u32) -> String {
        self.apps.get(&app_num).cloned().unwrap_or_else(|| format!("app#{app_num}"))
    }

    /// A user ACE's configured name, or the name EVE gives an implicit rule.
    pub fn ace(&self, zone: u32, app_num: u32, ace_id: u32, user_ace: bool) -> Option<String> {
        if user_ace {
            return self.aces.get(&(zone, app_num, ace_id)).cloned();
        }
        let name = match ace_id {
            DEFAULT_DROP_ACE_ID => "default_drop",
            implicit::APP_DHCP => "app_dhcp",
            implicit::APP_DNS => "app_dns",
            // EVE's 10 is both: a flow the device starts toward an app, and DHCP from a
            // switch NI's outside toward an app.
            implicit::EVE_INITIATED => "eve_initiated",
            implicit::APP_METADATA_HTTP => "app_metadata",
            _ => return None,
        };
        Some(name.to_string())
    }
}

/// Where a record's optional facts come from: the maps (translations) and the DNS
/// proxies (names).
#[derive(Clone, Copy)]
pub struct Lookups<'a> {
    pub names: &'a Names,
    pub maps: Option<&'a Maps>,
    pub dns: &'a DnsObserver,
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
pub fn record(kind: RecordKind, end_reason: Option<EndReason>, key: &CtKey, v: &CtValue, at: Lookups, clock: Clock) -> FlowLogRecord {
    let ((src, sport), (dst, dport)) = crate::flows::ends(key, v);
    let m = mark::decode(v.mark);
    let inbound = v.flags & FLAG_JUDGED_TO_APP != 0;
    // The app's side: the original direction of a flow it started, the replies of one
    // that came toward it.
    let (tx, rx) = if inbound { (DIR_REPLY, DIR_ORIG) } else { (DIR_ORIG, DIR_REPLY) };
    let drop = v.verdict == VERDICT_DROP;
    let (app_end, remote_end) = crate::flows::app_and_remote(key, v);
    let translated = if drop { None } else { translated_end(key, v, at) };
    FlowLogRecord {
        kind,
        end_reason,
        ni: at.names.ni(key.zone),
        app: at.names.app(m.app_num),
        app_num: m.app_num,
        proto: key.proto,
        src: Ipv4Addr::from(src),
        sport,
        dst: Ipv4Addr::from(dst),
        dport,
        inbound,
        acl_id: m.ace_id,
        acl_name: at.names.ace(key.zone, m.app_num, m.ace_id, m.user_ace),
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
        translated,
        dns_name: at.dns.name_of(key.zone, Ipv4Addr::from(app_end.0), Ipv4Addr::from(remote_end.0)),
    }
}

/// The app's end of an entry's flow after translation, from the NAT map (None: not
/// translated, or the map is not open).
fn translated_end(key: &CtKey, v: &CtValue, at: Lookups) -> Option<SocketAddrV4> {
    let maps = at.maps?;
    let (app_end, remote_end) = crate::flows::app_and_remote(key, v);
    crate::flows::translated(|k| maps.nat_entry(k), key.zone, key.proto, app_end, remote_end)
}

/// The record of a data-path event.
pub fn record_of_event(e: &FlowEvent, at: Lookups, clock: Clock) -> Option<FlowLogRecord> {
    let (kind, end) = match e.kind {
        EVENT_START => (RecordKind::Start, None),
        EVENT_END => (RecordKind::End, Some(EndReason::Closed)),
        EVENT_REPLACED => (RecordKind::End, Some(EndReason::Replaced)),
        EVENT_DROPPED => (RecordKind::Dropped, None),
        _ => return None,
    };
    let mut r = record(kind, end, &e.key, &e.value, at, clock);
    if kind == RecordKind::Dropped {
        r.drop_reason = Stat::ALL.iter().find(|s| **s as u32 == e.reason).map(|s| s.name().to_string());
    }
    Some(r)
}

/// Where the records go: the log file (optional) and the followers; the flow table.
pub struct FlowLog {
    file: Option<LogFile>,
    followers: broadcast::Sender<LogRecord>,
    table: Arc<Mutex<FlowTable>>,
    interim: Duration,
}

/// An ACE's traffic: (zone, app number, ACE id, user ACE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AceKey {
    pub zone: u32,
    pub app_num: u32,
    pub ace_id: u32,
    pub user_ace: bool,
}

impl AceKey {
    fn of(zone: u32, v: &CtValue) -> AceKey {
        let m = mark::decode(v.mark);
        AceKey { zone, app_num: m.app_num, ace_id: m.ace_id, user_ace: m.user_ace }
    }
}

/// Flows an ACE judged, and the packets and bytes (both ways) of the allowed ones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AceTotals {
    pub flows: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// A live allowed flow as last seen.
struct Tracked {
    value: CtValue,
    /// The ACE it counts for: the one that judged it first (a re-judge may change the
    /// mark; its traffic stays where it was counted, so no ACE's total goes down).
    ace: AceKey,
    /// When its last record (start or interim) was made.
    reported_ns: u64,
    /// The app's end after translation, once seen (the NAT entries may be gone by the
    /// time the flow's end is reported).
    translated: Option<SocketAddrV4>,
}

/// What the metrics count records by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RecordCount {
    Flow(RecordKind, Option<EndReason>),
    Dns,
}

impl RecordCount {
    /// The metrics' `kind` label.
    pub fn label(self) -> &'static str {
        match self {
            RecordCount::Flow(RecordKind::Start, _) => "start",
            RecordCount::Flow(RecordKind::Interim, _) => "interim",
            RecordCount::Flow(RecordKind::Dropped, _) => "dropped",
            RecordCount::Flow(RecordKind::End, Some(EndReason::Expired)) => "end_expired",
            RecordCount::Flow(RecordKind::End, Some(EndReason::Removed)) => "end_removed",
            RecordCount::Flow(RecordKind::End, Some(EndReason::Evicted)) => "end_evicted",
            RecordCount::Flow(RecordKind::End, Some(EndReason::Replaced)) => "end_replaced",
            RecordCount::Flow(RecordKind::End, _) => "end_closed",
            RecordCount::Dns => "dns",
        }
    }
}

/// Every live allowed flow, and what ended flows added up to per ACE.
#[derive(Default)]
pub struct FlowTable {
    /// (foldhash: the sweep hands the table every live flow, every few seconds.)
    live: foldhash::HashMap<CtKey, Tracked>,
    ended: foldhash::HashMap<AceKey, AceTotals>,
    /// When the last sweep started its walk: an allowed flow that began before it and
    /// that it did not see had already ended.
    last_walk_ns: u64,
    records: BTreeMap<RecordCount, u64>,
    /// Flows (key, start) that ended unclosed, by the sweep's expiry or by a replaced
    /// event, since the sweep before last ([0]: since the last one). An expired entry
    /// that a packet replaces just as the sweep takes it is reported by both (the
    /// program's update cannot say "only if it is still there"): the second report is
    /// the same end, and writes no record. Only ends that can race are kept (a closed
    /// flow's entry is never replaced with an event): few, where every flow closes.
    unclosed_ends: [foldhash::HashSet<(CtKey, u64)>; 2],
}

impl FlowTable {
    /// A flow seen (start event or sweep): followed from now on. A new flow (not the one
    /// followed under its key) counts for its ACE.
    fn see(&mut self, k: &CtKey, v: &CtValue, reported_ns: u64) {
        if let Some(t) = self.live.get_mut(k) {
            if t.value.first_seen_ns == v.first_seen_ns {
                // The same flow: the newer view (a late start event is older than a sweep's).
                if v.last_seen_ns >= t.value.last_seen_ns && v.packets[0] + v.packets[1] >= t.value.packets[0] + t.value.packets[1] {
                    t.value = *v;
                }
                return;
            }
            // Another flow under the key (a SYN reopened it): the old one ended as last seen.
            self.end(k, None);
        }
        let ace = AceKey::of(k.zone, v);
        self.ended.entry(ace).or_default().flows += 1;
        self.live.insert(*k, Tracked { value: *v, ace, reported_ns, translated: None });
    }

    /// A start event: followed, unless the last sweep's walk came after the flow began
    /// and did not find it (it ended before the agent got to its start: counted only).
    fn start(&mut self, k: &CtKey, v: &CtValue) {
        if !self.live.contains_key(k) && v.first_seen_ns < self.last_walk_ns {
            self.ended.entry(AceKey::of(k.zone, v)).or_default().flows += 1;
            return;
        }
        self.see(k, v, v.first_seen_ns);
    }

    /// Stops following `k`; its traffic (`last`, or as last seen) joins its ACE's totals.
    /// Returns the flow as followed. An end reported of a flow that began before the one
    /// followed under `k` ends nothing: a sweep saw the flow that replaced it (and `see`
    /// ended it) before its end event came.
    fn end(&mut self, k: &CtKey, last: Option<&CtValue>) -> Option<Tracked> {
        if let (Some(v), Some(t)) = (last, self.live.get(k)) {
            if v.first_seen_ns < t.value.first_seen_ns {
                return None;
            }
        }
        let mut t = self.live.remove(k)?;
        if let Some(v) = last.filter(|v| v.first_seen_ns == t.value.first_seen_ns) {
            t.value = *v;
        }
        let a = self.ended.entry(t.ace).or_default();
        a.packets += t.value.packets[0] + t.value.packets[1];
        a.bytes += t.value.bytes[0] + t.value.bytes[1];
        Some(t)
    }

    /// Whether the unclosed end of flow `k` that started at `first_seen_ns` is reported
    /// for the first time: false when the sweep's expiry or a replaced event reported it
    /// already (see `unclosed_ends`).
    fn first_unclosed_end(&mut self, k: &CtKey, first_seen_ns: u64) -> bool {
        let id = (*k, first_seen_ns);
        if self.unclosed_ends[1].contains(&id) {
            return false;
        }
        self.unclosed_ends[0].insert(id)
    }

    /// A sweep begins: the ends of the sweep before last can race no more.
    fn next_sweep(&mut self) {
        self.unclosed_ends.swap(0, 1);
        self.unclosed_ends[0].clear();
    }

    /// Per ACE: flows judged; packets and bytes of ended flows plus live ones so far.
    pub fn ace_totals(&self) -> Vec<(AceKey, AceTotals)> {
        let mut all = self.ended.clone();
        for t in self.live.values() {
            let a = all.entry(t.ace).or_default();
            a.packets += t.value.packets[0] + t.value.packets[1];
            a.bytes += t.value.bytes[0] + t.value.bytes[1];
        }
        let mut v: Vec<_> = all.into_iter().collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }

    /// Records written so far, by kind.
    pub fn records_written(&self) -> Vec<(RecordCount, u64)> {
        self.records.iter().map(|(k, n)| (*k, *n)).collect()
    }

    /// Allowed flows followed now.
    pub fn live_flows(&self) -> usize {
        self.live.len()
    }
}

struct LogFile {
    path: PathBuf,
    max_bytes: u64,
    file: std::fs::File,
    /// Bytes in the file.
    size: u64,
    /// Lines not yet written: a batch of records goes in one write (`flush`), not one
    /// system call per record.
    pending: Vec<u8>,
}

impl LogFile {
    fn open(path: &Path, max_bytes: u64) -> Result<LogFile> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening the flow log {}", path.display()))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(LogFile { path: path.to_path_buf(), max_bytes, file, size, pending: Vec::new() })
    }

    /// Adds a line, written by the next `flush`; a line that would take the file past its
    /// size first has the lines before it written and the file rotated.
    fn append(&mut self, line: &[u8]) -> Result<()> {
        let held = self.size + self.pending.len() as u64;
        if held > 0 && held + line.len() as u64 > self.max_bytes {
            self.flush()?;
            for i in (1..KEEP_ROTATED).rev() {
                let _ = std::fs::rename(rotated(&self.path, i), rotated(&self.path, i + 1));
            }
            std::fs::rename(&self.path, rotated(&self.path, 1)).with_context(|| format!("rotating {}", self.path.display()))?;
            *self = LogFile::open(&self.path, self.max_bytes)?;
        }
        self.pending.extend_from_slice(line);
        Ok(())
    }

    /// Writes the lines `append` holds.
    fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        // (Cleared even when the write fails: a full disk must not grow the agent.)
        let result = self.file.write_all(&self.pending).with_context(|| format!("writing {}", self.path.display()));
        self.size = match result {
            Ok(()) => self.size + self.pending.len() as u64,
            // Part of it may be written: the file says how much.
            Err(_) => self.file.metadata().map_or(self.size, |m| m.len()),
        };
        self.pending.clear();
        result
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
        Ok(FlowLog { file, followers: broadcast::channel(4096).0, table: Default::default(), interim })
    }

    /// Where followers (`flows --follow`) subscribe.
    pub fn sender(&self) -> broadcast::Sender<LogRecord> {
        self.followers.clone()
    }

    /// The flow table (the metrics read its ACE totals).
    pub fn table(&self) -> Arc<Mutex<FlowTable>> {
        self.table.clone()
    }

    /// Whether a record goes anywhere (else records are not even built; the flow table
    /// follows the flows all the same).
    fn has_sink(&self) -> bool {
        self.file.is_some() || self.followers.receiver_count() > 0
    }

    /// Writes a batch of records: to the file in one write (or one per `FLUSH_BYTES`),
    /// to the followers; counted.
    fn write(&mut self, records: impl IntoIterator<Item = LogRecord>) {
        let mut counts: BTreeMap<RecordCount, u64> = BTreeMap::new();
        let mut line = Vec::new();
        for r in records {
            let count = match &r {
                LogRecord::Flow(f) => RecordCount::Flow(f.kind, f.end_reason),
                LogRecord::Dns(_) => RecordCount::Dns,
            };
            *counts.entry(count).or_default() += 1;
            if let Some(file) = self.file.as_mut() {
                if file.pending.len() >= FLUSH_BYTES {
                    if let Err(e) = file.flush() {
                        warn!("flow log: {e:#}");
                    }
                }
                line.clear();
                if serde_json::to_writer(&mut line, &r).is_ok() {
                    line.push(b'\n');
                    if let Err(e) = file.append(&line) {
                        warn!("flow log: {e:#}");
                    }
                }
            }
            // No follower: nothing to do.
            let _ = self.followers.send(r);
        }
        if let Some(Err(e)) = self.file.as_mut().map(LogFile::flush) {
            warn!("flow log: {e:#}");
        }
        // (Locked once, after the file: the metrics read the table meanwhile.)
        let mut table = self.table.lock().unwrap();
        for (count, n) in counts {
            *table.records.entry(count).or_default() += n;
        }
    }

    /// Data-path events, in the order the programs wrote them: the flow table follows
    /// them (one lock for the batch), and their records are written.
    pub fn events(&mut self, events: &[FlowEvent], at: Lookups) {
        let sink = self.has_sink();
        // Per event: None, no record (its end is on record already); else the
        // translation the table knew of its flow.
        let mut to_write = Vec::new();
        {
            let mut table = self.table.lock().unwrap();
            for e in events {
                let followed = match e.kind {
                    EVENT_START => {
                        table.start(&e.key, &e.value);
                        None
                    }
                    // The sweep took the entry as expired, and wrote its end.
                    EVENT_REPLACED if !table.first_unclosed_end(&e.key, e.value.first_seen_ns) => {
                        if sink {
                            to_write.push(None);
                        }
                        continue;
                    }
                    EVENT_END | EVENT_REPLACED => table.end(&e.key, Some(&e.value)),
                    EVENT_DROPPED => {
                        table.ended.entry(AceKey::of(e.key.zone, &e.value)).or_default().flows += 1;
                        None
                    }
                    _ => None,
                };
                if sink {
                    to_write.push(Some(followed.and_then(|t| t.translated)));
                }
            }
        }
        if !sink {
            // No record goes anywhere: none is built.
            return;
        }
        let clock = Clock::now();
        let records = events.iter().zip(to_write).filter_map(|(e, translated)| {
            let translated = translated?;
            let mut r = record_of_event(e, at, clock)?;
            r.translated = r.translated.or(translated);
            Some(LogRecord::Flow(r))
        });
        self.write(records.collect::<Vec<_>>());
    }

    /// A DNS request the proxies answered.
    pub fn dns(&mut self, request: DnsLogEntry) {
        self.write([LogRecord::Dns(DnsRecord { kind: DnsKind::Dns, request })]);
    }

    /// After a sweep whose walk started at `walk_ns`: end records of the entries that
    /// expired (unless their TCP close was reported) and of followed flows whose entries
    /// vanished (evicted), interim records of allowed flows alive past the interval since
    /// their start or their last report. Live flows learn their translation here.
    pub fn after_sweep(&mut self, expired: &[(CtKey, CtValue)], live: &[(CtKey, CtValue)], at: Lookups, walk_ns: u64) {
        let clock = Clock::now();
        let sink = self.has_sink();
        let mut out = Vec::new();
        {
            let mut table = self.table.lock().unwrap();
            table.last_walk_ns = walk_ns;
            table.next_sweep();
            for (k, v) in expired {
                let followed = table.end(k, Some(v));
                // (A replaced event may have reported it: a packet replaced the entry as
                // the sweep took it.)
                if v.verdict != VERDICT_DROP && v.flags & FLAG_ENDED == 0 && table.first_unclosed_end(k, v.first_seen_ns) && sink {
                    let mut r = record(RecordKind::End, Some(EndReason::Expired), k, v, at, clock);
                    r.translated = r.translated.or(followed.and_then(|t| t.translated));
                    out.push(r);
                }
            }
            let seen: foldhash::HashSet<&CtKey> = live.iter().map(|(k, _)| k).collect();
            let vanished: Vec<CtKey> = table.live.keys().filter(|k| !seen.contains(k)).copied().collect();
            for k in vanished {
                let Some(t) = table.end(&k, None) else { continue };
                if sink && t.value.flags & FLAG_ENDED == 0 {
                    let mut r = record(RecordKind::End, Some(EndReason::Evicted), &k, &t.value, at, clock);
                    r.translated = r.translated.or(t.translated);
                    out.push(r);
                }
            }
            let interval = self.interim.as_nanos() as u64;
            for (k, v) in live {
                if v.verdict == VERDICT_DROP || v.flags & FLAG_ENDED != 0 {
                    continue;
                }
                table.see(k, v, v.first_seen_ns);
                let t = table.live.get_mut(k).expect("seen above");
                if t.translated.is_none() {
                    t.translated = translated_end(k, v, at);
                }
                if walk_ns.saturating_sub(t.reported_ns) >= interval {
                    t.reported_ns = walk_ns;
                    if sink {
                        let mut r = record(RecordKind::Interim, None, k, v, at, clock);
                        r.translated = r.translated.or(t.translated);
                        out.push(r);
                    }
                }
            }
        }
        self.write(out.into_iter().map(LogRecord::Flow));
    }

    /// End records of entries a config change removed.
    pub fn removed(&mut self, entries: &[(CtKey, CtValue)], at: Lookups) {
        let clock = Clock::now();
        let sink = self.has_sink();
        let mut out = Vec::new();
        {
            let mut table = self.table.lock().unwrap();
            for (k, v) in entries {
                let followed = table.end(k, Some(v));
                if sink && v.verdict != VERDICT_DROP && v.flags & FLAG_ENDED == 0 {
                    let mut r = record(RecordKind::End, Some(EndReason::Removed), k, v, at, clock);
                    r.translated = r.translated.or(followed.and_then(|t| t.translated));
                    out.push(LogRecord::Flow(r));
                }
            }
        }
        self.write(out);
    }
}

/// Reads the data path's events into `queue` until aborted (the agent's run loop writes
/// them). Events the queue has no room for are counted and logged, never silently gone.
pub fn spawn_reader(
    pin_dir: PathBuf,
    queue: tokio::sync::mpsc::Sender<FlowEvent>,
    lost: Arc<std::sync::atomic::AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let result = read_events(pin_dir, |e| {
            if queue.try_send(*e).is_err() {
                let lost = lost.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
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
    let mut drain = |ring: &mut RingBuf<MapData>| {
        while let Some(item) = ring.next() {
            if let Some(e) = FlowEvent::from_record(&item) {
                sink(&e);
            }
        }
    };
    // The programs wake us for a batch of events only (`EVENTS_WAKE_BYTES`): read at
    // least every `EVENTS_POLL_MS` too.
    let poll = Duration::from_millis(netns_ebpf_common::event::EVENTS_POLL_MS);
    loop {
        match tokio::time::timeout(poll, fd.readable_mut()).await {
            Ok(ready) => {
                let mut ready = ready?;
                drain(ready.get_inner_mut());
                ready.clear_ready();
            }
            Err(_) => drain(fd.get_mut()),
        }
    }
}

/// One record as a line of text (`flows --follow`).
pub fn print_line(r: &LogRecord) {
    let r = match r {
        LogRecord::Flow(f) => f,
        LogRecord::Dns(d) => {
            let q = &d.request;
            println!("{:<12} {:<8} {:<8} {} {} -> {} {}", "dns", q.ni, q.app, q.qtype, q.name, q.rcode, q.answers.join(","));
            return;
        }
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(sport: u16, first_seen_ns: u64, packets: [u64; 2]) -> (CtKey, CtValue) {
        let key =
            CtKey { zone: 1, addr_a: [10, 10, 1, 2], addr_b: [10, 99, 0, 10], port_a: sport, port_b: 80, proto: 6, ..CtKey::default() };
        let value = CtValue {
            first_seen_ns,
            last_seen_ns: first_seen_ns,
            packets,
            bytes: [packets[0] * 100, packets[1] * 100],
            mark: mark::compose(1, 5, true, false),
            orig_is_a: 1,
            ..CtValue::default()
        };
        (key, value)
    }

    fn start(k: CtKey, v: CtValue) -> FlowEvent {
        FlowEvent { key: k, value: v, kind: EVENT_START, ..FlowEvent::default() }
    }

    /// Two flows of one packet each, from ports 1000 and 1001.
    fn two_flows() -> [(CtKey, CtValue); 2] {
        [flow(1000, 1, [1, 0]), flow(1001, 2, [1, 0])]
    }

    /// The flow records sent to followers so far.
    fn flow_records(rx: &mut broadcast::Receiver<LogRecord>) -> Vec<FlowLogRecord> {
        std::iter::from_fn(|| match rx.try_recv() {
            Ok(LogRecord::Flow(r)) => Some(r),
            _ => None,
        })
        .collect()
    }

    /// A directory of a test's own, removed on drop (a failed assert too).
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A flow that vanishes between sweeps ends as evicted with its last counters; its
    /// ACE keeps what it carried; a closed flow is not reported again.
    #[test]
    fn vanished_flows_end_as_evicted_and_ace_totals_add_up() {
        let (names, dns) = (Names::default(), DnsObserver::new(None, None));
        let at = Lookups { names: &names, maps: None, dns: &dns };
        let mut log = FlowLog::new(None, 1 << 20, Duration::from_secs(60)).unwrap();
        let mut records = log.sender().subscribe();
        let [(k1, v1), (k2, v2)] = two_flows();
        log.events(&[start(k1, v1), start(k2, v2)], at);
        // The sweep sees both grown; then k1 closes (its end event), k2 vanishes.
        let grown =
            [(k1, CtValue { packets: [3, 2], bytes: [300, 200], ..v1 }), (k2, CtValue { packets: [4, 4], bytes: [400, 400], ..v2 })];
        log.after_sweep(&[], &grown, at, 10);
        log.events(
            &[FlowEvent {
                kind: EVENT_END,
                value: CtValue { packets: [5, 5], bytes: [500, 500], flags: FLAG_ENDED, ..v1 },
                ..start(k1, v1)
            }],
            at,
        );
        log.after_sweep(&[], &[], at, 20);
        let kinds: Vec<_> =
            flow_records(&mut records).iter().map(|r| (r.sport, r.kind, r.end_reason, r.tx_packets + r.rx_packets)).collect();
        assert_eq!(
            kinds,
            [
                (1000, RecordKind::Start, None, 1),
                (1001, RecordKind::Start, None, 1),
                (1000, RecordKind::End, Some(EndReason::Closed), 10),
                (1001, RecordKind::End, Some(EndReason::Evicted), 8),
            ]
        );
        let totals = log.table().lock().unwrap().ace_totals();
        assert_eq!(totals.len(), 1);
        assert_eq!(totals[0].1, AceTotals { flows: 2, packets: 18, bytes: 1800 });
        assert_eq!(log.table().lock().unwrap().live_flows(), 0);
    }

    /// A flow first seen by the sweep (its start event still queued) is one flow, not two.
    #[test]
    fn a_late_start_event_is_the_same_flow() {
        let (names, dns) = (Names::default(), DnsObserver::new(None, None));
        let at = Lookups { names: &names, maps: None, dns: &dns };
        let mut log = FlowLog::new(None, 1 << 20, Duration::from_secs(60)).unwrap();
        let (k, v) = flow(1000, 1, [2, 2]);
        log.after_sweep(&[], &[(k, v)], at, 10);
        log.events(&[start(k, CtValue { packets: [1, 0], ..v })], at);
        let totals = log.table().lock().unwrap().ace_totals();
        assert_eq!((totals[0].1.flows, totals[0].1.packets), (1, 4), "one flow, its counters never go back");
    }

    /// A batch of lines goes out in one write, but a file never grows past its bound: the
    /// lines before one that would take it past are written, then the file rotates.
    #[test]
    fn a_batch_rotates_where_a_line_would_pass_the_bound() {
        let dir = TempDir::new("flowlog-batch");
        let path = dir.0.join("flows.jsonl");
        let mut file = LogFile::open(&path, 100).unwrap();
        let lines: Vec<String> = (0..7).map(|i| format!("{i:029}\n")).collect();
        for line in &lines {
            file.append(line.as_bytes()).unwrap();
        }
        file.flush().unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let (now, older, oldest) = (read(&path), read(&rotated(&path, 1)), read(&rotated(&path, 2)));
        assert_eq!([oldest.len(), older.len(), now.len()], [90, 90, 30], "three lines of 30 bytes a file, at most");
        assert_eq!(format!("{oldest}{older}{now}"), lines.concat(), "every line, in order");
    }

    /// Records reach the file when their batch is handed over, not at the next one.
    #[test]
    fn a_batch_of_records_is_in_the_file_once_handed_over() {
        let (names, dns) = (Names::default(), DnsObserver::new(None, None));
        let at = Lookups { names: &names, maps: None, dns: &dns };
        let dir = TempDir::new("flowlog-written");
        let path = dir.0.join("flows.jsonl");
        let mut log = FlowLog::new(Some(&path), 1 << 20, Duration::from_secs(60)).unwrap();
        let [(k1, v1), (k2, v2)] = two_flows();
        log.events(&[start(k1, v1), start(k2, v2)], at);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let sports: Vec<u16> = text
            .lines()
            .map(|l| match serde_json::from_str::<LogRecord>(l).unwrap() {
                LogRecord::Flow(f) => f.sport,
                LogRecord::Dns(_) => 0,
            })
            .collect();
        assert_eq!(sports, [1000, 1001], "{text}");
        assert_eq!(log.table().lock().unwrap().records_written(), [(RecordCount::Flow(RecordKind::Start, None), 2)]);
    }

    /// The run loop hands events over in batches: a flow that starts and ends within one
    /// is followed and ended in order, its records in the programs' order, and the end
    /// record is the flow's (its counters), next to the other flow's start.
    #[test]
    fn a_batch_is_followed_event_by_event_in_order() {
        let (names, dns) = (Names::default(), DnsObserver::new(None, None));
        let at = Lookups { names: &names, maps: None, dns: &dns };
        let mut log = FlowLog::new(None, 1 << 20, Duration::from_secs(60)).unwrap();
        let mut records = log.sender().subscribe();
        let [(k1, v1), (k2, v2)] = two_flows();
        let end1 =
            FlowEvent { kind: EVENT_END, value: CtValue { packets: [3, 2], bytes: [300, 200], flags: FLAG_ENDED, ..v1 }, ..start(k1, v1) };
        log.events(&[start(k1, v1), end1, start(k2, v2)], at);
        let kinds: Vec<_> = flow_records(&mut records).iter().map(|r| (r.sport, r.kind, r.tx_packets + r.rx_packets)).collect();
        assert_eq!(kinds, [(1000, RecordKind::Start, 1), (1000, RecordKind::End, 5), (1001, RecordKind::Start, 1)]);
        let table = log.table();
        let table = table.lock().unwrap();
        assert_eq!(table.live_flows(), 1, "k2 is followed, k1 ended");
        assert_eq!(table.ace_totals()[0].1, AceTotals { flows: 2, packets: 6, bytes: 600 }, "k1 as it ended, k2 so far");
    }

    /// An expired entry that a packet replaced just as the sweep took it is reported by
    /// both, the sweep (expired) and the program (replaced), in either order and up to a
    /// sweep apart: one end record, the flow counted once. The next flow on the tuple
    /// (another start) ends on record of its own.
    #[test]
    fn an_end_both_the_sweep_and_a_replaced_event_report_is_written_once() {
        let (names, dns) = (Names::default(), DnsObserver::new(None, None));
        let at = Lookups { names: &names, maps: None, dns: &dns };
        for event_first in [true, false] {
            let mut log = FlowLog::new(None, 1 << 20, Duration::from_secs(60)).unwrap();
            let mut records = log.sender().subscribe();
            let (k, v) = flow(1000, 1, [2, 1]);
            log.events(&[start(k, v)], at);
            let replaced = |v: CtValue| FlowEvent { kind: EVENT_REPLACED, ..start(k, v) };
            if event_first {
                log.events(&[replaced(v)], at);
                log.after_sweep(&[(k, v)], &[], at, 10);
            } else {
                log.after_sweep(&[(k, v)], &[], at, 10);
                log.after_sweep(&[], &[], at, 20);
                log.events(&[replaced(v)], at);
            }
            let next = CtValue { first_seen_ns: 30, last_seen_ns: 30, ..v };
            log.events(&[start(k, next), replaced(next)], at);
            let ends: Vec<_> = flow_records(&mut records)
                .iter()
                .filter(|r| r.kind == RecordKind::End)
                .map(|r| (r.end_reason, r.tx_packets + r.rx_packets))
                .collect();
            let first = if event_first { EndReason::Replaced } else { EndReason::Expired };
            assert_eq!(ends, [(Some(first), 3), (Some(EndReason::Replaced), 3)], "event first: {event_first}");
            let totals = log.table().lock().unwrap().ace_totals();
            assert_eq!(totals[0].1, AceTotals { flows: 2, packets: 6, bytes: 600 }, "event first: {event_first}");
        }
    }

    /// The end event of a flow whose tuple a new flow reopened, read after a sweep that
    /// saw the new flow (and ended the old one as last seen): the new flow is followed on,
    /// counted once (the end ended it, its start was then taken for a flow already over,
    /// and the next sweep followed it a third time).
    #[test]
    fn an_end_event_of_a_replaced_flow_leaves_the_flow_that_replaced_it() {
        let (names, dns) = (Names::default(), DnsObserver::new(None, None));
        let at = Lookups { names: &names, maps: None, dns: &dns };
        let mut log = FlowLog::new(None, 1 << 20, Duration::from_secs(60)).unwrap();
        let (k, old) = flow(1000, 1, [2, 1]);
        let new = CtValue { first_seen_ns: 5, last_seen_ns: 5, packets: [1, 0], bytes: [100, 0], ..old };
        log.events(&[start(k, old)], at);
        log.after_sweep(&[], &[(k, new)], at, 10);
        log.events(&[FlowEvent { kind: EVENT_REPLACED, ..start(k, old) }, start(k, new)], at);
        log.after_sweep(&[], &[(k, new)], at, 20);
        let table = log.table();
        let table = table.lock().unwrap();
        assert_eq!(table.live_flows(), 1, "the new flow is followed");
        assert_eq!(table.ace_totals()[0].1, AceTotals { flows: 2, packets: 4, bytes: 400 }, "each flow counted once");
    }

    /// A start event that comes after a sweep which no longer found its flow (it ended
    /// while the agent was behind): counted, not followed (no second, evicted end).
    #[test]
    fn a_start_after_its_flow_ended_is_not_followed() {
        let (names, dns) = (Names::default(), DnsObserver::new(None, None));
        let at = Lookups { names: &names, maps: None, dns: &dns };
        let mut log = FlowLog::new(None, 1 << 20, Duration::from_secs(60)).unwrap();
        log.after_sweep(&[], &[], at, 100);
        let (k, v) = flow(1000, 50, [1, 0]);
        log.events(&[start(k, v)], at);
        let table = log.table();
        let table = table.lock().unwrap();
        assert_eq!((table.live_flows(), table.ace_totals()[0].1.flows), (0, 1));
    }
}

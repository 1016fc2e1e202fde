//! The DNS proxy of an NI, on its gateway:53 (UDP and TCP).
//!
//! It answers the names of the NI's apps itself and forwards everything else upstream.
//! Before it relays an answer, it puts every IPv4 address of it whose name matches one of
//! the querying app's `host` ACEs into that app port's host set (TTL + grace): the app's
//! first connection right after the answer is already allowed, with no race. Every request
//! is logged (`netns-agent dns-log`; the log rotates at `LOG_MAX_BYTES`).
//!
//! Apps are untrusted. A query's app is the app port it came through (its mark, see
//! `caller`) and must claim that app's address; every app has a budget of queries in
//! flight and of TCP connections; a TCP client gets `TCP_READ_TIMEOUT` per message.
//! Upstream, each query goes out with a fresh random id from its own connected socket
//! (only the server asked can answer), over TCP when the app asked over TCP, and an
//! answer must repeat the question; host sets follow the question's name.

use std::{
    collections::HashMap,
    io::Write as _,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, Result};
use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{rdata::A, RData, Record, RecordType},
};
use netns_ebpf_common::{
    limit::{self, Bucket},
    IfaceKey,
};
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt, Interest},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::Semaphore,
};
use tracing::{debug, info, warn};

use super::{
    caller,
    share::{Share, Shares},
};
use crate::{
    datapath::{HostLayout, HostLayouts, HostSets},
    netns::Netns,
};

const LOCAL_TTL: u32 = 60;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Upstream queries in flight per NI, and per app: a flood from one app is shed instead
/// of starving the others.
const MAX_IN_FLIGHT: usize = 128;
const MAX_IN_FLIGHT_PER_APP: usize = 32;
const MAX_TCP_CONNECTIONS: usize = 64;
/// TCP connections one app may hold: a slow client holds its own, not the NI's.
const MAX_TCP_CONNECTIONS_PER_APP: usize = 8;
/// A TCP client has this long to send each whole message (length and body).
const TCP_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Addresses one answer may put into a host set: an answer with hundreds of records
/// (from a domain the app controls) cannot flood the shared map.
const MAX_HOST_ADDRS_PER_ANSWER: usize = 32;
/// The longest an answer keeps its addresses in a host set, and the longest TTL the
/// proxy relays (`with_ttls_capped`): an answer from a domain the app controls may claim
/// decades.
const MAX_HOST_TTL_SECS: u32 = 24 * 3600;
/// The request log's size before it rotates (one older file is kept: `dns.log.1`).
pub const LOG_MAX_BYTES: u64 = 4 << 20;
/// Lines one app may add to the request log at once, then `LOG_LINES_PER_SEC_PER_APP`
/// a second: an app that floods the proxy with questions (each answered and counted in
/// the metrics as any) cannot rotate the other apps' history out of the log (~20,000
/// lines a file). What it asked past its rate is counted in its next line that is logged
/// (`DnsLogEntry::unlogged_before`); an app that goes quiet has its last request held
/// back logged at the agent's next sweep (`DnsObserver::flush_request_log`), with the
/// count of those before it.
pub const LOG_BURST_PER_APP: u64 = 100;
pub const LOG_LINES_PER_SEC_PER_APP: u64 = 10;
/// Apps (and other senders) whose log rate is kept; past it, those with nothing left
/// unlogged are forgotten (their rate starts full again).
const LOG_RATES_KEPT: usize = 4096;

/// What the proxy knows about one app port of its NI.
#[derive(Debug, Clone)]
pub struct AppView {
    pub app: String,
    /// The app number its port stamps in the connection mark.
    pub app_num: u32,
    pub ifindex: u32,
}

/// Everything an NI's proxy needs, computed from the plan.
#[derive(Debug, Clone)]
pub struct NiDnsConfig {
    pub ni: String,
    pub zone: u32,
    pub gateway: Ipv4Addr,
    /// App address on this NI -> the app.
    pub apps: HashMap<Ipv4Addr, AppView>,
    /// Lower-case app name -> its address on this NI.
    pub names: HashMap<String, Ipv4Addr>,
    /// Empty: the NI has no way out; only app names resolve.
    pub upstreams: Vec<SocketAddrV4>,
    /// Host-set entries outlive the record's TTL by this much: an app may connect a
    /// little after its cache says the answer expired.
    pub host_grace: Duration,
}

/// One line of the DNS request log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DnsLogEntry {
    /// Unix time, seconds.
    pub time: f64,
    pub ni: String,
    pub app: String,
    pub name: String,
    pub qtype: String,
    pub answers: Vec<String>,
    pub rcode: Rcode,
    /// "local", "upstream", or why there is no answer.
    pub source: String,
    /// Requests of the same app before this one that the log left out: past its rate
    /// (`LOG_LINES_PER_SEC_PER_APP`). They were answered, and counted in the metrics.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unlogged_before: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A DNS answer's response code: those of RFC 1035 and RFC 2136 by name ("NoError",
/// "NXDomain", "ServFail", ...), any other by number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Rcode {
    NoError,
    FormErr,
    ServFail,
    NXDomain,
    NotImp,
    Refused,
    YXDomain,
    YXRRSet,
    NXRRSet,
    NotAuth,
    NotZone,
    /// An extended (EDNS) or unassigned code.
    #[serde(untagged)]
    Other(u16),
}

/// The named codes, by number.
const RCODES: [Rcode; 11] = [
    Rcode::NoError,
    Rcode::FormErr,
    Rcode::ServFail,
    Rcode::NXDomain,
    Rcode::NotImp,
    Rcode::Refused,
    Rcode::YXDomain,
    Rcode::YXRRSet,
    Rcode::NXRRSet,
    Rcode::NotAuth,
    Rcode::NotZone,
];

impl From<ResponseCode> for Rcode {
    fn from(code: ResponseCode) -> Rcode {
        let n = u16::from(code);
        RCODES.get(usize::from(n)).copied().unwrap_or(Rcode::Other(n))
    }
}

impl std::fmt::Display for Rcode {
    /// As the log spells it (the `dns-log` table, the metrics' label).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rcode::Other(n) => f.pad(&n.to_string()),
            named => f.pad(&crate::status::lower(named)),
        }
    }
}

/// `name` is `suffix` or a subdomain of it (github.com covers api.github.com).
pub fn matches_suffix(name: &str, suffix: &str) -> bool {
    let name = name.trim_end_matches('.');
    name.eq_ignore_ascii_case(suffix)
        || (name.len() > suffix.len()
            && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
            && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix))
}

/// The host-ACE mask for an answer to the app's question `qname` under its port's host
/// layout (`HostLayout`): the bit of each host ACE whose domain the question is in. By
/// the question alone, as dnsmasq's ipsets (EVE's) match: the names further down a CNAME
/// chain are the answering domain's to choose (evil.net CNAME github.com).
pub fn host_mask(layout: &HostLayout, qname: &str) -> u64 {
    layout.mask_where(|suffix| matches_suffix(qname, suffix))
}

/// The (address, TTL) pairs an answer to the app's question `qname` gives for its host
/// sets (at most `MAX_HOST_ADDRS_PER_ANSWER`): of its address records, those named as the
/// question or as a CNAME leading from it (`names_asked`). A record of any other name
/// answers nothing the app asked: an upstream that passes one on ("evil.com A 6.6.6.6"
/// in the answer to github.com, from a server that github.com's chain leads to) would
/// otherwise put it into the host set of github.com's ACE.
pub fn answered_addresses(qname: &str, answer: &Message) -> Vec<(Ipv4Addr, u32)> {
    let asked = names_asked(qname, answer);
    answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(A(ip)) if asked.contains(&dns_name(&r.name.to_ascii())) => Some((*ip, r.ttl)),
            _ => None,
        })
        .take(MAX_HOST_ADDRS_PER_ANSWER)
        .collect()
}

/// A name as the chain compares it: lowercase, without the root's dot.
fn dns_name(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// The longest CNAME chain followed (resolvers give up at about as many).
const MAX_CNAME_CHAIN: usize = 16;

/// The names an answer to `qname` may answer for: the question's, and each CNAME's
/// target that the chain from it reaches (in whatever order the answer lists them), at
/// most `MAX_CNAME_CHAIN` links: one pass over the records, then one step per link.
fn names_asked(qname: &str, answer: &Message) -> Vec<String> {
    let links: HashMap<String, String> = answer
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::CNAME(target) => Some((dns_name(&r.name.to_ascii()), dns_name(&target.0.to_ascii()))),
            _ => None,
        })
        .collect();
    let mut asked = vec![dns_name(qname)];
    while asked.len() <= MAX_CNAME_CHAIN {
        match links.get(asked.last().expect("the question")) {
            Some(next) if !asked.contains(next) => asked.push(next.clone()),
            _ => break,
        }
    }
    asked
}

/// The answer for an app name of this NI, if the query asks for one.
pub fn local_answer(cfg: &NiDnsConfig, query: &Message) -> Option<Message> {
    let q = query.queries.first()?;
    let name = q.name.to_ascii().trim_end_matches('.').to_ascii_lowercase();
    let ip = *cfg.names.get(&name)?;
    let mut reply = Message::response(query.metadata.id, OpCode::Query);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.authoritative = true;
    reply.add_query(q.clone());
    if q.query_type == RecordType::A {
        reply.add_answer(Record::from_rdata(q.name.clone(), LOCAL_TTL, RData::A(A(ip))));
    }
    Some(reply)
}

/// A FORMERR for a request whose header at least has an id; nothing otherwise.
fn format_error(request: &[u8]) -> Option<Vec<u8>> {
    if request.len() < 12 {
        return None;
    }
    let id = u16::from_be_bytes([request[0], request[1]]);
    Message::error_msg(id, OpCode::Query, ResponseCode::FormErr).to_vec().ok()
}

/// Addresses answered per app remembered for the flow log (two generations of half
/// this each: the oldest half goes at once when the newer fills).
const NAMES_REMEMBERED: usize = 65536;

/// What the DNS proxies tell the rest of the agent: the name each answered address came
/// from, per app (the flow log's `dns_name`), every request as a record for the flow log,
/// and the requests counted by result (the metrics'). One for all NIs' proxies.
pub struct DnsObserver {
    names: Mutex<NameGenerations>,
    queries: Mutex<std::collections::BTreeMap<DnsQueryKey, u64>>,
    requests: Option<tokio::sync::mpsc::Sender<DnsLogEntry>>,
    /// Requests the flow log had no room for.
    requests_lost: std::sync::atomic::AtomicU64,
    /// The request log every NI's proxy appends to: one file, one count of its size, so
    /// that it rotates once when it is full, whichever NI's line fills it (a log per
    /// proxy on the same file rotated it under the others, whose lines went on into the
    /// older half, then into a deleted file). None: no log (the flow log's tests).
    log: Option<Mutex<RequestLog>>,
}

/// A count of requests: NI, answer code, where the answer came from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DnsQueryKey {
    pub ni: String,
    pub rcode: Rcode,
    pub source: AnswerSource,
}

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerSource {
    /// The proxy itself (an app's name).
    Local,
    Upstream,
    /// No answer: refused, malformed, or no upstream answered.
    None,
}

impl AnswerSource {
    pub fn as_str(self) -> &'static str {
        match self {
            AnswerSource::Local => "local",
            AnswerSource::Upstream => "upstream",
            AnswerSource::None => "none",
        }
    }
}

/// (zone, app address, answered address) -> the name asked.
type NameKey = (u32, Ipv4Addr, Ipv4Addr);

#[derive(Default)]
struct NameGenerations {
    newer: HashMap<NameKey, String>,
    older: HashMap<NameKey, String>,
}

impl DnsObserver {
    /// `requests`: where each request goes as a record (the flow log), if anywhere;
    /// `log_path`: the request log (`services::dns_log_path`), if any.
    pub fn new(requests: Option<tokio::sync::mpsc::Sender<DnsLogEntry>>, log_path: Option<PathBuf>) -> DnsObserver {
        DnsObserver {
            names: Mutex::new(NameGenerations::default()),
            queries: Mutex::new(Default::default()),
            requests,
            requests_lost: Default::default(),
            log: log_path.map(|path| Mutex::new(RequestLog::open(path))),
        }
    }

    /// Puts one request into the request log, within its app's rate.
    fn log_request(&self, entry: DnsLogEntry) {
        if let Some(log) = &self.log {
            log.lock().unwrap().record(entry, crate::datapath::monotonic_ns());
        }
    }

    /// Logs each app's last request that its rate held back, as its rate allows now,
    /// with the count of those before it: an app that floods, then goes quiet, has its
    /// flood on record without asking again. The agent calls it at each sweep.
    pub fn flush_request_log(&self) {
        if let Some(log) = &self.log {
            log.lock().unwrap().flush_held(crate::datapath::monotonic_ns());
        }
    }

    /// The name app `app` (on zone `zone`) asked for when it was given `addr`.
    pub fn name_of(&self, zone: u32, app: Ipv4Addr, addr: Ipv4Addr) -> Option<String> {
        let names = self.names.lock().unwrap();
        let key = (zone, app, addr);
        names.newer.get(&key).or_else(|| names.older.get(&key)).cloned()
    }

    fn learn(&self, zone: u32, app: Ipv4Addr, qname: &str, answer: &Message) {
        let name = qname.trim_end_matches('.').to_ascii_lowercase();
        let mut names = self.names.lock().unwrap();
        // As many as a host set takes from one answer: an answer with thousands of
        // records (from a domain the app controls) cannot push every NI's names out.
        let addresses = answer.answers.iter().filter_map(|r| match &r.data {
            RData::A(A(ip)) => Some(ip),
            _ => None,
        });
        for ip in addresses.take(MAX_HOST_ADDRS_PER_ANSWER) {
            if names.newer.len() >= NAMES_REMEMBERED / 2 {
                names.older = std::mem::take(&mut names.newer);
            }
            names.newer.insert((zone, app, *ip), name.clone());
        }
    }

    fn observe(&self, entry: &DnsLogEntry, source: AnswerSource) {
        let key = DnsQueryKey { ni: entry.ni.clone(), rcode: entry.rcode, source };
        *self.queries.lock().unwrap().entry(key).or_default() += 1;
        if let Some(tx) = &self.requests {
            if tx.try_send(entry.clone()).is_err() {
                self.requests_lost.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    /// Requests so far, by NI, answer code and source.
    pub fn query_counts(&self) -> Vec<(DnsQueryKey, u64)> {
        self.queries.lock().unwrap().iter().map(|(k, n)| (k.clone(), *n)).collect()
    }

    /// Requests the flow log had no room for.
    pub fn requests_lost(&self) -> u64 {
        self.requests_lost.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A running DNS proxy: its config can be swapped, and it can be stopped.
pub struct DnsHandle {
    proxy: Arc<DnsProxy>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl DnsHandle {
    /// The NI's apps, names or upstreams changed: the next query sees the new config.
    pub fn update(&self, cfg: NiDnsConfig) {
        *self.proxy.cfg.write().unwrap() = Arc::new(cfg);
    }

    /// Stops serving (the sockets close once in-flight queries end).
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

pub struct DnsProxy {
    /// Swapped whole when the NI's apps change (`DnsHandle::update`).
    cfg: std::sync::RwLock<Arc<NiDnsConfig>>,
    hosts: Mutex<HostSets>,
    /// The live layout of each port's host-set bits, and the lock that orders answers
    /// against the applier's ACL switches.
    layouts: Arc<HostLayouts>,
    in_flight: Semaphore,
    /// Queries in flight per app number (0: senders that are no app).
    per_app: Arc<Shares>,
    /// TCP connections per app number.
    tcp_per_app: Arc<Shares>,
    /// The kernel hands over each datagram's mark (SO_RCVMARK, Linux 5.19+); without it
    /// UDP queries are known by their address alone (logged once at start).
    udp_marks: bool,
    observer: Arc<DnsObserver>,
}

/// The DNS request log: JSON lines, rotated to `<path>.1` past `LOG_MAX_BYTES`, each
/// app's lines within its rate.
struct RequestLog {
    path: PathBuf,
    file: Option<std::fs::File>,
    size: u64,
    /// (NI, app) -> its rate, and what it asked past it since its last line.
    rates: HashMap<(String, String), AppLogRate>,
}

/// One app's share of the request log.
struct AppLogRate {
    bucket: Bucket,
    /// Requests past the rate since the app's last line, and the last of them (logged
    /// by `RequestLog::flush_held` when the app asks nothing more).
    unlogged: u64,
    held: Option<DnsLogEntry>,
}

impl RequestLog {
    fn open(path: PathBuf) -> RequestLog {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path).ok();
        let size = file.as_ref().and_then(|f| f.metadata().ok()).map(|m| m.len()).unwrap_or(0);
        RequestLog { path, file, size, rates: HashMap::new() }
    }

    /// Appends `entry` when its app's rate allows (`now_ns`: monotonic); else counts it
    /// for the app's next line.
    fn record(&mut self, entry: DnsLogEntry, now_ns: u64) {
        if self.rates.len() >= LOG_RATES_KEPT {
            self.rates.retain(|_, rate| rate.unlogged > 0);
            if self.rates.len() >= LOG_RATES_KEPT {
                // (Senders are apps and the addresses their ports let through: not reached
                // but by a config of thousands of apps.)
                self.rates.clear();
            }
        }
        let rate = self.rates.entry((entry.ni.clone(), entry.app.clone())).or_insert_with(|| AppLogRate {
            bucket: Bucket::new(LOG_LINES_PER_SEC_PER_APP, LOG_BURST_PER_APP, limit::UNIT_SECOND_NS),
            unlogged: 0,
            held: None,
        });
        if !limit::take(&mut rate.bucket, now_ns) {
            rate.unlogged += 1;
            rate.held = Some(entry);
            return;
        }
        let entry = DnsLogEntry { unlogged_before: std::mem::take(&mut rate.unlogged), ..entry };
        rate.held = None;
        self.append_entry(&entry);
    }

    /// Each app's held request (`AppLogRate::held`) logged, where its rate allows a line
    /// now, with the count of the unlogged ones before it.
    fn flush_held(&mut self, now_ns: u64) {
        let mut due = Vec::new();
        for rate in self.rates.values_mut() {
            if rate.held.is_none() || !limit::take(&mut rate.bucket, now_ns) {
                continue;
            }
            if let Some(held) = rate.held.take() {
                // (The held one is the last of the unlogged: the rest came before it.)
                due.push(DnsLogEntry { unlogged_before: std::mem::take(&mut rate.unlogged).saturating_sub(1), ..held });
            }
        }
        for entry in due {
            self.append_entry(&entry);
        }
    }

    fn append_entry(&mut self, entry: &DnsLogEntry) {
        if let Ok(mut line) = serde_json::to_vec(entry) {
            line.push(b'\n');
            self.append(&line);
        }
    }

    fn append(&mut self, line: &[u8]) {
        // (Opened with the agent, perhaps before its state dir was made: tried again.)
        if self.file.is_none() {
            self.reopen();
        }
        if self.size + line.len() as u64 > LOG_MAX_BYTES {
            let _ = std::fs::rename(&self.path, rotated_log(&self.path));
            self.reopen();
        }
        if let Some(file) = self.file.as_mut() {
            if file.write_all(line).is_ok() {
                self.size += line.len() as u64;
            }
        }
    }

    /// The file opened anew (its rates kept).
    fn reopen(&mut self) {
        let fresh = RequestLog::open(self.path.clone());
        (self.file, self.size) = (fresh.file, fresh.size);
    }
}

/// Where the request log's older half lives.
/// `netns-agent dns-log`: the requests on record in `state_dir`, the rotated older half first.
pub fn read_log(state_dir: &std::path::Path) -> Vec<DnsLogEntry> {
    let path = super::dns_log_path(state_dir);
    let text = [rotated_log(&path), path].iter().filter_map(|p| std::fs::read_to_string(p).ok()).collect::<String>();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

pub fn print_log_table(entries: &[DnsLogEntry]) {
    println!("{:<14} {:<8} {:<10} {:<32} {:<5} {:<9} {:<9} ANSWERS", "TIME", "NI", "APP", "NAME", "TYPE", "RCODE", "SOURCE");
    for e in entries {
        println!(
            "{:<14.3} {:<8} {:<10} {:<32} {:<5} {:<9} {:<9} {}",
            e.time,
            e.ni,
            e.app,
            e.name,
            e.qtype,
            e.rcode,
            e.source,
            e.answers.join(",")
        );
        if e.unlogged_before > 0 {
            println!(
                "{:<14} {:<8} {:<10} ({} requests before this one not logged: over the app's log rate)",
                "", "", "", e.unlogged_before
            );
        }
    }
    println!("{} requests", entries.len());
}

pub fn rotated_log(path: &std::path::Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".1");
    PathBuf::from(name)
}

impl DnsProxy {
    /// Binds gateway:53 inside `ns` and serves until the handle stops it.
    pub fn spawn(
        cfg: NiDnsConfig,
        ns: &Netns,
        pin_dir: &std::path::Path,
        layouts: Arc<HostLayouts>,
        observer: Arc<DnsObserver>,
    ) -> Result<DnsHandle> {
        let addr = SocketAddr::from((cfg.gateway, 53));
        let (udp, tcp) = crate::netns::run_in(ns, || {
            let udp = std::net::UdpSocket::bind(addr).with_context(|| format!("binding UDP {addr}"))?;
            udp.set_nonblocking(true)?;
            let tcp = std::net::TcpListener::bind(addr).with_context(|| format!("binding TCP {addr}"))?;
            tcp.set_nonblocking(true)?;
            Ok((udp, tcp))
        })?;
        let udp_marks = match caller::enable_rcvmark(&udp) {
            Ok(()) => true,
            Err(e) => {
                warn!("{}: DNS over UDP knows apps by address only (SO_RCVMARK: {e})", cfg.ni);
                false
            }
        };
        info!("{}: DNS proxy on {addr} (upstream {:?})", cfg.ni, cfg.upstreams);
        let proxy = Arc::new(DnsProxy {
            hosts: Mutex::new(HostSets::open(pin_dir)?),
            layouts,
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
            per_app: Shares::new(MAX_IN_FLIGHT_PER_APP),
            tcp_per_app: Shares::new(MAX_TCP_CONNECTIONS_PER_APP),
            udp_marks,
            observer,
            cfg: std::sync::RwLock::new(Arc::new(cfg)),
        });
        let udp = Arc::new(UdpSocket::from_std(udp)?);
        let tasks = vec![tokio::spawn(proxy.clone().serve_udp(udp)), tokio::spawn(proxy.clone().serve_tcp(TcpListener::from_std(tcp)?))];
        Ok(DnsHandle { proxy, tasks })
    }

    fn cfg(&self) -> Arc<NiDnsConfig> {
        self.cfg.read().unwrap().clone()
    }

    /// The app that sent a request: the one whose port stamped `mark`, if `src` is its
    /// address here (`mark` None: the socket gets no marks, the address alone decides).
    fn sender(&self, src: Ipv4Addr, mark: Option<u32>) -> Option<AppView> {
        let cfg = self.cfg();
        let app = cfg.apps.get(&src)?;
        match mark {
            Some(m) if caller::app_num(m) != app.app_num => None,
            _ => Some(app.clone()),
        }
    }

    async fn serve_udp(self: Arc<Self>, socket: Arc<UdpSocket>) {
        use std::os::fd::AsRawFd as _;
        let mut buf = vec![0u8; 4096];
        loop {
            let received = match socket.readable().await {
                Ok(()) => socket.try_io(Interest::READABLE, || caller::recv_marked(socket.as_raw_fd(), &mut buf)),
                Err(e) => Err(e),
            };
            let (n, peer, mark) = match received {
                Ok(r) => r,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    warn!("{}: DNS UDP receive: {e}", self.cfg().ni);
                    continue;
                }
            };
            let app = self.sender(*peer.ip(), self.udp_marks.then_some(mark));
            let Some(_slot) = self.admit(app.as_ref()) else {
                debug!("{}: shedding a query from {peer}", self.cfg().ni);
                continue;
            };
            let request = buf[..n].to_vec();
            let (proxy, socket) = (self.clone(), socket.clone());
            tokio::spawn(async move {
                let _slot = _slot;
                if let Some(reply) = proxy.handle(&request, *peer.ip(), app.as_ref(), Transport::Udp).await {
                    let _ = socket.send_to(&reply, peer).await;
                }
            });
        }
    }

    async fn serve_tcp(self: Arc<Self>, listener: TcpListener) {
        let connections = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok((stream, SocketAddr::V4(peer))) => (stream, peer),
                Ok(_) => continue,
                Err(e) => {
                    // Out of file descriptors, say: retried after a pause, not in a spin.
                    warn!("{}: DNS TCP accept: {e}", self.cfg().ni);
                    tokio::time::sleep(super::ACCEPT_RETRY).await;
                    continue;
                }
            };
            let mark = caller::tcp_mark(&stream);
            let app = self.sender(*peer.ip(), Some(mark));
            let Some(app_permit) = self.admit_tcp(app.as_ref()) else {
                debug!("{}: {peer} holds its share of TCP connections", self.cfg().ni);
                continue;
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else { continue };
            let proxy = self.clone();
            tokio::spawn(async move {
                let _permits = (permit, app_permit);
                proxy.serve_tcp_client(stream, *peer.ip(), mark).await;
            });
        }
    }

    /// Length-prefixed messages until the client closes, idles or dawdles; each asked as
    /// the app at `src` (its connection's SYN carried `mark`) is at the time.
    async fn serve_tcp_client(self: Arc<Self>, mut stream: TcpStream, src: Ipv4Addr, mark: u32) {
        loop {
            let read = async {
                let mut len = [0u8; 2];
                stream.read_exact(&mut len).await?;
                let mut request = vec![0u8; u16::from_be_bytes(len) as usize];
                stream.read_exact(&mut request).await?;
                Ok::<_, std::io::Error>(request)
            };
            let Ok(Ok(request)) = tokio::time::timeout(TCP_READ_TIMEOUT, read).await else { break };
            let app = self.sender(src, Some(mark));
            let Some(_slot) = self.admit(app.as_ref()) else { break };
            let Some(reply) = self.handle(&request, src, app.as_ref(), Transport::Tcp).await else { break };
            let mut out = (reply.len() as u16).to_be_bytes().to_vec();
            out.extend_from_slice(&reply);
            // A client that stops reading holds its connection no longer than one that
            // stops writing.
            if !matches!(tokio::time::timeout(TCP_READ_TIMEOUT, stream.write_all(&out)).await, Ok(Ok(()))) {
                break;
            }
        }
    }

    /// A slot for one more query from `app` (None: a sender that is no app, all such
    /// share one budget), or None when it has too many open.
    fn admit(&self, app: Option<&AppView>) -> Option<Share> {
        self.per_app.take(app.map(|a| a.app_num).unwrap_or(0))
    }

    /// A slot for one more TCP connection of `app`.
    fn admit_tcp(&self, app: Option<&AppView>) -> Option<Share> {
        self.tcp_per_app.take(app.map(|a| a.app_num).unwrap_or(0))
    }

    async fn handle(&self, request: &[u8], src: Ipv4Addr, app: Option<&AppView>, transport: Transport) -> Option<Vec<u8>> {
        let cfg = self.cfg();
        let Ok(query) = Message::from_vec(request) else {
            self.log_entry((src, app), ("?", "?"), &[], Rcode::FormErr, "malformed request");
            return format_error(request);
        };
        if query.metadata.message_type != MessageType::Query || query.queries.len() != 1 {
            return Message::error_msg(query.metadata.id, query.metadata.op_code, ResponseCode::FormErr).to_vec().ok();
        }
        let (qname, qtype) = (query.queries[0].name.to_ascii(), query.queries[0].query_type.to_string());
        // Only questions go upstream: an UPDATE (or NOTIFY, ...) would reach the uplink's
        // resolver from the device's own address, and one that takes unsigned updates
        // would then answer the app with addresses of its choosing, into its host sets.
        if query.metadata.op_code != OpCode::Query {
            self.log_entry((src, app), (&qname, &qtype), &[], Rcode::NotImp, "not a query, not forwarded");
            return Message::error_msg(query.metadata.id, query.metadata.op_code, ResponseCode::NotImp).to_vec().ok();
        }
        let Some(app) = app else {
            self.log_entry((src, None), (&qname, &qtype), &[], Rcode::Refused, "not an app of this network (or not from its port)");
            return Message::error_msg(query.metadata.id, OpCode::Query, ResponseCode::Refused).to_vec().ok();
        };
        let app_ref = Some(app);
        if let Some(reply) = local_answer(&cfg, &query) {
            self.observer.learn(cfg.zone, src, &qname, &reply);
            self.log_entry((src, app_ref), (&qname, &qtype), &answers_of(&reply), Rcode::NoError, "local");
            return reply.to_vec().ok();
        }
        // A bare name that is no app of this NI never leaves the box (dnsmasq's
        // domain-needed); REFUSED lets the app's resolver ask its next NI's gateway.
        if !qname.trim_end_matches('.').contains('.') {
            self.log_entry((src, app_ref), (&qname, &qtype), &[], Rcode::Refused, "single-label name, not forwarded");
            let mut refused = Message::error_msg(query.metadata.id, OpCode::Query, ResponseCode::Refused);
            refused.add_query(query.queries[0].clone());
            return refused.to_vec().ok();
        }
        let Some(answer) = self.forward(request, query.metadata.id, transport).await else {
            self.log_entry((src, app_ref), (&qname, &qtype), &[], Rcode::ServFail, "no upstream answered");
            let mut fail = Message::error_msg(query.metadata.id, OpCode::Query, ResponseCode::ServFail);
            fail.add_query(query.queries[0].clone());
            return fail.to_vec().ok();
        };
        let Ok(mut parsed) = Message::from_vec(&answer) else {
            self.log_entry((src, app_ref), (&qname, &qtype), &[], Rcode::ServFail, "malformed upstream answer");
            return Message::error_msg(query.metadata.id, OpCode::Query, ResponseCode::ServFail).to_vec().ok();
        };
        if parsed.metadata.message_type != MessageType::Response || parsed.queries != query.queries {
            self.log_entry((src, app_ref), (&qname, &qtype), &[], Rcode::ServFail, "upstream answer does not match the query");
            return Message::error_msg(query.metadata.id, OpCode::Query, ResponseCode::ServFail).to_vec().ok();
        }
        // Host sets first, answer second: no connection can beat its own allow entry.
        self.update_hosts(src, app, &qname, &parsed);
        self.observer.learn(cfg.zone, src, &qname, &parsed);
        self.log_entry((src, app_ref), (&qname, &qtype), &answers_of(&parsed), Rcode::from(parsed.metadata.response_code), "upstream");
        Some(with_ttls_capped(answer, &mut parsed))
    }

    /// Asks the upstreams in turn, under a fresh random id, over `transport`; the answer
    /// comes back under the app's `id`.
    async fn forward(&self, request: &[u8], id: u16, transport: Transport) -> Option<Vec<u8>> {
        let _permit = self.in_flight.acquire().await.ok()?;
        let cfg = self.cfg();
        let mut request = request.to_vec();
        for upstream in &cfg.upstreams {
            let ours = caller::random_u16();
            request[..2].copy_from_slice(&ours.to_be_bytes());
            let asked = match transport {
                Transport::Udp => ask_udp(&request, *upstream).await,
                Transport::Tcp => ask_tcp(&request, *upstream).await,
            };
            match asked {
                Some(mut answer) if answer.len() >= 12 && answer[..2] == ours.to_be_bytes() => {
                    answer[..2].copy_from_slice(&id.to_be_bytes());
                    return Some(answer);
                }
                _ => debug!("{}: upstream {upstream} did not answer ({transport:?})", cfg.ni),
            }
        }
        None
    }

    /// Host set entries for the addresses `answer` gave the app at `src`, by its port's
    /// host layout as it is when they are written (`HostLayouts`): an ACL change since the
    /// question came (it may have come on a TCP connection opened long before) renumbers
    /// the ACEs a host set's bits stand for. `asked`: the app as it was when the question
    /// came; another app at that address now (or none) gets nothing from it.
    fn update_hosts(&self, src: Ipv4Addr, asked: &AppView, qname: &str, answer: &Message) {
        let cfg = self.cfg();
        let Some(app) = cfg.apps.get(&src).filter(|a| a.app_num == asked.app_num && a.ifindex == asked.ifindex) else {
            debug!("{}: {} is no longer {} on its port: its answer for {qname} goes in no host set", cfg.ni, src, asked.app);
            return;
        };
        let addresses = answered_addresses(qname, answer);
        if addresses.is_empty() {
            return;
        }
        let now = crate::datapath::monotonic_ns();
        let expiry =
            |ttl: u32| now + Duration::from_secs(ttl.min(MAX_HOST_TTL_SECS) as u64).as_nanos() as u64 + cfg.host_grace.as_nanos() as u64;
        let entries: Vec<(Ipv4Addr, u64)> = addresses.into_iter().map(|(ip, ttl)| (ip, expiry(ttl))).collect();
        let key = IfaceKey { zone: cfg.zone, ifindex: app.ifindex };
        let mut hosts = self.hosts.lock().unwrap();
        if let Err(e) = self.layouts.add_answer(&mut hosts, key, |layout| host_mask(layout, qname), &entries) {
            warn!("{}: host set for {}: {e:#}", cfg.ni, app.app);
        }
    }

    /// One request on record: who asked (address, and the app when known), what (name,
    /// type), the answers, the rcode and where the answer came from.
    fn log_entry(&self, asker: (Ipv4Addr, Option<&AppView>), question: (&str, &str), answers: &[String], rcode: Rcode, source: &str) {
        let ((src, app), (name, qtype)) = (asker, question);
        let app = app.map(|a| a.app.clone()).unwrap_or_else(|| src.to_string());
        let entry = DnsLogEntry {
            time: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0),
            ni: self.cfg().ni.clone(),
            app,
            name: name.trim_end_matches('.').to_string(),
            qtype: qtype.to_string(),
            answers: answers.to_vec(),
            rcode,
            source: source.to_string(),
            unlogged_before: 0,
        };
        debug!(?entry, "dns");
        let source = match source {
            "local" => AnswerSource::Local,
            "upstream" => AnswerSource::Upstream,
            _ => AnswerSource::None,
        };
        self.observer.observe(&entry, source);
        self.observer.log_request(entry);
    }
}

/// The upstream's answer as the app gets it: its records' TTLs cut to
/// `MAX_HOST_TTL_SECS`, so that the app caches an address no longer than its host set
/// keeps it (`parsed`: the same answer, parsed). An answer within the cap goes byte for
/// byte, as it came, and so does one that encodes longer than it came (it could pass
/// the size the app asked over UDP; the host set still ends at the cap).
fn with_ttls_capped(answer: Vec<u8>, parsed: &mut Message) -> Vec<u8> {
    if parsed.answers.iter().all(|r| r.ttl <= MAX_HOST_TTL_SECS) {
        return answer;
    }
    for r in &mut parsed.answers {
        r.ttl = r.ttl.min(MAX_HOST_TTL_SECS);
    }
    match parsed.to_vec() {
        Ok(capped) if capped.len() <= answer.len() => capped,
        _ => answer,
    }
}

fn answers_of(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(A(ip)) => Some(ip.to_string()),
            RData::CNAME(c) => Some(c.0.to_ascii()),
            _ => None,
        })
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    Udp,
    Tcp,
}

/// One query to `upstream` over UDP, from a socket connected to it: the kernel delivers
/// nothing from anyone else.
async fn ask_udp(request: &[u8], upstream: SocketAddrV4) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("0.0.0.0:0").await.ok()?;
    socket.connect(upstream).await.ok()?;
    socket.send(request).await.ok()?;
    let mut buf = vec![0u8; 65535];
    let n = tokio::time::timeout(UPSTREAM_TIMEOUT, socket.recv(&mut buf)).await.ok()?.ok()?;
    buf.truncate(n);
    Some(buf)
}

/// One query to `upstream` over TCP (a truncated UDP answer is what sends clients here).
async fn ask_tcp(request: &[u8], upstream: SocketAddrV4) -> Option<Vec<u8>> {
    let exchange = async {
        let mut stream = TcpStream::connect(upstream).await?;
        let mut out = (request.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(request);
        stream.write_all(&out).await?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).await?;
        let mut answer = vec![0u8; u16::from_be_bytes(len) as usize];
        stream.read_exact(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, exchange).await.ok()?.ok()
}

/// The nameservers of the agent netns' /etc/resolv.conf.
pub fn system_resolvers() -> Vec<SocketAddrV4> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|ip| ip.trim().parse::<Ipv4Addr>().ok())
        .map(|ip| SocketAddrV4::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::str::FromStr as _;

    use hickory_proto::{op::Query, rr::Name};

    use super::*;

    fn app() -> AppView {
        AppView { app: "app1".into(), app_num: 1, ifindex: 7 }
    }

    /// What an answer to `qname` puts into app1's host sets (host ACEs for github.com,
    /// then example.org): (address, mask, TTL).
    fn host_updates(_: &AppView, qname: &str, answer: &Message) -> Vec<(Ipv4Addr, u64, u32)> {
        let layout = HostLayout { base: 0, domains: vec!["github.com".into(), "example.org".into()] };
        let mask = host_mask(&layout, qname);
        answered_addresses(qname, answer).into_iter().filter(|_| mask != 0).map(|(ip, ttl)| (ip, mask, ttl)).collect()
    }

    #[test]
    fn rcodes_keep_their_names() {
        for (code, json) in
            [(ResponseCode::NoError, "\"NoError\""), (ResponseCode::NXDomain, "\"NXDomain\""), (ResponseCode::BADVERS, "16")]
        {
            let rcode = Rcode::from(code);
            assert_eq!(serde_json::to_string(&rcode).unwrap(), json);
            assert_eq!(serde_json::from_str::<Rcode>(json).unwrap(), rcode);
            assert_eq!(rcode.to_string(), json.trim_matches('"'));
        }
        assert_eq!(Rcode::from(ResponseCode::ServFail), Rcode::ServFail);
        assert_eq!(format!("{:<9}|", Rcode::Refused), "Refused  |");
    }

    #[test]
    fn suffixes() {
        assert!(matches_suffix("github.com", "github.com"));
        assert!(matches_suffix("api.github.com.", "github.com"));
        assert!(matches_suffix("API.GitHub.com", "github.com"));
        assert!(!matches_suffix("notgithub.com", "github.com"));
        assert!(!matches_suffix("github.com.evil.net", "github.com"));
        assert!(!matches_suffix("com", "github.com"));
    }

    fn answer(qname: &str, records: &[(&str, Ipv4Addr, u32)]) -> Message {
        let mut m = Message::response(1, OpCode::Query);
        m.add_query(Query::query(Name::from_str(qname).unwrap(), RecordType::A));
        for (name, ip, ttl) in records {
            m.add_answer(Record::from_rdata(Name::from_str(name).unwrap(), *ttl, RData::A(A(*ip))));
        }
        m
    }

    #[test]
    fn answers_feed_the_matching_aces_only() {
        let a = answer("api.github.com.", &[("api.github.com.", Ipv4Addr::new(1, 2, 3, 4), 30)]);
        assert_eq!(host_updates(&app(), "api.github.com.", &a), [(Ipv4Addr::new(1, 2, 3, 4), 1, 30)]);
        // A CNAME chain, listed backwards: the question's name counts.
        let mut b = answer("www.example.org.", &[("cdn.provider.net.", Ipv4Addr::new(5, 6, 7, 8), 10)]);
        for (from, to) in [("edge.example.net.", "cdn.provider.net."), ("www.example.org.", "edge.example.net.")] {
            let target = hickory_proto::rr::rdata::CNAME(Name::from_str(to).unwrap());
            b.add_answer(Record::from_rdata(Name::from_str(from).unwrap(), 10, RData::CNAME(target)));
        }
        assert_eq!(host_updates(&app(), "www.example.org.", &b), [(Ipv4Addr::new(5, 6, 7, 8), 1 << 1, 10)], "the chain's end");
        // A record the chain does not reach answers nothing asked.
        let off_chain = answer("www.example.org.", &[("cdn.provider.net.", Ipv4Addr::new(5, 6, 7, 8), 10)]);
        assert!(host_updates(&app(), "www.example.org.", &off_chain).is_empty());
        let planted =
            answer("github.com.", &[("github.com.", Ipv4Addr::new(1, 1, 1, 1), 10), ("evil.com.", Ipv4Addr::new(6, 6, 6, 6), 10)]);
        assert_eq!(
            host_updates(&app(), "github.com.", &planted),
            [(Ipv4Addr::new(1, 1, 1, 1), 1, 10)],
            "an address the chain does not reach"
        );
        // A chain from a question no ACE names gives nothing, wherever it leads.
        let mut led = answer("evil.net.", &[("github.com.", Ipv4Addr::new(6, 6, 6, 6), 10)]);
        let target = hickory_proto::rr::rdata::CNAME(Name::from_str("github.com.").unwrap());
        led.add_answer(Record::from_rdata(Name::from_str("evil.net.").unwrap(), 10, RData::CNAME(target)));
        assert!(host_updates(&app(), "evil.net.", &led).is_empty(), "evil.net CNAME github.com");
        // A long chain is followed so far, and a loop ends it.
        let mut long = answer("github.com.", &[("n20.example.com.", Ipv4Addr::new(7, 7, 7, 7), 10)]);
        for (i, from) in std::iter::once("github.com.".to_string()).chain((1..20).map(|i| format!("n{i}.example.com."))).enumerate() {
            let target = hickory_proto::rr::rdata::CNAME(Name::from_str(&format!("n{}.example.com.", i + 1)).unwrap());
            long.add_answer(Record::from_rdata(Name::from_str(&from).unwrap(), 10, RData::CNAME(target)));
        }
        assert!(host_updates(&app(), "github.com.", &long).is_empty(), "20 links: past the chain's limit");
        assert_eq!(names_asked("github.com.", &long).len(), MAX_CNAME_CHAIN + 1);
        let c = answer("google.com.", &[("google.com.", Ipv4Addr::new(9, 9, 9, 9), 10)]);
        assert!(host_updates(&app(), "google.com.", &c).is_empty());
        // The app's question decides, not what the answer claims it was asked.
        assert!(
            host_updates(&app(), "google.com.", &answer("github.com.", &[("x.example.com.", Ipv4Addr::new(9, 9, 9, 9), 10)])).is_empty()
        );
        // A flood of records fills a bounded part of the host set.
        let many: Vec<_> = (0..200u8).map(|i| ("github.com.", Ipv4Addr::new(10, 0, 0, i), 10)).collect();
        assert_eq!(host_updates(&app(), "github.com.", &answer("github.com.", &many)).len(), MAX_HOST_ADDRS_PER_ANSWER);
    }

    #[test]
    fn app_names_answer_locally_and_garbage_gets_formerr_or_nothing() {
        let cfg = NiDnsConfig {
            ni: "ni1".into(),
            zone: 1,
            gateway: Ipv4Addr::new(10, 10, 1, 1),
            apps: HashMap::new(),
            names: [("app2".to_string(), Ipv4Addr::new(10, 10, 1, 3))].into_iter().collect(),
            upstreams: vec![],
            host_grace: Duration::from_secs(60),
        };
        let mut q = Message::query();
        q.add_query(Query::query(Name::from_str("APP2.").unwrap(), RecordType::A));
        let r = local_answer(&cfg, &q).unwrap();
        assert_eq!(answers_of(&r), ["10.10.1.3"]);
        let mut other = Message::query();
        other.add_query(Query::query(Name::from_str("github.com.").unwrap(), RecordType::A));
        assert!(local_answer(&cfg, &other).is_none());
        assert!(format_error(b"short").is_none());
        let e = Message::from_vec(&format_error(&[0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xff]).unwrap()).unwrap();
        assert_eq!((e.metadata.id, e.metadata.response_code), (0xabcd, ResponseCode::FormErr));
        // A compression loop: hickory's decoder must refuse it, not spin.
        let mut looped = vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        looped.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
        assert!(Message::from_vec(&looped).is_err());
    }

    /// Every NI's proxy appends through the one observer: the log rotates once when it
    /// is full, and no line goes to the older half or is lost after the rotation.
    fn request(ni: &str, app: &str, name: String) -> DnsLogEntry {
        let (ni, app) = (ni.to_string(), app.to_string());
        DnsLogEntry {
            time: 0.0,
            ni,
            app,
            name,
            qtype: "A".into(),
            answers: vec![],
            rcode: Rcode::NoError,
            source: "local".into(),
            unlogged_before: 0,
        }
    }

    /// The entries in the log at `path` (and its older half).
    fn logged(path: &std::path::Path) -> Vec<DnsLogEntry> {
        [rotated_log(path), path.to_path_buf()]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .flat_map(|text| text.lines().map(|l| serde_json::from_str(l).unwrap()).collect::<Vec<DnsLogEntry>>())
            .collect()
    }

    #[test]
    fn the_request_log_is_one_file_for_every_ni_and_rotates_once() {
        let dir = std::env::temp_dir().join(format!("netns-agent-dns-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dns.log");
        let observer = DnsObserver::new(None, Some(path.clone()));
        // Two NIs' apps, each within its rate; a file and a half of lines.
        let entry = |n: usize| request(&format!("ni{}", n % 2 + 1), "app1", format!("{n:06}.{}", "x".repeat(160)));
        let lines = LOG_MAX_BYTES as usize * 3 / 2 / (serde_json::to_vec(&entry(0)).unwrap().len() + 1);
        let mut log = observer.log.as_ref().unwrap().lock().unwrap();
        for n in 0..lines {
            log.record(entry(n), 1 + n as u64 * 100_000_000);
        }
        let older = std::fs::read_to_string(rotated_log(&path)).unwrap();
        let entries = logged(&path);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(older.len() as u64 <= LOG_MAX_BYTES);
        let numbers: Vec<usize> = entries.iter().map(|e| e.name.split('.').next().unwrap().parse().unwrap()).collect();
        assert!(numbers == (0..lines).collect::<Vec<_>>(), "every line once, in order, across the rotation: {} of {lines}", numbers.len());
    }

    #[test]
    fn one_apps_flood_is_logged_within_its_rate_and_counted() {
        let dir = std::env::temp_dir().join(format!("netns-agent-dns-rate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dns.log");
        let mut log = RequestLog::open(path.clone());
        let second = limit::UNIT_SECOND_NS;
        for n in 0..1000 {
            log.record(request("ni1", "app1", format!("flood{n}.example")), second);
        }
        log.record(request("ni1", "app2", "github.com".into()), second);
        log.record(request("ni2", "app1", "github.com".into()), second);
        // A second later app1 of ni1 has ten lines again; its first says what went unlogged.
        for n in 0..15 {
            log.record(request("ni1", "app1", format!("later{n}.example")), 2 * second);
        }
        let before_quiet = logged(&path);
        // Then it asks nothing more: the sweeps log the last request it held back, once.
        log.flush_held(3 * second);
        log.flush_held(4 * second);
        let entries = logged(&path);
        let _ = std::fs::remove_dir_all(&dir);
        let of = |entries: &[DnsLogEntry], ni: &str, app: &str| {
            entries.iter().filter(|e| e.ni == ni && e.app == app).cloned().collect::<Vec<_>>()
        };
        let flood = of(&before_quiet, "ni1", "app1");
        assert_eq!(flood.len() as u64, LOG_BURST_PER_APP + LOG_LINES_PER_SEC_PER_APP);
        assert_eq!(flood[LOG_BURST_PER_APP as usize].name, "later0.example");
        assert_eq!(flood[LOG_BURST_PER_APP as usize].unlogged_before, 1000 - LOG_BURST_PER_APP);
        let unlogged: u64 = flood.iter().map(|e| e.unlogged_before).sum();
        assert_eq!(flood.len() as u64 + unlogged + 5, 1015, "each request logged or counted, but the five held for the next line");
        let flood = of(&entries, "ni1", "app1");
        let last = flood.last().unwrap();
        assert_eq!((last.name.as_str(), last.unlogged_before), ("later14.example", 4), "the held request, after the four before it");
        let unlogged: u64 = flood.iter().map(|e| e.unlogged_before).sum();
        assert_eq!(flood.len() as u64 + unlogged, 1015, "each request logged or counted once");
        assert_eq!(of(&entries, "ni1", "app2").len(), 1, "another app's line is logged");
        assert_eq!(of(&entries, "ni2", "app1").len(), 1, "an app of the same name on another NI has its own rate");
    }

    #[test]
    fn ttls_past_a_day_are_cut_and_others_relayed_as_they_came() {
        let mut m = Message::response(7, OpCode::Query);
        m.add_query(Query::query(Name::from_str("github.com.").unwrap(), RecordType::A));
        m.add_answer(Record::from_rdata(Name::from_str("github.com.").unwrap(), 300, RData::A(A(Ipv4Addr::new(10, 99, 0, 10)))));
        let short = m.to_vec().unwrap();
        assert_eq!(with_ttls_capped(short.clone(), &mut Message::from_vec(&short).unwrap()), short, "byte for byte");
        m.add_answer(Record::from_rdata(
            Name::from_str("github.com.").unwrap(),
            10 * 365 * 86400,
            RData::A(A(Ipv4Addr::new(10, 99, 0, 11))),
        ));
        let long = m.to_vec().unwrap();
        let relayed = Message::from_vec(&with_ttls_capped(long.clone(), &mut Message::from_vec(&long).unwrap())).unwrap();
        assert_eq!(relayed.answers.iter().map(|r| r.ttl).collect::<Vec<_>>(), [300, MAX_HOST_TTL_SECS]);
        assert_eq!((relayed.metadata.id, relayed.answers.len()), (7, 2));
    }
}
